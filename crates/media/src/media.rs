//! The public description types: tracks, files and samples.

use std::time::Duration;

use crate::params::CodecParams;

/// One track of a file.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    /// Index of the track in [`MediaInfo::tracks`] (and [`Sample::track`]).
    pub index: usize,
    /// Codec and configuration.
    pub params: CodecParams,
    /// Ticks per second of this track's dts/pts.
    pub timescale: u32,
    /// Presentation duration of the track.
    pub duration: Duration,
}

impl TrackInfo {
    /// True for video codecs.
    pub fn is_video(&self) -> bool {
        self.params.codec.is_video()
    }
}

/// What DESCRIBE needs.
#[derive(Debug, Clone)]
pub struct MediaInfo {
    /// Duration of the whole presentation.
    pub duration: Duration,
    /// The supported tracks, in file order.
    pub tracks: Vec<TrackInfo>,
}

/// One coded sample (access unit). H.264/H.265 data stays length-prefixed as in the container; AAC raw frames; etc.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Index of the track in [`MediaInfo::tracks`].
    pub track: usize,
    /// Decode timestamp in track timescale units.
    pub dts: i64,
    /// Presentation timestamp in track timescale units, starting near 0.
    pub pts: i64,
    /// Duration in track timescale units.
    pub duration: u32,
    /// True for sync samples (random access points).
    pub keyframe: bool,
    /// The coded data.
    pub data: bytes::Bytes,
}

/// Converts `ticks` of a `timescale` clock to a duration, clamping negatives to zero.
pub(crate) fn ticks_to_duration(ticks: i64, timescale: u32) -> Duration {
    if ticks <= 0 || timescale == 0 {
        return Duration::ZERO;
    }
    let nanos = i128::from(ticks) * 1_000_000_000 / i128::from(timescale);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
