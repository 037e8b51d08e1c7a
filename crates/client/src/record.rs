//! `sluice record`: pulls a stream and writes it to a fragmented MP4, playable after every
//! fragment (so an interruption loses at most the last second), finished cleanly on a
//! duration limit or Ctrl-C.
//!
//! Timing: each track's RTP timestamps are unwrapped relative to its RTP-Info `rtptime`
//! (all tracks' rtptimes name the same instant, so tracks stay in sync), and the file
//! starts at the first video keyframe (or first audio frame when there is no video).
//! A sender whose RTP clock does not advance (every access unit with one timestamp, as a
//! GStreamer pipeline fed untimestamped buffers sends) cannot be timed by RTP; such a track
//! is timed by arrival instead, on a steady frame grid, with H.264 B-frames put back in
//! picture order.
//!
//! Bounds: the file must be able to start (every recorded track's parameter sets and, with
//! video, a keyframe) within [`START_TIMEOUT`], or recording fails naming the track and
//! what it lacks; a `duration` ends the run in wall time too, so a stream whose media time
//! stalls cannot keep it open.

use std::fs::File;
use std::future::Future;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_codec::depacketizer::{AccessUnit, Depacketizer};
use sluice_codec::picorder::H264PicOrder;
use sluice_codec::Codec;
use sluice_media::mux::Mp4Writer;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::stats::ReceiverStats;
use tracing::{info, warn};

use crate::probe::{media_descs, redact};
use crate::{ClientEvent, ClientMode, Connection, ConnectionError, Options};

/// How long recording may take to start: from connecting until every recorded track's
/// parameter sets and (with video) a keyframe are known. Long enough for a camera with a
/// several-second GOP, short enough that a stream that can never be recorded is reported
/// instead of waited on forever.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Once the file started, a `duration` run ends at the latest this long after the duration
/// has passed in wall time, even if the stream's media time lags (or stalls).
const DURATION_SLACK: Duration = Duration::from_secs(5);

/// Access units buffered before the file can start; more means the stream cannot start a
/// file in any reasonable time (bounds memory, not only time).
const MAX_PENDING_BYTES: usize = 256 << 20;

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The RTSP side failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// No track can be recorded.
    #[error("no recordable track (supported: H.264, H.265, AAC, Opus); offered: {0}")]
    NoTracks(String),
    /// The stream never started playing.
    #[error("the stream did not start playing within {0:.1?}; nothing was written")]
    NotPlaying(Duration),
    /// The file could not start: a recorded track lacked what the file needs first.
    #[error(
        "cannot record track {track} ({encoding}): {missing} within {waited:.1?}; nothing was written"
    )]
    NotStarted {
        /// Index of the track in the SDP.
        track: usize,
        /// Its SDP encoding name (e.g. `H264`).
        encoding: String,
        /// What it lacked.
        missing: Missing,
        /// How long recording waited.
        waited: Duration,
    },
    /// Writing the file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What a track lacked when the file could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No RTP packet arrived on it.
    Media,
    /// Its codec parameter sets (H.264 SPS/PPS, H.265 VPS/SPS/PPS) were neither in the SDP
    /// (`sprop-*`) nor in-band.
    ParameterSets,
    /// No keyframe (H.264 IDR, H.265 IRAP) arrived, so no video could be decoded.
    Keyframe,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Missing::Media => "no RTP packets arrived",
            Missing::ParameterSets => {
                "no parameter sets (SPS/PPS) arrived, neither in the SDP's sprop nor in-band"
            }
            Missing::Keyframe => "no keyframe arrived",
        })
    }
}

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The stream.
    pub url: String,
    /// The MP4 file to write.
    pub output: PathBuf,
    /// Stop after this much media (None: until the stream ends or Ctrl-C).
    pub duration: Option<Duration>,
    /// RTP over UDP instead of TCP.
    pub udp: bool,
}

/// Progress of a recording.
#[derive(Debug, Clone, Default)]
pub struct RecordStats {
    /// Media recorded.
    pub duration: Duration,
    /// Bytes written to the file.
    pub bytes: u64,
    /// RTP packets received.
    pub packets: u64,
    /// RTP packets lost (sequence gaps).
    pub lost: i64,
    /// Wall time since recording started.
    pub elapsed: Duration,
}

/// A track whose RTP timestamp has not changed across access units arriving this long apart
/// (seconds) has a frozen RTP clock. Several access units with one timestamp within a
/// moment are normal (slices sent with their own marker bits); half a second of them is not.
const FROZEN_AFTER: f64 = 0.5;

/// How a track's access units are timed: by RTP timestamp, or by arrival when the sender's
/// RTP clock does not advance (RFC 3550 wants a timestamp per sampling instant, but a
/// GStreamer pipeline fed untimestamped buffers, for one, stamps every frame alike).
#[derive(Debug, Clone, Copy, PartialEq)]
enum TrackClock {
    /// No access unit yet.
    Unseen,
    /// All `count` access units so far carried `ts`; the first arrived at `since` (seconds).
    Probing { ts: u32, since: f64, count: u32 },
    /// Timestamps advance: time by RTP.
    Rtp,
    /// Timestamps are frozen: time by arrival, on a grid of `frame` seconds (see [`grid_time`]).
    Arrival { frame: f64 },
}

impl TrackClock {
    /// Notes an access unit with RTP timestamp `ts` arriving at `at` (seconds); `framerate`
    /// is the SDP's, if any (else the frame rate is estimated from the probed arrivals).
    fn observe(&mut self, ts: u32, at: f64, framerate: Option<f64>) {
        match *self {
            TrackClock::Unseen => {
                *self = TrackClock::Probing {
                    ts,
                    since: at,
                    count: 1,
                }
            }
            TrackClock::Probing {
                ts: first,
                since,
                count,
            } => {
                let count = count.saturating_add(1);
                if ts != first {
                    *self = TrackClock::Rtp;
                } else if at - since >= FROZEN_AFTER {
                    // Whole frames per second: what cameras send, and what keeps a player's
                    // constant frame rate from merging or splitting frames.
                    let measured = f64::from(count - 1) / (at - since);
                    let fps = framerate.unwrap_or(measured).round().clamp(1.0, 240.0);
                    *self = TrackClock::Arrival { frame: 1.0 / fps };
                } else {
                    *self = TrackClock::Probing {
                        ts: first,
                        since,
                        count,
                    };
                }
            }
            TrackClock::Rtp | TrackClock::Arrival { .. } => {}
        }
    }

    /// Whether the timing is known well enough at `now` (seconds) to start the file: a track
    /// still probing may turn out frozen, so the file waits for it. Several access units
    /// with one timestamp wait for the next one to decide; a lone access unit (a slow
    /// track) counts as RTP-timed once [`FROZEN_AFTER`] passed without another.
    fn settled(&self, now: f64) -> bool {
        match *self {
            TrackClock::Probing { since, count, .. } => count < 2 && now - since >= FROZEN_AFTER,
            _ => true,
        }
    }
}

/// The time (seconds) of a frame of a track timed by arrival: one `frame` after the
/// previous frame's time `last`, nudged toward its `arrival` by at most an eighth of a frame
/// (so the grid follows the sender's real rate without its jitter), or moved on by whole
/// frames when it arrives more than two frames late (frames were lost or the sender
/// stalled). Raw arrival times would do instead if players did not map jittery frames onto
/// a constant frame rate, where two can land on one instant.
fn grid_time(last: Option<f64>, frame: f64, arrival: f64) -> f64 {
    let Some(last) = last else {
        return arrival;
    };
    let expected = last + frame;
    let late = arrival - expected;
    if late > 2.0 * frame {
        expected + (late / frame).round() * frame
    } else {
        expected + (late / 16.0).clamp(-frame / 8.0, frame / 8.0)
    }
}

struct Track {
    dep: Depacketizer,
    encoding: String,
    clock: u32,
    video: bool,
    /// `a=framerate` of the SDP.
    framerate: Option<f64>,
    stats: ReceiverStats,
    packets: u64,
    timing: TrackClock,
    /// The last arrival-timed frame's time (see [`grid_time`]).
    grid_last: Option<f64>,
    /// Arrival-timed H.264: picture order counts, to present B-frames in order.
    order: Option<H264PicOrder>,
    /// Arrival-timed H.264: the access units since the last IDR, with their decode times and
    /// picture order counts, until the next IDR tells their presentation times.
    gop: Vec<(f64, Option<i64>, AccessUnit)>,
    /// How far presentation times are behind decode times (seconds, never decreasing, so
    /// presentation times stay increasing across GOPs): the reorder delay seen so far.
    shift: f64,
    origin: Option<u32>,
    last_ts: u32,
    last_rel: i64,
    last_dts: Option<u64>,
    started: bool,
}

impl Track {
    /// Ticks of `ts` since the track's origin, unwrapped.
    fn rel(&mut self, ts: u32) -> i64 {
        if !self.started {
            self.started = true;
            self.last_ts = *self.origin.get_or_insert(ts);
            self.last_rel = 0;
        }
        self.last_rel += i64::from(ts.wrapping_sub(self.last_ts) as i32);
        self.last_ts = ts;
        self.last_rel
    }

    /// The time (seconds) of the next access unit: `rtp` from its timestamp, or, for a track
    /// timed by arrival, its place on the frame grid given its `arrival`.
    fn time(&mut self, rtp: f64, arrival: f64) -> f64 {
        match self.timing {
            TrackClock::Arrival { frame } => {
                let t = grid_time(self.grid_last, frame, arrival);
                self.grid_last = Some(t);
                t
            }
            _ => rtp,
        }
    }

    /// Writes an access unit at `secs` (seconds from the file's start; skipped before it).
    /// RTP-timed: `secs` is its presentation time. Arrival-timed: `secs` is its decode time,
    /// and H.264 is held until the next IDR so that B-frames get presentation times in
    /// picture order (arrival order is decode order).
    fn emit(
        &mut self,
        w: &mut Mp4Writer<BufWriter<File>>,
        index: usize,
        secs: f64,
        au: AccessUnit,
    ) -> Result<(), String> {
        if secs < 0.0 {
            return Ok(()); // before the file's start
        }
        let reorder =
            matches!(self.timing, TrackClock::Arrival { .. }) && self.dep.codec() == Codec::H264;
        if !reorder {
            let dts = match self.timing {
                TrackClock::Arrival { .. } => secs,
                _ => f64::NAN, // from the presentation time
            };
            return write_sample(w, index, self, dts, secs, &au);
        }
        let order = match &mut self.order {
            Some(o) => o,
            None => {
                let avcc = self.dep.params().map(|p| p.config).unwrap_or_default();
                self.order.insert(H264PicOrder::from_avcc(&avcc))
            }
        };
        let poc = order.push(&au.data);
        if au.keyframe || self.gop.len() >= MAX_GOP {
            self.flush(w, index)?;
        }
        self.gop.push((secs, poc, au));
        Ok(())
    }

    /// Writes the held access units (see [`Track::emit`]): the k-th in picture order is
    /// presented at the k-th decode time plus the reorder delay.
    fn flush(&mut self, w: &mut Mp4Writer<BufWriter<File>>, index: usize) -> Result<(), String> {
        let gop = std::mem::take(&mut self.gop);
        let mut by_poc: Vec<usize> = (0..gop.len()).collect();
        if gop.iter().all(|g| g.1.is_some()) {
            by_poc.sort_by_key(|&i| (gop.get(i).and_then(|g| g.1), i));
        }
        let dts: Vec<f64> = gop.iter().map(|g| g.0).collect();
        // The k-th in picture order is presented at the k-th decode time (plus the shift),
        // which must not be before its own decode time.
        for (k, &i) in by_poc.iter().enumerate() {
            if let (Some(di), Some(dk)) = (dts.get(i), dts.get(k)) {
                self.shift = self.shift.max(di - dk);
            }
        }
        let mut pts = dts.clone();
        for (k, &i) in by_poc.iter().enumerate() {
            if let (Some(p), Some(dk)) = (pts.get_mut(i), dts.get(k)) {
                *p = dk + self.shift;
            }
        }
        for ((dts, _, au), pts) in gop.iter().zip(pts) {
            write_sample(w, index, self, *dts, pts, au)?;
        }
        Ok(())
    }
}

/// Most access units held for reordering; a longer GOP is written in parts (a B-frame at a
/// part's edge may then be presented slightly out of order).
const MAX_GOP: usize = 1024;

/// An access unit waiting for the file to start, with both of its possible times (seconds).
struct Pending {
    track: usize,
    rtp_secs: f64,
    arrival_secs: f64,
    au: AccessUnit,
}

/// The file once it started.
struct Output {
    writer: Mp4Writer<BufWriter<File>>,
    /// Writer track of each SDP track (None: not recorded).
    index: Vec<Option<usize>>,
    /// Recording time (seconds) of the file's start.
    origin: f64,
    /// When it started.
    at: Instant,
}

/// Records until the duration is reached, the stream ends, or `stop` completes; `progress`
/// is called about once a second.
///
/// Fails with [`RecordError::NotStarted`] (nothing written) when the file cannot start
/// within [`START_TIMEOUT`] or before the stream ends; with a `duration`, returns at the
/// latest a few seconds after the duration in wall time, even if less media arrived.
pub async fn record(
    opts: RecordOptions,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&RecordStats),
) -> Result<RecordStats, RecordError> {
    let started = Instant::now();
    let mut conn = Connection::open(Options {
        url: opts.url.clone(),
        credentials: None,
        udp: opts.udp,
        mode: ClientMode::Play,
        connect_timeout: Duration::from_secs(10),
    })
    .await?;
    let out_path = opts.output.display().to_string();
    let mut tracks: Vec<Option<Track>> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut output: Option<Output> = None;
    // Arrival times count from PLAY, the instant the RTP-Info rtptimes name.
    let mut playing_at: Option<Instant> = None;
    let mut stats = RecordStats::default();
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let ev = tokio::select! {
            ev = conn.next_event() => Some(ev),
            _ = tick.tick() => None,
            _ = &mut stop => break,
        };
        let now = Instant::now();
        let base = playing_at.unwrap_or(started);
        let now_secs = now.saturating_duration_since(base).as_secs_f64();
        match ev {
            None => {}
            Some(Ok(ClientEvent::Described { sdp, .. })) => {
                let descs = media_descs(&sdp).map_err(|e| RecordError::NoTracks(e.to_string()))?;
                for (i, d) in descs.iter().enumerate() {
                    match Depacketizer::new(
                        &d.encoding,
                        d.clock_rate,
                        d.channels,
                        d.fmtp.as_deref(),
                    ) {
                        Ok(dep) => tracks.push(Some(Track {
                            clock: d.clock_rate.max(1),
                            encoding: d.encoding.clone(),
                            video: d.media == "video",
                            framerate: d.framerate,
                            grid_last: None,
                            order: None,
                            gop: Vec::new(),
                            shift: 0.0,
                            stats: ReceiverStats::new(d.clock_rate.max(1)),
                            packets: 0,
                            timing: TrackClock::Unseen,
                            dep,
                            origin: None,
                            last_ts: 0,
                            last_rel: 0,
                            last_dts: None,
                            started: false,
                        })),
                        Err(e) => {
                            warn!(track = i, encoding = %d.encoding, error = %e, "track not recorded");
                            tracks.push(None);
                        }
                    }
                }
                if tracks.iter().all(Option::is_none) {
                    let offered: Vec<&str> = descs.iter().map(|d| d.encoding.as_str()).collect();
                    return Err(RecordError::NoTracks(offered.join(", ")));
                }
            }
            Some(Ok(ClientEvent::Playing { rtp_info, .. })) => {
                playing_at = Some(now);
                for (t, info) in tracks.iter_mut().zip(rtp_info) {
                    if let (Some(t), Some(ts)) = (t, info.and_then(|i| i.rtptime)) {
                        t.origin = Some(ts);
                    }
                }
            }
            Some(Ok(ClientEvent::Rtp { track, data })) => {
                stats.packets += 1;
                let Some(Some(t)) = tracks.get_mut(track) else {
                    continue;
                };
                t.packets += 1;
                if let Ok(h) = parse_rtp(&data) {
                    t.stats.handle_packet(&h, now);
                }
                let aus = match t.dep.push(&data) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(track, error = %e, "undecodable RTP packet skipped");
                        continue;
                    }
                };
                for au in aus {
                    let probing = matches!(t.timing, TrackClock::Probing { .. });
                    t.timing.observe(au.rtp_timestamp, now_secs, t.framerate);
                    if let (true, TrackClock::Arrival { frame }) = (probing, t.timing) {
                        warn!(track, encoding = %t.encoding, fps = (1.0 / frame).round(), "the sender's RTP timestamps do not advance; timing the track by arrival");
                    }
                    let rel = t.rel(au.rtp_timestamp);
                    let rtp_secs = rel as f64 / f64::from(t.clock);
                    match &mut output {
                        Some(o) => {
                            let Some(Some(wi)) = o.index.get(track) else {
                                continue;
                            };
                            let secs = t.time(rtp_secs, now_secs) - o.origin;
                            t.emit(&mut o.writer, *wi, secs, au).map_err(|reason| {
                                RecordError::Write {
                                    path: out_path.clone(),
                                    reason,
                                }
                            })?;
                            stats.duration =
                                stats.duration.max(Duration::from_secs_f64(secs.max(0.0)));
                        }
                        None => {
                            pending_bytes += au.data.len();
                            pending.push(Pending {
                                track,
                                rtp_secs,
                                arrival_secs: now_secs,
                                au,
                            });
                        }
                    }
                }
            }
            Some(Ok(ClientEvent::Closed)) | Some(Err(ConnectionError::Closed)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if output.is_none() {
                    return Err(e.into());
                }
                warn!(url = %redact(&opts.url), error = %e, "stream ended with an error; finishing the file");
                break;
            }
        }
        if output.is_none() && playing_at.is_some() {
            output = try_start(&opts, &mut tracks, &mut pending, now_secs)?;
            if output.is_some() {
                pending_bytes = 0;
                info!(output = %out_path, waited_ms = now.duration_since(started).as_millis() as u64, "recording started");
            } else if pending_bytes > MAX_PENDING_BYTES
                || now.duration_since(started) >= START_TIMEOUT
            {
                return Err(not_started(&tracks, &pending, now.duration_since(started)));
            }
        } else if output.is_none() && now.duration_since(started) >= START_TIMEOUT {
            return Err(RecordError::NotPlaying(now.duration_since(started)));
        }
        if let (Some(limit), Some(o)) = (opts.duration, &output) {
            if stats.duration >= limit {
                break;
            }
            if now.duration_since(o.at) >= limit + DURATION_SLACK {
                warn!(
                    recorded_ms = stats.duration.as_millis() as u64,
                    "the stream delivered less media than wall time passed; finishing the file"
                );
                break;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            stats.elapsed = started.elapsed();
            stats.bytes = output.as_ref().map_or(0, |o| o.writer.bytes_written());
            stats.lost = tracks
                .iter()
                .flatten()
                .map(|t| t.stats.cumulative_lost())
                .sum();
            progress(&stats);
        }
    }
    conn.close(Duration::from_secs(2)).await;
    stats.elapsed = started.elapsed();
    stats.lost = tracks
        .iter()
        .flatten()
        .map(|t| t.stats.cumulative_lost())
        .sum();
    match output {
        Some(mut o) => {
            for (t, wi) in tracks.iter_mut().zip(&o.index) {
                if let (Some(t), Some(wi)) = (t, wi) {
                    t.flush(&mut o.writer, *wi)
                        .map_err(|reason| RecordError::Write {
                            path: out_path.clone(),
                            reason,
                        })?;
                }
            }
            stats.bytes = o.writer.bytes_written();
            let inner = o.writer.finish().map_err(|e| RecordError::Write {
                path: out_path.clone(),
                reason: e.to_string(),
            })?;
            let file = inner.into_inner().map_err(|e| RecordError::Write {
                path: out_path.clone(),
                reason: e.to_string(),
            })?;
            stats.bytes = file.metadata().map_or(stats.bytes, |m| m.len());
        }
        None if playing_at.is_none() => {
            return Err(RecordError::NotPlaying(started.elapsed()));
        }
        None => return Err(not_started(&tracks, &pending, started.elapsed())),
    }
    progress(&stats);
    Ok(stats)
}

/// Why the file has not started: the first recorded track that got no packets while lacking
/// parameter sets, else the first one lacking parameter sets, else the first video track
/// without a keyframe, else the first track without packets.
fn not_started(tracks: &[Option<Track>], pending: &[Pending], waited: Duration) -> RecordError {
    let recorded = || {
        tracks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t.as_ref()?)))
    };
    let no_params = recorded().find(|(_, t)| t.dep.params().is_none());
    let found = match no_params {
        Some((i, t)) if t.packets == 0 => Some((i, t, Missing::Media)),
        Some((i, t)) => Some((i, t, Missing::ParameterSets)),
        None => recorded()
            .find(|(i, t)| t.video && !pending.iter().any(|p| p.track == *i && p.au.keyframe))
            .map(|(i, t)| {
                let missing = if t.packets == 0 {
                    Missing::Media
                } else {
                    Missing::Keyframe
                };
                (i, t, missing)
            })
            .or_else(|| {
                recorded()
                    .find(|(_, t)| t.packets == 0)
                    .map(|(i, t)| (i, t, Missing::Media))
            }),
    };
    let (track, t, missing) = match found {
        Some(f) => f,
        // Everything was at hand but the file still did not start (a track's timing was
        // still being probed when the stream ended): report the first track's lack of media.
        None => match recorded().next() {
            Some((i, t)) => (i, t, Missing::Media),
            None => return RecordError::NoTracks(String::new()),
        },
    };
    RecordError::NotStarted {
        track,
        encoding: t.encoding.clone(),
        missing,
        waited,
    }
}

/// Creates the writer once every recorded track's parameters and timing are known and
/// (with video) a keyframe arrived; writes the pending access units from that keyframe on.
fn try_start(
    opts: &RecordOptions,
    tracks: &mut [Option<Track>],
    pending: &mut Vec<Pending>,
    now_secs: f64,
) -> Result<Option<Output>, RecordError> {
    if tracks
        .iter()
        .flatten()
        .any(|t| t.dep.params().is_none() || !t.timing.settled(now_secs))
    {
        return Ok(None);
    }
    // The pending access units' times, computed on copies of the frame grids: they only
    // become the tracks' own if the file starts now.
    let mut grid: Vec<Option<f64>> = tracks
        .iter()
        .map(|t| t.as_ref().and_then(|t| t.grid_last))
        .collect();
    let times: Vec<Option<f64>> = pending
        .iter()
        .map(|p| {
            let t = tracks.get(p.track)?.as_ref()?;
            Some(match t.timing {
                TrackClock::Arrival { frame } => {
                    let last = grid.get_mut(p.track)?;
                    let v = grid_time(*last, frame, p.arrival_secs);
                    *last = Some(v);
                    v
                }
                _ => p.rtp_secs,
            })
        })
        .collect();
    let has_video = tracks.iter().flatten().any(|t| t.video);
    let first = if has_video {
        pending.iter().position(|p| {
            p.au.keyframe
                && tracks
                    .get(p.track)
                    .and_then(|t| t.as_ref())
                    .is_some_and(|t| t.video)
        })
    } else if pending.is_empty() {
        None
    } else {
        Some(0)
    };
    let Some(origin) = first.and_then(|i| times.get(i).copied().flatten()) else {
        return Ok(None);
    };
    let mut index = Vec::with_capacity(tracks.len());
    let mut params = Vec::new();
    for t in tracks.iter() {
        match t.as_ref().and_then(|t| t.dep.params()) {
            Some(p) => {
                index.push(Some(params.len()));
                params.push(p);
            }
            None => index.push(None),
        }
    }
    let path = opts.output.display().to_string();
    let file = File::create(&opts.output).map_err(|e| RecordError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut w = Mp4Writer::new(BufWriter::new(file), &params).map_err(|e| RecordError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    for (t, last) in tracks.iter_mut().zip(grid) {
        if let Some(t) = t {
            t.grid_last = last;
        }
    }
    for (p, secs) in pending.drain(..).zip(times) {
        let Some(secs) = secs else {
            continue;
        };
        if secs < origin - 1e-6 {
            continue;
        }
        let (Some(Some(t)), Some(Some(wi))) = (tracks.get_mut(p.track), index.get(p.track)) else {
            continue;
        };
        t.emit(&mut w, *wi, secs - origin, p.au)
            .map_err(|reason| RecordError::Write {
                path: path.clone(),
                reason,
            })?;
    }
    Ok(Some(Output {
        writer: w,
        index,
        origin,
        at: Instant::now(),
    }))
}

/// Writes one sample at decode time `dts` and presentation time `pts` (seconds from the
/// file's start); a NaN `dts` means "the presentation time" (RTP-timed tracks). Decode times
/// are kept strictly increasing, as MP4 requires.
fn write_sample(
    w: &mut Mp4Writer<BufWriter<File>>,
    index: usize,
    t: &mut Track,
    dts: f64,
    pts: f64,
    au: &AccessUnit,
) -> Result<(), String> {
    let clock = f64::from(t.clock);
    let pts = (pts.max(0.0) * clock).round() as u64;
    let dts = if dts.is_nan() {
        pts
    } else {
        (dts.max(0.0) * clock).round() as u64
    };
    let dts = match t.last_dts {
        Some(prev) if dts <= prev => prev + 1,
        _ => dts,
    };
    let offset = i32::try_from(pts as i64 - dts as i64).unwrap_or(0);
    t.last_dts = Some(dts);
    w.write_sample(index, dts, offset, au.keyframe, &au.data)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_timestamps_time_by_rtp_at_the_second_access_unit() {
        let mut c = TrackClock::Unseen;
        assert!(c.settled(0.0));
        c.observe(1000, 0.0, None);
        assert!(!c.settled(0.1), "one access unit says nothing yet");
        c.observe(4000, 0.033, None);
        assert_eq!(c, TrackClock::Rtp);
        assert!(c.settled(0.033));
        // A later repeat (slices with their own marker bits) changes nothing.
        c.observe(4000, 5.0, None);
        assert_eq!(c, TrackClock::Rtp);
    }

    #[test]
    fn a_frozen_clock_is_timed_by_arrival_after_half_a_second() {
        let mut c = TrackClock::Unseen;
        for i in 0..15 {
            c.observe(77, f64::from(i) / 29.0, None);
        }
        assert!(matches!(c, TrackClock::Probing { count: 15, .. }));
        assert!(!c.settled(0.4));
        assert!(
            !c.settled(0.6),
            "repeated timestamps wait for the next access unit"
        );
        c.observe(77, 0.52, None);
        assert_eq!(c, TrackClock::Arrival { frame: 1.0 / 29.0 });
        // The SDP's a=framerate wins over the estimate.
        let mut c = TrackClock::Unseen;
        c.observe(77, 0.0, Some(30.0));
        c.observe(77, 0.6, Some(30.0));
        assert_eq!(c, TrackClock::Arrival { frame: 1.0 / 30.0 });
    }

    #[test]
    fn a_single_access_unit_settles_after_the_probe_window() {
        let mut c = TrackClock::Unseen;
        c.observe(5, 1.0, None);
        assert!(!c.settled(1.2));
        assert!(c.settled(1.0 + FROZEN_AFTER));
    }

    #[test]
    fn the_frame_grid_smooths_jitter_and_skips_gaps() {
        let d = 1.0 / 30.0;
        let mut last = None;
        let mut times = Vec::new();
        // Jittery arrivals (±12 ms) at 30 fps, then a 1 s stall.
        for i in 0..60 {
            let jitter = if i % 2 == 0 { 0.012 } else { -0.012 };
            let arrival = f64::from(i) * d + jitter + if i >= 30 { 1.0 } else { 0.0 };
            let t = grid_time(last, d, arrival);
            last = Some(t);
            times.push(t);
        }
        for w in times.windows(2) {
            let step = w[1] - w[0];
            assert!(
                (step - d).abs() <= d / 8.0 + 1e-9 || step > 2.0 * d,
                "step {step}"
            );
        }
        let gap = times[30] - times[29];
        assert!((gap - (1.0 + d)).abs() < d, "the stall is kept: {gap}");
        assert!(
            (times[59] - (59.0 * d + 1.0)).abs() < d,
            "the grid follows the arrivals: {}",
            times[59]
        );
    }

    fn track(encoding: &str, fmtp: Option<&str>, video: bool, packets: u64) -> Option<Track> {
        let dep = Depacketizer::new(encoding, 90_000, None, fmtp).unwrap();
        Some(Track {
            dep,
            encoding: encoding.into(),
            clock: 90_000,
            video,
            framerate: None,
            stats: ReceiverStats::new(90_000),
            packets,
            timing: TrackClock::Unseen,
            grid_last: None,
            order: None,
            gop: Vec::new(),
            shift: 0.0,
            origin: None,
            last_ts: 0,
            last_rel: 0,
            last_dts: None,
            started: false,
        })
    }

    /// x264's 640x360 SPS and PPS, as an SDP carries them.
    const SPROP: &str =
        "packetization-mode=1;sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAPA8WLZY=,aO+Pyw==";

    #[test]
    fn not_started_names_what_the_track_lacks() {
        let waited = Duration::from_secs(10);
        let missing = |tracks: &[Option<Track>]| match not_started(tracks, &[], waited) {
            RecordError::NotStarted { track, missing, .. } => (track, missing),
            e => panic!("{e}"),
        };
        // No sprop, packets came but no SPS/PPS among them.
        assert_eq!(
            missing(&[track("H264", None, true, 50)]),
            (0, Missing::ParameterSets)
        );
        // No sprop and nothing came at all: the lack of media is the news.
        assert_eq!(
            missing(&[track("H264", None, true, 0)]),
            (0, Missing::Media)
        );
        // Parameter sets known, packets came, no IDR among them.
        assert_eq!(
            missing(&[track("H264", Some(SPROP), true, 50)]),
            (0, Missing::Keyframe)
        );
        // The track that lacks something is named, not the first one.
        assert_eq!(
            missing(&[None, track("H264", None, true, 5)]),
            (1, Missing::ParameterSets)
        );
    }

    #[test]
    fn errors_name_the_track_and_what_it_lacks() {
        let e = RecordError::NotStarted {
            track: 0,
            encoding: "H264".into(),
            missing: Missing::Keyframe,
            waited: Duration::from_secs(10),
        };
        assert_eq!(
            e.to_string(),
            "cannot record track 0 (H264): no keyframe arrived within 10.0s; nothing was written"
        );
    }
}
