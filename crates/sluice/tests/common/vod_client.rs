//! A raw RTSP reader session for on-demand (stored media) tests: DESCRIBE, SETUP of every
//! track over TCP interleaved, then PLAY/PAUSE with arbitrary headers while every RTP and
//! RTCP frame is kept (with its arrival time) — nothing received around a response is
//! discarded, so tests can see exactly which packets came before and after a PAUSE.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::rtsp_client::{addr_of, media_control_urls, Incoming, RtspClient, RtspResponse};

/// One received RTP packet.
#[derive(Debug, Clone)]
pub(crate) struct RtpPkt {
    /// Track index (interleaved channel / 2).
    pub track: usize,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub pt: u8,
    pub ssrc: u32,
    pub payload: Vec<u8>,
    pub at: Instant,
    /// The ONVIF replay header extension (profile 0xABAC): NTP time, flags (C/E/D/T =
    /// 0x80/0x40/0x20/0x10) and the PLAY's CSeq low byte.
    pub onvif: Option<(u64, u8, u8)>,
}

/// Something that arrived on the RTSP connection.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Rtp(RtpPkt),
    /// An RTCP compound packet containing a BYE, on `track`'s RTCP channel.
    Bye {
        track: usize,
        at: Instant,
    },
    /// Any other RTCP (Sender Reports).
    Rtcp {
        track: usize,
    },
}

/// One track of the described presentation.
#[derive(Debug, Clone)]
pub(crate) struct VodTrack {
    /// `video`, `audio`, ...
    pub media: String,
    /// Encoding name from `a=rtpmap`, e.g. `H264`, `MPEG4-GENERIC`.
    pub encoding: String,
    pub control: String,
}

/// Parsed `RTP-Info` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RtpInfoEntry {
    pub track: usize,
    pub seq: Option<u16>,
    pub rtptime: Option<u32>,
}

pub(crate) struct VodSession {
    pub client: RtspClient,
    /// The aggregate URL (Content-Base) for PLAY/PAUSE/TEARDOWN.
    pub base: String,
    pub session: String,
    pub sdp: String,
    pub tracks: Vec<VodTrack>,
    cseq: u32,
    queue: VecDeque<Event>,
}

impl VodSession {
    /// DESCRIBE `url` and SETUP every track over TCP (track i on channels 2i, 2i+1).
    pub(crate) fn open(url: &str) -> Result<VodSession, String> {
        let addr = addr_of(url).ok_or_else(|| format!("bad url {url}"))?;
        let client = RtspClient::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let mut s = VodSession {
            client,
            base: url.to_string(),
            session: String::new(),
            sdp: String::new(),
            tracks: Vec::new(),
            cseq: 0,
            queue: VecDeque::new(),
        };
        let r = s.request("DESCRIBE", url, &[("Accept", "application/sdp")])?;
        if r.status != 200 {
            return Err(format!("DESCRIBE {url}: {} {}", r.status, r.reason));
        }
        s.sdp = r.body_str();
        s.base = r.header("Content-Base").unwrap_or(url).to_string();
        let controls = media_control_urls(&s.sdp, &s.base);
        let mut media = Vec::new();
        let mut enc = Vec::new();
        for line in s.sdp.lines() {
            let line = line.trim();
            if let Some(m) = line.strip_prefix("m=") {
                media.push(m.split(' ').next().unwrap_or("").to_string());
                enc.push(String::new());
            } else if let Some(r) = line.strip_prefix("a=rtpmap:") {
                if let (Some(e), Some(name)) = (enc.last_mut(), r.split_whitespace().nth(1)) {
                    *e = name.split('/').next().unwrap_or("").to_string();
                }
            }
        }
        s.tracks = controls
            .into_iter()
            .zip(media.into_iter().zip(enc))
            .map(|(control, (media, encoding))| VodTrack {
                media,
                encoding,
                control,
            })
            .collect();
        for i in 0..s.tracks.len() {
            let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1);
            let control = s.tracks[i].control.clone();
            let mut headers = vec![("Transport", transport.as_str())];
            let sess = s.session.clone();
            if !sess.is_empty() {
                headers.push(("Session", sess.as_str()));
            }
            let r = s.request("SETUP", &control, &headers)?;
            if r.status != 200 {
                return Err(format!("SETUP {control}: {} {}", r.status, r.reason));
            }
            s.session = r
                .session_id()
                .ok_or_else(|| "SETUP response without Session".to_string())?;
        }
        Ok(s)
    }

    /// Index of the first video track.
    pub(crate) fn video(&self) -> usize {
        self.tracks
            .iter()
            .position(|t| t.media == "video")
            .expect("a video track")
    }

    /// Sends a request and waits for its response; interleaved frames arriving meanwhile
    /// are queued for [`VodSession::next_event`].
    pub(crate) fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<RtspResponse, String> {
        self.cseq += 1;
        let mut req = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: sluice-it-vod\r\n",
            self.cseq
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.client
            .send_raw(req.as_bytes())
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .client
                .next_incoming(left)
                .map_err(|e| format!("{method}: {e}"))?
            {
                Some(Incoming::Response(r)) => return Ok(r),
                Some(Incoming::Data(d)) => {
                    if let Some(ev) = decode(d.channel, &d.data, Instant::now()) {
                        self.queue.push_back(ev);
                    }
                }
                None => return Err(format!("{method}: no response within 10 s")),
            }
        }
    }

    /// PLAY (aggregate) with the session and `headers`.
    pub(crate) fn play(&mut self, headers: &[(&str, &str)]) -> RtspResponse {
        self.aggregate("PLAY", headers)
    }

    /// PAUSE (aggregate).
    pub(crate) fn pause(&mut self) -> RtspResponse {
        self.aggregate("PAUSE", &[])
    }

    pub(crate) fn teardown(&mut self) -> RtspResponse {
        self.aggregate("TEARDOWN", &[])
    }

    fn aggregate(&mut self, method: &str, headers: &[(&str, &str)]) -> RtspResponse {
        let session = self.session.clone();
        let mut h = vec![("Session", session.as_str())];
        h.extend_from_slice(headers);
        let base = self.base.clone();
        self.request(method, &base, &h)
            .unwrap_or_else(|e| panic!("{method} {base}: {e}"))
    }

    /// Drops everything queued so far.
    pub(crate) fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// The next RTP/RTCP event, `None` after `timeout` without one.
    pub(crate) fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(ev) = self.queue.pop_front() {
            return Some(ev);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.next_incoming(left) {
                Ok(Some(Incoming::Data(d))) => {
                    if let Some(ev) = decode(d.channel, &d.data, Instant::now()) {
                        return Some(ev);
                    }
                }
                Ok(Some(Incoming::Response(r))) => {
                    panic!("unexpected RTSP response {r:?}")
                }
                Ok(None) => return None,
                Err(e) => panic!("connection failed while reading media: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Collects events for `dur` or, with `until_bye`, until a BYE arrives (whichever is
    /// first). Returns the RTP packets and the BYE's arrival time.
    pub(crate) fn collect(&mut self, dur: Duration, until_bye: bool) -> Collected {
        let deadline = Instant::now() + dur;
        let mut c = Collected::default();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left.min(Duration::from_millis(200))) {
                Some(Event::Rtp(p)) => c.packets.push(p),
                Some(Event::Bye { at, .. }) => {
                    c.bye_at.get_or_insert(at);
                    if until_bye {
                        break;
                    }
                }
                Some(Event::Rtcp { .. }) | None => {}
            }
        }
        c
    }
}

/// Packets collected by [`VodSession::collect`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Collected {
    pub packets: Vec<RtpPkt>,
    pub bye_at: Option<Instant>,
}

impl Collected {
    pub(crate) fn track(&self, track: usize) -> impl Iterator<Item = &RtpPkt> {
        self.packets.iter().filter(move |p| p.track == track)
    }

    /// Complete frames of `track` (packets with the marker bit).
    pub(crate) fn frames(&self, track: usize) -> usize {
        self.track(track).filter(|p| p.marker).count()
    }

    /// The distinct RTP timestamps of `track` in arrival order (one per frame).
    pub(crate) fn frame_timestamps(&self, track: usize) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for p in self.track(track) {
            if out.last() != Some(&p.ts) {
                out.push(p.ts);
            }
        }
        out
    }

    /// The first packet of each frame of `track` (by timestamp change).
    pub(crate) fn frame_starts(&self, track: usize) -> Vec<&RtpPkt> {
        let mut out: Vec<&RtpPkt> = Vec::new();
        for p in self.track(track) {
            if out.last().map(|l| l.ts) != Some(p.ts) {
                out.push(p);
            }
        }
        out
    }
}

fn decode(channel: u8, data: &[u8], at: Instant) -> Option<Event> {
    let track = usize::from(channel / 2);
    if channel % 2 == 1 {
        return Some(if rtcp_has_bye(data) {
            Event::Bye { track, at }
        } else {
            Event::Rtcp { track }
        });
    }
    let p = parse_rtp(data)?;
    Some(Event::Rtp(RtpPkt { track, at, ..p }))
}

/// Parses an RTP packet (header fields and payload; `track`/`at` left default).
pub(crate) fn parse_rtp(data: &[u8]) -> Option<RtpPkt> {
    if data.len() < 12 || data[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(data[0] & 0x0f);
    let mut off = 12 + 4 * cc;
    let mut onvif = None;
    if data[0] & 0x10 != 0 {
        if data.len() < off + 4 {
            return None;
        }
        let words = usize::from(u16::from_be_bytes([data[off + 2], data[off + 3]]));
        if data[off..off + 4] == [0xAB, 0xAC, 0, 3] && data.len() >= off + 16 {
            let e = &data[off + 4..off + 16];
            let ntp = u64::from_be_bytes(e[..8].try_into().ok()?);
            onvif = Some((ntp, e[8], e[9]));
        }
        off += 4 + 4 * words;
    }
    let mut end = data.len();
    if data[0] & 0x20 != 0 {
        let pad = usize::from(*data.last()?);
        end = end.checked_sub(pad)?;
    }
    if off > end {
        return None;
    }
    Some(RtpPkt {
        track: 0,
        seq: u16::from_be_bytes([data[2], data[3]]),
        ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        marker: data[1] & 0x80 != 0,
        pt: data[1] & 0x7f,
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        payload: data[off..end].to_vec(),
        at: Instant::now(),
        onvif,
    })
}

/// Whether an RTCP compound packet contains a BYE (PT 203).
pub(crate) fn rtcp_has_bye(mut data: &[u8]) -> bool {
    while data.len() >= 4 {
        if data[1] == 203 {
            return true;
        }
        let len = (usize::from(u16::from_be_bytes([data[2], data[3]])) + 1) * 4;
        if len > data.len() {
            return false;
        }
        data = &data[len..];
    }
    false
}

/// H.264 NAL unit types an RTP payload carries at its start: the NAL type itself, the
/// aggregated units of a STAP-A, or the fragmented unit's type of a starting FU-A.
pub(crate) fn h264_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&first) = payload.first() else {
        return Vec::new();
    };
    match first & 0x1f {
        24 => {
            let mut out = Vec::new();
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if n == 0 || rest.len() < 2 + n {
                    break;
                }
                out.push(rest[2] & 0x1f);
                rest = &rest[2 + n..];
            }
            out
        }
        28 if payload.len() >= 2 && payload[1] & 0x80 != 0 => vec![payload[1] & 0x1f],
        28 => Vec::new(),
        t => vec![t],
    }
}

/// Whether an H.264 RTP payload starts a keyframe (carries SPS or an IDR slice start).
pub(crate) fn h264_starts_keyframe(payload: &[u8]) -> bool {
    h264_nal_types(payload).iter().any(|&t| t == 5 || t == 7)
}

/// Parses `RTP-Info: url=.../trackID=0;seq=1;rtptime=2,url=...`.
pub(crate) fn parse_rtp_info(v: &str) -> Vec<RtpInfoEntry> {
    // URLs contain no ',' here; entries are separated by ','.
    v.split(',')
        .filter_map(|entry| {
            let mut track = None;
            let mut seq = None;
            let mut rtptime = None;
            for part in entry.split(';') {
                let (k, val) = part.trim().split_once('=')?;
                match k.trim() {
                    "url" => {
                        track = val
                            .rsplit_once("trackID=")
                            .and_then(|(_, n)| n.trim_end_matches('/').parse().ok())
                    }
                    "seq" => seq = val.trim().parse().ok(),
                    "rtptime" => rtptime = val.trim().parse().ok(),
                    _ => {}
                }
            }
            Some(RtpInfoEntry {
                track: track?,
                seq,
                rtptime,
            })
        })
        .collect()
}

/// RTP-Info of `track` from a PLAY response (panics with the response if absent).
pub(crate) fn rtp_info_of(r: &RtspResponse, track: usize) -> RtpInfoEntry {
    let v = r
        .header("RTP-Info")
        .unwrap_or_else(|| panic!("PLAY response without RTP-Info: {r:?}"));
    parse_rtp_info(v)
        .into_iter()
        .find(|e| e.track == track)
        .unwrap_or_else(|| panic!("RTP-Info without trackID={track}: {v:?}"))
}

/// Parses `Range: npt=START-[END]` into (start, end).
pub(crate) fn parse_npt_range(v: &str) -> Option<(f64, Option<f64>)> {
    let rest = v.trim().strip_prefix("npt=")?;
    let (a, b) = rest.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let b = b.trim();
    let end = if b.is_empty() { None } else { b.parse().ok() };
    Some((start, end))
}

/// `Range` of a response, parsed (panics with the response if absent or malformed).
pub(crate) fn range_of(r: &RtspResponse) -> (f64, Option<f64>) {
    r.header("Range")
        .and_then(parse_npt_range)
        .unwrap_or_else(|| panic!("response without a parsable npt Range: {r:?}"))
}

/// Signed difference `a - b` of two RTP timestamps (wrapping).
pub(crate) fn ts_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// Signed difference `a - b` of two sequence numbers (wrapping).
pub(crate) fn seq_diff(a: u16, b: u16) -> i32 {
    i32::from(a.wrapping_sub(b) as i16)
}
