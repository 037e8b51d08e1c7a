//! The sans-IO player: a demuxer and one packetizer per track turned into timed RTP, with
//! seeking, pause/resume, Scale (fast forward and reverse on keyframes only, slow motion),
//! range ends and looping.
//!
//! The player never reads a clock, sleeps or touches a socket: the caller passes the current
//! [`Instant`] to [`Player::play`] and [`Player::poll`], sends the packets [`Poll::Send`]
//! hands out and sleeps until the instant [`Poll::WaitUntil`] names. The server's file
//! sources and on-demand sessions and `sluice publish` drive the same player, so there is one
//! copy of the timestamp arithmetic:
//!
//! - RTP timestamps follow media time: `rtp = offset + pts × clock_rate / timescale`, plus one
//!   file duration (in clock ticks) per completed loop. They stay continuous across
//!   PAUSE/PLAY and loops and jump only on a seek, which [`PlayStart`] announces.
//! - A sample is due at `anchor_wall + (media − anchor_media) / scale`, where the anchor is
//!   the wall instant and media time of the last [`Player::play`]; it is handed out `lead`
//!   before that.
//! - Scale in `(0, 1]` plays every sample (below 1 slower); above 1 and below 0 play the
//!   video keyframes only, forward or backward.
//!
//! Sequence numbers come from the packetizers, which number every packet they produce, so
//! they are continuous across everything.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::packetizer::{PacketizeError, Packetizer};

use crate::{Demuxer, MediaError, Sample};

#[cfg(test)]
mod tests;

/// Largest Scale magnitude accepted: beyond it keyframe-only playback outruns any reader.
pub const MAX_SCALE: f64 = 32.0;

/// Slack when matching a requested time against keyframe times and the duration, so that a
/// time printed with three decimals (as RTSP `npt` does) still names the keyframe it came from.
const TIME_SLACK: f64 = 0.001;

/// Why a PLAY request could not be honoured.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The range starts after the end, or ends before it starts.
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// Scale not supported for this file.
    #[error("unsupported scale {0}")]
    UnsupportedScale(f64),
    /// The demuxer failed.
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// How one track leaves the player.
#[derive(Debug, Clone)]
pub struct TrackOutput {
    /// Packetizes the track's samples; its sequence numbers and SSRC are the stream's.
    pub packetizer: Packetizer,
    /// RTP timestamp of media time 0 (random, as RFC 3550 recommends).
    pub rtp_offset: u32,
}

/// Settings that differ between drivers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlayerOptions {
    /// Start again at the end with continuous timestamps (live file sources, `publish
    /// --loop`); otherwise the end is reported once as [`EndReason::EndOfFile`].
    pub looping: bool,
    /// How long before its due time a sample is handed out: a server smooths its
    /// scheduling jitter with a little lead; a publisher sends exactly on time.
    pub lead: Duration,
}

/// Per-track answer to a PLAY: the RTP-Info values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackStart {
    /// Sequence number of the track's next packet.
    pub seq: u16,
    /// RTP timestamp of the actual start position.
    pub rtptime: u32,
}

/// What a PLAY started.
#[derive(Debug, Clone)]
pub struct PlayStart {
    /// Actual start in seconds (the keyframe at or before the requested time, or the resume
    /// point).
    pub start: f64,
    /// The range end, if any.
    pub end: Option<f64>,
    /// The scale applied.
    pub scale: f64,
    /// Per track, in file order.
    pub tracks: Vec<TrackStart>,
}

/// The RTP packets of one sample, due now.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Track index (file order).
    pub track: usize,
    /// Complete RTP packets, in sending order.
    pub packets: Vec<Bytes>,
    /// RTP timestamp they carry.
    pub rtp_timestamp: u32,
    /// The sample is a keyframe.
    pub keyframe: bool,
    /// Media position of the sample within the file, in seconds (decode time).
    pub position: f64,
    /// Completed loops before this sample.
    pub loops: u32,
}

/// Why a sample was not sent; playback goes on.
#[derive(Debug)]
pub enum Skip {
    /// The packetizer refused the sample.
    Packetize {
        /// Track index.
        track: usize,
        /// Why.
        error: PacketizeError,
    },
    /// The demuxer named a track it does not describe.
    NoTrack(usize),
    /// In keyframe-only playback, the keyframe could not be read.
    Keyframe(MediaError),
}

/// Why playback stopped.
#[derive(Debug)]
pub enum EndReason {
    /// The file ended (not looping), or keyframe playback ran off either end.
    EndOfFile,
    /// The requested range end was passed.
    RangeEnd,
    /// Reading (or rewinding for a loop) failed.
    Failed(MediaError),
}

/// What the driver does next.
#[derive(Debug)]
pub enum Poll {
    /// Send these packets now, then poll again.
    Send(Burst),
    /// A sample was skipped (worth a debug log line); poll again.
    Skipped(Skip),
    /// Playback stopped; reported once, then the player is idle until the next PLAY.
    Ended(EndReason),
    /// Nothing is due before this instant; poll again then (or after a PLAY/PAUSE).
    WaitUntil(Instant),
    /// Paused or ended: nothing to do until the next [`Player::play`].
    Idle,
}

/// One track's packetizer and time base.
struct Track {
    packetizer: Packetizer,
    timescale: u32,
    clock_rate: u32,
    rtp_offset: u32,
    video: bool,
}

impl Track {
    /// RTP ticks that `loops` file durations add.
    fn loop_ticks(&self, loops: u32, duration: Duration) -> i128 {
        i128::from(loops) * duration.as_nanos() as i128 * i128::from(self.clock_rate)
            / 1_000_000_000
    }

    /// RTP timestamp of a pts (track timescale units) after `loops` loops.
    fn rtp_of_pts(&self, pts: i64, loops: u32, duration: Duration) -> u32 {
        let ticks = i128::from(pts) * i128::from(self.clock_rate)
            / i128::from(self.timescale.max(1))
            + self.loop_ticks(loops, duration);
        // Truncation to 32 bits is RTP's wrapping arithmetic.
        self.rtp_offset.wrapping_add(ticks as u32)
    }

    /// RTP timestamp of media time `secs` after `loops` loops.
    fn rtp_at(&self, secs: f64, loops: u32, duration: Duration) -> u32 {
        let ticks =
            (secs * f64::from(self.clock_rate)).round() as i128 + self.loop_ticks(loops, duration);
        self.rtp_offset.wrapping_add(ticks as u32)
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Paused,
    Ended,
    Playing {
        anchor_wall: Instant,
        /// Media time of the anchor on the looping timeline (loops × duration + position).
        anchor_media: f64,
        scale: f64,
        end: Option<f64>,
    },
}

/// A file played as timed RTP; see the module documentation.
pub struct Player {
    demuxer: Box<dyn Demuxer>,
    tracks: Vec<Track>,
    duration: Duration,
    options: PlayerOptions,
    loops: u32,
    mode: Mode,
    /// The next sample of the every-sample schedule, read but not yet due.
    pending: Option<Sample>,
    /// Media time within the file of the last sample sent (the resume point).
    position: f64,
    /// Keyframe-only playback: the next keyframe to send.
    next_keyframe: Option<KeyframeCursor>,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Player")
            .field("tracks", &self.tracks.len())
            .field("duration", &self.duration)
            .field("loops", &self.loops)
            .field("mode", &self.mode)
            .field("position", &self.position)
            .finish()
    }
}

impl Player {
    /// A paused player of `demuxer` (positioned at the start) with one output per demuxer
    /// track, in file order. Samples of tracks beyond `outputs` are not sent, so a caller
    /// may leave out trailing tracks it cannot packetize.
    pub fn new(
        demuxer: Box<dyn Demuxer>,
        outputs: Vec<TrackOutput>,
        options: PlayerOptions,
    ) -> Player {
        let info = demuxer.info();
        let tracks = info
            .tracks
            .iter()
            .zip(outputs)
            .map(|(t, out)| Track {
                clock_rate: out.packetizer.clock_rate(),
                packetizer: out.packetizer,
                timescale: t.timescale,
                rtp_offset: out.rtp_offset,
                video: t.is_video(),
            })
            .collect();
        let duration = info.duration;
        Player {
            demuxer,
            tracks,
            duration,
            options,
            loops: 0,
            mode: Mode::Paused,
            pending: None,
            position: 0.0,
            next_keyframe: None,
        }
    }

    /// The file's duration in seconds.
    pub fn duration(&self) -> f64 {
        self.duration.as_secs_f64()
    }

    /// Media position within the file (seconds) of the last sample sent, where a PLAY
    /// without a start resumes.
    pub fn position(&self) -> f64 {
        self.position
    }

    /// Completed loops.
    pub fn loops(&self) -> u32 {
        self.loops
    }

    /// True between a PLAY and the next PAUSE or end.
    pub fn is_playing(&self) -> bool {
        matches!(self.mode, Mode::Playing { .. })
    }

    /// Starts or seeks playback at wall instant `now`. `start` None resumes at the current
    /// position (exactly where PAUSE stopped); Some(t) seeks to the keyframe at or before t
    /// (Scale > 1: at or after; Scale < 0: at or before). `end` stops there. `scale` in
    /// `(0, 1]` plays every sample (below 1 slower); above 1 and below 0 play keyframes only,
    /// forward or backward. Returns the actual start and each track's RTP-Info.
    pub fn play(
        &mut self,
        start: Option<f64>,
        end: Option<f64>,
        scale: f64,
        now: Instant,
    ) -> Result<PlayStart, PlayError> {
        let duration = self.duration();
        if !scale.is_finite() || scale == 0.0 || scale.abs() > MAX_SCALE {
            return Err(PlayError::UnsupportedScale(scale));
        }
        let trick = !(0.0..=1.0).contains(&scale);
        if trick && self.demuxer.keyframe_times().is_empty() {
            return Err(PlayError::UnsupportedScale(scale));
        }
        if let Some(s) = start {
            if !(0.0..=duration + TIME_SLACK).contains(&s) && !self.options.looping {
                return Err(PlayError::InvalidRange(format!(
                    "start {s:.3} beyond duration {duration:.3}"
                )));
            }
        }
        if let (Some(s), Some(e)) = (start, end) {
            let backwards = scale < 0.0;
            if (!backwards && e <= s) || (backwards && e >= s) {
                return Err(PlayError::InvalidRange(format!(
                    "end {e:.3} does not follow start {s:.3}"
                )));
            }
        }
        let actual = if trick {
            let from = start.unwrap_or(self.position).clamp(0.0, duration);
            let kfs = self.demuxer.keyframe_times();
            let idx = if scale > 0.0 {
                kfs.iter()
                    .position(|k| k.as_secs_f64() >= from - TIME_SLACK)
            } else {
                kfs.iter()
                    .rposition(|k| k.as_secs_f64() <= from + TIME_SLACK)
            };
            let t = idx
                .and_then(|i| kfs.get(i))
                .map_or(from, |k| k.as_secs_f64());
            self.next_keyframe = Some(idx.map_or(KeyframeCursor::Finished, KeyframeCursor::At));
            self.pending = None;
            t
        } else {
            self.next_keyframe = None;
            match start {
                Some(s) => {
                    let target = s.clamp(0.0, duration);
                    let got = self.demuxer.seek(Duration::from_secs_f64(target))?;
                    self.pending = None;
                    got.as_secs_f64()
                }
                // Resume after the end: nothing is left unless a new range is asked for.
                None if matches!(self.mode, Mode::Ended) => self.position,
                None => {
                    if self.pending.is_none() && self.position == 0.0 {
                        self.demuxer.seek(Duration::ZERO)?;
                    }
                    self.position
                }
            }
        };
        self.position = actual;
        self.mode = Mode::Playing {
            anchor_wall: now,
            anchor_media: self.loop_secs() + actual,
            scale,
            end,
        };
        let (loops, file_duration) = (self.loops, self.duration);
        let tracks = self
            .tracks
            .iter()
            .map(|t| TrackStart {
                seq: t.packetizer.next_sequence(),
                rtptime: t.rtp_at(actual, loops, file_duration),
            })
            .collect();
        Ok(PlayStart {
            start: actual,
            end,
            scale,
            tracks,
        })
    }

    /// Pauses; returns the position (seconds) a PLAY without a start resumes at.
    pub fn pause(&mut self) -> f64 {
        if self.is_playing() {
            self.mode = Mode::Paused;
        }
        self.position
    }

    /// The next thing to do at wall instant `now`: send a due sample's packets, wait, or
    /// report the end.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let Mode::Playing {
            anchor_wall,
            anchor_media,
            scale,
            end,
        } = self.mode
        else {
            return Poll::Idle;
        };
        let due_at = |media: f64| {
            let d = ((media - anchor_media) / scale).max(0.0);
            anchor_wall + Duration::from_secs_f64(d.min(1e6))
        };
        match self.next_keyframe {
            Some(KeyframeCursor::At(idx)) => {
                return self.poll_keyframe(idx, scale, end, now, due_at)
            }
            Some(KeyframeCursor::Finished) => return self.end(EndReason::EndOfFile),
            None => {}
        }
        loop {
            let sample = match self.pending.take() {
                Some(s) => s,
                None => match self.demuxer.next_sample() {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        if let Some(ended) = self.end_or_loop() {
                            return ended;
                        }
                        continue;
                    }
                    Err(e) => return self.end(EndReason::Failed(e)),
                },
            };
            let Some(track) = self.tracks.get(sample.track) else {
                continue;
            };
            // Samples that end before presentation time 0 (AAC priming frames cut by the
            // edit list) are not presented; sending them would step timestamps back at a loop.
            if sample.pts.saturating_add(i64::from(sample.duration)) <= 0 {
                continue;
            }
            let position = sample.dts as f64 / f64::from(track.timescale.max(1));
            if end.is_some_and(|e| position > e) {
                return self.end(EndReason::RangeEnd);
            }
            let due = due_at(self.loop_secs() + position);
            if due > now + self.options.lead {
                self.pending = Some(sample);
                return Poll::WaitUntil(due - self.options.lead);
            }
            self.position = position;
            return self.packetize(&sample, position);
        }
    }

    /// Keyframe-only playback: sends keyframe `idx` when due, then steps forward or back.
    fn poll_keyframe(
        &mut self,
        idx: usize,
        scale: f64,
        end: Option<f64>,
        now: Instant,
        due_at: impl Fn(f64) -> Instant,
    ) -> Poll {
        let Some(t) = self
            .demuxer
            .keyframe_times()
            .get(idx)
            .map(|d| d.as_secs_f64())
        else {
            return self.end(EndReason::EndOfFile);
        };
        let past_end = end.is_some_and(|e| if scale > 0.0 { t > e } else { t < e });
        if past_end {
            return self.end(EndReason::RangeEnd);
        }
        let due = due_at(self.loop_secs() + t);
        if due > now + self.options.lead {
            return Poll::WaitUntil(due - self.options.lead);
        }
        let read = self.read_keyframe(t);
        self.position = t;
        self.next_keyframe = Some(if scale > 0.0 {
            KeyframeCursor::At(idx + 1)
        } else if idx == 0 {
            // Reverse playback reached the first keyframe: the end once it is out.
            KeyframeCursor::Finished
        } else {
            KeyframeCursor::At(idx - 1)
        });
        match read {
            Ok(Some(sample)) => self.packetize(&sample, t),
            Ok(None) => Poll::Skipped(Skip::Keyframe(MediaError::Malformed(format!(
                "no video keyframe at {t:.3}s"
            )))),
            Err(e) => Poll::Skipped(Skip::Keyframe(e)),
        }
    }

    /// Seeks to keyframe time `t` and reads the video keyframe there.
    fn read_keyframe(&mut self, t: f64) -> Result<Option<Sample>, MediaError> {
        self.demuxer.seek(Duration::from_secs_f64(t))?;
        while let Some(s) = self.demuxer.next_sample()? {
            let video = self.tracks.get(s.track).is_some_and(|tr| tr.video);
            if video && s.keyframe {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Packetizes a due sample at its loop-continuous RTP timestamp.
    fn packetize(&mut self, sample: &Sample, position: f64) -> Poll {
        let (loops, duration) = (self.loops, self.duration);
        let Some(track) = self.tracks.get_mut(sample.track) else {
            return Poll::Skipped(Skip::NoTrack(sample.track));
        };
        let rtp_timestamp = track.rtp_of_pts(sample.pts, loops, duration);
        let mut packets = Vec::with_capacity(4);
        match track
            .packetizer
            .packetize(&sample.data, rtp_timestamp, sample.keyframe, &mut packets)
        {
            Ok(()) => Poll::Send(Burst {
                track: sample.track,
                packets,
                rtp_timestamp,
                keyframe: sample.keyframe,
                position,
                loops,
            }),
            Err(error) => Poll::Skipped(Skip::Packetize {
                track: sample.track,
                error,
            }),
        }
    }

    /// The file ran out: start the next loop (None: go on polling) or end.
    fn end_or_loop(&mut self) -> Option<Poll> {
        if self.options.looping && !self.duration.is_zero() {
            self.loops = self.loops.saturating_add(1);
            if let Err(e) = self.demuxer.seek(Duration::ZERO) {
                return Some(self.end(EndReason::Failed(e)));
            }
            self.position = 0.0;
            return None;
        }
        Some(self.end(EndReason::EndOfFile))
    }

    /// Stops playback; a PLAY starts it again.
    fn end(&mut self, reason: EndReason) -> Poll {
        self.mode = Mode::Ended;
        self.pending = None;
        Poll::Ended(reason)
    }

    /// Media time that completed loops add, in seconds.
    fn loop_secs(&self) -> f64 {
        f64::from(self.loops) * self.duration()
    }
}

/// Where keyframe-only playback stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyframeCursor {
    /// Keyframe index to send next (past the list: the end).
    At(usize),
    /// Reverse playback sent the first keyframe.
    Finished,
}
