//! The file source: plays a demuxed file into a [`Stream`] at media pace, with seeking,
//! pause/resume and Scale (keyframes only for fast forward and reverse).
//!
//! One instance serves either one on-demand reader (a private stream per VOD session) or
//! all readers of a `file://` path / the built-in demo (a shared, looping live stream).
//! Each instance is one tokio task that sleeps until its next sample is due: no thread
//! and no busy loop per reader. Samples are read on demand from the demuxer (file reads
//! are short and served from the page cache; a thread-pool hop per sample would cost
//! more than the read), so memory does not grow with the file.
//!
//! RTP timestamps follow media time: `rtp = offset + pts × clock_rate / timescale` (plus
//! one file duration per completed loop), so they stay continuous across PAUSE/PLAY and
//! jump only on a seek, which RTP-Info announces.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_codec::packetizer::Packetizer;
use sluice_media::{Demuxer, MediaError, Sample};
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::rtcp::SenderInfo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::stream::{MediaPacket, Stream};

/// How far ahead of their due time samples are sent (smooths scheduling jitter).
const LEAD: Duration = Duration::from_millis(50);
/// Largest RTP payload produced.
pub const MAX_PAYLOAD: usize = 1400;

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

/// One track's packetizer and time base.
struct TrackOut {
    packetizer: Packetizer,
    timescale: u32,
    clock_rate: u32,
    rtp_offset: u32,
    video: bool,
}

impl TrackOut {
    /// RTP timestamp of a pts (track timescale units) in loop `loops`.
    fn rtp_time(&self, pts: i64, loop_ticks: i64) -> u32 {
        let t = i128::from(pts) + i128::from(loop_ticks);
        let ticks = t * i128::from(self.clock_rate) / i128::from(self.timescale.max(1));
        self.rtp_offset.wrapping_add(ticks as i64 as u32)
    }

    /// RTP timestamp at media time `secs`.
    fn rtp_at(&self, secs: f64) -> u32 {
        self.rtp_offset
            .wrapping_add((secs * f64::from(self.clock_rate)).round() as i64 as u32)
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Paused,
    Ended,
    Playing {
        anchor_wall: Instant,
        anchor_media: f64,
        scale: f64,
        end: Option<f64>,
    },
}

struct State {
    demuxer: Box<dyn Demuxer>,
    tracks: Vec<TrackOut>,
    duration: f64,
    looping: bool,
    loops: u32,
    mode: Mode,
    /// The next sample of the normal (scale 0..=1) schedule, read but not sent.
    pending: Option<Sample>,
    /// Media time of the next sample to send (resume point).
    position: f64,
    /// Keyframe mode: index of the next keyframe to send.
    next_keyframe: Option<usize>,
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
    /// Actual start (the keyframe at or before the requested one, or the resume point).
    pub start: f64,
    /// The range end, if any.
    pub end: Option<f64>,
    /// The scale applied.
    pub scale: f64,
    /// Per track.
    pub tracks: Vec<TrackStart>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
    stream: Arc<Stream>,
    label: String,
}

/// A file playing into a stream.
pub struct FileSource {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("label", &self.shared.label)
            .finish()
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Packetizers for a demuxer's tracks: payload types 96, 97, … and random SSRCs and
/// initial sequence numbers/timestamps, as RFC 3550 recommends.
pub fn packetizers(
    demuxer: &dyn Demuxer,
) -> Result<Vec<Packetizer>, sluice_codec::packetizer::PacketizeError> {
    demuxer
        .info()
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Packetizer::new(
                &t.params,
                96 + i as u8,
                rand::random(),
                rand::random(),
                MAX_PAYLOAD,
            )
        })
        .collect()
}

impl FileSource {
    /// A paused source playing `demuxer` into `stream` with these packetizers (one per
    /// demuxer track, as from [`packetizers`]). `looping` restarts at the end with
    /// continuous timestamps (live file paths); otherwise the end sends an end-of-stream
    /// (RTCP BYE) to the stream's sinks and the source waits for a new PLAY.
    pub fn new(
        demuxer: Box<dyn Demuxer>,
        packetizers: Vec<Packetizer>,
        stream: Arc<Stream>,
        looping: bool,
        label: String,
    ) -> FileSource {
        let info = demuxer.info().clone();
        let tracks = info
            .tracks
            .iter()
            .zip(packetizers)
            .map(|(t, packetizer)| TrackOut {
                clock_rate: packetizer.clock_rate(),
                packetizer,
                timescale: t.timescale,
                rtp_offset: rand::random(),
                video: t.params.media_type() == "video",
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                demuxer,
                tracks,
                duration: info.duration.as_secs_f64(),
                looping,
                loops: 0,
                mode: Mode::Paused,
                pending: None,
                position: 0.0,
                next_keyframe: None,
            }),
            wake: Notify::new(),
            stream,
            label,
        });
        let task = tokio::spawn(run(shared.clone()));
        FileSource { shared, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's duration in seconds.
    pub fn duration(&self) -> f64 {
        self.lock().duration
    }

    /// Starts or seeks playback. `start` None resumes at the current position (exactly
    /// where PAUSE stopped); Some(t) seeks to the keyframe at or before t. `end` stops
    /// there. `scale` 0 < s ≤ 1 plays every sample (s < 1 slower); s > 1 and s < 0 play
    /// keyframes only, forward or backward.
    pub fn play(
        &self,
        start: Option<f64>,
        end: Option<f64>,
        scale: f64,
        now: Instant,
    ) -> Result<PlayStart, PlayError> {
        let mut st = self.lock();
        let duration = st.duration;
        if !scale.is_finite() || scale == 0.0 || scale.abs() > 32.0 {
            return Err(PlayError::UnsupportedScale(scale));
        }
        let trick = !(0.0..=1.0).contains(&scale);
        if trick && st.demuxer.keyframe_times().is_empty() {
            return Err(PlayError::UnsupportedScale(scale));
        }
        if let Some(s) = start {
            if !(0.0..=duration + 0.001).contains(&s) && !st.looping {
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
            let from = start.unwrap_or(st.position).clamp(0.0, duration);
            let kfs = st.demuxer.keyframe_times();
            let idx = if scale > 0.0 {
                kfs.iter().position(|k| k.as_secs_f64() >= from - 0.001)
            } else {
                kfs.iter().rposition(|k| k.as_secs_f64() <= from + 0.001)
            };
            let t = idx
                .and_then(|i| kfs.get(i))
                .map_or(from, |k| k.as_secs_f64());
            st.next_keyframe = idx;
            st.pending = None;
            t
        } else {
            st.next_keyframe = None;
            match start {
                Some(s) => {
                    let target = s.clamp(0.0, duration);
                    let got = st.demuxer.seek(Duration::from_secs_f64(target))?;
                    st.pending = None;
                    got.as_secs_f64()
                }
                None if matches!(st.mode, Mode::Ended) => {
                    // Resume after the end: nothing left unless a new range is asked.
                    st.position
                }
                None => {
                    if st.pending.is_none() && st.position == 0.0 {
                        st.demuxer.seek(Duration::ZERO)?;
                    }
                    st.position
                }
            }
        };
        let loop_secs = f64::from(st.loops) * duration;
        st.position = actual;
        st.mode = Mode::Playing {
            anchor_wall: now,
            anchor_media: actual,
            scale,
            end,
        };
        let tracks = st
            .tracks
            .iter()
            .map(|t| TrackStart {
                seq: t.packetizer.next_sequence(),
                rtptime: t.rtp_at(actual + loop_secs),
            })
            .collect();
        // Sender Reports follow media time only at normal speed.
        if scale == 1.0 {
            let ntp = NtpTime::from_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            for (i, t) in st.tracks.iter().enumerate() {
                let info = SenderInfo {
                    ssrc: 0,
                    ntp,
                    rtp_timestamp: t.rtp_at(actual + loop_secs),
                    packet_count: 0,
                    octet_count: 0,
                };
                self.shared.stream.handle_sender_report(i, &info, now);
            }
        }
        drop(st);
        self.shared.wake.notify_one();
        Ok(PlayStart {
            start: actual,
            end,
            scale,
            tracks,
        })
    }

    /// Pauses; returns the position (seconds) a PLAY without Range resumes at.
    pub fn pause(&self) -> f64 {
        let mut st = self.lock();
        if matches!(st.mode, Mode::Playing { .. }) {
            st.mode = Mode::Paused;
        }
        st.position
    }

    /// The current media position in seconds.
    pub fn position(&self) -> f64 {
        self.lock().position
    }
}

enum Step {
    Wait,
    SleepUntil(Instant),
    Continue,
}

async fn run(shared: Arc<Shared>) {
    let mut sent_since_yield = 0u32;
    loop {
        let step = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            step(&mut st, &shared, Instant::now())
        };
        match step {
            Step::Wait => shared.wake.notified().await,
            Step::SleepUntil(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            Step::Continue => {
                sent_since_yield += 1;
                if sent_since_yield >= 64 {
                    sent_since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Does the next unit of work: sends one due sample (or keyframe) or says how long to wait.
fn step(st: &mut State, shared: &Shared, now: Instant) -> Step {
    let Mode::Playing {
        anchor_wall,
        anchor_media,
        scale,
        end,
    } = st.mode
    else {
        return Step::Wait;
    };
    let due_at = |media: f64| {
        let d = ((media - anchor_media) / scale).max(0.0);
        anchor_wall + Duration::from_secs_f64(d.min(1e6))
    };
    if let Some(idx) = st.next_keyframe {
        return step_keyframe(st, shared, idx, scale, end, now, due_at);
    }
    let sample = match st.pending.take() {
        Some(s) => s,
        None => match st.demuxer.next_sample() {
            Ok(Some(s)) => s,
            Ok(None) => return end_or_loop(st, shared, now),
            Err(e) => {
                warn!(source = %shared.label, error = %e, "file read failed; stopping playback");
                return end_of_stream(st, shared);
            }
        },
    };
    let Some(track) = st.tracks.get(sample.track) else {
        return Step::Continue;
    };
    // Samples that end before presentation time 0 (AAC priming frames cut by the edit
    // list) are not presented; sending them would make timestamps step back at a loop.
    if sample.pts.saturating_add(i64::from(sample.duration)) <= 0 {
        return Step::Continue;
    }
    let loop_secs = f64::from(st.loops) * st.duration;
    let media = sample.dts as f64 / f64::from(track.timescale.max(1)) + loop_secs;
    if end.is_some_and(|e| media - loop_secs > e) {
        return end_of_stream(st, shared);
    }
    let due = due_at(media);
    if due > now + LEAD {
        st.pending = Some(sample);
        return Step::SleepUntil(due - LEAD);
    }
    st.position = media - loop_secs;
    send_sample(st, shared, &sample, now);
    Step::Continue
}

#[allow(clippy::too_many_arguments)]
fn step_keyframe(
    st: &mut State,
    shared: &Shared,
    idx: usize,
    scale: f64,
    end: Option<f64>,
    now: Instant,
    due_at: impl Fn(f64) -> Instant,
) -> Step {
    let Some(t) = st
        .demuxer
        .keyframe_times()
        .get(idx)
        .map(|d| d.as_secs_f64())
    else {
        return end_of_stream(st, shared);
    };
    let past_end = end.is_some_and(|e| if scale > 0.0 { t > e } else { t < e });
    if past_end {
        return end_of_stream(st, shared);
    }
    let due = due_at(t);
    if due > now + LEAD {
        return Step::SleepUntil(due - LEAD);
    }
    // Read the video keyframe at t.
    let sample = match st.demuxer.seek(Duration::from_secs_f64(t)) {
        Ok(_) => loop {
            match st.demuxer.next_sample() {
                Ok(Some(s)) => {
                    let video = st.tracks.get(s.track).is_some_and(|tr| tr.video);
                    if video && s.keyframe {
                        break Some(s);
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    debug!(source = %shared.label, error = %e, "keyframe read failed");
                    break None;
                }
            }
        },
        Err(e) => {
            debug!(source = %shared.label, error = %e, "keyframe seek failed");
            None
        }
    };
    if let Some(s) = sample {
        send_sample(st, shared, &s, now);
    }
    st.position = t;
    st.next_keyframe = if scale > 0.0 {
        Some(idx + 1)
    } else if idx == 0 {
        return end_of_stream(st, shared);
    } else {
        Some(idx - 1)
    };
    Step::Continue
}

fn send_sample(st: &mut State, shared: &Shared, sample: &Sample, now: Instant) {
    let loop_ticks = |t: &TrackOut, loops: u32, duration: f64| -> i64 {
        (f64::from(loops) * duration * f64::from(t.timescale)).round() as i64
    };
    let (loops, duration) = (st.loops, st.duration);
    let Some(track) = st.tracks.get_mut(sample.track) else {
        return;
    };
    let rtp_ts = track.rtp_time(sample.pts, loop_ticks(track, loops, duration));
    let mut packets: Vec<Bytes> = Vec::with_capacity(4);
    if let Err(e) = track
        .packetizer
        .packetize(&sample.data, rtp_ts, sample.keyframe, &mut packets)
    {
        debug!(source = %shared.label, track = sample.track, error = %e, "sample not packetizable; skipped");
        return;
    }
    for data in packets {
        let Ok(header) = parse_rtp(&data) else {
            continue;
        };
        shared.stream.push_rtp(MediaPacket {
            track: sample.track,
            data,
            header,
            received_at: now,
        });
    }
    shared.stream.flush();
}

fn end_or_loop(st: &mut State, shared: &Shared, _now: Instant) -> Step {
    if st.looping && st.duration > 0.0 {
        st.loops = st.loops.saturating_add(1);
        if let Err(e) = st.demuxer.seek(Duration::ZERO) {
            warn!(source = %shared.label, error = %e, "cannot loop file");
            return end_of_stream(st, shared);
        }
        st.position = 0.0;
        return Step::Continue;
    }
    end_of_stream(st, shared)
}

fn end_of_stream(st: &mut State, shared: &Shared) -> Step {
    st.mode = Mode::Ended;
    st.pending = None;
    debug!(source = %shared.label, position = st.position, "end of file");
    shared.stream.push_end_of_stream();
    Step::Wait
}
