//! WebRTC delivery (WHEP, RFC 9725) and ingest (WHIP, RFC 9725's sibling) with str0m.
//!
//! - [`feed`]: the per-stream sink (attached to every stream by a hub hook): RTP
//!   depacketized once per path into shared frames, the latest GOP for new viewers, the
//!   B-frame and codec facts a WHEP answer is decided on.
//! - [`demux`]: which session a datagram on the shared UDP port is for (STUN `USERNAME`,
//!   then the peer address).
//! - [`nal`]: Annex B access units with parameter sets before every keyframe, B-slice
//!   detection; [`vp8`]: VP8 frames from RTP; [`obu`]: AV1 keyframes led by their
//!   sequence header.
//! - `routes`: the HTTP side (`POST /<path>/whep`, `/<path>/whip`, the session
//!   resources' `DELETE`/`PATCH`/`OPTIONS`), and `session`: one task per peer
//!   driving its sans-IO `str0m::Rtc`.
//!
//! Every peer's ICE (lite: the server only answers), DTLS and SRTP use one UDP port
//! (`[webrtc] udp_port`), bound on each advertised address; one receive task per socket
//! routes datagrams to the sessions' tasks, which send on the socket their candidate
//! names. The tokio layer stays thin: decisions are in the sans-IO parts above and str0m.

pub mod demux;
pub mod feed;
pub mod nal;
pub mod obu;
mod routes;
mod session;
pub mod vp8;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use sluice_hub::{Hub, SessionInfo, SessionRole, Sessions};
use str0m::crypto::CryptoProvider;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{Config, WebrtcConfig};

pub use routes::{whep_need, whip_need, Target, TargetFn, AUDIO_HEADER, REASON_HEADER};

use demux::Routes;
use feed::Feed;

/// Datagrams queued for one session before the receive task drops more (counted).
const INBOX: usize = 1024;

/// Why the WebRTC module could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebrtcError {
    /// No UDP socket could be bound on the configured port.
    #[error("webrtc: cannot bind UDP port {port} on {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: IpAddr,
        /// The port tried.
        port: u16,
        /// The system's error.
        source: std::io::Error,
    },
    /// No address to offer peers (no interface address, nothing advertised).
    #[error("webrtc: no address to offer peers (set webrtc.advertise)")]
    NoAddress,
    /// The DTLS certificate could not be made.
    #[error("webrtc: cannot make a DTLS certificate: {0}")]
    Certificate(String),
}

/// A datagram for a session: when and from where it came, and on which local candidate.
#[derive(Debug)]
pub(crate) struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: Bytes,
}

/// One bound socket and the candidate address peers reach it at.
#[derive(Debug)]
pub(crate) struct Endpoint {
    socket: Arc<UdpSocket>,
    candidate: SocketAddr,
}

/// The routing table shared by the receive tasks and the session set-up.
#[derive(Debug, Default)]
struct Table {
    routes: Routes<u64>,
    inboxes: HashMap<u64, mpsc::Sender<Datagram>>,
}

/// A live session, as the HTTP side and the hub's session directory find it by its id.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    path: String,
    stop: Arc<tokio::sync::Notify>,
    role: SessionRole,
    peer: SocketAddr,
    user: Option<String>,
    created_unix: u64,
    /// RTP packets (publisher) or frames (viewer) and their payload bytes, kept by the
    /// session's task.
    counters: Arc<Counters>,
}

/// A session's traffic, counted by its task (relaxed: read only for reports).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) packets: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// The module's sessions as the hub lists and kicks them (`/v1/sessions`).
struct Directory(std::sync::Weak<WebRtc>);

impl Sessions for Directory {
    fn list(&self) -> Vec<SessionInfo> {
        let Some(m) = self.0.upgrade() else {
            return Vec::new();
        };
        let sessions = lock(&m.sessions);
        sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: id.clone(),
                path: s.path.clone(),
                protocol: "webrtc",
                transport: "udp",
                role: s.role,
                peer: s.peer,
                user: s.user.clone(),
                created_unix: s.created_unix,
                packets: s.counters.packets.load(Ordering::Relaxed),
                bytes: s.counters.bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn kick(&self, id: &str) -> bool {
        let Some(m) = self.0.upgrade() else {
            return false;
        };
        let stop = lock(&m.sessions).get(id).map(|s| s.stop.clone());
        match stop {
            Some(stop) => {
                stop.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Now in seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The WebRTC module: its sockets, its sessions and its settings.
pub struct WebRtc {
    config: WebrtcConfig,
    hub: Arc<Hub>,
    endpoints: Arc<Vec<Endpoint>>,
    table: Mutex<Table>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    next_key: AtomicU64,
    crypto: Arc<CryptoProvider>,
    cert: str0m::config::DtlsCert,
    /// Datagrams dropped because a session's inbox was full.
    inbox_drops: AtomicU64,
}

impl std::fmt::Debug for WebRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtc")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The addresses to offer peers: the configured ones, else every interface address
/// (loopback included; IPv6 link-local ones, which need a scope, left out).
fn candidate_ips(config: &WebrtcConfig) -> Vec<IpAddr> {
    if !config.advertise.is_empty() {
        return config.advertise.clone();
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|l| l.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    });
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips
}

impl WebRtc {
    /// Starts the module when `[webrtc]` and `[http]` are enabled: binds the UDP port on
    /// every candidate address, makes the DTLS certificate, and attaches a [`Feed`] to
    /// every stream the hub creates from now on (so start it before the sources).
    pub async fn start(config: &Config, hub: Arc<Hub>) -> Result<Option<Arc<WebRtc>>, WebrtcError> {
        let wc = config.webrtc.clone();
        if !wc.enabled {
            return Ok(None);
        }
        if !config.http.enabled {
            info!(
                "WebRTC off: WHEP and WHIP are served on the HTTP listener, and [http] is disabled"
            );
            return Ok(None);
        }
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| WebrtcError::Certificate("the crypto provider made none".into()))?;
        let mut endpoints = Vec::new();
        let mut port = wc.udp_port;
        let mut wildcard: Option<Arc<UdpSocket>> = None;
        for ip in candidate_ips(&wc) {
            match UdpSocket::bind(SocketAddr::new(ip, port)).await {
                Ok(s) => {
                    let local = s.local_addr().map_err(|source| WebrtcError::Bind {
                        addr: ip,
                        port,
                        source,
                    })?;
                    port = local.port();
                    endpoints.push(Endpoint {
                        socket: Arc::new(s),
                        candidate: local,
                    });
                }
                Err(e)
                    if !wc.advertise.is_empty()
                        && e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    // An address peers reach through NAT: receive on every address.
                    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                    let socket = match &wildcard {
                        Some(s) => s.clone(),
                        None => {
                            let s = UdpSocket::bind(SocketAddr::new(any, port)).await.map_err(
                                |source| WebrtcError::Bind {
                                    addr: any,
                                    port,
                                    source,
                                },
                            )?;
                            if let Ok(l) = s.local_addr() {
                                port = l.port();
                            }
                            let s = Arc::new(s);
                            wildcard = Some(s.clone());
                            s
                        }
                    };
                    endpoints.push(Endpoint {
                        socket,
                        candidate: SocketAddr::new(ip, port),
                    });
                }
                Err(source) if endpoints.is_empty() => {
                    return Err(WebrtcError::Bind {
                        addr: ip,
                        port,
                        source,
                    });
                }
                Err(e) => {
                    warn!(%ip, port, error = %e, "webrtc: not offering this address");
                }
            }
        }
        if endpoints.is_empty() {
            return Err(WebrtcError::NoAddress);
        }
        for e in &endpoints {
            info!("WebRTC listening on UDP {}", e.candidate);
        }
        let module = Arc::new(WebRtc {
            config: wc,
            hub: hub.clone(),
            endpoints: Arc::new(endpoints),
            table: Mutex::default(),
            sessions: Mutex::default(),
            next_key: AtomicU64::new(1),
            crypto,
            cert,
            inbox_drops: AtomicU64::new(0),
        });
        hub.add_sessions(Arc::new(Directory(Arc::downgrade(&module))));
        hub.on_stream(Box::new(|stream| {
            let feed = Feed::new(stream);
            stream.set_delivery(feed.delivery_note());
            stream.attach(feed);
        }));
        let mut seen: Vec<*const UdpSocket> = Vec::new();
        for e in module.endpoints.iter() {
            let ptr = Arc::as_ptr(&e.socket);
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            tokio::spawn(receive(module.clone(), e.socket.clone(), e.candidate));
        }
        Ok(Some(module))
    }

    /// The candidate addresses peers are offered (one port).
    pub fn candidates(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.candidate).collect()
    }

    /// Registers a session's routes and inbox; its key.
    fn register(&self, ufrag: String) -> (u64, mpsc::Receiver<Datagram>) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(INBOX);
        let mut t = lock(&self.table);
        t.routes.add(ufrag, key);
        t.inboxes.insert(key, tx);
        (key, rx)
    }

    /// Forgets a session's routes, inbox and id.
    fn unregister(&self, key: u64, id: &str) {
        let mut t = lock(&self.table);
        t.routes.remove(&key);
        t.inboxes.remove(&key);
        drop(t);
        lock(&self.sessions).remove(id);
    }

    /// Sessions live now.
    fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// One socket's receive loop: each datagram to its session's task, by the routing table.
async fn receive(module: Arc<WebRtc>, socket: Arc<UdpSocket>, candidate: SocketAddr) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable and the like: not fatal for a shared socket.
                debug!(error = %e, "webrtc: receive error");
                continue;
            }
        };
        let Some(data) = buf.get(..n) else {
            continue;
        };
        let inbox = {
            let mut t = lock(&module.table);
            t.routes
                .route(from, data)
                .and_then(|k| t.inboxes.get(&k).cloned())
        };
        let Some(inbox) = inbox else {
            continue;
        };
        let d = Datagram {
            at: Instant::now(),
            from,
            to: candidate,
            data: Bytes::copy_from_slice(data),
        };
        if inbox.try_send(d).is_err() {
            module.inbox_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}
