//! Recordings played back over HTTP without re-encoding: a progressive MP4 (`moov` first)
//! built from archive segments' parts, and the media playlist of an HLS VOD that points into
//! the segment files by byte range.
//!
//! **MP4 export.** An [`ExportBuilder`] takes the init segment of the recordings, then the
//! header of each part in play order (its `prft` + `moof`, read by the caller from the file
//! at the part's offset; [`part_header_len`] says how many bytes that takes). From the
//! `moof`s' track runs it builds ordinary sample tables (`stts`, `ctts`, `stss`, `stsz`,
//! `stsc`, `co64`); the samples themselves stay where they are: [`Export`] is the new head
//! (`ftyp`, `moov`, the `mdat` header) plus a list of [`Piece`]s, byte ranges of the segment
//! files that make up the `mdat` in order. The caller serves the head and the pieces, so any
//! byte range of the virtual file is answered from memory and file reads, never a copy of
//! the recording. Each track's edit list starts it exactly at the asked instant (the parts
//! begin at the keyframe before it) and ends it at the asked end. Parts of later segments
//! are placed on the timeline by their wall clock: a gap between segments is held on the
//! last frame before it (the last sample lasts until the next one starts).
//!
//! Files are untrusted: every size and offset is checked, nothing panics, and tables are
//! bounded by the headers read.

use std::time::{Duration, SystemTime};

/// Why an export could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The init segment is not a usable `ftyp` + `moov`.
    #[error("init segment: {0}")]
    Init(String),
    /// A part's header is not a usable `prft` + `moof`.
    #[error("part at byte {offset}: {reason}")]
    Part {
        /// The part's offset in its file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// No sample falls into the asked range.
    #[error("no media in the asked range")]
    Empty,
}

/// A byte range of one of the caller's files (numbered as the caller passed them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The caller's file number.
    pub file: usize,
    /// Byte offset in that file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A progressive MP4: `head` then the pieces' bytes, `len` bytes in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// `ftyp`, `moov` and the `mdat` header.
    pub head: Vec<u8>,
    /// The `mdat` body, in order.
    pub pieces: Vec<Piece>,
    /// The whole file's length.
    pub len: u64,
    /// Its duration (the edit lists' span).
    pub duration: Duration,
}

impl Export {
    /// Where the bytes `[from, to)` of the file come from, in order: `Ok(head slice)` or
    /// `Err(piece slice)` items (a piece narrowed to the range).
    pub fn slices(&self, from: u64, to: u64) -> Vec<Result<std::ops::Range<usize>, Piece>> {
        let mut out = Vec::new();
        let to = to.min(self.len);
        if from >= to {
            return out;
        }
        let head_len = self.head.len() as u64;
        if from < head_len {
            out.push(Ok(from as usize..to.min(head_len) as usize));
        }
        let mut pos = head_len;
        for p in &self.pieces {
            let (start, end) = (pos, pos + p.len);
            pos = end;
            if end <= from {
                continue;
            }
            if start >= to {
                break;
            }
            let a = from.max(start);
            let b = to.min(end);
            out.push(Err(Piece {
                file: p.file,
                offset: p.offset + (a - start),
                len: b - a,
            }));
        }
        out
    }
}

/// A box: its type, and offsets of its body and end within the buffer read.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: [u8; 4],
    start: usize,
    body: usize,
    end: usize,
}

/// The box at `pos` (which must end within `limit`).
fn head_at(buf: &[u8], pos: usize, limit: usize) -> Result<Head, String> {
    let h = buf.get(pos..pos + 8).ok_or("truncated box header")?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let kind = [h[4], h[5], h[6], h[7]];
    let (size, body) = match size32 {
        1 => {
            let l = buf.get(pos + 8..pos + 16).ok_or("truncated box size")?;
            (
                u64::from_be_bytes(l.try_into().map_err(|_| "size")?),
                pos + 16,
            )
        }
        0 => ((limit - pos) as u64, pos + 8),
        n => (n, pos + 8),
    };
    let end = (pos as u64)
        .checked_add(size)
        .filter(|e| *e <= limit as u64 && size >= (body - pos) as u64)
        .ok_or_else(|| format!("box {} overruns its parent", String::from_utf8_lossy(&kind)))?;
    Ok(Head {
        kind,
        start: pos,
        body,
        end: end as usize,
    })
}

/// The child boxes of `[from, to)`.
fn boxes(buf: &[u8], from: usize, to: usize) -> Result<Vec<Head>, String> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos + 8 <= to {
        let h = head_at(buf, pos, to)?;
        pos = h.end;
        out.push(h);
        if out.len() > 100_000 {
            return Err("too many boxes".into());
        }
    }
    Ok(out)
}

fn child(buf: &[u8], parent: Head, kind: &[u8; 4]) -> Result<Option<Head>, String> {
    Ok(boxes(buf, parent.body, parent.end)?
        .into_iter()
        .find(|h| &h.kind == kind))
}

fn need(buf: &[u8], parent: Head, kind: &[u8; 4]) -> Result<Head, String> {
    child(buf, parent, kind)?.ok_or_else(|| format!("no {} box", String::from_utf8_lossy(kind)))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32, String> {
    buf.get(pos..pos + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "truncated field".to_owned())
}

fn u64_at(buf: &[u8], pos: usize) -> Result<u64, String> {
    buf.get(pos..pos + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| "truncated field".to_owned())
}

/// How many bytes from a part's start hold its header (`prft` and the like, then the whole
/// `moof`), given its first bytes: `Ok(None)` when `prefix` is too short to tell.
pub fn part_header_len(prefix: &[u8]) -> Result<Option<usize>, ExportError> {
    let mut pos = 0usize;
    loop {
        let Some(h) = prefix.get(pos..pos + 8) else {
            return Ok(None);
        };
        let size = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]));
        let size = if size == 1 {
            match prefix.get(pos + 8..pos + 16) {
                Some(l) => u64::from_be_bytes(l.try_into().unwrap_or([0; 8])),
                None => return Ok(None),
            }
        } else {
            size
        };
        if !(8..=(64 << 20)).contains(&size) {
            return Err(ExportError::Part {
                offset: pos as u64,
                reason: format!("box of {size} bytes in a part header"),
            });
        }
        let end = pos + size as usize;
        if &h[4..8] == b"moof" {
            return Ok(Some(end));
        }
        if &h[4..8] == b"mdat" {
            return Err(ExportError::Part {
                offset: pos as u64,
                reason: "mdat before any moof".into(),
            });
        }
        pos = end;
    }
}

/// What the export keeps of one track of the init.
#[derive(Debug, Clone)]
struct InitTrack {
    id: u32,
    timescale: u32,
    /// `trex` defaults: duration, size, flags.
    defaults: (u32, u32, u32),
    tkhd: Vec<u8>,
    mdhd: Vec<u8>,
    hdlr: Vec<u8>,
    /// `vmhd`/`smhd`/`nmhd` and `dinf`, as they were.
    minf_heads: Vec<Vec<u8>>,
    stsd: Vec<u8>,
}

/// One sample as the tables want it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    duration: u32,
    size: u32,
    sync: bool,
    cto: i32,
}

/// A track being built.
#[derive(Debug, Clone)]
struct TrackBuild {
    init: InitTrack,
    samples: Vec<Sample>,
    /// Chunks: first sample index, sample count, offset within the mdat body.
    chunks: Vec<(usize, u32, u64)>,
    /// Wall clock of the first sample.
    zero_wall: Option<SystemTime>,
    /// Ticks from the first sample to the end of the last one.
    end_ticks: u64,
    /// The segment (its start) and the decode time after the last sample in it.
    last: Option<(SystemTime, u64)>,
}

/// Builds an [`Export`] from an init and part headers (see the module's doc).
#[derive(Debug)]
pub struct ExportBuilder {
    tracks: Vec<TrackBuild>,
    start: SystemTime,
    end: SystemTime,
    pieces: Vec<Piece>,
    body_len: u64,
}

/// Non-sync flag of a sample (ISO/IEC 14496-12 `sample_is_non_sync_sample`).
const NON_SYNC: u32 = 0x0001_0000;

fn wall_add(t: SystemTime, ticks: u64, timescale: u32) -> SystemTime {
    t + Duration::from_nanos(
        u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(timescale.max(1)))
            .unwrap_or(u64::MAX),
    )
}

fn ticks_between(from: SystemTime, to: SystemTime, timescale: u32) -> i64 {
    let (d, neg) = match to.duration_since(from) {
        Ok(d) => (d, false),
        Err(e) => (e.duration(), true),
    };
    let t = i64::try_from(d.as_nanos() * u128::from(timescale) / 1_000_000_000).unwrap_or(i64::MAX);
    if neg {
        -t
    } else {
        t
    }
}

impl ExportBuilder {
    /// A builder for the media of `init`'s tracks from `start` to `end` (wall clock).
    pub fn new(init: &[u8], start: SystemTime, end: SystemTime) -> Result<Self, ExportError> {
        let tracks = parse_init(init).map_err(ExportError::Init)?;
        Ok(ExportBuilder {
            tracks: tracks
                .into_iter()
                .map(|init| TrackBuild {
                    init,
                    samples: Vec::new(),
                    chunks: Vec::new(),
                    zero_wall: None,
                    end_ticks: 0,
                    last: None,
                })
                .collect(),
            start,
            end,
            pieces: Vec::new(),
            body_len: 0,
        })
    }

    /// Adds a part: `header` holds its bytes from its offset `offset` in file `file` at
    /// least to the end of its `moof` ([`part_header_len`]); `segment_start` is the wall
    /// clock of decode time 0 of its segment file (`tfdt` 0, which is before the file's
    /// first sample when the segment continues an earlier one's timeline:
    /// [`SegmentRecord::zero_wall`](crate::archive::SegmentRecord::zero_wall)). Parts come
    /// in play order.
    pub fn push_part(
        &mut self,
        file: usize,
        segment_start: SystemTime,
        offset: u64,
        header: &[u8],
    ) -> Result<(), ExportError> {
        let err = |reason: String| ExportError::Part { offset, reason };
        let runs = self.parse_moof(header, offset).map_err(err)?;
        let Some(data_start) = runs.iter().map(|r| r.data.0).min() else {
            return Ok(());
        };
        let data_end = runs.iter().map(|r| r.data.1).max().unwrap_or(data_start);
        let body_base = self.body_len;
        for run in runs {
            let t = self
                .tracks
                .get_mut(run.track)
                .ok_or_else(|| ExportError::Part {
                    offset,
                    reason: "run of an unknown track".into(),
                })?;
            if run.samples.is_empty() {
                continue;
            }
            let ts = t.init.timescale;
            let wall = wall_add(segment_start, run.base_dts, ts);
            match (t.zero_wall, t.last) {
                (None, _) => t.zero_wall = Some(wall),
                (Some(_), Some((seg, next))) if seg == segment_start && next == run.base_dts => {}
                (Some(zero), _) => {
                    // A new segment (or a hole): the last sample lasts until this one.
                    let desired = ticks_between(zero, wall, ts).max(0) as u64;
                    if let Some(last) = t.samples.last_mut() {
                        let before = t.end_ticks - u64::from(last.duration);
                        let d = desired.saturating_sub(before).clamp(1, u64::from(u32::MAX));
                        last.duration = d as u32;
                        t.end_ticks = before + d;
                    }
                }
            }
            let first = t.samples.len();
            let mut dts = run.base_dts;
            for s in &run.samples {
                t.end_ticks += u64::from(s.duration);
                dts += u64::from(s.duration);
            }
            t.samples.extend_from_slice(&run.samples);
            t.last = Some((segment_start, dts));
            t.chunks.push((
                first,
                run.samples.len() as u32,
                body_base + (run.data.0 - data_start),
            ));
        }
        self.pieces.push(Piece {
            file,
            offset: data_start,
            len: data_end - data_start,
        });
        self.body_len += data_end - data_start;
        Ok(())
    }

    /// The track runs of the part whose header is `buf` (at file offset `offset`).
    fn parse_moof(&self, buf: &[u8], offset: u64) -> Result<Vec<Run>, String> {
        let top = boxes(buf, 0, buf.len())?;
        let moof = top
            .iter()
            .find(|h| &h.kind == b"moof")
            .copied()
            .ok_or("no moof")?;
        let moof_file = offset + moof.start as u64;
        let mut runs = Vec::new();
        let mut next_base = moof_file;
        for traf in boxes(buf, moof.body, moof.end)? {
            if &traf.kind != b"traf" {
                continue;
            }
            let run = self.parse_traf(buf, traf, moof_file, next_base)?;
            next_base = run.data.1;
            runs.push(run);
        }
        Ok(runs)
    }

    fn parse_traf(
        &self,
        buf: &[u8],
        traf: Head,
        moof_file: u64,
        next_base: u64,
    ) -> Result<Run, String> {
        let mut track = None;
        let mut base = next_base;
        let mut defaults = (0, 0, 0);
        let mut base_dts = None;
        let mut samples = Vec::new();
        let mut data: Option<(u64, u64)> = None;
        for c in boxes(buf, traf.body, traf.end)? {
            let mut p = c.body;
            match &c.kind {
                b"tfhd" => {
                    let flags = u32_at(buf, p)? & 0x00ff_ffff;
                    let id = u32_at(buf, p + 4)?;
                    p += 8;
                    let i = self
                        .tracks
                        .iter()
                        .position(|t| t.init.id == id)
                        .ok_or_else(|| format!("traf of unknown track {id}"))?;
                    track = Some(i);
                    defaults = self.tracks[i].init.defaults;
                    if flags & 0x1 != 0 {
                        base = u64_at(buf, p)?;
                        p += 8;
                    } else if flags & 0x2_0000 != 0 {
                        base = moof_file;
                    }
                    if flags & 0x2 != 0 {
                        p += 4;
                    }
                    if flags & 0x8 != 0 {
                        defaults.0 = u32_at(buf, p)?;
                        p += 4;
                    }
                    if flags & 0x10 != 0 {
                        defaults.1 = u32_at(buf, p)?;
                        p += 4;
                    }
                    if flags & 0x20 != 0 {
                        defaults.2 = u32_at(buf, p)?;
                    }
                }
                b"tfdt" => {
                    let v = buf.get(p).copied().ok_or("truncated tfdt")?;
                    base_dts = Some(if v == 1 {
                        u64_at(buf, p + 4)?
                    } else {
                        u64::from(u32_at(buf, p + 4)?)
                    });
                }
                b"trun" => {
                    if track.is_none() {
                        return Err("trun before tfhd".into());
                    }
                    let vf = u32_at(buf, p)?;
                    let (version, flags) = (vf >> 24, vf & 0x00ff_ffff);
                    let count = u32_at(buf, p + 4)? as usize;
                    p += 8;
                    let start = if flags & 0x1 != 0 {
                        let off = i64::from(u32_at(buf, p)? as i32);
                        p += 4;
                        base.checked_add_signed(off)
                            .ok_or("data offset out of range")?
                    } else {
                        data.map_or(base, |d| d.1)
                    };
                    let first_flags = if flags & 0x4 != 0 {
                        let f = u32_at(buf, p)?;
                        p += 4;
                        Some(f)
                    } else {
                        None
                    };
                    let per = 4 * [0x100, 0x200, 0x400, 0x800]
                        .iter()
                        .filter(|b| flags & **b != 0)
                        .count();
                    if count.saturating_mul(per) > c.end.saturating_sub(p) {
                        return Err(format!("trun declares {count} samples it cannot hold"));
                    }
                    if per == 0 && count > 1_000_000 {
                        return Err("too many samples".into());
                    }
                    let mut bytes = 0u64;
                    for k in 0..count {
                        let mut field = |bit: u32, default: u32| -> Result<u32, String> {
                            if flags & bit != 0 {
                                let v = u32_at(buf, p)?;
                                p += 4;
                                Ok(v)
                            } else {
                                Ok(default)
                            }
                        };
                        let duration = field(0x100, defaults.0)?;
                        let size = field(0x200, defaults.1)?;
                        let mut fl = field(0x400, defaults.2)?;
                        let cto = field(0x800, 0)?;
                        if k == 0 {
                            fl = first_flags.unwrap_or(fl);
                        }
                        let cto = if version == 0 {
                            cto.min(i32::MAX as u32) as i32
                        } else {
                            cto as i32
                        };
                        bytes += u64::from(size);
                        samples.push(Sample {
                            duration,
                            size,
                            sync: fl & NON_SYNC == 0,
                            cto,
                        });
                    }
                    let end = start.checked_add(bytes).ok_or("sample data out of range")?;
                    data = Some(match data {
                        None => (start, end),
                        Some((a, b)) if start == b => (a, end),
                        Some(_) => return Err("non-contiguous runs in one traf".into()),
                    });
                }
                _ => {}
            }
        }
        Ok(Run {
            track: track.ok_or("traf without tfhd")?,
            base_dts: base_dts.ok_or("traf without tfdt")?,
            samples,
            data: data.unwrap_or((base, base)),
        })
    }

    /// The file: tables, edit lists and the pieces.
    pub fn finish(self) -> Result<Export, ExportError> {
        const MOVIE_SCALE: u32 = 1000;
        let ExportBuilder {
            tracks,
            start,
            end,
            pieces,
            body_len,
        } = self;
        let tracks: Vec<TrackBuild> = tracks
            .into_iter()
            .filter(|t| !t.samples.is_empty())
            .collect();
        if tracks.is_empty() {
            return Err(ExportError::Empty);
        }
        // Per track: its edits (empty lead-in, then media from `start`), in movie ticks.
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let mut edits = Vec::new();
        let mut duration_ms = 0u64;
        for t in &tracks {
            let ts = t.init.timescale;
            let zero = t.zero_wall.unwrap_or(start);
            let track_end = wall_add(zero, t.end_ticks, ts).min(end);
            let cto0 = t.samples.first().map_or(0, |s| s.cto.max(0) as u64);
            let (lead_in, media_time, from) = if zero <= start {
                (
                    0,
                    ticks_between(zero, start, ts).max(0) as u64 + cto0,
                    start,
                )
            } else {
                (
                    ms(zero.duration_since(start).unwrap_or_default()),
                    cto0,
                    zero,
                )
            };
            let span = ms(track_end.duration_since(from).unwrap_or_default());
            duration_ms = duration_ms.max(lead_in + span);
            edits.push((lead_in, media_time, span));
        }
        let moov_for = |offsets_base: u64| -> Vec<u8> {
            let mut traks = Vec::new();
            for (i, (t, e)) in tracks.iter().zip(&edits).enumerate() {
                traks.push(trak(t, *e, duration_ms, offsets_base, i));
            }
            let next_id = tracks.iter().map(|t| t.init.id).max().unwrap_or(0) + 1;
            let mut body = mvhd(MOVIE_SCALE, duration_ms, next_id);
            for t in traks {
                body.extend_from_slice(&t);
            }
            mp4box(b"moov", &body)
        };
        let ftyp = mp4box(
            b"ftyp",
            &[
                b"isom".as_slice(),
                &512u32.to_be_bytes(),
                b"isomiso2avc1mp41",
            ]
            .concat(),
        );
        // The moov's size does not depend on the offsets (co64): build it twice.
        let probe = moov_for(0);
        let mdat_header = 16u64;
        let base = ftyp.len() as u64 + probe.len() as u64 + mdat_header;
        let moov = moov_for(base);
        let mut head = ftyp;
        head.extend_from_slice(&moov);
        head.extend_from_slice(&1u32.to_be_bytes());
        head.extend_from_slice(b"mdat");
        head.extend_from_slice(&(mdat_header + body_len).to_be_bytes());
        let len = head.len() as u64 + body_len;
        Ok(Export {
            head,
            pieces,
            len,
            duration: Duration::from_millis(duration_ms),
        })
    }
}

/// One track's run of samples in a part, and where its data is in the file.
#[derive(Debug)]
struct Run {
    track: usize,
    base_dts: u64,
    samples: Vec<Sample>,
    data: (u64, u64),
}

fn mp4box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 8);
    b.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
    b.extend_from_slice(kind);
    b.extend_from_slice(body);
    b
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 4);
    b.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
    b.extend_from_slice(body);
    mp4box(kind, &b)
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn mvhd(timescale: u32, duration: u64, next_id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&timescale.to_be_bytes());
    b.extend_from_slice(&duration.to_be_bytes());
    b.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    b.extend_from_slice(&0x0100u16.to_be_bytes());
    b.extend_from_slice(&[0; 10]);
    for m in MATRIX {
        b.extend_from_slice(&m.to_be_bytes());
    }
    b.extend_from_slice(&[0; 24]);
    b.extend_from_slice(&next_id.to_be_bytes());
    full(b"mvhd", 1, 0, &b)
}

/// `tkhd` or `mdhd` (both: creation, modification, then a 32-bit field, then duration)
/// with its duration replaced.
fn with_duration(raw: &[u8], duration: u64, skip_after_times: usize) -> Vec<u8> {
    let mut b = raw.to_vec();
    let Some(&version) = b.get(8) else {
        return b;
    };
    let (pos, wide) = if version == 1 {
        (12 + 16 + skip_after_times, true)
    } else {
        (12 + 8 + skip_after_times, false)
    };
    if wide {
        if let Some(s) = b.get_mut(pos..pos + 8) {
            s.copy_from_slice(&duration.to_be_bytes());
        }
    } else if let Some(s) = b.get_mut(pos..pos + 4) {
        s.copy_from_slice(&(duration.min(u64::from(u32::MAX)) as u32).to_be_bytes());
    }
    b
}

fn trak(
    t: &TrackBuild,
    edit: (u64, u64, u64),
    movie_ms: u64,
    body_base: u64,
    _i: usize,
) -> Vec<u8> {
    let (lead_in, media_time, span) = edit;
    let mut body = with_duration(&t.init.tkhd, movie_ms, 8);
    // Edit list (version 1): an empty lead-in if the track starts later, then the media.
    let mut el = Vec::new();
    let entries: Vec<(u64, i64)> = if lead_in > 0 {
        vec![(lead_in, -1), (span, media_time as i64)]
    } else {
        vec![(span, media_time as i64)]
    };
    el.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (d, m) in entries {
        el.extend_from_slice(&d.to_be_bytes());
        el.extend_from_slice(&m.to_be_bytes());
        el.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    }
    body.extend_from_slice(&mp4box(b"edts", &full(b"elst", 1, 0, &el)));
    // mdia: mdhd (duration), hdlr, minf (its header boxes, then the new stbl).
    let mut mdia = with_duration(&t.init.mdhd, t.end_ticks, 4);
    mdia.extend_from_slice(&t.init.hdlr);
    let mut minf = Vec::new();
    for h in &t.init.minf_heads {
        minf.extend_from_slice(h);
    }
    minf.extend_from_slice(&stbl(t, body_base));
    mdia.extend_from_slice(&mp4box(b"minf", &minf));
    body.extend_from_slice(&mp4box(b"mdia", &mdia));
    mp4box(b"trak", &body)
}

fn stbl(t: &TrackBuild, body_base: u64) -> Vec<u8> {
    let mut b = t.init.stsd.clone();
    // stts
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for s in &t.samples {
        match runs.last_mut() {
            Some((n, d)) if *d == s.duration => *n += 1,
            _ => runs.push((1, s.duration)),
        }
    }
    b.extend_from_slice(&full(b"stts", 0, 0, &table(&runs)));
    // ctts (signed, version 1) when any sample has an offset.
    if t.samples.iter().any(|s| s.cto != 0) {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for s in &t.samples {
            let c = s.cto as u32;
            match runs.last_mut() {
                Some((n, v)) if *v == c => *n += 1,
                _ => runs.push((1, c)),
            }
        }
        b.extend_from_slice(&full(b"ctts", 1, 0, &table(&runs)));
    }
    // stss when not every sample is a sync sample.
    if t.samples.iter().any(|s| !s.sync) {
        let syncs: Vec<u32> = t
            .samples
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sync)
            .map(|(i, _)| i as u32 + 1)
            .collect();
        let mut body = (syncs.len() as u32).to_be_bytes().to_vec();
        for s in syncs {
            body.extend_from_slice(&s.to_be_bytes());
        }
        b.extend_from_slice(&full(b"stss", 0, 0, &body));
    }
    // stsz
    let mut body = 0u32.to_be_bytes().to_vec();
    body.extend_from_slice(&(t.samples.len() as u32).to_be_bytes());
    for s in &t.samples {
        body.extend_from_slice(&s.size.to_be_bytes());
    }
    b.extend_from_slice(&full(b"stsz", 0, 0, &body));
    // stsc: (first chunk, samples per chunk, description 1), run-length.
    let mut stsc: Vec<(u32, u32)> = Vec::new();
    for (i, (_, n, _)) in t.chunks.iter().enumerate() {
        if stsc.last().is_none_or(|(_, m)| m != n) {
            stsc.push((i as u32 + 1, *n));
        }
    }
    let mut body = (stsc.len() as u32).to_be_bytes().to_vec();
    for (first, n) in stsc {
        body.extend_from_slice(&first.to_be_bytes());
        body.extend_from_slice(&n.to_be_bytes());
        body.extend_from_slice(&1u32.to_be_bytes());
    }
    b.extend_from_slice(&full(b"stsc", 0, 0, &body));
    // co64
    let mut body = (t.chunks.len() as u32).to_be_bytes().to_vec();
    for (_, _, off) in &t.chunks {
        body.extend_from_slice(&(body_base + off).to_be_bytes());
    }
    b.extend_from_slice(&full(b"co64", 0, 0, &body));
    mp4box(b"stbl", &b)
}

fn table(runs: &[(u32, u32)]) -> Vec<u8> {
    let mut b = (runs.len() as u32).to_be_bytes().to_vec();
    for (n, v) in runs {
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// The tracks of an init segment, with the boxes the export copies.
fn parse_init(buf: &[u8]) -> Result<Vec<InitTrack>, String> {
    let top = boxes(buf, 0, buf.len())?;
    let moov = top
        .iter()
        .find(|h| &h.kind == b"moov")
        .copied()
        .ok_or("no moov")?;
    let raw = |h: Head| buf[h.start..h.end].to_vec();
    let mut trex = Vec::new();
    if let Some(mvex) = child(buf, moov, b"mvex")? {
        for h in boxes(buf, mvex.body, mvex.end)? {
            if &h.kind == b"trex" {
                let p = h.body + 4;
                trex.push((
                    u32_at(buf, p)?,
                    (
                        u32_at(buf, p + 8)?,
                        u32_at(buf, p + 12)?,
                        u32_at(buf, p + 16)?,
                    ),
                ));
            }
        }
    }
    let mut tracks = Vec::new();
    for trak in boxes(buf, moov.body, moov.end)? {
        if &trak.kind != b"trak" {
            continue;
        }
        let tkhd = need(buf, trak, b"tkhd")?;
        let version = buf.get(tkhd.body).copied().ok_or("short tkhd")?;
        let id = u32_at(buf, tkhd.body + if version == 1 { 20 } else { 12 })?;
        let mdia = need(buf, trak, b"mdia")?;
        let mdhd = need(buf, mdia, b"mdhd")?;
        let mv = buf.get(mdhd.body).copied().ok_or("short mdhd")?;
        let timescale = u32_at(buf, mdhd.body + if mv == 1 { 20 } else { 12 })?;
        if timescale == 0 {
            return Err(format!("track {id} has timescale 0"));
        }
        let hdlr = need(buf, mdia, b"hdlr")?;
        let minf = need(buf, mdia, b"minf")?;
        let stbl = need(buf, minf, b"stbl")?;
        let stsd = need(buf, stbl, b"stsd")?;
        let minf_heads = boxes(buf, minf.body, minf.end)?
            .into_iter()
            .filter(|h| &h.kind != b"stbl")
            .map(raw)
            .collect();
        tracks.push(InitTrack {
            id,
            timescale,
            defaults: trex
                .iter()
                .find(|(i, _)| *i == id)
                .map_or((0, 0, 0), |(_, d)| *d),
            tkhd: raw(tkhd),
            mdhd: raw(mdhd),
            hdlr: raw(hdlr),
            minf_heads,
            stsd: raw(stsd),
        });
    }
    if tracks.is_empty() {
        return Err("no track".into());
    }
    Ok(tracks)
}

/// One media segment of an HLS VOD playlist: a part of a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VodPart {
    /// The URI of its file (the caller's).
    pub uri: String,
    /// Byte offset and length of the part in the file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Its duration.
    pub duration: Duration,
    /// Wall clock of its first sample.
    pub wall: SystemTime,
    /// The URI, offset and length of its file's init segment.
    pub init: (String, u64),
    /// Whether a discontinuity precedes it (a gap or a new init).
    pub discontinuity: bool,
}

/// The media playlist of an HLS VOD over `parts` (in play order; see [`VodPart`]): fMP4
/// with byte ranges, `EXT-X-MAP` whenever the init changes, `EXT-X-PROGRAM-DATE-TIME` on
/// each part, `EXT-X-DISCONTINUITY` where asked, `EXT-X-ENDLIST`.
pub fn vod_playlist(parts: &[VodPart]) -> String {
    use std::fmt::Write as _;
    let target = parts
        .iter()
        .map(|p| p.duration.as_secs_f64().ceil() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-PLAYLIST-TYPE:VOD\n\
         #EXT-X-MEDIA-SEQUENCE:0\n"
    );
    let mut map: Option<&(String, u64)> = None;
    for p in parts {
        if p.discontinuity && map.is_some() {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if map != Some(&p.init) {
            let _ = writeln!(
                out,
                "#EXT-X-MAP:URI=\"{}\",BYTERANGE=\"{}@0\"",
                p.init.0, p.init.1
            );
            map = Some(&p.init);
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            humantime::format_rfc3339_millis(p.wall)
        );
        let _ = write!(
            out,
            "#EXTINF:{:.5},\n#EXT-X-BYTERANGE:{}@{}\n{}\n",
            p.duration.as_secs_f64(),
            p.len,
            p.offset,
            p.uri
        );
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

#[cfg(test)]
mod tests;
