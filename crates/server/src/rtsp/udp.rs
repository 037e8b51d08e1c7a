//! The server's UDP unicast sockets (RTP on `rtp_port`, RTCP on `rtp_port + 1`) and the
//! demultiplexing of what arrives on them by sender address.
//!
//! Only addresses a session negotiated in SETUP are routed; datagrams from anyone else
//! are counted and ignored.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Instant;

use bytes::BytesMut;
use sluice_net::media_socket::MediaSocket;
use tracing::debug;

use crate::rtsp::ingest::Ingest;
use crate::rtsp::session::Session;
use sluice_hub::Stream;

/// What a datagram from a known address belongs to.
#[derive(Debug, Clone)]
pub enum Route {
    /// A publisher's track.
    Ingest {
        /// The source.
        ingest: Arc<Ingest>,
        /// Track index.
        track: usize,
    },
    /// A reader's RTCP for a track.
    Reader {
        /// The session.
        session: Weak<Session>,
        /// Track index.
        track: usize,
    },
}

/// The unicast UDP sockets and their routing tables.
#[derive(Debug)]
pub struct UdpHub {
    /// Socket on `rtp_port`.
    pub rtp: Arc<MediaSocket>,
    /// Socket on `rtp_port + 1`.
    pub rtcp: Arc<MediaSocket>,
    /// Whether the RTP socket sends GSO runs (probed at bind).
    pub gso: bool,
    rtp_routes: RwLock<HashMap<SocketAddr, Route>>,
    rtcp_routes: RwLock<HashMap<SocketAddr, Route>>,
    unknown: AtomicU64,
}

impl UdpHub {
    /// Binds the RTP and RTCP sockets on `ip` at `rtp_port` and `rtp_port + 1`.
    pub async fn bind(ip: std::net::IpAddr, rtp_port: u16) -> std::io::Result<UdpHub> {
        let rtp = MediaSocket::bind(SocketAddr::new(ip, rtp_port))?;
        let rtcp = MediaSocket::bind(SocketAddr::new(ip, rtp_port + 1))?;
        let gso = rtp.probe_gso();
        debug!(gso, "UDP segmentation offload");
        Ok(UdpHub {
            gso,
            rtp: Arc::new(rtp),
            rtcp: Arc::new(rtcp),
            rtp_routes: RwLock::new(HashMap::new()),
            rtcp_routes: RwLock::new(HashMap::new()),
            unknown: AtomicU64::new(0),
        })
    }

    /// Routes RTP from `rtp` and RTCP from `rtcp` to a publisher's track. Fails if another
    /// session already receives from either address.
    pub fn add_ingest(
        &self,
        rtp: SocketAddr,
        rtcp: SocketAddr,
        ingest: Arc<Ingest>,
        track: usize,
    ) -> bool {
        let mut rtp_routes = self.rtp_routes.write().unwrap_or_else(|e| e.into_inner());
        let mut rtcp_routes = self.rtcp_routes.write().unwrap_or_else(|e| e.into_inner());
        if rtp_routes.contains_key(&rtp) || rtcp_routes.contains_key(&rtcp) {
            return false;
        }
        rtp_routes.insert(
            rtp,
            Route::Ingest {
                ingest: ingest.clone(),
                track,
            },
        );
        rtcp_routes.insert(rtcp, Route::Ingest { ingest, track });
        true
    }

    /// Routes RTCP from a reader's `rtcp` address to its session.
    pub fn add_reader(&self, rtcp: SocketAddr, session: &Arc<Session>, track: usize) {
        self.rtcp_routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                rtcp,
                Route::Reader {
                    session: Arc::downgrade(session),
                    track,
                },
            );
    }

    /// Removes the routes of these addresses (a session's, at its end).
    pub fn remove(&self, rtp: Option<SocketAddr>, rtcp: SocketAddr) {
        if let Some(rtp) = rtp {
            self.rtp_routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&rtp);
        }
        self.rtcp_routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rtcp);
    }

    /// Datagrams ignored because no session expects their sender.
    pub fn unknown_datagrams(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    fn lookup(&self, rtcp: bool, from: &SocketAddr) -> Option<Route> {
        let table = if rtcp {
            &self.rtcp_routes
        } else {
            &self.rtp_routes
        };
        table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(from)
            .cloned()
    }

    /// Receives on the RTP (`rtcp == false`) or RTCP socket forever, dispatching by sender.
    pub async fn run_receiver(self: Arc<Self>, rtcp: bool) {
        let socket = if rtcp {
            self.rtcp.clone()
        } else {
            self.rtp.clone()
        };
        // One large buffer split per datagram: the Bytes handed on share its allocation,
        // so receiving costs no allocation per packet once the buffer is warm.
        let mut buf = BytesMut::with_capacity(256 * 1024);
        // The streams fed since their batches were last all sent, each with whether its
        // frames are held: from the first datagram of the input at hand until no more
        // datagram is waiting, their frames are held and then go out together (see
        // `Stream::hold_frames`); what remains of an unfinished frame goes out when the
        // stream's timer says so (`Stream::poll_timeout`). Reused: no allocation per
        // datagram.
        let mut fed: Vec<(Arc<Stream>, bool)> = Vec::new();
        loop {
            if buf.capacity() - buf.len() < 65536 {
                buf.reserve(256 * 1024);
            }
            let at_hand = crate::rtsp::at_hand::ready_now(socket.recv_buf_from(&mut buf)).await;
            let received = if let Some(r) = at_hand {
                r
            } else {
                // Nothing more waiting: the held frames go out.
                for (stream, held) in &mut fed {
                    if std::mem::take(held) {
                        stream.release_frames();
                    }
                }
                // The earliest timer of the streams still collecting; the others leave.
                let mut timer: Option<Instant> = None;
                fed.retain(|(stream, _)| match stream.poll_timeout() {
                    Some(t) => {
                        timer = Some(timer.map_or(t, |m| m.min(t)));
                        true
                    }
                    None => false,
                });
                let recv = socket.recv_buf_from(&mut buf);
                match timer {
                    None => recv.await,
                    Some(at) => match tokio::time::timeout_at(at.into(), recv).await {
                        Ok(r) => r,
                        Err(_) => {
                            let now = Instant::now();
                            for (stream, _) in &fed {
                                stream.handle_timeout(now);
                            }
                            continue;
                        }
                    },
                }
            };
            let now = Instant::now();
            let from = match received {
                Ok((_, from)) => from,
                Err(e) => {
                    // ICMP errors surface here on some systems; they never stop the loop.
                    debug!(error = %e, "UDP receive error");
                    buf.clear();
                    continue;
                }
            };
            let data = buf.split().freeze();
            match self.lookup(rtcp, &from) {
                Some(Route::Ingest { ingest, track }) => {
                    if rtcp {
                        ingest.handle_rtcp(track, &data, now);
                    } else {
                        let stream = ingest.stream();
                        match fed.iter_mut().find(|(s, _)| Arc::ptr_eq(s, stream)) {
                            Some((_, true)) => {}
                            Some((_, held)) => {
                                stream.hold_frames();
                                *held = true;
                            }
                            None => {
                                stream.hold_frames();
                                fed.push((stream.clone(), true));
                            }
                        }
                        ingest.handle_rtp(track, data, now);
                    }
                }
                Some(Route::Reader { session, track }) => {
                    if let Some(s) = session.upgrade() {
                        s.handle_reader_rtcp(track, &data, now);
                    }
                }
                None => {
                    if self.unknown.fetch_add(1, Ordering::Relaxed) == 0 {
                        debug!(%from, "ignoring UDP datagram from an address no session negotiated");
                    }
                }
            }
        }
    }
}
