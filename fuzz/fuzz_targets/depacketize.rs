//! Feeds arbitrary RTP packets to a depacketizer (codec chosen by the first byte) and writes whatever
//! access units come out to a fragmented MP4 in memory.
//!
//! Input: one selector byte, then packets, each a big-endian u16 length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::Depacketizer;
use sluice_media::mux::Mp4Writer;

/// (encoding, clock rate, channels, fmtp) of the depacketizers exercised.
const TRACKS: [(&str, u32, Option<u16>, Option<&str>); 6] = [
    ("H264", 90_000, None, Some("packetization-mode=1")),
    (
        "H264",
        90_000,
        None,
        Some("packetization-mode=1;sprop-parameter-sets=Z2QAHqyyAUBf8uAiAAADAAIAAAMAZB4sXJA=,aOvDyyLA"),
    ),
    ("H265", 90_000, None, None),
    ("H265", 90_000, None, Some("sprop-max-don-diff=1")),
    (
        "MPEG4-GENERIC",
        48_000,
        Some(2),
        Some("streamtype=5;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190"),
    ),
    ("opus", 48_000, Some(2), Some("sprop-stereo=1")),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let (name, rate, channels, fmtp) = TRACKS[usize::from(sel) % TRACKS.len()];
    let Ok(mut d) = Depacketizer::new(name, rate, channels, fmtp) else {
        return;
    };
    let mut writer: Option<Mp4Writer<Vec<u8>>> = None;
    let mut dts = 0u64;
    while let Some((&[l0, l1], tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes([l0, l1])).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        let Ok(aus) = d.push(packet) else {
            continue;
        };
        for au in aus {
            assert!(
                !au.data.is_empty() && au.data.len() <= sluice_codec::depacketizer::MAX_ACCESS_UNIT
            );
            if writer.is_none() {
                if let Some(params) = d.params() {
                    writer = Mp4Writer::new(Vec::new(), &[params]).ok();
                }
            }
            if let Some(w) = writer.as_mut() {
                dts += 3000;
                let _ = w.write_sample(0, dts, 0, au.keyframe, &au.data);
            }
        }
    }
    if let Some(w) = writer {
        let _ = w.finish();
    }
});
