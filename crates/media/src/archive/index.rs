//! The index records the server stores per segment (and its parts), their compact binary
//! encoding, and [`reindex`], which rebuilds a record from a segment file's bytes alone (the
//! files are self-describing: the index is a cache that can always be rebuilt).
//!
//! The server keeps these records in a redb database (pure Rust, one file, ACID commits
//! that survive a crash, ordered B-tree keys): keyed by (path name, start wall time), a
//! timeline or seek query is a range scan of the keys around the asked interval, with no
//! directory walk and no SQL engine to build and link.

use std::time::{Duration, SystemTime};

use super::parse::Damage;

/// A part of a segment, as the index keeps it: enough to serve a byte range, place it on
/// the timeline and know whether a player can start there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// Byte offset of the part (its `prft`) in the file.
    pub offset: u64,
    /// Its length in bytes (`prft` + `moof` + `mdat`).
    pub len: u64,
    /// Media time of its first sample, from the segment's start.
    pub media_start: Duration,
    /// Media time just after its last sample, from the segment's start.
    pub media_end: Duration,
    /// Wall clock of its first sample (its `prft`).
    pub wall_start: SystemTime,
    /// Whether it starts with a keyframe of the lead (video) track.
    pub keyframe: bool,
}

impl PartRecord {
    /// Wall clock just after its last sample.
    pub fn wall_end(&self) -> SystemTime {
        self.wall_start + self.media_end.saturating_sub(self.media_start)
    }
}

/// A segment file, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    /// The file's path (relative to the recording directory; the driver fills it in).
    pub path: String,
    /// Digest of its init segment: segments with equal ids need no new init (HLS
    /// `EXT-X-MAP` / discontinuity decisions).
    pub init_id: u64,
    /// Wall clock of its first sample.
    pub start_wall: SystemTime,
    /// Wall clock just after its last sample.
    pub end_wall: SystemTime,
    /// Media time just after its last sample (its duration).
    pub media_end: Duration,
    /// Where its media time 0 lies on the file's decode timeline (`tfdt` time, whole
    /// microseconds, by the lead track): 0 for a segment that starts a recording, the
    /// previous segment's base plus its duration for one that continues it (cut on
    /// duration), whose decode times go on from the previous file's so that players see one
    /// continuous timeline across the files. Readers of the file's samples add it to the
    /// parts' media times.
    pub media_base: Duration,
    /// The file's length in bytes.
    pub bytes: u64,
    /// Whether it was left open by a crash and truncated after its last complete part.
    pub recovered: bool,
    /// Its parts, in file order.
    pub parts: Vec<PartRecord>,
}

/// Why an encoded record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end early or hold an impossible value.
    #[error("malformed segment record: {0}")]
    Malformed(&'static str),
    /// A format version this build does not know.
    #[error("segment record version {0} is not supported")]
    Version(u8),
}

/// The encoding's version byte (2: with [`SegmentRecord::media_base`]; version 1 records,
/// whose files all start at decode time 0, still decode, with a base of 0).
const VERSION: u8 = 2;

/// FNV-1a 64-bit: a stable digest (not cryptographic; it names init segments).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_var(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Microseconds since the Unix epoch (negative before it).
fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

fn from_micros(us: i64) -> SystemTime {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// `t` rounded to the nearest microsecond (the index's precision).
fn round_micros(t: SystemTime) -> SystemTime {
    let ns = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    from_micros(i64::try_from((ns + 500).div_euclid(1000)).unwrap_or(i64::MAX))
}

/// `d` truncated to whole microseconds (the index's precision).
pub(crate) fn whole_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn dur_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(RecordError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn var(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Malformed("varint too long"))
    }

    fn signed(&mut self) -> Result<i64, RecordError> {
        let v = self.var()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn duration(&mut self) -> Result<Duration, RecordError> {
        let us = self.signed()?;
        u64::try_from(us)
            .map(Duration::from_micros)
            .map_err(|_| RecordError::Malformed("negative duration"))
    }
}

impl SegmentRecord {
    /// The wall clock of decode time 0 of the file (its start minus its
    /// [`media_base`](SegmentRecord::media_base)): where a reader of the file's samples
    /// places decode time `t` at `zero_wall() + t` (before the per-part drift correction).
    pub fn zero_wall(&self) -> SystemTime {
        self.start_wall
            .checked_sub(self.media_base)
            .unwrap_or(self.start_wall)
    }

    /// The record in its compact encoding: a version byte, then LEB128 varints, times in
    /// microseconds, each part's offset, media and wall times as deltas from the previous
    /// part's (typically 8–12 bytes a part).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.path.len() + 12 * self.parts.len());
        out.push(VERSION);
        put_var(&mut out, self.path.len() as u64);
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(&self.init_id.to_be_bytes());
        let start = micros(self.start_wall);
        put_signed(&mut out, start);
        put_signed(&mut out, micros(self.end_wall) - start);
        put_signed(&mut out, dur_micros(self.media_end));
        put_var(
            &mut out,
            u64::try_from(dur_micros(self.media_base)).unwrap_or(0),
        );
        put_var(&mut out, self.bytes);
        out.push(u8::from(self.recovered));
        put_var(&mut out, self.parts.len() as u64);
        let (mut off, mut media, mut wall) = (0u64, 0i64, start);
        for p in &self.parts {
            put_var(&mut out, p.offset.wrapping_sub(off));
            put_var(&mut out, p.len);
            let ms = dur_micros(p.media_start);
            put_signed(&mut out, ms - media);
            put_signed(&mut out, dur_micros(p.media_end) - ms);
            let ws = micros(p.wall_start);
            put_signed(&mut out, ws - wall);
            out.push(u8::from(p.keyframe));
            off = p.offset + p.len;
            media = dur_micros(p.media_end);
            wall = ws;
        }
        out
    }

    /// Decodes [`SegmentRecord::encode`]'s output; never panics, and allocates no more
    /// than the input's size implies.
    pub fn decode(bytes: &[u8]) -> Result<SegmentRecord, RecordError> {
        let mut r = Reader(bytes);
        let version = r.byte()?;
        if !(1..=VERSION).contains(&version) {
            return Err(RecordError::Version(version));
        }
        let n = usize::try_from(r.var()?).map_err(|_| RecordError::Malformed("path length"))?;
        if n > r.0.len() {
            return Err(RecordError::Malformed("path length"));
        }
        let (path, rest) = r.0.split_at(n);
        r.0 = rest;
        let path = std::str::from_utf8(path)
            .map_err(|_| RecordError::Malformed("path is not UTF-8"))?
            .to_owned();
        let mut id = [0u8; 8];
        for b in &mut id {
            *b = r.byte()?;
        }
        let start = r.signed()?;
        let end = start.saturating_add(r.signed()?);
        let media_end = r.duration()?;
        let media_base = if version >= 2 {
            Duration::from_micros(r.var()?)
        } else {
            Duration::ZERO
        };
        let bytes_len = r.var()?;
        let recovered = r.byte()? != 0;
        let count = r.var()?;
        // Each part takes at least six bytes: a count beyond that is a lie.
        if count > (r.0.len() / 6) as u64 {
            return Err(RecordError::Malformed("part count"));
        }
        let mut parts = Vec::with_capacity(count as usize);
        let (mut off, mut media, mut wall) = (0u64, 0i64, start);
        for _ in 0..count {
            let offset = off.wrapping_add(r.var()?);
            let len = r.var()?;
            let ms = media.saturating_add(r.signed()?);
            let me = ms.saturating_add(r.signed()?);
            let ws = wall.saturating_add(r.signed()?);
            let keyframe = r.byte()? != 0;
            let dur = |us: i64| {
                u64::try_from(us)
                    .map(Duration::from_micros)
                    .map_err(|_| RecordError::Malformed("negative media time"))
            };
            parts.push(PartRecord {
                offset,
                len,
                media_start: dur(ms)?,
                media_end: dur(me)?,
                wall_start: from_micros(ws),
                keyframe,
            });
            off = offset.wrapping_add(len);
            media = me;
            wall = ws;
        }
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("trailing bytes"));
        }
        Ok(SegmentRecord {
            path,
            init_id: u64::from_be_bytes(id),
            start_wall: from_micros(start),
            end_wall: from_micros(end),
            media_end,
            media_base,
            bytes: bytes_len,
            recovered,
            parts,
        })
    }
}

/// A part's media span kept on one increasing timeline: a part without lead-track samples
/// (its span then comes from the other tracks, whose held samples may reach back) starts
/// no earlier than the previous part's end.
pub(crate) fn monotonic(
    prev: Option<&PartRecord>,
    (start, end): (Duration, Duration),
) -> (Duration, Duration) {
    let start = prev.map_or(start, |p| start.max(p.media_end));
    (start, end.max(start))
}

/// Rebuilds the index record of the segment file at `path` from its bytes (`sluice
/// recordings reindex`): its parts as [`super::recover`] finds them. A damaged tail is left
/// out and marks the record `recovered` (the caller truncates the file to
/// [`SegmentRecord::bytes`]); a file whose init is damaged has no record.
///
/// Parts without a `prft` get wall times continuing from the previous part (the first:
/// the Unix epoch).
pub fn reindex(path: &str, bytes: &[u8]) -> Result<SegmentRecord, Damage> {
    reindex_from(path, &mut std::io::Cursor::new(bytes))
}

/// [`reindex`] over a file (or any seekable reader), reading it part by part (see
/// [`super::recover_from`]); a read error is a [`Damage`] at offset 0 saying so.
pub fn reindex_from<R: std::io::Read + std::io::Seek>(
    path: &str,
    reader: &mut R,
) -> Result<SegmentRecord, Damage> {
    let (r, init_bytes) = super::parse::recover_from(reader).map_err(|e| Damage {
        offset: 0,
        reason: format!("reading: {e}"),
    })?;
    let bytes = &init_bytes;
    let Some(init) = r.init.as_ref() else {
        return Err(r.damage.unwrap_or(Damage {
            offset: 0,
            reason: "no init segment".into(),
        }));
    };
    let init_len = usize::try_from(init.len).unwrap_or(usize::MAX);
    let init_id = fnv1a(bytes.get(..init_len).unwrap_or_default());
    let base = r.media_base().unwrap_or_default();
    let mut parts: Vec<PartRecord> = Vec::with_capacity(r.parts.len());
    for p in &r.parts {
        let (media_start, media_end) = monotonic(parts.last(), p.span_from(init, base));
        let wall_start = p.wall().map(round_micros).unwrap_or_else(|| {
            parts.last().map_or(SystemTime::UNIX_EPOCH, |prev| {
                prev.wall_end() + media_start.saturating_sub(prev.media_end)
            })
        });
        parts.push(PartRecord {
            offset: p.offset,
            len: p.len,
            media_start,
            media_end,
            wall_start,
            keyframe: p.starts_with_keyframe(init),
        });
    }
    let start_wall = parts
        .first()
        .map_or(SystemTime::UNIX_EPOCH, |p| p.wall_start);
    Ok(SegmentRecord {
        path: path.to_owned(),
        init_id,
        start_wall,
        end_wall: parts.last().map_or(start_wall, PartRecord::wall_end),
        media_end: parts.last().map_or(Duration::ZERO, |p| p.media_end),
        media_base: whole_micros(base),
        bytes: r.valid_len,
        recovered: r.damage.is_some(),
        parts,
    })
}
