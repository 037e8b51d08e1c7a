//! The WebRTC module's per-stream sink: a stream's RTP depacketized once into frames that
//! every viewer of the path shares, its latest GOP for new viewers, and the facts a WHEP
//! answer is decided on (codecs, B-frames).
//!
//! Sans-IO apart from the wake-up of viewer tasks: packets and their arrival times come
//! in, shared [`Frame`]s go out to bounded per-viewer [`PeerQueue`]s. A viewer that falls
//! behind loses frames (counted) and then skips video to the next keyframe, so it never
//! decodes a broken picture chain and never holds the source back.
//!
//! The feed is lazy: while no viewer watches (and no WHEP request asked for the stream's
//! facts within [`WARM`]), it only keeps the hub's [`GopCache`] of the stream's packets (a
//! reference count per packet, no copy, no parsing). The first viewer (or a WHEP request)
//! activates it: the cached GOP is depacketized, then every live packet, until the last
//! viewer has left and [`WARM`] has passed. So a server with many paths and no browser
//! watching pays nothing for WebRTC beyond the cache.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sluice_codec::Depacketizer;
use sluice_hub::delivery::codec_label;
use sluice_hub::gop::GopCache;
use sluice_hub::{
    Batch, DeliveryNote, EndReason, MediaPacket, ReaderCount, Sink, SinkStats, Stream,
};

use super::nal;
use super::vp8::Vp8Assembler;

/// Most frames a GOP keeps for new viewers; a longer GOP is not cached (viewers then wait
/// for the next keyframe).
const GOP_MAX_FRAMES: usize = 2_000;
/// Most payload bytes a GOP keeps.
const GOP_MAX_BYTES: usize = 16 << 20;
/// How long the feed stays active without a viewer: after a WHEP request asked for its
/// facts (the viewer subscribes once DTLS is up, well within this), and after the last
/// viewer left (a page reload comes back at once).
pub const WARM: Duration = Duration::from_secs(10);

/// The video codecs a viewer can be sent (those the codec crate, or [`super::vp8`],
/// depacketizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264, sent as Annex B access units with SPS/PPS before every IDR.
    H264,
    /// H.265, sent as Annex B access units with VPS/SPS/PPS before every IRAP.
    H265,
    /// VP8 (a browser's WHIP publication, for one).
    Vp8,
    /// VP9, sent as depacketized frames (str0m packetizes them, RFC 9628).
    Vp9,
    /// AV1, sent as temporal units of OBUs with size fields, a sequence header first in
    /// every keyframe (str0m packetizes them and sets N there).
    Av1,
}

/// The audio codecs a viewer can be sent as they come (one RTP payload, one frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Opus at 48 kHz.
    Opus,
    /// G.711 µ-law at 8 kHz.
    Pcmu,
    /// G.711 A-law at 8 kHz.
    Pcma,
}

impl AudioCodec {
    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            AudioCodec::Opus => 48_000,
            AudioCodec::Pcmu | AudioCodec::Pcma => 8_000,
        }
    }
}

/// One coded frame, shared by every viewer of a path.
#[derive(Debug)]
pub struct Frame {
    /// Video (else audio).
    pub video: bool,
    /// Annex B access unit (video) or one audio packet.
    pub data: Arc<[u8]>,
    /// RTP time, extended past 32 bits, in the track's clock.
    pub rtp_time: u64,
    /// The instant this media time stands for, from one clock for all tracks (the
    /// source's Sender Reports when both tracks have one, else the arrival time): what
    /// the viewers' Sender Reports map their RTP times to, so audio and video stay in sync.
    pub wallclock: Instant,
    /// Starts a GOP (IDR/IRAP; every audio frame is independent but not a keyframe here).
    pub keyframe: bool,
    /// A B-frame no other frame refers to: decoders do without it.
    pub disposable: bool,
}

/// What the stream's video holds as to B-frames, as seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BFrames {
    /// Some frame had B slices.
    pub seen: bool,
    /// Some B-frame was a reference for others (B-pyramid): dropping them breaks decoding.
    pub referenced: bool,
    /// Video frames looked at: a GOP cache holding only its keyframe has shown no B-frame
    /// yet, so too few frames say nothing (see [`BFrames::known`]).
    pub frames: u64,
}

impl BFrames {
    /// Frames after which a stream without B slices is taken to have none: B-frames come
    /// within the first mini-GOP after a keyframe (an encoder holds at most a few).
    pub const ENOUGH: u64 = 8;

    /// Whether what was seen settles the question: a B-frame came, or enough frames did.
    pub fn known(&self) -> bool {
        self.seen || self.frames >= Self::ENOUGH
    }
}

/// Why a stream cannot be played over WebRTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplayable {
    /// Its video codec has no depacketizer here (VP9, AV1 sources for now).
    VideoCodec(String),
    /// No video and no audio this module carries.
    NoMedia,
}

/// The cached GOP frames a new viewer's queue starts with. They are sent at once, so
/// their RTP times are squeezed to end at the last one's (a tick apart): the browser then
/// decodes them as one burst and shows the live picture, instead of playing the GOP at
/// normal speed and staying a GOP behind for good.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUp {
    /// Video frames queued from the GOP.
    pub frames: usize,
    /// The RTP time of the last of them.
    pub last_rtp: u64,
    /// The wallclock of the last of them (every catch-up frame is sent with it).
    pub last_wallclock: Option<Instant>,
}

/// A viewer's bounded queue of frames, filled by the feed and drained by its task.
#[derive(Debug)]
pub struct PeerQueue {
    inner: Mutex<Queue>,
    notify: tokio::sync::Notify,
    capacity: usize,
    /// Skip disposable B-frames (the path's B-frame policy is `drop`).
    drop_b: bool,
    /// Frames dropped because the queue was full or the viewer was skipping to a keyframe.
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Arc<Frame>>,
    /// Video waits for the next keyframe (after a drop, or before the first one).
    skip_video: bool,
    closed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerQueue {
    /// An open queue of at most `capacity` live frames.
    pub fn new(capacity: usize, drop_b: bool) -> Arc<PeerQueue> {
        Arc::new(PeerQueue {
            inner: Mutex::new(Queue {
                skip_video: true,
                ..Queue::default()
            }),
            notify: tokio::sync::Notify::new(),
            capacity,
            drop_b,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `frame`; `bounded` false for the GOP handed over at subscription (already
    /// bounded by the GOP cache). A full queue drops the frame, and video then waits for
    /// the next keyframe.
    /// Whether the frame was queued.
    fn push(&self, frame: &Arc<Frame>, bounded: bool) -> bool {
        if frame.video && frame.disposable && self.drop_b {
            return false;
        }
        let mut q = lock(&self.inner);
        if q.closed {
            return false;
        }
        if frame.video {
            if frame.keyframe {
                q.skip_video = false;
            } else if q.skip_video {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        if bounded && q.frames.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if frame.video {
                q.skip_video = true;
            }
            return false;
        }
        q.frames.push_back(frame.clone());
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Asks for video to resume at the next keyframe (the viewer lost a picture, and an
    /// RTSP source cannot be asked for one: the GOP's next keyframe answers).
    pub fn skip_to_keyframe(&self) {
        lock(&self.inner).skip_video = true;
    }

    /// The next frame, None when none is queued.
    pub fn pop(&self) -> Option<Arc<Frame>> {
        lock(&self.inner).frames.pop_front()
    }

    /// Whether the feed closed the queue (the stream ended) and it is drained.
    pub fn is_finished(&self) -> bool {
        let q = lock(&self.inner);
        q.closed && q.frames.is_empty()
    }

    /// Closes the queue: the feed forgets it at its next frame.
    pub fn close(&self) {
        lock(&self.inner).closed = true;
        self.notify.notify_one();
    }

    fn is_closed(&self) -> bool {
        lock(&self.inner).closed
    }

    /// Waits until a frame is queued or the queue closes.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Extends 32-bit RTP timestamps to 64 bits across wraps.
#[derive(Debug, Default, Clone, Copy)]
struct Unwrap {
    last: Option<u64>,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => u64::from(ts) + (1 << 32),
            Some(last) => {
                let delta = ts.wrapping_sub(last as u32) as i32;
                last.saturating_add_signed(i64::from(delta))
            }
        };
        self.last = Some(ext);
        ext
    }
}

/// The shared NTP↔Instant anchor of the Sender Report clock.
#[derive(Debug, Default, Clone, Copy)]
struct Anchor {
    at: Option<(f64, Instant)>,
}

struct State {
    /// The hub's GOP cache of the stream's packets, kept while inactive too: what an
    /// activation starts from.
    packets: GopCache,
    /// Depacketizing (a viewer watches, or one may soon).
    active: bool,
    /// Stay active without viewers until this packet time.
    warm_until: Option<Instant>,
    /// Arrival time of the latest packet (the feed's clock).
    last_at: Option<Instant>,
    video_dep: Option<Depacketizer>,
    vp8: Option<Vp8Assembler>,
    video_ext: Unwrap,
    audio_ext: Unwrap,
    anchor: Anchor,
    /// Frames since the last keyframe (video and audio), when it is within bounds.
    gop: VecDeque<Arc<Frame>>,
    gop_bytes: usize,
    b_frames: BFrames,
    peers: Vec<Arc<PeerQueue>>,
    ended: bool,
    frames_out: u64,
    bytes_out: u64,
    /// Viewers that ever subscribed.
    viewers_total: u64,
}

/// The WebRTC module's sink on one stream.
pub struct Feed {
    stream: Weak<Stream>,
    video: Option<(usize, VideoCodec)>,
    audio: Option<(usize, AudioCodec)>,
    /// The stream's audio is AAC, which WebRTC does not carry.
    aac: bool,
    /// The stream's video codec when this module cannot send it.
    unsupported_video: Option<String>,
    /// The stream's audio codec when this module cannot send it (AAC aside).
    unsupported_audio: Option<String>,
    /// How to make the video depacketizer at each activation: encoding, clock rate, fmtp.
    video_spec: Option<(&'static str, u32, Option<String>)>,
    state: Mutex<State>,
    /// Asked when a viewer wants a keyframe and the source can make one (a WHIP
    /// publisher registers here).
    keyframe_source: Mutex<Option<Weak<tokio::sync::Notify>>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("video", &self.video)
            .field("audio", &self.audio)
            .finish()
    }
}

impl Feed {
    /// A feed for `stream`'s presentation: its first video track H.264/H.265/VP8 and its
    /// first audio track Opus/PCMU/PCMA are carried.
    pub fn new(stream: &Arc<Stream>) -> Arc<Feed> {
        let mut video = None;
        let mut audio = None;
        let mut aac = false;
        let mut unsupported_video = None;
        let mut unsupported_audio = None;
        let mut video_spec = None;
        for (i, t) in stream.presentation().tracks().iter().enumerate() {
            let enc = t.encoding.to_ascii_uppercase();
            if t.media == "video" && video.is_none() && unsupported_video.is_none() {
                if enc == "VP8" {
                    video = Some((i, VideoCodec::Vp8));
                    continue;
                }
                let codec = match enc.as_str() {
                    "H264" => Some((VideoCodec::H264, "H264")),
                    "H265" => Some((VideoCodec::H265, "H265")),
                    "VP9" => Some((VideoCodec::Vp9, "VP9")),
                    "AV1" => Some((VideoCodec::Av1, "AV1")),
                    _ => None,
                };
                // The depacketizer is made at each activation; here only whether it can be.
                match codec.filter(|(_, name)| {
                    Depacketizer::new(name, t.clock_rate, None, t.fmtp.as_deref()).is_ok()
                }) {
                    Some((c, name)) => {
                        video = Some((i, c));
                        video_spec = Some((name, t.clock_rate, t.fmtp.clone()));
                    }
                    None => unsupported_video = Some(t.encoding.clone()),
                }
            } else if t.media == "audio" && audio.is_none() {
                match enc.as_str() {
                    "OPUS" => audio = Some((i, AudioCodec::Opus)),
                    "PCMU" => audio = Some((i, AudioCodec::Pcmu)),
                    "PCMA" => audio = Some((i, AudioCodec::Pcma)),
                    "MPEG4-GENERIC" | "MP4A-LATM" => aac = true,
                    _ => unsupported_audio = Some(t.encoding.clone()),
                }
            }
        }
        Arc::new(Feed {
            stream: Arc::downgrade(stream),
            video,
            audio,
            aac,
            unsupported_video,
            unsupported_audio,
            video_spec,
            state: Mutex::new(State {
                packets: GopCache::new(stream.presentation().keyframe_track()),
                active: false,
                warm_until: None,
                last_at: None,
                video_dep: None,
                vp8: None,
                video_ext: Unwrap::default(),
                audio_ext: Unwrap::default(),
                anchor: Anchor::default(),
                gop: VecDeque::new(),
                gop_bytes: 0,
                b_frames: BFrames::default(),
                peers: Vec::new(),
                ended: false,
                frames_out: 0,
                bytes_out: 0,
                viewers_total: 0,
            }),
            keyframe_source: Mutex::new(None),
        })
    }

    /// The video codec sent, if any.
    pub fn video(&self) -> Option<VideoCodec> {
        self.video.map(|(_, c)| c)
    }

    /// The audio codec sent, if any.
    pub fn audio(&self) -> Option<AudioCodec> {
        self.audio.map(|(_, c)| c)
    }

    /// Whether the source's audio is AAC (not carried over WebRTC).
    pub fn audio_is_aac(&self) -> bool {
        self.aac
    }

    /// What WebRTC makes of this stream, for the API and the page (the hub's delivery
    /// notes): whether a viewer can be sent it, and what is left out and why. B-frames are
    /// decided per request (the path's policy) and said in the WHEP answer instead.
    pub fn delivery_note(&self) -> DeliveryNote {
        let mut note = DeliveryNote::carried("webrtc");
        if let Some(enc) = &self.unsupported_video {
            note.playable = false;
            note.notes
                .push(format!("{} cannot be carried", codec_label("video", enc)));
        } else if self.playable().is_err() {
            note.playable = false;
            note.notes.push("no video or audio it carries".to_owned());
        }
        if self.aac {
            note.notes
                .push("AAC audio not carried: video only, HLS plays the audio".to_owned());
        } else if let Some(enc) = &self.unsupported_audio {
            note.notes
                .push(format!("{} not carried", codec_label("audio", enc)));
        }
        note
    }

    /// Whether the feed is depacketizing now (a viewer watches, or one may soon).
    pub fn is_active(&self) -> bool {
        lock(&self.state).active
    }

    /// Starts depacketizing from the cached GOP if the feed is idle, and keeps it active
    /// for [`WARM`] past the latest packet.
    fn activate(&self, s: &mut State) {
        s.warm_until = s.last_at.map(|t| t + WARM);
        if s.active {
            return;
        }
        s.active = true;
        s.video_dep = self.video_spec.as_ref().and_then(|(name, rate, fmtp)| {
            Depacketizer::new(name, *rate, None, fmtp.as_deref()).ok()
        });
        s.vp8 = (self.video() == Some(VideoCodec::Vp8)).then(Vp8Assembler::default);
        s.video_ext = Unwrap::default();
        s.audio_ext = Unwrap::default();
        s.anchor = Anchor::default();
        s.gop.clear();
        s.gop_bytes = 0;
        let cached: Vec<MediaPacket> = s.packets.packets().cloned().collect();
        for p in &cached {
            self.handle_packet(s, p);
        }
    }

    /// Back to idle: the decoders and the frame GOP are dropped (the packet cache stays).
    fn deactivate(s: &mut State) {
        s.active = false;
        s.video_dep = None;
        s.vp8 = None;
        s.gop.clear();
        s.gop_bytes = 0;
    }

    /// Whether a viewer can be sent this stream at all.
    pub fn playable(&self) -> Result<(), Unplayable> {
        if let Some(enc) = &self.unsupported_video {
            return Err(Unplayable::VideoCodec(enc.clone()));
        }
        if self.video.is_none() && self.audio.is_none() {
            return Err(Unplayable::NoMedia);
        }
        Ok(())
    }

    /// The H.264 `profile_idc` of the source's SPS, once known (66 Baseline, 77 Main,
    /// 100 High): a viewer is answered under an offered profile that matches when there is one.
    pub fn h264_profile(&self) -> Option<u8> {
        if self.video() != Some(VideoCodec::H264) {
            return None;
        }
        let mut s = lock(&self.state);
        self.activate(&mut s);
        let params = s.video_dep.as_ref()?.params()?;
        params.config.get(1).copied()
    }

    /// What the stream's video showed of B-frames since the feed was first activated
    /// (from the cached GOP on): asking activates it.
    pub fn b_frames(&self) -> BFrames {
        let mut s = lock(&self.state);
        self.activate(&mut s);
        s.b_frames
    }

    /// Whether the current GOP is cached (a new viewer starts at once).
    pub fn has_gop(&self) -> bool {
        let s = lock(&self.state);
        !s.packets.is_empty() || s.gop.front().is_some_and(|f| f.keyframe)
    }

    /// Subscribes `peer`: the cached GOP's video is queued first, then every live frame;
    /// what the GOP put in the queue comes back (see [`CatchUp`]). The GOP's audio is not
    /// queued: a browser would buffer that second of audio and hold the video back to
    /// stay in sync with it; audio starts live. None if the stream already ended.
    pub fn subscribe(&self, peer: &Arc<PeerQueue>) -> Option<CatchUp> {
        let mut s = lock(&self.state);
        if s.ended {
            return None;
        }
        self.activate(&mut s);
        let audio_only = self.video.is_none();
        let mut catch_up = CatchUp::default();
        for f in s.gop.iter().filter(|f| f.video && !audio_only) {
            if peer.push(f, false) {
                catch_up.frames += 1;
                catch_up.last_rtp = f.rtp_time;
                catch_up.last_wallclock = Some(f.wallclock);
            }
        }
        s.viewers_total += 1;
        s.peers.push(peer.clone());
        Some(catch_up)
    }

    /// A viewer lost a picture and its source cannot make a keyframe: the cached GOP's
    /// video (from its keyframe, parameter sets included) is queued again for `peer`, in
    /// place of the video it had not been sent yet (all of which the GOP holds). What was
    /// queued comes back, for the viewer to squeeze its times after the last frame it sent
    /// (see [`CatchUp`]); None when no GOP is cached (the viewer then waits for the
    /// source's next keyframe) or the queue is closed. Rate-limiting is the caller's.
    pub fn resend_gop(&self, peer: &Arc<PeerQueue>) -> Option<CatchUp> {
        let s = lock(&self.state);
        if !s.active || !s.gop.front().is_some_and(|f| f.keyframe && f.video) {
            return None;
        }
        let mut q = lock(&peer.inner);
        if q.closed {
            return None;
        }
        q.frames.retain(|f| !f.video);
        q.skip_video = false;
        let mut catch_up = CatchUp::default();
        for f in s.gop.iter().filter(|f| f.video) {
            if f.disposable && peer.drop_b {
                continue;
            }
            q.frames.push_back(f.clone());
            catch_up.frames += 1;
            catch_up.last_rtp = f.rtp_time;
            catch_up.last_wallclock = Some(f.wallclock);
        }
        drop(q);
        drop(s);
        peer.notify.notify_one();
        Some(catch_up)
    }

    /// Lets a source that can make keyframes on request (a WHIP publisher) hear viewers'
    /// PLI/FIR.
    pub fn set_keyframe_source(&self, notify: &Arc<tokio::sync::Notify>) {
        *lock(&self.keyframe_source) = Some(Arc::downgrade(notify));
    }

    /// A viewer lost a picture: the source is asked for a keyframe if it can make one
    /// (true), else the viewer waits for the next one (false).
    pub fn request_keyframe(&self) -> bool {
        match lock(&self.keyframe_source).as_ref().and_then(Weak::upgrade) {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// The instant `rtp` (on `track`, at `clock_rate`) stands for: from the source's
    /// Sender Reports when every carried track has one, else `arrival`.
    fn wallclock(
        &self,
        anchor: &mut Anchor,
        track: usize,
        rtp: u32,
        clock_rate: u32,
        arrival: Instant,
    ) -> Instant {
        let Some(stream) = self.stream.upgrade() else {
            return arrival;
        };
        let tracks = [self.video.map(|v| v.0), self.audio.map(|a| a.0)];
        if tracks
            .iter()
            .flatten()
            .any(|t| stream.sr_mapping(*t).is_none())
        {
            return arrival;
        }
        let Some(sr) = stream.sr_mapping(track) else {
            return arrival;
        };
        let ntp = (sr.ntp.0 >> 32) as f64 + (sr.ntp.0 & 0xffff_ffff) as f64 / 4_294_967_296.0;
        let delta =
            f64::from(rtp.wrapping_sub(sr.rtp_timestamp) as i32) / f64::from(clock_rate.max(1));
        let at = ntp + delta;
        let (anchor_ntp, anchor_instant) = *anchor.at.get_or_insert((at, arrival));
        let offset = at - anchor_ntp;
        let w = if offset >= 0.0 {
            anchor_instant + Duration::from_secs_f64(offset.min(1e9))
        } else {
            anchor_instant
                .checked_sub(Duration::from_secs_f64((-offset).min(1e9)))
                .unwrap_or(arrival)
        };
        // Media is never captured after it arrived: a frame that came through faster than
        // the anchor's moves the anchor back (for both tracks alike), so that the mapping
        // stays one clock and never points into the future.
        if w > arrival {
            let ahead = w - arrival;
            anchor.at = Some((
                anchor_ntp,
                anchor_instant.checked_sub(ahead).unwrap_or(anchor_instant),
            ));
            return arrival;
        }
        w
    }

    /// Hands `frame` to the GOP and to every viewer.
    fn publish(&self, s: &mut State, frame: Frame) {
        let frame = Arc::new(frame);
        if frame.video && frame.keyframe {
            s.gop.clear();
            s.gop_bytes = 0;
        }
        let cached = s.gop.front().is_some_and(|f| f.keyframe);
        if cached {
            if s.gop.len() >= GOP_MAX_FRAMES || s.gop_bytes + frame.data.len() > GOP_MAX_BYTES {
                s.gop.clear();
                s.gop_bytes = 0;
            } else {
                s.gop_bytes += frame.data.len();
                s.gop.push_back(frame.clone());
            }
        } else if frame.keyframe || (self.video.is_none() && !frame.video) {
            // Audio-only streams: the GOP is the last frame (any audio frame starts).
            if !frame.video {
                s.gop.clear();
                s.gop_bytes = 0;
            }
            s.gop_bytes += frame.data.len();
            s.gop.push_back(frame.clone());
        }
        s.peers.retain(|p| !p.is_closed());
        s.frames_out += s.peers.len() as u64;
        s.bytes_out += (s.peers.len() * frame.data.len()) as u64;
        for p in &s.peers {
            p.push(&frame, true);
        }
    }

    fn handle_packet(&self, s: &mut State, p: &MediaPacket) {
        if let Some((track, codec)) = self.video {
            if p.track == track && codec == VideoCodec::Vp8 {
                let (h, payload) = (
                    &p.header,
                    p.data.get(p.header.payload_offset..).unwrap_or_default(),
                );
                let done = s
                    .vp8
                    .as_mut()
                    .and_then(|a| a.push(h.sequence, h.timestamp, h.marker, payload));
                if let Some((data, keyframe)) = done {
                    let rtp_time = s.video_ext.extend(h.timestamp);
                    let wallclock =
                        self.wallclock(&mut s.anchor, track, h.timestamp, 90_000, p.received_at);
                    let frame = Frame {
                        video: true,
                        data: data.into(),
                        rtp_time,
                        wallclock,
                        keyframe,
                        disposable: false,
                    };
                    self.publish(s, frame);
                }
                return;
            }
            if p.track == track {
                let Some(dep) = s.video_dep.as_mut() else {
                    return;
                };
                let Ok(units) = dep.push(&p.data) else {
                    return;
                };
                if units.is_empty() {
                    return;
                }
                let params = dep.params();
                for au in units {
                    let sets = if au.keyframe {
                        params.as_ref().map(|c| match codec {
                            VideoCodec::H264 => nal::avcc_parameter_sets(&c.config),
                            VideoCodec::H265 => nal::hvcc_parameter_sets(&c.config),
                            VideoCodec::Vp8 | VideoCodec::Vp9 | VideoCodec::Av1 => Vec::new(),
                        })
                    } else {
                        None
                    };
                    let annexb = match codec {
                        VideoCodec::Vp9 => au.data.to_vec(),
                        VideoCodec::Av1 => super::obu::with_sequence_header(
                            &au.data,
                            au.keyframe,
                            params.as_ref().map(|c| &c.config[..]),
                        ),
                        _ => nal::to_annex_b(codec, &au.data, sets.as_deref().unwrap_or(&[])),
                    };
                    let (b, referenced) = match codec {
                        VideoCodec::H264 => nal::h264_b_slices(&au.data),
                        _ => (false, false),
                    };
                    s.b_frames.frames += 1;
                    if b {
                        s.b_frames.seen = true;
                        s.b_frames.referenced |= referenced;
                    }
                    let rtp_time = s.video_ext.extend(au.rtp_timestamp);
                    let wallclock = self.wallclock(
                        &mut s.anchor,
                        track,
                        au.rtp_timestamp,
                        90_000,
                        p.received_at,
                    );
                    let frame = Frame {
                        video: true,
                        data: annexb.into(),
                        rtp_time,
                        wallclock,
                        keyframe: au.keyframe,
                        disposable: b && !referenced,
                    };
                    self.publish(s, frame);
                }
                return;
            }
        }
        if let Some((track, codec)) = self.audio {
            if p.track == track {
                let Some(payload) = p.data.get(p.header.payload_offset..) else {
                    return;
                };
                if payload.is_empty() {
                    return;
                }
                let rtp_time = s.audio_ext.extend(p.header.timestamp);
                let wallclock = self.wallclock(
                    &mut s.anchor,
                    track,
                    p.header.timestamp,
                    codec.clock_rate(),
                    p.received_at,
                );
                let frame = Frame {
                    video: false,
                    data: Arc::from(payload),
                    rtp_time,
                    wallclock,
                    keyframe: false,
                    disposable: false,
                };
                self.publish(s, frame);
            }
        }
    }
}

impl Sink for Feed {
    fn on_batch(&self, batch: &Batch) {
        if self.video.is_none() && self.audio.is_none() {
            return;
        }
        let mut s = lock(&self.state);
        for p in batch.packets() {
            s.packets.handle_packet(p);
        }
        if let Some(last) = batch.packets().last() {
            s.last_at = Some(last.received_at);
        }
        if !s.active {
            return;
        }
        s.peers.retain(|p| !p.is_closed());
        let warm = match (s.warm_until, s.last_at) {
            (Some(until), Some(now)) => now < until,
            _ => false,
        };
        if s.peers.is_empty() && !warm {
            Feed::deactivate(&mut s);
            return;
        }
        for p in batch.packets() {
            self.handle_packet(&mut s, p);
        }
    }

    fn on_end(&self, _reason: EndReason) {
        let mut s = lock(&self.state);
        s.ended = true;
        Feed::deactivate(&mut s);
        s.packets = GopCache::new(None);
        for p in s.peers.drain(..) {
            p.close();
        }
    }

    fn stats(&self) -> SinkStats {
        let s = lock(&self.state);
        let live = s.peers.iter().filter(|p| !p.is_closed()).count() as u64;
        let dropped: u64 = s.peers.iter().map(|p| p.dropped()).sum();
        SinkStats {
            readers: vec![ReaderCount {
                protocol: "webrtc",
                transport: "",
                count: live,
            }],
            packets_out: s.frames_out,
            bytes_out: s.bytes_out,
            dropped: vec![("webrtc_queue_full", dropped)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_hub::Presentation;
    use sluice_rtp::packet::parse_rtp;

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n\
        m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n";

    fn pkt(
        track: usize,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        at: Instant,
    ) -> MediaPacket {
        let mut d = vec![0x80, if marker { 0x80 | 96 } else { 96 }];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(payload);
        let data = Bytes::from(d);
        MediaPacket {
            track,
            header: parse_rtp(&data).expect("rtp"),
            data,
            received_at: at,
        }
    }

    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xf0, 0x04, 0x4f, 0xcb, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];

    #[test]
    fn frames_start_at_a_keyframe_with_parameter_sets_and_bound_slow_viewers() {
        let p = Presentation::from_sdp(SDP.as_bytes()).expect("sdp");
        let stream = Stream::new("cam".into(), p, 1);
        let feed = Feed::new(&stream);
        assert_eq!(feed.video(), Some(VideoCodec::H264));
        assert_eq!(feed.audio(), Some(AudioCodec::Opus));
        let t0 = Instant::now();
        let early = PeerQueue::new(8, false);
        assert_eq!(feed.subscribe(&early).map(|c| c.frames), Some(0));
        let mut batch = Batch::default();
        // A P-frame first (skipped: no keyframe yet), then SPS, PPS, IDR, then 20 P-frames.
        batch.push(pkt(0, 1, 0, true, &[0x41, 0x9a, 0x00], t0));
        batch.push(pkt(0, 2, 3000, false, SPS, t0));
        batch.push(pkt(0, 3, 3000, false, PPS, t0));
        batch.push(pkt(0, 4, 3000, true, &[0x65, 0x88, 0x80], t0));
        for i in 0..20u16 {
            batch.push(pkt(
                0,
                5 + i,
                6000 + 3000 * u32::from(i),
                true,
                &[0x41, 0x9a, 0x01],
                t0,
            ));
        }
        batch.push(pkt(1, 1, 960, true, &[0xfc, 0x01], t0));
        feed.on_batch(&batch);
        let first = early.pop().expect("a frame");
        assert!(first.keyframe && first.video);
        assert!(first.data.starts_with(&[0, 0, 0, 1, 0x67]), "SPS first");
        // The queue holds 8 frames: the rest were dropped and counted.
        assert!(early.dropped() > 0);
        // A late viewer gets the whole GOP at once, from its keyframe.
        let late = PeerQueue::new(8, false);
        assert!(feed.has_gop());
        let catch_up = feed.subscribe(&late).expect("live");
        assert_eq!(catch_up.frames, 21);
        assert_eq!(catch_up.last_rtp, (1u64 << 32) + 6000 + 3000 * 19);
        let gop: Vec<_> = std::iter::from_fn(|| late.pop()).collect();
        assert_eq!(gop.len(), 21, "IDR + 20 P, no audio from the past");
        assert!(gop[0].keyframe);
        assert!(!feed.b_frames().seen);
        feed.on_end(EndReason::SourceGone);
        assert!(late.is_finished());
    }

    /// SPS, PPS, IDR at `ts0`, then `p_frames` P-frames a frame apart, all at `at`.
    fn gop_batch(seq0: u16, ts0: u32, p_frames: u16, at: Instant) -> Batch {
        let mut batch = Batch::default();
        batch.push(pkt(0, seq0, ts0, false, SPS, at));
        batch.push(pkt(0, seq0 + 1, ts0, false, PPS, at));
        batch.push(pkt(0, seq0 + 2, ts0, true, &[0x65, 0x88, 0x80], at));
        for i in 0..p_frames {
            let ts = ts0 + 3000 * (u32::from(i) + 1);
            batch.push(pkt(0, seq0 + 3 + i, ts, true, &[0x41, 0x9a, 0x01], at));
        }
        batch
    }

    #[test]
    fn an_idle_feed_only_caches_packets_until_a_viewer_comes() {
        let p = Presentation::from_sdp(SDP.as_bytes()).expect("sdp");
        let stream = Stream::new("cam".into(), p, 1);
        let feed = Feed::new(&stream);
        let t0 = Instant::now();
        feed.on_batch(&gop_batch(1, 3000, 20, t0));
        assert!(!feed.is_active(), "no viewer: nothing depacketized");
        assert!(
            lock(&feed.state).gop.is_empty(),
            "no frames made while idle"
        );
        assert!(feed.has_gop(), "the packets are cached");
        // The first viewer starts from the cached packets, depacketized now.
        let q = PeerQueue::new(64, false);
        let c = feed.subscribe(&q).expect("live");
        assert!(feed.is_active());
        assert_eq!(c.frames, 21);
        let first = q.pop().expect("a frame");
        assert!(first.keyframe && first.data.starts_with(&[0, 0, 0, 1, 0x67]));
        while q.pop().is_some() {}
        // A PLI: the GOP (keyframe first, parameter sets included) is queued again.
        let again = feed.resend_gop(&q).expect("a GOP");
        assert_eq!(again.frames, 21);
        let k = q.pop().expect("the keyframe again");
        assert!(k.keyframe && k.data.starts_with(&[0, 0, 0, 1, 0x67]));
        // The viewer leaves; once WARM has passed the feed goes idle again.
        q.close();
        let later = t0 + WARM + Duration::from_secs(1);
        feed.on_batch(&gop_batch(100, 3000 * 30, 2, later));
        assert!(!feed.is_active());
        assert!(feed.resend_gop(&PeerQueue::new(8, false)).is_none());
        // A WHEP request's question activates it (the B-frame facts come from the GOP).
        assert!(!feed.b_frames().seen);
        assert!(feed.is_active());
        assert_eq!(
            lock(&feed.state).gop.len(),
            3,
            "the cached GOP, depacketized"
        );
    }

    /// A WHEP request right after a keyframe finds only that keyframe cached: the B-frame
    /// question is open until enough frames came (the route waits for them).
    #[test]
    fn the_b_frame_question_stays_open_until_enough_frames_came() {
        let p = Presentation::from_sdp(SDP.as_bytes()).expect("sdp");
        let stream = Stream::new("cam".into(), p, 1);
        let feed = Feed::new(&stream);
        let t0 = Instant::now();
        feed.on_batch(&gop_batch(1, 3000, 0, t0));
        let b = feed.b_frames();
        assert_eq!((b.seen, b.frames), (false, 1));
        assert!(!b.known(), "a lone keyframe says nothing about B-frames");
        let mut batch = Batch::default();
        for i in 0..BFrames::ENOUGH as u16 {
            let ts = 9000 + 3000 * u32::from(i);
            batch.push(pkt(0, 10 + i, ts, true, &[0x41, 0x9a, 0x01], t0));
        }
        feed.on_batch(&batch);
        let b = feed.b_frames();
        assert!(b.known() && !b.seen, "{b:?}");
    }

    #[test]
    fn delivery_notes_name_what_webrtc_leaves_out() {
        let note = |sdp: &str| {
            let p = Presentation::from_sdp(sdp.as_bytes()).expect("sdp");
            Feed::new(&Stream::new("x".into(), p, 1)).delivery_note()
        };
        let head = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nt=0 0\r\n";
        let h264 = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let ok = note(&format!(
            "{head}{h264}m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        ));
        assert!(ok.playable && ok.notes.is_empty(), "{ok:?}");
        let aac = note(&format!(
            "{head}{h264}m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n"
        ));
        assert!(aac.playable);
        assert_eq!(
            aac.summary(),
            "WebRTC: AAC audio not carried: video only, HLS plays the audio"
        );
        let mp4v = note(&format!(
            "{head}m=video 0 RTP/AVP 96\r\na=rtpmap:96 MP4V-ES/90000\r\n"
        ));
        assert!(!mp4v.playable);
        assert_eq!(mp4v.summary(), "WebRTC: MP4V-ES video cannot be carried");
    }

    #[test]
    fn rtp_time_extends_across_the_wrap() {
        let mut u = Unwrap::default();
        let a = u.extend(u32::MAX - 10);
        let b = u.extend(5);
        assert_eq!(b - a, 16);
        let c = u.extend(u32::MAX - 20);
        assert!(c < b);
    }
}
