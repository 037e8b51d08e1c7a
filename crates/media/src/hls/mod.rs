//! The sans-IO Low-Latency HLS packager (RFC 8216bis): a live stream's RTP packets in, an
//! fMP4 init segment, parts, segments and media playlists out.
//!
//! Each carried track is depacketized once (`sluice_codec::depacketizer`); audio and video
//! go into one rendition (one fMP4 with both tracks). Parts are a whole number of the lead
//! track's frames (video, else audio), about [`HlsConfig::part_target`] long and constant
//! for the packager's life; a segment is cut at the first keyframe after
//! [`HlsConfig::segment_duration`] and is the concatenation of its parts' bytes (shared
//! [`Bytes`]); [`HlsConfig::segment_count`] complete segments are kept.
//!
//! Timing: RTP timestamps are presentation times. Each track is anchored at the arrival of
//! its first access unit relative to the packager's origin (the first video keyframe's
//! arrival), which keeps audio and video in step within the arrival jitter. H.264 and
//! H.265 with B-frames are given decode times by holding as many frames as the stream may
//! reorder (the SPS's reorder depth, [`sluice_codec::picorder::h264_reorder_depth`] and
//! [`sluice_codec::picorder::h265_reorder_depth`]; 2 when it does not say) and taking the
//! sorted presentation times, shifted back by that many frames: decode times increase and
//! never pass their presentation time. PROGRAM-DATE-TIME comes from the ingest clock: the
//! origin's wall-clock time plus the media time.
//!
//! No clock is read: packets come with their arrival [`Instant`], and the wall-clock time of
//! one instant is given at creation. Requests are answered from [`HlsMuxer::playlist`],
//! [`HlsMuxer::part`], [`HlsMuxer::segment`] and [`HlsMuxer::init`]; whether a blocking
//! playlist reload (`_HLS_msn`, `_HLS_part`) can be answered is
//! [`HlsMuxer::blocking`]'s decision. [`HlsMuxer::multivariant`] names the rendition's
//! RFC 6381 codecs ([`rfc6381`]) and resolution for players that check them first.

mod codecs;
mod playlist;
#[cfg(test)]
mod tests;
mod ts;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use sluice_codec::depacketizer::{AccessUnit, Depacketizer};
use sluice_codec::picorder::{h264_reorder_depth, h265_reorder_depth};
use sluice_codec::{Codec, CodecParams};

pub use codecs::rfc6381;

use crate::mux::{Mp4Writer, MuxError};
use crate::recorder::TrackSpec;

/// Most frames a video track is held for reordering (the largest B-frame depth honoured).
pub const MAX_REORDER: u32 = 4;
/// Samples of a non-lead track buffered for the next part; more (the lead track stalled)
/// are dropped until the next part is cut, so memory stays bounded.
const MAX_SIDE_SAMPLES: usize = 2048;
/// A segment without a keyframe is cut anyway once it is this many segment durations long
/// (and at least [`MIN_FORCED_SEGMENT`]), bounding a segment's parts.
const FORCED_SEGMENT_FACTOR: u32 = 4;
/// Media time (seconds) of the origin: decode times of frames held for reordering start
/// before it, and must not be negative.
const START_SECS: i64 = 1;
/// See [`FORCED_SEGMENT_FACTOR`].
const MIN_FORCED_SEGMENT: Duration = Duration::from_secs(10);

/// The packager's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HlsConfig {
    /// About how long a part is (rounded to whole frames of the lead track).
    pub part_target: Duration,
    /// A segment is cut at the first keyframe at least this long after its start.
    pub segment_duration: Duration,
    /// Complete segments kept in the playlist (and memory).
    pub segment_count: usize,
    /// Also make MPEG-TS segments (H.264 and AAC only) for a classic HLS playlist
    /// ([`HlsMuxer::playlist_ts`]).
    pub mpegts: bool,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            part_target: Duration::from_millis(200),
            segment_duration: Duration::from_secs(1),
            segment_count: 7,
            mpegts: false,
        }
    }
}

/// Why a stream cannot be packaged.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    /// No track (or not the video track) of the stream can be carried in fMP4 HLS.
    #[error(
        "cannot be carried in HLS: {codecs} (HLS carries H.264, H.265, AV1, VP9, AAC and Opus)"
    )]
    NotCarried {
        /// The encodings that cannot be carried, comma-separated.
        codecs: String,
    },
    /// The fMP4 writer refused the tracks.
    #[error("writing fMP4: {0}")]
    Mux(#[from] MuxError),
}

/// Whether a blocking playlist request (`_HLS_msn`, `_HLS_part`) can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    /// The awaited segment or part is in the playlist: answer now.
    Ready,
    /// It will come: wait for the next part and ask again.
    Wait,
    /// It is further ahead than a client may ask (RFC 8216bis §6.2.5.2): answer 400.
    TooFar,
}

/// What a part or segment request finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The bytes.
    Ready(Bytes),
    /// Not there yet but next (a preload hint, the segment in progress): wait for the next
    /// part and ask again.
    Soon,
    /// Gone from memory, or never to be.
    Missing,
}

/// One part: a `moof`+`mdat` of whole lead frames.
#[derive(Debug, Clone)]
struct Part {
    /// Global part number (its URI is `part<n>.m4s`).
    number: u64,
    bytes: Bytes,
    /// Seconds.
    duration: f64,
    independent: bool,
}

/// A media segment, complete or in progress.
#[derive(Debug, Clone)]
struct Segment {
    msn: u64,
    /// Lead-track decode time of its start (timescale units).
    start: i64,
    /// Seconds (complete segments).
    duration: f64,
    /// Wall-clock time of its start.
    date: SystemTime,
    /// Its parts (dropped once the playlist no longer lists them).
    parts: Vec<Part>,
    /// The concatenated parts (complete segments).
    bytes: Bytes,
    /// The same media as MPEG-TS (complete segments, when made).
    ts: Bytes,
}

/// Gives frames decode times from presentation times (see the module docs).
#[derive(Debug)]
struct Reorder {
    depth: u32,
    /// Frames in decode order, with their presentation times.
    held: VecDeque<(i64, AccessUnit)>,
    /// Presentation times not yet handed out as decode times.
    times: BinaryHeap<Reverse<i64>>,
    /// Frame duration, learnt at the first release.
    frame: Option<i64>,
}

impl Reorder {
    fn new(depth: u32) -> Reorder {
        Reorder {
            depth,
            held: VecDeque::new(),
            times: BinaryHeap::new(),
            frame: None,
        }
    }

    /// Takes a frame; returns the frame it releases, if any, as (dts, pts, unit).
    fn push(&mut self, pts: i64, au: AccessUnit) -> Option<(i64, i64, AccessUnit)> {
        self.held.push_back((pts, au));
        self.times.push(Reverse(pts));
        if self.held.len() <= self.depth as usize {
            return None;
        }
        let frame = *self.frame.get_or_insert_with(|| {
            let min = self.times.iter().map(|r| r.0).min().unwrap_or(0);
            let max = self.times.iter().map(|r| r.0).max().unwrap_or(0);
            (max - min) / i64::from(self.depth.max(1))
        });
        let (pts, au) = self.held.pop_front()?;
        let Reverse(sorted) = self.times.pop()?;
        Some((sorted - i64::from(self.depth) * frame, pts, au))
    }
}

/// One carried track.
#[derive(Debug)]
struct Input {
    dep: Depacketizer,
    /// Track index in the fMP4.
    out: usize,
    codec: Codec,
    video: bool,
    clock: u32,
    /// Unwrapping: the last timestamp and its unwrapped ticks.
    last_ts: Option<(u32, i64)>,
    /// The first access unit's unwrapped ticks and its time since the origin in ticks.
    anchor: Option<(i64, i64)>,
    reorder: Option<Reorder>,
    /// The last decode time written.
    last_dts: Option<i64>,
}

impl Input {
    fn ticks(&mut self, ts: u32) -> i64 {
        let (last_ts, last) = self.last_ts.unwrap_or((ts, 0));
        let t = last + i64::from(ts.wrapping_sub(last_ts) as i32);
        self.last_ts = Some((ts, t));
        t
    }
}

/// The live packager of one stream (see the [module docs](self)).
pub struct HlsMuxer {
    config: HlsConfig,
    /// Per stream track: the carried input, if carried.
    inputs: Vec<Option<Input>>,
    /// Encodings left out (not carried), for the API.
    left_out: Vec<String>,
    /// Stream track index of the lead (first carried video, else first carried audio).
    lead: usize,
    /// The wall-clock time of `reference` (the instant).
    reference: (Instant, SystemTime),
    /// Set once started.
    writer: Option<Mp4Writer<Vec<u8>>>,
    origin: Option<Instant>,
    /// The wall-clock time of the origin.
    origin_wall: SystemTime,
    init: Option<Bytes>,
    /// Lead frames per part, decided at the lead track's second frame.
    frames_per_part: Option<u32>,
    /// Lead frame duration (lead timescale units).
    lead_frame: Option<i64>,
    /// Lead frames in the part being built (the writer's held one included).
    part_frames: u32,
    /// Lead decode time of the part being built's start.
    part_start: i64,
    /// Whether the part being built starts at a keyframe.
    part_independent: bool,
    /// Samples of other tracks since the last cut.
    side_samples: usize,
    next_part: u64,
    /// The first segment's number.
    first_msn: u64,
    segments: VecDeque<Segment>,
    /// The segment in progress.
    current: Option<Segment>,
    /// Largest segment duration seen (seconds).
    longest: f64,
    /// Bytes of parts and segments held.
    held_bytes: usize,
    /// Access units dropped as undecodable or out of bounds.
    dropped: u64,
    /// The MPEG-TS segment being built, when made.
    ts: Option<ts::TsWriter>,
    /// RFC 6381 strings of the carried tracks, lead first (set at the start).
    codec_strings: Vec<String>,
    /// The video's picture size, when known at the start.
    resolution: Option<(u32, u32)>,
}

impl std::fmt::Debug for HlsMuxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsMuxer")
            .field("started", &self.writer.is_some())
            .field("next_part", &self.next_part)
            .field("segments", &self.segments.len())
            .finish()
    }
}

/// The wall-clock time of lead decode time `dts` (timescale `clock`), given the origin's.
/// Never before the Unix epoch (a playlist cannot name such a date).
fn date_at(origin: SystemTime, dts: i64, clock: f64) -> SystemTime {
    let since = dts as f64 / clock - START_SECS as f64;
    if since >= 0.0 {
        origin.checked_add(Duration::from_secs_f64(since))
    } else {
        origin.checked_sub(Duration::from_secs_f64(-since))
    }
    .unwrap_or(origin)
    .max(SystemTime::UNIX_EPOCH)
}

/// Whether a codec is carried in fMP4 HLS.
pub fn carried(codec: Codec) -> bool {
    matches!(
        codec,
        Codec::H264 | Codec::H265 | Codec::Av1 | Codec::Vp9 | Codec::Aac | Codec::Opus
    )
}

impl HlsMuxer {
    /// A packager of a stream with these tracks (in stream order); `reference` is an instant
    /// and its wall-clock time (for PROGRAM-DATE-TIME). The first carried video track and the
    /// first carried audio track go into the rendition; further tracks and tracks of codecs
    /// HLS cannot carry are left out ([`HlsMuxer::left_out`]). Fails with
    /// [`HlsError::NotCarried`] when the stream has video but none that can be carried (a
    /// player would get sound without picture), or nothing can be carried at all.
    pub fn new(
        tracks: &[TrackSpec],
        config: HlsConfig,
        reference: (Instant, SystemTime),
    ) -> Result<HlsMuxer, HlsError> {
        let mut inputs: Vec<Option<Input>> = Vec::with_capacity(tracks.len());
        let mut left_out = Vec::new();
        let (mut video, mut audio) = (None, None);
        for (i, t) in tracks.iter().enumerate() {
            let dep = Depacketizer::new(&t.encoding, t.clock_rate, t.channels, t.fmtp.as_deref());
            let slot = if t.video { &mut video } else { &mut audio };
            match dep {
                Ok(dep) if carried(dep.codec()) && slot.is_none() => {
                    *slot = Some(i);
                    inputs.push(Some(Input {
                        codec: dep.codec(),
                        clock: dep.clock_rate(),
                        dep,
                        out: 0,
                        video: t.video,
                        last_ts: None,
                        anchor: None,
                        reorder: None,
                        last_dts: None,
                    }));
                }
                _ => {
                    left_out.push(if t.encoding.is_empty() {
                        format!("payload of track {i}")
                    } else {
                        t.encoding.clone()
                    });
                    inputs.push(None);
                }
            }
        }
        let has_video = tracks.iter().any(|t| t.video);
        let Some(lead) = video.or(if has_video { None } else { audio }) else {
            return Err(HlsError::NotCarried {
                codecs: if left_out.is_empty() {
                    "no media".to_owned()
                } else {
                    left_out.join(", ")
                },
            });
        };
        // Video first in the file.
        let mut n = 0;
        for i in [video, audio].into_iter().flatten() {
            if let Some(Some(input)) = inputs.get_mut(i) {
                input.out = n;
                n += 1;
            }
        }
        // Numbers start from the wall clock (segments and parts are at least 20 ms and 1 ms
        // long), so a restarted packager never reuses a URI a player or cache has seen.
        let wall_ms = reference
            .1
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        Ok(HlsMuxer {
            first_msn: wall_ms / 20,
            next_part: wall_ms,
            config,
            inputs,
            left_out,
            lead,
            reference,
            writer: None,
            origin: None,
            origin_wall: reference.1,
            init: None,
            frames_per_part: None,
            lead_frame: None,
            part_frames: 0,
            part_start: 0,
            part_independent: false,
            side_samples: 0,
            segments: VecDeque::new(),
            current: None,
            longest: 0.0,
            held_bytes: 0,
            dropped: 0,
            ts: None,
            codec_strings: Vec::new(),
            resolution: None,
        })
    }

    /// The stream's encodings that are not in the rendition.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The codecs carried, lead first.
    pub fn codecs(&self) -> Vec<Codec> {
        let mut v: Vec<(usize, Codec)> = self
            .inputs
            .iter()
            .flatten()
            .map(|i| (i.out, i.codec))
            .collect();
        v.sort_unstable_by_key(|p| p.0);
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// Feeds one RTP packet of stream track `track` that arrived at `at`. Returns how many
    /// parts it completed (waiters of blocking requests are woken on each). Packets of
    /// tracks not carried are ignored; malformed ones are counted and skipped.
    pub fn push_rtp(&mut self, track: usize, packet: &[u8], at: Instant) -> Result<u32, HlsError> {
        let Some(Some(input)) = self.inputs.get_mut(track) else {
            return Ok(0);
        };
        let aus = match input.dep.push(packet) {
            Ok(aus) => aus,
            Err(_) => {
                self.dropped += 1;
                return Ok(0);
            }
        };
        let before = self.next_part;
        for au in aus {
            self.access_unit(track, au, at)?;
        }
        Ok(u32::try_from(self.next_part - before).unwrap_or(u32::MAX))
    }

    /// Starts the file at the first keyframe of the lead track once every carried track's
    /// parameters are known.
    fn try_start(&mut self, track: usize, au: &AccessUnit, at: Instant) -> Result<bool, HlsError> {
        if self.writer.is_some() {
            return Ok(true);
        }
        if track != self.lead || !au.keyframe {
            return Ok(false);
        }
        let mut params: Vec<(usize, CodecParams)> = Vec::new();
        for input in self.inputs.iter().flatten() {
            match input.dep.params() {
                Some(p) => params.push((input.out, p)),
                None => return Ok(false),
            }
        }
        params.sort_by_key(|p| p.0);
        let params: Vec<CodecParams> = params.into_iter().map(|p| p.1).collect();
        if self.config.mpegts && self.ts_possible() {
            let avcc = params
                .iter()
                .find(|p| p.codec == Codec::H264)
                .map(|p| &p.config[..]);
            let asc = params
                .iter()
                .find(|p| p.codec == Codec::Aac)
                .map(|p| (&p.config[..], p.clock_rate()));
            self.ts = ts::TsTracks::from_configs(avcc, asc).map(ts::TsWriter::new);
        }
        let mut writer = Mp4Writer::new(Vec::new(), &params)?;
        writer.set_manual_fragments();
        self.codec_strings = params.iter().filter_map(rfc6381).collect();
        self.resolution = params
            .iter()
            .find(|p| p.codec.is_video())
            .and_then(|p| Some((p.width?, p.height?)));
        self.init = Some(Bytes::from(writer.take_output()));
        self.writer = Some(writer);
        self.origin = Some(at);
        self.origin_wall = self.wall(at);
        for input in self.inputs.iter_mut().flatten() {
            if input.video {
                let config = input.dep.params().map(|p| p.config).unwrap_or_default();
                let depth = match input.codec {
                    Codec::H264 => h264_reorder_depth(&config),
                    Codec::H265 => h265_reorder_depth(&config),
                    // Decode order is presentation order (hidden frames travel inside the
                    // superframe / temporal unit).
                    Codec::Av1 | Codec::Vp9 => Some(0),
                    _ => None,
                }
                .unwrap_or(2);
                input.reorder = Some(Reorder::new(depth.min(MAX_REORDER)));
            }
        }
        let date = self.wall(at);
        self.current = Some(Segment {
            msn: self.first_msn,
            start: 0,
            duration: 0.0,
            date,
            parts: Vec::new(),
            bytes: Bytes::new(),
            ts: Bytes::new(),
        });
        Ok(true)
    }

    /// The wall-clock time of `at`.
    fn wall(&self, at: Instant) -> SystemTime {
        let (i, w) = self.reference;
        if at >= i {
            w.checked_add(at - i).unwrap_or(w)
        } else {
            w.checked_sub(i - at).unwrap_or(w)
        }
    }

    fn access_unit(&mut self, track: usize, au: AccessUnit, at: Instant) -> Result<(), HlsError> {
        if !self.try_start(track, &au, at)? {
            return Ok(());
        }
        let origin = self.origin.unwrap_or(at);
        let Some(Some(input)) = self.inputs.get_mut(track) else {
            return Ok(());
        };
        let ticks = input.ticks(au.rtp_timestamp);
        let clock = i64::from(input.clock);
        let (first, offset) = *input.anchor.get_or_insert_with(|| {
            let since = at.saturating_duration_since(origin).as_secs_f64();
            (
                ticks,
                ((since + START_SECS as f64) * clock as f64).round() as i64,
            )
        });
        let pts = offset + ticks - first;
        let sample = match &mut input.reorder {
            Some(r) => r.push(pts, au),
            None => Some((pts, pts, au)),
        };
        if let Some((dts, pts, au)) = sample {
            self.write(track, dts, pts, au)?;
        }
        Ok(())
    }

    /// Writes one sample with its decode and presentation times (track timescale), cutting
    /// parts and segments before lead samples that start them.
    fn write(&mut self, track: usize, dts: i64, pts: i64, au: AccessUnit) -> Result<(), HlsError> {
        let lead = track == self.lead;
        let Some(Some(input)) = self.inputs.get_mut(track) else {
            return Ok(());
        };
        if dts < 0 {
            return Ok(()); // before the origin
        }
        let dts = match input.last_dts {
            Some(last) if dts <= last => last + 1,
            _ => dts,
        };
        input.last_dts = Some(dts);
        let out = input.out;
        let clock = f64::from(input.clock);
        let video = input.video;
        if !lead {
            if self.side_samples >= MAX_SIDE_SAMPLES {
                self.dropped += 1;
                return Ok(());
            }
            self.side_samples += 1;
        }
        let offset = i32::try_from((pts - dts).max(0)).unwrap_or(0);
        let keyframe = au.keyframe;
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer.write_sample(out, dts as u64, offset, keyframe, &au.data)?;
        if !lead {
            if let Some(ts) = self.ts.as_mut() {
                ts.audio(dts as u64, &au.data);
            }
            return Ok(());
        }
        if self.lead_frame.is_none() && self.part_frames >= 1 && dts > self.part_start {
            let frame = dts - self.part_start;
            self.lead_frame = Some(frame);
            let target = self.config.part_target.as_secs_f64() * clock;
            self.frames_per_part = Some(((target / frame as f64).round() as u32).max(1));
        }
        let ts_sample = (dts as u64, dts as u64 + offset as u64, keyframe, video);
        if self.part_frames == 0 {
            self.ts_lead(ts_sample, &au.data);
            // The very first lead sample.
            if let Some(c) = self.current.as_mut() {
                c.start = dts;
                c.date = date_at(self.origin_wall, dts, clock);
            }
            self.part_start = dts;
            self.part_independent = keyframe;
            self.part_frames = 1;
            return Ok(());
        }
        let seg_start = self.current.as_ref().map_or(0, |s| s.start);
        let seg_len = Duration::from_secs_f64(((dts - seg_start) as f64 / clock).max(0.0));
        let new_segment = (keyframe && seg_len >= self.config.segment_duration)
            || seg_len
                >= (self.config.segment_duration * FORCED_SEGMENT_FACTOR).max(MIN_FORCED_SEGMENT);
        let full = self.frames_per_part.is_some_and(|n| self.part_frames >= n)
            || (dts - self.part_start) as f64
                >= 1.5 * self.config.part_target.as_secs_f64() * clock;
        // A video keyframe starts a part, so that parts starting at one are independent.
        if new_segment || full || (keyframe && video) {
            self.cut(dts, clock)?;
            if new_segment {
                self.close_segment(dts, clock);
            }
            self.part_start = dts;
            self.part_independent = keyframe;
            self.part_frames = 1;
        } else {
            self.part_frames += 1;
        }
        self.ts_lead(ts_sample, &au.data);
        Ok(())
    }

    /// Appends a lead sample to the MPEG-TS segment, if one is made.
    fn ts_lead(&mut self, (dts, pts, keyframe, video): (u64, u64, bool, bool), data: &[u8]) {
        if let Some(ts) = self.ts.as_mut() {
            if video {
                ts.video(dts, pts, keyframe, data);
            } else {
                ts.audio(dts, data);
            }
        }
    }

    /// Whether the carried codecs fit MPEG-TS here: H.264 and AAC only.
    pub fn ts_possible(&self) -> bool {
        self.inputs
            .iter()
            .flatten()
            .all(|i| matches!(i.codec, Codec::H264 | Codec::Aac))
    }

    /// Whether MPEG-TS segments are made (configured, and the codecs fit).
    pub fn has_ts(&self) -> bool {
        self.config.mpegts && self.ts_possible()
    }

    /// The classic HLS playlist of the MPEG-TS segments (no parts). None before the first
    /// complete segment.
    pub fn playlist_ts(&self) -> Option<String> {
        if !self.has_ts() || self.segments.is_empty() {
            return None;
        }
        Some(playlist::render_ts(self))
    }

    /// MPEG-TS segment `msn` (`seg<msn>.ts`); the one in progress is [`Lookup::Soon`].
    pub fn segment_ts(&self, msn: u64) -> Lookup {
        if let Some(s) = self
            .segments
            .iter()
            .find(|s| s.msn == msn && !s.ts.is_empty())
        {
            return Lookup::Ready(s.ts.clone());
        }
        match &self.current {
            Some(c) if c.msn == msn => Lookup::Soon,
            None if msn == self.first_msn => Lookup::Soon,
            _ => Lookup::Missing,
        }
    }

    /// Cuts the part being built, which ends at lead decode time `end`.
    fn cut(&mut self, end: i64, clock: f64) -> Result<(), HlsError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        writer.cut()?;
        let bytes = Bytes::from(writer.take_output());
        self.side_samples = 0;
        if bytes.is_empty() {
            return Ok(());
        }
        self.held_bytes += bytes.len();
        let part = Part {
            number: self.next_part,
            bytes,
            duration: (end - self.part_start) as f64 / clock,
            independent: self.part_independent,
        };
        self.next_part += 1;
        if let Some(seg) = self.current.as_mut() {
            seg.parts.push(part);
        }
        Ok(())
    }

    /// Completes the segment in progress at lead decode time `end` and starts the next.
    fn close_segment(&mut self, end: i64, clock: f64) {
        let Some(mut seg) = self.current.take() else {
            return;
        };
        seg.duration = (end - seg.start) as f64 / clock;
        self.longest = self.longest.max(seg.duration);
        let mut all = BytesMut::with_capacity(seg.parts.iter().map(|p| p.bytes.len()).sum());
        for p in &seg.parts {
            all.extend_from_slice(&p.bytes);
        }
        seg.bytes = all.freeze();
        if let Some(ts) = self.ts.as_mut() {
            seg.ts = ts.take();
        }
        self.held_bytes += seg.bytes.len() + seg.ts.len();
        let msn = seg.msn + 1;
        let date = date_at(self.origin_wall, end, clock);
        self.segments.push_back(seg);
        while self.segments.len() > self.config.segment_count {
            if let Some(old) = self.segments.pop_front() {
                let parts: usize = old.parts.iter().map(|p| p.bytes.len()).sum();
                self.held_bytes = self
                    .held_bytes
                    .saturating_sub(old.bytes.len() + old.ts.len() + parts);
            }
        }
        self.current = Some(Segment {
            msn,
            start: end,
            duration: 0.0,
            date,
            parts: Vec::new(),
            bytes: Bytes::new(),
            ts: Bytes::new(),
        });
        // Parts older than the playlist lists are dropped.
        let keep_from = self.parts_listed_from();
        for s in self.segments.iter_mut() {
            if s.msn < keep_from && !s.parts.is_empty() {
                let parts: usize = s.parts.iter().map(|p| p.bytes.len()).sum();
                self.held_bytes = self.held_bytes.saturating_sub(parts);
                s.parts = Vec::new();
            }
        }
    }

    /// The first segment whose parts the playlist lists: those within three target
    /// durations of the playlist's end.
    fn parts_listed_from(&self) -> u64 {
        let limit = 3.0 * f64::from(self.target_duration());
        let mut acc = self
            .current
            .as_ref()
            .map_or(0.0, |c| c.parts.iter().map(|p| p.duration).sum());
        let mut from = self.current.as_ref().map_or(0, |c| c.msn);
        for s in self.segments.iter().rev() {
            if acc >= limit {
                break;
            }
            acc += s.duration;
            from = s.msn;
        }
        from
    }

    /// The playlist's EXT-X-TARGETDURATION: the longest segment rounded up, at least the
    /// configured segment duration.
    pub fn target_duration(&self) -> u32 {
        let configured = self.config.segment_duration.as_secs_f64().ceil();
        (self.longest.round().max(configured).max(1.0)) as u32
    }

    /// The part target (seconds): whole lead frames; the configured target until the frame
    /// rate is known.
    pub fn part_target(&self) -> f64 {
        match (self.frames_per_part, self.lead_frame, self.lead_clock()) {
            (Some(n), Some(f), Some(c)) => f64::from(n) * f as f64 / c,
            _ => self.config.part_target.as_secs_f64(),
        }
    }

    fn lead_clock(&self) -> Option<f64> {
        self.inputs
            .get(self.lead)
            .and_then(|i| i.as_ref())
            .map(|i| f64::from(i.clock))
    }

    /// A multivariant playlist naming the one rendition (`index.m3u8`) with its CODECS,
    /// RESOLUTION and BANDWIDTH (the peak bit rate of the segments held, else of the parts
    /// so far); None until a part exists.
    pub fn multivariant(&self) -> Option<String> {
        if !self.has_parts() {
            return None;
        }
        let rate = |bytes: usize, secs: f64| (bytes as f64 * 8.0 / secs.max(0.001)) as u64;
        let peak = self
            .segments
            .iter()
            .map(|s| rate(s.bytes.len(), s.duration))
            .max()
            .or_else(|| {
                let c = self.current.as_ref()?;
                let bytes = c.parts.iter().map(|p| p.bytes.len()).sum();
                Some(rate(bytes, c.parts.iter().map(|p| p.duration).sum()))
            })
            .unwrap_or(0)
            .max(1);
        let mut inf = format!("BANDWIDTH={peak}");
        if !self.codec_strings.is_empty() {
            inf.push_str(&format!(",CODECS=\"{}\"", self.codec_strings.join(",")));
        }
        if let Some((w, h)) = self.resolution {
            inf.push_str(&format!(",RESOLUTION={w}x{h}"));
        }
        Some(format!(
            "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:{inf}\nindex.m3u8\n"
        ))
    }

    /// Whether the init segment exists (the first keyframe arrived).
    pub fn started(&self) -> bool {
        self.writer.is_some()
    }

    /// Whether a playlist can be served: at least one part exists.
    pub fn has_parts(&self) -> bool {
        self.segments.front().is_some()
            || self.current.as_ref().is_some_and(|c| !c.parts.is_empty())
    }

    /// The init segment (`ftyp`+`moov`), once started.
    pub fn init(&self) -> Option<Bytes> {
        self.init.clone()
    }

    /// Parts made so far (the next part's number).
    pub fn parts_made(&self) -> u64 {
        self.next_part
    }

    /// Bytes of parts and segments held in memory.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Access units and packets dropped (malformed, or beyond the buffering bounds).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Part number `n` (`part<n>.m4s`).
    pub fn part(&self, n: u64) -> Lookup {
        if n >= self.next_part {
            // The hinted part (and, for a client a part ahead, the one after it).
            return if n <= self.next_part + 1 {
                Lookup::Soon
            } else {
                Lookup::Missing
            };
        }
        self.segments
            .iter()
            .chain(self.current.iter())
            .flat_map(|s| s.parts.iter())
            .find(|p| p.number == n)
            .map_or(Lookup::Missing, |p| Lookup::Ready(p.bytes.clone()))
    }

    /// Segment `msn` (`seg<msn>.m4s`); the one in progress is [`Lookup::Soon`].
    pub fn segment(&self, msn: u64) -> Lookup {
        if let Some(s) = self.segments.iter().find(|s| s.msn == msn) {
            return Lookup::Ready(s.bytes.clone());
        }
        match &self.current {
            Some(c) if c.msn == msn => Lookup::Soon,
            None if msn == self.first_msn => Lookup::Soon,
            _ => Lookup::Missing,
        }
    }

    /// Whether a blocking reload for media sequence number `msn` (and part `part` of it)
    /// can be answered (RFC 8216bis §6.2.5.2): ready once the playlist holds that segment
    /// complete or that part; too far when `msn` is more than one segment past the one in
    /// progress, or `part` more than two parts past the next one.
    pub fn blocking(&self, msn: u64, part: Option<u64>) -> Blocking {
        let (cur, parts) = self
            .current
            .as_ref()
            .map_or((self.first_msn, 0), |c| (c.msn, c.parts.len() as u64));
        let has_parts = self.has_parts();
        if msn < cur && has_parts {
            return Blocking::Ready;
        }
        if msn == cur {
            return match part {
                Some(p) if p < parts => Blocking::Ready,
                Some(p) if p > parts + 2 => Blocking::TooFar,
                _ => Blocking::Wait,
            };
        }
        if msn > cur + 1 || (msn == cur + 1 && part.is_some_and(|p| p > 2)) {
            return Blocking::TooFar;
        }
        Blocking::Wait
    }

    /// The media playlist; with `skip`, a delta update (`_HLS_skip=YES`): the segments
    /// older than CAN-SKIP-UNTIL are replaced by EXT-X-SKIP. None before the first part.
    pub fn playlist(&self, skip: bool) -> Option<String> {
        if !self.has_parts() {
            return None;
        }
        Some(playlist::render(self, skip))
    }
}
