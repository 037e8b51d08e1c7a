//! Adds the samples of a movie fragment (`moof` + its `trun`s) to the track indexes.

use mp4_atom::{Moof, Trex};

use crate::index::{IndexEntry, TrackIndex};

/// Per-track state carried from `moov` (trex defaults, edit shift) and across fragments.
pub(crate) struct FragTrack {
    /// The MP4 track_id.
    pub track_id: u32,
    /// Position in the list of supported tracks.
    pub index: usize,
    /// Defaults from `mvex/trex`.
    pub trex: Option<Trex>,
    /// Edit-list shift added to every timestamp.
    pub delta: i64,
    /// Decode time (before the shift) after the last indexed sample, for fragments without tfdt.
    pub next_dts: i64,
}

/// Indexes the samples of `moof` (which starts at file offset `moof_offset`). Samples whose data
/// would lie beyond `file_len` end their run; `budget` caps the total number of samples indexed
/// (decremented here) so a lying sample count cannot exhaust memory.
pub(crate) fn add_moof(
    moof: &Moof,
    moof_offset: u64,
    tracks: &mut [FragTrack],
    indexes: &mut [TrackIndex],
    file_len: u64,
    budget: &mut u64,
) {
    let mut prev_end = moof_offset;
    for (n, traf) in moof.traf.iter().enumerate() {
        let tfhd = &traf.tfhd;
        let Some(track) = tracks.iter_mut().find(|t| t.track_id == tfhd.track_id) else {
            continue;
        };
        let Some(index) = indexes.get_mut(track.index) else {
            continue;
        };
        let base = match tfhd.base_data_offset {
            Some(b) => b,
            None if tfhd.default_base_is_moof || n == 0 => moof_offset,
            None => prev_end,
        };
        let trex = track.trex.as_ref();
        let mut dts = match &traf.tfdt {
            Some(t) => i64::try_from(t.base_media_decode_time).unwrap_or(i64::MAX),
            None => track.next_dts,
        };
        let mut cursor = base;
        'runs: for trun in &traf.trun {
            if let Some(o) = trun.data_offset {
                cursor = base.saturating_add_signed(i64::from(o));
            }
            for e in trun.samples.iter() {
                if *budget == 0 {
                    break 'runs;
                }
                let duration = e
                    .duration
                    .or(tfhd.default_sample_duration)
                    .or(trex.map(|t| t.default_sample_duration))
                    .unwrap_or(0);
                let size = e
                    .size
                    .or(tfhd.default_sample_size)
                    .or(trex.map(|t| t.default_sample_size))
                    .unwrap_or(0);
                let flags = e
                    .flags
                    .or(tfhd.default_sample_flags)
                    .or(trex.map(|t| t.default_sample_flags))
                    .unwrap_or(0);
                let end = cursor.saturating_add(u64::from(size));
                if end > file_len {
                    break 'runs;
                }
                let d = dts.saturating_add(track.delta);
                index.entries.push(IndexEntry {
                    offset: cursor,
                    size,
                    dts: d,
                    pts: d.saturating_add(e.cts.unwrap_or(0)),
                    duration,
                    // sample_is_non_sync_sample is bit 16 of the sample flags.
                    keyframe: flags & 0x0001_0000 == 0,
                });
                *budget -= 1;
                cursor = end;
                dts = dts.saturating_add(i64::from(duration));
            }
        }
        prev_end = prev_end.max(cursor);
        track.next_dts = dts;
    }
}
