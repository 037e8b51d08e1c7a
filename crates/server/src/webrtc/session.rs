//! One task per WebRTC peer, driving its sans-IO `str0m::Rtc`: datagrams from the receive
//! task and frames from the path's feed in, datagrams out on the shared socket, timers.
//!
//! A viewer (WHEP) subscribes to its path's [`Feed`] once DTLS is up, so its first frames
//! are the cached GOP from its keyframe; a publisher (WHIP) pushes the browser's RTP
//! packets, re-stamped with its own SSRCs and payload types, into the hub stream it
//! published, and asks the browser for a keyframe when a viewer lost one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_hub::{MediaPacket, Presentation, PresentationError, SourceHandle};
use sluice_rtp::packet::parse_rtp;
use str0m::media::{Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::feed::{CatchUp, Feed, Frame, PeerQueue, VideoCodec};
use super::{Counters, Datagram, WebRtc};
use std::sync::atomic::Ordering;

/// A session that never completes ICE and DTLS within this is ended.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A connected peer that sends nothing (no STUN consent check, no RTCP, no media) for
/// this long is gone: ICE-lite never sends checks of its own, so it would never notice.
const PEER_SILENCE: Duration = Duration::from_secs(15);
/// Keyframe requests forwarded to a publisher at most this often.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// A WHEP viewer's task state.
pub(crate) struct Viewer {
    pub(crate) module: Arc<WebRtc>,
    pub(crate) id: String,
    pub(crate) key: u64,
    pub(crate) path: String,
    pub(crate) feed: Arc<Feed>,
    pub(crate) queue: Arc<PeerQueue>,
    pub(crate) stop: Arc<tokio::sync::Notify>,
    pub(crate) counters: Arc<Counters>,
}

/// Sends one datagram str0m produced on the socket of the candidate it names.
async fn transmit(module: &WebRtc, t: &str0m::net::Transmit) {
    let socket = module
        .endpoints
        .iter()
        .find(|e| e.candidate == t.source)
        .or_else(|| module.endpoints.first());
    if let Some(e) = socket {
        if let Err(err) = e.socket.send_to(&t.contents, t.destination).await {
            debug!(error = %err, to = %t.destination, "webrtc: send failed");
        }
    }
}

/// What the str0m loop reported between two waits.
enum Polled {
    /// Wait until this instant at most.
    Timeout(Instant),
    /// The peer is gone (or the session failed).
    Closed(String),
}

fn receive_input(rtc: &mut Rtc, d: &Datagram) -> Result<(), String> {
    let r = Receive::new(Protocol::Udp, d.from, d.to, &d.data).map_err(|e| e.to_string())?;
    rtc.handle_input(Input::Receive(d.at, r))
        .map_err(|e| e.to_string())
}

/// The viewer's chosen media: mid and payload type per kind.
#[derive(Default)]
struct Outputs {
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
}

/// The payload type to send `want` under: for H.264, packetization-mode 1, and the
/// source's profile when the peer offered it (else any offered profile: browsers decode
/// a High-profile stream sent under a Baseline or Main payload type).
fn choose_pt(
    rtc: &mut Rtc,
    mid: Mid,
    want: str0m::format::Codec,
    profile: Option<u8>,
) -> Option<Pt> {
    let w = rtc.writer(mid)?;
    let mut best: Option<(u8, Pt)> = None;
    for p in w.payload_params() {
        let spec = p.spec();
        if spec.codec != want {
            continue;
        }
        // Prefer packetization-mode 1 (FU-A, STAP-A) for H.264.
        let mut score = match spec.format.packetization_mode {
            Some(1) => 2,
            _ if want == str0m::format::Codec::H264 => 0,
            _ => 1,
        };
        let offered_profile = spec.format.profile_level_id.map(|p| (p >> 16) as u8);
        if profile.is_some() && offered_profile == profile {
            score += 1;
        }
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, p.pt()));
        }
    }
    best.map(|(_, pt)| pt)
}

/// Writes `f`, at `at` (RTP time and wallclock) instead of its own when given.
fn write_frame(
    rtc: &mut Rtc,
    out: &Outputs,
    audio_rate: u32,
    f: &Frame,
    at: Option<(u64, Instant)>,
) -> Result<(), String> {
    let (target, freq) = if f.video {
        (out.video, Frequency::NINETY_KHZ)
    } else {
        let freq = Frequency::new(audio_rate).unwrap_or(Frequency::FORTY_EIGHT_KHZ);
        (out.audio, freq)
    };
    let Some((mid, pt)) = target else {
        return Ok(());
    };
    let Some(w) = rtc.writer(mid) else {
        return Ok(());
    };
    let (rtp_time, wallclock) = at.unwrap_or((f.rtp_time, f.wallclock));
    w.write(
        pt,
        wallclock,
        MediaTime::new(rtp_time, freq),
        f.data.clone(),
    )
    .map_err(|e| e.to_string())
}

/// Runs a WHEP viewer until it leaves, its stream ends, or it is deleted.
pub(crate) async fn run_viewer(v: Viewer, mut rtc: Rtc, mut inbox: mpsc::Receiver<Datagram>) {
    let started = Instant::now();
    let mut connected: Option<Instant> = None;
    let mut out = Outputs::default();
    let mut first_sent = false;
    let mut keyframe_requests = 0u64;
    let mut keyframes_resent = 0u64;
    let mut last_resend: Option<Instant> = None;
    // The RTP time of the last video frame written: video never goes back in time, even
    // when the GOP is sent again for a PLI.
    let mut last_video_rtp: Option<u64> = None;
    let mut catch_up = CatchUp::default();
    let mut last_rx = started;
    let video_codec = v.feed.video();
    let audio_rate = v.feed.audio().map_or(48_000, |a| a.clock_rate());
    let why = loop {
        // Everything str0m has to say, then wait for the next input.
        let polled = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Polled::Timeout(t),
                Ok(Output::Transmit(t)) => transmit(&v.module, &t).await,
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        let now = Instant::now();
                        connected = Some(now);
                        info!(session = %v.id, path = %v.path, setup_ms = now.duration_since(started).as_millis() as u64, "WHEP session connected (DTLS up)");
                        match v.feed.subscribe(&v.queue) {
                            Some(c) => catch_up = c,
                            None => break Polled::Closed("stream ended".into()),
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        break Polled::Closed("peer disconnected".into());
                    }
                    Event::MediaAdded(m) => {
                        let want = match (m.kind, video_codec) {
                            (MediaKind::Video, Some(VideoCodec::H264)) => {
                                Some(str0m::format::Codec::H264)
                            }
                            (MediaKind::Video, Some(VideoCodec::Vp8)) => {
                                Some(str0m::format::Codec::Vp8)
                            }
                            (MediaKind::Video, Some(VideoCodec::H265)) => {
                                Some(str0m::format::Codec::H265)
                            }
                            (MediaKind::Video, Some(VideoCodec::Vp9)) => {
                                Some(str0m::format::Codec::Vp9)
                            }
                            (MediaKind::Video, Some(VideoCodec::Av1)) => {
                                Some(str0m::format::Codec::Av1)
                            }
                            (MediaKind::Audio, _) => match v.feed.audio() {
                                Some(super::feed::AudioCodec::Opus) => {
                                    Some(str0m::format::Codec::Opus)
                                }
                                Some(super::feed::AudioCodec::Pcmu) => {
                                    Some(str0m::format::Codec::PCMU)
                                }
                                Some(super::feed::AudioCodec::Pcma) => {
                                    Some(str0m::format::Codec::PCMA)
                                }
                                None => None,
                            },
                            _ => None,
                        };
                        if let Some(want) = want {
                            if let Some(pt) =
                                choose_pt(&mut rtc, m.mid, want, v.feed.h264_profile())
                            {
                                match m.kind {
                                    MediaKind::Video if out.video.is_none() => {
                                        out.video = Some((m.mid, pt))
                                    }
                                    MediaKind::Audio if out.audio.is_none() => {
                                        out.audio = Some((m.mid, pt))
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    Event::KeyframeRequest(_) => {
                        keyframe_requests += 1;
                        // A WHIP source makes one; an RTSP source cannot be asked: the
                        // cached GOP is sent again from its keyframe (at most once per
                        // KEYFRAME_INTERVAL per viewer), its times squeezed in right after
                        // the last frame sent, so the decoder recovers at once instead of
                        // waiting for the source's next keyframe.
                        let now = Instant::now();
                        let due =
                            last_resend.is_none_or(|t| now.duration_since(t) >= KEYFRAME_INTERVAL);
                        if connected.is_some() && due && !v.feed.request_keyframe() {
                            if let Some(c) = v.feed.resend_gop(&v.queue) {
                                last_resend = Some(now);
                                keyframes_resent += 1;
                                let base = last_video_rtp.unwrap_or(c.last_rtp);
                                catch_up = CatchUp {
                                    frames: c.frames,
                                    last_rtp: base + c.frames as u64,
                                    last_wallclock: c.last_wallclock,
                                };
                                debug!(session = %v.id, frames = c.frames, "PLI answered from the GOP cache");
                            }
                        }
                    }
                    _ => {}
                },
                Err(e) => break Polled::Closed(format!("webrtc error: {e}")),
            }
        };
        let deadline = match polled {
            Polled::Timeout(t) => t,
            Polled::Closed(why) => break why,
        };
        if !rtc.is_alive() {
            break "closed".to_owned();
        }
        if connected.is_none() && started.elapsed() > CONNECT_TIMEOUT {
            break "no ICE/DTLS within 20 s".to_owned();
        }
        if connected.is_some() && last_rx.elapsed() > PEER_SILENCE {
            break "peer silent for 15 s".to_owned();
        }
        let wait = deadline.min(Instant::now() + Duration::from_secs(1));
        tokio::select! {
            d = inbox.recv() => match d {
                Some(d) => {
                    last_rx = d.at;
                    if let Err(e) = receive_input(&mut rtc, &d) {
                        debug!(session = %v.id, error = %e, "webrtc: bad datagram");
                    }
                }
                None => break "unregistered".to_owned(),
            },
            _ = v.queue.ready(), if connected.is_some() => {
                while let Some(f) = v.queue.pop() {
                    // The GOP's frames, squeezed to end at the last one's time.
                    let mut at = match (f.video && catch_up.frames > 0, catch_up.last_wallclock) {
                        (true, Some(w)) => {
                            catch_up.frames -= 1;
                            Some((catch_up.last_rtp.saturating_sub(catch_up.frames as u64), w))
                        }
                        _ => None,
                    };
                    if f.video {
                        let rtp = at.map_or(f.rtp_time, |a| a.0);
                        if let Some(last) = last_video_rtp.filter(|l| rtp <= *l) {
                            at = Some((last + 1, at.map_or(f.wallclock, |a| a.1)));
                        }
                        last_video_rtp = Some(at.map_or(f.rtp_time, |a| a.0));
                    }
                    if let Err(e) = write_frame(&mut rtc, &out, audio_rate, &f, at) {
                        debug!(session = %v.id, error = %e, "webrtc: frame not written");
                    } else {
                        v.counters.packets.fetch_add(1, Ordering::Relaxed);
                        v.counters.bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                    }
                    if !first_sent && f.video {
                        first_sent = true;
                        if let Some(c) = connected {
                            debug!(session = %v.id, after_dtls_ms = c.elapsed().as_millis() as u64, "first video frame written");
                        }
                    }
                }
                if v.queue.is_finished() {
                    break "stream ended".to_owned();
                }
            }
            _ = tokio::time::sleep_until(wait.into()) => {
                if let Err(e) = rtc.handle_input(Input::Timeout(Instant::now())) {
                    break format!("webrtc error: {e}");
                }
            }
            _ = v.stop.notified() => break "deleted".to_owned(),
        }
    };
    v.queue.close();
    rtc.disconnect();
    while let Ok(Output::Transmit(t)) = rtc.poll_output() {
        transmit(&v.module, &t).await;
    }
    v.module.unregister(v.key, &v.id);
    info!(session = %v.id, path = %v.path, reason = %why, dropped_frames = v.queue.dropped(), keyframe_requests, keyframes_resent, seconds = started.elapsed().as_secs(), "WHEP session ended");
}

/// How a WHIP publisher's RTP maps onto the hub stream's tracks, from the SDP answer.
#[derive(Debug, Clone)]
pub(crate) struct IngestPlan {
    /// Per track: media, encoding, clock rate, channels, fmtp, the stream's payload type.
    tracks: Vec<IngestTrack>,
    /// Incoming payload type → track index.
    by_pt: HashMap<u8, usize>,
}

#[derive(Debug, Clone)]
struct IngestTrack {
    media: &'static str,
    encoding: String,
    rtpmap: String,
    fmtp: Option<String>,
    pt: u8,
    ssrc: u32,
}

impl IngestPlan {
    /// Reads the answer: its first video m-line's H.264 or VP8 and its audio m-line's Opus.
    pub(crate) fn from_answer(answer: &str) -> Result<IngestPlan, String> {
        let mut tracks = Vec::new();
        let mut by_pt = HashMap::new();
        for section in answer.split("\nm=").skip(1) {
            let mut lines = section.lines();
            let head = lines.next().unwrap_or_default();
            let mut words = head.split_whitespace();
            let media = match words.next() {
                Some("video") => "video",
                Some("audio") => "audio",
                _ => continue,
            };
            if words.next() == Some("0") || tracks.iter().any(|t: &IngestTrack| t.media == media) {
                continue;
            }
            let mut rtpmap: HashMap<u8, String> = HashMap::new();
            let mut fmtp: HashMap<u8, String> = HashMap::new();
            for l in lines {
                let l = l.trim_end();
                if let Some(v) = l.strip_prefix("a=rtpmap:") {
                    if let Some((pt, rest)) = v.split_once(' ') {
                        if let Ok(pt) = pt.parse() {
                            rtpmap.insert(pt, rest.trim().to_owned());
                        }
                    }
                } else if let Some(v) = l.strip_prefix("a=fmtp:") {
                    if let Some((pt, rest)) = v.split_once(' ') {
                        if let Ok(pt) = pt.parse() {
                            fmtp.insert(pt, rest.trim().to_owned());
                        }
                    }
                }
            }
            let wanted: &[&str] = if media == "video" {
                &["H264", "VP8", "VP9", "AV1"]
            } else {
                &["OPUS"]
            };
            let enc_of = |pt: &u8| {
                rtpmap
                    .get(pt)
                    .and_then(|r| r.split('/').next())
                    .map(|e| e.to_ascii_uppercase())
            };
            let fmts: Vec<u8> = words.filter_map(|w| w.parse().ok()).collect();
            let Some(primary) = fmts
                .iter()
                .find(|pt| enc_of(pt).is_some_and(|e| wanted.contains(&e.as_str())))
            else {
                continue;
            };
            let encoding = enc_of(primary).unwrap_or_default();
            let index = tracks.len();
            for pt in &fmts {
                if enc_of(pt).as_deref() == Some(encoding.as_str()) {
                    by_pt.insert(*pt, index);
                }
            }
            tracks.push(IngestTrack {
                media,
                rtpmap: rtpmap.get(primary).cloned().unwrap_or_default(),
                fmtp: fmtp.get(primary).cloned(),
                encoding,
                pt: *primary,
                ssrc: rand::random(),
            });
        }
        if !tracks.iter().any(|t| t.media == "video") {
            return Err("the offer has no H.264, VP8, VP9 or AV1 video to publish".into());
        }
        Ok(IngestPlan { tracks, by_pt })
    }

    /// The presentation RTSP readers get (one track per m-line taken).
    pub(crate) fn presentation(&self) -> Result<Presentation, PresentationError> {
        let mut sdp = String::from(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=WHIP\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n",
        );
        for (i, t) in self.tracks.iter().enumerate() {
            sdp.push_str(&format!(
                "m={} 0 RTP/AVP {}\r\na=rtpmap:{} {}\r\n",
                t.media, t.pt, t.pt, t.rtpmap
            ));
            if let Some(f) = &t.fmtp {
                sdp.push_str(&format!("a=fmtp:{} {}\r\n", t.pt, f));
            }
            sdp.push_str(&format!("a=control:trackID={i}\r\n"));
        }
        Presentation::from_sdp(sdp.as_bytes())
    }

    /// `H264+OPUS` and the like, for the log.
    pub(crate) fn describe(&self) -> String {
        self.tracks
            .iter()
            .map(|t| t.encoding.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The RTP packet for the stream: the browser's payload under the track's payload
    /// type and SSRC, its sequence number and timestamp kept.
    fn packet(
        &self,
        pt: u8,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        at: Instant,
    ) -> Option<MediaPacket> {
        let track = *self.by_pt.get(&pt)?;
        let t = self.tracks.get(track)?;
        let mut d = Vec::with_capacity(12 + payload.len());
        d.push(0x80);
        d.push(if marker { 0x80 | t.pt } else { t.pt });
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&t.ssrc.to_be_bytes());
        d.extend_from_slice(payload);
        let data = Bytes::from(d);
        let header = parse_rtp(&data).ok()?;
        Some(MediaPacket {
            track,
            data,
            header,
            received_at: at,
        })
    }

    /// The stream's track for incoming payload type `pt`, and that track's SSRC.
    fn track_of(&self, pt: u8) -> Option<(usize, u32)> {
        let i = *self.by_pt.get(&pt)?;
        Some((i, self.tracks.get(i)?.ssrc))
    }

    fn is_video(&self, pt: u8) -> bool {
        self.by_pt
            .get(&pt)
            .and_then(|i| self.tracks.get(*i))
            .is_some_and(|t| t.media == "video")
    }
}

/// A WHIP publisher's task state.
pub(crate) struct Publisher {
    pub(crate) module: Arc<WebRtc>,
    pub(crate) id: String,
    pub(crate) key: u64,
    pub(crate) path: String,
    pub(crate) handle: SourceHandle,
    pub(crate) plan: IngestPlan,
    pub(crate) stop: Arc<tokio::sync::Notify>,
    pub(crate) counters: Arc<Counters>,
}

/// Runs a WHIP publisher until it leaves or is deleted; its stream ends with it.
pub(crate) async fn run_publisher(p: Publisher, mut rtc: Rtc, mut inbox: mpsc::Receiver<Datagram>) {
    let started = Instant::now();
    let stream = p.handle.stream().clone();
    let keyframes = Arc::new(tokio::sync::Notify::new());
    if let Some(feed) = stream.attached::<Feed>() {
        feed.set_keyframe_source(&keyframes);
    }
    let mut connected = false;
    let mut ready = false;
    let mut video_ssrc: Option<Ssrc> = None;
    let mut last_keyframe_request: Option<Instant> = None;
    let mut packets = 0u64;
    let mut last_rx = started;
    let mut last_sr: HashMap<usize, std::time::SystemTime> = HashMap::new();
    let why = loop {
        let polled = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break Polled::Timeout(t),
                Ok(Output::Transmit(t)) => transmit(&p.module, &t).await,
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        connected = true;
                        info!(session = %p.id, path = %p.path, setup_ms = started.elapsed().as_millis() as u64, "WHIP session connected (DTLS up)");
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        break Polled::Closed("peer disconnected".into());
                    }
                    Event::RtpPacket(pkt) => {
                        let pt = *pkt.header.payload_type;
                        if pkt.payload.is_empty() {
                            continue;
                        }
                        let at = pkt.timestamp;
                        let Some(mp) = p.plan.packet(
                            pt,
                            *pkt.seq_no as u16,
                            pkt.header.timestamp,
                            pkt.header.marker,
                            &pkt.payload,
                            at,
                        ) else {
                            continue;
                        };
                        if p.plan.is_video(pt) {
                            video_ssrc = Some(pkt.header.ssrc);
                        }
                        // The browser's Sender Reports, so that RTSP readers (and WHEP
                        // viewers) map both tracks to its one clock.
                        if let (Some(si), Some((track, ssrc))) =
                            (&pkt.last_sender_info, p.plan.track_of(pt))
                        {
                            if last_sr.get(&track) != Some(&si.ntp_time) {
                                last_sr.insert(track, si.ntp_time);
                                let unix = si
                                    .ntp_time
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap_or_default();
                                let info = sluice_rtp::rtcp::SenderInfo {
                                    ssrc,
                                    ntp: sluice_rtp::ntp::NtpTime::from_unix(unix),
                                    // Truncation is the RTP timestamp's 32-bit wrap.
                                    rtp_timestamp: si.rtp_time.numer() as u32,
                                    packet_count: si.sender_packet_count,
                                    octet_count: si.sender_octet_count,
                                };
                                stream.handle_sender_report(track, &info, at);
                            }
                        }
                        packets += 1;
                        p.counters.packets.fetch_add(1, Ordering::Relaxed);
                        p.counters
                            .bytes
                            .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                        stream.note_input(at);
                        stream.push_rtp(mp);
                        if !ready {
                            ready = true;
                            p.handle.set_ready();
                        }
                    }
                    _ => {}
                },
                Err(e) => break Polled::Closed(format!("webrtc error: {e}")),
            }
        };
        let deadline = match polled {
            Polled::Timeout(t) => t,
            Polled::Closed(why) => break why,
        };
        if !rtc.is_alive() {
            break "closed".to_owned();
        }
        if !connected && started.elapsed() > CONNECT_TIMEOUT {
            break "no ICE/DTLS within 20 s".to_owned();
        }
        if connected && last_rx.elapsed() > PEER_SILENCE {
            break "peer silent for 15 s".to_owned();
        }
        let mut wait = deadline.min(Instant::now() + Duration::from_secs(1));
        if let Some(t) = stream.poll_timeout() {
            wait = wait.min(t);
        }
        tokio::select! {
            d = inbox.recv() => match d {
                Some(d) => {
                    last_rx = d.at;
                    if let Err(e) = receive_input(&mut rtc, &d) {
                        debug!(session = %p.id, error = %e, "webrtc: bad datagram");
                    }
                }
                None => break "unregistered".to_owned(),
            },
            _ = keyframes.notified() => {
                let due = last_keyframe_request.is_none_or(|t| t.elapsed() >= KEYFRAME_INTERVAL);
                if let (true, Some(ssrc)) = (due, video_ssrc) {
                    if let Some(rx) = rtc.direct_api().stream_rx(&ssrc) {
                        rx.request_keyframe(KeyframeRequestKind::Pli);
                        last_keyframe_request = Some(Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(wait.into()) => {
                let now = Instant::now();
                stream.handle_timeout(now);
                if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                    break format!("webrtc error: {e}");
                }
            }
            _ = p.stop.notified() => break "deleted".to_owned(),
        }
    };
    rtc.disconnect();
    while let Ok(Output::Transmit(t)) = rtc.poll_output() {
        transmit(&p.module, &t).await;
    }
    p.module.unregister(p.key, &p.id);
    if !ready {
        warn!(session = %p.id, path = %p.path, "WHIP session ended before any media");
    }
    info!(session = %p.id, path = %p.path, reason = %why, packets, seconds = started.elapsed().as_secs(), "WHIP session ended");
    p.handle.end(sluice_hub::EndReason::SourceGone);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 102 103 104\r\na=mid:1\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\na=rtpmap:104 H264/90000\r\n";

    #[test]
    fn the_answer_gives_the_stream_its_tracks() {
        let plan = IngestPlan::from_answer(ANSWER).expect("plan");
        assert_eq!(plan.describe(), "OPUS+H264");
        let p = plan.presentation().expect("presentation");
        assert_eq!(p.tracks().len(), 2);
        assert_eq!(p.tracks()[1].encoding, "H264");
        assert!(p.tracks()[1]
            .fmtp
            .as_deref()
            .unwrap_or("")
            .contains("packetization-mode=1"));
        let at = Instant::now();
        let v = plan
            .packet(104, 7, 9000, true, &[0x65, 1], at)
            .expect("video");
        assert_eq!(
            (v.track, v.header.payload_type, v.header.marker),
            (1, 102, true)
        );
        assert!(
            plan.packet(103, 8, 9000, false, &[1], at).is_none(),
            "RTX is not media"
        );
        assert!(plan.is_video(102) && !plan.is_video(111));
        assert!(
            IngestPlan::from_answer("v=0\r\nm=audio 9 X 111\r\na=rtpmap:111 opus/48000/2\r\n")
                .is_err()
        );
    }
}
