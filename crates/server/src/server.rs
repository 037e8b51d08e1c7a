//! The server: binds the listeners, owns the path registry and the session table, runs
//! the accept loop and the session reaper, and ends sessions with all they hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::conn::Accepted;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::config::{Config, SourceKind, TransportKind};
use crate::file_source::FileSource;
use crate::latency::LatencyHistogram;
use crate::multicast::Multicast;
use crate::pull::Pull;
use crate::session::Session;
use crate::stream::{EndReason, Stream};
use crate::udp::UdpHub;
use crate::vod;
use sluice_hub::registry::{Busy, Claim, Event, Owner, Pattern, Published, Registry, WatcherId};
use sluice_rtsp::server::TrackTransport;
use sluice_rtsp::server_session::Role;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener or socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The RTSPS certificate or key is unusable.
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    /// The users configuration is unusable.
    #[error("invalid users: {0}")]
    Users(String),
    /// A configured source could not be started.
    #[error("cannot start the source of path {path:?}: {reason}")]
    Source {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP listener could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

/// The embedded demo clip served at `demo.path` (regenerate with scripts/make-demo-clip.sh).
pub static DEMO_CLIP: &[u8] = include_bytes!("../assets/demo.mp4");

/// A connection's place in the connection limits, released when dropped.
struct ConnSlot {
    server: Weak<Server>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(s) = self.server.upgrade() {
            s.conn_total.fetch_sub(1, Ordering::Relaxed);
            let mut counts = s.conn_counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.ip);
                }
            }
        }
    }
}

/// Interval between the Sender/Receiver Reports Sluice sends.
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);

/// A batch waiting longer than this for its frame's end is relayed as it is (see
/// [`Stream::flush_stale`]). A backstop only: every live source runs its stream's timer
/// ([`Stream::poll_timeout`]), but an RTSP connection runs it for the stream it announced
/// last, so a stream it recorded before announcing another has only this.
const STALE_BATCH: Duration = Duration::from_millis(50);

/// Path events the event pump's watcher queues before it drops some (and logs the gap).
const PATH_EVENT_QUEUE: usize = 4096;

/// A bound, not yet running server.
pub struct Server {
    config: Config,
    listener: Mutex<Option<TcpListener>>,
    local_addr: SocketAddr,
    /// The path registry: claims (publishers, configured sources), readiness, look-ups
    /// and lifecycle events. Change it through [`Server::publish_path`],
    /// [`Server::set_path_ready`] and [`Server::end_path`], which wake the event pump.
    pub(crate) paths: Mutex<Registry<Arc<Stream>>>,
    /// The event pump's watcher of every path ([`Server::run_event_pump`]).
    path_watcher: WatcherId,
    /// Wakes the event pump after a registry change.
    path_events: tokio::sync::Notify,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) udp: Option<Arc<UdpHub>>,
    pub(crate) multicast: Option<Multicast>,
    pub(crate) epoch: Instant,
    next_conn: AtomicU64,
    next_version: AtomicU64,
    /// Configured sources (file paths, the demo) by path, kept alive with the server.
    sources: Mutex<Vec<(String, FileSource)>>,
    /// Running pull sources by path.
    pub(crate) pulls: Mutex<HashMap<String, Arc<Pull>>>,
    /// Users, permissions and the authentication exchange.
    pub(crate) auth: Arc<Authenticator>,
    tls_listener: Mutex<Option<(TcpListener, TlsAcceptor)>>,
    conn_total: AtomicUsize,
    conn_counts: Mutex<HashMap<IpAddr, usize>>,
    last_limit_log: AtomicU64,
    /// This server's ingest → egress latency (see [`Server::egress_latency`]).
    egress_latency: Arc<LatencyHistogram>,
    /// HTTP (crate::http): bound in `bind`, served from `run`.
    http: Mutex<Option<crate::http::HttpServer>>,
    http_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Server {
    /// Binds the RTSP listener and the media sockets the configuration asks for.
    pub async fn bind(config: Config) -> Result<Arc<Server>, ServerError> {
        let r = &config.rtsp;
        let listener = TcpListener::bind(r.listen)
            .await
            .map_err(|source| ServerError::Bind {
                what: "RTSP listener",
                addr: r.listen.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            what: "RTSP listener",
            addr: r.listen.to_string(),
            source,
        })?;
        let udp = if config.allows(TransportKind::Udp) {
            let hub = UdpHub::bind(r.listen.ip(), r.rtp_port)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "RTP/RTCP UDP ports",
                    addr: format!("{}:{}-{}", r.listen.ip(), r.rtp_port, r.rtp_port + 1),
                    source,
                })?;
            Some(Arc::new(hub))
        } else {
            None
        };
        // Created once per server and handed to its reader path (see `egress_latency`).
        let egress_latency = Arc::new(LatencyHistogram::new());
        let multicast = if config.allows(TransportKind::Multicast) {
            Some(
                Multicast::new(r.multicast_range, r.multicast_rtp_port, r.multicast_ttl)
                    .map_err(|source| ServerError::Bind {
                        what: "multicast sender",
                        addr: "0.0.0.0:0".into(),
                        source,
                    })?
                    .recording_latency(egress_latency.clone()),
            )
        } else {
            None
        };
        let tls_listener = match (&config.rtsps.cert, &config.rtsps.key) {
            (Some(cert), Some(key)) => {
                let acceptor = crate::tls::acceptor(cert, key).map_err(ServerError::Tls)?;
                let l = TcpListener::bind(config.rtsps.listen)
                    .await
                    .map_err(|source| ServerError::Bind {
                        what: "RTSPS listener",
                        addr: config.rtsps.listen.to_string(),
                        source,
                    })?;
                Some((l, acceptor))
            }
            _ => None,
        };
        let auth = Arc::new(
            Authenticator::new(&config.users, config.auth.clone()).map_err(ServerError::Users)?,
        );
        // HTTP (crate::http, composed in compose_http.rs).
        let rtsps_addr = tls_listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let http =
            crate::compose_http::bind_http(&config, &auth, local_addr, rtsps_addr, &egress_latency)
                .await?;
        let http_addr = http.as_ref().map(|h| h.local_addr());
        let mut paths = Registry::new();
        let path_watcher = paths.watch(Pattern::new("**"), PATH_EVENT_QUEUE);
        let server = Arc::new(Server {
            config,
            listener: Mutex::new(Some(listener)),
            local_addr,
            paths: Mutex::new(paths),
            path_watcher,
            path_events: tokio::sync::Notify::new(),
            sessions: Mutex::new(HashMap::new()),
            udp,
            multicast,
            epoch: Instant::now(),
            next_conn: AtomicU64::new(1),
            next_version: AtomicU64::new(1),
            sources: Mutex::new(Vec::new()),
            pulls: Mutex::new(HashMap::new()),
            auth,
            tls_listener: Mutex::new(tls_listener),
            conn_total: AtomicUsize::new(0),
            conn_counts: Mutex::new(HashMap::new()),
            last_limit_log: AtomicU64::new(u64::MAX),
            egress_latency,
            http: Mutex::new(http),
            http_addr,
        });
        server.start_configured_sources()?;
        Ok(server)
    }

    /// Starts the file paths of `[paths]` and the demo, each a looping live stream.
    fn start_configured_sources(&self) -> Result<(), ServerError> {
        let mut opened = Vec::new();
        for (name, p) in &self.config.paths {
            if name.starts_with('~') {
                continue; // regex paths start on demand
            }
            let Ok(SourceKind::File(file)) = p.kind() else {
                continue;
            };
            let media = vod::open_path(&file).map_err(|e| ServerError::Source {
                path: name.clone(),
                reason: format!("{}: {e}", file.display()),
            })?;
            opened.push((name.clone(), media, p.looping));
        }
        if self.config.demo.enabled {
            let media = vod::open_reader(std::io::Cursor::new(DEMO_CLIP)).map_err(|e| {
                ServerError::Source {
                    path: self.config.demo.path.clone(),
                    reason: format!("built-in demo clip: {e}"),
                }
            })?;
            opened.push((self.config.demo.path.clone(), media, true));
        }
        for (name, media, looping) in opened {
            let version = self.next_version();
            // A looping file never ends: readers must see a live stream, not the file's length.
            let presentation = if looping {
                media.presentation.live()
            } else {
                media.presentation
            };
            let stream = Stream::new(name.clone(), presentation, version);
            stream.set_gop_cache(self.config.rtsp.gop_cache);
            let owner = self.new_owner();
            let published = self
                .publish_path(&name, owner, Claim::Override, &stream)
                .map_err(|e| ServerError::Source {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
            self.end_replaced(published, "replaced by a configured source");
            let source = FileSource::new(
                media.demuxer,
                media.packetizers,
                stream.clone(),
                looping,
                name.clone(),
            );
            if let Err(e) = source.play(Some(0.0), None, 1.0, Instant::now()) {
                return Err(ServerError::Source {
                    path: name,
                    reason: e.to_string(),
                });
            }
            self.set_path_ready(&stream);
            info!(path = %name, looping, "file source started");
            self.sources
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, source));
        }
        Ok(())
    }

    /// Paths with a configured source, for the start-up banner.
    pub fn configured_paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The RTSP listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How long packets spent in this server, from their source to the send that carried
    /// them to a reader: every send to one of its readers records into it, and only into
    /// it (servers sharing a process measure apart). An exporter (the metrics endpoint)
    /// reads and resets it with [`LatencyHistogram::take`].
    pub fn egress_latency(&self) -> &Arc<LatencyHistogram> {
        &self.egress_latency
    }

    /// The HTTP listener's address, when `[http]` is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Runs the accept loop, UDP receivers and session reaper until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            error!("Server::run called twice");
            return;
        };
        if let Some(udp) = &self.udp {
            tokio::spawn(udp.clone().run_receiver(false));
            tokio::spawn(udp.clone().run_receiver(true));
        }
        tokio::spawn(self.clone().run_reaper());
        tokio::spawn(self.clone().run_event_pump());
        // HTTP (crate::http).
        if let Some(http) = self.http.lock().unwrap_or_else(|e| e.into_inner()).take() {
            tokio::spawn(http.run());
        }
        // Always-on pull sources start now; on-demand ones with their first reader.
        for (name, p) in &self.config.paths {
            if !name.starts_with('~') && p.source.starts_with("rtsp://") && !p.on_demand(false) {
                self.ensure_pull(name);
            }
        }
        let tls = self
            .tls_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((listener, acceptor)) = tls {
            info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "RTSPS server listening");
            tokio::spawn(self.clone().accept_loop(listener, Some(acceptor)));
        }
        info!(listen = %self.local_addr, "RTSP server listening");
        self.accept_loop(listener, None).await;
    }

    /// Accepts connections (TLS ones when `tls` is given) within the connection limits.
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = self.admit(peer.ip()) else {
                continue; // dropped: closes the socket
            };
            let _ = socket.set_nodelay(true);
            let local = socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let from = Accepted {
                id: self.next_conn.fetch_add(1, Ordering::Relaxed),
                peer,
                local,
                tls: tls.is_some(),
            };
            let server = self.clone();
            match &tls {
                None => {
                    tokio::spawn(async move {
                        crate::conn::run_tcp(server, socket, from).await;
                        drop(slot);
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let timeout = self.config.limits.request_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => crate::conn::run(server, stream, from).await,
                            Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => info!(%peer, "TLS handshake timed out"),
                        }
                        drop(slot);
                    });
                }
            }
        }
    }

    /// Takes a connection slot for `ip` within `max_connections` and
    /// `max_connections_per_ip`; None (and a log line, at most one per second) when full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let limits = &self.config.limits;
        let mut counts = self.conn_counts.lock().unwrap_or_else(|e| e.into_inner());
        let total = self.conn_total.load(Ordering::Relaxed);
        let per_ip = counts.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_connections || per_ip >= limits.max_connections_per_ip {
            let now_s = self.epoch.elapsed().as_secs();
            if self.last_limit_log.swap(now_s, Ordering::Relaxed) != now_s {
                warn!(%ip, total, per_ip, max = limits.max_connections, max_per_ip = limits.max_connections_per_ip, "connection limit reached; refusing connections");
            }
            return None;
        }
        *counts.entry(ip).or_insert(0) += 1;
        self.conn_total.fetch_add(1, Ordering::Relaxed);
        Some(ConnSlot {
            server: Arc::downgrade(self),
            ip,
        })
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conn_total.load(Ordering::Relaxed)
    }

    /// A fresh SDP version for a new stream.
    pub(crate) fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Every 50 ms relays stale batches; every 500 ms ends the sessions whose stream
    /// ended and sends the readers' due Sender Reports. Session timeouts are not here:
    /// each connection's RTSP state decides them on its own timer.
    async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            let now = Instant::now();
            // Backstop for a stream no source timer watches (see `STALE_BATCH`): a frame
            // whose end never came (no marker bit, and no next frame yet) is relayed.
            let streams: Vec<Arc<Stream>> = {
                let paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
                paths
                    .claims()
                    .filter_map(|(claim, _, _)| paths.lookup(claim.path()).cloned())
                    .collect()
            };
            for stream in streams {
                stream.flush_stale(now, STALE_BATCH);
            }
            ticks += 1;
            if ticks % 10 != 0 {
                continue;
            }
            let expired: Vec<(Arc<Session>, &'static str)> = self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                // Timeouts are the connection's decision; a stream's end is the server's.
                .filter(|s| s.stream.is_ended())
                .map(|s| (s.clone(), "stream ended"))
                .collect();
            for (s, why) in expired {
                self.end_session(&s.id, why);
                s.conn.close(why);
            }
            // Readers' Sender Reports: one task for all, each reader on its own schedule.
            let due: Vec<(Arc<crate::reader::ReaderSink>, Arc<Stream>)> = self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter_map(|s| {
                    let inner = s.lock();
                    let p = inner.playing.as_ref()?;
                    p.sink
                        .report_due(now, RTCP_INTERVAL)
                        .then(|| (p.sink.clone(), s.stream.clone()))
                })
                .collect();
            for (sink, stream) in due {
                sink.send_sender_reports(&stream, now);
            }
            if ticks % 100 == 0 {
                release_freed_memory();
            }
        }
    }

    /// Looks up a session by id.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Ends a session and releases all it holds: its subscription, writer, UDP routes,
    /// multicast membership and, for a publisher, the path's stream.
    pub(crate) fn end_session(&self, id: &str, why: &str) {
        let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        else {
            return;
        };
        let path = s.stream.path().to_owned();
        if let Some(file) = &s.file {
            file.pause();
        }
        let (playing, ingest, group, transports, member) = {
            let mut inner = s.lock();
            (
                inner.playing.take(),
                inner.ingest.take(),
                inner.multicast_group.take(),
                std::mem::take(&mut inner.transports),
                std::mem::replace(&mut inner.multicast_member, false),
            )
        };
        let mut sent = 0u64;
        if let Some(p) = playing {
            s.stream.readers().remove(p.sink_id);
            p.sink.send_bye();
            sent = (0..s.stream.presentation().tracks().len())
                .map(|t| u64::from(p.sink.packets_sent(t)))
                .sum();
        }
        for t in transports.iter().flatten() {
            if let (TrackTransport::Udp { rtp, rtcp, .. }, Some(udp)) = (t, &self.udp) {
                let rtp = ingest.as_ref().map(|_| *rtp);
                udp.remove(rtp, *rtcp);
            }
        }
        if let Some(m) = &self.multicast {
            if member {
                m.leave(&path);
            }
            if group.is_some() {
                m.release(&path);
            }
        }
        if let Some(ingest) = ingest {
            let (received, lost) = ingest.totals();
            self.end_path(&s.stream, EndReason::SourceGone);
            info!(session = %s.id, conn = s.conn.id, %path, why, received, lost, bad = ingest.bad_packets(), "publisher session ended");
        } else {
            let (lost, jitter) = s.reader_report_summary();
            info!(session = %s.id, conn = s.conn.id, %path, why, sent, reported_lost = lost, reported_jitter = jitter, "reader session ended");
        }
    }

    /// An owner id for a configured source's claims: never a connection's id.
    pub(crate) fn new_owner(&self) -> Owner {
        Owner(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Claims `stream`'s path for `owner` under `claim`'s policy (see
    /// [`sluice_hub::registry`]); the stream it displaced, if any, comes back for
    /// [`Server::end_replaced`].
    pub(crate) fn publish_path(
        &self,
        path: &str,
        owner: Owner,
        claim: Claim,
        stream: &Arc<Stream>,
    ) -> Result<Published<Arc<Stream>>, Busy> {
        let published = self
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .publish(path, owner, claim, stream.clone());
        self.path_events.notify_one();
        published
    }

    /// Ends the stream a claim displaced and its publisher's sessions (`why` in their end
    /// log line).
    pub(crate) fn end_replaced(&self, published: Published<Arc<Stream>>, why: &str) {
        let Some(old) = published.replaced else {
            return;
        };
        let old_sessions: Vec<String> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| Arc::ptr_eq(&s.stream, &old) && s.role == Role::Recorder)
            .map(|s| s.id.clone())
            .collect();
        old.end(EndReason::Replaced);
        for id in old_sessions {
            self.end_session(&id, why);
        }
    }

    /// Marks `stream` ready for readers, in the registry too if it still holds its path
    /// (watchers then see it ready).
    pub(crate) fn set_path_ready(&self, stream: &Arc<Stream>) {
        stream.set_ready();
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((claim, _, _)) = paths.holder(stream.path()).filter(|_| {
            paths
                .lookup(stream.path())
                .is_some_and(|s| Arc::ptr_eq(s, stream))
        }) {
            paths.set_ready(&claim);
        }
        drop(paths);
        self.path_events.notify_one();
    }

    /// Ends `stream` for `reason` and frees its path if it still holds it.
    pub(crate) fn end_path(&self, stream: &Arc<Stream>, reason: EndReason) {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((claim, _, _)) = paths.holder(stream.path()).filter(|_| {
            paths
                .lookup(stream.path())
                .is_some_and(|s| Arc::ptr_eq(s, stream))
        }) {
            paths.end(&claim, reason);
        }
        drop(paths);
        // Out of the registry first, then ended: a reader told the stream ended (BYE, its
        // connection closed) that asks again must not still find the path.
        stream.end(reason);
        self.path_events.notify_one();
    }

    /// A connection closed (its sessions were ended as its RTSP state decided): the paths
    /// it announced but never recorded are freed.
    pub(crate) fn connection_closed(&self, conn: u64) {
        let stale: Vec<Arc<Stream>> = {
            let paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
            paths
                .claims()
                .filter(|(_, owner, ready)| *owner == Owner(conn) && !ready)
                .filter_map(|(claim, _, _)| paths.lookup(claim.path()).cloned())
                .collect()
        };
        for stream in stale {
            self.end_path(&stream, EndReason::SourceGone);
        }
    }

    /// Logs every path lifecycle event, one line each, in the order they happened: the
    /// registry's events made visible (what an event bus or a recorder will consume).
    async fn run_event_pump(self: Arc<Self>) {
        loop {
            let events: Vec<Event> = {
                let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
                std::iter::from_fn(|| paths.poll_event(self.path_watcher)).collect()
            };
            for event in events {
                match event {
                    Event::Ready { path, source } => {
                        info!(%path, source = source.get(), "path ready");
                    }
                    Event::Ended {
                        path,
                        source,
                        reason,
                    } => {
                        info!(%path, source = source.get(), %reason, "path ended");
                    }
                    Event::Replaced { path, old, new } => {
                        info!(%path, old = old.get(), new = new.get(), "path replaced");
                    }
                    Event::Lagged { missed } => {
                        warn!(missed, "path events dropped; the event log has a gap");
                    }
                }
            }
            self.path_events.notified().await;
        }
    }
}

/// Returns memory freed since the last call to the operating system. A connect storm
/// makes every new reader hold its GOP catch-up for a moment; glibc keeps those freed
/// heap pages in its per-thread arenas (it only trims the top of the main heap), so
/// without this the server's RSS stays at the storm's peak for good.
fn release_freed_memory() {
    sluice_net::mem::release_freed_memory();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::{ClientEvent, ClientMode, Connection, Options};

    /// One PCMU track: every packet a frame of its own.
    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                       m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=0\r\n";

    /// A server on a free loopback port, TCP transport only (no fixed UDP ports to share).
    async fn running_server() -> Arc<Server> {
        let config = Config::from_toml(
            "[rtsp]\nlisten = \"127.0.0.1:0\"\ntransports = [\"tcp\"]\n[demo]\nenabled = false\n[http]\nenabled = false\n",
        )
        .expect("config");
        let server = Server::bind(config).await.expect("bind");
        tokio::spawn(server.clone().run());
        server
    }

    /// A client session on `server`'s path `live`, once PLAY or RECORD is answered.
    async fn open(server: &Server, mode: ClientMode) -> Connection {
        let mut c = Connection::open(Options {
            url: format!("rtsp://{}/live", server.local_addr()),
            credentials: None,
            udp: false,
            mode,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connect");
        loop {
            if let ClientEvent::Playing { .. } = c.next_event().await.expect("handshake") {
                return c;
            }
        }
    }

    /// Relays `n` packets from a publisher to a TCP reader of `server`; returns once the
    /// reader has them all.
    async fn relay(server: &Server, n: u16) {
        let mut publisher = open(server, ClientMode::Record { sdp: SDP.into() }).await;
        let mut reader = open(server, ClientMode::Play).await;
        for seq in 0..n {
            // V=2, marker, PT 0; sequence, timestamp, SSRC 1; 20 ms of silence.
            let mut p = vec![0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            p.extend([0xff; 160]);
            publisher.send_rtp(0, &p).await.expect("publish");
        }
        let mut got = 0;
        while got < n {
            if let ClientEvent::Rtp { .. } = reader.next_event().await.expect("read") {
                got += 1;
            }
        }
    }

    /// Packets `h` counts once `want` are in (a write is recorded just after it returned,
    /// possibly after the reader read it) and a little longer, to see any extra.
    async fn recorded(h: &LatencyHistogram, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut total = 0;
        while total < want && Instant::now() < deadline {
            total += h.take().count;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        total + h.take().count
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_in_one_process_measure_their_egress_latency_apart() {
        let (a, b) = (running_server().await, running_server().await);
        assert!(!Arc::ptr_eq(a.egress_latency(), b.egress_latency()));
        relay(&a, 5).await;
        relay(&b, 3).await;
        assert_eq!(recorded(a.egress_latency(), 5).await, 5, "a's own packets");
        assert_eq!(recorded(b.egress_latency(), 3).await, 3, "b's own packets");
    }
}
