//! What an RTSP connection's [`sluice_rtsp::server::Action`]s do to server state: pause
//! and resume media, make a publisher's stream live, drop one track, send a publisher's
//! Receiver Reports, and end a session with all it holds.

use crate::rtsp::readers::ReaderGroup;
use std::time::Instant;

use sluice_rtsp::server::{EndReason, TrackTransport};
use sluice_rtsp::server_session::Role;
use tracing::info;

use crate::rtsp::conn::Conn;
use crate::rtsp::readers::media_queue::TcpOut;

impl Conn {
    /// PAUSE: a stored file keeps its position; a stopped reader leaves its stream.
    pub(crate) fn pause(&mut self, id: &str, stopped: bool) {
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        if let Some(file) = &session.file {
            file.pause();
        }
        if stopped {
            let mut inner = session.lock();
            if let Some(p) = inner.playing.take() {
                ReaderGroup::of(&session.stream).remove(p.sink_id);
            }
            if inner.multicast_member {
                if let Some(m) = &self.server.multicast {
                    m.leave(session.stream.path());
                }
                inner.multicast_member = false;
            }
        }
        info!(session = %id, conn = self.handle.id, path = %session.stream.path(), "pause");
    }

    /// RECORD: the publisher's stream is live for readers.
    pub(crate) fn record(&mut self, id: &str, started: bool) {
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        if started {
            self.server.set_path_ready(&session.stream);
            self.server.announce_start(session);
        }
        info!(session = %id, conn = self.handle.id, peer = %self.handle.peer, path = %session.stream.path(), "record");
    }

    /// TEARDOWN of one track: the rest keeps playing, re-subscribed without it.
    pub(crate) fn teardown_track(&mut self, id: &str, track: usize) {
        let Some(session) = self.sessions.get(id).cloned() else {
            return;
        };
        self.routes
            .retain(|_, r| !(r.session == id && r.track == track));
        let was_playing = {
            let mut inner = session.lock();
            if let Some(slot) = inner.transports.get_mut(track) {
                *slot = None;
            }
            let p = inner.playing.take();
            if let Some(p) = &p {
                ReaderGroup::of(&session.stream).remove(p.sink_id);
            }
            p.is_some()
        };
        if was_playing {
            // No answer to wait for: the TEARDOWN's is written already.
            self.start_playing(&session);
            for sink in self.open_after_write.drain(..) {
                sink.open();
            }
        }
        info!(session = %id, conn = self.handle.id, track, "teardown (track)");
    }

    /// A publisher's Receiver Reports, one per track, the way its media comes.
    pub(crate) fn send_receiver_reports(&mut self, id: &str) {
        let Some(session) = self.sessions.get(id) else {
            return;
        };
        let Some(ingest) = session.lock().ingest.clone() else {
            return;
        };
        let transports = session.lock().transports.clone();
        let now = Instant::now();
        for (track, t) in transports.iter().enumerate() {
            let Some(t) = t else { continue };
            let Some(rr) = ingest.receiver_report(track, now) else {
                continue;
            };
            match t {
                TrackTransport::Udp { rtcp, .. } => {
                    if let Some(udp) = &self.server.udp {
                        let _ = udp.rtcp.try_send_to(&rr, *rtcp);
                    }
                }
                TrackTransport::Tcp { rtcp, .. } => {
                    let _ = self.handle.media.push(TcpOut::Frame {
                        channel: *rtcp,
                        data: rr,
                        received_at: None,
                    });
                }
                TrackTransport::Multicast { .. } => {}
            }
        }
    }

    /// The session is over: the server releases all it holds.
    pub(crate) fn end_session(&mut self, id: &str, role: Role, reason: EndReason) {
        self.sessions.remove(id);
        self.routes.retain(|_, r| r.session != id);
        if role == Role::Recorder && reason == EndReason::Teardown {
            // Its stream ends with it; this connection is not closed for that.
            self.announced = None;
        }
        self.server.end_session(id, &reason.to_string());
        if reason == EndReason::Timeout {
            self.handle.close("timeout");
        }
    }
}
