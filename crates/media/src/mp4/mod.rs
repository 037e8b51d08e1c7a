//! MP4 / MOV demuxing (regular and fragmented), with box parsing by `mp4-atom`.
//!
//! The top-level boxes are walked by their headers only (`mdat` is never read); `moov` and each
//! `moof` are read whole (bounded by the file size) and decoded by mp4-atom, then expanded into
//! the shared sample index.

mod bounds;
mod codec;
mod fragment;
mod table;

use std::io::{Read, Seek};
use std::time::Duration;

use mp4_atom::{Decode, Moof, Moov};

use crate::error::MediaError;
use crate::index::{IndexedDemuxer, TrackIndex};
use crate::media::{ticks_to_duration, TrackInfo};
use crate::params::Codec;
use crate::source::Source;
use fragment::FragTrack;

/// A top-level box header.
struct BoxHeader {
    kind: [u8; 4],
    /// Total size including the header (to end of file for size 0).
    size: u64,
}

/// Reads the box header at `pos`.
fn read_header<R: Read + Seek>(src: &mut Source<R>, pos: u64) -> Result<BoxHeader, MediaError> {
    src.seek_to(pos)?;
    let mut h = [0u8; 8];
    src.read_exact(&mut h)
        .map_err(|_| MediaError::malformed("box header", pos, "truncated"))?;
    let small = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    let (size, header_len) = match small {
        0 => (src.len().saturating_sub(pos), 8),
        1 => {
            let mut l = [0u8; 8];
            src.read_exact(&mut l)
                .map_err(|_| MediaError::malformed("box header", pos, "truncated largesize"))?;
            (u64::from_be_bytes(l), 16)
        }
        n => (u64::from(n), 8),
    };
    if size < header_len {
        return Err(MediaError::malformed(
            &format!("box {}", String::from_utf8_lossy(&kind)),
            pos,
            format!("size {size} smaller than its header"),
        ));
    }
    Ok(BoxHeader { kind, size })
}

/// Reads and decodes the whole box at `pos` with mp4-atom.
fn read_box<R: Read + Seek, T: Decode>(
    src: &mut Source<R>,
    pos: u64,
    size: u64,
    name: &str,
) -> Result<T, MediaError> {
    let bytes = src.read_at(pos, size, name)?;
    bounds::check(&bytes).map_err(|e| MediaError::malformed(name, pos, e))?;
    T::decode(&mut bytes.as_slice()).map_err(|e| MediaError::malformed(name, pos, e))
}

/// The parsed `moov` state needed while walking fragments.
struct Movie {
    tracks: Vec<TrackIndex>,
    frag: Vec<FragTrack>,
    fragmented: bool,
    duration: Option<Duration>,
    skipped: Vec<String>,
}

/// Opens an MP4/MOV file.
pub(crate) fn open<R: Read + Seek>(mut src: Source<R>) -> Result<IndexedDemuxer<R>, MediaError> {
    let len = src.len();
    let mut pos = 0u64;
    let mut movie: Option<Movie> = None;
    let mut budget = len;
    while pos < len {
        let header = match read_header(&mut src, pos) {
            Ok(h) => h,
            // Garbage after a complete movie ends the file early.
            Err(_) if movie.is_some() => break,
            Err(e) => return Err(e),
        };
        match &header.kind {
            b"moov" if movie.is_none() => {
                let moov: Moov = read_box(&mut src, pos, header.size, "moov")?;
                movie = Some(build_movie(&moov, len)?);
            }
            b"moof" => {
                if let Some(m) = movie.as_mut().filter(|m| m.fragmented) {
                    match read_box::<_, Moof>(&mut src, pos, header.size, "moof") {
                        Ok(moof) => fragment::add_moof(
                            &moof,
                            pos,
                            &mut m.frag,
                            &mut m.tracks,
                            len,
                            &mut budget,
                        ),
                        // A damaged or truncated fragment ends the file early.
                        Err(_) => break,
                    }
                }
            }
            _ => {}
        }
        if movie.as_ref().is_some_and(|m| !m.fragmented) {
            break;
        }
        pos = pos.saturating_add(header.size);
    }
    let movie = movie.ok_or_else(|| MediaError::malformed("moov", pos, "no moov box"))?;
    IndexedDemuxer::new(src, movie.tracks, movie.duration, movie.skipped)
}

/// Maps each supported `trak` to a track index (with its moov samples) and fragment state.
fn build_movie(moov: &Moov, file_len: u64) -> Result<Movie, MediaError> {
    let movie_ts = moov.mvhd.timescale;
    let fragmented = moov.mvex.is_some();
    let mut tracks = Vec::new();
    let mut frag = Vec::new();
    let mut skipped = Vec::new();
    for trak in &moov.trak {
        let id = trak.tkhd.track_id;
        let Some(entry) = trak.mdia.minf.stbl.stsd.codecs.first() else {
            skipped.push(format!("track {id}: no sample entry"));
            continue;
        };
        let params = match codec::params(entry) {
            Ok(p) => p,
            Err(why) => {
                skipped.push(format!("track {id}: {why}"));
                continue;
            }
        };
        let timescale = trak.mdia.mdhd.timescale;
        if timescale == 0 {
            skipped.push(format!("track {id}: zero timescale"));
            continue;
        }
        let delta = table::edit_delta(trak, movie_ts, timescale);
        let pcm = matches!(params.codec, Codec::Pcmu | Codec::Pcma);
        let entries = match table::expand(trak, delta, file_len, pcm) {
            Ok(e) => e,
            Err(why) => {
                if !fragmented {
                    return Err(MediaError::Malformed(format!(
                        "moov/trak[{id}]/mdia/minf/stbl: {why}"
                    )));
                }
                Vec::new()
            }
        };
        let next_dts = entries
            .last()
            .map(|e| {
                e.dts
                    .saturating_sub(delta)
                    .saturating_add(i64::from(e.duration))
            })
            .unwrap_or(0);
        frag.push(FragTrack {
            track_id: id,
            index: tracks.len(),
            trex: moov
                .mvex
                .as_ref()
                .and_then(|m| m.trex.iter().find(|t| t.track_id == id).cloned()),
            delta,
            next_dts,
        });
        tracks.push(TrackIndex {
            info: TrackInfo {
                index: 0,
                params,
                timescale,
                duration: Duration::ZERO,
            },
            entries,
        });
    }
    let unknown = moov.mvhd.duration == 0
        || moov.mvhd.duration == u64::from(u32::MAX)
        || moov.mvhd.duration == u64::MAX;
    let duration = (!unknown && !fragmented).then(|| {
        ticks_to_duration(
            i64::try_from(moov.mvhd.duration).unwrap_or(i64::MAX),
            movie_ts,
        )
    });
    Ok(Movie {
        tracks,
        frag,
        fragmented,
        duration,
        skipped,
    })
}
