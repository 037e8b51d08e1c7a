//! Answers to the questions an RTSP connection cannot decide alone
//! ([`sluice_rtsp::server::Question`]), from server state: the path registry and its
//! streams, on-demand pulls, stored files (VOD), session limits, UDP routes, multicast
//! groups, and where a reader's media starts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_hub::registry::{Claim, Owner};
use sluice_rtsp::server::{
    PlayGrant, Question, Refusal, SetupGrant, StreamInfo, Token, TrackStart, TrackTransport,
};
use sluice_rtsp::server_session::Role;
use sluice_rtsp::{
    ClockRange, ClockTime, Frames, NptTime, Range, ReplayOptions, Scale, StatusCode,
};
use tracing::{info, warn};

use crate::rtsp::conn::{ChannelRoute, Conn, Route};
use crate::rtsp::ingest::Ingest;
use crate::rtsp::readers::reader::{Outbox, ReaderSink, Target};
use crate::rtsp::readers::ReaderGroup;
use crate::rtsp::session::{Playing, Session};
use crate::rtsp::{Rtsp, RTCP_INTERVAL};
use sluice_hub::on_demand::PlayError;
use sluice_hub::presentation::Presentation;
use sluice_hub::Stream;
use sluice_hub::{FrameFilter, OnDemandMedia, OpenError, PlayRequest, Position};

/// What a SETUP commit asks of the server.
struct Commit {
    session: String,
    new_session: bool,
    path: String,
    role: Role,
    track: usize,
    transport: TrackTransport,
    /// Who the connection authenticated (`any` when anonymous).
    principal: String,
}

impl Conn {
    /// Answers `question`; the connection then has the response (or the next question).
    pub(crate) async fn answer(&mut self, token: Token, question: Question) {
        let answered = match question {
            Question::Describe { path, query } => {
                let sdp = self.describe(&path, query.as_deref()).await;
                self.rtsp.answer_describe_at(token, sdp)
            }
            Question::Announce {
                path,
                sdp,
                replaces: _,
            } => {
                let r = self.announce(&path, &sdp);
                self.rtsp.answer_announce(token, r)
            }
            Question::Stream { path, session } => {
                let r = self.find_stream(&path, session.as_deref()).await;
                self.rtsp.answer_stream(token, r)
            }
            Question::Setup {
                session,
                new_session,
                path,
                role,
                track,
                transport,
                principal,
            } => {
                let commit = Commit {
                    session,
                    new_session,
                    path,
                    role,
                    track,
                    transport,
                    principal,
                };
                let r = self.commit_setup(&commit);
                let ok = r.is_ok();
                let answered = self.rtsp.answer_setup(token, r);
                // The connection refused what the server committed: undo it.
                if ok && self.rtsp.session(&commit.session).is_none() {
                    self.sessions.remove(&commit.session);
                    self.server.end_session(&commit.session, "setup refused");
                }
                answered
            }
            Question::Play {
                session,
                range,
                scale,
                replay,
                start,
                ..
            } => {
                let r = self.play(&session, range, scale, replay, start);
                self.rtsp.answer_play(token, r)
            }
            Question::Parameters { .. } => self.rtsp.answer_parameters(
                token,
                Err(Refusal::new(
                    StatusCode::PARAMETER_NOT_UNDERSTOOD,
                    "no parameter is readable",
                )),
            ),
        };
        if let Err(e) = answered {
            warn!(conn = self.handle.id, error = %e, "answer did not fit the question");
        }
    }

    /// Opens `path`'s on-demand media (a stored file) for DESCRIBE or a new session, if
    /// a module provides the path on demand.
    fn open_on_demand(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, Refusal> {
        self.server.hub.open_on_demand(path).map_err(|e| {
            let status = match e {
                OpenError::NotFound => StatusCode::NOT_FOUND,
                OpenError::Unsupported(_) | OpenError::Malformed(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                OpenError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                OpenError::BadRequest(_) => StatusCode::BAD_REQUEST,
            };
            Refusal::new(status, format!("{path}: {e}"))
        })
    }

    /// The ready stream of `path`, starting its pull source (and waiting up to the
    /// source's start timeout) when the path is configured with one.
    fn stream_for(
        &self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<Arc<Stream>, Refusal>> + Send + 'static {
        // Only the server is held across the wait (the connection state is not `Sync`).
        stream_for(self.server.clone(), path.to_owned())
    }
}

async fn stream_for(server: Arc<Rtsp>, path: String) -> Result<Arc<Stream>, Refusal> {
    let path = path.as_str();
    let ready = server
        .hub
        .registry()
        .lookup_ready(path)
        .filter(|s| s.is_ready())
        .cloned();
    let not_found = || Refusal::new(StatusCode::NOT_FOUND, format!("no stream on path {path:?}"));
    if let Some(s) = ready {
        let pulls = server.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pulls.get(path) {
            p.touch();
        }
        return Ok(s);
    }
    let pull = server.ensure_pull(path).ok_or_else(not_found)?;
    let timeout = server
        .config()
        .resolve_path(path)
        .map_or(Duration::from_secs(10), |r| {
            r.config.source_on_demand_start_timeout
        });
    pull.wait_ready(timeout).await.ok_or_else(not_found)
}

impl Conn {
    /// The SDP of `path` and, for on-demand media whose provider gives the URL's query
    /// a path of its own (a recording's `?start=&end=` window), that path.
    async fn describe(
        &mut self,
        path: &str,
        query: Option<&str>,
    ) -> Result<(Bytes, Option<String>), Refusal> {
        let (conn, peer) = (self.handle.id, self.handle.peer);
        let viewed =
            match query {
                Some(q) => self.server.hub.on_demand_view(path, q).map_err(|e| {
                    Refusal::new(StatusCode::BAD_REQUEST, format!("{path}?{q}: {e}"))
                })?,
                None => None,
            };
        let open_path = viewed.as_deref().unwrap_or(path);
        if let Some(media) = self.open_on_demand(open_path)? {
            info!(conn, %peer, path = %open_path, "describe (file)");
            return Ok((media.presentation().reader_sdp(1).into(), viewed));
        }
        let stream = self.stream_for(path).await?;
        info!(conn, %peer, %path, "describe");
        Ok((
            stream.presentation().reader_sdp(stream.version()).into(),
            None,
        ))
    }

    /// Takes `path` for this connection's publisher, replacing another connection's
    /// when the configuration allows it.
    fn announce(&mut self, path: &str, sdp: &[u8]) -> Result<(), Refusal> {
        if crate::config::is_reserved_path(path) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("{path:?} starts with a name the HTTP listener reserves"),
            ));
        }
        if self.server.hub.serves_on_demand(path) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this path serves stored files; publish elsewhere",
            ));
        }
        let presentation = Presentation::from_sdp(sdp)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let server = self.server.clone();
        let stream = server.hub.create_stream(path, presentation);
        stream.set_source_kind(sluice_hub::SourceKind::RtspPublisher);
        stream.set_fanout_window(server.config().rtsp.fanout_window);
        let claim = if server.config().rtsp.override_publisher {
            Claim::Replace
        } else {
            Claim::Exclusive
        };
        let replaced = server
            .publish_path(
                Owner(self.handle.id),
                claim,
                &stream,
                "replaced by a new publisher",
            )
            .map_err(|e| Refusal::new(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE, e.to_string()))?;
        if replaced {
            info!(conn = self.handle.id, %path, "new publisher replaces the old one");
        }
        if let Some(prev) = self.announced.replace(stream.clone()) {
            if !Arc::ptr_eq(&prev, &stream) && !prev.is_ready() {
                server.end_path(&prev, sluice_hub::EndReason::SourceGone);
            }
        }
        let tracks = stream.presentation().tracks().len();
        info!(conn = self.handle.id, peer = %self.handle.peer, %path, tracks, "announce");
        Ok(())
    }

    /// The stream a SETUP for play adds a track of: the session's own, a stored file's
    /// new private stream, or the path's live (or pulled) one.
    async fn find_stream(
        &mut self,
        path: &str,
        session: Option<&str>,
    ) -> Result<StreamInfo, Refusal> {
        let own = session
            .and_then(|id| self.sessions.get(id))
            .map(|s| s.stream.clone())
            .filter(|s| s.path() == path);
        let on_demand = match own {
            Some(_) => None,
            None => self.open_on_demand(path)?,
        };
        let (stream, file) = match (own, on_demand) {
            (Some(s), _) => (s, None),
            (None, Some(media)) => {
                // A private stream, never published: one reader, at its own position.
                let stream = Stream::new(path.to_owned(), media.presentation().clone(), 1);
                ReaderGroup::of(&stream).set_gop_cache(None);
                stream.set_ready();
                let file = media.start(stream.clone());
                (stream, Some(file))
            }
            (None, None) => (self.stream_for(path).await?, None),
        };
        let tracks = stream.presentation().tracks().len();
        let info = StreamInfo {
            tracks,
            ssrc: (0..tracks)
                .map(|t| ReaderGroup::of(&stream).last_header(t).map(|h| h.ssrc))
                .collect(),
            seekable: file.is_some()
                || session
                    .and_then(|id| self.sessions.get(id))
                    .is_some_and(|s| s.file.is_some()),
        };
        self.found = Some((stream, file));
        Ok(info)
    }

    /// Commits a SETUP: creates the session within the server's limits, binds the
    /// track's transport (interleaved routes, UDP routes, the multicast group).
    fn commit_setup(&mut self, c: &Commit) -> Result<SetupGrant, Refusal> {
        let server = self.server.clone();
        let session = if c.new_session {
            // A player's stream stays found until the session exists: the connection
            // may ask again with the client's next offer.
            let stream = match c.role {
                Role::Recorder => self
                    .announced
                    .clone()
                    .filter(|s| s.path() == c.path && !s.is_ended()),
                Role::Player => self.found.as_ref().map(|(s, _)| s.clone()),
            };
            let stream = stream.ok_or_else(|| {
                Refusal::new(
                    StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                    "no stream for this SETUP",
                )
            })?;
            let limits = &server.config().limits;
            if server.session_count() >= limits.max_sessions {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("session limit ({}) reached", limits.max_sessions),
                ));
            }
            if c.role == Role::Player
                && server.readers_on_path(stream.path()) >= limits.max_readers_per_path
            {
                return Err(Refusal::new(
                    StatusCode::NOT_ENOUGH_BANDWIDTH,
                    format!(
                        "reader limit ({}) of path {:?} reached",
                        limits.max_readers_per_path,
                        stream.path()
                    ),
                ));
            }
            let file = match c.role {
                Role::Player => self.found.take().and_then(|(_, file)| file),
                Role::Recorder => None,
            };
            let s = Session::new(
                c.session.clone(),
                self.handle.clone(),
                c.role,
                stream.clone(),
                file,
                Instant::now(),
            )
            .by((c.principal != sluice_rtsp::server::ANYONE).then(|| c.principal.clone()));
            if c.role == Role::Recorder {
                let ingest = Arc::new(Ingest::new(stream, rand::random(), server.epoch));
                ingest.report_on_stream();
                s.lock().ingest = Some(ingest);
            }
            Arc::new(s)
        } else {
            self.found = None;
            self.sessions
                .get(&c.session)
                .cloned()
                .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"))?
        };
        let grant = self.bind_transport(&session, c);
        if grant.is_err() && c.new_session {
            // Kept for the client's next offer, which the connection may ask next.
            if let (Role::Player, Ok(s)) = (c.role, Arc::try_unwrap(session)) {
                self.found = Some((s.stream, s.file));
            }
            return grant;
        }
        if c.new_session {
            server
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(session.id.clone(), session.clone());
            self.sessions.insert(session.id.clone(), session.clone());
        }
        let (kind, path) = match c.role {
            Role::Player => ("setup (play)", session.stream.path()),
            Role::Recorder => ("setup (publish)", session.stream.path()),
        };
        let transport = c.transport.reply(None, c.role == Role::Recorder);
        info!(session = %session.id, conn = self.handle.id, peer = %self.handle.peer, %path, track = c.track, %transport, "{kind}");
        grant
    }

    /// Binds one track's transport to the server's routes and records it.
    fn bind_transport(
        &mut self,
        session: &Arc<Session>,
        c: &Commit,
    ) -> Result<SetupGrant, Refusal> {
        let mut grant = SetupGrant::default();
        let mut transport = c.transport;
        let ingest = session.lock().ingest.clone();
        match (&mut transport, &ingest) {
            (TrackTransport::Tcp { rtp, rtcp }, _) => {
                // A repeated SETUP of a track replaces its channels.
                self.routes
                    .retain(|_, r| !(r.session == c.session && r.track == c.track));
                let (rtp_to, rtcp_to) = match &ingest {
                    Some(i) => (Route::IngestRtp(i.clone()), Route::IngestRtcp(i.clone())),
                    None => (Route::ReaderRtp, Route::ReaderRtcp(Arc::downgrade(session))),
                };
                for (ch, to) in [(*rtp, rtp_to), (*rtcp, rtcp_to)] {
                    let route = ChannelRoute {
                        session: c.session.clone(),
                        track: c.track,
                        to,
                    };
                    self.routes.insert(ch, route);
                }
            }
            (TrackTransport::Udp { rtp, rtcp, .. }, Some(ingest)) => {
                let udp = self.server.udp.as_ref().ok_or_else(no_udp)?;
                if !udp.add_ingest(*rtp, *rtcp, ingest.clone(), c.track) {
                    return Err(Refusal::new(
                        StatusCode::UNSUPPORTED_TRANSPORT,
                        format!("client ports {}-{} already in use", rtp.port(), rtcp.port()),
                    ));
                }
            }
            (TrackTransport::Udp { rtcp, .. }, None) => {
                let udp = self.server.udp.as_ref().ok_or_else(no_udp)?;
                udp.add_reader(*rtcp, session, c.track);
            }
            (TrackTransport::Multicast { group, .. }, _) => {
                let m = self.server.multicast.as_ref().ok_or_else(|| {
                    Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, "multicast is off")
                })?;
                if group.is_none() {
                    let g = m.acquire(session.stream.path()).map_err(|e| {
                        Refusal::new(StatusCode::NOT_ENOUGH_BANDWIDTH, e.to_string())
                    })?;
                    session.lock().multicast_group = Some(g);
                    *group = Some(IpAddr::V4(g));
                    grant.multicast_group = Some(IpAddr::V4(g));
                }
            }
        }
        if let Some(slot) = session.lock().transports.get_mut(c.track) {
            *slot = Some(transport);
        }
        Ok(grant)
    }

    /// Starts (or reports) a session's media: a stored file seeks and scales, a live
    /// reader subscribes; the answer says where each track starts.
    fn play(
        &mut self,
        id: &str,
        range: Option<Range>,
        scale: Option<Scale>,
        replay: ReplayOptions,
        start: bool,
    ) -> Result<PlayGrant, Refusal> {
        let session = self
            .sessions
            .get(id)
            .cloned()
            .ok_or_else(|| Refusal::new(StatusCode::SESSION_NOT_FOUND, "session ended"))?;
        let path = session.stream.path();
        if let Some(file) = &session.file {
            let secs = |t: Option<NptTime>| match t {
                Some(NptTime::Seconds(s)) => Some(s),
                _ => None,
            };
            let (from, to) = match (range, replay.clock) {
                (_, Some(clock)) => (
                    clock.start.map(|t| Position::Clock(t.0)),
                    clock.end.map(|t| Position::Clock(t.0)),
                ),
                (Some(Range::Npt { start, end }), None) => {
                    (secs(start).map(Position::Npt), secs(end).map(Position::Npt))
                }
                _ => (None, None),
            };
            let request = PlayRequest {
                start: from,
                end: to,
                scale: scale.map_or(1.0, |s| s.0),
                speed: replay.speed.unwrap_or(1.0),
                rate_control: replay.rate_control,
                frames: match replay.frames {
                    Frames::All => FrameFilter::All,
                    Frames::Predicted => FrameFilter::Predicted,
                    Frames::Intra(ms) => FrameFilter::Intra(ms),
                },
                immediate: replay.immediate,
                cseq: replay.cseq,
                onvif: replay.onvif
                    || replay.clock.is_some()
                    || replay.frames != Frames::All
                    || !replay.rate_control
                    || replay.speed.is_some()
                    || replay.immediate,
            };
            if start {
                self.start_playing(&session);
            }
            let now = Instant::now();
            let started = match file.play(&request, now) {
                Ok(s) => s,
                Err(e) => {
                    // Undo: nothing plays.
                    file.pause();
                    if let Some(p) = session.lock().playing.take() {
                        ReaderGroup::of(&session.stream).remove(p.sink_id);
                    }
                    self.open_after_write.clear();
                    let status = match e {
                        PlayError::InvalidRange(_) => StatusCode::INVALID_RANGE,
                        PlayError::UnsupportedScale(_) => StatusCode::HEADER_FIELD_NOT_VALID,
                        PlayError::Media(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    return Err(Refusal::new(status, e.to_string()));
                }
            };
            let end = if started.scale < 0.0 {
                started.end.unwrap_or(0.0)
            } else {
                started.end.unwrap_or_else(|| file.duration())
            };
            info!(session = %id, conn = self.handle.id, %path, start = started.start, scale = started.scale, "play (file)");
            self.server.announce_start(&session);
            // A clock range is answered with one (the actual start), an npt range with npt.
            let clock = replay.clock.and_then(|_| {
                Some(ClockRange {
                    start: Some(ClockTime(file.wall_clock(started.start)?)),
                    end: file.wall_clock(end).map(ClockTime),
                })
            });
            let range = match clock {
                Some(c) => Range::Other(c.to_string()),
                None => Range::Npt {
                    start: Some(NptTime::Seconds(started.start)),
                    end: Some(NptTime::Seconds(end)),
                },
            };
            return Ok(PlayGrant {
                range: Some(range),
                scale: Some(Scale(started.scale)),
                starts: started
                    .tracks
                    .iter()
                    .map(|t| {
                        Some(TrackStart {
                            seq: t.seq,
                            rtptime: t.rtptime,
                        })
                    })
                    .collect(),
            });
        }
        if session.stream.is_ended() {
            return Err(Refusal::new(StatusCode::NOT_FOUND, "stream ended"));
        }
        // The last header before the reader's first packet, per track: exact for a new
        // subscription (taken atomically with it), the current one otherwise.
        let starts = match start.then(|| self.start_playing(&session)).flatten() {
            Some(starts) => starts,
            None => (0..session.stream.presentation().tracks().len())
                .map(|t| {
                    ReaderGroup::of(&session.stream)
                        .last_header(t)
                        .map(|h| TrackStart {
                            seq: h.sequence.wrapping_add(1),
                            rtptime: h.timestamp,
                        })
                })
                .collect(),
        };
        info!(session = %id, conn = self.handle.id, %path, "play");
        self.server.announce_start(&session);
        Ok(PlayGrant {
            range: Some(Range::Npt {
                start: Some(NptTime::Now),
                end: None,
            }),
            scale: None,
            starts,
        })
    }

    /// Subscribes a session's reader with a gated sink, opened once the PLAY answer is
    /// written; returns where each track starts.
    pub(crate) fn start_playing(
        &mut self,
        session: &Arc<Session>,
    ) -> Option<Vec<Option<TrackStart>>> {
        let cfg = self.server.config();
        let stream = session.stream.clone();
        let mut inner = session.lock();
        if inner.playing.is_some() {
            return None;
        }
        let mut multicast = false;
        let mut udp = false;
        let targets: Vec<Target> = inner
            .transports
            .iter()
            .map(|t| match t {
                Some(TrackTransport::Udp { rtp, rtcp, .. }) => {
                    udp = true;
                    Target::Udp {
                        rtp: *rtp,
                        rtcp: *rtcp,
                    }
                }
                Some(TrackTransport::Tcp { rtp, rtcp }) => Target::Tcp {
                    rtp: *rtp,
                    rtcp: *rtcp,
                },
                Some(TrackTransport::Multicast { .. }) => {
                    multicast = true;
                    Target::None
                }
                None => Target::None,
            })
            .collect();
        let outbox = match (&self.server.udp, udp) {
            (Some(hub), true) => Outbox::Udp {
                rtp: hub.rtp.clone(),
                rtcp: hub.rtcp.clone(),
                gso: hub.gso,
            },
            _ => Outbox::Tcp(self.handle.media.clone()),
        };
        let conn = self.handle.clone();
        let sink = Arc::new(
            ReaderSink::new(
                session.id.clone(),
                targets,
                outbox,
                cfg.rtsp.slow_reader_timeout,
                Arc::new(move |why| conn.close(why)),
            )
            .recording_latency(self.server.egress_latency().clone())
            .serving(if multicast {
                "multicast"
            } else if udp {
                "udp"
            } else {
                "tcp"
            }),
        );
        let (sink_id, starts) = ReaderGroup::of(&stream).subscribe(sink.clone());
        inner.playing = Some(Playing {
            sink_id,
            sink: sink.clone(),
        });
        if multicast && !inner.multicast_member {
            if let Some(m) = &self.server.multicast {
                m.join(stream.path(), &stream, RTCP_INTERVAL);
                inner.multicast_member = true;
            }
        }
        self.open_after_write.push(sink);
        Some(
            starts
                .into_iter()
                .map(|s| {
                    s.map(|s| TrackStart {
                        seq: s.seq,
                        rtptime: s.rtptime,
                    })
                })
                .collect(),
        )
    }
}

fn no_udp() -> Refusal {
    Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, "UDP is off")
}
