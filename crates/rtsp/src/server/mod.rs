//! Sans-IO RTSP server connection, in the style of quinn-proto's `Connection`: the
//! caller owns the socket and the clock, hands requests and the current time in, and
//! takes encoded responses, [`Action`]s and the next timer deadline out.
//!
//! [`ServerConnection`] takes every RTSP decision for one client connection: the version
//! and CSeq checks, the method × state table ([`table`]), URL → path/track resolution
//! ([`url`]), authentication through an injected [`Authenticator`], session ownership
//! (a session belongs to the connection *and* the user that created it; anything else
//! is 454 and never adopted), transport negotiation and interleaved channel allocation
//! ([`transport`]), and the `Transport`, `Session`, `Range`, `Scale` and `RTP-Info`
//! replies, all built from the crate's typed headers. Session ids come from an injected
//! [`IdSource`] so tests are deterministic.
//!
//! What only the server knows (does a path exist and what is its SDP, may this
//! publisher take the path, can this many sessions exist, where does a PLAY start) the
//! connection asks as an [`Action::Ask`] carrying a [`Token`]; the glue answers with
//! the matching `answer_*` method, after which the response becomes pollable. Requests
//! are handled strictly in order: while a question is outstanding, later requests
//! (pipelining) wait inside the connection, so responses leave in request order.
//!
//! # Method taxonomy
//!
//! - getters (`sessions`, `session`, `channel`, `is_waiting`, …) read state;
//! - `handle_*` feed an event in: [`ServerConnection::handle_request`],
//!   [`ServerConnection::handle_timeout`], [`ServerConnection::handle_activity`],
//!   [`ServerConnection::handle_session_activity`], [`ServerConnection::handle_publisher_replaced`],
//!   [`ServerConnection::handle_decode_error`], [`ServerConnection::handle_close`];
//! - `answer_*` answer an [`Action::Ask`];
//! - `poll_*` take output: [`ServerConnection::poll_transmit`],
//!   [`ServerConnection::poll_action`], [`ServerConnection::poll_timeout`].
//!
//! # Order to poll
//!
//! After every `handle_*` or `answer_*` call, drain in this order: `poll_transmit`
//! until `None` (write the bytes), then `poll_action` until `None` (execute each; an
//! `Ask` is answered now or later), then re-arm the timer with `poll_timeout`. Draining
//! responses before actions matters for PLAY: the glue should open a new reader's media
//! only after the PLAY response is written, and a TEARDOWN's 200 goes out before the
//! session's resources are torn down.
//!
//! # The glue loop
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use sluice_rtsp::server::{Action, AllowAll, Question, Refusal, ServerConfig, ServerConnection};
//! use sluice_rtsp::{Decoder, Frame, Message, StatusCode};
//!
//! let now = Instant::now();
//! let config = ServerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
//! let mut conn = ServerConnection::new(config, Box::new(AllowAll), Box::new(|| 7u64), now);
//! let mut decoder = Decoder::default();
//! let mut inbuf = BytesMut::from(&b"DESCRIBE rtsp://h/nowhere RTSP/1.0\r\nCSeq: 1\r\n\r\n"[..]);
//! // read → decode → handle → execute actions → write
//! while let Ok(Some(frame)) = decoder.decode(&mut inbuf) {
//!     if let Frame::Message(Message::Request(req)) = frame {
//!         conn.handle_request(now, req);
//!     }
//!     loop {
//!         let mut progressed = false;
//!         while let Some(bytes) = conn.poll_transmit() {
//!             assert!(bytes.starts_with(b"RTSP/1.0 404"));
//!             progressed = true;
//!         }
//!         while let Some(action) = conn.poll_action() {
//!             progressed = true;
//!             if let Action::Ask { token, question: Question::Describe { .. } } = action {
//!                 let refusal = Refusal::new(StatusCode::NOT_FOUND, "no stream");
//!                 conn.answer_describe(token, Err(refusal)).unwrap();
//!             }
//!         }
//!         if !progressed {
//!             break;
//!         }
//!     }
//! }
//! assert_eq!(conn.poll_timeout(), None); // no session, no timer
//! ```

pub mod sessions;
pub mod table;
pub mod transport;
pub mod url;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::vec_map::VecMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::client::quirks::sdp_controls;
use crate::server_session::{Role, ServerSession, State, Transition, MAX_TRACKS};
use crate::{
    format_rtp_info, parse_transport, redact_credentials, ClockRange, DecodeError, Frames, Method,
    Range, ReplayOptions, Request, Response, RtpInfo, Scale, SessionHeader, StatusCode,
    TransportMode, Version,
};

pub use sessions::SessionInfo;
pub use transport::{TrackTransport, TransportKind, TransportPolicy};

use sessions::Entry;
use table::Need;
use transport::{negotiate, Offer};
use url::{base_url, request_path, split_track, UrlError};

/// The principal of an unauthenticated client (and of sessions anyone may use).
pub const ANYONE: &str = "any";

/// Requests that may wait behind an unanswered question; past this, the newest is
/// refused with 503 so a client cannot make the connection buffer without bound.
pub const MAX_QUEUED_REQUESTS: usize = 32;

/// The default `Server` header value.
pub const SERVER_NAME: &str = concat!("Sluice/", env!("CARGO_PKG_VERSION"));

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The client's address: UDP media only ever goes there.
    pub peer: IpAddr,
    /// Whether this connection is RTSPS.
    pub tls: bool,
    /// `Some(port)` when plain RTSP may only ask OPTIONS: everything else is 403 with a
    /// reason phrase that names the RTSPS port, because that is what clients show.
    pub require_tls: Option<u16>,
    /// Session timeout advertised in `Session: id;timeout=N` and enforced.
    pub session_timeout: Duration,
    /// Which transports SETUP may choose.
    pub transport: TransportPolicy,
    /// How often a recording session's receiver reports are due
    /// ([`Action::SendReceiverReports`]); `None` for never.
    pub rtcp_interval: Option<Duration>,
    /// GET_PARAMETER names the server can read (answered through
    /// [`Question::Parameters`]); any other name is 451.
    pub parameters: Vec<String>,
    /// The `Server` header value.
    pub server_name: String,
}

impl ServerConfig {
    /// Defaults for a client at `peer`: plain RTSP, 60 s sessions, TCP and UDP offered
    /// but UDP off until [`TransportPolicy::server_port`] is set, receiver reports every
    /// 5 s, no readable parameters.
    pub fn new(peer: IpAddr) -> Self {
        ServerConfig {
            peer,
            tls: false,
            require_tls: None,
            session_timeout: Duration::from_secs(60),
            transport: TransportPolicy::default(),
            rtcp_interval: Some(Duration::from_secs(5)),
            parameters: Vec::new(),
            server_name: SERVER_NAME.to_owned(),
        }
    }
}

/// What a request wants to do on a path, for the [`Authenticator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// DESCRIBE, SETUP and PLAY.
    Read,
    /// ANNOUNCE, SETUP with `mode=record`, RECORD.
    Publish,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Publish => "publish",
        })
    }
}

/// One authentication question.
#[derive(Debug, Clone, Copy)]
pub struct AuthQuery<'a> {
    /// The request's `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The request method (Digest hashes it).
    pub method: &'a Method,
    /// The request URI (Digest hashes it).
    pub uri: &'a str,
    /// What the request wants to do.
    pub access: Access,
    /// On which path.
    pub path: &'a str,
}

/// An [`Authenticator`]'s verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Allowed, as this principal ([`ANYONE`] when no credentials were needed).
    Allowed(String),
    /// 401 with these `WWW-Authenticate` values.
    Challenge(Vec<String>),
    /// 403, for this (logged) reason.
    Forbidden(String),
}

/// Decides who a request comes from and whether they may do what they ask.
///
/// Injected rather than answered through a [`Token`] because it never waits on I/O, and
/// its state (nonces issued on this connection, failure counts) belongs to the server.
pub trait Authenticator: Send {
    /// The verdict for `query` at `now`.
    fn check(&mut self, query: &AuthQuery<'_>, now: Instant) -> AuthVerdict;
}

/// Lets everyone do everything, as [`ANYONE`] (a server with no users configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn check(&mut self, _: &AuthQuery<'_>, _: Instant) -> AuthVerdict {
        AuthVerdict::Allowed(ANYONE.to_owned())
    }
}

/// The source of session ids: 64 random bits each, written as 16 hex digits.
///
/// Injected so tests are deterministic; in a server it must be a CSPRNG, since a session
/// id is the only thing a UDP reader's later requests carry.
pub trait IdSource: Send {
    /// The next random value.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64 + Send> IdSource for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// Session ids from the thread-local CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn next_u64(&mut self) -> u64 {
        rand::random()
    }
}

/// An error answer: the status, a reason for the log, and optionally a reason phrase and
/// headers (e.g. `WWW-Authenticate`) for the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status sent.
    pub status: StatusCode,
    /// Why, for the log (never sent).
    pub why: String,
    /// A reason phrase replacing the standard one.
    pub phrase: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    /// A refusal with the standard reason phrase and no extra headers.
    pub fn new(status: StatusCode, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
            phrase: None,
            headers: Vec::new(),
        }
    }
}

/// Identifies an [`Action::Ask`] so its answer finds its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(u64);

/// What the connection cannot decide alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Question {
    /// DESCRIBE: the SDP for readers of `path` (starting an on-demand source if need
    /// be). Answer with [`ServerConnection::answer_describe`].
    Describe {
        /// The path.
        path: String,
        /// The request URL's query (after `?`), if any: a view of the path (e.g. a
        /// recording's time window) that [`ServerConnection::answer_describe_at`] can give
        /// a path of its own, since clients set tracks up below `Content-Base` without it.
        query: Option<String>,
    },
    /// ANNOUNCE: may this connection publish `sdp` on `path` (404/403/455/400 are the
    /// usual refusals)? Answer with [`ServerConnection::answer_announce`].
    Announce {
        /// The path.
        path: String,
        /// The request body (UTF-8; its `m=` sections are the tracks).
        sdp: Bytes,
        /// The path this connection announced before, replaced by this one.
        replaces: Option<String>,
    },
    /// SETUP for play: the stream of `path`, or 404. Answer with
    /// [`ServerConnection::answer_stream`].
    Stream {
        /// The path.
        path: String,
        /// The session the SETUP adds a track to, if any.
        session: Option<String>,
    },
    /// SETUP: commit a session's track. The server registers the session, acquires the
    /// multicast group or UDP ports and enforces its limits (503, 453, 461). Answer
    /// with [`ServerConnection::answer_setup`].
    Setup {
        /// The session id (new or existing).
        session: String,
        /// Whether this SETUP creates the session.
        new_session: bool,
        /// The session's path.
        path: String,
        /// Player or recorder.
        role: Role,
        /// The track set up.
        track: usize,
        /// Its transport (a multicast transport without a group needs one granted).
        transport: TrackTransport,
        /// Who creates or extends it.
        principal: String,
    },
    /// PLAY: start (or, when already playing, report) the session's media from `range`
    /// at `scale`. Answer with [`ServerConnection::answer_play`].
    Play {
        /// The session id.
        session: String,
        /// Its path.
        path: String,
        /// The set-up tracks.
        tracks: Vec<usize>,
        /// The requested range.
        range: Option<Range>,
        /// The requested scale.
        scale: Option<Scale>,
        /// The ONVIF replay options (a `Range: clock=…` among them).
        replay: ReplayOptions,
        /// Whether the session is Ready (PLAY starts it) rather than Playing.
        start: bool,
    },
    /// GET_PARAMETER of readable names (see [`ServerConfig::parameters`]). Answer with
    /// [`ServerConnection::answer_parameters`].
    Parameters {
        /// The session named, if any.
        session: Option<String>,
        /// The names asked.
        names: Vec<String>,
    },
}

/// The answer to [`Question::Stream`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamInfo {
    /// How many tracks the stream has.
    pub tracks: usize,
    /// The SSRC each track's packets carry, when known (announced in `Transport`).
    pub ssrc: Vec<Option<u32>>,
    /// Stored media: `Range` seeks and `Scale` other than 1 are possible.
    pub seekable: bool,
}

/// The answer to [`Question::Setup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetupGrant {
    /// The multicast group granted, for a multicast transport without one.
    pub multicast_group: Option<IpAddr>,
}

/// Where a track's media starts after PLAY (`RTP-Info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackStart {
    /// Sequence number of the first packet.
    pub seq: u16,
    /// Its RTP timestamp.
    pub rtptime: u32,
}

/// The answer to [`Question::Play`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlayGrant {
    /// The `Range` actually played (`npt=now-` for live).
    pub range: Option<Range>,
    /// The `Scale` applied; sent only when the request had a `Scale`.
    pub scale: Option<Scale>,
    /// Per track index, where its media starts, when known.
    pub starts: Vec<Option<TrackStart>>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// TEARDOWN.
    Teardown,
    /// No sign of life within the session timeout.
    Timeout,
    /// The RTSP connection closed.
    ConnectionClosed,
    /// Another publisher took the path.
    Replaced,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Teardown => "teardown",
            EndReason::Timeout => "timeout",
            EndReason::ConnectionClosed => "connection closed",
            EndReason::Replaced => "replaced by a new publisher",
        })
    }
}

/// What the glue must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer `question` with the matching `answer_*` method.
    Ask {
        /// Pass back with the answer.
        token: Token,
        /// What to decide.
        question: Question,
    },
    /// PAUSE: stop the session's media (`stopped` is false when it was not playing or
    /// recording; a stored file still pauses its position).
    Pause {
        /// The session.
        session: String,
        /// Whether Playing/Recording → Ready.
        stopped: bool,
    },
    /// RECORD: the publisher's media is live (`started` is false when it already was).
    Record {
        /// The session.
        session: String,
        /// Whether Ready → Recording.
        started: bool,
    },
    /// TEARDOWN of one track: stop sending it (re-subscribe the others if playing).
    TeardownTrack {
        /// The session.
        session: String,
        /// The track removed.
        track: usize,
    },
    /// A recording session's receiver reports are due (every
    /// [`ServerConfig::rtcp_interval`]).
    SendReceiverReports {
        /// The session.
        session: String,
    },
    /// The session is over: release everything it holds.
    EndSession {
        /// The session.
        session: String,
        /// Its path.
        path: String,
        /// Player or recorder.
        role: Role,
        /// Why.
        reason: EndReason,
    },
    /// A request was refused (for the log: one line per refusal).
    Refused {
        /// The method (an empty extension method for an undecodable request).
        method: Method,
        /// The URI with credentials redacted (empty for an undecodable request).
        uri: String,
        /// The status sent.
        status: StatusCode,
        /// Why.
        why: String,
    },
}

/// What an interleaved channel of this connection carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelUse {
    /// The session.
    pub session: String,
    /// The track.
    pub track: usize,
    /// Player (the client sends RTCP receiver reports) or recorder (RTP and RTCP).
    pub role: Role,
    /// Whether this is the RTCP channel of the pair.
    pub rtcp: bool,
}

/// An `answer_*` call that did not fit.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// No question with this token is outstanding.
    #[error("no outstanding question with token {0:?}")]
    UnknownToken(Token),
    /// The token's question is of another kind.
    #[error("token {token:?} asked {asked}, answered as {answered}")]
    WrongKind {
        /// The token.
        token: Token,
        /// The question's kind.
        asked: &'static str,
        /// The answer's kind.
        answered: &'static str,
    },
}

/// A parked request and what its answer needs.
#[derive(Debug)]
enum Parked {
    Describe {
        path: String,
    },
    Announce {
        path: String,
        controls: Vec<String>,
    },
    Stream {
        path: String,
        track: Option<usize>,
        specs: Vec<crate::TransportSpec>,
        existing: Option<String>,
        principal: String,
    },
    Setup {
        session: String,
        new_session: bool,
        path: String,
        role: Role,
        track: usize,
        transport: TrackTransport,
        principal: String,
        ssrc: Option<u32>,
        seekable: bool,
        /// The offers after the chosen one, tried if the server refuses the commit.
        rest: Vec<crate::TransportSpec>,
    },
    Play {
        session: String,
        scale_asked: bool,
    },
    Parameters {
        session: Option<String>,
    },
}

impl Parked {
    fn kind(&self) -> &'static str {
        match self {
            Parked::Describe { .. } => "describe",
            Parked::Announce { .. } => "announce",
            Parked::Stream { .. } => "stream",
            Parked::Setup { .. } => "setup",
            Parked::Play { .. } => "play",
            Parked::Parameters { .. } => "parameters",
        }
    }
}

/// The request waiting for an answer.
#[derive(Debug)]
struct Outstanding {
    token: Token,
    request: Request,
    parked: Parked,
}

/// The path this connection announced and its tracks' controls.
#[derive(Debug, Clone)]
struct Announced {
    path: String,
    controls: Vec<String>,
}

/// The outcome of one step of handling a request.
enum Step {
    Answer(Response),
    Ask(Box<(Question, Parked)>),
}

type Handled = Result<Step, Refusal>;

/// A step that asks `question`, parking the request as `parked`.
fn ask(question: Question, parked: Parked) -> Handled {
    Ok(Step::Ask(Box::new((question, parked))))
}

/// A sans-IO RTSP server connection. See the [module docs](self).
pub struct ServerConnection {
    config: ServerConfig,
    auth: Box<dyn Authenticator>,
    ids: Box<dyn IdSource>,
    sessions: Vec<Entry>,
    channels: VecMap<u8, ChannelUse>,
    announced: Option<Announced>,
    /// Boxed: most of a connection's life has none, and thousands of connections would
    /// each keep room for a whole request.
    outstanding: Option<Box<Outstanding>>,
    queue: VecDeque<Request>,
    transmit: VecDeque<Bytes>,
    actions: VecDeque<Action>,
    next_token: u64,
    closed: bool,
    /// The stream could not be decoded: no further request is taken, and this answer
    /// goes out after the requests before it.
    final_answer: Option<Box<Response>>,
    stopped: bool,
    /// The latest time handed in, for work resumed by an `answer_*` call.
    now: Instant,
}

impl fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnection")
            .field("peer", &self.config.peer)
            .field("sessions", &self.sessions.len())
            .field("waiting", &self.outstanding.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// A connection for a client accepted at `now`, checking requests with `auth` and
    /// naming sessions from `ids`. Nothing is queued until the first request.
    pub fn new(
        config: ServerConfig,
        auth: Box<dyn Authenticator>,
        ids: Box<dyn IdSource>,
        now: Instant,
    ) -> ServerConnection {
        ServerConnection {
            config,
            auth,
            ids,
            sessions: Vec::new(),
            channels: VecMap::new(),
            announced: None,
            outstanding: None,
            queue: VecDeque::new(),
            transmit: VecDeque::new(),
            actions: VecDeque::new(),
            next_token: 0,
            closed: false,
            final_answer: None,
            stopped: false,
            now,
        }
    }

    // ----- getters -----

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The sessions this connection created and that have not ended.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.iter().map(SessionInfo::from).collect()
    }

    /// One session of this connection.
    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.entry(id).map(SessionInfo::from)
    }

    /// Whether the connection has live sessions (then it must not be idle-closed).
    pub fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// What interleaved `channel` carries, so the glue routes a `$` frame; `None` for a
    /// channel no SETUP allocated (drop the frame).
    pub fn channel(&self, channel: u8) -> Option<&ChannelUse> {
        self.channels.get(&channel)
    }

    /// The path this connection announced, if any.
    pub fn announced_path(&self) -> Option<&str> {
        self.announced.as_ref().map(|a| a.path.as_str())
    }

    /// Whether a question is unanswered (requests then wait; the glue may stop reading).
    pub fn is_waiting(&self) -> bool {
        self.outstanding.is_some()
    }

    // ----- handle_* -----

    /// A request decoded from the connection. Its response becomes pollable at once, or
    /// after the answer to the [`Action::Ask`] it raises; requests that arrive while a
    /// question is unanswered are handled in order afterwards.
    pub fn handle_request(&mut self, now: Instant, request: Request) {
        self.advance(now);
        if self.closed || self.stopped {
            return;
        }
        if self.outstanding.is_some() {
            if self.queue.len() >= MAX_QUEUED_REQUESTS {
                let r = Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many pipelined requests",
                );
                self.refuse(&request, r);
            } else {
                self.queue.push_back(request);
            }
            return;
        }
        self.process(request);
        self.drain_queue();
    }

    /// Timers: ends sessions whose timeout passed ([`EndReason::Timeout`]) and raises
    /// due [`Action::SendReceiverReports`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|s| s.machine.is_expired(now))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.end_session(&id, EndReason::Timeout);
        }
        let interval = self.config.rtcp_interval;
        for s in &mut self.sessions {
            let Some(due) = s.next_rtcp else { continue };
            if due > now {
                continue;
            }
            if let Some(step) = interval.filter(|i| !i.is_zero()) {
                // The first slot after `now` on the grid that started at `due` (missed
                // slots are not made up).
                let missed = now.saturating_duration_since(due).as_nanos() / step.as_nanos();
                let next = u32::try_from(missed + 1)
                    .ok()
                    .and_then(|n| step.checked_mul(n))
                    .and_then(|d| due.checked_add(d))
                    .unwrap_or(now + step);
                s.next_rtcp = Some(next);
            } else {
                s.next_rtcp = None;
            }
            self.actions.push_back(Action::SendReceiverReports {
                session: s.id.clone(),
            });
        }
    }

    /// Bytes arrived on the connection: sessions with an interleaved track stay alive
    /// (their media and RTCP come this way); UDP-only sessions need their own activity.
    pub fn handle_activity(&mut self, now: Instant) {
        self.advance(now);
        for s in &mut self.sessions {
            if !s.udp_only() {
                s.machine.handle_activity(now);
            }
        }
    }

    /// A sign of life of one session outside RTSP (UDP RTCP, a publisher's RTP).
    pub fn handle_session_activity(&mut self, id: &str, now: Instant) {
        self.advance(now);
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
            s.machine.handle_activity(now);
        }
    }

    /// Another connection's publisher took the path this one announced: its recording
    /// sessions end ([`EndReason::Replaced`]) and SETUP for record needs a new ANNOUNCE.
    pub fn handle_publisher_replaced(&mut self, now: Instant) {
        self.advance(now);
        let Some(a) = self.announced.take() else {
            return;
        };
        let ids: Vec<String> = self
            .sessions
            .iter()
            .filter(|s| s.role() == Role::Recorder && s.path == a.path)
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.end_session(&id, EndReason::Replaced);
        }
    }

    /// The connection closed: waiting requests are dropped, recording sessions and
    /// sessions with interleaved tracks end ([`EndReason::ConnectionClosed`]). Player
    /// sessions whose tracks are all UDP stay until they time out: keep calling
    /// [`ServerConnection::handle_timeout`] while [`ServerConnection::poll_timeout`] is
    /// `Some` (RFC 2326 sessions are not bound to one connection).
    pub fn handle_close(&mut self, now: Instant) {
        self.advance(now);
        self.closed = true;
        self.outstanding = None;
        self.queue.clear();
        self.transmit.clear();
        self.announced = None;
        let ids: Vec<String> = self
            .sessions
            .iter()
            .filter(|s| s.role() == Role::Recorder || !s.udp_only())
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.end_session(&id, EndReason::ConnectionClosed);
        }
    }

    /// The byte stream could not be decoded: answers with the error's status (400, or 413
    /// for a body over the limit), echoing the CSeq when it was recovered, with
    /// `Connection: close`, after the responses to the requests before it; takes no
    /// further request. Once that answer is written, close the socket and call
    /// [`ServerConnection::handle_close`].
    pub fn handle_decode_error(&mut self, now: Instant, error: &DecodeError) {
        self.advance(now);
        if self.closed || self.stopped {
            return;
        }
        self.stopped = true;
        let mut resp = Response::new(error.status()).with_header("Connection", "close");
        if let Some(c) = error.cseq() {
            resp = resp.with_header("CSeq", c.to_string());
        }
        self.actions.push_back(Action::Refused {
            method: Method::Extension(String::new()),
            uri: String::new(),
            status: error.status(),
            why: format!("malformed request: {error}"),
        });
        self.final_answer = Some(Box::new(resp));
        self.drain_queue();
    }

    // ----- answer_* -----

    /// Answers [`Question::Describe`] with the SDP, or a refusal (404 when no stream).
    pub fn answer_describe(
        &mut self,
        token: Token,
        answer: Result<Bytes, Refusal>,
    ) -> Result<(), AnswerError> {
        self.answer_describe_at(token, answer.map(|sdp| (sdp, None)))
    }

    /// Answers [`Question::Describe`] with the SDP and, optionally, another path for
    /// `Content-Base` (where the client then sets the tracks up): how a DESCRIBE URL's
    /// query becomes part of the session's path.
    pub fn answer_describe_at(
        &mut self,
        token: Token,
        answer: Result<(Bytes, Option<String>), Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "describe")?;
        let Parked::Describe { path } = parked else {
            return Err(Self::wrong_kind(token, "describe"));
        };
        let result = answer.map(|(sdp, base)| {
            Response::new(StatusCode::OK)
                .with_header(
                    "Content-Base",
                    base_url(&request.uri, base.as_deref().unwrap_or(&path)),
                )
                .with_body("application/sdp", sdp)
        });
        self.finish(request, result.map(Step::Answer));
        Ok(())
    }

    /// Answers [`Question::Announce`]: `Ok` when the path is this connection's now.
    pub fn answer_announce(
        &mut self,
        token: Token,
        answer: Result<(), Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "announce")?;
        let Parked::Announce { path, controls } = parked else {
            return Err(Self::wrong_kind(token, "announce"));
        };
        let result = answer.map(|()| {
            self.announced = Some(Announced { path, controls });
            Step::Answer(Response::new(StatusCode::OK))
        });
        self.finish(request, result);
        Ok(())
    }

    /// Answers [`Question::Stream`] with the stream's shape, or a refusal (404).
    pub fn answer_stream(
        &mut self,
        token: Token,
        answer: Result<StreamInfo, Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "stream")?;
        let Parked::Stream {
            path,
            track,
            specs,
            existing,
            principal,
        } = parked
        else {
            return Err(Self::wrong_kind(token, "stream"));
        };
        let result = answer.and_then(|info| {
            self.setup_play_stream(path, track, &specs, existing, principal, info)
        });
        self.finish(request, result);
        Ok(())
    }

    /// Answers [`Question::Setup`]: `Ok` commits the track (with the multicast group
    /// granted, for a multicast transport without one). A refusal of the transport
    /// itself (461, or 453 for a multicast group) moves on to the client's next
    /// acceptable offer, asked as a new [`Question::Setup`], as RFC 2326 offer lists
    /// intend; any other refusal, or one with no offer left, is the answer. The
    /// connection then refuses only if the session ended while the question was open (its
    /// [`Action::EndSession`] was already emitted) or a multicast grant lacks a group (500).
    pub fn answer_setup(
        &mut self,
        token: Token,
        answer: Result<SetupGrant, Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "setup")?;
        let Parked::Setup {
            session,
            new_session,
            path,
            role,
            track,
            mut transport,
            principal,
            ssrc,
            seekable,
            rest,
        } = parked
        else {
            return Err(Self::wrong_kind(token, "setup"));
        };
        if let Err(r) = &answer {
            // The server could not take this transport (client ports in use, no multicast
            // group left): the client's next offers are tried, as its list intends.
            let transport_specific = r.status == StatusCode::UNSUPPORTED_TRANSPORT
                || (r.status == StatusCode::NOT_ENOUGH_BANDWIDTH
                    && matches!(transport, TrackTransport::Multicast { group: None, .. }));
            let (session_kind, session_group) = match self.entry(&session) {
                Some(e) if !new_session => (e.kind(), e.group()),
                _ => (None, None),
            };
            let offer = Offer {
                specs: &rest,
                record: role == Role::Recorder,
                track,
                peer: self.config.peer,
                session_kind,
                session_group,
                channels: &self.channels,
            };
            let next = negotiate(&self.config.transport, &offer);
            if let (true, Ok((transport, chosen))) = (transport_specific, next) {
                let question = Question::Setup {
                    session: session.clone(),
                    new_session,
                    path: path.clone(),
                    role,
                    track,
                    transport,
                    principal: principal.clone(),
                };
                let parked = Parked::Setup {
                    session,
                    new_session,
                    path,
                    role,
                    track,
                    transport,
                    principal,
                    ssrc,
                    seekable,
                    rest: rest.get(chosen + 1..).unwrap_or_default().to_vec(),
                };
                self.finish(request, ask(question, parked));
                return Ok(());
            }
        }
        let result = answer.and_then(|grant| {
            if let TrackTransport::Multicast { group, .. } = &mut transport {
                if group.is_none() {
                    *group = grant.multicast_group;
                }
                if group.is_none() {
                    return Err(Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "multicast SETUP granted without a group",
                    ));
                }
            }
            let now = self.now;
            if new_session {
                let machine = ServerSession::new(role, track, self.config.session_timeout, now)
                    .map_err(|st| Refusal::new(st, "track index out of range"))?;
                // Exactly one more: a connection has one session or two, and a growing Vec
                // would keep room for four on each of thousands of connections.
                self.sessions.reserve_exact(1);
                self.sessions.push(Entry {
                    id: session.clone(),
                    principal,
                    path,
                    machine,
                    transports: Default::default(),
                    seekable,
                    next_rtcp: None,
                });
            }
            let entry = self
                .sessions
                .iter_mut()
                .find(|s| s.id == session)
                .ok_or_else(|| {
                    Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended meanwhile")
                })?;
            if !new_session {
                entry
                    .machine
                    .handle_setup(role, track, now)
                    .map_err(|st| Refusal::new(st, "SETUP not valid in this state"))?;
            }
            // A repeated SETUP of a track replaces its transport and frees its channels.
            match entry.transports.binary_search_by_key(&track, |(t, _)| *t) {
                Ok(i) => entry.transports[i].1 = transport,
                Err(i) => {
                    entry.transports.reserve_exact(1);
                    entry.transports.insert(i, (track, transport))
                }
            }
            self.channels
                .retain(|_, c| !(c.session == session && c.track == track));
            let timeout = u32::try_from(entry.machine.timeout().as_secs()).unwrap_or(u32::MAX);
            if let TrackTransport::Tcp { rtp, rtcp } = transport {
                for (ch, is_rtcp) in [(rtp, false), (rtcp, true)] {
                    self.channels.insert(
                        ch,
                        ChannelUse {
                            session: session.clone(),
                            track,
                            role,
                            rtcp: is_rtcp,
                        },
                    );
                }
            }
            let reply = transport.reply(ssrc, role == Role::Recorder);
            Ok(Step::Answer(
                Response::new(StatusCode::OK)
                    .with_header("Transport", reply.to_string())
                    .with_header(
                        "Session",
                        SessionHeader {
                            id: session,
                            timeout: Some(timeout),
                        }
                        .to_string(),
                    ),
            ))
        });
        self.finish(request, result);
        Ok(())
    }

    /// Answers [`Question::Play`]: `Ok` when media starts (or plays on) as described;
    /// a refusal leaves the session as it was.
    pub fn answer_play(
        &mut self,
        token: Token,
        answer: Result<PlayGrant, Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "play")?;
        let Parked::Play {
            session,
            scale_asked,
        } = parked
        else {
            return Err(Self::wrong_kind(token, "play"));
        };
        let now = self.now;
        let result = answer.and_then(|grant| {
            let entry = self
                .sessions
                .iter_mut()
                .find(|s| s.id == session)
                .ok_or_else(|| {
                    Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended meanwhile")
                })?;
            entry
                .machine
                .handle_play(now)
                .map_err(|st| Refusal::new(st, "PLAY not valid for this session"))?;
            let base = base_url(&request.uri, &entry.path);
            let infos: Vec<RtpInfo> = entry
                .machine
                .tracks()
                .map(|t| {
                    let start = grant.starts.get(t).copied().flatten();
                    RtpInfo {
                        url: format!("{base}trackID={t}"),
                        seq: start.map(|s| s.seq),
                        rtptime: start.map(|s| s.rtptime),
                    }
                })
                .collect();
            let mut resp = Response::new(StatusCode::OK).with_header("Session", session.clone());
            if let Some(r) = &grant.range {
                resp = resp.with_header("Range", r.to_string());
            }
            resp = resp.with_header("RTP-Info", format_rtp_info(&infos));
            if let (true, Some(s)) = (scale_asked, grant.scale) {
                resp = resp.with_header("Scale", s.to_string());
            }
            Ok(Step::Answer(resp))
        });
        self.finish(request, result);
        Ok(())
    }

    /// Answers [`Question::Parameters`] with `(name, value)` pairs.
    pub fn answer_parameters(
        &mut self,
        token: Token,
        answer: Result<Vec<(String, String)>, Refusal>,
    ) -> Result<(), AnswerError> {
        let (request, parked) = self.take(token, "parameters")?;
        let Parked::Parameters { session } = parked else {
            return Err(Self::wrong_kind(token, "parameters"));
        };
        let result = answer.map(|values| {
            let body: String = values
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect();
            let mut resp = Response::new(StatusCode::OK);
            if let Some(id) = session {
                resp = resp.with_header("Session", id);
            }
            Step::Answer(resp.with_body("text/parameters", body))
        });
        self.finish(request, result);
        Ok(())
    }

    // ----- poll_* -----

    /// The next encoded response to write, in request order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let next = self.transmit.pop_front();
        if next.is_none() {
            // Drained: keep no capacity between requests, since every connection holds one.
            self.transmit = VecDeque::new();
        }
        next
    }

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        let next = self.actions.pop_front();
        if next.is_none() {
            // Drained: keep no capacity between requests, since every connection holds one.
            self.actions = VecDeque::new();
        }
        next
    }

    /// When [`ServerConnection::handle_timeout`] must be called next: the earliest
    /// session expiry or receiver-report time; `None` without sessions.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.iter().map(Entry::deadline).min()
    }

    // ----- internals -----

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn entry(&self, id: &str) -> Option<&Entry> {
        self.sessions.iter().find(|s| s.id == id)
    }

    /// `take` already matched the kind, so this is never built; it keeps the answer
    /// methods free of panics.
    fn wrong_kind(token: Token, answered: &'static str) -> AnswerError {
        AnswerError::WrongKind {
            token,
            asked: "another question",
            answered,
        }
    }

    /// Removes the outstanding request if `token` and the answer kind match.
    fn take(
        &mut self,
        token: Token,
        answered: &'static str,
    ) -> Result<(Request, Parked), AnswerError> {
        let Some(o) = &self.outstanding else {
            return Err(AnswerError::UnknownToken(token));
        };
        if o.token != token {
            return Err(AnswerError::UnknownToken(token));
        }
        if o.parked.kind() != answered {
            return Err(AnswerError::WrongKind {
                token,
                asked: o.parked.kind(),
                answered,
            });
        }
        let o = self
            .outstanding
            .take()
            .ok_or(AnswerError::UnknownToken(token))?;
        let o = *o;
        Ok((o.request, o.parked))
    }

    /// Completes the parked request, then handles the requests that waited behind it.
    fn finish(&mut self, request: Request, result: Handled) {
        self.complete(request, result);
        self.drain_queue();
    }

    fn drain_queue(&mut self) {
        while self.outstanding.is_none() {
            let Some(req) = self.queue.pop_front() else {
                if let Some(mut resp) = self.final_answer.take() {
                    resp.headers.set("Server", self.config.server_name.clone());
                    let mut out = BytesMut::new();
                    resp.encode(&mut out);
                    if !self.closed {
                        self.transmit.push_back(out.freeze());
                    }
                }
                return;
            };
            self.process(req);
        }
    }

    fn process(&mut self, request: Request) {
        let result = self.dispatch(&request);
        self.complete(request, result);
    }

    fn complete(&mut self, request: Request, result: Handled) {
        match result {
            Ok(Step::Answer(resp)) => self.respond(&request, resp),
            Ok(Step::Ask(boxed)) => {
                let (question, parked) = *boxed;
                let token = Token(self.next_token);
                self.next_token = self.next_token.wrapping_add(1);
                self.actions.push_back(Action::Ask { token, question });
                self.outstanding = Some(Box::new(Outstanding {
                    token,
                    request,
                    parked,
                }));
            }
            Err(r) => self.refuse(&request, r),
        }
    }

    fn refuse(&mut self, request: &Request, r: Refusal) {
        self.actions.push_back(Action::Refused {
            method: request.method.clone(),
            uri: redact_credentials(&request.uri),
            status: r.status,
            why: r.why.clone(),
        });
        let mut resp = Response::new(r.status);
        if let Some(p) = r.phrase {
            resp.reason = p;
        }
        for (k, v) in r.headers {
            resp = resp.with_header(k, v);
        }
        self.respond(request, resp);
    }

    /// Adds CSeq (echoed) and Server, encodes and queues.
    fn respond(&mut self, request: &Request, mut resp: Response) {
        if self.closed {
            return;
        }
        if let Some(c) = request.cseq() {
            resp.headers.set("CSeq", c.to_string());
        }
        resp.headers.set("Server", self.config.server_name.clone());
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        self.transmit.push_back(out.freeze());
    }

    fn dispatch(&mut self, req: &Request) -> Handled {
        if req.version != Version::RTSP_1_0 {
            return Err(Refusal::new(
                StatusCode::RTSP_VERSION_NOT_SUPPORTED,
                format!("version {}", req.version),
            ));
        }
        if req.cseq().is_none() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "missing or invalid CSeq",
            ));
        }
        if let (Some(port), false, false) = (
            self.config.require_tls,
            self.config.tls,
            req.method == Method::Options,
        ) {
            let mut r = Refusal::new(
                StatusCode::FORBIDDEN,
                format!("TLS required: use rtsps:// on port {port}"),
            );
            r.phrase = Some(format!(
                "Forbidden - TLS required, use rtsps:// port {port}"
            ));
            return Err(r);
        }
        if let Some(v) = req.headers.get("Require") {
            let unsupported: Vec<&str> = crate::headers::replay::require_tags(v)
                .filter(|t| !t.eq_ignore_ascii_case(crate::headers::replay::ONVIF_REPLAY))
                .collect();
            if !unsupported.is_empty() {
                let mut r = Refusal::new(
                    StatusCode::OPTION_NOT_SUPPORTED,
                    format!("unsupported Require tags {unsupported:?}"),
                );
                r.headers
                    .push(("Unsupported".to_owned(), unsupported.join(", ")));
                return Err(r);
            }
        }
        let Some(need) = table::need(&req.method) else {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("method {}", req.method),
            ));
        };
        if need == Need::Session && req.session_id().is_none() {
            return Err(Refusal::new(
                StatusCode::SESSION_NOT_FOUND,
                "no Session header",
            ));
        }
        match req.method {
            Method::Options => {
                // A keep-alive naming one of our sessions refreshes it; others are ignored.
                if let Some(id) = req.session_id() {
                    let now = self.now;
                    if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
                        s.machine.handle_activity(now);
                    }
                }
                Ok(Step::Answer(
                    Response::new(StatusCode::OK).with_header("Public", table::public()),
                ))
            }
            Method::Describe => self.describe(req),
            Method::Announce => self.announce(req),
            Method::Setup => self.setup(req),
            Method::Play => self.play(req),
            Method::Pause => self.pause(req),
            Method::Record => self.record(req),
            Method::Teardown => self.teardown(req),
            Method::GetParameter | Method::SetParameter => self.parameter(req),
            Method::Redirect | Method::Extension(_) => Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("method {}", req.method),
            )),
        }
    }

    /// Checks that the request may do `access` on `path`; returns the principal.
    fn authorize(&mut self, req: &Request, access: Access, path: &str) -> Result<String, Refusal> {
        let query = AuthQuery {
            authorization: req.headers.get("Authorization"),
            method: &req.method,
            uri: &req.uri,
            access,
            path,
        };
        match self.auth.check(&query, self.now) {
            AuthVerdict::Allowed(who) => Ok(who),
            AuthVerdict::Challenge(values) => {
                let mut r = Refusal::new(StatusCode::UNAUTHORIZED, format!("{access} {path:?}"));
                r.headers = values
                    .into_iter()
                    .map(|v| ("WWW-Authenticate".to_owned(), v))
                    .collect();
                Err(r)
            }
            AuthVerdict::Forbidden(why) => Err(Refusal::new(StatusCode::FORBIDDEN, why)),
        }
    }

    /// Like [`Self::authorize`] for a request on an existing session: the principal
    /// must be the one that created it (a session id replayed by another user is 454,
    /// exactly as an unknown one, so its existence is not revealed).
    fn authorize_session(
        &mut self,
        req: &Request,
        access: Access,
        id: &str,
    ) -> Result<(), Refusal> {
        let Some(path) = self.entry(id).map(|e| e.path.clone()) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let who = self.authorize(req, access, &path)?;
        self.check_owner(id, &who)
    }

    /// A session is used only by the principal that created it (or by anyone when it
    /// was created anonymously).
    fn check_owner(&self, id: &str, who: &str) -> Result<(), Refusal> {
        match self.entry(id) {
            Some(e) if e.principal == who || e.principal == ANYONE => Ok(()),
            Some(_) => Err(Refusal::new(
                StatusCode::SESSION_NOT_FOUND,
                "session belongs to another user",
            )),
            None => Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended")),
        }
    }

    /// For requests that need no permission (PAUSE, TEARDOWN, GET/SET_PARAMETER): the
    /// connection's ownership suffices, but credentials naming another user are 454.
    fn check_owner_if_credentialed(&mut self, req: &Request, id: &str) -> Result<(), Refusal> {
        if req.headers.get("Authorization").is_none() {
            return Ok(());
        }
        let Some((path, access)) = self.entry(id).map(|e| {
            let access = match e.role() {
                Role::Player => Access::Read,
                Role::Recorder => Access::Publish,
            };
            (e.path.clone(), access)
        }) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let who = self.authorize(req, access, &path)?;
        self.check_owner(id, &who)
    }

    fn path_of(req: &Request) -> Result<String, Refusal> {
        request_path(&req.uri).map_err(|e| match e {
            // No resource has such a name (traversal attempts, encoded names, ...).
            UrlError::BadPath(_) => Refusal::new(StatusCode::NOT_FOUND, e.to_string()),
            UrlError::NotRtsp(_) => Refusal::new(StatusCode::BAD_REQUEST, e.to_string()),
        })
    }

    /// The session a request names, if it was created on this connection (refreshing
    /// it); a Session header naming anything else is 454.
    fn own_session(&mut self, req: &Request) -> Result<Option<String>, Refusal> {
        let Some(id) = req.session_id() else {
            return Ok(None);
        };
        let now = self.now;
        match self.sessions.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.machine.handle_activity(now);
                Ok(Some(s.id.clone()))
            }
            // Sessions of other connections are never honoured, and never revealed.
            None => Err(Refusal::new(
                StatusCode::SESSION_NOT_FOUND,
                "unknown session or session of another connection",
            )),
        }
    }

    fn require_session(&mut self, req: &Request) -> Result<String, Refusal> {
        self.own_session(req)?
            .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "no Session header"))
    }

    fn describe(&mut self, req: &Request) -> Handled {
        let path = Self::path_of(req)?;
        self.authorize(req, Access::Read, &path)?;
        ask(
            Question::Describe {
                path: path.clone(),
                query: req
                    .uri
                    .split_once('?')
                    .map(|(_, q)| q.split('#').next().unwrap_or_default().to_owned())
                    .filter(|q| !q.is_empty()),
            },
            Parked::Describe { path },
        )
    }

    fn announce(&mut self, req: &Request) -> Handled {
        let path = Self::path_of(req)?;
        self.authorize(req, Access::Publish, &path)?;
        if path.is_empty() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "ANNOUNCE needs a path",
            ));
        }
        let ctype = req.headers.get("Content-Type").unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("application/sdp") {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ctype:?}, expected application/sdp"),
            ));
        }
        let Ok(text) = std::str::from_utf8(&req.body) else {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "SDP is not UTF-8"));
        };
        let controls = sdp_controls(text)
            .1
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.unwrap_or_else(|| format!("trackID={i}")))
            .collect();
        ask(
            Question::Announce {
                path: path.clone(),
                sdp: req.body.clone(),
                replaces: self
                    .announced
                    .as_ref()
                    .map(|a| a.path.clone())
                    .filter(|p| *p != path),
            },
            Parked::Announce { path, controls },
        )
    }

    fn setup(&mut self, req: &Request) -> Handled {
        let path = Self::path_of(req)?;
        let header = req.headers.get("Transport").ok_or_else(|| {
            Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, "no Transport header")
        })?;
        let specs = parse_transport(header)
            .map_err(|e| Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, e.to_string()))?;
        let record = specs
            .iter()
            .any(|s| matches!(s.mode, Some(TransportMode::Record)));
        let existing = self.own_session(req)?;
        if record {
            return self.setup_record(req, &path, &specs, existing);
        }
        let (base, track) = split_track(&path);
        let lookup = if track.is_some() { base } else { path.as_str() };
        // Before anything is opened or pulled.
        let principal = self.authorize(req, Access::Read, lookup)?;
        if let Some(id) = &existing {
            self.check_owner(id, &principal)?;
        }
        ask(
            Question::Stream {
                path: lookup.to_owned(),
                session: existing.clone(),
            },
            Parked::Stream {
                path: lookup.to_owned(),
                track,
                specs,
                existing,
                principal,
            },
        )
    }

    /// The track a publisher's SETUP URL names among the announced controls, given the
    /// URL's path relative to the presentation (`rest`) or the whole URL.
    fn publisher_track(controls: &[String], url: &str, rest: &str) -> Option<usize> {
        controls
            .iter()
            .position(|c| c == rest || c == url || (c.contains("://") && url.ends_with(c.as_str())))
    }

    /// Whether an existing session may take `track` in `role` (dry run of the state
    /// machine, so nothing changes before the server commits).
    fn check_setup_state(e: &Entry, role: Role, track: usize) -> Result<(), Refusal> {
        if !table::allows(&Method::Setup, e.role(), Some(role)) {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                "SETUP not valid now",
            ));
        }
        if track >= MAX_TRACKS {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "track index out of range",
            ));
        }
        if e.state() != State::Ready && !e.machine.has_track(track) {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                "SETUP of a new track while streaming",
            ));
        }
        Ok(())
    }

    /// A fresh session id: a few draws that collide with a session of this connection
    /// are skipped; a source that keeps colliding is broken, and SETUP gets 503 rather
    /// than a loop.
    fn new_id(&mut self) -> Result<String, Refusal> {
        for _ in 0..16 {
            let id = format!("{:016X}", self.ids.next_u64());
            if self.entry(&id).is_none() {
                return Ok(id);
            }
        }
        Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session id source keeps repeating itself",
        ))
    }

    fn setup_record(
        &mut self,
        req: &Request,
        path: &str,
        specs: &[crate::TransportSpec],
        existing: Option<String>,
    ) -> Handled {
        let announced = self
            .announced
            .clone()
            .filter(|a| path.starts_with(a.path.as_str()))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                    "SETUP for record without ANNOUNCE of this path on this connection",
                )
            })?;
        let principal = self.authorize(req, Access::Publish, &announced.path)?;
        if let Some(id) = &existing {
            self.check_owner(id, &principal)?;
        }
        let rest = path
            .strip_prefix(announced.path.as_str())
            .unwrap_or_default()
            .trim_start_matches('/');
        let track = Self::publisher_track(&announced.controls, &req.uri, rest)
            .or_else(|| (rest.is_empty() && announced.controls.len() == 1).then_some(0))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no announced track {rest:?}"),
                )
            })?;
        let (session_kind, new_session, id) = match &existing {
            Some(id) => {
                let e = self
                    .entry(id)
                    .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"))?;
                if e.path != announced.path {
                    return Err(Refusal::new(
                        StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                        "session belongs to another path",
                    ));
                }
                Self::check_setup_state(e, Role::Recorder, track)?;
                (e.kind(), false, id.clone())
            }
            None => {
                if track >= MAX_TRACKS {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        "track index out of range",
                    ));
                }
                (None, true, self.new_id()?)
            }
        };
        let (transport, chosen) = negotiate(
            &self.config.transport,
            &Offer {
                specs,
                record: true,
                track,
                peer: self.config.peer,
                session_kind,
                session_group: None,
                channels: &self.channels,
            },
        )?;
        ask(
            Question::Setup {
                session: id.clone(),
                new_session,
                path: announced.path.clone(),
                role: Role::Recorder,
                track,
                transport,
                principal: principal.clone(),
            },
            Parked::Setup {
                session: id,
                new_session,
                path: announced.path,
                role: Role::Recorder,
                track,
                transport,
                principal,
                ssrc: None,
                seekable: false,
                rest: specs.get(chosen + 1..).unwrap_or_default().to_vec(),
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn setup_play_stream(
        &mut self,
        path: String,
        url_track: Option<usize>,
        specs: &[crate::TransportSpec],
        existing: Option<String>,
        principal: String,
        info: StreamInfo,
    ) -> Handled {
        if url_track.is_none() && info.tracks != 1 {
            return Err(Refusal::new(
                StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                "SETUP needs a track URL for a multi-track stream",
            ));
        }
        let track = url_track.unwrap_or(0);
        if track >= info.tracks || track >= MAX_TRACKS {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no track {track}"),
            ));
        }
        let (session_kind, session_group, new_session, id) = match &existing {
            Some(id) => {
                let e = self
                    .entry(id)
                    .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"))?;
                if e.path != path {
                    return Err(Refusal::new(
                        StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                        "session belongs to another path",
                    ));
                }
                Self::check_setup_state(e, Role::Player, track)?;
                (e.kind(), e.group(), false, id.clone())
            }
            None => (None, None, true, self.new_id()?),
        };
        let (transport, chosen) = negotiate(
            &self.config.transport,
            &Offer {
                specs,
                record: false,
                track,
                peer: self.config.peer,
                session_kind,
                session_group,
                channels: &self.channels,
            },
        )?;
        ask(
            Question::Setup {
                session: id.clone(),
                new_session,
                path: path.clone(),
                role: Role::Player,
                track,
                transport,
                principal: principal.clone(),
            },
            Parked::Setup {
                session: id,
                new_session,
                path,
                role: Role::Player,
                track,
                transport,
                principal,
                ssrc: info.ssrc.get(track).copied().flatten(),
                seekable: info.seekable,
                rest: specs.get(chosen + 1..).unwrap_or_default().to_vec(),
            },
        )
    }

    /// Checks that a PLAY/PAUSE/RECORD/TEARDOWN URL names the session's path (or one of
    /// its tracks); returns the track if one is named.
    fn session_url(&self, req: &Request, id: &str) -> Result<Option<usize>, Refusal> {
        let path = Self::path_of(req)?;
        let Some(e) = self.entry(id) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let stream_path = e.path.as_str();
        if path == stream_path || path.is_empty() {
            return Ok(None);
        }
        match split_track(&path) {
            (base, Some(t)) if base == stream_path => Ok(Some(t)),
            _ if path.starts_with(stream_path) && e.role() == Role::Recorder => {
                let rest = path
                    .strip_prefix(stream_path)
                    .unwrap_or_default()
                    .trim_start_matches('/');
                let controls = self
                    .announced
                    .as_ref()
                    .filter(|a| a.path == stream_path)
                    .map(|a| a.controls.as_slice())
                    .unwrap_or_default();
                Ok(Self::publisher_track(controls, &req.uri, rest))
            }
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("URL does not match the session's path {stream_path:?}"),
            )),
        }
    }

    fn play(&mut self, req: &Request) -> Handled {
        let id = self.require_session(req)?;
        self.authorize_session(req, Access::Read, &id)?;
        let track = self.session_url(req, &id)?;
        let Some(e) = self.entry(&id) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        if track.is_some() && e.machine.tracks().count() > 1 {
            return Err(Refusal::new(
                StatusCode::ONLY_AGGREGATE_OPERATION_ALLOWED,
                "PLAY of one track of a multi-track session",
            ));
        }
        let range = match req.headers.get("Range") {
            Some(v) => Some(
                Range::parse(v)
                    .map_err(|err| Refusal::new(StatusCode::INVALID_RANGE, err.to_string()))?,
            ),
            None => None,
        };
        let scale = match req.headers.get("Scale") {
            Some(v) => Some(Scale::parse(v).map_err(|_| {
                Refusal::new(StatusCode::HEADER_FIELD_NOT_VALID, format!("Scale {v:?}"))
            })?),
            None => None,
        };
        if !table::allows(&Method::Play, e.role(), None) {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                "PLAY not valid for this session",
            ));
        }
        let replay = Self::replay_options(req)?;
        let (range, replay) = match range {
            Some(Range::Other(v)) => match ClockRange::parse(&v) {
                Some(Ok(clock)) => (
                    None,
                    ReplayOptions {
                        clock: Some(clock),
                        ..replay
                    },
                ),
                Some(Err(err)) => {
                    return Err(Refusal::new(StatusCode::INVALID_RANGE, err.to_string()))
                }
                None => (Some(Range::Other(v)), replay),
            },
            other => (other, replay),
        };
        if e.seekable {
            if let Some(Range::Other(v)) = &range {
                return Err(Refusal::new(
                    StatusCode::INVALID_RANGE,
                    format!("only npt and clock ranges are supported, got {v:?}"),
                ));
            }
        } else if scale.is_some_and(|s| s.0 != 1.0) || replay.speed.is_some_and(|s| s != 1.0) {
            return Err(Refusal::new(
                StatusCode::HEADER_FIELD_NOT_VALID,
                "live streams play at Scale 1 only",
            ));
        }
        let question = Question::Play {
            session: id.clone(),
            path: e.path.clone(),
            tracks: e.machine.tracks().collect(),
            range,
            scale,
            replay,
            start: e.state() != State::Playing,
        };
        ask(
            question,
            Parked::Play {
                session: id,
                scale_asked: scale.is_some(),
            },
        )
    }

    /// The ONVIF replay headers of a PLAY (`Speed`, `Rate-Control`, `Frames`,
    /// `Immediate`); a malformed one is refused with 400.
    fn replay_options(req: &Request) -> Result<ReplayOptions, Refusal> {
        let bad =
            |e: crate::headers::HeaderError| Refusal::new(StatusCode::BAD_REQUEST, e.to_string());
        let mut o = ReplayOptions {
            cseq: req.cseq().unwrap_or(0),
            onvif: req.headers.get("Require").is_some_and(|v| {
                crate::headers::replay::require_tags(v)
                    .any(|t| t.eq_ignore_ascii_case(crate::headers::replay::ONVIF_REPLAY))
            }),
            ..ReplayOptions::default()
        };
        if let Some(v) = req.headers.get("Speed") {
            o.speed = Some(crate::headers::replay::parse_speed(v).map_err(bad)?);
        }
        if let Some(v) = req.headers.get("Rate-Control") {
            o.rate_control =
                crate::headers::replay::parse_yes_no("Rate-Control", v).map_err(bad)?;
        }
        if let Some(v) = req.headers.get("Frames") {
            o.frames = Frames::parse(v).map_err(bad)?;
        }
        if let Some(v) = req.headers.get("Immediate") {
            o.immediate = crate::headers::replay::parse_yes_no("Immediate", v).map_err(bad)?;
        }
        Ok(o)
    }

    fn pause(&mut self, req: &Request) -> Handled {
        let id = self.require_session(req)?;
        self.check_owner_if_credentialed(req, &id)?;
        self.session_url(req, &id)?;
        let now = self.now;
        let Some(e) = self.sessions.iter_mut().find(|s| s.id == id) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let stopped = e.machine.handle_pause(now) == Transition::Paused;
        if stopped {
            e.next_rtcp = None;
        }
        self.actions.push_back(Action::Pause {
            session: id.clone(),
            stopped,
        });
        Ok(Step::Answer(
            Response::new(StatusCode::OK).with_header("Session", id),
        ))
    }

    fn record(&mut self, req: &Request) -> Handled {
        let id = self.require_session(req)?;
        self.authorize_session(req, Access::Publish, &id)?;
        self.session_url(req, &id)?;
        let now = self.now;
        let first_report = Duration::from_secs(1);
        let rtcp = self.config.rtcp_interval.is_some();
        let Some(e) = self.sessions.iter_mut().find(|s| s.id == id) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let started = e
            .machine
            .handle_record(now)
            .map_err(|st| Refusal::new(st, "RECORD not valid for this session"))?
            == Transition::Started;
        if started && rtcp {
            e.next_rtcp = Some(now + first_report);
        }
        self.actions.push_back(Action::Record {
            session: id.clone(),
            started,
        });
        Ok(Step::Answer(
            Response::new(StatusCode::OK).with_header("Session", id),
        ))
    }

    fn teardown(&mut self, req: &Request) -> Handled {
        let id = self.require_session(req)?;
        self.check_owner_if_credentialed(req, &id)?;
        let track = self.session_url(req, &id)?;
        let Some(e) = self.sessions.iter_mut().find(|s| s.id == id) else {
            return Err(Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"));
        };
        let remaining = e.machine.tracks().filter(|t| Some(*t) != track).count();
        if let (Some(t), true) = (track, remaining > 0) {
            // Tear down one track: the rest keeps playing.
            e.transports.retain(|(k, _)| *k != t);
            e.machine.remove_track(t);
            self.channels
                .retain(|_, c| !(c.session == id && c.track == t));
            self.actions.push_back(Action::TeardownTrack {
                session: id.clone(),
                track: t,
            });
            return Ok(Step::Answer(
                Response::new(StatusCode::OK).with_header("Session", id),
            ));
        }
        if e.role() == Role::Recorder {
            self.announced = None;
        }
        self.end_session(&id, EndReason::Teardown);
        Ok(Step::Answer(Response::new(StatusCode::OK)))
    }

    fn parameter(&mut self, req: &Request) -> Handled {
        let session = self.own_session(req)?;
        if let Some(id) = &session {
            self.check_owner_if_credentialed(req, id)?;
        }
        let body = String::from_utf8_lossy(&req.body);
        let names: Vec<String> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let known = req.method == Method::GetParameter
            && names.iter().all(|n| self.config.parameters.contains(n));
        if !names.is_empty() && !known {
            return Err(Refusal::new(
                StatusCode::PARAMETER_NOT_UNDERSTOOD,
                format!(
                    "parameters not supported: {:?}",
                    body.chars().take(60).collect::<String>()
                ),
            ));
        }
        if names.is_empty() {
            let mut resp = Response::new(StatusCode::OK);
            if let Some(id) = session {
                resp = resp.with_header("Session", id);
            }
            return Ok(Step::Answer(resp));
        }
        ask(
            Question::Parameters {
                session: session.clone(),
                names,
            },
            Parked::Parameters { session },
        )
    }

    fn end_session(&mut self, id: &str, reason: EndReason) {
        let Some(pos) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let e = self.sessions.remove(pos);
        self.channels.retain(|_, c| c.session != id);
        let role = e.role();
        self.actions.push_back(Action::EndSession {
            session: e.id,
            path: e.path,
            role,
            reason,
        });
    }
}
