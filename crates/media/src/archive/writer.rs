//! The segment writer: timed access units in, fMP4 segment files out (see the
//! [module docs](super)).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::crc::crc32;
use super::index::{fnv1a, monotonic, whole_micros, PartRecord, SegmentRecord};
use super::parse::{parse_init, read_fragment, InitInfo, CRC_TAG, MARKER};
use super::{system_to_ntp, ArchiveConfig, ArchiveError};
use crate::mux::Mp4Writer;
use crate::params::CodecParams;

/// Most frames held in the reordering window whatever their times say (bounds memory when a
/// sender stamps everything alike).
const MAX_WINDOW_FRAMES: usize = 4096;

/// Media time (ns) that consecutive frames whose media→wall offset jumped alike must cover
/// to make a clock step: a backlog after a network stall arrives late too, but drains faster
/// than real time, so its offsets do not stay alike that long.
const STEP_SPAN: i128 = 1_000_000_000;

/// How alike (ns) the offsets of a step's frames are (arrival jitter).
const STEP_TOLERANCE: u128 = 250_000_000;

/// Largest reorder delay (ns) a track's decode times are moved back by (see
/// [`SegmentWriter::write`]); a frame decoded later than this after its presentation is
/// written with a negative composition offset instead.
const MAX_REORDER_DELAY: i128 = 1_000_000_000;

/// One access unit of a track, timed on the stream's media clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Index of the track (as given to [`SegmentWriter::new`]).
    pub track: usize,
    /// Decode time in the track's clock ([`CodecParams::clock_rate`]), unwrapped; all tracks
    /// count from one instant, so that they stay in sync.
    pub dts: i64,
    /// Presentation time, same clock (equal to `dts` without reordering).
    pub pts: i64,
    /// Whether it is a random access point (audio: always).
    pub keyframe: bool,
    /// The sample as MP4 stores it (length-prefixed NAL units, raw AAC frame, Opus packet).
    pub data: Bytes,
}

/// Why a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// It reached the segment duration (cut at the next keyframe).
    Duration,
    /// A track's codec parameters changed (new resolution, …): a new init.
    ParamsChanged {
        /// The track whose parameters changed.
        track: usize,
    },
    /// The media clock jumped against the wall clock by more than
    /// [`ArchiveConfig::clock_step`].
    ClockStep,
    /// Another publisher took over the stream.
    PublisherChanged,
    /// Recording stopped (or the server shuts down).
    Stop,
}

impl CutReason {
    /// A short stable name (for events and the index).
    pub fn as_str(self) -> &'static str {
        match self {
            CutReason::Duration => "duration",
            CutReason::ParamsChanged { .. } => "params_changed",
            CutReason::ClockStep => "clock_step",
            CutReason::PublisherChanged => "publisher_changed",
            CutReason::Stop => "stop",
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchiveOutput {
    /// Create a new segment file holding `init`, then fsync the directory (the file exists
    /// only once its directory entry is durable).
    SegmentStarted {
        /// The segment's number (counts from 1 per writer).
        segment: u64,
        /// Wall clock of its first sample.
        wall: SystemTime,
        /// The init segment (`ftyp` + `moov`).
        init: Bytes,
        /// A stable digest of `init`: segments with the same id share codec parameters.
        init_id: u64,
    },
    /// Append `bytes` (one `prft`+`moof`+`mdat` part) to the segment's file, then
    /// fdatasync it: the part is complete and durable after that.
    Part {
        /// The segment it belongs to.
        segment: u64,
        /// The part's bytes.
        bytes: Bytes,
        /// Its index entry (byte offset in the file, media and wall times, keyframe flag).
        record: PartRecord,
        /// The segment's [`SegmentRecord::media_base`] (known from its first part on, the
        /// same for every part): what an index of the open segment needs to read it.
        media_base: Duration,
    },
    /// The segment is complete: close its file (after the last part's sync).
    SegmentEnded {
        /// The segment.
        segment: u64,
        /// Why it ended.
        reason: CutReason,
        /// Its index entry (the driver fills in [`SegmentRecord::path`]).
        record: SegmentRecord,
    },
}

/// Counters of a writer's life (the driver logs drops at most once a minute).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Frames written into segments.
    pub frames: u64,
    /// Frames dropped because they arrived after frames they should precede, beyond the
    /// reordering window (their track's decode time went backwards).
    pub dropped_late: u64,
    /// Frames dropped because the MP4 writer refused them (empty, gap too large, unknown track).
    pub dropped_invalid: u64,
    /// Frames skipped while waiting for a keyframe to start a segment (at the start, or
    /// after a publisher change): nothing decodable is lost.
    pub skipped_before_keyframe: u64,
    /// Parts produced.
    pub parts: u64,
    /// Segments started.
    pub segments: u64,
    /// Bytes produced (inits and parts).
    pub bytes: u64,
}

impl ArchiveStats {
    /// Frames lost: dropped late or invalid.
    pub fn dropped(&self) -> u64 {
        self.dropped_late + self.dropped_invalid
    }
}

/// A frame in the reordering window.
#[derive(Debug)]
struct Queued {
    /// Decode time on the common clock, nanoseconds.
    time: i128,
    /// Its merge key (see [`SegmentWriter::enqueue`]), nanoseconds.
    key: i128,
    frame: Frame,
    /// New parameters for its track take effect at this frame.
    params: Option<CodecParams>,
}

/// The decode timeline of a run of segments (see [`SegmentWriter::write`]): segments cut
/// on duration continue their predecessor's, so that the files play as one.
#[derive(Debug, Clone)]
struct Timeline {
    /// Common-clock time (ns) of decode time 0 (the first frame of the run's first segment).
    zero: i128,
    /// That instant in each track's clock.
    zero_ticks: Vec<i64>,
    /// Per track, ticks decode times are moved back by (the reorder delay known when the
    /// run began), so that composition offsets are not negative.
    delay: Vec<i64>,
}

/// The segment being written.
struct Segment {
    id: u64,
    /// None only while closing.
    writer: Option<Mp4Writer<Vec<u8>>>,
    init: InitInfo,
    init_id: u64,
    /// The window key of its first frame (segment durations are measured in keys).
    origin_key: i128,
    /// Its decode timeline: decode time 0 and the delays (shared with the segments before
    /// it in a run).
    line: Timeline,
    /// Its first part's start on the decode timeline (media time 0 of the segment), once
    /// the first part is out.
    base: Option<Duration>,
    /// Last decode time written per track (ticks on the decode timeline).
    last_dts: Vec<Option<u64>>,
    /// Bytes written to the file so far.
    len: u64,
    start_wall: SystemTime,
    parts: Vec<PartRecord>,
}

/// Turns a stream's timed access units into fMP4 segments (see the [module docs](super)).
pub struct SegmentWriter {
    config: ArchiveConfig,
    params: Vec<CodecParams>,
    /// Parameters announced but not yet effective (at the track's next keyframe).
    announced: Vec<Option<CodecParams>>,
    /// Index of the lead track: the first video track, else the first.
    lead: usize,
    video: bool,
    /// The reordering window: a queue per track.
    window: Vec<VecDeque<Queued>>,
    /// Frames in the window.
    queued: usize,
    /// Per track: the last key given.
    last_key: Vec<Option<i128>>,
    /// Per track: the largest decode-after-presentation delay seen (ticks, ≥ 0), up to
    /// [`MAX_REORDER_DELAY`]: a sender whose RTP times are presentation times gives
    /// B-frames decode times after their presentation.
    delay_seen: Vec<i64>,
    /// Latest key pushed (ns).
    newest: Option<i128>,
    /// Wall minus media (ns), smoothed: maps media time to wall clock per part.
    offset: Option<i128>,
    /// Frames whose offset jumped beyond the clock step: late frames, or the start of a
    /// step (with their common-clock times and offsets).
    suspects: Vec<(Frame, i128, i128)>,
    segment: Option<Segment>,
    /// The timeline the next segment continues (set when a segment ends on duration).
    carry: Option<Timeline>,
    next_id: u64,
    /// Whether the next segment must start at a keyframe of the lead track.
    wait_keyframe: bool,
    out: VecDeque<ArchiveOutput>,
    stats: ArchiveStats,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("tracks", &self.params.len())
            .field("window", &self.queued)
            .field("segment", &self.segment.as_ref().map(|s| s.id))
            .field("stats", &self.stats)
            .finish()
    }
}

/// Nanoseconds of `ticks` at `scale` ticks per second.
fn ticks_to_ns(ticks: i64, scale: u32) -> i128 {
    i128::from(ticks) * 1_000_000_000 / i128::from(scale.max(1))
}

/// Ticks at `scale` of `ns` nanoseconds (rounded to nearest).
fn ns_to_ticks(ns: i128, scale: u32) -> i64 {
    let t = (ns * i128::from(scale) + 500_000_000).div_euclid(1_000_000_000);
    i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX })
}

fn wall_ns(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn wall_from_ns(ns: i128) -> SystemTime {
    let d = Duration::from_nanos(u64::try_from(ns.unsigned_abs()).unwrap_or(u64::MAX));
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl SegmentWriter {
    /// A writer of tracks with these codec parameters (H.264, H.265, AAC, Opus: what
    /// [`Mp4Writer`] supports). Fails on an empty or unsupported track list, checked by
    /// building an init once.
    pub fn new(
        params: Vec<CodecParams>,
        config: ArchiveConfig,
    ) -> Result<SegmentWriter, ArchiveError> {
        config.validate()?;
        Mp4Writer::new(Vec::new(), &params).map_err(ArchiveError::Mux)?;
        let lead = params.iter().position(|p| p.codec.is_video());
        let n = params.len();
        Ok(SegmentWriter {
            config,
            announced: vec![None; params.len()],
            lead: lead.unwrap_or(0),
            video: lead.is_some(),
            params,
            window: (0..n).map(|_| VecDeque::new()).collect(),
            queued: 0,
            last_key: vec![None; n],
            delay_seen: vec![0; n],
            newest: None,
            offset: None,
            suspects: Vec::new(),
            segment: None,
            carry: None,
            next_id: 1,
            wait_keyframe: true,
            out: VecDeque::new(),
            stats: ArchiveStats::default(),
        })
    }

    /// Announces `track`'s codec parameters (from the SDP or in-band parameter sets). New
    /// ones take effect at the track's next keyframe pushed, which then starts a new
    /// segment with a new init (for audio, whose frames are all keyframes: the next frame).
    /// Unchanged parameters do nothing.
    pub fn set_params(&mut self, track: usize, params: CodecParams) {
        let (Some(current), Some(slot)) = (self.params.get(track), self.announced.get_mut(track))
        else {
            return;
        };
        *slot = (*current != params).then_some(params);
    }

    /// Feeds a frame that arrived at wall clock `wall` (the caller's clock reading, or the
    /// sender's clock through RTCP). Frames wait in the reordering window
    /// ([`ArchiveConfig::reorder_window`] of media time) so that tracks interleave in time;
    /// then they are written, and whatever completes shows up in
    /// [`SegmentWriter::poll_output`].
    pub fn push(&mut self, frame: Frame, wall: SystemTime) {
        let Some(p) = self.params.get(frame.track) else {
            self.stats.dropped_invalid += 1;
            return;
        };
        let time = ticks_to_ns(frame.dts, p.clock_rate());
        let measured = wall_ns(wall) - time;
        let step = self.config.clock_step.as_nanos();
        let far = |a: i128, b: i128| (a - b).unsigned_abs() > step;
        match self.offset {
            None => self.offset = Some(measured),
            Some(o) if far(measured, o) => {
                // A late frame (a backlog after a stall), or the first of a clock step: held
                // until the next frames tell which. Only offsets that stay alike over a
                // second of media are a step.
                if self
                    .suspects
                    .first()
                    .is_some_and(|s| (measured - s.2).unsigned_abs() > STEP_TOLERANCE)
                {
                    self.release_suspects();
                }
                self.suspects.push((frame, time, measured));
                let span = match (self.suspects.first(), self.suspects.last()) {
                    (Some(a), Some(b)) => (b.1 - a.1).abs(),
                    _ => 0,
                };
                if span >= STEP_SPAN || self.suspects.len() >= MAX_WINDOW_FRAMES {
                    self.drain_window();
                    self.close(CutReason::ClockStep, None);
                    self.offset = Some(measured);
                    self.restart_keys();
                    self.release_suspects();
                }
                return;
            }
            Some(o) => self.offset = Some(o + (measured - o) / 16),
        }
        self.release_suspects();
        self.enqueue(frame, time);
    }

    /// Puts held suspects through as ordinary frames.
    fn release_suspects(&mut self) {
        for (frame, time, _) in std::mem::take(&mut self.suspects) {
            self.enqueue(frame, time);
        }
    }

    /// Puts a frame (common-clock decode time `time`, ns) in its track's queue of the
    /// reordering window and writes the frames that leave it.
    ///
    /// Each track's frames keep their order (decode order); tracks are merged by a key:
    /// the largest presentation time of the track so far. A (closed-GOP) video keyframe is
    /// presented after every frame before it in decode order, so its key is its
    /// presentation time, and the audio presented before it goes to the segment it ends.
    fn enqueue(&mut self, frame: Frame, time: i128) {
        let track = frame.track;
        let params = if frame.keyframe {
            self.announced.get_mut(track).and_then(Option::take)
        } else {
            None
        };
        let clock = self.params.get(track).map_or(1, CodecParams::clock_rate);
        let (Some(last_key), Some(queue)) =
            (self.last_key.get_mut(track), self.window.get_mut(track))
        else {
            return;
        };
        let pts = ticks_to_ns(frame.pts, clock);
        if let Some(d) = self.delay_seen.get_mut(track) {
            let late = frame.dts.saturating_sub(frame.pts);
            if late > *d && ticks_to_ns(late, clock) <= MAX_REORDER_DELAY {
                *d = late;
            }
        }
        let key = last_key.map_or(pts, |k| k.max(pts));
        *last_key = Some(key);
        queue.push_back(Queued {
            time,
            key,
            frame,
            params,
        });
        self.queued += 1;
        let newest = self.newest.map_or(key, |n| n.max(key));
        self.newest = Some(newest);
        let horizon = newest - self.config.reorder_window.as_nanos() as i128;
        // Once a segment is open (its tracks' reorder delays learnt in the window), a frame
        // also leaves as soon as every track has reached its key: no later frame of any
        // track can sort before it (each track's keys never decrease), so the window holds
        // only what may still be overtaken, and a crash loses little beyond the open part.
        let watermark = match self.segment {
            Some(_) => self
                .last_key
                .iter()
                .map(|k| k.unwrap_or(i128::MIN))
                .min()
                .unwrap_or(i128::MIN),
            None => i128::MIN,
        };
        while let Some(q) = self.pop_earliest(|key, queued| {
            key <= horizon || key <= watermark || queued > MAX_WINDOW_FRAMES
        }) {
            self.write(q);
        }
    }

    /// Takes the frame with the smallest key among the track queues' heads, if `take(key,
    /// frames queued)` agrees.
    fn pop_earliest(&mut self, take: impl Fn(i128, usize) -> bool) -> Option<Queued> {
        let (i, key) = self
            .window
            .iter()
            .enumerate()
            .filter_map(|(i, q)| Some((i, q.front()?.key)))
            .min_by_key(|&(i, key)| (key, i))?;
        if !take(key, self.queued) {
            return None;
        }
        self.queued -= 1;
        self.window.get_mut(i)?.pop_front()
    }

    /// Ends the current segment now (publisher change, stop): writes the frames in the
    /// window and the last part, and makes the next segment wait for a keyframe.
    pub fn cut(&mut self, reason: CutReason) {
        self.release_suspects();
        self.drain_window();
        self.close(reason, None);
        self.wait_keyframe = true;
        self.restart_keys();
    }

    /// Forgets the window keys (the media clock restarts: a step, another publisher).
    fn restart_keys(&mut self) {
        self.newest = None;
        self.last_key.iter_mut().for_each(|k| *k = None);
    }

    /// The stream is idle (the driver saw no frame for about a part's duration of wall
    /// time): writes the frames waiting in the window and cuts the part being built, each
    /// track's last frame lasting as long as its previous one, so that a stalled stream's
    /// last media is on disk too. Frames that come next continue the segment.
    ///
    /// A track whose decode times are moved back by a reorder delay (B-frames) gets a last
    /// frame of one tick instead: the B-frames after a reference frame come one tick after
    /// it in decode order, and a longer last frame would push their decode times after
    /// their presentation (negative composition offsets, which ffmpeg answers by shifting
    /// the whole track: A/V start 120 ms apart after one stall).
    pub fn idle(&mut self) {
        self.release_suspects();
        self.drain_window();
        let offset = self.offset.unwrap_or(0);
        let Some(s) = self.segment.as_mut() else {
            return;
        };
        let Some(writer) = s.writer.as_mut() else {
            return;
        };
        let delay = &s.line.delay;
        let reordered = |i: usize| delay.get(i).is_some_and(|d| *d > 0).then_some(1);
        if writer.cut_now_with(reordered).is_err() {
            self.stats.dropped_invalid += 1;
            return;
        }
        for (i, last) in s.last_dts.iter_mut().enumerate() {
            if let Some(l) = last {
                *l = (*l).max(writer.track_end(i).saturating_sub(1));
            }
        }
        let bytes = writer.take_output();
        if !bytes.is_empty() {
            emit_part(s, bytes, offset, &mut self.stats, &mut self.out);
        }
    }

    /// Ends recording: [`SegmentWriter::cut`] with [`CutReason::Stop`].
    pub fn finish(&mut self) {
        self.cut(CutReason::Stop);
    }

    /// The next thing to do with the output.
    pub fn poll_output(&mut self) -> Option<ArchiveOutput> {
        self.out.pop_front()
    }

    /// The counters so far.
    pub fn stats(&self) -> ArchiveStats {
        self.stats
    }

    /// The current segment's number, if one is open.
    pub fn segment(&self) -> Option<u64> {
        self.segment.as_ref().map(|s| s.id)
    }

    fn drain_window(&mut self) {
        while let Some(q) = self.pop_earliest(|_, _| true) {
            self.write(q);
        }
    }

    /// Writes a frame leaving the window: first the segment cuts it causes.
    ///
    /// A track whose decode times come after presentation times (B-frames of a sender whose
    /// RTP times are presentation times: the decode times are only made increasing) has its
    /// decode times moved back by the reorder delay seen so far (it is known for the frames
    /// in the window when a segment opens, and stays fixed for the segment and the segments
    /// that continue its decode timeline), so that the keyframe that opens a segment is
    /// presented a reorder delay after the segment's start, like the audio beside it, with
    /// non-negative composition offsets that every reader takes alike (ffmpeg shifts signed
    /// ones by their largest magnitude, other readers do not).
    fn write(&mut self, q: Queued) {
        let track = q.frame.track;
        let clock = self.params.get(track).map_or(1, CodecParams::clock_rate);
        let time = q.time - ticks_to_ns(self.delay(track), clock);
        let here = Some((track, time, q.key));
        if let Some(p) = q.params {
            if self.segment.is_some() {
                self.close(CutReason::ParamsChanged { track }, here);
            }
            if let Some(slot) = self.params.get_mut(track) {
                *slot = p;
            }
        }
        let lead_key = (track == self.lead && q.frame.keyframe) || !self.video;
        if let Some(s) = &self.segment {
            let age = q.key - s.origin_key;
            if lead_key && age >= self.config.segment_duration.as_nanos() as i128 {
                self.close(CutReason::Duration, here);
            }
        }
        // A new segment takes its timeline's delay, or on a new timeline the delay known now
        // (the cuts above closed the old one).
        let delay = self.delay(track);
        let time = q.time - ticks_to_ns(delay, clock);
        if self.segment.is_none() {
            if self.wait_keyframe && !lead_key {
                self.stats.skipped_before_keyframe += 1;
                return;
            }
            if let Err(_e) = self.open(time, q.key) {
                self.stats.dropped_invalid += 1;
                return;
            }
        }
        let Some(s) = self.segment.as_mut() else {
            return;
        };
        let (Some(origin), Some(last)) = (s.line.zero_ticks.get(track), s.last_dts.get_mut(track))
        else {
            self.stats.dropped_invalid += 1;
            return;
        };
        // Decode times must increase: a frame a little behind its predecessor (B-frames of
        // a sender whose decode times are its presentation times) is nudged after it, as
        // the recorder core does; one further behind than the window is late, dropped.
        let rel = q.frame.dts.saturating_sub(delay).saturating_sub(*origin);
        let floor = last.map_or(0, |l| l.saturating_add(1));
        let slack = ns_to_ticks(self.config.reorder_window.as_nanos() as i128, clock);
        let dts = match u64::try_from(rel) {
            Ok(d) if d >= floor => d,
            _ if i128::from(floor) - i128::from(rel) <= i128::from(slack) => floor,
            _ => {
                self.stats.dropped_late += 1;
                return;
            }
        };
        // The offset from the decode time written (moved back, or nudged forward).
        let pts = q.frame.pts.saturating_sub(*origin);
        let cto = i32::try_from(pts.saturating_sub_unsigned(dts)).unwrap_or(0);
        let Some(writer) = s.writer.as_mut() else {
            return;
        };
        match writer.write_sample(track, dts, cto, q.frame.keyframe, &q.frame.data) {
            Ok(()) => {
                *last = Some(dts);
                self.stats.frames += 1;
            }
            Err(_) => {
                self.stats.dropped_invalid += 1;
                return;
            }
        }
        let bytes = writer.take_output();
        if !bytes.is_empty() {
            let offset = self.offset.unwrap_or(0);
            emit_part(s, bytes, offset, &mut self.stats, &mut self.out);
        }
    }

    /// The ticks `track`'s decode times are moved back by: the open segment's, else that of
    /// the timeline the next segment continues, else the delay seen so far (a segment
    /// opening on a new timeline takes it).
    fn delay(&self, track: usize) -> i64 {
        let delays = match (&self.segment, &self.carry) {
            (Some(s), _) => &s.line.delay,
            (None, Some(c)) => &c.delay,
            (None, None) => &self.delay_seen,
        };
        delays.get(track).copied().unwrap_or(0)
    }

    /// Starts a segment at common-clock `origin` (ns), a frame of window key `origin_key`:
    /// on the timeline the last segment handed on (it ended on duration), else on a new one
    /// whose decode time 0 is `origin`.
    fn open(&mut self, origin: i128, origin_key: i128) -> Result<(), ArchiveError> {
        let mut writer = Mp4Writer::new(Vec::new(), &self.params)
            .map_err(ArchiveError::Mux)?
            .with_part_duration(self.config.part_duration);
        let mut init = writer.take_output();
        init.extend_from_slice(&(8 + MARKER.len() as u32).to_be_bytes());
        init.extend_from_slice(b"free");
        init.extend_from_slice(MARKER);
        let info = parse_init(&init).map_err(ArchiveError::OwnOutput)?;
        let init_id = fnv1a(&init);
        let start_wall = wall_from_ns(origin + self.offset.unwrap_or(0));
        let id = self.next_id;
        self.next_id += 1;
        self.stats.segments += 1;
        self.stats.bytes += init.len() as u64;
        self.wait_keyframe = false;
        let line = self.carry.take().unwrap_or_else(|| Timeline {
            zero: origin,
            zero_ticks: self
                .params
                .iter()
                .map(|p| ns_to_ticks(origin, p.clock_rate()))
                .collect(),
            delay: self.delay_seen.clone(),
        });
        self.segment = Some(Segment {
            id,
            writer: Some(writer),
            init: info,
            init_id,
            origin_key,
            line,
            base: None,
            last_dts: vec![None; self.params.len()],
            len: init.len() as u64,
            start_wall,
            parts: Vec::new(),
        });
        self.out.push_back(ArchiveOutput::SegmentStarted {
            segment: id,
            wall: start_wall,
            init: Bytes::from(init),
            init_id,
        });
        Ok(())
    }

    /// Ends the open segment, if any; `at` (track, decode time and key of the frame that
    /// starts the next segment, ns) is where the next segment starts, so that the last
    /// samples last until then: that frame's track until its decode time, the others
    /// until its key. A segment ending on duration hands its timeline on to the next; any
    /// other end starts the next on a new one.
    fn close(&mut self, reason: CutReason, at: Option<(usize, i128, i128)>) {
        self.carry = None;
        let Some(mut s) = self.segment.take() else {
            return;
        };
        let ends: Vec<Option<u64>> = self
            .params
            .iter()
            .zip(&s.line.zero_ticks)
            .enumerate()
            .map(|(i, (p, o))| {
                let (track, dts, key) = at?;
                let end = if i == track { dts } else { key };
                let e = ns_to_ticks(end, p.clock_rate()).checked_sub(*o)?;
                u64::try_from(e).ok()
            })
            .collect();
        if let Some(writer) = s.writer.take() {
            match writer.close(&ends) {
                Ok(tail) if !tail.is_empty() => {
                    let offset = self.offset.unwrap_or(0);
                    emit_part(&mut s, tail, offset, &mut self.stats, &mut self.out);
                }
                Ok(_) => {}
                Err(_) => self.stats.dropped_invalid += 1,
            }
        }
        let media_end = s.parts.last().map_or(Duration::ZERO, |p| p.media_end);
        let end_wall = s.parts.last().map_or(s.start_wall, |p| {
            p.wall_start + p.media_end.saturating_sub(p.media_start)
        });
        // Continued on duration, unless the reorder delay grew meanwhile (B-frames that came
        // later): the next segment then takes the new delay on a timeline of its own.
        if reason == CutReason::Duration && s.line.delay == self.delay_seen {
            self.carry = Some(s.line.clone());
        }
        let record = SegmentRecord {
            path: String::new(),
            init_id: s.init_id,
            start_wall: s.parts.first().map_or(s.start_wall, |p| p.wall_start),
            end_wall,
            media_end,
            media_base: whole_micros(s.base.unwrap_or_default()),
            bytes: s.len,
            recovered: false,
            parts: s.parts,
        };
        self.out.push_back(ArchiveOutput::SegmentEnded {
            segment: s.id,
            reason,
            record,
        });
    }
}

/// Wraps a fragment the MP4 writer cut into a part of `s`: a `prft` with the wall clock of
/// its first sample (media time plus the media→wall `offset`, ns) in front.
fn emit_part(
    s: &mut Segment,
    fragment: Vec<u8>,
    offset: i128,
    stats: &mut ArchiveStats,
    out: &mut VecDeque<ArchiveOutput>,
) {
    let Ok(info) = read_fragment(&fragment, &s.init) else {
        // The MP4 writer's output always parses; count rather than write garbage.
        stats.dropped_invalid += 1;
        return;
    };
    // Media time from the segment's start: from its first part's start on the decode
    // timeline, as a reader of the file alone finds it.
    let base = *s.base.get_or_insert_with(|| info.span(&s.init).0);
    let (start, end) = monotonic(s.parts.last(), info.span_from(&s.init, base));
    // Whole microseconds, the index's precision, so that a reindex finds the same times.
    let ns = s.line.zero + base.as_nanos() as i128 + start.as_nanos() as i128 + offset;
    let wall_start = wall_from_ns((ns + 500).div_euclid(1000) * 1000);
    let lead = s.init.tracks.get(s.init.lead);
    let media_time = info
        .tracks
        .iter()
        .find(|t| t.track == s.init.lead)
        .map_or(0, |t| t.base_dts);
    let mut bytes = Vec::with_capacity(48 + fragment.len());
    bytes.extend_from_slice(&32u32.to_be_bytes());
    bytes.extend_from_slice(b"prft");
    // Version 1 (64-bit media time); flags 24: the time comes consistently from the
    // media→wall mapping, not from when the box was written.
    bytes.extend_from_slice(&0x0100_0018u32.to_be_bytes());
    bytes.extend_from_slice(&lead.map_or(1, |t| t.id).to_be_bytes());
    bytes.extend_from_slice(&system_to_ntp(wall_start).to_be_bytes());
    bytes.extend_from_slice(&media_time.to_be_bytes());
    bytes.extend_from_slice(&fragment);
    let sum = crc32(&bytes);
    bytes.extend_from_slice(&16u32.to_be_bytes());
    bytes.extend_from_slice(b"skip");
    bytes.extend_from_slice(CRC_TAG);
    bytes.extend_from_slice(&sum.to_be_bytes());
    let record = PartRecord {
        offset: s.len,
        len: bytes.len() as u64,
        media_start: start,
        media_end: end,
        wall_start,
        keyframe: info.starts_with_keyframe(&s.init),
    };
    s.len += bytes.len() as u64;
    s.parts.push(record.clone());
    stats.parts += 1;
    stats.bytes += bytes.len() as u64;
    out.push_back(ArchiveOutput::Part {
        segment: s.id,
        bytes: Bytes::from(bytes),
        record,
        media_base: whole_micros(base),
    });
}
