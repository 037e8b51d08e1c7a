//! The list of live paths a visitor may read, as `GET /` with `Accept: application/json`
//! answers it (the list page polls it).

use serde::Serialize;
use sluice_hub::Hub;

/// One track of a live path.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrackSummary {
    /// `video`, `audio`, `application`…
    pub media: String,
    /// The encoding name (`H264`, `opus`, `MPEG4-GENERIC`…), or `PT<n>` for a static
    /// payload type without one.
    pub codec: String,
}

/// A live path as the list shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LivePath {
    /// The path's name (may contain `/`).
    pub name: String,
    /// What feeds it (`rtsp_publisher`, `pull`, `file`, `demo`, …).
    pub source: String,
    /// Its tracks.
    pub tracks: Vec<TrackSummary>,
    /// Readers now, over all protocols.
    pub readers: u64,
    /// The player page, relative to the server (`/cams/front/`).
    pub page: String,
    /// The WHEP endpoint, relative to the server.
    pub whep: String,
    /// The HLS playlist, relative to the server.
    pub hls: String,
    /// Per web delivery protocol: whether it plays the path and what it leaves out.
    pub delivery: Vec<Delivery>,
}

/// What one web delivery protocol makes of a path, as the list shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Delivery {
    /// `hls` or `webrtc`.
    pub protocol: String,
    /// Whether a player can be sent the path over it.
    pub playable: bool,
    /// What it leaves out and why, one sentence each.
    pub notes: Vec<String>,
    /// One line for people: `HLS: G.711 µ-law (PCMU) audio cannot be carried`.
    pub summary: String,
}

/// What `GET /` answers as JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathList {
    /// The RTSP listener's port (the page builds `rtsp://<host>:<port>/<name>`).
    pub rtsp_port: u16,
    /// The live (ready) paths the visitor may read, by name.
    pub paths: Vec<LivePath>,
}

/// A path name as it appears in a URL: each segment percent-encoded, `/` kept.
pub(crate) fn url_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, seg) in name.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The hub's ready streams whose path `may_read` accepts, by name.
pub(crate) fn readable(hub: &Hub, rtsp_port: u16, may_read: impl Fn(&str) -> bool) -> PathList {
    let mut paths: Vec<LivePath> = hub
        .streams()
        .iter()
        .filter(|s| s.is_ready() && may_read(s.path()))
        .map(|s| {
            let stats = s.stats();
            let url = url_path(s.path());
            LivePath {
                name: s.path().to_owned(),
                source: s.source_kind().as_str().to_owned(),
                tracks: s
                    .presentation()
                    .tracks()
                    .iter()
                    .map(|t| TrackSummary {
                        media: t.media.clone(),
                        codec: if t.encoding.is_empty() {
                            format!("PT{}", t.payload_type)
                        } else {
                            t.encoding.clone()
                        },
                    })
                    .collect(),
                readers: stats.sinks.readers.iter().map(|r| r.count).sum(),
                page: format!("/{url}/"),
                whep: format!("/{url}/whep"),
                hls: format!("/{url}/index.m3u8"),
                delivery: s
                    .delivery()
                    .iter()
                    .map(|n| Delivery {
                        protocol: n.protocol.to_owned(),
                        playable: n.playable,
                        notes: n.notes.clone(),
                        summary: n.summary(),
                    })
                    .collect(),
            }
        })
        .collect();
    paths.sort_by(|a, b| a.name.cmp(&b.name));
    PathList { rtsp_port, paths }
}
