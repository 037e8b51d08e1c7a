//! The sample index shared by every container: per-track tables of where each sample lives and
//! when it plays, and the demuxer that serves samples from them on demand.

use std::io::{Read, Seek};
use std::time::Duration;

use bytes::Bytes;

use crate::demuxer::Demuxer;
use crate::error::MediaError;
use crate::media::{ticks_to_duration, MediaInfo, Sample, TrackInfo};
use crate::source::Source;

/// Where one sample's bytes are and when it decodes and plays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    /// Absolute byte offset of the data.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u32,
    /// Decode timestamp (track timescale).
    pub dts: i64,
    /// Presentation timestamp (track timescale).
    pub pts: i64,
    /// Duration (track timescale).
    pub duration: u32,
    /// Sync sample.
    pub keyframe: bool,
}

/// One supported track and its samples in decode order.
pub(crate) struct TrackIndex {
    /// Public description (its `index` and `duration` are filled in by [`IndexedDemuxer::new`]).
    pub info: TrackInfo,
    /// Samples in decode order.
    pub entries: Vec<IndexEntry>,
}

/// A demuxer over a fully built sample index; sample data is read on demand.
pub(crate) struct IndexedDemuxer<R> {
    src: Source<R>,
    info: MediaInfo,
    tracks: Vec<Vec<IndexEntry>>,
    cursors: Vec<usize>,
    keyframes: Vec<Duration>,
    skipped: Vec<String>,
}

impl<R: Read + Seek> IndexedDemuxer<R> {
    /// Builds the demuxer. Samples whose data lies beyond the end of the file (a truncated file)
    /// are dropped together with every later sample of their track. `duration` overrides the
    /// computed presentation duration when the container states one.
    pub(crate) fn new(
        src: Source<R>,
        mut tracks: Vec<TrackIndex>,
        duration: Option<Duration>,
        mut skipped: Vec<String>,
    ) -> Result<Self, MediaError> {
        let len = src.len();
        for t in &mut tracks {
            if let Some(bad) = t
                .entries
                .iter()
                .position(|e| e.offset.saturating_add(u64::from(e.size)) > len)
            {
                t.entries.truncate(bad);
            }
        }
        let mut infos = Vec::new();
        let mut tables = Vec::new();
        for t in tracks {
            if t.entries.is_empty() {
                skipped.push(format!("{:?} track without samples", t.info.params.codec));
                continue;
            }
            let mut info = t.info;
            info.index = infos.len();
            info.duration = track_duration(&t.entries, info.timescale);
            infos.push(info);
            tables.push(t.entries);
        }
        if infos.is_empty() {
            return Err(MediaError::Unsupported(if skipped.is_empty() {
                "no tracks".to_owned()
            } else {
                format!("no supported track ({})", skipped.join("; "))
            }));
        }
        let computed = infos.iter().map(|t| t.duration).max().unwrap_or_default();
        let duration = match duration {
            Some(d) if !d.is_zero() => d,
            _ => computed,
        };
        let keyframes = match infos.iter().position(TrackInfo::is_video) {
            Some(v) => {
                let ts = infos[v].timescale;
                let mut k: Vec<Duration> = tables[v]
                    .iter()
                    .filter(|e| e.keyframe)
                    .map(|e| ticks_to_duration(e.pts, ts))
                    .collect();
                k.sort_unstable();
                k.dedup();
                k
            }
            None => Vec::new(),
        };
        let cursors = vec![0; tables.len()];
        Ok(IndexedDemuxer {
            src,
            info: MediaInfo {
                duration,
                tracks: infos,
            },
            tracks: tables,
            cursors,
            keyframes,
            skipped,
        })
    }
}

/// Presentation span of a track: from its earliest pts to the latest pts + duration.
fn track_duration(entries: &[IndexEntry], timescale: u32) -> Duration {
    let start = entries.iter().map(|e| e.pts).min().unwrap_or(0);
    let end = entries
        .iter()
        .map(|e| e.pts.saturating_add(i64::from(e.duration)))
        .max()
        .unwrap_or(0);
    ticks_to_duration(end.saturating_sub(start), timescale)
}

/// `a` (ticks of `ta`) compared with `b` (ticks of `tb`) in seconds.
fn cmp_time(a: i64, ta: u32, b: i64, tb: u32) -> std::cmp::Ordering {
    (i128::from(a) * i128::from(tb)).cmp(&(i128::from(b) * i128::from(ta)))
}

/// Index of the last entry with presentation time at or before `t` among entries passing
/// `filter` (the first passing entry if none is at or before `t`).
fn at_or_before(
    entries: &[IndexEntry],
    timescale: u32,
    t: Duration,
    filter: impl Fn(&IndexEntry) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    let mut first: Option<usize> = None;
    for (i, e) in entries.iter().enumerate() {
        if !filter(e) {
            continue;
        }
        first.get_or_insert(i);
        if ticks_to_duration(e.pts, timescale) <= t && best.is_none_or(|(_, p)| e.pts >= p) {
            best = Some((i, e.pts));
        }
    }
    best.map(|(i, _)| i).or(first)
}

impl<R: Read + Seek + Send> Demuxer for IndexedDemuxer<R> {
    fn info(&self) -> &MediaInfo {
        &self.info
    }

    fn seek(&mut self, t: Duration) -> Result<Duration, MediaError> {
        let anchor = self.info.tracks.iter().position(TrackInfo::is_video);
        let start = match anchor {
            Some(v) => {
                let ts = self.info.tracks[v].timescale;
                let entries = &self.tracks[v];
                let i = at_or_before(entries, ts, t, |e| e.keyframe).unwrap_or(0);
                let start = entries
                    .get(i)
                    .map(|e| ticks_to_duration(e.pts, ts))
                    .unwrap_or_default();
                if entries
                    .iter()
                    .position(|e| e.keyframe)
                    .is_none_or(|k| k == i)
                {
                    // At (or before) the first keyframe: play the whole file from its start,
                    // including leading samples such as audio priming frames.
                    self.cursors.iter_mut().for_each(|c| *c = 0);
                    return Ok(start);
                }
                start
            }
            None => t,
        };
        let mut actual = None::<Duration>;
        for (k, track) in self.info.tracks.iter().enumerate() {
            let entries = &self.tracks[k];
            let video = track.is_video();
            let i = at_or_before(entries, track.timescale, start, |e| !video || e.keyframe)
                .unwrap_or(0);
            self.cursors[k] = i;
            if anchor.is_none() {
                let at = entries
                    .get(i)
                    .map(|e| ticks_to_duration(e.pts, track.timescale))
                    .unwrap_or_default();
                actual = Some(actual.map_or(at, |a| a.min(at)));
            }
        }
        Ok(match anchor {
            Some(_) => start,
            None => actual.unwrap_or_default(),
        })
    }

    fn next_sample(&mut self) -> Result<Option<Sample>, MediaError> {
        let mut pick: Option<(usize, i64, u32)> = None;
        for (k, entries) in self.tracks.iter().enumerate() {
            let Some(e) = entries.get(self.cursors[k]) else {
                continue;
            };
            let ts = self.info.tracks[k].timescale;
            if pick.is_none_or(|(_, d, pts)| cmp_time(e.dts, ts, d, pts).is_lt()) {
                pick = Some((k, e.dts, ts));
            }
        }
        let Some((k, _, _)) = pick else {
            return Ok(None);
        };
        let e = self.tracks[k][self.cursors[k]];
        self.cursors[k] += 1;
        let data = self
            .src
            .read_at(e.offset, u64::from(e.size), "sample data")?;
        Ok(Some(Sample {
            track: k,
            dts: e.dts,
            pts: e.pts,
            duration: e.duration,
            keyframe: e.keyframe,
            data: Bytes::from(data),
        }))
    }

    fn keyframe_times(&self) -> &[Duration] {
        &self.keyframes
    }

    fn skipped_tracks(&self) -> &[String] {
        &self.skipped
    }
}
