//! The RTSP module's session events on the hub's bus: a reader's PLAY and a publisher's
//! RECORD start them, the session's end stops them (with why). One start and one stop
//! per session, whatever PAUSE/PLAY cycles happen in between.

use std::sync::atomic::Ordering;

use sluice_hub::{ServerEvent, SessionRef};
use sluice_rtsp::server::TrackTransport;
use sluice_rtsp::server_session::Role;

use crate::rtsp::session::Session;
use crate::rtsp::Rtsp;

/// Who `s` is, for an event: path, id, protocol, transport, peer.
pub(crate) fn session_info(s: &Session) -> SessionRef {
    let transport = s
        .lock()
        .transports
        .iter()
        .flatten()
        .next()
        .map(|t| match t {
            TrackTransport::Udp { .. } => "udp",
            TrackTransport::Tcp { .. } => "tcp",
            TrackTransport::Multicast { .. } => "multicast",
        })
        .map(str::to_owned);
    SessionRef {
        path: s.stream.path().to_owned(),
        session: s.id.clone(),
        protocol: if s.conn.tls { "rtsps" } else { "rtsp" }.to_owned(),
        transport,
        peer: s.conn.peer.to_string(),
    }
}

impl Rtsp {
    /// Publishes `s`'s start (reader or publisher, by its role), once per session.
    pub(crate) fn announce_start(&self, s: &Session) {
        if s.announced.swap(true, Ordering::Relaxed) {
            return;
        }
        let session = session_info(s);
        self.hub.events().publish(match s.role {
            Role::Recorder => ServerEvent::PublisherStarted { session },
            _ => ServerEvent::ReaderStarted { session },
        });
    }

    /// Publishes the end of `s` (described by `session`, taken before its transports
    /// were released) for `why`, if its start was published.
    pub(crate) fn announce_stop(&self, s: &Session, session: SessionRef, why: &str) {
        if !s.announced.swap(false, Ordering::Relaxed) {
            return;
        }
        let reason = why.to_owned();
        self.hub.events().publish(match s.role {
            Role::Recorder => ServerEvent::PublisherStopped { session, reason },
            _ => ServerEvent::ReaderStopped { session, reason },
        });
    }
}
