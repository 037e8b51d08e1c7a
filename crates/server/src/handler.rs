//! Request handling for one RTSP connection: method dispatch, path and track
//! resolution, transport negotiation and the session lifecycle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_rtp::packet::looks_like_rtcp;
use sluice_rtsp::server_session::{Role, ServerSession, State, Transition};
use sluice_rtsp::{
    format_rtp_info, parse_transport, redact_credentials, Method, NptTime, Range, Request,
    Response, RtpInfo, SessionHeader, StatusCode, TransportMode, TransportSpec, Version,
};
use tracing::{debug, info, warn};

use crate::auth::{Action, Decision, Nonces};
use crate::config::TransportKind;
use crate::conn::ConnHandle;
use crate::file_source::{FileSource, PlayError};
use crate::ingest::Ingest;
use crate::media_queue::{MediaQueue, TcpOut};
use crate::presentation::Presentation;
use crate::reader::{Outbox, ReaderSink, Target};
use crate::server::{PathEntry, Server, RTCP_INTERVAL};
use crate::session::{Playing, Session, SessionInner, TrackTransport};
use crate::stream::{EndReason, Stream, TrackStart};
use crate::url::{base_url, request_path, split_track, UrlError};
use crate::vod::{self, OpenedMedia, VodError};

/// The methods Sluice implements, for OPTIONS' Public header.
pub const PUBLIC: &str =
    "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER";

/// The Server header value.
pub const SERVER_NAME: &str = concat!("Sluice/", env!("CARGO_PKG_VERSION"));

/// Where an interleaved channel of this connection goes.
#[derive(Debug, Clone)]
enum Channel {
    IngestRtp(Arc<Ingest>, usize),
    IngestRtcp(Arc<Ingest>, usize),
    ReaderRtcp(Weak<Session>, usize),
    /// A reader's RTP channel: clients do not send on it; ignored.
    ReaderRtp,
}

/// An error answer: a status plus a log-worthy reason.
struct Refusal(StatusCode, String, Vec<(&'static str, String)>);

impl Refusal {
    fn new(status: StatusCode, why: impl Into<String>) -> Refusal {
        Refusal(status, why.into(), Vec::new())
    }
}

type Handled = Result<Response, Refusal>;

/// Pseudo-header of a [`Refusal`] that replaces the response's reason phrase.
const REASON: &str = ":reason";

/// The per-connection protocol state.
pub struct Connection {
    server: Arc<Server>,
    handle: Arc<ConnHandle>,
    announced: Option<Arc<Stream>>,
    sessions: Vec<String>,
    channels: HashMap<u8, Channel>,
    /// A sink subscribed by PLAY, opened once the PLAY answer is queued.
    pending_open: Option<Arc<ReaderSink>>,
    /// Digest nonces issued on this connection.
    nonces: Nonces,
}

impl Connection {
    /// Protocol state for a new connection.
    pub fn new(server: Arc<Server>, handle: Arc<ConnHandle>) -> Connection {
        Connection {
            server,
            handle,
            announced: None,
            sessions: Vec::new(),
            channels: HashMap::new(),
            pending_open: None,
            nonces: Nonces::default(),
        }
    }

    /// Whether this connection has live sessions (then it is never idle-closed).
    pub fn has_sessions(&self) -> bool {
        self.sessions
            .iter()
            .any(|id| self.server.session(id).is_some())
    }

    /// The stream this connection announced, if any (its end closes the connection).
    pub fn announced_stream(&self) -> Option<Arc<Stream>> {
        self.announced.clone()
    }

    /// Bytes arrived: over TCP, a live connection keeps its sessions alive.
    pub fn handle_input(&mut self) {
        let now = Instant::now();
        for id in &self.sessions {
            if let Some(s) = self.server.session(id) {
                if !s.is_udp_only() {
                    s.touch(now);
                }
            }
        }
    }

    /// The connection closed.
    pub fn handle_closed(&mut self) {
        self.server
            .connection_closed(self.handle.id, &self.sessions);
    }

    /// An interleaved frame from the client.
    pub fn handle_interleaved(&mut self, channel: u8, payload: Bytes) {
        let now = Instant::now();
        match self.channels.get(&channel) {
            Some(Channel::IngestRtp(ingest, track)) => {
                // Some publishers multiplex RTCP on the RTP channel (RFC 5761).
                if looks_like_rtcp(&payload) {
                    ingest.handle_rtcp(*track, &payload, now);
                } else {
                    ingest.handle_rtp(*track, payload, now);
                }
            }
            Some(Channel::IngestRtcp(ingest, track)) => ingest.handle_rtcp(*track, &payload, now),
            Some(Channel::ReaderRtcp(session, track)) => {
                if let Some(s) = session.upgrade() {
                    s.handle_reader_rtcp(*track, &payload, now);
                }
            }
            Some(Channel::ReaderRtp) | None => {}
        }
    }

    /// A request: answers it (and starts delivery after a PLAY answer is queued).
    pub async fn handle_request(&mut self, req: Request) {
        let cseq = req.cseq();
        let result = if req.version != Version::RTSP_1_0 {
            Err(Refusal::new(
                StatusCode::RTSP_VERSION_NOT_SUPPORTED,
                format!("version {}", req.version),
            ))
        } else if cseq.is_none() {
            Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "missing or invalid CSeq",
            ))
        } else {
            self.dispatch(&req).await
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(Refusal(status, why, headers)) => {
                if status == StatusCode::UNAUTHORIZED {
                    debug!(conn = self.handle.id, method = %req.method, uri = %redact_credentials(&req.uri), why, "authentication required");
                } else {
                    warn!(conn = self.handle.id, method = %req.method, uri = %redact_credentials(&req.uri), status = status.0, why, "request refused");
                }
                headers
                    .into_iter()
                    .fold(Response::new(status), |mut r, (k, v)| {
                        if k == REASON {
                            r.reason = v;
                            r
                        } else {
                            r.with_header(k, v)
                        }
                    })
            }
        };
        if let Some(c) = cseq {
            resp = resp.with_header("CSeq", c.to_string());
        }
        resp = resp.with_header("Server", SERVER_NAME);
        self.handle.send_response(&resp).await;
        if let Some(sink) = self.pending_open.take() {
            sink.open();
        }
    }

    async fn dispatch(&mut self, req: &Request) -> Handled {
        let rtsps = &self.server.config().rtsps;
        if rtsps.require_tls && !self.handle.tls && req.method != Method::Options {
            // The reason phrase is what clients show: say what to do.
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!("TLS required: use rtsps:// on port {}", rtsps.listen.port()),
                vec![(
                    REASON,
                    format!(
                        "Forbidden - TLS required, use rtsps:// port {}",
                        rtsps.listen.port()
                    ),
                )],
            ));
        }
        match req.method {
            Method::Options => Ok(Response::new(StatusCode::OK).with_header("Public", PUBLIC)),
            Method::Describe => self.describe(req).await,
            Method::Announce => self.announce(req),
            Method::Setup => self.setup(req).await,
            Method::Play => self.play(req),
            Method::Pause => self.pause(req),
            Method::Record => self.record(req),
            Method::Teardown => self.teardown(req),
            Method::GetParameter | Method::SetParameter => self.parameter(req),
            _ => Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("method {}", req.method),
            )),
        }
    }

    /// Checks that the request may do `action` on `path`; returns the principal.
    fn authorize(&mut self, req: &Request, action: Action, path: &str) -> Result<String, Refusal> {
        let decision = self.server.auth.check(
            req.headers.get("Authorization"),
            req.method.as_str(),
            &req.uri,
            action,
            path,
            self.handle.peer.ip(),
            self.handle.tls,
            &mut self.nonces,
            Instant::now(),
        );
        match decision {
            Decision::Allowed(who) => Ok(who),
            Decision::Challenge(values) => Err(Refusal(
                StatusCode::UNAUTHORIZED,
                format!("{action} {path:?}"),
                values
                    .into_iter()
                    .map(|v| ("WWW-Authenticate", v))
                    .collect(),
            )),
            Decision::Forbidden(why) => Err(Refusal::new(StatusCode::FORBIDDEN, why)),
        }
    }

    /// Like [`Connection::authorize`] for a request on an existing session: the
    /// principal must be the one that created it.
    fn authorize_session(
        &mut self,
        req: &Request,
        action: Action,
        session: &Session,
    ) -> Result<(), Refusal> {
        let who = self.authorize(req, action, session.stream.path())?;
        if who != session.principal && session.principal != "any" {
            return Err(Refusal::new(
                StatusCode::SESSION_NOT_FOUND,
                "session belongs to another user",
            ));
        }
        Ok(())
    }

    fn path_of(req: &Request) -> Result<String, Refusal> {
        request_path(&req.uri).map_err(|e| match e {
            // No resource has such a name (traversal attempts, encoded names, ...).
            UrlError::BadPath(_) => Refusal::new(StatusCode::NOT_FOUND, e.to_string()),
            UrlError::NotRtsp(_) => Refusal::new(StatusCode::BAD_REQUEST, e.to_string()),
        })
    }

    /// The file name a `vod/...` path asks for, when stored media is served.
    fn vod_name<'p>(&self, path: &'p str) -> Option<&'p str> {
        let vod = &self.server.config().vod;
        if !vod.enabled || vod.dir.is_none() {
            return None;
        }
        path.strip_prefix("vod/")
    }

    /// Opens a stored file for DESCRIBE or a new session.
    fn open_vod(&self, name: &str) -> Result<OpenedMedia, Refusal> {
        let dir = self.server.config().vod.dir.clone().unwrap_or_default();
        let file = vod::resolve(&dir, name)
            .map_err(|e| Refusal::new(StatusCode::NOT_FOUND, format!("vod/{name}: {e}")))?;
        vod::open_path(&file).map_err(|e| {
            let status = match e {
                VodError::NotFound => StatusCode::NOT_FOUND,
                VodError::Unsupported(_) | VodError::Malformed(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                VodError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Refusal::new(status, format!("{}: {e}", file.display()))
        })
    }

    fn ready_stream(&self, path: &str) -> Option<Arc<Stream>> {
        self.server
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .map(|e| e.stream.clone())
            .filter(|s| s.is_ready())
    }

    /// The session a request names, if it was created on this connection.
    fn own_session(&self, req: &Request) -> Result<Option<Arc<Session>>, Refusal> {
        let Some(id) = req.session_id() else {
            return Ok(None);
        };
        match self.server.session(id) {
            Some(s) if s.conn.id == self.handle.id => {
                s.touch(Instant::now());
                Ok(Some(s))
            }
            // Sessions of other connections are never honoured, and never revealed.
            _ => Err(Refusal::new(
                StatusCode::SESSION_NOT_FOUND,
                "unknown session or session of another connection",
            )),
        }
    }

    fn require_session(&self, req: &Request) -> Result<Arc<Session>, Refusal> {
        self.own_session(req)?
            .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "no Session header"))
    }

    /// The ready stream of `path`, starting its pull source (and waiting up to the
    /// source's start timeout) when the path is configured with one.
    async fn stream_for(&self, path: &str) -> Option<Arc<Stream>> {
        if let Some(s) = self.ready_stream(path) {
            if let Some(p) = self
                .server
                .pulls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
            {
                p.touch();
            }
            return Some(s);
        }
        let pull = self.server.ensure_pull(path)?;
        let timeout = self
            .server
            .config()
            .resolve_path(path)
            .map_or(Duration::from_secs(10), |r| {
                r.config.source_on_demand_start_timeout
            });
        pull.wait_ready(timeout).await
    }

    async fn describe(&mut self, req: &Request) -> Handled {
        let path = Self::path_of(req)?;
        self.authorize(req, Action::Read, &path)?;
        if let Some(name) = self.vod_name(&path) {
            let media = self.open_vod(name)?;
            info!(conn = self.handle.id, peer = %self.handle.peer, %path, "describe (file)");
            return Ok(Response::new(StatusCode::OK)
                .with_header("Content-Base", base_url(&req.uri, &path))
                .with_body("application/sdp", media.presentation.reader_sdp(1)));
        }
        let stream = self.stream_for(&path).await.ok_or_else(|| {
            Refusal::new(StatusCode::NOT_FOUND, format!("no stream on path {path:?}"))
        })?;
        let sdp = stream.presentation().reader_sdp(stream.version());
        info!(conn = self.handle.id, peer = %self.handle.peer, %path, "describe");
        Ok(Response::new(StatusCode::OK)
            .with_header("Content-Base", base_url(&req.uri, &path))
            .with_body("application/sdp", sdp))
    }

    fn announce(&mut self, req: &Request) -> Handled {
        let path = Self::path_of(req)?;
        self.authorize(req, Action::Publish, &path)?;
        if path.is_empty() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "ANNOUNCE needs a path",
            ));
        }
        if self.vod_name(&path).is_some() {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "vod/ serves stored files; publish elsewhere",
            ));
        }
        let ctype = req.headers.get("Content-Type").unwrap_or("");
        if !ctype.to_ascii_lowercase().starts_with("application/sdp") {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Type {ctype:?}, expected application/sdp"),
            ));
        }
        let presentation = Presentation::from_sdp(&req.body)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let stream = Stream::new(path.clone(), presentation, self.server.next_version());
        stream.set_gop_cache(self.server.config().rtsp.gop_cache);
        stream.set_fanout_window(self.server.config().rtsp.fanout_window);
        let replaced = {
            let mut paths = self.server.paths.lock().unwrap_or_else(|e| e.into_inner());
            let old = paths.get(&path).cloned();
            if let Some(old) = &old {
                if old.configured {
                    return Err(Refusal::new(
                        StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                        format!("path {path:?} has a configured source"),
                    ));
                }
                if old.owner_conn != self.handle.id && !self.server.config().rtsp.override_publisher
                {
                    return Err(Refusal::new(
                        StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                        format!("path {path:?} already has a publisher"),
                    ));
                }
            }
            paths.insert(
                path.clone(),
                PathEntry {
                    stream: stream.clone(),
                    owner_conn: self.handle.id,
                    configured: false,
                },
            );
            old
        };
        if let Some(old) = replaced {
            info!(conn = self.handle.id, %path, "new publisher replaces the old one");
            let old_sessions: Vec<String> = self
                .server
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|s| Arc::ptr_eq(&s.stream, &old.stream) && s.role() == Role::Recorder)
                .map(|s| s.id.clone())
                .collect();
            old.stream.end(EndReason::Replaced);
            for id in old_sessions {
                self.server.end_session(&id, "replaced by a new publisher");
            }
        }
        if let Some(prev) = self.announced.replace(stream.clone()) {
            if !Arc::ptr_eq(&prev, &stream) && !prev.is_ready() {
                self.server.remove_path_if(prev.path(), &prev);
            }
        }
        info!(conn = self.handle.id, peer = %self.handle.peer, %path, tracks = stream.presentation().tracks().len(), "announce");
        Ok(Response::new(StatusCode::OK))
    }

    async fn setup(&mut self, req: &Request) -> Handled {
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
            self.setup_record(req, &path, &specs, existing)
        } else {
            self.setup_play(req, &path, &specs, existing).await
        }
    }

    fn new_session_id() -> String {
        format!("{:016X}", rand::random::<u64>())
    }

    fn session_header(&self, s: &Session) -> String {
        SessionHeader {
            id: s.id.clone(),
            timeout: Some(self.server.config().rtsp.session_timeout.as_secs() as u32),
        }
        .to_string()
    }

    /// Interleaved channels for a track: the client's if free, else the first free pair.
    fn channels_for(&self, spec: &TransportSpec, track: usize) -> Result<(u8, u8), Refusal> {
        if let Some((a, b)) = spec.interleaved {
            if self.channels.contains_key(&a) || self.channels.contains_key(&b) || a == b {
                return Err(Refusal::new(
                    StatusCode::UNSUPPORTED_TRANSPORT,
                    format!("interleaved channels {a}-{b} already in use"),
                ));
            }
            return Ok((a, b));
        }
        let start = (2 * track).min(254) as u8;
        (start..=254)
            .step_by(2)
            .chain((0..start).step_by(2))
            .map(|a| (a, a + 1))
            .find(|(a, b)| !self.channels.contains_key(a) && !self.channels.contains_key(b))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNSUPPORTED_TRANSPORT,
                    "no free interleaved channels",
                )
            })
    }

    fn setup_record(
        &mut self,
        req: &Request,
        path: &str,
        specs: &[TransportSpec],
        existing: Option<Arc<Session>>,
    ) -> Handled {
        let stream = self
            .announced
            .clone()
            .filter(|s| path.starts_with(s.path()) && !s.is_ended())
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                    "SETUP for record without ANNOUNCE of this path on this connection",
                )
            })?;
        let principal = self.authorize(req, Action::Publish, stream.path())?;
        let rest = path[stream.path().len()..].trim_start_matches('/');
        let presentation = stream.presentation();
        let track = presentation
            .publisher_track(&req.uri, rest)
            .or_else(|| (rest.is_empty() && presentation.tracks().len() == 1).then_some(0))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no announced track {rest:?}"),
                )
            })?;
        let now = Instant::now();
        let session = match existing {
            Some(s) => {
                if !Arc::ptr_eq(&s.stream, &stream) {
                    return Err(Refusal::new(
                        StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                        "session belongs to another path",
                    ));
                }
                s.lock()
                    .machine
                    .handle_setup(Role::Recorder, track, now)
                    .map_err(|st| Refusal::new(st, "SETUP not valid now"))?;
                s
            }
            None => self.create_session(&stream, Role::Recorder, track, now, None, principal)?,
        };
        let server = self.server.clone();
        let ingest = {
            let mut inner = session.lock();
            inner
                .ingest
                .get_or_insert_with(|| {
                    Arc::new(Ingest::new(
                        stream.clone(),
                        rand::random(),
                        self.server.epoch,
                    ))
                })
                .clone()
        };
        let cfg = server.config();
        let mut last_err = Refusal::new(
            StatusCode::UNSUPPORTED_TRANSPORT,
            "no acceptable transport offered",
        );
        for spec in specs {
            if spec.multicast {
                continue;
            }
            if spec.is_tcp() {
                if !cfg.allows(TransportKind::Tcp) {
                    continue;
                }
                let (rtp, rtcp) = match self.channels_for(spec, track) {
                    Ok(c) => c,
                    Err(e) => {
                        last_err = e;
                        continue;
                    }
                };
                self.channels
                    .insert(rtp, Channel::IngestRtp(ingest.clone(), track));
                self.channels
                    .insert(rtcp, Channel::IngestRtcp(ingest.clone(), track));
                self.set_transport(&session, track, TrackTransport::Tcp { rtp, rtcp });
                let t = format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp};mode=record");
                info!(session = %session.id, conn = self.handle.id, %path, track, transport = %t, "setup (publish)");
                return Ok(self.setup_response(&session, t));
            }
            let (Some(udp), true) = (&server.udp, cfg.allows(TransportKind::Udp)) else {
                continue;
            };
            let Some((crtp, crtcp)) = spec.client_port else {
                last_err = Refusal::new(
                    StatusCode::UNSUPPORTED_TRANSPORT,
                    "UDP transport without client_port",
                );
                continue;
            };
            let ip = self.handle.peer.ip();
            let (rtp, rtcp) = (SocketAddr::new(ip, crtp), SocketAddr::new(ip, crtcp));
            if !udp.add_ingest(rtp, rtcp, ingest.clone(), track) {
                last_err = Refusal::new(
                    StatusCode::UNSUPPORTED_TRANSPORT,
                    format!("client ports {crtp}-{crtcp} already in use"),
                );
                continue;
            }
            self.set_transport(&session, track, TrackTransport::Udp { rtp, rtcp });
            let sp = cfg.rtsp.rtp_port;
            let t = format!(
                "RTP/AVP;unicast;client_port={crtp}-{crtcp};server_port={sp}-{};mode=record",
                sp + 1
            );
            info!(session = %session.id, conn = self.handle.id, %path, track, transport = %t, "setup (publish)");
            return Ok(self.setup_response(&session, t));
        }
        Err(last_err)
    }

    fn create_session(
        &mut self,
        stream: &Arc<Stream>,
        role: Role,
        track: usize,
        now: Instant,
        file: Option<FileSource>,
        principal: String,
    ) -> Result<Arc<Session>, Refusal> {
        let limits = &self.server.config().limits;
        if self.server.session_count() >= limits.max_sessions {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("session limit ({}) reached", limits.max_sessions),
            ));
        }
        if role == Role::Player
            && self.server.readers_on_path(stream.path()) >= limits.max_readers_per_path
        {
            return Err(Refusal::new(
                StatusCode::NOT_ENOUGH_BANDWIDTH,
                format!(
                    "reader limit ({}) of path {:?} reached",
                    limits.max_readers_per_path,
                    stream.path()
                ),
            ));
        }
        let machine =
            ServerSession::new(role, track, self.server.config().rtsp.session_timeout, now)
                .map_err(|st| Refusal::new(st, "track index out of range"))?;
        let tracks = stream.presentation().tracks().len();
        let session = Arc::new(Session {
            id: Self::new_session_id(),
            conn: self.handle.clone(),
            principal,
            stream: stream.clone(),
            file,
            inner: Mutex::new(SessionInner {
                machine,
                transports: vec![None; tracks],
                playing: None,
                ingest: None,
                receiver_reports: None,
                reader_reports: vec![None; tracks],
                multicast_member: false,
            }),
        });
        self.server
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.id.clone(), session.clone());
        self.sessions.push(session.id.clone());
        Ok(session)
    }

    fn set_transport(&self, session: &Session, track: usize, t: TrackTransport) {
        if let Some(slot) = session.lock().transports.get_mut(track) {
            *slot = Some(t);
        }
    }

    fn setup_response(&self, session: &Session, transport: String) -> Response {
        Response::new(StatusCode::OK)
            .with_header("Transport", transport)
            .with_header("Session", self.session_header(session))
    }

    async fn setup_play(
        &mut self,
        req: &Request,
        path: &str,
        specs: &[TransportSpec],
        existing: Option<Arc<Session>>,
    ) -> Handled {
        let (base, track) = split_track(path);
        let (lookup, track) = match track {
            Some(t) => (base, t),
            None => (path, 0),
        };
        // Before anything is opened or pulled.
        let principal = self.authorize(req, Action::Read, lookup)?;
        // Stored files: each new session plays its own private stream.
        let mut file = None;
        let stream = match (self.vod_name(lookup), &existing) {
            (Some(_), Some(s)) if s.stream.path() == lookup => Some(s.stream.clone()),
            (Some(name), _) => {
                let media = self.open_vod(name)?;
                let stream = Stream::new(lookup.to_owned(), media.presentation, 1);
                // A private stream has one reader that starts at its own position.
                stream.set_gop_cache(false);
                stream.set_ready();
                file = Some(FileSource::new(
                    media.demuxer,
                    media.packetizers,
                    stream.clone(),
                    false,
                    lookup.to_owned(),
                ));
                Some(stream)
            }
            (None, _) => self.stream_for(lookup).await,
        };
        let stream = stream.ok_or_else(|| {
            Refusal::new(StatusCode::NOT_FOUND, format!("no stream on path {path:?}"))
        })?;
        let ntracks = stream.presentation().tracks().len();
        if split_track(path).1.is_none() && ntracks != 1 {
            return Err(Refusal::new(
                StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                "SETUP needs a track URL for a multi-track stream",
            ));
        }
        if track >= ntracks {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no track {track}"),
            ));
        }
        let now = Instant::now();
        let server = self.server.clone();
        let cfg = server.config();
        // Pick the first offered transport we support.
        let mut chosen: Option<(TrackTransport, String)> = None;
        let mut last_err = Refusal::new(
            StatusCode::UNSUPPORTED_TRANSPORT,
            "no acceptable transport offered",
        );
        let session_kind = existing.as_ref().and_then(|s| {
            s.lock()
                .transports
                .iter()
                .flatten()
                .next()
                .map(|t| match t {
                    TrackTransport::Udp { .. } => TransportKind::Udp,
                    TrackTransport::Tcp { .. } => TransportKind::Tcp,
                    TrackTransport::Multicast { .. } => TransportKind::Multicast,
                })
        });
        let ssrc = stream
            .last_header(track)
            .map(|h| format!(";ssrc={:08X}", h.ssrc))
            .unwrap_or_default();
        for spec in specs {
            let kind = if spec.is_tcp() {
                TransportKind::Tcp
            } else if spec.multicast {
                TransportKind::Multicast
            } else {
                TransportKind::Udp
            };
            if !cfg.allows(kind) || session_kind.is_some_and(|k| k != kind) {
                continue;
            }
            match kind {
                TransportKind::Tcp => match self.channels_for(spec, track) {
                    Ok((rtp, rtcp)) => {
                        chosen = Some((
                            TrackTransport::Tcp { rtp, rtcp },
                            format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp}{ssrc};mode=play"),
                        ));
                    }
                    Err(e) => last_err = e,
                },
                TransportKind::Udp => {
                    if self.server.udp.is_none() {
                        continue;
                    }
                    let Some((crtp, crtcp)) = spec.client_port else {
                        last_err = Refusal::new(
                            StatusCode::UNSUPPORTED_TRANSPORT,
                            "UDP transport without client_port",
                        );
                        continue;
                    };
                    // Media only ever goes to the address the request came from.
                    if let Some(dest) = &spec.destination {
                        if dest.parse::<std::net::IpAddr>().ok() != Some(self.handle.peer.ip()) {
                            last_err = Refusal::new(
                                StatusCode::UNSUPPORTED_TRANSPORT,
                                "destination differs from the client's address",
                            );
                            continue;
                        }
                    }
                    if crtp == 0 {
                        last_err = Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, "client_port 0");
                        continue;
                    }
                    let ip = self.handle.peer.ip();
                    let sp = cfg.rtsp.rtp_port;
                    chosen = Some((
                        TrackTransport::Udp {
                            rtp: SocketAddr::new(ip, crtp),
                            rtcp: SocketAddr::new(ip, crtcp),
                        },
                        format!(
                            "RTP/AVP;unicast;client_port={crtp}-{crtcp};server_port={sp}-{}{ssrc};mode=play",
                            sp + 1
                        ),
                    ));
                }
                TransportKind::Multicast => {
                    let Some(m) = &self.server.multicast else {
                        continue;
                    };
                    // The group is acquired below, once per session.
                    let already = existing.as_ref().is_some_and(|s| {
                        s.lock()
                            .transports
                            .iter()
                            .flatten()
                            .any(|t| matches!(t, TrackTransport::Multicast { .. }))
                    });
                    let group = if already {
                        existing.as_ref().and_then(|s| {
                            s.lock().transports.iter().flatten().find_map(|t| match t {
                                TrackTransport::Multicast { group, .. } => Some(*group),
                                _ => None,
                            })
                        })
                    } else {
                        None
                    };
                    let group = match group {
                        Some(g) => g,
                        None => match m.acquire(stream.path()) {
                            Ok(g) => g,
                            Err(e) => {
                                last_err =
                                    Refusal::new(StatusCode::NOT_ENOUGH_BANDWIDTH, e.to_string());
                                continue;
                            }
                        },
                    };
                    let port = m.port(track);
                    let ttl = cfg.rtsp.multicast_ttl;
                    chosen = Some((
                        TrackTransport::Multicast { group, port },
                        format!(
                            "RTP/AVP;multicast;destination={group};port={port}-{};ttl={ttl}{ssrc};mode=play",
                            port + 1
                        ),
                    ));
                }
            }
            if chosen.is_some() {
                break;
            }
        }
        let Some((transport, header)) = chosen else {
            return Err(last_err);
        };
        let release_group = |this: &Self| {
            if let (TrackTransport::Multicast { .. }, Some(m)) = (transport, &this.server.multicast)
            {
                let fresh = existing.as_ref().is_none_or(|s| {
                    !s.lock()
                        .transports
                        .iter()
                        .flatten()
                        .any(|t| matches!(t, TrackTransport::Multicast { .. }))
                });
                if fresh {
                    m.release(stream.path());
                }
            }
        };
        let session = match &existing {
            Some(s) => {
                if !Arc::ptr_eq(&s.stream, &stream) {
                    release_group(self);
                    return Err(Refusal::new(
                        StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED,
                        "session belongs to another path",
                    ));
                }
                if let Err(st) = s.lock().machine.handle_setup(Role::Player, track, now) {
                    release_group(self);
                    return Err(Refusal::new(st, "SETUP not valid in this state"));
                }
                s.clone()
            }
            None => {
                match self.create_session(&stream, Role::Player, track, now, file.take(), principal)
                {
                    Ok(s) => s,
                    Err(e) => {
                        release_group(self);
                        return Err(e);
                    }
                }
            }
        };
        match transport {
            TrackTransport::Tcp { rtp, rtcp } => {
                self.channels.insert(rtp, Channel::ReaderRtp);
                self.channels
                    .insert(rtcp, Channel::ReaderRtcp(Arc::downgrade(&session), track));
            }
            TrackTransport::Udp { rtcp, .. } => {
                if let Some(udp) = &self.server.udp {
                    udp.add_reader(rtcp, &session, track);
                }
            }
            TrackTransport::Multicast { .. } => {}
        }
        self.set_transport(&session, track, transport);
        info!(session = %session.id, conn = self.handle.id, peer = %self.handle.peer, path = %stream.path(), track, transport = %header, "setup (play)");
        Ok(self.setup_response(&session, header))
    }

    /// Checks that a PLAY/PAUSE/RECORD/TEARDOWN URL names the session's stream (or one of
    /// its tracks); returns the track if one is named.
    fn session_url(&self, req: &Request, session: &Session) -> Result<Option<usize>, Refusal> {
        let path = Self::path_of(req)?;
        let stream_path = session.stream.path();
        if path == stream_path || path.is_empty() {
            return Ok(None);
        }
        match split_track(&path) {
            (base, Some(t)) if base == stream_path => Ok(Some(t)),
            _ if path.starts_with(stream_path) && session.role() == Role::Recorder => {
                let rest = path[stream_path.len()..].trim_start_matches('/');
                Ok(session
                    .stream
                    .presentation()
                    .publisher_track(&req.uri, rest))
            }
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("URL does not match the session's path {stream_path:?}"),
            )),
        }
    }

    fn play(&mut self, req: &Request) -> Handled {
        let session = self.require_session(req)?;
        self.authorize_session(req, Action::Read, &session)?;
        let track = self.session_url(req, &session)?;
        let ntracks = session.lock().machine.tracks().count();
        if track.is_some() && ntracks > 1 {
            return Err(Refusal::new(
                StatusCode::ONLY_AGGREGATE_OPERATION_ALLOWED,
                "PLAY of one track of a multi-track session",
            ));
        }
        let range = match req.headers.get("Range") {
            Some(v) => Some(
                Range::parse(v)
                    .map_err(|e| Refusal::new(StatusCode::INVALID_RANGE, e.to_string()))?,
            ),
            None => None,
        };
        let scale = match req.headers.get("Scale") {
            Some(v) => Some(v.trim().parse::<f64>().map_err(|_| {
                Refusal::new(StatusCode::HEADER_FIELD_NOT_VALID, format!("Scale {v:?}"))
            })?),
            None => None,
        };
        if session.file.is_some() {
            return self.play_file(req, &session, range, scale);
        }
        if scale.is_some_and(|s| s != 1.0) {
            return Err(Refusal::new(
                StatusCode::HEADER_FIELD_NOT_VALID,
                "live streams play at Scale 1 only",
            ));
        }
        if session.stream.is_ended() {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "stream ended"));
        }
        let transition = session
            .lock()
            .machine
            .handle_play(Instant::now())
            .map_err(|st| Refusal::new(st, "PLAY not valid for this session"))?;
        let base = base_url(&req.uri, session.stream.path());
        // The last header before the reader's first packet, per track: exact for a new
        // subscription (taken atomically with it), the current one otherwise.
        let starts: Vec<Option<TrackStart>> = match transition {
            Transition::Started => match self.start_playing(&session) {
                Some((sink, starts)) => {
                    self.pending_open = Some(sink);
                    starts
                }
                None => Vec::new(),
            },
            _ => (0..session.stream.presentation().tracks().len())
                .map(|t| {
                    session.stream.last_header(t).map(|h| TrackStart {
                        seq: h.sequence.wrapping_add(1),
                        rtptime: h.timestamp,
                    })
                })
                .collect(),
        };
        let tracks: Vec<usize> = session.lock().machine.tracks().collect();
        let infos: Vec<RtpInfo> = tracks
            .into_iter()
            .map(|t| {
                let start = starts.get(t).copied().flatten();
                RtpInfo {
                    url: format!("{base}trackID={t}"),
                    seq: start.map(|s| s.seq),
                    rtptime: start.map(|s| s.rtptime),
                }
            })
            .collect();
        info!(session = %session.id, conn = self.handle.id, path = %session.stream.path(), "play");
        Ok(Response::new(StatusCode::OK)
            .with_header("Session", session.id.clone())
            .with_header("Range", "npt=now-")
            .with_header("RTP-Info", format_rtp_info(&infos)))
    }

    /// Subscribes a session that just entered Playing with a gated sink (the caller opens
    /// it once the PLAY answer is queued); returns the sink and the last header per track
    /// before its first packet.
    fn start_playing(
        &mut self,
        session: &Arc<Session>,
    ) -> Option<(Arc<ReaderSink>, Vec<Option<TrackStart>>)> {
        let cfg = self.server.config();
        let stream = session.stream.clone();
        let mut inner = session.lock();
        if inner.machine.state() != State::Playing || inner.playing.is_some() {
            return None;
        }
        let mut multicast = false;
        let targets: Vec<Target> = inner
            .transports
            .iter()
            .map(|t| match t {
                Some(TrackTransport::Udp { rtp, rtcp }) => Target::Udp {
                    rtp: *rtp,
                    rtcp: *rtcp,
                },
                Some(TrackTransport::Tcp { rtp, rtcp }) => Target::Tcp {
                    rtp: *rtp,
                    rtcp: *rtcp,
                },
                Some(TrackTransport::Multicast { .. }) => {
                    multicast = true;
                    Target::None
                }
                None => Target::None,
            })
            .collect();
        let udp = inner
            .transports
            .iter()
            .any(|t| matches!(t, Some(TrackTransport::Udp { .. })));
        let outbox = match (&self.server.udp, udp) {
            (Some(hub), true) => Outbox::Udp {
                rtp: hub.rtp.clone(),
                rtcp: hub.rtcp.clone(),
                gso: hub.gso,
            },
            _ => Outbox::Tcp(self.handle.media.clone()),
        };
        let conn = self.handle.clone();
        let sink = Arc::new(
            ReaderSink::new(
                session.id.clone(),
                targets,
                outbox,
                cfg.rtsp.slow_reader_timeout,
                Arc::new(move |why| conn.close(why)),
            )
            .recording_latency(self.server.egress_latency().clone()),
        );
        let (sink_id, starts) = stream.subscribe(sink.clone());
        inner.playing = Some(Playing {
            sink_id,
            sink: sink.clone(),
        });
        if multicast && !inner.multicast_member {
            if let Some(m) = &self.server.multicast {
                m.join(stream.path(), &stream, RTCP_INTERVAL);
                inner.multicast_member = true;
            }
        }
        Some((sink, starts))
    }

    fn pause(&mut self, req: &Request) -> Handled {
        let session = self.require_session(req)?;
        self.session_url(req, &session)?;
        if let Some(file) = &session.file {
            file.pause();
        }
        let mut inner = session.lock();
        if inner.machine.handle_pause(Instant::now()) == Transition::Paused {
            if let Some(p) = inner.playing.take() {
                session.stream.remove_sink(p.sink_id);
            }
            if inner.multicast_member {
                if let Some(m) = &self.server.multicast {
                    m.leave(session.stream.path());
                }
                inner.multicast_member = false;
            }
        }
        drop(inner);
        info!(session = %session.id, conn = self.handle.id, path = %session.stream.path(), "pause");
        Ok(Response::new(StatusCode::OK).with_header("Session", session.id.clone()))
    }

    /// PLAY of a stored file: seek (Range), resume (no Range), Scale; RTP-Info names each
    /// track's first packet and the RTP time of the actual start.
    fn play_file(
        &mut self,
        req: &Request,
        session: &Arc<Session>,
        range: Option<Range>,
        scale: Option<f64>,
    ) -> Handled {
        let Some(file) = &session.file else {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not a file session",
            ));
        };
        let (start, end) = match range {
            None => (None, None),
            Some(Range::Npt { start, end }) => {
                let secs = |t: Option<NptTime>| match t {
                    Some(NptTime::Seconds(s)) => Some(s),
                    _ => None,
                };
                (secs(start), secs(end))
            }
            Some(Range::Other(v)) => {
                return Err(Refusal::new(
                    StatusCode::INVALID_RANGE,
                    format!("only npt ranges are supported, got {v:?}"),
                ))
            }
        };
        let now = Instant::now();
        let transition = session
            .lock()
            .machine
            .handle_play(now)
            .map_err(|st| Refusal::new(st, "PLAY not valid for this session"))?;
        if transition == Transition::Started {
            if let Some((sink, _)) = self.start_playing(session) {
                self.pending_open = Some(sink);
            }
        }
        let applied = scale.unwrap_or(1.0);
        let started = match file.play(start, end, applied, now) {
            Ok(s) => s,
            Err(e) => {
                // Undo the state change: nothing plays.
                file.pause();
                let mut inner = session.lock();
                inner.machine.handle_pause(now);
                if let Some(p) = inner.playing.take() {
                    session.stream.remove_sink(p.sink_id);
                }
                self.pending_open = None;
                let status = match e {
                    PlayError::InvalidRange(_) => StatusCode::INVALID_RANGE,
                    PlayError::UnsupportedScale(_) => StatusCode::HEADER_FIELD_NOT_VALID,
                    PlayError::Media(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return Err(Refusal::new(status, e.to_string()));
            }
        };
        let base = base_url(&req.uri, session.stream.path());
        let tracks: Vec<usize> = session.lock().machine.tracks().collect();
        let infos: Vec<RtpInfo> = tracks
            .into_iter()
            .filter_map(|t| {
                let ts = started.tracks.get(t)?;
                Some(RtpInfo {
                    url: format!("{base}trackID={t}"),
                    seq: Some(ts.seq),
                    rtptime: Some(ts.rtptime),
                })
            })
            .collect();
        let end = started.end.unwrap_or_else(|| file.duration());
        let range = if started.scale < 0.0 {
            format!("npt={:.3}-{:.3}", started.start, started.end.unwrap_or(0.0))
        } else {
            format!("npt={:.3}-{end:.3}", started.start)
        };
        info!(session = %session.id, conn = self.handle.id, path = %session.stream.path(), start = started.start, scale = started.scale, "play (file)");
        let mut resp = Response::new(StatusCode::OK)
            .with_header("Session", session.id.clone())
            .with_header("Range", range)
            .with_header("RTP-Info", format_rtp_info(&infos));
        if scale.is_some() {
            resp = resp.with_header("Scale", format_scale(started.scale));
        }
        Ok(resp)
    }

    fn record(&mut self, req: &Request) -> Handled {
        let session = self.require_session(req)?;
        self.authorize_session(req, Action::Publish, &session)?;
        self.session_url(req, &session)?;
        let transition = session
            .lock()
            .machine
            .handle_record(Instant::now())
            .map_err(|st| Refusal::new(st, "RECORD not valid for this session"))?;
        if transition == Transition::Started {
            session.stream.set_ready();
            let task = tokio::spawn(run_receiver_reports(
                Arc::downgrade(&session),
                self.server.udp.clone(),
                self.handle.media.clone(),
            ));
            if let Some(old) = session.lock().receiver_reports.replace(task) {
                old.abort();
            }
        }
        info!(session = %session.id, conn = self.handle.id, peer = %self.handle.peer, path = %session.stream.path(), "record");
        Ok(Response::new(StatusCode::OK).with_header("Session", session.id.clone()))
    }

    fn teardown(&mut self, req: &Request) -> Handled {
        let session = self.require_session(req)?;
        let track = self.session_url(req, &session)?;
        let remaining = {
            let inner = session.lock();
            inner.machine.tracks().filter(|t| Some(*t) != track).count()
        };
        if let (Some(t), true) = (track, remaining > 0) {
            // Tear down one track: the rest keeps playing.
            let was_playing = {
                let mut inner = session.lock();
                if let Some(slot) = inner.transports.get_mut(t) {
                    *slot = None;
                }
                inner.machine.remove_track(t);
                let p = inner.playing.take();
                if let Some(p) = &p {
                    session.stream.remove_sink(p.sink_id);
                }
                p.is_some()
            };
            if was_playing {
                if let Some((sink, _)) = self.start_playing(&session) {
                    sink.open();
                }
            }
            info!(session = %session.id, conn = self.handle.id, track = t, "teardown (track)");
            return Ok(Response::new(StatusCode::OK).with_header("Session", session.id.clone()));
        }
        info!(session = %session.id, conn = self.handle.id, path = %session.stream.path(), "teardown");
        self.server.end_session(&session.id, "teardown");
        self.sessions.retain(|id| *id != session.id);
        self.channels.retain(|_, c| match c {
            Channel::ReaderRtcp(w, _) => w.strong_count() > 0,
            Channel::IngestRtp(i, _) | Channel::IngestRtcp(i, _) => !i.stream().is_ended(),
            Channel::ReaderRtp => true,
        });
        if session.role() == Role::Recorder {
            self.announced = None;
        }
        Ok(Response::new(StatusCode::OK))
    }

    fn parameter(&mut self, req: &Request) -> Handled {
        let session = self.own_session(req)?;
        let body = String::from_utf8_lossy(&req.body);
        // No parameter is supported, to read or to set: only the empty keep-alive.
        if !body.trim().is_empty() {
            return Err(Refusal::new(
                StatusCode::PARAMETER_NOT_UNDERSTOOD,
                format!(
                    "parameters not supported: {:?}",
                    body.chars().take(60).collect::<String>()
                ),
            ));
        }
        let mut resp = Response::new(StatusCode::OK);
        if let Some(s) = session {
            resp = resp.with_header("Session", s.id.clone());
        }
        Ok(resp)
    }
}

/// Sends the publisher's Receiver Reports every [`RTCP_INTERVAL`] until its session ends.
async fn run_receiver_reports(
    session: Weak<Session>,
    udp: Option<Arc<crate::udp::UdpHub>>,
    media: Arc<MediaQueue>,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        RTCP_INTERVAL,
    );
    loop {
        tick.tick().await;
        let Some(s) = session.upgrade() else {
            return;
        };
        let Some(ingest) = s.lock().ingest.clone() else {
            return;
        };
        let transports = s.lock().transports.clone();
        let now = Instant::now();
        for (track, t) in transports.iter().enumerate() {
            let Some(t) = t else { continue };
            let Some(rr) = ingest.receiver_report(track, now) else {
                continue;
            };
            match t {
                TrackTransport::Udp { rtcp, .. } => {
                    if let Some(udp) = &udp {
                        let _ = udp.rtcp.try_send_to(&rr, *rtcp);
                    }
                }
                TrackTransport::Tcp { rtcp, .. } => {
                    let _ = media.push(TcpOut::Frame {
                        channel: *rtcp,
                        data: rr,
                        received_at: None,
                    });
                }
                TrackTransport::Multicast { .. } => {}
            }
        }
    }
}

/// A Scale value as RTSP writes it: `2`, `-1`, `0.5`.
fn format_scale(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as i64)
    } else {
        format!("{s}")
    }
}
