//! A live RTSP session as the server holds it: its sans-IO state machine plus the
//! resources bound to it (transports, subscription, writer tasks).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_rtp::rtcp::{self, ReportBlock, RtcpPacket};
use sluice_rtsp::server_session::{Role, ServerSession};
use tokio::task::JoinHandle;

use crate::conn::ConnHandle;
use crate::file_source::FileSource;
use crate::ingest::Ingest;
use crate::reader::ReaderSink;
use crate::stream::{SinkId, Stream};

/// How one track of a session travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackTransport {
    /// UDP unicast to/from the client's ports.
    Udp {
        /// Client RTP address.
        rtp: SocketAddr,
        /// Client RTCP address.
        rtcp: SocketAddr,
    },
    /// Interleaved on the RTSP connection.
    Tcp {
        /// RTP channel.
        rtp: u8,
        /// RTCP channel.
        rtcp: u8,
    },
    /// The path's multicast group.
    Multicast {
        /// Group address.
        group: Ipv4Addr,
        /// RTP port (RTCP is + 1).
        port: u16,
    },
}

/// A reader's active subscription (while PLAYing).
#[derive(Debug)]
pub struct Playing {
    /// The subscription in the stream.
    pub sink_id: SinkId,
    /// The sink (its Sender Reports are sent by the server's reaper, when due).
    pub sink: Arc<ReaderSink>,
}

/// The mutable part of a session.
#[derive(Debug)]
pub struct SessionInner {
    /// RFC 2326 state.
    pub machine: ServerSession,
    /// Per track of the stream: its transport once SETUP.
    pub transports: Vec<Option<TrackTransport>>,
    /// Readers: the subscription while playing.
    pub playing: Option<Playing>,
    /// Publishers: the source feeding the stream.
    pub ingest: Option<Arc<Ingest>>,
    /// Publishers: the Receiver Report task.
    pub receiver_reports: Option<JoinHandle<()>>,
    /// Readers: the latest RTCP report block they sent per track.
    pub reader_reports: Vec<Option<ReportBlock>>,
    /// Whether this reader counts as a member of the path's multicast group.
    pub multicast_member: bool,
}

/// A server-side RTSP session.
#[derive(Debug)]
pub struct Session {
    /// The Session header id.
    pub id: String,
    /// The connection that created it; only that connection may use it.
    pub conn: Arc<ConnHandle>,
    /// The user that created it (`any` when anonymous); only that user may use it.
    pub principal: String,
    /// The path's stream it plays or records (for stored files, a private stream).
    pub stream: Arc<Stream>,
    /// For stored files: the source playing into the private stream.
    pub file: Option<FileSource>,
    /// Mutable state.
    pub inner: Mutex<SessionInner>,
}

impl Session {
    /// Locks the mutable state (a poisoned lock is recovered: the state stays consistent
    /// because every mutation is a single assignment).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SessionInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's role.
    pub fn role(&self) -> Role {
        self.lock().machine.role()
    }

    /// Refreshes the timeout.
    pub fn touch(&self, now: Instant) {
        self.lock().machine.handle_activity(now);
    }

    /// Whether every set-up track uses UDP unicast or multicast (such sessions outlive
    /// their RTSP connection until they time out).
    pub fn is_udp_only(&self) -> bool {
        let inner = self.lock();
        inner
            .transports
            .iter()
            .flatten()
            .all(|t| !matches!(t, TrackTransport::Tcp { .. }))
    }

    /// Whether the session has expired at `now` (publishers count their media as activity).
    pub fn is_expired(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        if let Some(ingest) = &inner.ingest {
            let last = ingest.last_packet();
            inner.machine.handle_activity(last);
        }
        inner.machine.is_expired(now)
    }

    /// RTCP from a reader on `track`: keeps its report blocks and refreshes the timeout.
    pub fn handle_reader_rtcp(&self, track: usize, data: &[u8], now: Instant) {
        let Ok(packets) = rtcp::parse_compound(data) else {
            return;
        };
        let mut inner = self.lock();
        inner.machine.handle_activity(now);
        for p in packets {
            let blocks = match p {
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::SenderReport { blocks, .. } => blocks,
                _ => continue,
            };
            if let (Some(b), Some(slot)) = (blocks.first(), inner.reader_reports.get_mut(track)) {
                *slot = Some(*b);
            }
        }
    }

    /// Reader loss/jitter as last reported: (cumulative lost, max jitter) over tracks.
    pub fn reader_report_summary(&self) -> (i64, u32) {
        let inner = self.lock();
        inner
            .reader_reports
            .iter()
            .flatten()
            .fold((0, 0), |(l, j), b| {
                (l + i64::from(b.cumulative_lost), j.max(b.jitter))
            })
    }
}
