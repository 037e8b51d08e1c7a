//! `[hls]`: Low-Latency HLS at `http://HOST:PORT/<path>/index.m3u8`.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// `[hls]`: HLS and LL-HLS packaging of live paths (fMP4, audio and video in one
/// rendition). A path's packager starts at the first request and stops `idle_timeout`
/// after the last one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Serve HLS at all.
    pub enabled: bool,
    /// About how long a part is (rounded to whole frames; 20 ms to 2 s).
    #[serde(deserialize_with = "super::de_duration")]
    pub part_duration: Duration,
    /// A segment is cut at the first keyframe at least this long after its start (at least
    /// `part_duration`, at most 30 s).
    #[serde(deserialize_with = "super::de_duration")]
    pub segment_duration: Duration,
    /// Complete segments kept in the playlist and in memory (2 to 100).
    pub segment_count: usize,
    /// A path's packager stops this long after the last request for it (at least 1 s).
    #[serde(deserialize_with = "super::de_duration")]
    pub idle_timeout: Duration,
    /// Also serve classic HLS with MPEG-TS segments at `/<path>/mpegts.m3u8` (H.264 and
    /// AAC paths only), for players without fMP4 support.
    pub mpegts: bool,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig {
            enabled: true,
            part_duration: Duration::from_millis(200),
            segment_duration: Duration::from_secs(1),
            segment_count: 7,
            idle_timeout: Duration::from_secs(30),
            mpegts: false,
        }
    }
}

impl HlsConfig {
    /// Checks the ranges the packager needs.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("hls: {m}")));
        if self.part_duration < Duration::from_millis(20)
            || self.part_duration > Duration::from_secs(2)
        {
            return bad("part_duration must be between 20ms and 2s");
        }
        if self.segment_duration < self.part_duration
            || self.segment_duration > Duration::from_secs(30)
        {
            return bad("segment_duration must be at least part_duration and at most 30s");
        }
        if !(2..=100).contains(&self.segment_count) {
            return bad("segment_count must be between 2 and 100");
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return bad("idle_timeout must be at least 1s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn hls_keys_are_read_and_checked() {
        let c = Config::from_toml(
            "[hls]\npart_duration = \"100ms\"\nsegment_duration = \"2s\"\nsegment_count = 9\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.hls.segment_count, 9);
        assert_eq!(c.hls.part_duration.as_millis(), 100);
        for bad in [
            "[hls]\npart_duration = \"5ms\"\n",
            "[hls]\nsegment_duration = \"100ms\"\n",
            "[hls]\nsegment_count = 1\n",
            "[hls]\nidle_timeout = \"0s\"\n",
            "[hls]\nmpeg_ts = true\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }
}
