//! The demuxer trait every container implements.

use std::time::Duration;

use crate::error::MediaError;
use crate::media::{MediaInfo, Sample};

/// A demuxer over a seekable byte source.
pub trait Demuxer: Send {
    /// What DESCRIBE needs: duration and supported tracks.
    fn info(&self) -> &MediaInfo;

    /// Positions every track so the next samples start at the video keyframe at or before `t`
    /// (audio-only files: the sample at or before t); returns the actual start time.
    fn seek(&mut self, t: Duration) -> Result<Duration, MediaError>;

    /// The next sample in decode-time order across all tracks (interleaved by dts converted to
    /// seconds); None at end of file.
    fn next_sample(&mut self) -> Result<Option<Sample>, MediaError>;

    /// Times of the keyframes of the first video track, ascending (empty for audio-only). For
    /// Scale/reverse playback.
    fn keyframe_times(&self) -> &[Duration];

    /// Tracks present in the file but skipped (unsupported codec, encrypted, empty), one
    /// human-readable line each, for logging.
    fn skipped_tracks(&self) -> &[String] {
        &[]
    }
}
