//! The sans-IO core of server recording: timed access units in, crash-safe fMP4 segment
//! files out, plus the recovery parser and index records that find them again.
//!
//! **Segments.** A [`SegmentWriter`] turns [`Frame`]s into segments, each a self-describing
//! fragmented MP4: an init (`ftyp` + `moov`, codec boxes from the tracks' [`CodecParams`],
//! i.e. SDP or in-band parameter sets), then parts, each a `prft` (the wall clock of its
//! first sample, NTP format) + `moof` + `mdat` + a `skip` box holding the part's CRC-32 (so
//! that a part a crash left with zeros or stale bytes in place of its tail is not taken for
//! complete; players skip the box). A `free` box after the `moov` says the file is such an
//! archive segment. Parts are cut on time
//! ([`ArchiveConfig::part_duration`]), not only at keyframes: a part may begin with a
//! non-keyframe, its sample flags then say so. A new segment starts at the first keyframe
//! after [`ArchiveConfig::segment_duration`], and at once, without losing a frame, when a
//! track's parameters change (new init), the media clock steps against the wall clock, the
//! publisher changes or recording stops ([`CutReason`]).
//!
//! **Durability.** [`ArchiveOutput`] says what to write and when a file or part is complete,
//! so that the driver can fdatasync after each part and fsync the directory after creating a
//! file: a crash loses at most the part being built plus the reordering window.
//!
//! **Time.** Media time comes from the frames (all tracks on one clock); wall time from what
//! the driver passes with each frame. The media→wall offset is smoothed and written per
//! part, so drift between the sender's clock and the wall clock is absorbed without
//! restarting; only a jump beyond [`ArchiveConfig::clock_step`] that persists for a second
//! of media starts a new segment (a backlog delivered after a network stall is late, not a
//! step: it drains faster than real time).
//! Decode times (`tfdt`) run on one timeline per run of segments: a segment cut on
//! duration continues its predecessor's (each track starts where it ended there), so that
//! the files of a run play as one (an HLS VOD over them needs no discontinuity); any other
//! cut (new parameters, clock step, publisher change, stop) and a new writer (a restart,
//! after a crash) start a new timeline at 0. Media times in the index are from each
//! segment's start: its first part's start on the timeline, [`SegmentRecord::media_base`].
//! Tracks are interleaved through a short reordering window
//! ([`ArchiveConfig::reorder_window`]); a frame later than that is dropped and counted in
//! [`ArchiveStats`] (the driver logs counts, at most once a minute).
//!
//! **Recovery.** [`recover`] validates a segment file left open by a crash (the init, and
//! each part's sizes, sample tables within its `mdat` and sequence numbers) and says where
//! to truncate it and what media range it keeps. [`reindex`] rebuilds a segment's
//! [`SegmentRecord`] (the per-segment and per-part index entry, with a compact
//! [encoding](SegmentRecord::encode)) from the file alone.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use sluice_media::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentWriter};
//! use sluice_media::{Codec, CodecParams};
//!
//! let opus = CodecParams { channels: Some(2), ..CodecParams::new(Codec::Opus, Vec::new()) };
//! let config = ArchiveConfig { segment_duration: Duration::from_secs(10), ..ArchiveConfig::default() };
//! let mut w = SegmentWriter::new(vec![opus], config)?;
//! let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! for i in 0..150i64 {
//!     // 3 s of 20 ms Opus packets, arriving in real time.
//!     let frame = Frame { track: 0, dts: i * 960, pts: i * 960, keyframe: true, data: vec![0xfc, 0xff, 0xfe].into() };
//!     w.push(frame, t0 + Duration::from_millis(20 * i as u64));
//! }
//! w.finish();
//! let mut file = Vec::new();
//! while let Some(out) = w.poll_output() {
//!     match out {
//!         ArchiveOutput::SegmentStarted { init, .. } => file.extend_from_slice(&init),
//!         ArchiveOutput::Part { bytes, .. } => file.extend_from_slice(&bytes), // then fdatasync
//!         ArchiveOutput::SegmentEnded { record, .. } => assert_eq!(record.parts.len(), 3),
//!     }
//! }
//! let found = sluice_media::archive::recover(&file);
//! assert_eq!((found.parts.len(), found.valid_len), (3, file.len() as u64));
//! # Ok::<(), sluice_media::archive::ArchiveError>(())
//! ```

mod crc;
mod index;
mod parse;
mod writer;

#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

pub use index::{reindex, reindex_from, PartRecord, RecordError, SegmentRecord};
pub use parse::{Damage, InitInfo, InitTrack, PartInfo, PartTrack, Recovered};
pub use writer::{ArchiveOutput, ArchiveStats, CutReason, Frame, SegmentWriter};

use crate::mux::MuxError;
use crate::params::CodecParams;

/// How segments are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Media time per part (default 1 s): what a crash can lose, and the granularity of
    /// byte-range playback.
    pub part_duration: Duration,
    /// Media time per segment file (default 1 h), cut at the next keyframe after it.
    pub segment_duration: Duration,
    /// How long (media time) frames wait so that tracks interleave in time order (default
    /// 500 ms); frames later than that are dropped and counted.
    pub reorder_window: Duration,
    /// A jump of the media→wall offset larger than this, kept for a second of media, starts
    /// a new segment (default 2 s); smaller moves are drift, absorbed part by part.
    pub clock_step: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            part_duration: Duration::from_secs(1),
            segment_duration: Duration::from_secs(3600),
            reorder_window: Duration::from_millis(500),
            clock_step: Duration::from_secs(2),
        }
    }
}

impl ArchiveConfig {
    /// Refuses durations that cannot work: parts shorter than 10 ms or longer than 60 s,
    /// segments shorter than a part, a window or step of more than a minute.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let bad = |what: &'static str| Err(ArchiveError::Config(what));
        if self.part_duration < Duration::from_millis(10)
            || self.part_duration > Duration::from_secs(60)
        {
            return bad("part_duration must be between 10 ms and 60 s");
        }
        if self.segment_duration < self.part_duration {
            return bad("segment_duration must be at least part_duration");
        }
        if self.reorder_window > Duration::from_secs(60) {
            return bad("reorder_window must be at most 60 s");
        }
        if self.clock_step.is_zero() || self.clock_step > Duration::from_secs(3600) {
            return bad("clock_step must be between 1 ns and 1 h");
        }
        Ok(())
    }
}

/// Why a segment writer cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The configuration is unusable.
    #[error("bad archive configuration: {0}")]
    Config(&'static str),
    /// The tracks cannot be written to MP4 (none, or an unsupported codec).
    #[error("cannot write the tracks: {0}")]
    Mux(#[source] MuxError),
    /// The writer's own init segment did not parse back (a bug).
    #[error("the init segment written does not parse: {0}")]
    OwnOutput(#[source] Damage),
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A wall clock time as a 64-bit NTP timestamp (32.32 fixed point seconds since 1900), as
/// `prft` stores it.
pub fn system_to_ntp(t: SystemTime) -> u64 {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs().saturating_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The wall clock time of a 64-bit NTP timestamp (era 0, i.e. before 2036).
pub fn ntp_to_system(ntp: u64) -> SystemTime {
    let secs = ntp >> 32;
    // Rounded to the nearest nanosecond, so that whole microseconds survive a round trip.
    let nanos = ((ntp & 0xffff_ffff) * 1_000_000_000 + (1 << 31)) >> 32;
    let since_unix = Duration::new(secs.saturating_sub(NTP_UNIX_OFFSET), nanos as u32);
    SystemTime::UNIX_EPOCH + since_unix
}

/// Validates a segment file left open by a crash (its bytes, or any prefix of them): the
/// init, then each part's `prft` + `moof` + `mdat` (box sizes, sample tables summed within
/// the `mdat`, track ids, increasing sequence numbers). [`Recovered::valid_len`] is where
/// to truncate (after the last complete part); [`Recovered::media_range`] and
/// [`Recovered::wall_range`] what it keeps. Never panics; memory grows only with the parts
/// found, never with sizes the file declares.
pub fn recover(bytes: &[u8]) -> Recovered {
    parse::recover(bytes)
}

/// [`recover`] over a file (or any seekable reader) without reading it whole: the init,
/// then one part at a time, so that memory stays bounded by the largest part (at most
/// 256 MiB, the writer's parts being far smaller) whatever the segment's size (an hour at
/// 4 Mb/s is 1.8 GB). Fails only when reading fails.
pub fn recover_from<R: std::io::Read + std::io::Seek>(
    reader: &mut R,
) -> std::io::Result<Recovered> {
    parse::recover_from(reader).map(|(r, _)| r)
}

/// Whether `params` can be archived (what the MP4 writer supports).
pub fn supported(params: &CodecParams) -> bool {
    crate::mux::Mp4Writer::new(Vec::new(), std::slice::from_ref(params)).is_ok()
}
