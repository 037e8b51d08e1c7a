//! Maps MP4 sample entries (`stsd`) to [`CodecParams`].

use bytes::Bytes;
use mp4_atom::{Codec as Entry, Encode};

use crate::params::{Codec, CodecParams};

/// Encodes a config box with mp4-atom and returns its body (the container's config record).
fn body<T: Encode>(atom: &T) -> Option<Bytes> {
    let mut out = Vec::new();
    atom.encode(&mut out).ok()?;
    (out.len() > 8).then(|| Bytes::from(out.split_off(8)))
}

/// The codec parameters of a sample entry, or a reason why it is skipped.
pub(crate) fn params(entry: &Entry) -> Result<CodecParams, String> {
    let video = |codec, v: &mp4_atom::Visual, config: Option<Bytes>| {
        let config = config.ok_or_else(|| format!("{codec:?} config record unencodable"))?;
        Ok(CodecParams {
            codec,
            config,
            width: Some(u32::from(v.width)),
            height: Some(u32::from(v.height)),
            sample_rate: None,
            channels: None,
        })
    };
    match entry {
        Entry::Avc1(e) => video(Codec::H264, &e.visual, body(&e.avcc)),
        Entry::Avc3(e) => video(Codec::H264, &e.visual, body(&e.avcc)),
        Entry::Hvc1(e) => video(Codec::H265, &e.visual, body(&e.hvcc)),
        Entry::Hev1(e) => video(Codec::H265, &e.visual, body(&e.hvcc)),
        Entry::Av01(e) => video(Codec::Av1, &e.visual, body(&e.av1c)),
        Entry::Vp08(e) => video(Codec::Vp8, &e.visual, body(&e.vpcc)),
        Entry::Vp09(e) => video(Codec::Vp9, &e.visual, body(&e.vpcc)),
        Entry::Mp4a(e) => {
            let dc = &e.esds.es_desc.dec_config;
            if dc.object_type_indication != 0x40 {
                return Err(format!(
                    "mp4a with object type 0x{:02x} (not AAC)",
                    dc.object_type_indication
                ));
            }
            let asc = dc
                .dec_specific
                .as_ref()
                .map(|d| d.raw.clone())
                .filter(|r| !r.is_empty())
                .ok_or("mp4a without AudioSpecificConfig")?;
            Ok(CodecParams {
                codec: Codec::Aac,
                config: Bytes::from(asc),
                width: None,
                height: None,
                sample_rate: Some(u32::from(e.audio.sample_rate.integer())),
                channels: Some(e.audio.channel_count),
            })
        }
        Entry::Opus(e) => Ok(CodecParams {
            codec: Codec::Opus,
            config: body(&e.dops).ok_or("dOps unencodable")?,
            width: None,
            height: None,
            sample_rate: Some(48_000),
            channels: Some(u16::from(e.dops.output_channel_count)),
        }),
        Entry::Unknown(kind, entry_body)
            if kind.as_ref() == b"ulaw" || kind.as_ref() == b"alaw" =>
        {
            let codec = if kind.as_ref() == b"ulaw" {
                Codec::Pcmu
            } else {
                Codec::Pcma
            };
            // SampleEntry (8) + version/revision/vendor (8), then channels, sample size,
            // compression id, packet size (2 each) and a 16.16 sample rate.
            let u16_at = |i: usize| {
                entry_body
                    .get(i..i + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
            };
            let channels = u16_at(16).filter(|&c| c > 0).unwrap_or(1);
            let rate = u16_at(24).filter(|&r| r > 0).unwrap_or(8000);
            Ok(CodecParams {
                codec,
                config: Bytes::new(),
                width: None,
                height: None,
                sample_rate: Some(u32::from(rate)),
                channels: Some(channels),
            })
        }
        Entry::Unknown(kind, _) => Err(format!("unsupported sample entry {kind}")),
        other => Err(format!("unsupported sample entry {:?}", kind_of(other))),
    }
}

/// A short name for a sample entry, for log lines.
fn kind_of(entry: &Entry) -> String {
    let dbg = format!("{entry:?}");
    dbg.split(['(', ' ', '{']).next().unwrap_or("?").to_owned()
}
