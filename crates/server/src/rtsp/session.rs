//! What a live RTSP session holds on the server: its stream, its transports and the
//! media resources bound to them (subscription, ingest, UDP routes, multicast group).
//! Its RFC 2326 state, timeout and ownership live in the connection's
//! [`sluice_rtsp::server::ServerConnection`]; this is only what that decision needs done.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use sluice_rtp::rtcp::{self, ReportBlock, RtcpPacket};
use sluice_rtsp::server::TrackTransport;
use sluice_rtsp::server_session::Role;

use crate::rtsp::conn::ConnHandle;
use crate::rtsp::ingest::Ingest;
use crate::rtsp::readers::reader::ReaderSink;
use crate::rtsp::readers::SinkId;
use sluice_hub::Playback;
use sluice_hub::Stream;

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
    /// Per track of the stream: its transport once SETUP committed it.
    pub transports: Vec<Option<TrackTransport>>,
    /// Readers: the subscription while playing.
    pub playing: Option<Playing>,
    /// Publishers: the source feeding the stream.
    pub ingest: Option<Arc<Ingest>>,
    /// Readers: the latest RTCP report block they sent per track.
    pub reader_reports: Vec<Option<ReportBlock>>,
    /// Whether this reader counts as a member of the path's multicast group.
    pub multicast_member: bool,
    /// The multicast group this session acquired (released once, when it ends).
    pub multicast_group: Option<Ipv4Addr>,
    /// The last sign of life outside RTSP requests (a reader's RTCP).
    pub last_activity: Instant,
}

/// A server-side RTSP session.
#[derive(Debug)]
pub struct Session {
    /// The Session header id.
    pub id: String,
    /// The connection that created it (for logs, and to close it when the stream ends).
    pub conn: Arc<ConnHandle>,
    /// Player or recorder.
    pub role: Role,
    /// The path's stream it plays or records (for stored files, a private stream).
    pub stream: Arc<Stream>,
    /// For stored files: the source playing into the private stream.
    pub file: Option<Box<dyn Playback>>,
    /// The user the connection authenticated as (None: anonymous).
    pub user: Option<String>,
    /// When it was created (wall clock, for the API).
    pub created: SystemTime,
    /// Mutable state.
    pub inner: Mutex<SessionInner>,
    /// Whether its start (reader started / publisher started) is on the hub's event bus,
    /// so that its end is published too (see `rtsp/events.rs`).
    pub announced: std::sync::atomic::AtomicBool,
}

impl Session {
    /// A session of `role` on `stream`, holding nothing yet.
    pub fn new(
        id: String,
        conn: Arc<ConnHandle>,
        role: Role,
        stream: Arc<Stream>,
        file: Option<Box<dyn Playback>>,
        now: Instant,
    ) -> Session {
        let tracks = stream.presentation().tracks().len();
        Session {
            id,
            conn,
            role,
            stream,
            file,
            user: None,
            created: SystemTime::now(),
            inner: Mutex::new(SessionInner {
                transports: vec![None; tracks],
                playing: None,
                ingest: None,
                reader_reports: vec![None; tracks],
                multicast_member: false,
                multicast_group: None,
                last_activity: now,
            }),
            announced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This session, made by `user` (None: anonymous).
    pub fn by(mut self, user: Option<String>) -> Session {
        self.user = user;
        self
    }

    /// What the hub's session directory says of it (see [`sluice_hub::Sessions`]).
    pub fn info(&self) -> sluice_hub::SessionInfo {
        use crate::rtsp::readers::Reader;
        let inner = self.lock();
        let transport = match inner.transports.iter().flatten().next() {
            Some(TrackTransport::Udp { .. }) => "udp",
            Some(TrackTransport::Tcp { .. }) => "tcp",
            Some(TrackTransport::Multicast { .. }) => "multicast",
            None => "",
        };
        let (packets, bytes) = match (&inner.ingest, &inner.playing) {
            (Some(ingest), _) => (ingest.totals().0, ingest.bytes_received()),
            (None, Some(p)) => p.sink.sent(),
            (None, None) => (0, 0),
        };
        sluice_hub::SessionInfo {
            id: self.id.clone(),
            path: self.stream.path().to_owned(),
            protocol: "rtsp",
            transport,
            role: match self.role {
                Role::Recorder => sluice_hub::SessionRole::Publisher,
                Role::Player => sluice_hub::SessionRole::Reader,
            },
            peer: self.conn.peer,
            user: self.user.clone(),
            created_unix: self
                .created
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            packets,
            bytes,
        }
    }

    /// Locks the mutable state (a poisoned lock is recovered: the state stays consistent
    /// because every mutation is a single assignment).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SessionInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The last sign of life outside RTSP: a reader's RTCP, a publisher's media. The
    /// connection feeds it to its session timer.
    pub fn last_activity(&self) -> Instant {
        let inner = self.lock();
        match &inner.ingest {
            Some(ingest) => ingest.last_packet().max(inner.last_activity),
            None => inner.last_activity,
        }
    }

    /// RTCP from a reader on `track`: keeps its report blocks and counts as activity.
    pub fn handle_reader_rtcp(&self, track: usize, data: &[u8], now: Instant) {
        let Ok(packets) = rtcp::parse_compound(data) else {
            return;
        };
        let mut inner = self.lock();
        inner.last_activity = inner.last_activity.max(now);
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
