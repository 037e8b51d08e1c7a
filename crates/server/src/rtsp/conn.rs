//! One RTSP connection: read → decode → handle → execute actions → write. Every RTSP
//! decision is the connection's [`ServerConnection`]'s; this glue hands it bytes and
//! time, answers its questions from server state ([`crate::rtsp::answers`]), executes its
//! actions ([`crate::rtsp::actions`]), writes its responses (through [`crate::rtsp::writer`]) and
//! re-arms its timer.

use sluice_rtsp::vec_map::VecMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_rtp::packet::looks_like_rtcp;
use sluice_rtsp::server::{Action, RandomIds, ServerConfig, ServerConnection, TransportPolicy};
use sluice_rtsp::{Decoder, Frame, Limits, Message, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::auth::ConnectionAuth;
use crate::config::TransportKind;
pub use crate::rtsp::conn_handle::{Accepted, ConnHandle};
use crate::rtsp::ingest::Ingest;
use crate::rtsp::readers::media_queue::MediaQueue;
use crate::rtsp::readers::reader::ReaderSink;
use crate::rtsp::session::Session;
use crate::rtsp::writer::{run_writer, SharedWrite};
use crate::rtsp::{Rtsp, RTCP_INTERVAL};
use sluice_hub::Playback;
use sluice_hub::Stream;

/// Where an interleaved channel's frames go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// A publisher's RTP (RTCP multiplexed on it is recognised).
    IngestRtp(Arc<Ingest>),
    /// A publisher's RTCP.
    IngestRtcp(Arc<Ingest>),
    /// A reader's RTCP.
    ReaderRtcp(Weak<Session>),
    /// A reader's RTP channel: clients do not send on it.
    ReaderRtp,
}

/// An interleaved channel's route and the session track it belongs to.
#[derive(Debug, Clone)]
pub(crate) struct ChannelRoute {
    pub(crate) session: String,
    pub(crate) track: usize,
    pub(crate) to: Route,
}

/// One connection: its RTSP state and what the server holds for its decisions.
pub(crate) struct Conn {
    pub(crate) server: Arc<Rtsp>,
    pub(crate) handle: Arc<ConnHandle>,
    pub(crate) rtsp: ServerConnection,
    /// This connection's sessions as the server holds them, by id.
    pub(crate) sessions: VecMap<String, Arc<Session>>,
    /// Interleaved channels the committed SETUPs allocated.
    pub(crate) routes: VecMap<u8, ChannelRoute>,
    /// The stream this connection announced (its end closes the connection).
    pub(crate) announced: Option<Arc<Stream>>,
    /// The stream a SETUP for play found, for the commit that follows.
    pub(crate) found: Option<Found>,
    /// Readers a PLAY subscribed, opened once its answer is written.
    pub(crate) open_after_write: Vec<Arc<ReaderSink>>,
}

/// A stream a SETUP for play found, with the controls of its on-demand media if it has
/// any (a stored file playing into a private stream).
pub(crate) type Found = (Arc<Stream>, Option<Box<dyn Playback>>);

impl Conn {
    fn new(server: Arc<Rtsp>, handle: Arc<ConnHandle>) -> Conn {
        let c = server.config();
        let mut cfg = ServerConfig::new(handle.peer.ip());
        cfg.tls = handle.tls;
        cfg.require_tls = c.rtsps.require_tls.then_some(c.rtsps.listen.port());
        cfg.session_timeout = c.rtsp.session_timeout;
        let udp = server.udp.is_some() && c.allows(TransportKind::Udp);
        let multicast = server.multicast.is_some();
        cfg.transport = TransportPolicy {
            tcp: c.allows(TransportKind::Tcp),
            udp,
            multicast,
            server_port: udp.then_some(c.rtsp.rtp_port),
            multicast_port: multicast.then_some(c.rtsp.multicast_rtp_port),
            multicast_ttl: c.rtsp.multicast_ttl,
        };
        cfg.rtcp_interval = Some(RTCP_INTERVAL);
        let auth = ConnectionAuth::new(server.auth.clone(), handle.peer.ip(), handle.tls);
        let rtsp = ServerConnection::new(cfg, Box::new(auth), Box::new(RandomIds), Instant::now());
        Conn {
            server,
            handle,
            rtsp,
            sessions: VecMap::new(),
            routes: VecMap::new(),
            announced: None,
            found: None,
            open_after_write: Vec::new(),
        }
    }

    /// Writes the responses and executes the actions the last event produced, in the
    /// order the [`ServerConnection`] asks: responses first, so a new reader's media
    /// starts only after its PLAY answer. One exception: a RECORD's path is made ready
    /// before its answer leaves, so that a reader the publisher's 200 sets going finds it.
    async fn drain(&mut self) {
        let mut pending = std::collections::VecDeque::new();
        loop {
            pending.extend(std::iter::from_fn(|| self.rtsp.poll_action()));
            pending.retain(|action| match action {
                Action::Record { session, started } => {
                    self.record(session, *started);
                    false
                }
                _ => true,
            });
            while let Some(bytes) = self.rtsp.poll_transmit() {
                self.handle.send_bytes(bytes).await;
            }
            for sink in self.open_after_write.drain(..) {
                sink.open();
            }
            let Some(action) = pending.pop_front() else {
                return;
            };
            self.execute(action).await;
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Ask { token, question } => self.answer(token, question).await,
            Action::Pause { session, stopped } => self.pause(&session, stopped),
            Action::Record { session, started } => self.record(&session, started),
            Action::TeardownTrack { session, track } => self.teardown_track(&session, track),
            Action::SendReceiverReports { session } => self.send_receiver_reports(&session),
            Action::EndSession {
                session,
                role,
                reason,
                ..
            } => self.end_session(&session, role, reason),
            Action::Refused {
                method,
                uri,
                status,
                why,
            } => {
                // A SETUP refused after its stream was found does not keep it open.
                self.found = None;
                let conn = self.handle.id;
                if status == StatusCode::UNAUTHORIZED {
                    debug!(conn, %method, %uri, why, "authentication required");
                } else {
                    warn!(conn, %method, %uri, status = status.0, why, "request refused");
                }
            }
        }
    }

    /// An interleaved frame from the client, to the ingest or reader it belongs to.
    fn handle_interleaved(&mut self, channel: u8, payload: Bytes) {
        let now = Instant::now();
        let Some(route) = self.routes.get(&channel) else {
            return;
        };
        let track = route.track;
        match &route.to {
            // Some publishers multiplex RTCP on the RTP channel (RFC 5761).
            Route::IngestRtp(ingest) if looks_like_rtcp(&payload) => {
                ingest.handle_rtcp(track, &payload, now)
            }
            Route::IngestRtp(ingest) => ingest.handle_rtp(track, payload, now),
            Route::IngestRtcp(ingest) => ingest.handle_rtcp(track, &payload, now),
            Route::ReaderRtcp(session) => {
                if let Some(s) = session.upgrade() {
                    s.handle_reader_rtcp(track, &payload, now);
                }
            }
            Route::ReaderRtp => {}
        }
    }

    /// The session timer: the media's signs of life first, then expiries and reports.
    async fn on_timer(&mut self) {
        for (id, s) in &self.sessions {
            self.rtsp.handle_session_activity(id, s.last_activity());
        }
        self.rtsp.handle_timeout(Instant::now());
        self.drain().await;
    }

    /// After the socket closed: UDP reader sessions live on until they time out (RFC 2326
    /// sessions are not bound to a connection), or until the server ends them.
    async fn linger(mut self) {
        while let Some(at) = self.rtsp.poll_timeout() {
            let server = &self.server;
            self.sessions.retain(|id, _| server.session(id).is_some());
            if self.sessions.is_empty() {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
            self.on_timer().await;
        }
    }
}

/// Serves one accepted plain TCP connection until it closes. Its write side is shared
/// by the writer task and the fan-out's direct writes.
pub async fn run_tcp(server: Arc<Rtsp>, socket: TcpStream, from: Accepted) {
    let (rd, wr) = socket.into_split();
    let wr = Arc::new(wr);
    serve(server, rd, SharedWrite(wr.clone()), Some(wr), from).await;
}

/// Serves one accepted connection of any stream (TLS) until it closes.
pub async fn run<S>(server: Arc<Rtsp>, socket: S, from: Accepted)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(socket);
    serve(server, rd, wr, None, from).await;
}

async fn serve<R, W>(
    server: Arc<Rtsp>,
    mut rd: R,
    wr: W,
    direct: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>,
    from: Accepted,
) where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let Accepted { id, peer, tls, .. } = from;
    let media = Arc::new(
        MediaQueue::new(server.config().rtsp.reader_queue, direct)
            .recording_latency(server.egress_latency().clone()),
    );
    let handle = Arc::new(ConnHandle::new(from, media.clone()));
    info!(conn = id, %peer, tls, "connect");
    let writer = tokio::spawn(run_writer(wr, media, handle.clone()));

    let cfg = &server.config().limits;
    let limits = Limits {
        max_head_bytes: cfg.max_head_bytes,
        max_body_bytes: cfg.max_body_bytes,
        max_headers: cfg.max_headers,
    };
    let (request_timeout, idle_timeout) = (cfg.request_timeout, cfg.idle_timeout);
    let mut decoder = Decoder::new(limits);
    // Boxed: the connection's state lives on the heap, not in every idle future.
    let mut conn = Box::new(Conn::new(server.clone(), handle.clone()));
    // Requests are small; the buffer grows as reads need (doubling), and for interleaved
    // media from publishers.
    let mut buf = BytesMut::new();
    let mut last_input = Instant::now();
    // When the unfinished request at the front of `buf` started arriving.
    let mut partial_since: Option<Instant> = None;
    // A publisher's packets collected but not relayed yet go out when its stream's timer
    // says so (its input paused, or its fan-out window passed).
    let mut batch_timer: Option<Instant> = None;
    'read: loop {
        let announced = conn.announced.clone();
        // Between requests a reader's connection holds no read buffer: once it plays, only
        // RTCP and keep-alives arrive, seconds apart, and thousands of readers would each
        // keep one. A publisher's stays, for its media.
        if buf.is_empty() && announced.is_none() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        // A half-sent request must complete in time; an idle connection without sessions
        // is closed. Both come back here as a timer.
        let deadline = match partial_since {
            Some(t) => t + request_timeout,
            None if !conn.rtsp.has_sessions() => last_input + idle_timeout,
            None => last_input + Duration::from_secs(3600),
        };
        let session_timer = conn.rtsp.poll_timeout();
        let next_timer = [
            batch_timer.filter(|_| announced.is_some()),
            session_timer,
            Some(deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(deadline);
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break,
                Ok(_) => last_input = Instant::now(),
                Err(e) => {
                    debug!(conn = id, error = %e, "read error");
                    break;
                }
            },
            _ = handle.closed() => break,
            _ = async { match &announced { Some(s) => s.ended().await, None => std::future::pending().await } } => {
                info!(conn = id, "stream replaced or ended; closing publisher connection");
                conn.rtsp.handle_publisher_replaced(Instant::now());
                Box::pin(conn.drain()).await;
                break;
            }
            // One timer for the three deadlines (a publisher's batch, the sessions, the
            // request or idle limit): each costs the connection's future a timer entry.
            _ = tokio::time::sleep_until(next_timer.into()) => {
                let now = Instant::now();
                if let (Some(at), Some(s)) = (batch_timer, &announced) {
                    if at <= now {
                        s.handle_timeout(now);
                        batch_timer = s.poll_timeout();
                    }
                }
                if session_timer.is_some_and(|at| at <= now) {
                    Box::pin(conn.on_timer()).await;
                    if handle.is_closing() {
                        break;
                    }
                }
                if deadline > now {
                    continue;
                }
                if partial_since.is_some() {
                    warn!(conn = id, %peer, "request not completed in time; closing connection");
                    let mut out = BytesMut::new();
                    Response::new(StatusCode::REQUEST_TIMEOUT)
                        .with_header("Connection", "close")
                        .encode(&mut out);
                    handle.send_bytes(out.freeze()).await;
                } else if !conn.rtsp.has_sessions() {
                    info!(conn = id, %peer, "idle connection closed");
                }
                if partial_since.is_some() || !conn.rtsp.has_sessions() {
                    break;
                }
                continue;
            }
        }
        conn.rtsp.handle_activity(Instant::now());
        let mut decoded = 0usize;
        // A publisher's frames that end in the input at hand go out together once it is
        // used up: one frame per batch when the server keeps up, several when it falls
        // behind and input piles up in the socket (see `Stream::hold_frames`).
        let held = announced.as_ref();
        if let Some(s) = held {
            s.note_input(last_input);
            s.hold_frames();
        }
        let mut closing = false;
        'at_hand: loop {
            loop {
                let frame = decoder.decode(&mut buf);
                if matches!(frame, Ok(Some(_))) {
                    decoded += 1;
                }
                match frame {
                    Ok(Some(Frame::Message(Message::Request(req)))) => {
                        conn.rtsp.handle_request(Instant::now(), req);
                        Box::pin(conn.drain()).await;
                    }
                    Ok(Some(Frame::Message(Message::Response(_)))) => {}
                    Ok(Some(Frame::Interleaved { channel, payload })) => {
                        conn.handle_interleaved(channel, payload)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        conn.rtsp.handle_decode_error(Instant::now(), &e);
                        Box::pin(conn.drain()).await;
                        closing = true;
                        break 'at_hand;
                    }
                }
                if handle.is_closing() {
                    closing = true;
                    break 'at_hand;
                }
            }
            let Some(s) = held else {
                break;
            };
            // More input already waiting joins this batch; an end of stream or an error
            // is left for the next read to report.
            match crate::rtsp::at_hand::ready_now(rd.read_buf(&mut buf)).await {
                Some(Ok(n)) if n > 0 => {
                    last_input = Instant::now();
                    s.note_input(last_input);
                }
                _ => break 'at_hand,
            }
        }
        // The input at hand is used up: the held frames go out, and the stream's timer
        // sends the rest of an unfinished frame if its input pauses.
        if let Some(s) = held {
            s.release_frames();
        }
        batch_timer = announced.as_ref().and_then(|s| s.poll_timeout());
        if closing {
            break 'read;
        }
        // The clock runs for one unfinished message: a publisher streaming interleaved
        // frames whose reads end mid-frame makes progress, and restarts it.
        partial_since = if buf.is_empty() {
            None
        } else if decoded > 0 {
            Some(last_input)
        } else {
            partial_since.or(Some(last_input))
        };
    }
    conn.rtsp.handle_close(Instant::now());
    Box::pin(conn.drain()).await;
    server.connection_closed(id);
    handle.close("connection ended");
    // Let the writer flush what is queued (e.g. a final error response), briefly; a
    // writer stuck on a peer that does not read is aborted, which closes the socket.
    handle.media.close();
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    // The queue drops its handle on the socket, so the socket closes now even while
    // sinks still hold the queue.
    handle.media.set_closed();
    info!(conn = id, %peer, "disconnect");
    if conn.rtsp.has_sessions() {
        for s in conn.rtsp.sessions() {
            info!(session = %s.id, conn = id, "connection closed; UDP session kept until timeout");
        }
        tokio::spawn((*conn).linger());
    }
}
