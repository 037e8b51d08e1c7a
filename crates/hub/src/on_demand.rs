//! On-demand media: a path whose media is opened for one session and played at that
//! session's own position, pace and Scale (stored files under `vod/`), instead of a live
//! stream shared by every reader.
//!
//! A module that stores media (the file module) provides it; a module that serves readers
//! (the RTSP module) opens it through [`crate::Hub::open_on_demand`], gets a
//! [`OnDemandMedia`] to DESCRIBE, and starts it into a private [`Stream`] for the session,
//! which its controls ([`Playback`]) then seek, pause and scale. Neither module names the
//! other.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::presentation::Presentation;
use crate::stream::Stream;

pub use sluice_media::player::{PlayError, PlayStart, TrackStart};

/// Why on-demand media could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No such media (including every name that would escape the provider's store).
    #[error("no such file")]
    NotFound,
    /// A container or codec Sluice does not serve.
    #[error("unsupported media: {0}")]
    Unsupported(String),
    /// The media is damaged.
    #[error("damaged media: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("cannot read media: {0}")]
    Io(String),
    /// The request names the media in a way the provider refuses (a bad time window).
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// A provider of on-demand media for some paths.
pub trait OnDemand: Send + Sync {
    /// Whether `path` is one of this provider's (without opening anything).
    fn serves(&self, path: &str) -> bool;

    /// Opens `path` for one session: `Ok(None)` when the path is not this provider's,
    /// an error (naming the file in its message) when it is but cannot be played.
    fn open(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError>;

    /// The path that serves `path` viewed through a URL query (`?start=…&end=…` of a
    /// recording), for readers that cannot say it any other way: `Ok(None)` when the
    /// path is not this provider's or the query means nothing to it, an error (a
    /// malformed query) when it is. Clients set tracks up below the returned path.
    fn view(&self, path: &str, query: &str) -> Result<Option<String>, OpenError> {
        let _ = (path, query);
        Ok(None)
    }
}

/// Opened on-demand media, not yet playing.
pub trait OnDemandMedia: Send {
    /// Its tracks and SDP, with its duration.
    fn presentation(&self) -> &Presentation;

    /// Starts it, paused, into `stream` (private to one session): [`Playback::play`]
    /// sets it going. Dropping the returned playback stops it.
    fn start(self: Box<Self>, stream: Arc<Stream>) -> Box<dyn Playback>;
}

/// A position in a PLAY request: seconds from the start of the media (`npt`), or a wall
/// clock time (`clock`, recordings only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Position {
    /// Seconds from the start.
    Npt(f64),
    /// An absolute time (UTC).
    Clock(SystemTime),
}

/// Which frames a PLAY asks for (ONVIF `Frames`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FrameFilter {
    /// Every frame.
    #[default]
    All,
    /// No non-reference (B) frames.
    Predicted,
    /// Video keyframes only; with an interval, at most one per that many milliseconds.
    Intra(Option<u32>),
}

/// What a PLAY asks of on-demand media: a struct rather than positional arguments, so
/// that a new request header is a new field, not a new signature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlayRequest {
    /// Where to start (None: where it paused).
    pub start: Option<Position>,
    /// Where to stop (None: the end). Before `start` with a negative `scale`.
    pub end: Option<Position>,
    /// `Scale`: the presentation rate, negative backwards.
    pub scale: f64,
    /// `Speed`: the delivery rate (timestamps as recorded), positive.
    pub speed: f64,
    /// `Rate-Control: no` sends as fast as the transport takes it.
    pub rate_control: bool,
    /// `Frames`.
    pub frames: FrameFilter,
    /// `Immediate: yes` (a new PLAY always replaces the current one here).
    pub immediate: bool,
    /// The PLAY's CSeq (ONVIF replay puts its low byte into each frame's first packet).
    pub cseq: u32,
    /// The client asked for ONVIF replay (`Require: onvif-replay`, a clock range or
    /// another replay header): providers that can add the ONVIF RTP header extension do.
    pub onvif: bool,
}

impl PlayRequest {
    /// A plain npt request: from `start` to `end` at `scale`, every frame, paced.
    pub fn npt(start: Option<f64>, end: Option<f64>, scale: f64) -> PlayRequest {
        PlayRequest {
            start: start.map(Position::Npt),
            end: end.map(Position::Npt),
            scale,
            speed: 1.0,
            rate_control: true,
            frames: FrameFilter::All,
            immediate: false,
            cseq: 0,
            onvif: false,
        }
    }
}

/// The controls of on-demand media playing into a session's stream.
pub trait Playback: Send + Sync + std::fmt::Debug {
    /// The media's duration in seconds.
    fn duration(&self) -> f64;

    /// Starts or seeks as `request` says. Media without a wall clock refuses clock
    /// positions ([`PlayError::InvalidRange`]).
    fn play(&self, request: &PlayRequest, now: Instant) -> Result<PlayStart, PlayError>;

    /// Pauses; returns the position (seconds) a PLAY without a start resumes at.
    fn pause(&self) -> f64;

    /// The current media position in seconds.
    fn position(&self) -> f64;

    /// The wall clock time of media position `npt`, for media that has one (recordings),
    /// so that a PLAY with a clock range is answered with one.
    fn wall_clock(&self, npt: f64) -> Option<SystemTime> {
        let _ = npt;
        None
    }
}
