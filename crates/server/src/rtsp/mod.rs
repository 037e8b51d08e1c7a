//! The RTSP module: the RTSP/RTSPS listeners and their connections, the publisher and
//! pull sources, the UDP demultiplexer, multicast, and the readers' fast path.
//!
//! [`Rtsp`] is the module's shared state: its listeners, the session table, the UDP and
//! multicast sockets, the running pulls, and the [`Hub`] it shares with the other modules.
//! It attaches a [`ReaderGroup`] to every stream the hub creates (whatever module's source
//! feeds it), serves the hub's on-demand media to its VOD sessions, and names no other
//! module.

pub mod actions;
pub mod answers;
pub mod at_hand;
pub mod conn;
pub mod conn_handle;
mod events;
pub mod ingest;
pub mod multicast;
pub mod pull;
pub mod readers;
pub mod session;
pub mod udp;
pub mod writer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_hub::registry::{Busy, Claim, Owner};
use sluice_hub::{EndReason, Hub, Stream};
use sluice_rtsp::server::TrackTransport;
use sluice_rtsp::server_session::Role;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::config::{Config, TransportKind};
use crate::rtsp::conn::Accepted;
use crate::rtsp::multicast::Multicast;
use crate::rtsp::pull::Pull;
use crate::rtsp::readers::latency::LatencyHistogram;
use crate::rtsp::readers::ReaderGroup;
use crate::rtsp::session::Session;
use crate::rtsp::udp::UdpHub;

/// Why the RTSP module could not start.
#[derive(Debug, thiserror::Error)]
pub enum RtspError {
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
    Tls(crate::config::tls::TlsError),
}

/// A connection's place in the connection limits, released when dropped.
struct ConnSlot {
    server: Weak<Rtsp>,
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

/// The RTSP module's shared state, bound and not yet running.
pub struct Rtsp {
    /// The configuration in force, swapped whole by [`Rtsp::apply`] (a reload).
    config: std::sync::RwLock<Arc<Config>>,
    listener: Mutex<Option<TcpListener>>,
    /// Where the RTSP listener is (a reload may move it).
    local_addr: Mutex<SocketAddr>,
    /// The plain RTSP accept loop, stopped when a reload moves the listener.
    accept_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The hub shared with the other modules: the path registry (claims, readiness,
    /// look-ups, lifecycle events), new streams, on-demand media.
    pub(crate) hub: Arc<Hub>,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) udp: Option<Arc<UdpHub>>,
    pub(crate) multicast: Option<Multicast>,
    pub(crate) epoch: Instant,
    /// Running pull sources by path.
    pub(crate) pulls: Mutex<HashMap<String, Arc<Pull>>>,
    /// Users, permissions and the authentication exchange.
    pub(crate) auth: Arc<Authenticator>,
    tls_listener: Mutex<Option<(TcpListener, TlsAcceptor)>>,
    rtsps_addr: Option<SocketAddr>,
    conn_total: AtomicUsize,
    conn_counts: Mutex<HashMap<IpAddr, usize>>,
    last_limit_log: AtomicU64,
    /// This server's ingest → egress latency (see [`Rtsp::egress_latency`]).
    egress_latency: Arc<LatencyHistogram>,
}

impl std::fmt::Debug for Rtsp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtsp")
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

impl Rtsp {
    /// Binds the RTSP listener and the media sockets the configuration asks for, and
    /// attaches a reader group to every stream `hub` creates from now on.
    pub async fn bind(
        config: Arc<Config>,
        hub: Arc<Hub>,
        auth: Arc<Authenticator>,
    ) -> Result<Arc<Rtsp>, RtspError> {
        let r = &config.rtsp;
        let listener = TcpListener::bind(r.listen)
            .await
            .map_err(|source| RtspError::Bind {
                what: "RTSP listener",
                addr: r.listen.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| RtspError::Bind {
            what: "RTSP listener",
            addr: r.listen.to_string(),
            source,
        })?;
        let udp = if config.allows(TransportKind::Udp) {
            let hub = UdpHub::bind(r.listen.ip(), r.rtp_port)
                .await
                .map_err(|source| RtspError::Bind {
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
                    .map_err(|source| RtspError::Bind {
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
                let acceptor = crate::config::tls::acceptor(cert, key).map_err(RtspError::Tls)?;
                let l = TcpListener::bind(config.rtsps.listen)
                    .await
                    .map_err(|source| RtspError::Bind {
                        what: "RTSPS listener",
                        addr: config.rtsps.listen.to_string(),
                        source,
                    })?;
                Some((l, acceptor))
            }
            _ => None,
        };
        let rtsps_addr = tls_listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let gop_cache = config.rtsp.gop_cache;
        hub.on_stream(Box::new(move |stream| {
            let group = ReaderGroup::of(stream);
            if !gop_cache {
                group.set_gop_cache(None);
            }
        }));
        let server = Arc::new(Rtsp {
            config: std::sync::RwLock::new(config),
            listener: Mutex::new(Some(listener)),
            local_addr: Mutex::new(local_addr),
            accept_task: Mutex::new(None),
            hub,
            sessions: Mutex::new(HashMap::new()),
            udp,
            multicast,
            epoch: Instant::now(),
            pulls: Mutex::new(HashMap::new()),
            auth,
            tls_listener: Mutex::new(tls_listener),
            rtsps_addr,
            conn_total: AtomicUsize::new(0),
            conn_counts: Mutex::new(HashMap::new()),
            last_limit_log: AtomicU64::new(u64::MAX),
            egress_latency,
        });
        server
            .hub
            .add_sessions(Arc::new(Directory(Arc::downgrade(&server))));
        Ok(server)
    }

    /// The configuration in force (a snapshot: a reload swaps it for the next caller).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A reload: `new` is in force from now on, for new connections and requests. A moved
    /// `rtsp.listen` gets a new listener (open connections stay). The paths whose
    /// configuration changed or went away lose their pull sources (their streams end;
    /// readers reconnect to what the new configuration says), new always-on pulls start,
    /// and every other path, and the readers on it, goes on untouched. An error (the new
    /// address cannot be bound) changes nothing.
    pub fn apply(self: &Arc<Self>, new: Arc<Config>) -> Result<(), String> {
        if new.rtsp.listen != self.config().rtsp.listen {
            self.rebind(new.rtsp.listen)?;
        }
        let old = std::mem::replace(
            &mut *self.config.write().unwrap_or_else(|e| e.into_inner()),
            new.clone(),
        );
        let stale: Vec<Arc<Pull>> = self
            .pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| {
                let was = old.resolve_path(p.path()).map(|r| r.config);
                let is = new.resolve_path(p.path()).map(|r| r.config);
                was != is
            })
            .cloned()
            .collect();
        for pull in stale {
            info!(path = %pull.path(), "configuration changed: pull source stopped");
            self.abort_pull(&pull);
        }
        self.start_always_on_pulls();
        Ok(())
    }

    /// Starts the always-on pull sources of the configuration not running yet.
    fn start_always_on_pulls(self: &Arc<Self>) {
        let config = self.config();
        for (name, p) in &config.paths {
            if !name.starts_with('~') && p.source.starts_with("rtsp://") && !p.on_demand(false) {
                self.ensure_pull(name);
            }
        }
    }

    /// The RTSP listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        *self.local_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RTSPS listener's address, when RTSPS is configured.
    pub fn rtsps_addr(&self) -> Option<SocketAddr> {
        self.rtsps_addr
    }

    /// How long packets spent in this server, from their source to the send that carried
    /// them to a reader: every send to one of its readers records into it, and only into
    /// it (servers sharing a process measure apart). An exporter (the metrics endpoint)
    /// reads and resets it with [`LatencyHistogram::take`].
    pub fn egress_latency(&self) -> &Arc<LatencyHistogram> {
        &self.egress_latency
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
            error!("Rtsp::run called twice");
            return;
        };
        if let Some(udp) = &self.udp {
            tokio::spawn(udp.clone().run_receiver(false));
            tokio::spawn(udp.clone().run_receiver(true));
        }
        tokio::spawn(self.clone().run_reaper());
        // Always-on pull sources start now; on-demand ones with their first reader.
        self.start_always_on_pulls();
        let tls = self
            .tls_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((listener, acceptor)) = tls {
            info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "RTSPS server listening");
            tokio::spawn(self.clone().accept_loop(listener, Some(acceptor)));
        }
        info!(listen = %self.local_addr(), "RTSP server listening");
        let task = tokio::spawn(self.clone().accept_loop(listener, None));
        *self.accept_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        // The accept loop runs as a task of its own, so that a reload can replace it.
        std::future::pending::<()>().await;
    }

    /// Moves the plain RTSP listener to `addr` (a reload changed `rtsp.listen`): the new
    /// one accepts before the old one stops; connections already open go on. Must run
    /// within the runtime (a reload's blocking thread is).
    fn rebind(self: &Arc<Self>, addr: SocketAddr) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot move the RTSP listener to {addr}: {e}");
        let std = std::net::TcpListener::bind(addr).map_err(fail)?;
        std.set_nonblocking(true).map_err(fail)?;
        let listener = TcpListener::from_std(std).map_err(fail)?;
        let local = listener.local_addr().map_err(fail)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| format!("cannot move the RTSP listener to {addr}: {e}"))?;
        let task = runtime.spawn(self.clone().accept_loop(listener, None));
        let old = self
            .accept_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
        let was = std::mem::replace(
            &mut *self.local_addr.lock().unwrap_or_else(|e| e.into_inner()),
            local,
        );
        info!(from = %was, listen = %local, "RTSP listener moved");
        Ok(())
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
                id: self.hub.new_owner().0,
                peer,
                local,
                tls: tls.is_some(),
            };
            let server = self.clone();
            match &tls {
                None => {
                    tokio::spawn(async move {
                        crate::rtsp::conn::run_tcp(server, socket, from).await;
                        drop(slot);
                    });
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    let timeout = self.config().limits.request_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => crate::rtsp::conn::run(server, stream, from).await,
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
        let config = self.config();
        let limits = &config.limits;
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
            self.hub.flush_stale(now, STALE_BATCH);
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
            let due: Vec<(Arc<crate::rtsp::readers::reader::ReaderSink>, Arc<Stream>)> = self
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

    /// Ends session `id` at an operator's request (the HTTP API through the hub) and
    /// closes its connection, so its client is gone within a moment: true if it existed.
    pub fn kick(&self, id: &str) -> bool {
        let Some(s) = self.session(id) else {
            return false;
        };
        info!(session = %s.id, conn = s.conn.id, path = %s.stream.path(), peer = %s.conn.peer, "session kicked");
        self.hub
            .events()
            .publish(sluice_hub::ServerEvent::SessionKicked {
                session: crate::rtsp::events::session_info(&s),
                by: "api".to_owned(),
            });
        self.end_session(id, "kicked");
        s.conn.close("kicked");
        true
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
        let info = events::session_info(&s);
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
            ReaderGroup::of(&s.stream).remove(p.sink_id);
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
        // Before the path's end: the publisher's stop is the cause of its path's.
        self.announce_stop(&s, info, why);
        if let Some(ingest) = ingest {
            let (received, lost) = ingest.totals();
            self.end_path(&s.stream, EndReason::SourceGone);
            info!(session = %s.id, conn = s.conn.id, %path, why, received, lost, bad = ingest.bad_packets(), "publisher session ended");
        } else {
            let (lost, jitter) = s.reader_report_summary();
            info!(session = %s.id, conn = s.conn.id, %path, why, sent, reported_lost = lost, reported_jitter = jitter, "reader session ended");
        }
    }

    /// An owner id for a pull source's claims: never a connection's id.
    pub(crate) fn new_owner(&self) -> Owner {
        self.hub.new_owner()
    }

    /// Claims `stream`'s path for `owner` under `claim`'s policy (see
    /// [`sluice_hub::registry`]); the stream it displaced, if any, is ended and so are its
    /// publisher's sessions (`why` in their end log line). True if one was displaced.
    pub(crate) fn publish_path(
        &self,
        owner: Owner,
        claim: Claim,
        stream: &Arc<Stream>,
        why: &str,
    ) -> Result<bool, Busy> {
        let replaced = self.hub.publish(owner, claim, stream)?;
        if let Some(old) = replaced {
            let old_sessions: Vec<String> = self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .filter(|s| Arc::ptr_eq(&s.stream, &old) && s.role == Role::Recorder)
                .map(|s| s.id.clone())
                .collect();
            for id in old_sessions {
                self.end_session(&id, why);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Marks `stream` ready for readers (watchers of the hub see it ready).
    pub(crate) fn set_path_ready(&self, stream: &Arc<Stream>) {
        self.hub.set_ready(stream);
    }

    /// Ends `stream` for `reason` and frees its path if it still holds it.
    pub(crate) fn end_path(&self, stream: &Arc<Stream>, reason: EndReason) {
        self.hub.end(stream, reason);
    }

    /// A connection closed (its sessions were ended as its RTSP state decided): the paths
    /// it announced but never recorded are freed.
    pub(crate) fn connection_closed(&self, conn: u64) {
        self.hub.end_unready_of(Owner(conn));
    }
}

/// The RTSP module's sessions as the hub's directory (held weakly: the module holds the
/// hub).
struct Directory(Weak<Rtsp>);

impl sluice_hub::Sessions for Directory {
    fn list(&self) -> Vec<sluice_hub::SessionInfo> {
        let Some(rtsp) = self.0.upgrade() else {
            return Vec::new();
        };
        let sessions: Vec<Arc<Session>> = rtsp
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        sessions.iter().map(|s| s.info()).collect()
    }

    fn kick(&self, id: &str) -> bool {
        self.0.upgrade().is_some_and(|rtsp| rtsp.kick(id))
    }
}

/// Returns memory freed since the last call to the operating system. A connect storm
/// makes every new reader hold its GOP catch-up for a moment; glibc keeps those freed
/// heap pages in its per-thread arenas (it only trims the top of the main heap), so
/// without this the server's RSS stays at the storm's peak for good.
fn release_freed_memory() {
    sluice_net::mem::release_freed_memory();
}
