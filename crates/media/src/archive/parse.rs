//! A bounded, panic-free reader of the archive's fMP4 segment files: the init (`ftyp` +
//! `moov`) and each part (`prft` + `moof` + `mdat`), validated against each other, for crash
//! recovery and reindexing.
//!
//! Nothing here trusts a size: every box must lie inside its parent, sample tables are summed
//! without being stored (a `trun` declaring four billion samples costs no memory, and is
//! checked against the bytes it would need), and what is kept grows only with the bytes read.

use std::io::{self, Read, Seek, SeekFrom};
use std::time::{Duration, SystemTime};

use super::crc::crc32;
use super::ntp_to_system;

/// What made the rest of a file unusable, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct Damage {
    /// Offset of the first byte not kept.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

/// A track of the init segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitTrack {
    /// Its `track_ID`.
    pub id: u32,
    /// Its media timescale (`mdhd`), ticks per second; never zero.
    pub timescale: u32,
    /// Whether its handler is `vide`.
    pub video: bool,
    default_duration: u32,
    default_size: u32,
    default_flags: u32,
}

/// The init segment (`ftyp` + `moov`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitInfo {
    /// Its length in bytes (the first part starts there).
    pub len: u64,
    /// Its tracks, in `moov` order.
    pub tracks: Vec<InitTrack>,
    /// Index (in `tracks`) of the track whose clock times the parts: the first video track,
    /// else the first track (the writer's rule).
    pub lead: usize,
    /// Whether the init ends with the archive's marker (a `free` box naming the format):
    /// then every part ends with a checksum box, and a part without a matching one is
    /// incomplete.
    pub checksummed: bool,
}

/// The body of the `free` box the archive writes after the `moov`.
pub(crate) const MARKER: &[u8] = b"sluice-archive-v1: parts end with a crc32 skip box";

/// The type tag opening the body of a part's closing checksum box (`skip`).
pub(crate) const CRC_TAG: &[u8; 4] = b"sl32";

/// One track's run of samples in a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTrack {
    /// Index of the track in [`InitInfo::tracks`].
    pub track: usize,
    /// Decode time of its first sample (`tfdt`), in the track's timescale.
    pub base_dts: u64,
    /// Sum of its sample durations, in the track's timescale.
    pub duration: u64,
    /// Number of samples.
    pub samples: u64,
    /// Whether its first sample is a sync sample (decodable on its own).
    pub starts_with_sync: bool,
    /// Whether any of its samples is a sync sample.
    pub has_sync: bool,
}

/// One complete part: an optional `prft`, a `moof` and its `mdat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Offset of its first byte (the `prft`, else the `moof`).
    pub offset: u64,
    /// Its length in bytes, up to the end of its `mdat`.
    pub len: u64,
    /// The `mfhd` sequence number.
    pub sequence: u32,
    /// The `prft` NTP timestamp (wall clock of its first sample), if it has one.
    pub ntp: Option<u64>,
    /// Its tracks' sample runs.
    pub tracks: Vec<PartTrack>,
}

impl PartInfo {
    /// Media time span `[start, end)` on the file's decode timeline (`tfdt` time, from
    /// decode time 0), by the lead track's clock (or across all tracks when the part has no
    /// sample of the lead track).
    ///
    /// A segment's decode times need not start at 0: one that continues the previous
    /// segment of a recording (cut on duration) starts where that one ended, so that the
    /// media stays continuous across files. Times from the segment's start are this span
    /// minus the segment's base, its first part's start ([`PartInfo::span_from`],
    /// [`Recovered::media_base`]).
    pub fn span(&self, init: &InitInfo) -> (Duration, Duration) {
        let secs = |t: &PartTrack, ticks: u64| {
            let scale = init.tracks.get(t.track).map_or(1, |i| i.timescale).max(1);
            Duration::from_nanos(
                u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(scale))
                    .unwrap_or(u64::MAX),
            )
        };
        let lead: Vec<&PartTrack> = self
            .tracks
            .iter()
            .filter(|t| t.track == init.lead)
            .collect();
        let pool = if lead.is_empty() {
            self.tracks.iter().collect()
        } else {
            lead
        };
        let start = pool.iter().map(|t| secs(t, t.base_dts)).min();
        let end = pool
            .iter()
            .map(|t| secs(t, t.base_dts.saturating_add(t.duration)))
            .max();
        (start.unwrap_or_default(), end.or(start).unwrap_or_default())
    }

    /// [`PartInfo::span`] from `base` (the segment's first part's start): media time from
    /// the segment's start, as the index keeps it.
    pub fn span_from(&self, init: &InitInfo, base: Duration) -> (Duration, Duration) {
        let (start, end) = self.span(init);
        (start.saturating_sub(base), end.saturating_sub(base))
    }

    /// The wall clock of its first sample, from its `prft`.
    pub fn wall(&self) -> Option<SystemTime> {
        self.ntp.map(ntp_to_system)
    }

    /// Whether the lead track's first sample in it is a sync sample (a player can start
    /// decoding there); a part without the lead track's samples counts as one when its
    /// first track's does.
    pub fn starts_with_keyframe(&self, init: &InitInfo) -> bool {
        self.tracks
            .iter()
            .find(|t| t.track == init.lead)
            .or(self.tracks.first())
            .is_some_and(|t| t.starts_with_sync)
    }
}

/// A box header: its type, where its body starts and where it ends (absolute offsets).
#[derive(Debug, Clone, Copy)]
struct BoxHead {
    kind: [u8; 4],
    start: usize,
    body: usize,
    end: usize,
}

/// Reads the box header at `pos`, which must lie whole before `limit`.
fn head(buf: &[u8], pos: usize, limit: usize) -> Result<BoxHead, String> {
    let at = |o: usize, n: usize| {
        buf.get(pos + o..pos + o + n)
            .filter(|_| pos + o + n <= limit)
    };
    let (Some(size), Some(kind)) = (at(0, 4), at(4, 4)) else {
        return Err("truncated box header".into());
    };
    let size = u32::from_be_bytes(size.try_into().map_err(|_| "box header")?);
    let kind: [u8; 4] = kind.try_into().map_err(|_| "box header")?;
    let (len, hlen) = match size {
        0 => return Err(format!("box {} of size 0", show(&kind))),
        1 => {
            let big = at(8, 8).ok_or("truncated large box header")?;
            let big = u64::from_be_bytes(big.try_into().map_err(|_| "box header")?);
            (big, 16)
        }
        n => (u64::from(n), 8),
    };
    if len < hlen as u64 {
        return Err(format!("box {} smaller than its header", show(&kind)));
    }
    let end = u64::try_from(pos)
        .ok()
        .and_then(|p| p.checked_add(len))
        .filter(|&e| e <= limit as u64)
        .ok_or_else(|| format!("box {} ({len} bytes) runs past its container", show(&kind)))?;
    Ok(BoxHead {
        kind,
        start: pos,
        body: pos + hlen,
        end: usize::try_from(end).map_err(|_| "box too large")?,
    })
}

/// A box type for messages (printable, else hex).
fn show(kind: &[u8; 4]) -> String {
    if kind.iter().all(|b| b.is_ascii_graphic()) {
        format!("'{}'", String::from_utf8_lossy(kind))
    } else {
        format!("0x{:08x}", u32::from_be_bytes(*kind))
    }
}

/// The child boxes of `buf[start..end]`, in order; stops with an error at the first that
/// does not fit.
fn children(
    buf: &[u8],
    start: usize,
    end: usize,
) -> impl Iterator<Item = Result<BoxHead, String>> + '_ {
    let mut pos = start;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= end {
            return None;
        }
        let r = head(buf, pos, end);
        match &r {
            Ok(h) => pos = h.end,
            Err(_) => failed = true,
        }
        Some(r)
    })
}

/// Big-endian field reader over a box body.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Fields<'a> {
    fn of(buf: &'a [u8], h: BoxHead) -> Fields<'a> {
        Fields {
            buf,
            pos: h.body,
            end: h.end,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .filter(|_| self.pos + n <= self.end)
            .ok_or("box body too short")?;
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| "field")?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| "field")?))
    }

    /// Version and flags of a full box.
    fn full(&mut self) -> Result<(u8, u32), String> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }

    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }
}

/// Parses the init segment at the start of `buf`: `ftyp` then `moov` (other boxes such as
/// `free` in between are skipped).
pub(crate) fn parse_init(buf: &[u8]) -> Result<InitInfo, Damage> {
    let damage = |offset: usize, reason: String| Damage {
        offset: offset as u64,
        reason,
    };
    let mut pos = 0;
    let mut seen_ftyp = false;
    loop {
        let h = head(buf, pos, buf.len()).map_err(|r| damage(pos, format!("init: {r}")))?;
        match &h.kind {
            b"ftyp" if pos == 0 => seen_ftyp = true,
            b"moov" if seen_ftyp => {
                let mut info = parse_moov(buf, h).map_err(|r| damage(pos, format!("moov: {r}")))?;
                info.len = h.end as u64;
                if let Ok(f) = head(buf, h.end, buf.len()) {
                    if &f.kind == b"free"
                        && buf
                            .get(f.body..f.end)
                            .is_some_and(|b| b.starts_with(MARKER))
                    {
                        info.checksummed = true;
                        info.len = f.end as u64;
                    }
                }
                return Ok(info);
            }
            b"free" | b"skip" if seen_ftyp => {}
            k => {
                return Err(damage(
                    pos,
                    format!("init: unexpected box {} (ftyp then moov expected)", show(k)),
                ))
            }
        }
        pos = h.end;
    }
}

fn parse_moov(buf: &[u8], moov: BoxHead) -> Result<InitInfo, String> {
    let mut tracks = Vec::new();
    let mut trex = Vec::new();
    for c in children(buf, moov.body, moov.end) {
        let c = c?;
        match &c.kind {
            b"trak" => tracks.push(parse_trak(buf, c)?),
            b"mvex" => {
                for e in children(buf, c.body, c.end) {
                    let e = e?;
                    if &e.kind == b"trex" {
                        let mut f = Fields::of(buf, e);
                        f.full()?;
                        let id = f.u32()?;
                        f.u32()?; // default_sample_description_index
                        trex.push((id, f.u32()?, f.u32()?, f.u32()?));
                    }
                }
            }
            _ => {}
        }
    }
    if tracks.is_empty() {
        return Err("no tracks".into());
    }
    for t in &mut tracks {
        if let Some(&(_, d, s, fl)) = trex.iter().find(|x| x.0 == t.id) {
            (t.default_duration, t.default_size, t.default_flags) = (d, s, fl);
        }
    }
    for (i, t) in tracks.iter().enumerate() {
        if tracks.iter().skip(i + 1).any(|o| o.id == t.id) {
            return Err(format!("track id {} appears twice", t.id));
        }
    }
    let lead = tracks.iter().position(|t| t.video).unwrap_or(0);
    Ok(InitInfo {
        len: 0,
        tracks,
        lead,
        checksummed: false,
    })
}

fn parse_trak(buf: &[u8], trak: BoxHead) -> Result<InitTrack, String> {
    let mut id = None;
    let mut timescale = None;
    let mut video = None;
    for c in children(buf, trak.body, trak.end) {
        let c = c?;
        match &c.kind {
            b"tkhd" => {
                let mut f = Fields::of(buf, c);
                let (v, _) = f.full()?;
                f.take(if v == 1 { 16 } else { 8 })?;
                id = Some(f.u32()?);
            }
            b"mdia" => {
                for m in children(buf, c.body, c.end) {
                    let m = m?;
                    let mut f = Fields::of(buf, m);
                    match &m.kind {
                        b"mdhd" => {
                            let (v, _) = f.full()?;
                            f.take(if v == 1 { 16 } else { 8 })?;
                            timescale = Some(f.u32()?);
                        }
                        b"hdlr" => {
                            f.full()?;
                            f.u32()?;
                            video = Some(f.take(4)? == b"vide");
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or("trak without tkhd")?;
    let timescale = timescale
        .filter(|&t| t > 0)
        .ok_or_else(|| format!("track {id}: no mdhd or zero timescale"))?;
    Ok(InitTrack {
        id,
        timescale,
        video: video.ok_or_else(|| format!("track {id}: no hdlr"))?,
        default_duration: 0,
        default_size: 0,
        default_flags: 0,
    })
}

/// `sample_is_non_sync_sample` in sample flags.
const NON_SYNC: u32 = 0x0001_0000;

/// A `traf` read, before its data is checked against the `mdat`.
struct Run {
    part: PartTrack,
    /// Absolute byte range of its sample data.
    data: (u64, u64),
}

/// Parses a `moof` at `moof` (absolute), returning its sequence number and runs.
fn parse_moof(buf: &[u8], moof: BoxHead, init: &InitInfo) -> Result<(u32, Vec<Run>), String> {
    let mut sequence = None;
    let mut runs = Vec::new();
    // Where a traf's data starts when nothing says: after the previous traf's (the moof's
    // start for the first).
    let moof_start = moof.start as u64;
    let mut next_base = moof_start;
    for c in children(buf, moof.body, moof.end) {
        let c = c?;
        match &c.kind {
            b"mfhd" => {
                let mut f = Fields::of(buf, c);
                f.full()?;
                sequence = Some(f.u32()?);
            }
            b"traf" => {
                let run = parse_traf(buf, c, init, moof_start, next_base)?;
                next_base = run.data.1;
                runs.push(run);
            }
            _ => {}
        }
    }
    let sequence = sequence.ok_or("moof without mfhd")?;
    if runs.is_empty() {
        return Err("moof without traf".into());
    }
    Ok((sequence, runs))
}

fn parse_traf(
    buf: &[u8],
    traf: BoxHead,
    init: &InitInfo,
    moof_start: u64,
    next_base: u64,
) -> Result<Run, String> {
    let mut track = None;
    let mut base = next_base;
    let mut defaults = (0u32, 0u32, 0u32);
    let mut base_dts = None;
    let mut part = PartTrack {
        track: 0,
        base_dts: 0,
        duration: 0,
        samples: 0,
        starts_with_sync: false,
        has_sync: false,
    };
    let mut start = None;
    let mut cursor = None;
    for c in children(buf, traf.body, traf.end) {
        let c = c?;
        let mut f = Fields::of(buf, c);
        match &c.kind {
            b"tfhd" => {
                let (_, flags) = f.full()?;
                let id = f.u32()?;
                let (i, t) = init
                    .tracks
                    .iter()
                    .enumerate()
                    .find(|(_, t)| t.id == id)
                    .ok_or_else(|| format!("traf of unknown track {id}"))?;
                track = Some(i);
                defaults = (t.default_duration, t.default_size, t.default_flags);
                if flags & 0x1 != 0 {
                    base = f.u64()?;
                } else if flags & 0x2_0000 != 0 {
                    base = moof_start;
                }
                if flags & 0x2 != 0 {
                    f.u32()?;
                }
                if flags & 0x8 != 0 {
                    defaults.0 = f.u32()?;
                }
                if flags & 0x10 != 0 {
                    defaults.1 = f.u32()?;
                }
                if flags & 0x20 != 0 {
                    defaults.2 = f.u32()?;
                }
            }
            b"tfdt" => {
                let (v, _) = f.full()?;
                base_dts = Some(if v == 1 {
                    f.u64()?
                } else {
                    u64::from(f.u32()?)
                });
            }
            b"trun" => {
                if track.is_none() {
                    return Err("trun before tfhd".into());
                }
                let (_, flags) = f.full()?;
                let count = u64::from(f.u32()?);
                let data_start = if flags & 0x1 != 0 {
                    let off = i64::from(f.u32()? as i32);
                    base.checked_add_signed(off)
                        .ok_or("data offset out of range")?
                } else {
                    cursor.unwrap_or(base)
                };
                let first_flags = if flags & 0x4 != 0 {
                    Some(f.u32()?)
                } else {
                    None
                };
                let fields = [0x100, 0x200, 0x400, 0x800]
                    .iter()
                    .filter(|&&b| flags & b != 0)
                    .count();
                let entry = 4 * fields as u64;
                if count
                    .checked_mul(entry)
                    .is_none_or(|n| n > f.remaining() as u64)
                {
                    return Err(format!(
                        "trun declares {count} samples its table cannot hold"
                    ));
                }
                let mut bytes = 0u64;
                let mut duration = 0u64;
                let mut sync_first = None;
                let mut any_sync = false;
                if entry == 0 {
                    // Every sample takes the defaults: sums without a walk.
                    bytes = count
                        .checked_mul(u64::from(defaults.1))
                        .ok_or("sample sizes overflow")?;
                    duration = count.saturating_mul(u64::from(defaults.0));
                    if count > 0 {
                        let first = first_flags.unwrap_or(defaults.2);
                        sync_first = Some(first & NON_SYNC == 0);
                        any_sync =
                            first & NON_SYNC == 0 || (count > 1 && defaults.2 & NON_SYNC == 0);
                    }
                } else {
                    for k in 0..count {
                        let d = if flags & 0x100 != 0 {
                            f.u32()?
                        } else {
                            defaults.0
                        };
                        let s = if flags & 0x200 != 0 {
                            f.u32()?
                        } else {
                            defaults.1
                        };
                        let mut fl = if flags & 0x400 != 0 {
                            f.u32()?
                        } else {
                            defaults.2
                        };
                        if flags & 0x800 != 0 {
                            f.u32()?;
                        }
                        if k == 0 {
                            fl = first_flags.unwrap_or(fl);
                            sync_first = Some(fl & NON_SYNC == 0);
                        }
                        any_sync |= fl & NON_SYNC == 0;
                        bytes = bytes.saturating_add(u64::from(s));
                        duration = duration.saturating_add(u64::from(d));
                    }
                }
                let end = data_start
                    .checked_add(bytes)
                    .ok_or("sample data out of range")?;
                start = Some(start.map_or(data_start, |s: u64| s.min(data_start)));
                cursor = Some(end.max(cursor.unwrap_or(end)));
                if part.samples == 0 {
                    part.starts_with_sync = sync_first.unwrap_or(false);
                }
                part.samples = part.samples.saturating_add(count);
                part.duration = part.duration.saturating_add(duration);
                part.has_sync |= any_sync;
            }
            _ => {}
        }
    }
    part.track = track.ok_or("traf without tfhd")?;
    part.base_dts = base_dts.ok_or("traf without tfdt")?;
    let data = match (start, cursor) {
        (Some(s), Some(e)) => (s, e),
        _ => (base, base),
    };
    Ok(Run { part, data })
}

/// What [`recover`](super::recover) found in a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The init segment, or None when even that is damaged (nothing can be kept).
    pub init: Option<InitInfo>,
    /// The complete parts, in file order.
    pub parts: Vec<PartInfo>,
    /// Length to truncate the file to: the end of the last complete part (or of the init;
    /// 0 when the init is damaged). Equal to the file's length when nothing is damaged.
    pub valid_len: u64,
    /// The file's length as given.
    pub file_len: u64,
    /// Why bytes after `valid_len` were not kept (None: the whole file is valid).
    pub damage: Option<Damage>,
}

impl Recovered {
    /// Whether the file must be truncated to [`Recovered::valid_len`].
    pub fn needs_truncation(&self) -> bool {
        self.valid_len < self.file_len
    }

    /// The segment's base: its first part's start on the file's decode timeline
    /// ([`PartInfo::span`]), which is media time 0 of the segment (0 for a segment that
    /// starts a recording, the previous segment's end for one that continues it); None
    /// without parts.
    pub fn media_base(&self) -> Option<Duration> {
        let init = self.init.as_ref()?;
        Some(self.parts.first()?.span(init).0)
    }

    /// The media range kept: the first part's start and the last part's end, as media time
    /// from the segment's start (by the lead track: the first is thus 0), None without parts.
    pub fn media_range(&self) -> Option<(Duration, Duration)> {
        let init = self.init.as_ref()?;
        let base = self.media_base()?;
        let first = self.parts.first()?.span_from(init, base).0;
        let last = self.parts.last()?.span_from(init, base).1;
        Some((first, last))
    }

    /// The wall clock range kept: the first part's `prft` time, and the last part's `prft`
    /// time plus its media span; None without parts carrying a `prft`.
    pub fn wall_range(&self) -> Option<(SystemTime, SystemTime)> {
        let init = self.init.as_ref()?;
        let first = self.parts.iter().find_map(PartInfo::wall)?;
        let last = self.parts.iter().rev().find_map(|p| {
            let (s, e) = p.span(init);
            Some(p.wall()? + e.saturating_sub(s))
        })?;
        Some((first, last))
    }
}

/// Most bytes of an init segment recovery reads (a larger one is damage).
const MAX_INIT_BYTES: u64 = 16 << 20;

/// Most bytes of one part recovery holds in memory (the MP4 writer cuts fragments at
/// 64 MiB; a larger part is damage).
pub(crate) const MAX_PART_BYTES: u64 = 256 << 20;

/// Box kinds kept between parts without being parts.
fn is_filler(kind: &[u8; 4]) -> bool {
    matches!(kind, b"free" | b"skip" | b"styp" | b"sidx" | b"mfra")
}

/// The type and end (absolute, possibly past the file) of the box whose header is at
/// `pos`; None when the header is cut off or invalid (the parser then says why).
fn peek<R: Read + Seek>(r: &mut R, pos: u64, file_len: u64) -> io::Result<Option<([u8; 4], u64)>> {
    let mut h = [0u8; 16];
    let want = usize::try_from(file_len.saturating_sub(pos).min(16)).unwrap_or(16);
    let Some(h) = h.get_mut(..want) else {
        return Ok(None);
    };
    r.seek(SeekFrom::Start(pos))?;
    r.read_exact(h)?;
    let (Some(size), Some(kind)) = (h.get(0..4), h.get(4..8)) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes(size.try_into().unwrap_or_default());
    let kind: [u8; 4] = kind.try_into().unwrap_or_default();
    let len = match size {
        0 => return Ok(None),
        1 => match h.get(8..16) {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap_or_default()),
            None => return Ok(None),
        },
        n => u64::from(n),
    };
    Ok((len >= 8).then(|| (kind, pos.saturating_add(len))))
}

/// Reads `buf[pos..end)` of the file (`end` at most the file's length).
fn read_range<R: Read + Seek>(r: &mut R, pos: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(pos))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
    let mut buf = vec![0u8; len];
    r.seek(SeekFrom::Start(pos))?;
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Where the init segment at the file's start ends: after `moov` and the archive's marker
/// box (the file's length when the headers are cut off: the parser then says why).
fn init_extent<R: Read + Seek>(r: &mut R, file_len: u64) -> io::Result<u64> {
    let mut at = 0;
    for _ in 0..16 {
        let Some((kind, end)) = peek(r, at, file_len)? else {
            return Ok(file_len);
        };
        at = end;
        if &kind == b"moov" {
            if let Some((_, e)) = peek(r, at, file_len)?.filter(|(k, _)| k == b"free") {
                if e - at <= 8 + MARKER.len() as u64 {
                    at = e;
                }
            }
            return Ok(at);
        }
    }
    Ok(at)
}

/// Where the part starting at `pos` (`[prft] moof mdat [checksum]`) ends (possibly past
/// the file: it is torn).
fn part_extent<R: Read + Seek>(
    r: &mut R,
    pos: u64,
    file_len: u64,
    checksum: bool,
) -> io::Result<u64> {
    let mut at = pos;
    for i in 0..3 {
        let Some((kind, end)) = peek(r, at, file_len)? else {
            return Ok(file_len);
        };
        at = end;
        match &kind {
            b"prft" if i == 0 => {}
            b"moof" => {}
            b"mdat" => {
                if checksum {
                    if let Some((_, e)) = peek(r, at, file_len)?.filter(|(k, _)| k == b"skip") {
                        at = e;
                    }
                }
                return Ok(at);
            }
            _ => return Ok(at),
        }
    }
    Ok(at)
}

/// See [`super::recover`].
pub(crate) fn recover(buf: &[u8]) -> Recovered {
    match recover_from(&mut io::Cursor::new(buf)) {
        Ok((r, _)) => r,
        // Reading memory does not fail; should it, nothing is kept.
        Err(e) => Recovered {
            init: None,
            parts: Vec::new(),
            valid_len: 0,
            file_len: buf.len() as u64,
            damage: Some(Damage {
                offset: 0,
                reason: format!("reading: {e}"),
            }),
        },
    }
}

/// See [`super::recover_from`]; also returns the init segment's bytes.
pub(crate) fn recover_from<R: Read + Seek>(r: &mut R) -> io::Result<(Recovered, Vec<u8>)> {
    let file_len = r.seek(SeekFrom::End(0))?;
    let init_end = init_extent(r, file_len)?.min(file_len).min(MAX_INIT_BYTES);
    let init_bytes = read_range(r, 0, init_end)?;
    let init = match parse_init(&init_bytes) {
        Ok(i) => i,
        Err(damage) => {
            let recovered = Recovered {
                init: None,
                parts: Vec::new(),
                valid_len: 0,
                file_len,
                damage: Some(Damage {
                    offset: 0,
                    reason: damage.to_string(),
                }),
            };
            return Ok((recovered, init_bytes));
        }
    };
    let mut parts = Vec::new();
    let mut pos = init.len;
    let mut valid = pos;
    let mut last_seq: Option<u32> = None;
    let damage = loop {
        if pos >= file_len {
            break None;
        }
        if let Some((kind, end)) = peek(r, pos, file_len)? {
            if is_filler(&kind) && end <= file_len {
                pos = end;
                valid = end;
                continue;
            }
        }
        let end = part_extent(r, pos, file_len, init.checksummed)?.min(file_len);
        if end - pos > MAX_PART_BYTES {
            break Some(Damage {
                offset: valid,
                reason: format!(
                    "part of {} bytes, more than recovery reads ({MAX_PART_BYTES})",
                    end - pos
                ),
            });
        }
        let buf = read_range(r, pos, end)?;
        match read_part(&buf, 0, &init, last_seq, init.checksummed) {
            Ok(Step::Part(mut p, len)) => {
                last_seq = Some(p.sequence);
                p.offset = pos;
                pos += len as u64;
                valid = pos;
                parts.push(p);
            }
            Ok(Step::Skip(len)) => {
                pos += len as u64;
                valid = pos;
            }
            Err(reason) => {
                break Some(Damage {
                    offset: valid,
                    reason,
                })
            }
        }
    };
    let recovered = Recovered {
        init: Some(init),
        parts,
        valid_len: valid,
        file_len,
        damage,
    };
    Ok((recovered, init_bytes))
}

/// Reads one part (`[prft] moof mdat`) that is all of `buf` (a fragment just written).
pub(crate) fn read_fragment(buf: &[u8], init: &InitInfo) -> Result<PartInfo, String> {
    match read_part(buf, 0, init, None, false)? {
        Step::Part(p, _) => Ok(p),
        Step::Skip(_) => Err("not a part".into()),
    }
}

/// What follows at a position between parts.
enum Step {
    /// A complete part, and where it ends.
    Part(PartInfo, usize),
    /// A box kept but not a part (`free`, `skip`, `styp`, `sidx`, a closing `mfra`).
    Skip(usize),
}

/// Reads the part at `pos`; with `checksum`, it must end with a checksum box that matches.
fn read_part(
    buf: &[u8],
    pos: usize,
    init: &InitInfo,
    last_seq: Option<u32>,
    checksum: bool,
) -> Result<Step, String> {
    let mut h = head(buf, pos, buf.len())?;
    if matches!(&h.kind, b"free" | b"skip" | b"styp" | b"sidx" | b"mfra") {
        return Ok(Step::Skip(h.end));
    }
    let mut ntp = None;
    if &h.kind == b"prft" {
        let mut f = Fields::of(buf, h);
        let (v, _) = f.full()?;
        f.u32()?;
        ntp = Some(f.u64()?);
        if v == 1 {
            f.u64()?;
        } else {
            f.u32()?;
        }
        h = head(buf, h.end, buf.len())?;
    }
    if &h.kind != b"moof" {
        return Err(format!("expected moof, found {}", show(&h.kind)));
    }
    let (sequence, runs) = parse_moof(buf, h, init)?;
    if last_seq.is_some_and(|s| sequence <= s) {
        return Err(format!("sequence number {sequence} does not increase"));
    }
    let m = head(buf, h.end, buf.len())?;
    if &m.kind != b"mdat" {
        return Err(format!("expected mdat after moof, found {}", show(&m.kind)));
    }
    let (lo, hi) = (m.body as u64, m.end as u64);
    for r in &runs {
        if r.data.0 < lo || r.data.1 > hi {
            return Err(format!(
                "track {} sample data {}..{} outside the mdat {lo}..{hi}",
                r.part.track, r.data.0, r.data.1
            ));
        }
    }
    let mut end = m.end;
    if checksum {
        let c = head(buf, m.end, buf.len())?;
        let body = buf.get(c.body..c.end).unwrap_or_default();
        let (Some(tag), Some(sum)) = (body.get(..4), body.get(4..8)) else {
            return Err("part without its checksum box".into());
        };
        if &c.kind != b"skip" || tag != CRC_TAG {
            return Err(format!(
                "expected the part's checksum box, found {}",
                show(&c.kind)
            ));
        }
        let want = u32::from_be_bytes(sum.try_into().map_err(|_| "checksum")?);
        if crc32(buf.get(pos..m.end).unwrap_or_default()) != want {
            return Err("part checksum mismatch (torn write)".into());
        }
        end = c.end;
    }
    Ok(Step::Part(
        PartInfo {
            offset: pos as u64,
            len: (end - pos) as u64,
            sequence,
            ntp,
            tracks: runs.into_iter().map(|r| r.part).collect(),
        },
        end,
    ))
}
