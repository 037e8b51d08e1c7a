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
use std::time::Instant;

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
}

/// A provider of on-demand media for some paths.
pub trait OnDemand: Send + Sync {
    /// Whether `path` is one of this provider's (without opening anything).
    fn serves(&self, path: &str) -> bool;

    /// Opens `path` for one session: `Ok(None)` when the path is not this provider's,
    /// an error (naming the file in its message) when it is but cannot be played.
    fn open(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError>;
}

/// Opened on-demand media, not yet playing.
pub trait OnDemandMedia: Send {
    /// Its tracks and SDP, with its duration.
    fn presentation(&self) -> &Presentation;

    /// Starts it, paused, into `stream` (private to one session): [`Playback::play`]
    /// sets it going. Dropping the returned playback stops it.
    fn start(self: Box<Self>, stream: Arc<Stream>) -> Box<dyn Playback>;
}

/// The controls of on-demand media playing into a session's stream.
pub trait Playback: Send + Sync + std::fmt::Debug {
    /// The media's duration in seconds.
    fn duration(&self) -> f64;

    /// Starts or seeks: from `start` (None: where it paused) to `end`, at `scale`.
    fn play(
        &self,
        start: Option<f64>,
        end: Option<f64>,
        scale: f64,
        now: Instant,
    ) -> Result<PlayStart, PlayError>;

    /// Pauses; returns the position (seconds) a PLAY without a start resumes at.
    fn pause(&self) -> f64;

    /// The current media position in seconds.
    fn position(&self) -> f64;
}
