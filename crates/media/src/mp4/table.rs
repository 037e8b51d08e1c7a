//! Expands a `moov` track's sample tables (stsz/stsc/stco/stts/ctts/stss) and edit list into
//! index entries.

use mp4_atom::{StszSamples, Trak};

use crate::index::IndexEntry;

/// Offset (media timescale) added to every dts/pts of a track by its edit list: leading empty
/// edits delay the track, and the first real edit's media_time is where presentation starts.
/// Only this initial shift is applied; later edits (cuts, dwells, rate changes) are ignored.
pub(crate) fn edit_delta(trak: &Trak, movie_timescale: u32, media_timescale: u32) -> i64 {
    let Some(elst) = trak.edts.as_ref().and_then(|e| e.elst.as_ref()) else {
        return 0;
    };
    let mut empty: i128 = 0;
    for entry in &elst.entries {
        match entry.media_time {
            None => empty += i128::from(entry.segment_duration),
            Some(t) => {
                let empty_media = if movie_timescale == 0 {
                    0
                } else {
                    empty * i128::from(media_timescale) / i128::from(movie_timescale)
                };
                let delta = empty_media - i128::from(t);
                return i64::try_from(delta).unwrap_or(0);
            }
        }
    }
    0
}

/// Most raw samples merged into one entry when `merge_chunks` is set (as ffmpeg does for PCM).
const MAX_MERGE: u32 = 1024;

/// Run-length table cursor (stts / ctts): yields the value of each successive sample.
struct Runs<'a, T: Copy> {
    runs: &'a [(u32, T)],
    at: usize,
    used: u32,
}

impl<T: Copy> Runs<'_, T> {
    fn next(&mut self) -> Option<T> {
        loop {
            let (count, value) = *self.runs.get(self.at)?;
            if self.used < count {
                self.used += 1;
                return Some(value);
            }
            self.at += 1;
            self.used = 0;
        }
    }
}

/// The samples of a regular (non-fragmented) track, in decode order. Samples beyond the end of
/// the file (`file_len`) are cut off. `merge_chunks` merges the samples of each chunk into
/// entries of up to [`MAX_MERGE`] samples (for PCM audio, where a "sample" is a single byte).
pub(crate) fn expand(
    trak: &Trak,
    delta: i64,
    file_len: u64,
    merge_chunks: bool,
) -> Result<Vec<IndexEntry>, String> {
    let stbl = &trak.mdia.minf.stbl;
    let (count, fixed, sizes): (u64, u32, &[u32]) = match &stbl.stsz.samples {
        StszSamples::Identical { count, size } => {
            // Bound a fixed-size run by what the file can hold.
            let max = file_len / u64::from((*size).max(1));
            (u64::from(*count).min(max), *size, &[])
        }
        StszSamples::Different { sizes } => (sizes.len() as u64, 0, sizes.as_slice()),
    };
    let size_of = |i: u64| -> u32 {
        if sizes.is_empty() {
            fixed
        } else {
            usize::try_from(i)
                .ok()
                .and_then(|i| sizes.get(i))
                .copied()
                .unwrap_or(0)
        }
    };
    let chunks: Vec<u64> = match (&stbl.co64, &stbl.stco) {
        (Some(c), _) => c.entries.clone(),
        (None, Some(c)) => c.entries.iter().map(|&o| u64::from(o)).collect(),
        (None, None) => return Err("no stco/co64".to_owned()),
    };
    let stts: Vec<(u32, u32)> = stbl
        .stts
        .entries
        .iter()
        .map(|e| (e.sample_count, e.sample_delta))
        .collect();
    let ctts: Vec<(u32, i64)> = stbl
        .ctts
        .as_ref()
        .map(|c| {
            c.entries
                .iter()
                .map(|e| (e.sample_count, e.sample_offset))
                .collect()
        })
        .unwrap_or_default();
    let mut sync: Option<Vec<u32>> = stbl.stss.as_ref().map(|s| s.entries.clone());
    if let Some(s) = sync.as_mut() {
        s.sort_unstable();
    }
    let mut stts = Runs {
        runs: &stts,
        at: 0,
        used: 0,
    };
    let mut ctts = Runs {
        runs: &ctts,
        at: 0,
        used: 0,
    };
    let stsc = &stbl.stsc.entries;
    let mut out = Vec::new();
    let mut sample: u64 = 0;
    let mut dts: i64 = 0;
    let mut stsc_at = 0usize;
    'chunks: for (c, &chunk_offset) in chunks.iter().enumerate() {
        let chunk_no = u32::try_from(c + 1).unwrap_or(u32::MAX);
        while stsc
            .get(stsc_at + 1)
            .is_some_and(|n| n.first_chunk <= chunk_no)
        {
            stsc_at += 1;
        }
        let Some(per_chunk) = stsc.get(stsc_at).map(|e| e.samples_per_chunk) else {
            return Err("empty stsc".to_owned());
        };
        let mut offset = chunk_offset;
        let mut merged: Option<IndexEntry> = None;
        let mut merged_count = 0u32;
        for _ in 0..per_chunk {
            if sample >= count {
                if let Some(m) = merged.take() {
                    out.push(m);
                }
                break 'chunks;
            }
            let size = size_of(sample);
            let duration = stts.next().unwrap_or(0);
            let cts = ctts.next().unwrap_or(0);
            let keyframe = match &sync {
                None => true,
                Some(s) => u32::try_from(sample + 1).is_ok_and(|n| s.binary_search(&n).is_ok()),
            };
            let end = offset.saturating_add(u64::from(size));
            if end > file_len {
                if let Some(m) = merged.take() {
                    out.push(m);
                }
                break 'chunks;
            }
            let d = dts.saturating_add(delta);
            let entry = IndexEntry {
                offset,
                size,
                dts: d,
                pts: d.saturating_add(cts),
                duration,
                keyframe,
            };
            if merge_chunks {
                match merged.as_mut() {
                    None => {
                        merged = Some(entry);
                        merged_count = 1;
                    }
                    Some(m) => {
                        m.size = m.size.saturating_add(size);
                        m.duration = m.duration.saturating_add(duration);
                        merged_count += 1;
                    }
                }
                if merged_count == MAX_MERGE {
                    out.extend(merged.take());
                }
            } else {
                out.push(entry);
            }
            offset = end;
            dts = dts.saturating_add(i64::from(duration));
            sample += 1;
        }
        if let Some(m) = merged.take() {
            out.push(m);
        }
    }
    Ok(out)
}
