//! Matroska / WebM demuxing with a small hand-written EBML reader (see [`crate::ebml`] for why).
//!
//! Opening walks the segment's top-level elements: `Info` and `Tracks` are parsed, and every
//! `Cluster` is scanned by its block headers only (payloads are skipped), building a complete
//! sample index with exact keyframes. `Cues` are therefore not needed and are skipped. Block
//! timestamps are presentation times; decode times are derived per track (see [`decode_times`]).

mod cluster;
mod ids;
mod tracks;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::time::Duration;

use crate::ebml;
use crate::error::MediaError;
use crate::index::{IndexEntry, IndexedDemuxer, TrackIndex};
use crate::media::TrackInfo;
use crate::source::Source;
use cluster::RawFrame;

/// Opens a Matroska/WebM file.
pub(crate) fn open<R: Read + Seek>(mut src: Source<R>) -> Result<IndexedDemuxer<R>, MediaError> {
    let len = src.len();
    // EBML header.
    let head = ebml::read_header(&mut src)?;
    if head.id != ids::EBML {
        return Err(MediaError::malformed("EBML", 0, "missing EBML header"));
    }
    let mut doc_type = String::new();
    tracks::children(&mut src, &head, "EBML", |src, h| {
        if h.id == ids::DOC_TYPE {
            doc_type = ebml::read_string(src, h.size.unwrap_or(0), "EBML/DocType")?;
        }
        Ok(())
    })?;
    if doc_type != "matroska" && doc_type != "webm" {
        return Err(MediaError::Unsupported(format!(
            "EBML DocType {doc_type:?}"
        )));
    }
    // Segment (skipping anything before it, e.g. Void).
    let segment = loop {
        let h = ebml::read_header(&mut src)?;
        if h.id == ids::SEGMENT {
            break h;
        }
        let Some(size) = h.size else {
            return Err(MediaError::malformed("Segment", h.start, "no Segment"));
        };
        src.seek_to(h.data.saturating_add(size))?;
    };
    let seg_end = segment.end_or(len).min(len);

    let mut scale: u64 = 1_000_000;
    let mut seg_duration: Option<f64> = None;
    let mut entries: Option<Vec<tracks::Entry>> = None;
    let mut frames: Vec<RawFrame> = Vec::new();
    let mut frame_ticks: HashMap<u64, i64> = HashMap::new();
    let mut budget = len;
    let mut pos = segment.data;
    while pos < seg_end {
        src.seek_to(pos)?;
        let h = match ebml::read_header(&mut src) {
            Ok(h) => h,
            Err(_) if entries.is_some() => break,
            Err(e) => return Err(e),
        };
        let end = match h.size {
            Some(s) => h.data.saturating_add(s),
            None if h.id == ids::CLUSTER => seg_end,
            None => {
                return Err(MediaError::malformed(
                    &format!("Segment/0x{:X}", h.id),
                    h.start,
                    "unknown size",
                ))
            }
        };
        match h.id {
            ids::INFO => {
                if end > seg_end {
                    return Err(MediaError::malformed("Segment/Info", h.start, "truncated"));
                }
                tracks::children(&mut src, &h, "Segment/Info", |src, c| {
                    let size = c.size.unwrap_or(0);
                    match c.id {
                        ids::TIMESTAMP_SCALE => {
                            scale = ebml::read_uint(src, size, "Segment/Info/TimestampScale")?
                        }
                        ids::DURATION => {
                            seg_duration =
                                Some(ebml::read_float(src, size, "Segment/Info/Duration")?)
                        }
                        _ => {}
                    }
                    Ok(())
                })?;
                if scale == 0 {
                    return Err(MediaError::malformed(
                        "Segment/Info/TimestampScale",
                        h.start,
                        "zero",
                    ));
                }
            }
            ids::TRACKS if entries.is_none() => {
                if end > seg_end {
                    return Err(MediaError::malformed(
                        "Segment/Tracks",
                        h.start,
                        "truncated",
                    ));
                }
                let list = tracks::parse_tracks(&mut src, &h)?;
                for e in &list {
                    if let Some(ns) = e.default_duration.filter(|&d| d > 0) {
                        let ticks = i64::try_from(ns / scale).unwrap_or(0);
                        frame_ticks.insert(e.number, ticks);
                    }
                }
                entries = Some(list);
            }
            ids::CLUSTER => {
                let cluster_end = cluster::scan(
                    &mut src,
                    &h,
                    seg_end,
                    &frame_ticks,
                    &mut frames,
                    &mut budget,
                )?;
                if h.size.is_none() {
                    // Unknown size: the cluster ends where the next top-level element starts.
                    pos = cluster_end.max(h.data);
                    continue;
                }
            }
            _ => {}
        }
        // Always progresses: the data starts after the header, past `pos`.
        pos = end;
    }
    let entries =
        entries.ok_or_else(|| MediaError::malformed("Segment/Tracks", pos, "no Tracks"))?;
    let (timescale, mult) = timebase(scale);
    let mut skipped = Vec::new();
    let mut out = Vec::new();
    let mut by_number: HashMap<u64, usize> = HashMap::new();
    for e in &entries {
        match tracks::params(e) {
            Ok(params) if !by_number.contains_key(&e.number) => {
                by_number.insert(e.number, out.len());
                out.push((e, params, Vec::<RawFrame>::new()));
            }
            Ok(_) => skipped.push(format!("track {}: duplicate track number", e.number)),
            Err(why) => skipped.push(why),
        }
    }
    for f in frames {
        if let Some(&i) = by_number.get(&f.track) {
            out[i].2.push(f);
        }
    }
    let indexes = out
        .into_iter()
        .map(|(e, params, raw)| {
            let default = e
                .default_duration
                .map(|ns| ns.saturating_mul(u64::from(timescale)) / 1_000_000_000);
            let entries = decode_times(&raw, mult, default, params.codec.is_video());
            TrackIndex {
                info: TrackInfo {
                    index: 0,
                    params,
                    timescale,
                    duration: Duration::ZERO,
                },
                entries,
            }
        })
        .collect();
    let duration = seg_duration
        .filter(|d| d.is_finite() && *d > 0.0)
        .map(|d| Duration::from_secs_f64((d * scale as f64 / 1e9).min(1e12)));
    IndexedDemuxer::new(src, indexes, duration, skipped)
}

/// The track timescale for a TimestampScale (ns per tick) and the factor from ticks to it:
/// ticks directly when the scale divides a second, else nanoseconds.
fn timebase(scale: u64) -> (u32, i64) {
    if scale <= 1_000_000_000 && 1_000_000_000u64.is_multiple_of(scale) {
        (u32::try_from(1_000_000_000 / scale).unwrap_or(1000), 1)
    } else {
        (1_000_000_000, i64::try_from(scale).unwrap_or(i64::MAX))
    }
}

/// Builds index entries from a track's frames in file (decode) order. Matroska stores
/// presentation times only; for video with reordering, decode times are the sorted presentation
/// times shifted back by the largest reorder delay, so that dts is monotonic and never after pts.
/// Durations come from BlockDuration, else the next frame's dts, else DefaultDuration.
fn decode_times(raw: &[RawFrame], mult: i64, default: Option<u64>, video: bool) -> Vec<IndexEntry> {
    let pts: Vec<i64> = raw.iter().map(|f| f.ts.saturating_mul(mult)).collect();
    let dts: Vec<i64> = if video {
        let mut sorted = pts.clone();
        sorted.sort_unstable();
        let delay = sorted
            .iter()
            .zip(&pts)
            .map(|(s, p)| s.saturating_sub(*p))
            .max()
            .unwrap_or(0)
            .max(0);
        sorted.iter().map(|s| s.saturating_sub(delay)).collect()
    } else {
        pts.clone()
    };
    let default = default.and_then(|d| u32::try_from(d).ok());
    let mut out: Vec<IndexEntry> = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let next = dts.get(i + 1).map(|n| n.saturating_sub(dts[i]));
        let duration = f
            .duration
            .and_then(|d| u32::try_from(d.saturating_mul(mult as u64)).ok())
            .or_else(|| next.and_then(|n| u32::try_from(n).ok()))
            .or(default)
            .or_else(|| out.last().map(|p| p.duration))
            .unwrap_or(0);
        out.push(IndexEntry {
            offset: f.offset,
            size: f.size,
            dts: dts[i],
            pts: pts[i],
            duration,
            keyframe: f.keyframe,
        });
    }
    out
}

#[cfg(test)]
mod tests;
