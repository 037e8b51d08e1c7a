//! UDP multicast delivery: one group per path, allocated from `multicast_range`; one
//! sink per group feeds every multicast reader of the path at once.
//!
//! Track `i` of a path is sent to `group:(multicast_rtp_port + 2i)` (RTCP one port up).

use crate::rtsp::readers::ReaderGroup;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rtsp::readers::latency::LatencyHistogram;
use ipnet::Ipv4Net;
use sluice_net::media_socket::MediaSocket;
use tokio::task::JoinHandle;
use tracing::info;

use crate::rtsp::readers::reader::{run_sender_reports, Outbox, ReaderSink, Target};
use crate::rtsp::readers::SinkId;
use sluice_hub::Stream;

/// Why a multicast transport could not be given.
#[derive(Debug, thiserror::Error)]
pub enum MulticastError {
    /// Every address of the range is in use.
    #[error("multicast range exhausted")]
    Exhausted,
}

#[derive(Debug)]
struct Group {
    addr: Ipv4Addr,
    sessions: usize,
    members: usize,
    feed: Option<Feed>,
}

#[derive(Debug)]
struct Feed {
    stream: Arc<Stream>,
    sink_id: SinkId,
    reports: JoinHandle<()>,
}

/// The multicast groups of all paths.
#[derive(Debug)]
pub struct Multicast {
    range: Ipv4Net,
    rtp_port: u16,
    socket: Arc<MediaSocket>,
    groups: Mutex<HashMap<String, Group>>,
    /// Where the groups' sends are timed (see [`Multicast::recording_latency`]).
    latency: Option<Arc<LatencyHistogram>>,
}

impl Multicast {
    /// Creates the sending socket (TTL `ttl`, loopback delivery on so local readers work).
    pub fn new(range: Ipv4Net, rtp_port: u16, ttl: u8) -> std::io::Result<Multicast> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_multicast_ttl_v4(u32::from(ttl))?;
        s.set_multicast_loop_v4(true)?;
        let _ = s.set_send_buffer_size(4 << 20);
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
        Ok(Multicast {
            range,
            rtp_port,
            socket: Arc::new(MediaSocket::from_socket(s)?),
            groups: Mutex::new(HashMap::new()),
            latency: None,
        })
    }

    /// These groups, recording the ingest → egress latency of their sends into `latency`
    /// (the server's histogram, as its other readers do); without it, nowhere.
    pub fn recording_latency(mut self, latency: Arc<LatencyHistogram>) -> Multicast {
        self.latency = Some(latency);
        self
    }

    /// RTP port of `track` in every group.
    pub fn port(&self, track: usize) -> u16 {
        self.rtp_port.saturating_add(2 * track as u16)
    }

    /// The group of `path`, allocating one for the path's first multicast session.
    /// Call [`Multicast::release`] once per successful call when the session ends.
    pub fn acquire(&self, path: &str) -> Result<Ipv4Addr, MulticastError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get_mut(path) {
            g.sessions += 1;
            return Ok(g.addr);
        }
        let used: std::collections::HashSet<Ipv4Addr> = groups.values().map(|g| g.addr).collect();
        let addr = self
            .range
            .hosts()
            .find(|a| !used.contains(a))
            .ok_or(MulticastError::Exhausted)?;
        groups.insert(
            path.to_owned(),
            Group {
                addr,
                sessions: 1,
                members: 0,
                feed: None,
            },
        );
        info!(path, group = %addr, "multicast group allocated");
        Ok(addr)
    }

    /// Ends one session's use of `path`'s group; the group is freed with its last session.
    pub fn release(&self, path: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = groups.get_mut(path) {
            g.sessions = g.sessions.saturating_sub(1);
            if g.sessions == 0 {
                if let Some(f) = g.feed.take() {
                    stop(f);
                }
                info!(path, group = %g.addr, "multicast group released");
                groups.remove(path);
            }
        }
    }

    /// A reader of `path` starts playing: the group's feed starts with its first member.
    pub fn join(&self, path: &str, stream: &Arc<Stream>, sr_interval: Duration) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = groups.get_mut(path) else {
            return;
        };
        g.members += 1;
        if let Some(f) = &g.feed {
            if Arc::ptr_eq(&f.stream, stream) && !stream.is_ended() {
                return;
            }
        }
        if let Some(f) = g.feed.take() {
            stop(f);
        }
        let targets = (0..stream.presentation().tracks().len())
            .map(|t| {
                let port = self.port(t);
                Target::Udp {
                    rtp: SocketAddrV4::new(g.addr, port).into(),
                    rtcp: SocketAddrV4::new(g.addr, port.saturating_add(1)).into(),
                }
            })
            .collect();
        let mut sink = ReaderSink::new(
            format!("multicast {}", g.addr),
            targets,
            Outbox::Udp {
                rtp: self.socket.clone(),
                rtcp: self.socket.clone(),
                // GSO runs to a multicast group with loopback delivery are not worth
                // the risk: one datagram per packet (still batched).
                gso: false,
            },
            Duration::MAX,
            Arc::new(|_| {}),
        );
        if let Some(latency) = &self.latency {
            sink = sink.recording_latency(latency.clone());
        }
        let sink = Arc::new(sink);
        // Subscribe gated, then open: the GOP cache handed over at subscription goes out
        // as paced catch-up, not as a burst members' socket buffers cannot absorb.
        let sink_id = ReaderGroup::of(stream).add(sink.clone());
        sink.open();
        let reports = tokio::spawn(run_sender_reports(sink, stream.clone(), sr_interval));
        info!(path, group = %g.addr, "multicast feed started");
        g.feed = Some(Feed {
            stream: stream.clone(),
            sink_id,
            reports,
        });
    }

    /// A multicast reader of `path` stops playing: the feed stops with the last member.
    pub fn leave(&self, path: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = groups.get_mut(path) else {
            return;
        };
        g.members = g.members.saturating_sub(1);
        if g.members == 0 {
            if let Some(f) = g.feed.take() {
                info!(path, group = %g.addr, "multicast feed stopped");
                stop(f);
            }
        }
    }
}

fn stop(f: Feed) {
    ReaderGroup::of(&f.stream).remove(f.sink_id);
    f.reports.abort();
}
