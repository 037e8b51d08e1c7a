//! Feeds arbitrary RTP packets to the VP9 (even selector byte) or AV1 (odd) depacketizer and
//! writes what comes out to a fragmented MP4 in memory (`vp09` / `av01` from the `vpcC` /
//! `av1C` the depacketizer builds from the bitstream). Every AV1 access unit must be a
//! well-formed OBU sequence with size fields and no temporal delimiter.
//!
//! Input: one selector byte, then packets, each a big-endian u16 length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_codec::Depacketizer;
use sluice_media::mux::Mp4Writer;

/// Reads a LEB128 value (at most 8 bytes): the value and the bytes it took.
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(8) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Whether `data` is OBUs, each with a size field that ends within the data, none a
/// temporal delimiter.
fn well_formed_obus(mut data: &[u8]) -> bool {
    while let Some(&h) = data.first() {
        if h & 0x82 != 0x02 || (h >> 3) & 0x0f == 2 {
            return false;
        }
        let hdr = if h & 0x04 != 0 { 2 } else { 1 };
        let Some((size, n)) = data.get(hdr..).and_then(leb128) else {
            return false;
        };
        let Some(rest) = usize::try_from(size)
            .ok()
            .and_then(|s| data.get(hdr + n + s..))
        else {
            return false;
        };
        data = rest;
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let av1 = sel & 1 == 1;
    let Ok(mut d) = Depacketizer::new(if av1 { "AV1" } else { "VP9" }, 90_000, None, None) else {
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
            if av1 {
                assert!(well_formed_obus(&au.data), "{:02x?}", &au.data[..]);
            }
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
