//! The sessions of one connection: who created each, on which path, its state machine,
//! its per-track transports and its timers.

use std::time::{Duration, Instant};

use crate::server_session::{Role, ServerSession, State};

use super::transport::{TrackTransport, TransportKind};

/// One session, owned by the connection that created it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: String,
    /// The principal whose request created it; later requests must come from the same
    /// one (or it is [`super::ANYONE`]).
    pub principal: String,
    /// The path (presentation) the session plays or records.
    pub path: String,
    pub machine: ServerSession,
    /// Each set-up track's transport, sorted by track: a session has a handful of tracks,
    /// so a sorted `Vec` costs less memory per session than a map's nodes.
    pub transports: Vec<(usize, TrackTransport)>,
    /// Stored media: Range seeks and Scale other than 1 are possible.
    pub seekable: bool,
    /// Next receiver-report time while recording.
    pub next_rtcp: Option<Instant>,
}

impl Entry {
    pub(crate) fn role(&self) -> Role {
        self.machine.role()
    }

    pub(crate) fn state(&self) -> State {
        self.machine.state()
    }

    /// The kind every track of the session uses, once one is set up.
    pub(crate) fn kind(&self) -> Option<TransportKind> {
        self.transports.first().map(|(_, t)| t.kind())
    }

    /// The multicast group of the session, if it has one.
    pub(crate) fn group(&self) -> Option<std::net::IpAddr> {
        self.transports.iter().find_map(|(_, t)| match t {
            TrackTransport::Multicast { group, .. } => *group,
            _ => None,
        })
    }

    /// Whether no track is interleaved on the connection (such player sessions outlive
    /// the connection until they time out).
    pub(crate) fn udp_only(&self) -> bool {
        self.transports
            .iter()
            .all(|(_, t)| !matches!(t, TrackTransport::Tcp { .. }))
    }

    /// The next deadline: expiry or receiver report.
    pub(crate) fn deadline(&self) -> Instant {
        let expiry = self.machine.poll_timeout();
        self.next_rtcp.map_or(expiry, |r| r.min(expiry))
    }
}

/// A snapshot of one session for [`super::ServerConnection::sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id.
    pub id: String,
    /// Who created it.
    pub principal: String,
    /// The path it plays or records.
    pub path: String,
    /// Player or recorder.
    pub role: Role,
    /// Ready, Playing or Recording.
    pub state: State,
    /// The set-up tracks and their transports, by track index.
    pub transports: Vec<(usize, TrackTransport)>,
    /// The advertised timeout.
    pub timeout: Duration,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

impl From<&Entry> for SessionInfo {
    fn from(e: &Entry) -> Self {
        SessionInfo {
            id: e.id.clone(),
            principal: e.principal.clone(),
            path: e.path.clone(),
            role: e.role(),
            state: e.state(),
            transports: e.transports.clone(),
            timeout: e.machine.timeout(),
            expires: e.machine.poll_timeout(),
        }
    }
}
