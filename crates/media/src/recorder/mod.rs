//! The sans-IO recorder: RTP packets of a stream's tracks in, a fragmented MP4 out (an init
//! segment, then `moof`+`mdat` fragments to append, each leaving a playable file), shared by
//! `sluice record` and the server's recorder so that the timestamp arithmetic exists once.
//!
//! Timing: each track's RTP timestamps are unwrapped relative to its RTP-Info `rtptime`
//! (all tracks' rtptimes name the same instant, so tracks stay in sync), and the file
//! starts at the first video keyframe (or first audio access unit when there is no video).
//! A sender whose RTP clock does not advance (every access unit with one timestamp, as a
//! GStreamer pipeline fed untimestamped buffers sends) cannot be timed by RTP; such a track
//! is timed by arrival instead, on a steady frame grid, with H.264 B-frames put back in
//! picture order.
//!
//! No clock is read and nothing is written: the caller passes each packet's arrival
//! [`Instant`], calls [`Recorder::handle_timeout`] at [`Recorder::poll_timeout`], appends
//! what [`Recorder::poll_output`] returns to its file (or segments), and bounds how long it
//! waits for the start with [`Recorder::start_lack`] telling what is missing.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sluice_media::recorder::{Recorder, TrackSpec};
//!
//! let now = Instant::now();
//! let opus = TrackSpec {
//!     encoding: "opus".into(),
//!     clock_rate: 48_000,
//!     channels: Some(2),
//!     fmtp: None,
//!     video: false,
//!     framerate: None,
//! };
//! let mut rec = Recorder::new(&[opus], now)?;
//! rec.playing(now, &[Some(1000)]);
//! // Two 20 ms Opus packets: RTP header (version 2, PT 111, seq, ts, SSRC 7), payload. The
//! // second shows the RTP clock advances, so the file can start.
//! for (seq, ts, ms) in [(1u8, 1000u16, 0u64), (2, 1960, 20)] {
//!     let [t0, t1] = ts.to_be_bytes();
//!     let packet = [0x80, 111, 0, seq, 0, 0, t0, t1, 0, 0, 0, 7, 0xfc, 0xff, 0xfe];
//!     rec.push_rtp(0, &packet, now + Duration::from_millis(ms))?;
//! }
//! let init = rec.poll_output().expect("an audio-only file starts at its first frame");
//! assert!(matches!(init, sluice_media::recorder::Output::Init(_)));
//! let tail = rec.finish()?;
//! assert!(!tail.is_empty());
//! # Ok::<(), sluice_media::recorder::RecorderError>(())
//! ```

mod timing;
mod track;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_codec::depacketizer::{AccessUnit, DepacketizeError, Depacketizer};

use crate::mux::{Mp4Writer, MuxError};
use timing::{grid_time, TrackClock};
use track::{Mux, Track};

/// Access units buffered before the file can start; more means the stream cannot start a
/// file in any reasonable time (bounds memory, not only time).
pub const MAX_PENDING_BYTES: usize = 256 << 20;

/// A track as the SDP describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackSpec {
    /// The encoding name of its `a=rtpmap` (e.g. `H264`, `MPEG4-GENERIC`, `opus`).
    pub encoding: String,
    /// Its RTP clock rate.
    pub clock_rate: u32,
    /// Its audio channels, if stated.
    pub channels: Option<u16>,
    /// Its `a=fmtp` parameters (parameter sets, AAC config).
    pub fmtp: Option<String>,
    /// Whether it is a video track (`m=video`): the file starts at a video keyframe.
    pub video: bool,
    /// Its `a=framerate`, used to time a track whose RTP clock does not advance.
    pub framerate: Option<f64>,
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

/// Why the file has not started: the track that holds it back and what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("track {track} ({encoding}): {missing}")]
pub struct StartLack {
    /// Index of the track in the SDP.
    pub track: usize,
    /// Its SDP encoding name (e.g. `H264`).
    pub encoding: String,
    /// What it lacks.
    pub missing: Missing,
}

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// No track of the SDP can be recorded.
    #[error("no recordable track (supported: H.264, H.265, AAC, Opus); offered: {offered}")]
    NoTracks {
        /// The offered encodings, comma-separated.
        offered: String,
    },
    /// The file cannot start: more than [`MAX_PENDING_BYTES`] arrived while a track lacked
    /// what the file needs first, or the recording ended before the file started.
    #[error("cannot start the file: {0}")]
    NotStarted(StartLack),
    /// The MP4 writer refused the file's tracks or a sample.
    #[error("writing track {track} to MP4: {source}")]
    Mux {
        /// Index of the track in the SDP (of the first track when starting the file).
        track: usize,
        /// Why.
        source: MuxError,
    },
}

/// Bytes to append to the recording, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The file's head (`ftyp`, `moov`): comes once, first, when the file starts.
    Init(Vec<u8>),
    /// One `moof`+`mdat` fragment; the file is playable after each.
    Fragment(Vec<u8>),
}

/// Something the driver may want to log (one per session event, except
/// [`Event::Undecodable`] which is per refused packet).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A track of the SDP cannot be recorded (unsupported codec, unusable parameters); the
    /// others are.
    NotRecorded {
        /// Index of the track in the SDP.
        track: usize,
        /// Its encoding name.
        encoding: String,
        /// Why.
        error: DepacketizeError,
    },
    /// The file started: [`Output::Init`] is ready.
    Started,
    /// A track's RTP timestamps do not advance; it is timed by arrival at `fps`.
    ArrivalTiming {
        /// Index of the track in the SDP.
        track: usize,
        /// Its encoding name.
        encoding: String,
        /// The frames per second of its grid.
        fps: f64,
    },
    /// An RTP packet was refused and skipped.
    Undecodable {
        /// Index of the track in the SDP.
        track: usize,
        /// Why.
        error: DepacketizeError,
    },
}

/// Progress of a recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Whether the file started ([`Output::Init`] was produced).
    pub started: bool,
    /// Media recorded: the latest access unit's time from the file's start.
    pub duration: Duration,
    /// Bytes produced so far (polled or not), the file's size once they are appended.
    pub bytes: u64,
    /// RTP packets received on recorded tracks.
    pub packets: u64,
}

/// An access unit waiting for the file to start, with both of its possible times (seconds).
struct Pending {
    track: usize,
    rtp_secs: f64,
    arrival_secs: f64,
    au: AccessUnit,
}

/// The file once it started.
struct File {
    mux: Mux,
    /// Writer track of each SDP track (None: not recorded).
    index: Vec<Option<usize>>,
    /// Recording time (seconds) of the file's start.
    origin: f64,
    /// The parameters of the writer's tracks.
    params: Vec<sluice_codec::params::CodecParams>,
}

/// Records a stream's RTP packets into a fragmented MP4 (see the [module docs](self)).
pub struct Recorder {
    /// One per SDP track; None: not recorded.
    tracks: Vec<Option<Track>>,
    /// The instant arrival times count from: PLAY, the instant the RTP-Info rtptimes name
    /// (until then, the recorder's creation).
    base: Instant,
    playing: bool,
    /// The latest time passed in (seconds since `base`).
    now_secs: f64,
    pending: Vec<Pending>,
    pending_bytes: usize,
    file: Option<File>,
    /// Events not yet polled.
    events: VecDeque<Event>,
    duration: Duration,
    packets: u64,
    /// Frames mode: see [`Recorder::frames_mode`].
    frames: bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("tracks", &self.tracks.len())
            .field("playing", &self.playing)
            .field("started", &self.file.is_some())
            .field("pending", &self.pending.len())
            .field("duration", &self.duration)
            .finish()
    }
}

impl Recorder {
    /// A recorder of the tracks an SDP describes, created at `now`. Tracks that cannot be
    /// recorded are reported as [`Event::NotRecorded`] and left out of the file; fails with
    /// [`RecorderError::NoTracks`] when none can be recorded.
    pub fn new(specs: &[TrackSpec], now: Instant) -> Result<Recorder, RecorderError> {
        let mut events = VecDeque::new();
        let mut tracks = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            match Depacketizer::new(&s.encoding, s.clock_rate, s.channels, s.fmtp.as_deref()) {
                Ok(dep) => tracks.push(Some(Track::new(
                    dep,
                    s.encoding.clone(),
                    s.video,
                    s.framerate,
                ))),
                Err(error) => {
                    events.push_back(Event::NotRecorded {
                        track: i,
                        encoding: s.encoding.clone(),
                        error,
                    });
                    tracks.push(None);
                }
            }
        }
        if tracks.iter().all(Option::is_none) {
            let offered: Vec<&str> = specs.iter().map(|s| s.encoding.as_str()).collect();
            return Err(RecorderError::NoTracks {
                offered: offered.join(", "),
            });
        }
        Ok(Recorder {
            tracks,
            base: now,
            playing: false,
            now_secs: 0.0,
            pending: Vec::new(),
            pending_bytes: 0,
            file: None,
            events,
            duration: Duration::ZERO,
            packets: 0,
            frames: false,
        })
    }

    /// Frames mode: instead of MP4 bytes, the recorder hands out its timed access units
    /// ([`Recorder::poll_frame`], for the archive's
    /// [`SegmentWriter`](crate::archive::SegmentWriter), which cuts time-based parts
    /// ready to be synced), with the file's track parameters ([`Recorder::file_params`]).
    /// [`Recorder::poll_output`] then yields only the init, which the caller ignores.
    /// All the timing (RTP unwrapping, arrival timing, B-frame order) is the same.
    pub fn frames_mode(mut self) -> Recorder {
        self.frames = true;
        self
    }

    /// Frames mode: the next timed access unit, on the file's tracks (indexes into
    /// [`Recorder::file_params`]), times in each track's clock from the file's start.
    pub fn poll_frame(&mut self) -> Option<crate::archive::Frame> {
        self.file.as_mut()?.mux.tap.as_mut()?.pop_front()
    }

    /// The codec parameters of the file's tracks, once it started (None before).
    pub fn file_params(&self) -> Option<&[sluice_codec::params::CodecParams]> {
        self.file.as_ref().map(|f| f.params.as_slice())
    }

    /// The current codec parameters of the file's track `track` (an index into
    /// [`Recorder::file_params`]), as its depacketizer last saw them in the SDP or in-band:
    /// when they differ from the file's, the stream changed (a new resolution), and a
    /// segment writer needs a new init (`SegmentWriter::set_params`).
    pub fn current_params(&self, track: usize) -> Option<sluice_codec::params::CodecParams> {
        let file = self.file.as_ref()?;
        let sdp = file.index.iter().position(|i| *i == Some(track))?;
        self.tracks.get(sdp)?.as_ref()?.dep.params()
    }

    /// Frames mode: ends the recording, returning the access units it still held (the
    /// arrival-timed GOP awaiting its picture order, then any not yet polled).
    pub fn finish_frames(mut self) -> Result<Vec<crate::archive::Frame>, RecorderError> {
        let Some(mut file) = self.file.take() else {
            return Err(RecorderError::NotStarted(self.diagnose()));
        };
        for (i, (t, wi)) in self.tracks.iter_mut().zip(&file.index).enumerate() {
            if let (Some(t), Some(wi)) = (t, wi) {
                t.flush(&mut file.mux, *wi)
                    .map_err(|source| RecorderError::Mux { track: i, source })?;
            }
        }
        Ok(file.mux.tap.take().map(Vec::from).unwrap_or_default())
    }

    /// The stream started playing at `now`; `rtptimes` are the RTP-Info `rtptime`s of the
    /// SDP's tracks (in SDP order, None where not given), which all name that instant.
    pub fn playing(&mut self, now: Instant, rtptimes: &[Option<u32>]) {
        self.playing = true;
        self.base = now;
        self.now_secs = 0.0;
        for (t, ts) in self.tracks.iter_mut().zip(rtptimes) {
            if let (Some(t), Some(ts)) = (t, ts) {
                t.unwrap.set_origin(*ts);
            }
        }
    }

    /// Feeds an RTP packet of SDP track `track` that arrived at `now`. Packets of tracks not
    /// recorded are ignored; a malformed packet is skipped ([`Event::Undecodable`]).
    ///
    /// Fails when writing a sample fails, or with [`RecorderError::NotStarted`] when more than
    /// [`MAX_PENDING_BYTES`] of media wait for the file to start.
    pub fn push_rtp(
        &mut self,
        track: usize,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), RecorderError> {
        let now_secs = self.advance(now);
        let Some(Some(t)) = self.tracks.get_mut(track) else {
            return Ok(());
        };
        t.packets += 1;
        self.packets += 1;
        let aus = match t.dep.push(packet) {
            Ok(a) => a,
            Err(error) => {
                self.events.push_back(Event::Undecodable { track, error });
                return Ok(());
            }
        };
        for au in aus {
            let probing = matches!(t.timing, TrackClock::Probing { .. });
            t.timing.observe(au.rtp_timestamp, now_secs, t.framerate);
            if let (true, TrackClock::Arrival { frame }) = (probing, t.timing) {
                self.events.push_back(Event::ArrivalTiming {
                    track,
                    encoding: t.encoding.clone(),
                    fps: (1.0 / frame).round(),
                });
            }
            let rtp_secs = t.unwrap.ticks(au.rtp_timestamp) as f64 / f64::from(t.clock);
            match &mut self.file {
                Some(f) => {
                    let Some(Some(wi)) = f.index.get(track) else {
                        continue;
                    };
                    let secs = t.time(rtp_secs, now_secs) - f.origin;
                    t.emit(&mut f.mux, *wi, secs, au)
                        .map_err(|source| RecorderError::Mux { track, source })?;
                    self.duration = self.duration.max(Duration::from_secs_f64(secs.max(0.0)));
                }
                None => {
                    self.pending_bytes += au.data.len();
                    self.pending.push(Pending {
                        track,
                        rtp_secs,
                        arrival_secs: now_secs,
                        au,
                    });
                }
            }
        }
        self.try_start()
    }

    /// Does what is due at `now`: starts the file once a track's lone access unit settled
    /// its timing (see [`Recorder::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), RecorderError> {
        self.advance(now);
        self.try_start()
    }

    /// When [`Recorder::handle_timeout`] has something to do (None: only packets move the
    /// recorder on).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.file.is_some() || !self.playing {
            return None;
        }
        self.tracks
            .iter()
            .flatten()
            .filter(|t| !t.timing.settled(self.now_secs))
            .filter_map(|t| t.timing.settles_at())
            .map(|s| self.base + Duration::from_secs_f64(s.max(0.0)))
            .min()
    }

    /// Whether SDP track `track` is recorded (see [`Event::NotRecorded`]).
    pub fn is_recorded(&self, track: usize) -> bool {
        matches!(self.tracks.get(track), Some(Some(_)))
    }

    /// The next bytes to append to the recording.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.file.as_mut()?.mux.ready.pop_front()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Progress so far.
    pub fn status(&self) -> Status {
        Status {
            started: self.file.is_some(),
            duration: self.duration,
            bytes: self
                .file
                .as_ref()
                .map_or(0, |f| f.mux.writer.bytes_written()),
            packets: self.packets,
        }
    }

    /// Why the file has not started (None once it did): the first recorded track that got no
    /// packets while lacking parameter sets, else the first one lacking parameter sets, else
    /// the first video track without a keyframe, else the first track without packets.
    pub fn start_lack(&self) -> Option<StartLack> {
        if self.file.is_some() {
            return None;
        }
        Some(self.diagnose())
    }

    /// Ends the recording: writes the held access units and the last fragment, and returns
    /// every byte not yet polled with [`Recorder::poll_output`] followed by the `mfra`
    /// index. Fails with [`RecorderError::NotStarted`] when the file never started.
    pub fn finish(mut self) -> Result<Vec<u8>, RecorderError> {
        let Some(mut file) = self.file.take() else {
            return Err(RecorderError::NotStarted(self.diagnose()));
        };
        for (i, (t, wi)) in self.tracks.iter_mut().zip(&file.index).enumerate() {
            if let (Some(t), Some(wi)) = (t, wi) {
                t.flush(&mut file.mux, *wi)
                    .map_err(|source| RecorderError::Mux { track: i, source })?;
            }
        }
        let mut out = Vec::new();
        for o in file.mux.ready.drain(..) {
            match o {
                Output::Init(b) | Output::Fragment(b) => out.extend_from_slice(&b),
            }
        }
        let tail = file
            .mux
            .writer
            .finish()
            .map_err(|source| RecorderError::Mux {
                track: file.index.iter().flatten().next().copied().unwrap_or(0),
                source,
            })?;
        out.extend_from_slice(&tail);
        Ok(out)
    }

    /// Notes the time and returns it in seconds since `base`.
    fn advance(&mut self, now: Instant) -> f64 {
        self.now_secs = now.saturating_duration_since(self.base).as_secs_f64();
        self.now_secs
    }

    /// See [`Recorder::start_lack`].
    fn diagnose(&self) -> StartLack {
        let recorded = || {
            self.tracks
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((i, t.as_ref()?)))
        };
        let no_params = recorded().find(|(_, t)| t.dep.params().is_none());
        let found = match no_params {
            Some((i, t)) if t.packets == 0 => Some((i, t, Missing::Media)),
            Some((i, t)) => Some((i, t, Missing::ParameterSets)),
            None => recorded()
                .find(|(i, t)| {
                    t.video && !self.pending.iter().any(|p| p.track == *i && p.au.keyframe)
                })
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
        // Everything was at hand but the file still did not start (a track's timing was
        // still being probed): report the first track's lack of media.
        match found.or_else(|| recorded().next().map(|(i, t)| (i, t, Missing::Media))) {
            Some((track, t, missing)) => StartLack {
                track,
                encoding: t.encoding.clone(),
                missing,
            },
            // `new` refuses an SDP without a recorded track.
            None => StartLack {
                track: 0,
                encoding: String::new(),
                missing: Missing::Media,
            },
        }
    }

    /// Starts the file if it can; fails when it cannot and too much is buffered.
    fn try_start(&mut self) -> Result<(), RecorderError> {
        if self.file.is_some() || !self.playing {
            return Ok(());
        }
        self.start()?;
        if self.file.is_none() && self.pending_bytes > MAX_PENDING_BYTES {
            return Err(RecorderError::NotStarted(self.diagnose()));
        }
        Ok(())
    }

    /// Creates the writer once every recorded track's parameters and timing are known and
    /// (with video) a keyframe arrived; writes the pending access units from that keyframe on.
    fn start(&mut self) -> Result<(), RecorderError> {
        let now_secs = self.now_secs;
        if self
            .tracks
            .iter()
            .flatten()
            .any(|t| t.dep.params().is_none() || !t.timing.settled(now_secs))
        {
            return Ok(());
        }
        // The pending access units' times, computed on copies of the frame grids: they only
        // become the tracks' own if the file starts now.
        let mut grid: Vec<Option<f64>> = self
            .tracks
            .iter()
            .map(|t| t.as_ref().and_then(|t| t.grid_last))
            .collect();
        let times: Vec<Option<f64>> = self
            .pending
            .iter()
            .map(|p| {
                let t = self.tracks.get(p.track)?.as_ref()?;
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
        let has_video = self.tracks.iter().flatten().any(|t| t.video);
        let first = if has_video {
            self.pending.iter().position(|p| {
                p.au.keyframe
                    && self
                        .tracks
                        .get(p.track)
                        .and_then(|t| t.as_ref())
                        .is_some_and(|t| t.video)
            })
        } else if self.pending.is_empty() {
            None
        } else {
            Some(0)
        };
        let Some(origin) = first.and_then(|i| times.get(i).copied().flatten()) else {
            return Ok(());
        };
        let mut index = Vec::with_capacity(self.tracks.len());
        let mut params = Vec::new();
        for t in &self.tracks {
            match t.as_ref().and_then(|t| t.dep.params()) {
                Some(p) => {
                    index.push(Some(params.len()));
                    params.push(p);
                }
                None => index.push(None),
            }
        }
        let first_track = index.iter().position(Option::is_some).unwrap_or(0);
        let mut writer =
            Mp4Writer::new(Vec::new(), &params).map_err(|source| RecorderError::Mux {
                track: first_track,
                source,
            })?;
        let mut mux = Mux {
            ready: VecDeque::from([Output::Init(writer.take_output())]),
            writer,
            tap: self.frames.then(VecDeque::new),
        };
        for (t, last) in self.tracks.iter_mut().zip(grid) {
            if let Some(t) = t {
                t.grid_last = last;
            }
        }
        self.pending_bytes = 0;
        for (p, secs) in std::mem::take(&mut self.pending).into_iter().zip(times) {
            let Some(secs) = secs else {
                continue;
            };
            if secs < origin - 1e-6 {
                continue;
            }
            let (Some(Some(t)), Some(Some(wi))) =
                (self.tracks.get_mut(p.track), index.get(p.track))
            else {
                continue;
            };
            let secs = secs - origin;
            t.emit(&mut mux, *wi, secs, p.au)
                .map_err(|source| RecorderError::Mux {
                    track: p.track,
                    source,
                })?;
            self.duration = self.duration.max(Duration::from_secs_f64(secs.max(0.0)));
        }
        self.file = Some(File {
            mux,
            index,
            origin,
            params,
        });
        self.events.push_back(Event::Started);
        Ok(())
    }
}
