//! Parses `Tracks/TrackEntry` and maps Matroska codec IDs to [`CodecParams`].

use std::io::{Read, Seek};

use bytes::Bytes;

use super::ids;
use crate::ebml::{self, Header};
use crate::error::MediaError;
use crate::params::{Codec, CodecParams};
use crate::source::Source;

/// The fields of a `TrackEntry` the demuxer uses.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub number: u64,
    pub codec_id: String,
    pub private: Vec<u8>,
    /// Nanoseconds per frame.
    pub default_duration: Option<u64>,
    pub encoded: bool,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub sampling_frequency: Option<f64>,
    pub channels: Option<u64>,
}

/// Largest CodecPrivate accepted.
const MAX_PRIVATE: u64 = 1 << 20;

/// Calls `f` for each child header of the master element `parent` (positioned at its data),
/// then leaves the source at the parent's end.
pub(crate) fn children<R: Read + Seek>(
    src: &mut Source<R>,
    parent: &Header,
    name: &str,
    mut f: impl FnMut(&mut Source<R>, &Header) -> Result<(), MediaError>,
) -> Result<(), MediaError> {
    let end = parent
        .size
        .map(|s| parent.data.saturating_add(s))
        .ok_or_else(|| MediaError::malformed(name, parent.start, "unknown size"))?;
    let mut pos = parent.data;
    while pos < end {
        src.seek_to(pos)?;
        let child = ebml::read_header(src)?;
        let child_end = child
            .size
            .map(|s| child.data.saturating_add(s))
            .filter(|&e| e <= end)
            .ok_or_else(|| {
                MediaError::malformed(
                    &format!("{name}/0x{:X}", child.id),
                    child.start,
                    "size exceeds parent",
                )
            })?;
        f(src, &child)?;
        pos = child_end;
    }
    src.seek_to(end)
}

/// Parses the `Tracks` element.
pub(crate) fn parse_tracks<R: Read + Seek>(
    src: &mut Source<R>,
    tracks: &Header,
) -> Result<Vec<Entry>, MediaError> {
    let mut out = Vec::new();
    children(src, tracks, "Segment/Tracks", |src, h| {
        if h.id == ids::TRACK_ENTRY {
            out.push(parse_entry(src, h)?);
        }
        Ok(())
    })?;
    Ok(out)
}

fn parse_entry<R: Read + Seek>(src: &mut Source<R>, h: &Header) -> Result<Entry, MediaError> {
    const P: &str = "Segment/Tracks/TrackEntry";
    let mut e = Entry::default();
    children(src, h, P, |src, c| {
        let size = c.size.unwrap_or(0);
        match c.id {
            ids::TRACK_NUMBER => e.number = ebml::read_uint(src, size, P)?,
            ids::CODEC_ID => e.codec_id = ebml::read_string(src, size, P)?,
            ids::CODEC_PRIVATE => e.private = ebml::read_binary(src, size, MAX_PRIVATE, P)?,
            ids::DEFAULT_DURATION => e.default_duration = Some(ebml::read_uint(src, size, P)?),
            ids::CONTENT_ENCODINGS => e.encoded = true,
            ids::VIDEO => children(src, c, P, |src, v| {
                let size = v.size.unwrap_or(0);
                match v.id {
                    ids::PIXEL_WIDTH => e.width = Some(ebml::read_uint(src, size, P)?),
                    ids::PIXEL_HEIGHT => e.height = Some(ebml::read_uint(src, size, P)?),
                    _ => {}
                }
                Ok(())
            })?,
            ids::AUDIO => children(src, c, P, |src, a| {
                let size = a.size.unwrap_or(0);
                match a.id {
                    ids::SAMPLING_FREQUENCY => {
                        e.sampling_frequency = Some(ebml::read_float(src, size, P)?)
                    }
                    ids::CHANNELS => e.channels = Some(ebml::read_uint(src, size, P)?),
                    _ => {}
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(e)
}

/// The codec parameters of a track entry, or why it is skipped.
pub(crate) fn params(e: &Entry) -> Result<CodecParams, String> {
    if e.encoded {
        return Err(format!(
            "track {} ({}): ContentEncoding (compression/encryption) not supported",
            e.number, e.codec_id
        ));
    }
    let private = Bytes::from(e.private.clone());
    let need_private = |codec: Codec| {
        if e.private.is_empty() {
            Err(format!(
                "track {}: {codec:?} without CodecPrivate",
                e.number
            ))
        } else {
            Ok(())
        }
    };
    let dim = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
    let video = |codec, config| CodecParams {
        codec,
        config,
        width: dim(e.width),
        height: dim(e.height),
        sample_rate: None,
        channels: None,
    };
    let rate = e
        .sampling_frequency
        .filter(|f| f.is_finite() && *f >= 1.0 && *f <= f64::from(u32::MAX))
        .map(|f| f.round() as u32);
    let channels = e.channels.and_then(|c| u16::try_from(c).ok());
    let audio = |codec, config, sample_rate: Option<u32>, channels: Option<u16>| CodecParams {
        codec,
        config,
        width: None,
        height: None,
        sample_rate,
        channels,
    };
    Ok(match e.codec_id.as_str() {
        "V_MPEG4/ISO/AVC" => {
            need_private(Codec::H264)?;
            video(Codec::H264, private)
        }
        "V_MPEGH/ISO/HEVC" => {
            need_private(Codec::H265)?;
            video(Codec::H265, private)
        }
        "V_VP8" => video(Codec::Vp8, private),
        "V_VP9" => video(Codec::Vp9, private),
        "V_AV1" => video(Codec::Av1, private),
        "A_AAC" => {
            need_private(Codec::Aac)?;
            audio(Codec::Aac, private, rate, channels.or(Some(2)))
        }
        "A_OPUS" => audio(Codec::Opus, private, Some(48_000), channels.or(Some(2))),
        "A_MS/ACM" => {
            // WAVEFORMATEX: wFormatTag, nChannels, nSamplesPerSec (little-endian).
            let p = &e.private;
            let tag = p.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
            let codec = match tag {
                Some(7) => Codec::Pcmu,
                Some(6) => Codec::Pcma,
                other => {
                    return Err(format!(
                        "track {}: A_MS/ACM format tag {other:?} not supported",
                        e.number
                    ))
                }
            };
            let ch = p.get(2..4).map(|b| u16::from_le_bytes([b[0], b[1]]));
            let sr = p
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            audio(codec, Bytes::new(), sr.or(rate), ch.or(channels))
        }
        other => return Err(format!("track {}: unsupported codec {other}", e.number)),
    })
}
