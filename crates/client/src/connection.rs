//! One client connection: the TCP control connection, the per-track UDP sockets, and the
//! loop that moves bytes between them and the sans-IO session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_rtsp::auth::Credentials;
use sluice_rtsp::client::{
    ClientConfig, ClientError, ClientEvent, ClientMode, ClientSession, ClientTransport, PacketKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The URL is not usable.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// The host could not be resolved or reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection did not open within the timeout.
    #[error("timed out connecting to {0}")]
    ConnectTimeout(String),
    /// Socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// No free UDP ports for the tracks.
    #[error("cannot bind UDP ports for {0} tracks")]
    NoUdpPorts(usize),
    /// The RTSP session failed (status, auth, timeout, malformed answer).
    #[error(transparent)]
    Session(#[from] ClientError),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// `rtsp://[user:pass@]host[:port]/path`.
    pub url: String,
    /// Credentials overriding the URL's.
    pub credentials: Option<Credentials>,
    /// true: RTP over UDP; false: TCP interleaved.
    pub udp: bool,
    /// Play (DESCRIBE/SETUP/PLAY) or record (ANNOUNCE/SETUP/RECORD).
    pub mode: ClientMode,
    /// Time allowed for the TCP connect.
    pub connect_timeout: Duration,
}

/// UDP port pairs bound when a UDP connection opens (more are bound if the SDP has more tracks).
const PREBOUND_TRACKS: usize = 4;

/// Binds `n` consecutive RTP/RTCP pairs from `base` (even), or None if any is taken.
fn bind_pairs(
    ip: IpAddr,
    base: u16,
    n: usize,
) -> Option<Vec<(std::net::UdpSocket, std::net::UdpSocket)>> {
    (0..n)
        .map(|i| {
            let port = base.checked_add(2 * i as u16)?;
            let a = std::net::UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
            let b = std::net::UdpSocket::bind(SocketAddr::new(ip, port.checked_add(1)?)).ok()?;
            Some((a, b))
        })
        .collect()
}

/// Most tracks a client session takes.
const MAX_TRACKS: usize = 16;

/// A running client session on its sockets.
pub struct Connection {
    session: ClientSession,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    server: SocketAddr,
    udp_base: Option<u16>,
    udp: Vec<(Arc<UdpSocket>, Arc<UdpSocket>)>,
    udp_rx: mpsc::Receiver<(usize, PacketKind, Bytes)>,
    udp_tx: mpsc::Sender<(usize, PacketKind, Bytes)>,
    udp_tasks: Vec<JoinHandle<()>>,
    buf: BytesMut,
    out: BytesMut,
    /// UDP pairs bound at open for the first tracks, taken by `bind_udp`.
    prebound: Vec<(std::net::UdpSocket, std::net::UdpSocket)>,
    /// Per track, the server's UDP ports (RTP, RTCP) once set up.
    server_ports: Vec<Option<(u16, u16)>>,
    finished: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for t in &self.udp_tasks {
            t.abort();
        }
    }
}

/// The `host:port` an `rtsp://` URL connects to (port 554 when it names none; credentials
/// dropped), or `None` for another scheme or no host: public so that a tool opening its own
/// sockets (the load client of `tools/bench`) reaches the server [`Connection::open`] would.
pub fn authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("rtsp://")?;
    let auth = rest.split(['/', '?', '#']).next()?;
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.contains(':')
    };
    Some(if has_port {
        host.to_owned()
    } else {
        format!("{host}:554")
    })
}

impl Connection {
    /// Connects and starts the session (OPTIONS, then DESCRIBE or ANNOUNCE…); the
    /// session's progress comes from [`Connection::next_event`].
    pub async fn open(opts: Options) -> Result<Connection, ConnectionError> {
        let addr =
            authority(&opts.url).ok_or_else(|| ConnectionError::InvalidUrl(opts.url.clone()))?;
        let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ConnectionError::ConnectTimeout(addr.clone()))?
            .map_err(|source| ConnectionError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server = tcp.peer_addr()?;
        // For UDP, port pairs for the first tracks are bound now (retrying bases until they
        // are all free), so the ports SETUP announces are certainly ours.
        let local_ip: IpAddr = if server.is_ipv4() {
            [0, 0, 0, 0].into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let (udp_base, prebound) = if opts.udp {
            let mut found = None;
            for _ in 0..64 {
                let base = 2 * rand::random_range(20_000u16..29_500);
                if let Some(pairs) = bind_pairs(local_ip, base, PREBOUND_TRACKS) {
                    found = Some((base, pairs));
                    break;
                }
            }
            let (base, pairs) = found.ok_or(ConnectionError::NoUdpPorts(PREBOUND_TRACKS))?;
            (Some(base), pairs)
        } else {
            (None, Vec::new())
        };
        let transport = match udp_base {
            Some(rtp_port) => ClientTransport::Udp { rtp_port },
            None => ClientTransport::Tcp,
        };
        let session = ClientSession::new(
            ClientConfig {
                url: opts.url.clone(),
                credentials: opts.credentials.clone(),
                transport,
                user_agent: concat!("Sluice/", env!("CARGO_PKG_VERSION")).to_owned(),
                mode: opts.mode.clone(),
            },
            Instant::now(),
        )?;
        let (reader, writer) = tcp.into_split();
        let (udp_tx, udp_rx) = mpsc::channel(4096);
        let mut conn = Connection {
            prebound,
            session,
            reader,
            writer,
            server,
            udp_base,
            udp: Vec::new(),
            udp_rx,
            udp_tx,
            udp_tasks: Vec::new(),
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            server_ports: Vec::new(),
            finished: false,
        };
        // Record mode: the announced SDP says how many tracks need ports.
        if let ClientMode::Record { sdp } = &opts.mode {
            let tracks = sdp.lines().filter(|l| l.starts_with("m=")).count();
            conn.bind_udp(tracks)?;
        }
        Ok(conn)
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The underlying session (for its getters: session id, timeout, SSRCs).
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Binds the UDP sockets for `tracks` tracks at the port base the session asks for.
    fn bind_udp(&mut self, tracks: usize) -> Result<(), ConnectionError> {
        let Some(base) = self.udp_base else {
            return Ok(());
        };
        if !self.udp.is_empty() {
            return Ok(());
        }
        let tracks = tracks.min(MAX_TRACKS);
        let local_ip: IpAddr = if self.server.is_ipv4() {
            [0, 0, 0, 0].into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let mut std_pairs = std::mem::take(&mut self.prebound);
        std_pairs.truncate(tracks);
        if std_pairs.len() < tracks {
            let first = std_pairs.len();
            let more = bind_pairs(local_ip, base + 2 * first as u16, tracks - first)
                .ok_or(ConnectionError::NoUdpPorts(tracks))?;
            std_pairs.extend(more);
        }
        let mut pairs = Vec::new();
        for (a, b) in std_pairs {
            a.set_nonblocking(true)?;
            b.set_nonblocking(true)?;
            pairs.push((UdpSocket::from_std(a)?, UdpSocket::from_std(b)?));
        }
        for (track, (rtp, rtcp)) in pairs.into_iter().enumerate() {
            let (rtp, rtcp) = (Arc::new(rtp), Arc::new(rtcp));
            for (sock, kind) in [
                (rtp.clone(), PacketKind::Rtp),
                (rtcp.clone(), PacketKind::Rtcp),
            ] {
                let tx = self.udp_tx.clone();
                let server_ip = self.server.ip();
                self.udp_tasks.push(tokio::spawn(async move {
                    let mut buf = BytesMut::with_capacity(256 * 1024);
                    loop {
                        if buf.capacity() - buf.len() < 65536 {
                            buf.reserve(256 * 1024);
                        }
                        match sock.recv_buf_from(&mut buf).await {
                            // Only the server's packets are taken.
                            Ok((_, from)) if from.ip() == server_ip => {
                                let data = buf.split().freeze();
                                if tx.send((track, kind, data)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => buf.clear(),
                            Err(_) => buf.clear(),
                        }
                    }
                }));
            }
            self.udp.push((rtp, rtcp));
        }
        Ok(())
    }

    /// Writes what the session queued. Cancel-safe: unwritten bytes stay in `out`.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        while let Some(bytes) = self.session.poll_transmit() {
            self.out.extend_from_slice(&bytes);
        }
        while !self.out.is_empty() {
            self.writer.write_buf(&mut self.out).await?;
        }
        while let Some(d) = self.session.poll_datagram() {
            let Some((rtp, rtcp)) = self.udp.get(d.track) else {
                continue;
            };
            let port = match (d.kind, d.destination_port) {
                (PacketKind::Rtp, Some(p)) => p,
                (PacketKind::Rtcp, Some(p)) => p,
                (_, None) => continue,
            };
            let sock = if d.kind == PacketKind::Rtp { rtp } else { rtcp };
            let _ = sock
                .send_to(&d.data, SocketAddr::new(self.server.ip(), port))
                .await;
        }
        Ok(())
    }

    /// The next session event: progress (Described, TrackSetup, Playing), media (Rtp,
    /// Rtcp from TCP or UDP), or the end (Closed, Failed). After Closed or Failed the
    /// connection is done. Cancel-safe: it may be raced against timers in `select!`.
    pub async fn next_event(&mut self) -> Result<ClientEvent, ConnectionError> {
        loop {
            self.flush().await?;
            if let Some(ev) = self.session.poll_event() {
                match &ev {
                    ClientEvent::Described { controls, .. } => self.bind_udp(controls.len())?,
                    ClientEvent::TrackSetup {
                        track, transport, ..
                    } => {
                        if self.server_ports.len() <= *track {
                            self.server_ports.resize(*track + 1, None);
                        }
                        self.server_ports[*track] = transport.server_port;
                    }
                    ClientEvent::Closed | ClientEvent::Failed(_) => self.finished = true,
                    _ => {}
                }
                if let ClientEvent::Failed(e) = ev {
                    return Err(ConnectionError::Session(e));
                }
                return Ok(ev);
            }
            if self.finished {
                return Err(ConnectionError::Closed);
            }
            let deadline = self.session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.reader.read_buf(&mut self.buf) => {
                    match r {
                        Ok(0) => {
                            self.finished = true;
                            return Err(ConnectionError::Closed);
                        }
                        Ok(_) => {
                            let data = self.buf.split();
                            if let Err(e) = self.session.handle_input(&data, Instant::now()) {
                                debug!(error = %e, "client session input error");
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some((track, kind, data)) = self.udp_rx.recv() => {
                    return Ok(match kind {
                        PacketKind::Rtp => ClientEvent::Rtp { track, data },
                        PacketKind::Rtcp => ClientEvent::Rtcp { track, data },
                    });
                }
                _ = sleep => self.session.handle_timeout(Instant::now()),
            }
        }
    }

    /// Sends RTCP for `track` (interleaved over TCP, or from the track's RTCP socket to
    /// the server's RTCP port over UDP).
    pub async fn send_rtcp(&mut self, track: usize, data: &[u8]) -> Result<(), ConnectionError> {
        if self.udp_base.is_some() {
            if let (Some((_, rtcp)), Some(Some((_, port)))) =
                (self.udp.get(track), self.server_ports.get(track))
            {
                let _ = rtcp
                    .send_to(data, SocketAddr::new(self.server.ip(), *port))
                    .await;
            }
            return Ok(());
        }
        self.session.send_rtcp(track, data);
        self.flush().await
    }

    /// Publishers: sends one RTP packet of `track`.
    pub async fn send_rtp(&mut self, track: usize, data: &[u8]) -> Result<(), ConnectionError> {
        self.session.send_rtp(track, data);
        self.flush().await
    }

    /// Sends TEARDOWN and waits (up to `timeout`) for its answer.
    pub async fn close(&mut self, timeout: Duration) {
        self.session.close();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                match self.next_event().await {
                    Ok(ClientEvent::Closed) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_urls() {
        assert_eq!(authority("rtsp://h/x").as_deref(), Some("h:554"));
        assert_eq!(authority("rtsp://u:p@h:8554/x").as_deref(), Some("h:8554"));
        assert_eq!(
            authority("rtsp://[::1]:8554/x").as_deref(),
            Some("[::1]:8554")
        );
        assert_eq!(authority("rtsp://[::1]/x").as_deref(), Some("[::1]:554"));
        assert_eq!(authority("http://h/x"), None);
        assert_eq!(authority("rtsp:///x"), None);
    }
}
