//! `[webrtc]`: WebRTC delivery (WHEP) and ingest (WHIP) on the HTTP listener, with all
//! peers' media on one UDP port.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::ConfigError;

/// What a WHEP session does with a source whose H.264 has B-frames (browsers' WebRTC
/// decoders play frames in decoding order, so reordered frames judder or stall).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BFramePolicy {
    /// Answer 406 with the reason, before any media flows, so a player falls back to HLS.
    Refuse,
    /// Drop the non-reference B-frames (the rest still decodes); a source whose B-frames
    /// are references (B-pyramid) is refused as under `refuse`.
    Drop,
}

/// `[webrtc]`: WHEP and WHIP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebrtcConfig {
    /// Serve WHEP and WHIP at all (needs `[http]`).
    pub enabled: bool,
    /// The one UDP port every peer's ICE, DTLS and SRTP use (0: the OS picks one, logged
    /// at start).
    pub udp_port: u16,
    /// Addresses given to peers as ICE candidates. Empty (the default): every interface
    /// address, loopback included, so a server with no configuration works on loopback.
    pub advertise: Vec<IpAddr>,
    /// B-frame policy for every path without an entry in `b_frames_paths`.
    pub b_frames: BFramePolicy,
    /// Per-path B-frame policy, by exact path name (`"cams/front" = "drop"`).
    pub b_frames_paths: BTreeMap<String, BFramePolicy>,
    /// Frames queued per viewer before it loses frames (counted; the viewer then skips to
    /// the next keyframe).
    pub peer_queue: usize,
    /// Most WebRTC sessions (viewers and publishers) at once; more get 503.
    pub max_sessions: usize,
}

impl Default for WebrtcConfig {
    fn default() -> Self {
        WebrtcConfig {
            enabled: true,
            udp_port: 8189,
            advertise: Vec::new(),
            b_frames: BFramePolicy::Refuse,
            b_frames_paths: BTreeMap::new(),
            peer_queue: 256,
            max_sessions: 2_000,
        }
    }
}

impl WebrtcConfig {
    /// The B-frame policy of `path`.
    pub fn b_frames_for(&self, path: &str) -> BFramePolicy {
        self.b_frames_paths
            .get(path)
            .copied()
            .unwrap_or(self.b_frames)
    }

    /// Checks `[webrtc]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(8..=65_536).contains(&self.peer_queue) {
            return bad(format!(
                "webrtc.peer_queue must be within 8..=65536, got {}",
                self.peer_queue
            ));
        }
        if self.max_sessions == 0 {
            return bad("webrtc.max_sessions must be at least 1".into());
        }
        for ip in &self.advertise {
            if ip.is_unspecified() || ip.is_multicast() {
                return bad(format!(
                    "webrtc.advertise: {ip} is not an address peers can reach"
                ));
            }
        }
        for path in self.b_frames_paths.keys() {
            if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
                return bad(format!(
                    "webrtc.b_frames_paths: {path:?} is not a path name (no leading or trailing /)"
                ));
            }
        }
        Ok(())
    }
}
