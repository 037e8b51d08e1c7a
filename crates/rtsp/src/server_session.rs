//! Server-side RTSP session state (RFC 2326 Appendix A.1), sans-IO.
//!
//! A session is either a *player* (a reader: SETUP then PLAY) or a *recorder* (a
//! publisher: ANNOUNCE, SETUP with `mode=record`, RECORD). This machine decides which
//! method is valid in which state, tracks which tracks were set up, and keeps the session
//! timeout from the time values it is handed; it never reads a clock or touches a socket.
//!
//! [`crate::server::ServerConnection`] keeps one per session; `sluice-server`'s handler
//! still uses it directly until its glue drives the connection instead.

use std::time::{Duration, Instant};

use crate::StatusCode;

/// What a session does with media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives media from the server (PLAY).
    Player,
    /// Sends media to the server (RECORD).
    Recorder,
}

/// RFC 2326 server states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// At least one track set up, not streaming.
    Ready,
    /// Media flows to the client.
    Playing,
    /// Media flows from the client.
    Recording,
}

/// What a PLAY, PAUSE or RECORD did to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Streaming started (Ready → Playing or Ready → Recording).
    Started,
    /// Already streaming; nothing to change.
    Unchanged,
    /// Streaming stopped (Playing/Recording → Ready).
    Paused,
}

/// Largest track index a session may set up.
pub const MAX_TRACKS: usize = 32;

/// The state of one server-side RTSP session.
#[derive(Debug, Clone)]
pub struct ServerSession {
    role: Role,
    state: State,
    tracks: u32,
    timeout: Duration,
    last_activity: Instant,
}

impl ServerSession {
    /// A session created by its first SETUP of `track`, at `now`.
    pub fn new(
        role: Role,
        track: usize,
        timeout: Duration,
        now: Instant,
    ) -> Result<Self, StatusCode> {
        if track >= MAX_TRACKS {
            return Err(StatusCode::NOT_FOUND);
        }
        Ok(ServerSession {
            role,
            state: State::Ready,
            tracks: 1 << track,
            timeout,
            last_activity: now,
        })
    }

    /// Whether this session plays or records.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The session timeout advertised in the Session header.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether `track` has been set up.
    pub fn has_track(&self, track: usize) -> bool {
        track < MAX_TRACKS && self.tracks & (1 << track) != 0
    }

    /// Indices of the tracks set up, ascending.
    pub fn tracks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_TRACKS).filter(|t| self.has_track(*t))
    }

    /// A further SETUP of `track` in this session. Adding tracks while streaming is
    /// refused with 455, and a role change (record vs play) with 459/455.
    pub fn handle_setup(
        &mut self,
        role: Role,
        track: usize,
        now: Instant,
    ) -> Result<(), StatusCode> {
        if role != self.role {
            return Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        if track >= MAX_TRACKS {
            return Err(StatusCode::NOT_FOUND);
        }
        let already = self.has_track(track);
        if self.state != State::Ready && !already {
            return Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        self.tracks |= 1 << track;
        self.last_activity = now;
        Ok(())
    }

    /// TEARDOWN of one track: forgets it; returns whether it had been set up.
    pub fn remove_track(&mut self, track: usize) -> bool {
        let had = self.has_track(track);
        if had {
            self.tracks &= !(1 << track);
        }
        had
    }

    /// PLAY: valid for players in Ready or Playing.
    pub fn handle_play(&mut self, now: Instant) -> Result<Transition, StatusCode> {
        self.start(Role::Player, State::Playing, now)
    }

    /// RECORD: valid for recorders in Ready or Recording.
    pub fn handle_record(&mut self, now: Instant) -> Result<Transition, StatusCode> {
        self.start(Role::Recorder, State::Recording, now)
    }

    fn start(&mut self, role: Role, to: State, now: Instant) -> Result<Transition, StatusCode> {
        if self.role != role {
            return Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        self.last_activity = now;
        if self.state == to {
            return Ok(Transition::Unchanged);
        }
        self.state = to;
        Ok(Transition::Started)
    }

    /// PAUSE: stops streaming; valid in every state (a PAUSE in Ready changes nothing).
    pub fn handle_pause(&mut self, now: Instant) -> Transition {
        self.last_activity = now;
        if self.state == State::Ready {
            return Transition::Unchanged;
        }
        self.state = State::Ready;
        Transition::Paused
    }

    /// Any sign of life: a request naming the session, or RTCP (or a publisher's RTP).
    pub fn handle_activity(&mut self, now: Instant) {
        if now > self.last_activity {
            self.last_activity = now;
        }
    }

    /// When the session expires unless something refreshes it first.
    pub fn poll_timeout(&self) -> Instant {
        self.last_activity + self.timeout
    }

    /// Whether the session has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.poll_timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn player_lifecycle() {
        let now = t0();
        let mut s = ServerSession::new(Role::Player, 0, Duration::from_secs(60), now).unwrap();
        assert_eq!(s.state(), State::Ready);
        s.handle_setup(Role::Player, 1, now).unwrap();
        assert_eq!(s.tracks().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(s.handle_play(now), Ok(Transition::Started));
        assert_eq!(s.handle_play(now), Ok(Transition::Unchanged));
        assert_eq!(
            s.handle_record(now),
            Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE)
        );
        assert_eq!(
            s.handle_setup(Role::Player, 2, now),
            Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE)
        );
        assert_eq!(s.handle_pause(now), Transition::Paused);
        assert_eq!(s.state(), State::Ready);
        assert_eq!(s.handle_pause(now), Transition::Unchanged);
        assert_eq!(s.handle_play(now), Ok(Transition::Started));
    }

    #[test]
    fn recorder_lifecycle_and_role_mixing() {
        let now = t0();
        let mut s = ServerSession::new(Role::Recorder, 0, Duration::from_secs(60), now).unwrap();
        assert_eq!(
            s.handle_setup(Role::Player, 1, now),
            Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE)
        );
        assert_eq!(
            s.handle_play(now),
            Err(StatusCode::METHOD_NOT_VALID_IN_THIS_STATE)
        );
        assert_eq!(s.handle_record(now), Ok(Transition::Started));
        assert_eq!(s.state(), State::Recording);
    }

    #[test]
    fn timeout_follows_activity() {
        let now = t0();
        let mut s = ServerSession::new(Role::Player, 0, Duration::from_secs(3), now).unwrap();
        assert!(!s.is_expired(now + Duration::from_secs(2)));
        assert!(s.is_expired(now + Duration::from_secs(3)));
        s.handle_activity(now + Duration::from_secs(2));
        assert!(!s.is_expired(now + Duration::from_secs(4)));
        assert!(s.is_expired(now + Duration::from_secs(5)));
        // Time going backwards never shortens the deadline.
        s.handle_activity(now);
        assert_eq!(s.poll_timeout(), now + Duration::from_secs(5));
    }

    #[test]
    fn track_bounds() {
        let now = t0();
        assert_eq!(
            ServerSession::new(Role::Player, MAX_TRACKS, Duration::from_secs(1), now).unwrap_err(),
            StatusCode::NOT_FOUND
        );
        let mut s = ServerSession::new(Role::Player, 0, Duration::from_secs(1), now).unwrap();
        assert_eq!(
            s.handle_setup(Role::Player, 99, now),
            Err(StatusCode::NOT_FOUND)
        );
        assert!(!s.has_track(99));
    }
}
