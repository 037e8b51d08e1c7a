//! Sans-IO RTSP client session (RFC 2326), in the style of quinn-proto: the
//! caller owns the TCP connection, feeds received bytes and the current time
//! in, and takes bytes to write, events and the next timer deadline out.
//!
//! The session runs `OPTIONS` → `DESCRIBE` (play) or `ANNOUNCE` (record) →
//! `SETUP` per media → `PLAY`/`RECORD`, answers `401` once with
//! credentials (and again on a Digest `stale=true`), then sends keep-alives
//! at half the session timeout until [`ClientSession::close`] sends
//! `TEARDOWN`. Server quirks it tolerates are collected in [`quirks`].
//!
//! ```
//! use std::time::Instant;
//! use sluice_rtsp::client::{ClientConfig, ClientMode, ClientSession, ClientTransport};
//!
//! let now = Instant::now();
//! let config = ClientConfig {
//!     url: "rtsp://user:pw@camera.example/stream".into(),
//!     credentials: None,
//!     transport: ClientTransport::Tcp,
//!     user_agent: "sluice".into(),
//!     mode: ClientMode::Play,
//! };
//! let mut session = ClientSession::new(config, now).unwrap();
//! let request = session.poll_transmit().unwrap();
//! assert!(request.starts_with(b"OPTIONS rtsp://camera.example/stream RTSP/1.0\r\n"));
//! ```

pub mod quirks;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::auth::{parse_www_authenticate, AuthError, ClientAuth, Credentials};
use crate::{
    interleaved, DecodeError, Decoder, Frame, LowerTransport, Message, Method, Range, Request,
    Response, RtpInfo, StatusCode, TransportMode, TransportSpec,
};

/// Default time to wait for a response before failing.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a request is resent after a Digest `stale=true` answer.
const MAX_STALE_RETRIES: u8 = 3;

/// Lower transport requested for media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientTransport {
    /// RTP/RTCP interleaved on the RTSP connection; track `i` asks for
    /// channels `2i`/`2i+1`.
    Tcp,
    /// RTP/RTCP over UDP on ports the caller has bound: track `i` uses
    /// `rtp_port + 2i` (RTP) and `rtp_port + 2i + 1` (RTCP).
    Udp {
        /// First client RTP port (even by convention).
        rtp_port: u16,
    },
}

/// Whether the session receives (play) or publishes (record) media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// `DESCRIBE` then `PLAY`.
    Play,
    /// `ANNOUNCE` this SDP then `RECORD`.
    Record {
        /// Session description to announce.
        sdp: String,
    },
}

/// Client session configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `rtsp://[user:pass@]host[:port]/path`; credentials in the URL are
    /// percent-decoded and used when [`ClientConfig::credentials`] is `None`.
    pub url: String,
    /// Credentials for `401` answers (take precedence over the URL's).
    pub credentials: Option<Credentials>,
    /// Lower transport for media.
    pub transport: ClientTransport,
    /// `User-Agent` header value (omitted when empty).
    pub user_agent: String,
    /// Play or record.
    pub mode: ClientMode,
}

/// Why a client session failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum ClientError {
    /// The configured URL is not a usable `rtsp://` URL.
    #[error("invalid RTSP URL {0:?}")]
    InvalidUrl(String),
    /// The byte stream from the server could not be decoded.
    #[error("undecodable data from server: {0}")]
    Decode(#[from] DecodeError),
    /// The server answered a request with an error status.
    #[error("{method} failed: {status} {reason}")]
    Status {
        /// Request method.
        method: String,
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
    /// The server asked for authentication that cannot be provided.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// No response arrived in time.
    #[error("{method} timed out")]
    Timeout {
        /// Request method.
        method: String,
    },
    /// A response was successful but unusable (missing/invalid header or SDP).
    #[error("bad {method} response: {reason}")]
    BadResponse {
        /// Request method.
        method: String,
        /// What was wrong.
        reason: String,
    },
}

/// What the caller must know about.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// DESCRIBE answered (play mode).
    Described {
        /// The SDP body.
        sdp: Bytes,
        /// Base URL controls were resolved against (Content-Base,
        /// Content-Location or the request URL).
        base: String,
        /// Resolved control URL per media, in SDP order (track index).
        controls: Vec<String>,
        /// The response's `Server` header.
        server: Option<String>,
    },
    /// Transport negotiated for a track.
    TrackSetup {
        /// Track index.
        track: usize,
        /// The server's transport (for TCP, `interleaved` holds the channels
        /// in use — the server's if it changed them).
        transport: TransportSpec,
        /// SSRC announced by the server.
        ssrc: Option<u32>,
    },
    /// PLAY (or RECORD) answered: media flows.
    Playing {
        /// `RTP-Info` per track, when given.
        rtp_info: Vec<Option<RtpInfo>>,
        /// The `Range` header, when given and parseable.
        range: Option<Range>,
    },
    /// An interleaved RTP packet.
    Rtp {
        /// Track index.
        track: usize,
        /// Packet.
        data: Bytes,
    },
    /// An interleaved RTCP packet.
    Rtcp {
        /// Track index.
        track: usize,
        /// Packet.
        data: Bytes,
    },
    /// The session failed; nothing more will happen.
    Failed(ClientError),
    /// The session ended (TEARDOWN answered or timed out, or closed before
    /// any SETUP).
    Closed,
}

/// Whether a [`Datagram`] carries RTP or RTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// RTP.
    Rtp,
    /// RTCP.
    Rtcp,
}

/// A packet the caller must send on its UDP socket (UDP publishing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Track index.
    pub track: usize,
    /// RTP or RTCP.
    pub kind: PacketKind,
    /// Server port from the SETUP response's `server_port`, if known.
    pub destination_port: Option<u16>,
    /// Packet.
    pub data: Bytes,
}

/// What a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Options,
    Describe,
    Announce,
    Setup(usize),
    Play,
    Record,
    KeepAlive,
    Teardown,
}

/// An outstanding request.
#[derive(Debug)]
struct Pending {
    cseq: u32,
    step: Step,
    /// The request without CSeq/Session/Authorization/User-Agent, for resending.
    template: Request,
    deadline: Instant,
    /// How many times it was resent after a 401.
    auth_attempts: u8,
}

/// Session lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Handshake requests in progress.
    Starting,
    /// PLAY/RECORD answered.
    Streaming,
    /// TEARDOWN sent.
    TearingDown,
    /// Finished (Closed or Failed emitted).
    Done,
}

/// Per-track state.
#[derive(Clone, Debug)]
struct Track {
    control: String,
    transport: Option<TransportSpec>,
    channels: Option<(u8, u8)>,
    ssrc: Option<u32>,
}

/// A sans-IO RTSP client session. See the [module docs](self).
#[derive(Debug)]
pub struct ClientSession {
    url: String,
    credentials: Option<Credentials>,
    transport: ClientTransport,
    user_agent: String,
    mode: ClientMode,
    request_timeout: Duration,

    decoder: Decoder,
    inbuf: BytesMut,
    transmit: VecDeque<Bytes>,
    datagrams: VecDeque<Datagram>,
    events: VecDeque<ClientEvent>,

    phase: Phase,
    next_cseq: u32,
    pending: Vec<Pending>,
    auth: Option<ClientAuth>,
    public: Option<Vec<String>>,
    aggregate: String,
    tracks: Vec<Track>,
    session_id: Option<String>,
    session_timeout: Duration,
    next_keepalive: Option<Instant>,
    keepalive_method: Method,
    /// Latest time handed in, for requests queued by `close`.
    last_now: Instant,
}

/// Splits credentials out of an RTSP URL: `(clean_url, credentials)`.
fn split_url(url: &str) -> Result<(String, Option<Credentials>), ClientError> {
    let bad = || ClientError::InvalidUrl(url.chars().take(80).collect());
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme_l = scheme.to_ascii_lowercase();
    if !matches!(scheme_l.as_str(), "rtsp" | "rtsps" | "rtspt") {
        return Err(bad());
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (
            authority.get(..i),
            authority.get(i + 1..).unwrap_or_default(),
        ),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with(':') {
        return Err(bad());
    }
    let creds = userinfo.map(|u| {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        Credentials {
            username: percent_decode(user),
            password: percent_decode(pass),
        }
    });
    Ok((format!("{scheme}://{host}{path}"), creds))
}

/// Decodes `%XX` escapes (invalid escapes are kept verbatim).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ClientSession {
    /// A new session. Credentials are removed from the URL. The first
    /// request (`OPTIONS`) is queued for [`ClientSession::poll_transmit`]
    /// and its timeout starts at `now`; nothing is sent by this call.
    pub fn new(config: ClientConfig, now: Instant) -> Result<Self, ClientError> {
        let (url, url_creds) = split_url(&config.url)?;
        let mut s = ClientSession {
            aggregate: url.clone(),
            url,
            credentials: config.credentials.or(url_creds),
            transport: config.transport,
            user_agent: config.user_agent,
            mode: config.mode,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            decoder: Decoder::default(),
            inbuf: BytesMut::new(),
            transmit: VecDeque::new(),
            datagrams: VecDeque::new(),
            events: VecDeque::new(),
            phase: Phase::Starting,
            next_cseq: 1,
            pending: Vec::new(),
            auth: None,
            public: None,
            tracks: Vec::new(),
            session_id: None,
            session_timeout: quirks::DEFAULT_SESSION_TIMEOUT,
            next_keepalive: None,
            keepalive_method: Method::Options,
            last_now: now,
        };
        let req = Request::new(Method::Options, s.url.clone());
        s.send(req, Step::Options, now, 0);
        Ok(s)
    }

    /// Changes how long to wait for each response (default
    /// [`DEFAULT_REQUEST_TIMEOUT`], capped at one day); applies to requests
    /// sent afterwards.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout.min(Duration::from_secs(86_400));
    }

    /// The request URL without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The current session id, once a SETUP was answered.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The session timeout in force (from `Session: …;timeout=`).
    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// The SSRC last announced for `track` (SETUP `Transport` or PLAY
    /// `RTP-Info`).
    pub fn ssrc(&self, track: usize) -> Option<u32> {
        self.tracks.get(track).and_then(|t| t.ssrc)
    }

    /// Bytes read from the TCP connection (responses and, for TCP
    /// transport, interleaved frames), split anywhere.
    ///
    /// Returns an error (also reported as [`ClientEvent::Failed`]) when the
    /// stream cannot be decoded; the session is then over. Input after the
    /// session ended is ignored.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), ClientError> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        self.inbuf.extend_from_slice(data);
        loop {
            let frame = match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let err = ClientError::Decode(e);
                    self.fail(err.clone());
                    self.inbuf.clear();
                    return Err(err);
                }
            };
            match frame {
                Frame::Interleaved { channel, payload } => self.on_interleaved(channel, payload),
                Frame::Message(Message::Response(r)) => self.on_response(r, now),
                Frame::Message(Message::Request(r)) => self.on_server_request(&r),
            }
            if self.phase == Phase::Done {
                self.inbuf.clear();
                return Ok(());
            }
        }
    }

    /// Advances timers: fails on request timeouts, sends keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.last_now = self.last_now.max(now);
        if let Some(p) = self.pending.iter().find(|p| p.deadline <= now) {
            if p.step == Step::Teardown {
                self.finish_closed();
            } else {
                let method = p.template.method.to_string();
                self.fail(ClientError::Timeout { method });
            }
            return;
        }
        if self.phase == Phase::Streaming && self.next_keepalive.is_some_and(|t| t <= now) {
            let mut req = Request::new(self.keepalive_method.clone(), self.aggregate.clone());
            if req.method == Method::Options {
                req.uri = self.url.clone();
            }
            self.send(req, Step::KeepAlive, now, 0);
            self.next_keepalive = Some(now + self.keepalive_interval());
        }
    }

    /// Bytes to write to the TCP connection (requests, interleaved frames).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// UDP packets to send (from [`ClientSession::send_rtp`] with UDP
    /// transport).
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.pop_front()
    }

    /// Events for the caller.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let deadline = self.pending.iter().map(|p| p.deadline).min();
        match (deadline, self.next_keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queues interleaved RTCP on `track`'s RTCP channel (TCP transport).
    /// With UDP the caller sends RTCP itself; the call is then a no-op, as
    /// it is for an unknown or not yet set up track or an oversized packet.
    pub fn send_rtcp(&mut self, track: usize, data: &[u8]) {
        if let Some((_, ch)) = self.tracks.get(track).and_then(|t| t.channels) {
            self.send_interleaved(ch, data);
        }
    }

    /// Publisher: queues RTP for `track` — interleaved on the connection
    /// (TCP) or as a [`Datagram`] (UDP). Dropped for an unknown or not yet
    /// set up track, an oversized packet or a finished session.
    pub fn send_rtp(&mut self, track: usize, data: &[u8]) {
        if self.phase == Phase::Done {
            return;
        }
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if let Some((ch, _)) = t.channels {
            self.send_interleaved(ch, data);
        } else if let Some(spec) = &t.transport {
            self.datagrams.push_back(Datagram {
                track,
                kind: PacketKind::Rtp,
                destination_port: spec.server_port.map(|p| p.0),
                data: Bytes::copy_from_slice(data),
            });
        }
    }

    /// Graceful end: sends `TEARDOWN` if a session exists (then
    /// [`ClientEvent::Closed`] on its answer or timeout), else ends at once
    /// with [`ClientEvent::Closed`].
    pub fn close(&mut self) {
        if matches!(self.phase, Phase::Done | Phase::TearingDown) {
            return;
        }
        self.pending.clear();
        self.next_keepalive = None;
        if self.session_id.is_none() {
            self.finish_closed();
            return;
        }
        self.phase = Phase::TearingDown;
        let now = self.last_deadline_base();
        let req = Request::new(Method::Teardown, self.aggregate.clone());
        self.send(req, Step::Teardown, now, 0);
    }

    // ----- internals -----

    /// A time base for requests sent without a caller-provided `now`
    /// (`close`): the latest known timer reference.
    fn last_deadline_base(&self) -> Instant {
        self.last_now
    }

    fn keepalive_interval(&self) -> Duration {
        self.session_timeout / 2
    }

    fn send_interleaved(&mut self, channel: u8, data: &[u8]) {
        if self.phase == Phase::Done {
            return;
        }
        let mut out = BytesMut::new();
        if interleaved::encode(channel, data, &mut out).is_ok() {
            self.transmit.push_back(out.freeze());
        }
    }

    /// Adds the common headers, encodes and queues a request.
    fn send(&mut self, template: Request, step: Step, now: Instant, auth_attempts: u8) {
        self.last_now = now;
        let cseq = self.next_cseq;
        self.next_cseq = self.next_cseq.wrapping_add(1).max(1);
        let mut req = Request::new(template.method.clone(), template.uri.clone());
        req.headers.append("CSeq", cseq.to_string());
        for (n, v) in template.headers.iter() {
            req.headers.append(n, v);
        }
        let with_session = !matches!(step, Step::Options | Step::Describe | Step::Announce);
        if let (true, Some(id)) = (with_session, &self.session_id) {
            req.headers.append("Session", id.clone());
        }
        if let Some(auth) = &mut self.auth {
            req.headers.append(
                "Authorization",
                auth.authorization(req.method.as_str(), &req.uri),
            );
        }
        if !self.user_agent.is_empty() {
            req.headers.append("User-Agent", self.user_agent.clone());
        }
        req.body = template.body.clone();
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.transmit.push_back(out.freeze());
        self.pending.push(Pending {
            cseq,
            step,
            template,
            deadline: now + self.request_timeout,
            auth_attempts,
        });
    }

    fn fail(&mut self, e: ClientError) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        self.pending.clear();
        self.next_keepalive = None;
        self.events.push_back(ClientEvent::Failed(e));
    }

    fn finish_closed(&mut self) {
        self.phase = Phase::Done;
        self.pending.clear();
        self.next_keepalive = None;
        self.events.push_back(ClientEvent::Closed);
    }

    fn on_interleaved(&mut self, channel: u8, payload: Bytes) {
        for (i, t) in self.tracks.iter().enumerate() {
            match t.channels {
                Some((rtp, _)) if rtp == channel => {
                    self.events.push_back(ClientEvent::Rtp {
                        track: i,
                        data: payload,
                    });
                    return;
                }
                Some((_, rtcp)) if rtcp == channel => {
                    self.events.push_back(ClientEvent::Rtcp {
                        track: i,
                        data: payload,
                    });
                    return;
                }
                _ => {}
            }
        }
    }

    /// Server-to-client requests: `OPTIONS`/`GET_PARAMETER` pings get 200,
    /// anything else 501.
    fn on_server_request(&mut self, r: &Request) {
        let status = match r.method {
            Method::Options | Method::GetParameter => StatusCode::OK,
            _ => StatusCode::NOT_IMPLEMENTED,
        };
        let mut resp = Response::new(status);
        if let Some(c) = r.cseq() {
            resp.headers.append("CSeq", c.to_string());
        }
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        self.transmit.push_back(out.freeze());
    }

    fn on_response(&mut self, r: Response, now: Instant) {
        self.last_now = now;
        let idx = match r.cseq() {
            Some(c) => self.pending.iter().position(|p| p.cseq == c),
            None if quirks::match_without_cseq(self.pending.len()) => Some(0),
            None => None,
        };
        let Some(idx) = idx else {
            return; // unsolicited or stale response
        };
        let p = self.pending.remove(idx);
        if r.status == StatusCode::UNAUTHORIZED && p.step != Step::Teardown {
            self.on_unauthorized(p, &r, now);
            return;
        }
        if r.status.is_success() || p.step == Step::Teardown {
            if let Some(h) = r
                .headers
                .get("Session")
                .and_then(quirks::parse_session_lenient)
            {
                self.session_id = quirks::latest_session_id(self.session_id.take(), Some(&h));
                if matches!(p.step, Step::Setup(_)) {
                    self.session_timeout = quirks::session_timeout(h.timeout);
                }
            }
        }
        if !r.status.is_success() {
            self.on_error_status(p, &r);
            return;
        }
        match p.step {
            Step::Options => {
                self.public = r.headers.get("Public").map(parse_public);
                self.after_options(now);
            }
            Step::Describe => self.on_describe(&p, r, now),
            Step::Announce => {
                if let ClientMode::Record { sdp } = &self.mode {
                    let (session, media) = quirks::sdp_controls(sdp);
                    let base = self.url.clone();
                    self.set_tracks(&base, session.as_deref(), &media);
                }
                if self.tracks.is_empty() {
                    return self.bad(&p, "announced SDP has no media");
                }
                self.send_setup(0, now);
            }
            Step::Setup(i) => self.on_setup(&p, i, &r, now),
            Step::Play | Step::Record => self.on_play(&r, now),
            Step::KeepAlive => {}
            Step::Teardown => self.finish_closed(),
        }
    }

    fn bad(&mut self, p: &Pending, reason: &str) {
        self.fail(ClientError::BadResponse {
            method: p.template.method.to_string(),
            reason: reason.to_owned(),
        });
    }

    fn on_unauthorized(&mut self, p: Pending, r: &Response, now: Instant) {
        let status_err = |p: &Pending| ClientError::Status {
            method: p.template.method.to_string(),
            status: r.status.0,
            reason: r.reason.clone(),
        };
        let Some(creds) = self.credentials.clone() else {
            return self.fail(status_err(&p));
        };
        let challenges: Vec<_> = r
            .headers
            .get_all("WWW-Authenticate")
            .filter_map(|v| parse_www_authenticate(v).ok())
            .flatten()
            .collect();
        if challenges.is_empty() {
            return self.fail(ClientError::Auth(AuthError::NoSupportedChallenge(
                r.headers
                    .get("WWW-Authenticate")
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect(),
            )));
        }
        let stale = ClientAuth::is_stale(&challenges);
        let allowed = p.auth_attempts == 0 || (stale && p.auth_attempts <= MAX_STALE_RETRIES);
        if !allowed {
            return self.fail(status_err(&p));
        }
        let result = match &mut self.auth {
            Some(a) => a.update(&challenges),
            None => ClientAuth::new(creds, &challenges).map(|a| self.auth = Some(a)),
        };
        if let Err(e) = result {
            return self.fail(ClientError::Auth(e));
        }
        self.send(p.template, p.step, now, p.auth_attempts.saturating_add(1));
    }

    fn on_error_status(&mut self, p: Pending, r: &Response) {
        match p.step {
            Step::Options if !quirks::options_failure_is_fatal(r.status.0) => {
                self.after_options(self.last_now)
            }
            Step::Teardown => self.finish_closed(),
            Step::KeepAlive
                if r.status != StatusCode::SESSION_NOT_FOUND
                    && p.template.method == Method::GetParameter =>
            {
                // Advertised but refused: fall back to OPTIONS pings.
                self.keepalive_method = Method::Options;
            }
            Step::KeepAlive if r.status != StatusCode::SESSION_NOT_FOUND => {}
            _ => self.fail(ClientError::Status {
                method: p.template.method.to_string(),
                status: r.status.0,
                reason: r.reason.clone(),
            }),
        }
    }

    fn after_options(&mut self, now: Instant) {
        if self
            .public
            .as_ref()
            .is_some_and(|p| p.iter().any(|m| m == "GET_PARAMETER"))
        {
            self.keepalive_method = Method::GetParameter;
        }
        match &self.mode {
            ClientMode::Play => {
                let mut req = Request::new(Method::Describe, self.url.clone());
                req.headers.append("Accept", "application/sdp");
                self.send(req, Step::Describe, now, 0);
            }
            ClientMode::Record { sdp } => {
                let mut req = Request::new(Method::Announce, self.url.clone());
                req.headers.append("Content-Type", "application/sdp");
                req.body = Bytes::from(sdp.clone());
                self.send(req, Step::Announce, now, 0);
            }
        }
    }

    fn set_tracks(&mut self, base: &str, session: Option<&str>, media: &[Option<String>]) {
        self.aggregate = quirks::join_control(base, session);
        self.tracks = media
            .iter()
            .map(|c| Track {
                control: quirks::join_control(base, c.as_deref()),
                transport: None,
                channels: None,
                ssrc: None,
            })
            .collect();
    }

    fn on_describe(&mut self, p: &Pending, r: Response, now: Instant) {
        let Ok(text) = std::str::from_utf8(&r.body) else {
            return self.bad(p, "SDP is not UTF-8");
        };
        let base = quirks::control_base(
            r.headers.get("Content-Base"),
            r.headers.get("Content-Location"),
            &self.url,
        );
        let (session, media) = quirks::sdp_controls(text);
        if media.is_empty() {
            return self.bad(p, "SDP has no media");
        }
        self.set_tracks(&base, session.as_deref(), &media);
        self.events.push_back(ClientEvent::Described {
            sdp: r.body.clone(),
            base,
            controls: self.tracks.iter().map(|t| t.control.clone()).collect(),
            server: r.headers.get("Server").map(str::to_owned),
        });
        self.send_setup(0, now);
    }

    /// The transport-spec requested for track `i`.
    fn requested_transport(&self, i: usize) -> Option<TransportSpec> {
        let mut spec = TransportSpec {
            profile: "RTP/AVP".into(),
            unicast: true,
            ..Default::default()
        };
        match self.transport {
            ClientTransport::Tcp => {
                let ch = u8::try_from(i.checked_mul(2)?).ok().filter(|c| *c < 255)?;
                spec.lower = Some(LowerTransport::Tcp);
                spec.interleaved = Some((ch, ch + 1));
            }
            ClientTransport::Udp { rtp_port } => {
                let p = u16::try_from(i.checked_mul(2)?)
                    .ok()
                    .and_then(|o| rtp_port.checked_add(o))
                    .filter(|p| *p < u16::MAX)?;
                spec.client_port = Some((p, p + 1));
            }
        }
        if matches!(self.mode, ClientMode::Record { .. }) {
            spec.mode = Some(TransportMode::Record);
        }
        Some(spec)
    }

    fn send_setup(&mut self, i: usize, now: Instant) {
        let Some(spec) = self.requested_transport(i) else {
            return self.fail(ClientError::BadResponse {
                method: "SETUP".into(),
                reason: format!("too many tracks for the transport ({})", self.tracks.len()),
            });
        };
        let control = self
            .tracks
            .get(i)
            .map(|t| t.control.clone())
            .unwrap_or_default();
        let mut req = Request::new(Method::Setup, control);
        req.headers.append("Transport", spec.to_string());
        self.send(req, Step::Setup(i), now, 0);
    }

    fn on_setup(&mut self, p: &Pending, i: usize, r: &Response, now: Instant) {
        let requested = self.requested_transport(i).unwrap_or_default();
        let got = r
            .headers
            .get("Transport")
            .and_then(quirks::parse_transport_lenient);
        if requested.is_tcp() && got.as_ref().is_some_and(|t| !t.is_tcp()) {
            return self.bad(p, "server chose UDP for a TCP request");
        }
        let mut spec = got.unwrap_or_else(|| requested.clone());
        let channels = requested.interleaved.map(|req| {
            let ch = quirks::interleaved_channels(req, Some(&spec));
            spec.interleaved = Some(ch);
            ch
        });
        let ssrc = spec.ssrc;
        if let Some(t) = self.tracks.get_mut(i) {
            t.channels = channels;
            t.transport = Some(spec.clone());
            t.ssrc = ssrc;
        }
        self.events.push_back(ClientEvent::TrackSetup {
            track: i,
            transport: spec,
            ssrc,
        });
        if i + 1 < self.tracks.len() {
            return self.send_setup(i + 1, now);
        }
        let req = match self.mode {
            ClientMode::Play => {
                let mut req = Request::new(Method::Play, self.aggregate.clone());
                req.headers.append("Range", "npt=0.000-");
                (req, Step::Play)
            }
            ClientMode::Record { .. } => (
                Request::new(Method::Record, self.aggregate.clone()),
                Step::Record,
            ),
        };
        self.send(req.0, req.1, now, 0);
    }

    fn on_play(&mut self, r: &Response, now: Instant) {
        let controls: Vec<String> = self.tracks.iter().map(|t| t.control.clone()).collect();
        let entries = r
            .headers
            .get("RTP-Info")
            .map(quirks::parse_rtp_info_lenient)
            .unwrap_or_default();
        let matched = quirks::match_rtp_info(&entries, &controls);
        let mut rtp_info = Vec::with_capacity(controls.len());
        for (t, e) in self.tracks.iter_mut().zip(matched) {
            rtp_info.push(e.map(|e| {
                if e.ssrc.is_some() {
                    t.ssrc = e.ssrc;
                }
                RtpInfo {
                    url: e.url,
                    seq: e.seq,
                    rtptime: e.rtptime,
                }
            }));
        }
        let range = r.headers.get("Range").and_then(|v| Range::parse(v).ok());
        self.phase = Phase::Streaming;
        self.next_keepalive = Some(now + self.keepalive_interval());
        self.events
            .push_back(ClientEvent::Playing { rtp_info, range });
    }
}

/// Parses a `Public` header into uppercase method names.
fn parse_public(v: &str) -> Vec<String> {
    v.split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}
