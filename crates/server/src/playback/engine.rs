//! The sans-IO replay engine: a path's recorded segments played as one timeline of timed
//! RTP, with clock and npt seeks, Scale (keyframes only beyond ±1, backwards below 0),
//! Speed, `Rate-Control: no`, `Frames`, gap skipping and the ONVIF replay RTP header
//! extension.
//!
//! Like the file player ([`sluice_media::player`]) it reads no clock and touches no
//! socket: the driver passes the current [`Instant`] to [`Replay::play`] and
//! [`Replay::poll`], sends what [`Poll::Send`] hands out and sleeps until the instant
//! [`Poll::WaitUntil`] names. Segment files are opened through an [`Opener`] (the files on
//! disk in the server, bytes in memory in tests).
//!
//! **Timeline.** npt 0 is the window's start (the first segment's start, or the `start`
//! the client asked for); a sample's npt is its wall clock time (from the segment's part
//! records, which absorb drift) minus that origin, so gaps keep their length on the
//! timeline and clock and npt positions convert exactly. RTP timestamps follow npt
//! (forward) so that they jump over a gap by its length.
//!
//! **Gaps** (a segment starting more than [`GAP`] after the previous one ended) are not
//! waited through: the schedule is re-anchored so that the first frame after the gap is
//! due when the last one before it would have ended. The last frame before a gap carries
//! the extension's E bit, the first one after it the D bit.
//!
//! **Reverse** (Scale < 0) plays the video keyframes only, newest first, one per GOP at
//! the keyframes' original spacing divided by |Scale| (the choice the ONVIF spec allows
//! besides whole GOPs reversed: any decoder shows them, and the bytes sent per second stay
//! small). RTP timestamps keep increasing in sending order there, so jitter buffers keep
//! the packets; the extension's NTP time says where each frame really is.
//! Scale beyond ±1 and `Frames: intra` also play keyframes only.
//!
//! **The ONVIF extension** (profile 0xABAC, 3 words: NTP time of the frame, then the
//! C/E/D/T flags and the PLAY's CSeq low byte) goes on every packet of each frame when the
//! client asked for ONVIF replay: C on all of them, D on the first, E and T on the last
//! (GStreamer's `rtponvifparse` pushes the T packet, then end of stream); T marks each
//! track's final frame.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_codec::packetizer::Packetizer;
use sluice_hub::on_demand::{PlayError, PlayStart, TrackStart};
use sluice_hub::{FrameFilter, PlayRequest, Position};
use sluice_media::{CodecParams, Demuxer, MediaError, Sample};

/// A pause between two segments longer than this is a gap (segments of one recording
/// abut within a frame).
pub const GAP: Duration = Duration::from_millis(250);

/// Largest |Scale| or Speed accepted.
pub const MAX_RATE: f64 = 32.0;

/// Slack when matching requested times against keyframe times (npt printed with three
/// decimals still names the keyframe it came from).
const TIME_SLACK: f64 = 0.001;

/// Frames read ahead at most to find a track's next frame (for its E bit).
const LOOKAHEAD: usize = 64;

/// How far ahead of its due time a frame is handed out (smooths scheduling jitter).
const LEAD: Duration = Duration::from_millis(30);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The ONVIF replay RTP header extension's profile.
pub const ONVIF_EXTENSION: u16 = 0xABAC;

/// ONVIF flag bits: clean point (keyframe).
pub const FLAG_C: u8 = 0x80;
/// End of a contiguous section (the last frame before a gap or the end).
pub const FLAG_E: u8 = 0x40;
/// Discontinuity (the first frame after a gap, a seek or skipped frames).
pub const FLAG_D: u8 = 0x20;
/// Terminal: the last packet of the requested range.
pub const FLAG_T: u8 = 0x10;

/// One recorded segment on the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The file.
    pub file: PathBuf,
    /// Wall clock of its first sample.
    pub start: SystemTime,
    /// Wall clock just after its last sample.
    pub end: SystemTime,
    /// Each part's media start on the file's decode timeline (the samples' times: the
    /// segment's media base plus the part's start) and wall clock start, in order: the
    /// media → wall mapping, which absorbs clock drift part by part.
    pub parts: Vec<(Duration, SystemTime)>,
}

impl Segment {
    /// The wall clock time of media time `media` (seconds from the segment's start).
    fn wall_at(&self, media: f64) -> SystemTime {
        let (base_media, base_wall) = self
            .parts
            .iter()
            .take_while(|(m, _)| m.as_secs_f64() <= media + TIME_SLACK)
            .last()
            .map_or((0.0, self.start), |(m, w)| (m.as_secs_f64(), *w));
        add_secs(base_wall, media - base_media)
    }

    /// The media time (seconds from the segment's start) of wall clock time `t`.
    fn media_at(&self, t: SystemTime) -> f64 {
        let (base_media, base_wall) = self
            .parts
            .iter()
            .take_while(|(_, w)| *w <= t)
            .last()
            .map_or((0.0, self.start), |(m, w)| (m.as_secs_f64(), *w));
        (base_media + secs_between(base_wall, t)).max(0.0)
    }
}

/// `b − a` in seconds (negative when b is earlier).
pub fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// `t + secs` (secs may be negative).
pub fn add_secs(t: SystemTime, secs: f64) -> SystemTime {
    if !secs.is_finite() {
        return t;
    }
    let d = Duration::from_secs_f64(secs.abs().min(1e10));
    if secs >= 0.0 {
        t.checked_add(d).unwrap_or(t)
    } else {
        t.checked_sub(d).unwrap_or(t)
    }
}

/// The segments of one playback window, as one timeline.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// npt 0.
    pub origin: SystemTime,
    /// The window's end (the last segment's end, or the `end` asked for).
    pub end: SystemTime,
    /// The segments overlapping the window, ordered by start.
    pub segments: Vec<Segment>,
    /// The window has an end: playback never follows the recording past it.
    pub bounded: bool,
}

impl Timeline {
    /// The timeline of `segments` (any order) within `[from, to]` (None: unbounded);
    /// None when no segment overlaps the window.
    pub fn new(
        mut segments: Vec<Segment>,
        from: Option<SystemTime>,
        to: Option<SystemTime>,
    ) -> Option<Timeline> {
        segments.retain(|s| {
            s.end > s.start && from.is_none_or(|f| s.end > f) && to.is_none_or(|t| s.start < t)
        });
        segments.sort_by_key(|s| s.start);
        let first = segments.first()?.start;
        let last = segments.iter().map(|s| s.end).max()?;
        let origin = from.map_or(first, |f| f.max(first));
        let end = to.map_or(last, |t| t.min(last));
        Some(Timeline {
            origin,
            end,
            segments,
            bounded: to.is_some(),
        })
    }

    /// Its length in seconds (gaps included).
    pub fn span(&self) -> f64 {
        secs_between(self.origin, self.end).max(0.0)
    }

    /// The npt of wall clock time `t`.
    pub fn npt(&self, t: SystemTime) -> f64 {
        secs_between(self.origin, t)
    }

    /// The wall clock time of `npt`.
    pub fn wall(&self, npt: f64) -> SystemTime {
        add_secs(self.origin, npt)
    }
}

/// Opens segment files (I/O at the edge: the server reads files, tests bytes).
pub trait Opener: Send {
    /// Opens `segment`'s file, positioned at its start.
    fn open(&mut self, segment: &Segment) -> Result<Box<dyn Demuxer>, MediaError>;
}

impl<F> Opener for F
where
    F: FnMut(&Segment) -> Result<Box<dyn Demuxer>, MediaError> + Send,
{
    fn open(&mut self, segment: &Segment) -> Result<Box<dyn Demuxer>, MediaError> {
        self(segment)
    }
}

/// How one track leaves the engine.
#[derive(Debug, Clone)]
pub struct TrackOut {
    /// Packetizes the track (its SSRC and sequence numbers are the session's).
    pub packetizer: Packetizer,
    /// The parameters it was made for (a segment with others gets a new packetizer that
    /// goes on with the same SSRC and sequence numbers).
    pub params: CodecParams,
    /// Payload type.
    pub payload_type: u8,
    /// SSRC.
    pub ssrc: u32,
    /// RTP timestamp of npt 0.
    pub rtp_offset: u32,
}

struct Track {
    out: TrackOut,
    clock_rate: u32,
    video: bool,
    /// The next frame of this track starts after a discontinuity (D bit).
    discont: bool,
}

/// The RTP packets of one frame, due now.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Track index.
    pub track: usize,
    /// Complete RTP packets, in sending order.
    pub packets: Vec<Bytes>,
    /// The frame's npt (decode time).
    pub npt: f64,
    /// The frame's wall clock time (presentation time).
    pub wall: SystemTime,
    /// ONVIF flags set on it (C/E/D/T bits), also without the extension.
    pub flags: u8,
}

/// Why replay stopped.
#[derive(Debug)]
pub enum EndReason {
    /// The recorded media (or the asked range) ran out.
    End,
    /// Reading a segment failed.
    Failed(MediaError),
}

/// What the driver does next.
#[derive(Debug)]
pub enum Poll {
    /// Send these packets now, then poll again.
    Send(Burst),
    /// A frame was skipped (worth a debug line); poll again.
    Skipped(String),
    /// Playback ended (reported once; idle until the next PLAY).
    Ended(EndReason),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
    /// Playback reached the end of what is recorded while following the recording: the
    /// driver looks for more ([`Replay::extend`]) and polls again a little later, or
    /// [`Replay::stop_following`] when the recording stopped.
    CaughtUp,
    /// Paused or ended.
    Idle,
}

/// One segment open for reading.
struct OpenSegment {
    index: usize,
    demuxer: Box<dyn Demuxer>,
    /// Demuxer track → engine track, with its timescale.
    map: Vec<Option<(usize, u32)>>,
    /// Keyframe cursor (keyframe mode): index into the demuxer's keyframe times.
    keyframe: Option<usize>,
}

/// A frame read ahead, not yet sent.
struct Item {
    track: usize,
    sample: Sample,
    /// npt of its decode time.
    npt: f64,
    /// Seconds from decode to presentation time.
    pts_offset: f64,
    wall: SystemTime,
    /// The contiguous section before it ended at this npt (a gap lies between).
    gap_from: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    anchor_wall: Instant,
    anchor_npt: f64,
    /// npt seconds per wall second (> 0).
    pace: f64,
    paced: bool,
    backwards: bool,
    keyframes_only: bool,
    end: Option<f64>,
    frames: FrameFilter,
    scale: f64,
    /// Open-ended, forward, every frame at normal pace: at the end of what is recorded,
    /// follow the recording as it grows ([`Poll::CaughtUp`]) instead of ending.
    follow: bool,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Paused,
    Ended,
    Playing(Run),
}

/// Recorded segments played as timed RTP; see the module documentation.
pub struct Replay {
    timeline: Timeline,
    opener: Box<dyn Opener>,
    tracks: Vec<Track>,
    mode: Mode,
    open: Option<OpenSegment>,
    /// The segment to open next.
    next_segment: usize,
    /// Where the open segment's reading starts (npt), for a seek into it.
    seek_to: Option<f64>,
    /// Frames read ahead, not yet sent: the next frame of the same track (or the end)
    /// decides a frame's E and T bits.
    ahead: VecDeque<Item>,
    /// Reading found the end (no more items).
    exhausted: bool,
    /// The end found was the end of what is recorded so far, in follow mode.
    caught_up: bool,
    /// The last frame read: its segment and npt (a segment reopened after it grew is
    /// read on from there).
    read_through: Option<(usize, f64)>,
    /// npt of the last frame sent (where a PLAY without a start resumes).
    position: f64,
    /// Keyframe mode: npt of the last keyframe taken (for `Frames: intra/<ms>`).
    last_keyframe: Option<f64>,
    /// Backwards: the presentation time (seconds) RTP timestamps follow, and the npt it
    /// was anchored at.
    reverse_clock: (f64, f64),
    /// Presentation time of the last frame sent (for continuing RTP timestamps).
    last_presentation: f64,
    onvif: bool,
    cseq: u8,
    /// The T bit went out: nothing follows.
    terminated: bool,
    /// Direction and keyframe mode of the last PLAY (a resume keeps both).
    kind: Option<(bool, bool)>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("segments", &self.timeline.segments.len())
            .field("span", &self.timeline.span())
            .field("mode", &self.mode)
            .field("position", &self.position)
            .finish()
    }
}

impl Replay {
    /// A paused replay of `timeline` with one output per track of its first segment.
    pub fn new(timeline: Timeline, opener: Box<dyn Opener>, outputs: Vec<TrackOut>) -> Replay {
        let tracks = outputs
            .into_iter()
            .map(|out| Track {
                clock_rate: out.packetizer.clock_rate().max(1),
                video: out.params.codec.is_video(),
                out,
                discont: true,
            })
            .collect();
        Replay {
            timeline,
            opener,
            tracks,
            mode: Mode::Paused,
            open: None,
            next_segment: 0,
            seek_to: None,
            ahead: VecDeque::new(),
            exhausted: false,
            caught_up: false,
            read_through: None,
            position: 0.0,
            last_keyframe: None,
            reverse_clock: (0.0, 0.0),
            last_presentation: 0.0,
            onvif: false,
            cseq: 0,
            terminated: false,
            kind: None,
        }
    }

    /// Adds what was recorded since the timeline was listed: segments that grew (same
    /// file) get their new end and parts, new ones are appended. Playback that caught up
    /// goes on with them.
    pub fn extend(&mut self, segments: Vec<Segment>) {
        let segs = &mut self.timeline.segments;
        for s in segments {
            if s.parts.is_empty() {
                // Nothing playable yet.
                continue;
            }
            if let Some(known) = segs.iter_mut().find(|k| k.file == s.file) {
                if s.end > known.end {
                    *known = s;
                }
            } else if segs.last().is_none_or(|l| s.start > l.start) {
                // A later segment. It may start a little before the last one ends: the
                // recorder starts a segment a reorder delay (B-frames) before the keyframe
                // that ends the one before, so segments of one recording overlap by that.
                segs.push(s);
            }
        }
        if !self.timeline.bounded {
            if let Some(end) = segs.iter().map(|s| s.end).max() {
                self.timeline.end = self.timeline.end.max(end);
            }
        }
    }

    /// Ends following: the next poll at the end of what is recorded ends playback.
    pub fn stop_following(&mut self) {
        if let Mode::Playing(run) = &mut self.mode {
            run.follow = false;
        }
        self.caught_up = false;
        self.exhausted = false;
    }

    /// The timeline played.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// npt of the last frame sent.
    pub fn position(&self) -> f64 {
        self.position
    }

    /// Pauses; returns where a PLAY without a start resumes.
    pub fn pause(&mut self) -> f64 {
        if matches!(self.mode, Mode::Playing(_)) {
            self.mode = Mode::Paused;
        }
        self.position
    }

    /// The npt of a requested position. A clock time before 1970 is read as an offset
    /// from the NTP epoch (1900-01-01), i.e. as npt: GStreamer's `rtspsrc` in ONVIF mode
    /// takes the SDP's first range (npt) for clock times since 1900 and asks for
    /// `clock=19000101T000000Z-19000101T000102Z` when it means the whole recording.
    ///
    /// The other way round, an npt beyond 2208988800 s (1970 in NTP seconds) is a clock
    /// time in NTP seconds: GStreamer without ONVIF mode reads the SDP's clock range so.
    fn npt_of(&self, p: Position) -> f64 {
        match p {
            Position::Npt(s) if s >= NTP_UNIX_OFFSET as f64 => self
                .timeline
                .npt(add_secs(SystemTime::UNIX_EPOCH, s - NTP_UNIX_OFFSET as f64)),
            Position::Npt(s) => s,
            Position::Clock(t) if t < SystemTime::UNIX_EPOCH => {
                let ntp_epoch = SystemTime::UNIX_EPOCH
                    .checked_sub(Duration::from_secs(NTP_UNIX_OFFSET))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                secs_between(ntp_epoch, t)
            }
            Position::Clock(t) => self.timeline.npt(t),
        }
    }

    /// Starts or seeks as `request` asks, at wall instant `now`; returns the actual start
    /// (the keyframe at or before the asked start; after it for fast forward) and each
    /// track's RTP-Info.
    pub fn play(&mut self, request: &PlayRequest, now: Instant) -> Result<PlayStart, PlayError> {
        let scale = request.scale;
        let speed = request.speed;
        if !scale.is_finite() || scale == 0.0 || scale.abs() > MAX_RATE {
            return Err(PlayError::UnsupportedScale(scale));
        }
        if !speed.is_finite() || speed <= 0.0 || speed > MAX_RATE {
            return Err(PlayError::UnsupportedScale(speed));
        }
        let span = self.timeline.span();
        let backwards = scale < 0.0;
        let start = request.start.map(|p| self.npt_of(p));
        let end = request.end.map(|p| self.npt_of(p));
        if let Some(s) = start {
            // npt must name a time of the recording; a clock time before it (forward) or
            // after it (backwards) is clamped to the recording's edge.
            let out = match request.start {
                Some(Position::Clock(t)) if t < SystemTime::UNIX_EPOCH => {
                    !(-TIME_SLACK..=span + TIME_SLACK).contains(&s)
                }
                Some(Position::Clock(_)) if backwards => s < -TIME_SLACK,
                Some(Position::Clock(_)) => s > span + TIME_SLACK,
                _ => !(-TIME_SLACK..=span + TIME_SLACK).contains(&s),
            };
            if out {
                return Err(PlayError::InvalidRange(format!(
                    "start {s:.3} s outside the recording (0-{span:.3})"
                )));
            }
        }
        if let (Some(s), Some(e)) = (start, end) {
            if (!backwards && e <= s) || (backwards && e >= s) {
                return Err(PlayError::InvalidRange(format!(
                    "end {e:.3} does not follow start {s:.3} at Scale {scale}"
                )));
            }
        }
        let keyframes_only =
            backwards || scale > 1.0 || matches!(request.frames, FrameFilter::Intra(_));
        let resume = start.is_none()
            && !self.ahead.is_empty()
            && self.kind == Some((backwards, keyframes_only))
            && !matches!(self.mode, Mode::Ended);
        self.kind = Some((backwards, keyframes_only));
        self.onvif = request.onvif;
        self.cseq = request.cseq as u8;
        self.terminated = false;
        if !resume {
            let from = start.unwrap_or(if backwards && self.position == 0.0 {
                span
            } else {
                self.position
            });
            let from = from.clamp(0.0, span);
            self.seek(from, backwards);
            for t in &mut self.tracks {
                t.discont = true;
            }
        }
        let mut run = Run {
            anchor_wall: now,
            anchor_npt: 0.0,
            pace: scale.abs() * speed,
            paced: request.rate_control,
            backwards,
            keyframes_only,
            end,
            frames: request.frames,
            scale,
            follow: end.is_none_or(|e| e > span)
                && !backwards
                && !keyframes_only
                && scale == 1.0
                && speed == 1.0
                && request.rate_control
                && !self.timeline.bounded,
        };
        // Read the first frame now: its time is the actual start.
        self.mode = Mode::Playing(run);
        if self.ahead.is_empty() && !self.exhausted {
            match self.read_item() {
                Ok(Some(item)) => self.ahead.push_back(item),
                Ok(None) => self.exhausted = true,
                Err(e) => return Err(PlayError::Media(e)),
            }
        }
        if let Some(a) = self.ahead.front_mut() {
            // A gap right at the start is no gap to skip.
            a.gap_from = None;
        }
        let actual = self.ahead.front().map_or(self.position, |a| a.npt);
        run.anchor_npt = actual;
        self.mode = Mode::Playing(run);
        self.position = actual;
        if backwards {
            let base = if self.last_presentation > 0.0 {
                self.last_presentation + 0.040
            } else {
                actual
            };
            self.reverse_clock = (base, actual);
        }
        let presentation = self.presentation_time(actual, backwards);
        let tracks = self
            .tracks
            .iter()
            .map(|t| TrackStart {
                seq: t.out.packetizer.next_sequence(),
                rtptime: rtp_at(t, presentation),
            })
            .collect();
        Ok(PlayStart {
            start: actual,
            end,
            scale,
            tracks,
        })
    }

    /// Positions reading at `npt`: the segment holding it (or the next one forward, the
    /// previous one backwards).
    fn seek(&mut self, npt: f64, backwards: bool) {
        self.open = None;
        self.ahead.clear();
        self.exhausted = false;
        self.caught_up = false;
        self.read_through = None;
        self.last_keyframe = None;
        let t = self.timeline.wall(npt);
        let segs = &self.timeline.segments;
        let index = if backwards {
            segs.iter()
                .rposition(|s| s.start <= add_secs(t, TIME_SLACK))
        } else {
            segs.iter()
                .position(|s| s.end > t)
                .or_else(|| segs.len().checked_sub(1))
        };
        match index {
            Some(i) => {
                self.next_segment = i;
                self.seek_to = Some(npt);
            }
            None => self.exhausted = true,
        }
    }

    /// Presentation time (seconds) RTP timestamps follow for a frame at `npt`: npt itself
    /// forward; backwards a clock that keeps running forward as npt runs back.
    fn presentation_time(&self, npt: f64, backwards: bool) -> f64 {
        if backwards {
            let (base, at) = self.reverse_clock;
            base + (at - npt)
        } else {
            npt
        }
    }

    /// Opens segment `index` and maps its tracks onto the engine's.
    fn open_segment(&mut self, index: usize) -> Result<OpenSegment, MediaError> {
        let segment = self
            .timeline
            .segments
            .get(index)
            .ok_or_else(|| MediaError::Malformed("segment index out of range".into()))?;
        let demuxer = self.opener.open(segment)?;
        let mut map = Vec::new();
        for (i, info) in demuxer.info().tracks.iter().enumerate() {
            let Some(track) = self.tracks.get_mut(i) else {
                map.push(None);
                continue;
            };
            if info.params.codec != track.out.params.codec {
                map.push(None);
                continue;
            }
            if info.params != track.out.params {
                // New parameters (a new init): a packetizer for them that goes on with
                // the session's SSRC and sequence numbers.
                match Packetizer::new(
                    &info.params,
                    track.out.payload_type,
                    track.out.ssrc,
                    track.out.packetizer.next_sequence(),
                    crate::playback::MAX_PAYLOAD,
                ) {
                    Ok(p) => {
                        track.out.packetizer = p;
                        track.out.params = info.params.clone();
                    }
                    Err(_) => {
                        map.push(None);
                        continue;
                    }
                }
            }
            map.push(Some((i, info.timescale.max(1))));
        }
        Ok(OpenSegment {
            index,
            demuxer,
            map,
            keyframe: None,
        })
    }

    /// Whether a gap lies between segments `a` and `b` (b follows a in playing order).
    fn gap_between(&self, a: usize, b: usize, backwards: bool) -> Option<f64> {
        let segs = &self.timeline.segments;
        let (sa, sb) = (segs.get(a)?, segs.get(b)?);
        if backwards {
            (secs_between(sb.end, sa.start) > GAP.as_secs_f64())
                .then(|| self.timeline.npt(sa.start))
        } else {
            (secs_between(sa.end, sb.start) > GAP.as_secs_f64()).then(|| self.timeline.npt(sa.end))
        }
    }

    /// Reads the next frame in playing order; None at the end of the media or range.
    fn read_item(&mut self) -> Result<Option<Item>, MediaError> {
        let Mode::Playing(run) = self.mode else {
            return Ok(None);
        };
        if run.keyframes_only {
            self.read_keyframe(run)
        } else {
            self.read_sample(run)
        }
    }

    /// Every-frame reading, forward.
    fn read_sample(&mut self, run: Run) -> Result<Option<Item>, MediaError> {
        let mut gap_from = None;
        loop {
            if self.open.is_none() {
                let index = self.next_segment;
                if index >= self.timeline.segments.len() {
                    return Ok(None);
                }
                let mut open = match self.open_segment(index) {
                    Ok(open) => open,
                    // A segment the recorder just began may have no part yet.
                    Err(_) if run.follow && index + 1 >= self.timeline.segments.len() => {
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                if let Some(npt) = self.seek_to.take() {
                    let seg = &self.timeline.segments[index];
                    let media = seg.media_at(self.timeline.wall(npt));
                    open.demuxer.seek(Duration::from_secs_f64(media))?;
                }
                self.open = Some(open);
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            let index = open.index;
            let Some(sample) = open.demuxer.next_sample()? else {
                self.open = None;
                if run.follow && index + 1 >= self.timeline.segments.len() {
                    // The end of what is recorded: this segment is reopened when it grew.
                    self.next_segment = index;
                    return Ok(None);
                }
                self.next_segment = index + 1;
                if let Some(g) = self.gap_between(index, index + 1, false) {
                    gap_from = Some(g);
                }
                continue;
            };
            let Some(Some((track, timescale))) = open.map.get(sample.track).copied() else {
                continue;
            };
            // Samples that end before presentation time 0 (priming) are not presented.
            if sample.pts.saturating_add(i64::from(sample.duration)) <= 0 {
                continue;
            }
            if run.frames == FrameFilter::Predicted
                && self.tracks[track].video
                && !sample.keyframe
                && !is_reference(&self.tracks[track].out.params, &sample.data)
            {
                continue;
            }
            let seg = &self.timeline.segments[index];
            let dts = sample.dts as f64 / f64::from(timescale);
            let pts_offset = (sample.pts - sample.dts) as f64 / f64::from(timescale);
            let npt = self.timeline.npt(seg.wall_at(dts));
            if run.end.is_some_and(|e| npt > e) {
                return Ok(None);
            }
            if let Some((i, through)) = self.read_through {
                if i == index && npt <= through + 1e-6 {
                    continue;
                }
            }
            self.read_through = Some((index, npt));
            let wall = add_secs(seg.wall_at(dts), pts_offset);
            return Ok(Some(Item {
                track,
                sample,
                npt,
                pts_offset,
                wall,
                gap_from,
            }));
        }
    }

    /// Keyframe-only reading, forward or backward.
    fn read_keyframe(&mut self, run: Run) -> Result<Option<Item>, MediaError> {
        let mut gap_from = None;
        let min_gap = match run.frames {
            FrameFilter::Intra(Some(ms)) => f64::from(ms) / 1000.0,
            _ => 0.0,
        };
        loop {
            if self.open.is_none() {
                let index = self.next_segment;
                if index >= self.timeline.segments.len() {
                    return Ok(None);
                }
                let mut open = self.open_segment(index)?;
                let seg = &self.timeline.segments[index];
                let kfs = open.demuxer.keyframe_times();
                let from = self
                    .seek_to
                    .take()
                    .map(|npt| seg.media_at(self.timeline.wall(npt)));
                open.keyframe = if run.backwards {
                    match from {
                        Some(f) => kfs.iter().rposition(|k| k.as_secs_f64() <= f + TIME_SLACK),
                        None => kfs.len().checked_sub(1),
                    }
                } else {
                    match from {
                        Some(f) if run.scale > 1.0 => {
                            kfs.iter().position(|k| k.as_secs_f64() >= f - TIME_SLACK)
                        }
                        // Frames: intra at normal speed starts at the keyframe before.
                        Some(f) => kfs
                            .iter()
                            .rposition(|k| k.as_secs_f64() <= f + TIME_SLACK)
                            .or(if kfs.is_empty() { None } else { Some(0) }),
                        None => (!kfs.is_empty()).then_some(0),
                    }
                };
                self.open = Some(open);
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            let index = open.index;
            let t = open
                .keyframe
                .and_then(|k| open.demuxer.keyframe_times().get(k).copied());
            let Some(t) = t else {
                // This segment has no (more) keyframes: the next one in playing order.
                self.open = None;
                let next = if run.backwards {
                    index.checked_sub(1)
                } else {
                    Some(index + 1)
                };
                let Some(next) = next else {
                    return Ok(None);
                };
                if let Some(g) = self.gap_between(index, next, run.backwards) {
                    gap_from = Some(g);
                }
                self.next_segment = next;
                continue;
            };
            open.keyframe = if run.backwards {
                open.keyframe.and_then(|k| k.checked_sub(1))
            } else {
                open.keyframe.map(|k| k + 1)
            };
            let seg = &self.timeline.segments[index];
            let media = t.as_secs_f64();
            let npt = self.timeline.npt(seg.wall_at(media));
            let past = run
                .end
                .is_some_and(|e| if run.backwards { npt < e } else { npt > e });
            if past {
                return Ok(None);
            }
            if let Some(last) = self.last_keyframe {
                if (npt - last).abs() + TIME_SLACK < min_gap {
                    continue;
                }
            }
            open.demuxer.seek(t)?;
            let mut found = None;
            while let Some(s) = open.demuxer.next_sample()? {
                let mapped = open.map.get(s.track).copied().flatten();
                if let Some((track, timescale)) = mapped {
                    if self.tracks[track].video && s.keyframe {
                        found = Some((track, timescale, s));
                        break;
                    }
                }
            }
            let Some((track, timescale, sample)) = found else {
                continue;
            };
            self.last_keyframe = Some(npt);
            let dts = sample.dts as f64 / f64::from(timescale);
            let pts_offset = (sample.pts - sample.dts) as f64 / f64::from(timescale);
            let wall = add_secs(seg.wall_at(dts), pts_offset);
            return Ok(Some(Item {
                track,
                npt: self.timeline.npt(seg.wall_at(dts)),
                sample,
                pts_offset,
                wall,
                gap_from,
            }));
        }
    }

    /// The next thing to do at wall instant `now`.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let Mode::Playing(mut run) = self.mode else {
            return Poll::Idle;
        };
        if self.ahead.is_empty() {
            if self.caught_up && run.follow {
                // Try again: the recording may have grown (see `extend`).
                self.exhausted = false;
                self.caught_up = false;
            }
            if self.exhausted || self.terminated {
                return self.end(EndReason::End);
            }
            match self.read_item() {
                Ok(Some(item)) => self.ahead.push_back(item),
                Ok(None) if run.follow => {
                    self.exhausted = true;
                    self.caught_up = true;
                    return Poll::CaughtUp;
                }
                Ok(None) => {
                    self.exhausted = true;
                    return self.end(EndReason::End);
                }
                Err(e) => return self.end(EndReason::Failed(e)),
            }
        }
        let Some(item) = self.ahead.front_mut() else {
            return self.end(EndReason::End);
        };
        let due_at = |run: &Run, npt: f64| {
            let d = ((npt - run.anchor_npt).abs() / run.pace).min(1e6);
            run.anchor_wall + Duration::from_secs_f64(d)
        };
        if let Some(from) = item.gap_from.take() {
            // Skip the gap: the frame after it is due when the section before it ended.
            let resume = due_at(&run, from);
            run.anchor_wall = resume;
            run.anchor_npt = item.npt;
            self.mode = Mode::Playing(run);
            for t in &mut self.tracks {
                t.discont = true;
            }
        }
        if run.paced {
            let due = due_at(&run, item.npt);
            if due > now + LEAD {
                return Poll::WaitUntil(due - LEAD);
            }
        }
        // Read ahead to this track's next frame (or the end): it decides the E bit.
        let track = item.track;
        while !self.exhausted
            && self.ahead.len() < LOOKAHEAD
            && !self.ahead.iter().skip(1).any(|i| i.track == track)
        {
            match self.read_item() {
                Ok(Some(next)) => self.ahead.push_back(next),
                Ok(None) => {
                    self.exhausted = true;
                    self.caught_up = run.follow;
                }
                Err(e) => {
                    // Send what was read; playback ends after it.
                    tracing::warn!(error = %e, "recording read failed; replay ends");
                    self.exhausted = true;
                }
            }
        }
        let Some(item) = self.ahead.pop_front() else {
            return Poll::Idle;
        };
        let next_same = self.ahead.iter().position(|i| i.track == item.track);
        let before_gap = match next_same {
            Some(j) => self.ahead.iter().take(j + 1).any(|i| i.gap_from.is_some()),
            None => self.ahead.iter().any(|i| i.gap_from.is_some()),
        };
        // The last frame of its track in the range: T (and E) on it. Not while following
        // a recording that may still grow.
        let last = self.exhausted && !self.caught_up && next_same.is_none();
        if last && self.ahead.is_empty() {
            self.terminated = true;
        }
        self.send(item, run, last, before_gap)
    }

    /// Packetizes a due frame, with the ONVIF extension when asked for.
    fn send(&mut self, item: Item, run: Run, last: bool, before_gap: bool) -> Poll {
        self.position = item.npt;
        let presentation = self.presentation_time(item.npt, run.backwards) + item.pts_offset;
        self.last_presentation = presentation;
        let Some(track) = self.tracks.get_mut(item.track) else {
            return Poll::Skipped(format!("no track {}", item.track));
        };
        let rtp = rtp_at(track, presentation);
        let mut packets = Vec::with_capacity(4);
        // ONVIF replay after a seek: a filler NAL unit one tick before the first video
        // frame. GStreamer's rtspsrc gives the first packet after a seek over TCP no time,
        // and its jitter buffer then drops every packet of that RTP timestamp: without
        // this, the keyframe the seek landed on would be lost. Decoders ignore filler.
        if self.onvif && track.discont && track.video {
            if let Some(filler) = filler_nal(track.out.params.codec) {
                let mut primer = Vec::with_capacity(1);
                if track
                    .out
                    .packetizer
                    .packetize(&filler, rtp.wrapping_sub(1), false, &mut primer)
                    .is_ok()
                {
                    packets.extend(primer);
                }
            }
        }
        let primed = packets.len();
        if let Err(e) = track.out.packetizer.packetize(
            &item.sample.data,
            rtp,
            item.sample.keyframe,
            &mut packets,
        ) {
            return Poll::Skipped(format!("track {}: {e}", item.track));
        }
        let mut flags = 0;
        if item.sample.keyframe {
            flags |= FLAG_C;
        }
        if track.discont {
            flags |= FLAG_D;
            track.discont = false;
        }
        if before_gap || last {
            flags |= FLAG_E;
        }
        if last {
            flags |= FLAG_T;
        }
        if self.onvif {
            // Every packet of the frame carries the extension (GStreamer's rtponvifparse
            // takes each packet's time and key flag from it); D only on the first, E and T
            // only on the last (rtponvifparse ends the stream after the T packet).
            let ntp = sluice_media::archive::system_to_ntp(item.wall);
            let n = packets.len() - primed;
            for (i, p) in packets.iter_mut().skip(primed).enumerate() {
                let mut f = flags & FLAG_C;
                if i == 0 {
                    f |= flags & FLAG_D;
                }
                if i + 1 == n {
                    f |= flags & (FLAG_E | FLAG_T);
                }
                if let Some(with) = with_onvif_extension(p, ntp, f, self.cseq) {
                    *p = with;
                }
            }
        }
        Poll::Send(Burst {
            track: item.track,
            packets,
            npt: item.npt,
            wall: item.wall,
            flags,
        })
    }

    fn end(&mut self, _reason: EndReason) -> Poll {
        self.mode = Mode::Ended;
        self.ahead.clear();
        self.open = None;
        Poll::Ended(_reason)
    }
}

/// A length-prefixed filler data NAL unit of `codec` (ignored by decoders), if it has one.
fn filler_nal(codec: sluice_media::Codec) -> Option<Vec<u8>> {
    match codec {
        sluice_media::Codec::H264 => Some(vec![0, 0, 0, 2, 0x0c, 0xff]),
        sluice_media::Codec::H265 => Some(vec![0, 0, 0, 3, 38 << 1, 0x01, 0xff]),
        _ => None,
    }
}

/// The RTP timestamp of presentation time `secs` (seconds on the track's timeline).
fn rtp_at(track: &Track, secs: f64) -> u32 {
    let ticks = (secs * f64::from(track.clock_rate)).round() as i64;
    // Truncation to 32 bits is RTP's wrapping arithmetic.
    track.out.rtp_offset.wrapping_add(ticks as u32)
}

/// Whether a video sample is a reference frame (H.264: some VCL NAL unit with
/// `nal_ref_idc` ≠ 0; H.265: not a sub-layer non-reference picture). Other codecs: yes.
fn is_reference(params: &CodecParams, data: &[u8]) -> bool {
    use sluice_media::Codec;
    let nal_types = |len_size: usize| {
        let mut out = Vec::new();
        let mut rest = data;
        while rest.len() > len_size {
            let (len_bytes, tail) = rest.split_at(len_size);
            let len = len_bytes
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            let Some(nal) = tail.get(..len) else {
                break;
            };
            if let Some(&h) = nal.first() {
                out.push(h);
            }
            rest = &tail[len..];
        }
        out
    };
    match params.codec {
        Codec::H264 => {
            let heads = nal_types(4);
            let vcl: Vec<u8> = heads
                .into_iter()
                .filter(|h| matches!(h & 0x1f, 1..=5))
                .collect();
            vcl.is_empty() || vcl.iter().any(|h| h & 0x60 != 0)
        }
        Codec::H265 => {
            let heads = nal_types(4);
            let vcl: Vec<u8> = heads
                .into_iter()
                .map(|h| (h >> 1) & 0x3f)
                .filter(|t| *t < 32)
                .collect();
            // Types 0, 2, …, 14 are sub-layer non-reference pictures.
            vcl.is_empty() || vcl.iter().any(|t| *t > 14 || t % 2 == 1)
        }
        _ => true,
    }
}

/// `packet` with the ONVIF replay header extension (profile 0xABAC: NTP time, flags,
/// CSeq byte) added; None when it is not a plain RTP packet or already has an extension.
pub fn with_onvif_extension(packet: &[u8], ntp: u64, flags: u8, cseq: u8) -> Option<Bytes> {
    let first = *packet.first()?;
    if first >> 6 != 2 || first & 0x10 != 0 {
        return None;
    }
    let header = 12 + 4 * usize::from(first & 0x0f);
    let (head, payload) = (packet.get(..header)?, packet.get(header..)?);
    let mut out = BytesMut::with_capacity(packet.len() + 16);
    out.put_u8(first | 0x10);
    out.put_slice(&head[1..]);
    out.put_u16(ONVIF_EXTENSION);
    out.put_u16(3);
    out.put_u64(ntp);
    out.put_slice(&[flags, cseq, 0, 0]);
    out.put_slice(payload);
    Some(out.freeze())
}

/// The ONVIF extension of an RTP packet: (NTP time, flags, CSeq byte).
pub fn onvif_extension(packet: &[u8]) -> Option<(u64, u8, u8)> {
    let first = *packet.first()?;
    if first & 0x10 == 0 {
        return None;
    }
    let at = 12 + 4 * usize::from(first & 0x0f);
    let ext = packet.get(at..at + 16)?;
    if ext[..4] != [0xAB, 0xAC, 0, 3] {
        return None;
    }
    let ntp = u64::from_be_bytes(ext[4..12].try_into().ok()?);
    Some((ntp, ext[12], ext[13]))
}

#[cfg(test)]
pub(crate) mod tests;
