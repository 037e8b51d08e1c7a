//! Paths and sessions as the hub sees them: `GET /v1/paths` (paginated), one path by
//! name (names may contain `/`), `GET /v1/sessions` (filtered by path and protocol), one
//! session, and `DELETE /v1/sessions/{id}` (kicking: the session ends and its client's
//! connection closes). Nothing here names another module: streams, their figures and the
//! session directories all come from the [`Hub`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_hub::{Hub, SessionInfo, StreamStats};
use utoipa::{IntoParams, ToSchema};

use super::problem::Problem;
use crate::config::Config;

/// Most items one page holds (`items_per_page` is capped here).
pub const MAX_ITEMS_PER_PAGE: usize = 1000;
/// Largest page number accepted.
pub const MAX_PAGE: u32 = 1_000_000;
/// Items per page when the client does not say.
pub const DEFAULT_ITEMS_PER_PAGE: usize = 100;

/// What the path and session routes read.
pub(crate) struct PathsState {
    pub(crate) hub: Arc<Hub>,
    /// Configured paths (exact names) with their source kind, listed while not live.
    pub(crate) configured: BTreeMap<String, &'static str>,
}

impl PathsState {
    pub(crate) fn new(hub: Arc<Hub>, config: &Config) -> PathsState {
        let mut configured: BTreeMap<String, &'static str> = config
            .paths
            .iter()
            .filter(|(name, _)| !name.starts_with('~'))
            .map(|(name, p)| {
                let kind = if p.source.starts_with("rtsp://") || p.source.starts_with("rtsps://") {
                    "pull"
                } else {
                    "file"
                };
                (name.clone(), kind)
            })
            .collect();
        if config.demo.enabled {
            configured.insert(config.demo.path.clone(), "demo");
        }
        PathsState { hub, configured }
    }
}

/// Pagination of a listing: pages count from 0.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// The page, from 0 to 1000000 (default 0; past the last page: no items).
    #[param(minimum = 0, maximum = 1000000)]
    page: Option<u32>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    items_per_page: Option<usize>,
}

impl Page {
    /// The page's items and the number of pages, or a 400 problem for a bad size.
    fn cut<T>(&self, items: Vec<T>) -> Result<Listing<T>, Problem> {
        let per = self.items_per_page.unwrap_or(DEFAULT_ITEMS_PER_PAGE);
        if per == 0 || per > MAX_ITEMS_PER_PAGE {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("items_per_page must be 1 to {MAX_ITEMS_PER_PAGE}"),
            ));
        }
        let page = self.page.unwrap_or(0);
        if page > MAX_PAGE {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("page must be 0 to {MAX_PAGE}"),
            ));
        }
        let page = page as usize;
        let item_count = items.len();
        let page_count = item_count.div_ceil(per);
        let items = items
            .into_iter()
            .skip(page.saturating_mul(per))
            .take(per)
            .collect();
        Ok(Listing {
            item_count,
            page_count,
            items,
        })
    }
}

/// A page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing<T> {
    /// Items over all pages.
    pub item_count: usize,
    /// Pages at this page size.
    pub page_count: usize,
    /// This page's items.
    pub items: Vec<T>,
}

/// One track of a path.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrackView {
    /// `video`, `audio`, `application`…
    pub media: String,
    /// The encoding name (`H264`, `MPEG4-GENERIC`…; empty for static payload types).
    pub codec: String,
    /// The RTP payload type.
    pub payload_type: u8,
    /// The RTP clock rate.
    pub clock_rate: u32,
    /// The `a=fmtp` parameters, if any.
    pub fmtp: Option<String>,
}

/// Readers of one protocol.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadersView {
    /// `rtsp`, …
    pub protocol: String,
    /// Readers over all transports.
    pub count: u64,
    /// By transport (`udp`, `tcp`, `multicast` for RTSP).
    pub transports: BTreeMap<String, u64>,
}

/// What one web delivery protocol makes of a live path.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `hls` or `webrtc`.
    pub protocol: String,
    /// Whether a player can be sent the path over it (some tracks may still be left out).
    pub playable: bool,
    /// What is left out or why it cannot play, one sentence each (`G.711 µ-law (PCMU)
    /// audio cannot be carried (left out)`, `AAC audio not carried: HLS plays it`); empty
    /// when everything is carried.
    pub notes: Vec<String>,
    /// The same in one line for people (`HLS: … ; …`).
    pub summary: String,
}

impl From<&sluice_hub::DeliveryNote> for DeliveryView {
    fn from(n: &sluice_hub::DeliveryNote) -> DeliveryView {
        DeliveryView {
            protocol: n.protocol.to_owned(),
            playable: n.playable,
            notes: n.notes.clone(),
            summary: n.summary(),
        }
    }
}

/// A path: its source, tracks, readers and traffic.
#[derive(Debug, Serialize, ToSchema)]
pub struct PathView {
    /// The path's name (may contain `/`).
    pub name: String,
    /// Whether readers may play it now.
    pub ready: bool,
    /// What feeds it: `rtsp_publisher`, `pull`, `file`, `demo`, `unknown`, or `none`
    /// while a configured path has no live stream.
    pub source: String,
    /// Its tracks (empty while not live).
    pub tracks: Vec<TrackView>,
    /// Readers now, by protocol.
    pub readers: Vec<ReadersView>,
    /// RTP packets received from the source.
    pub packets_in: u64,
    /// RTP payload bytes received from the source.
    pub bytes_in: u64,
    /// RTP packets sent to readers.
    pub packets_out: u64,
    /// RTP payload bytes sent to readers.
    pub bytes_out: u64,
    /// RTP packets lost between the source and the server (sources that report it).
    pub packets_lost: Option<u64>,
    /// The source's interarrival jitter in seconds (sources that report it).
    pub jitter_seconds: Option<f64>,
    /// Packets dropped for slow readers, by reason (`queue_full`, `send_buffer_full`).
    pub dropped: BTreeMap<String, u64>,
    /// Per web delivery protocol enabled (HLS, WebRTC): whether it can carry the path and
    /// what it leaves out, and why (empty while not live).
    pub delivery: Vec<DeliveryView>,
}

fn live_view(stream: &sluice_hub::Stream, stats: &StreamStats) -> PathView {
    let mut readers: Vec<ReadersView> = Vec::new();
    for r in &stats.sinks.readers {
        let view = match readers.iter_mut().find(|v| v.protocol == r.protocol) {
            Some(v) => v,
            None => {
                readers.push(ReadersView {
                    protocol: r.protocol.to_owned(),
                    count: 0,
                    transports: BTreeMap::new(),
                });
                let last = readers.len() - 1;
                &mut readers[last]
            }
        };
        view.count += r.count;
        if !r.transport.is_empty() {
            *view.transports.entry(r.transport.to_owned()).or_default() += r.count;
        }
    }
    PathView {
        name: stream.path().to_owned(),
        ready: stream.is_ready(),
        source: stream.source_kind().as_str().to_owned(),
        tracks: stream
            .presentation()
            .tracks()
            .iter()
            .map(|t| TrackView {
                media: t.media.clone(),
                codec: t.encoding.clone(),
                payload_type: t.payload_type,
                clock_rate: t.clock_rate,
                fmtp: t.fmtp.clone(),
            })
            .collect(),
        readers,
        packets_in: stats.packets_in,
        bytes_in: stats.bytes_in,
        packets_out: stats.sinks.packets_out,
        bytes_out: stats.sinks.bytes_out,
        packets_lost: stats.source.map(|s| s.packets_lost),
        jitter_seconds: stats.source.map(|s| s.jitter_seconds),
        dropped: stats
            .sinks
            .dropped
            .iter()
            .map(|(r, n)| ((*r).to_owned(), *n))
            .collect(),
        delivery: stream.delivery().iter().map(DeliveryView::from).collect(),
    }
}

fn idle_view(name: &str, source: &str) -> PathView {
    PathView {
        name: name.to_owned(),
        ready: false,
        source: source.to_owned(),
        tracks: Vec::new(),
        readers: Vec::new(),
        packets_in: 0,
        bytes_in: 0,
        packets_out: 0,
        bytes_out: 0,
        packets_lost: None,
        jitter_seconds: None,
        dropped: BTreeMap::new(),
        delivery: Vec::new(),
    }
}

/// Every known path, by name: the hub's streams, and configured paths with no live
/// stream (shown not ready, source `none`).
fn all_paths(s: &PathsState) -> Vec<PathView> {
    let mut views: BTreeMap<String, PathView> = s
        .hub
        .streams()
        .iter()
        .map(|st| (st.path().to_owned(), live_view(st, &st.stats())))
        .collect();
    for name in s.configured.keys() {
        views
            .entry(name.clone())
            .or_insert_with(|| idle_view(name, "none"));
    }
    views.into_values().collect()
}

/// Every known path, a page at a time, ordered by name.
#[utoipa::path(
    get,
    path = "/v1/paths",
    tag = "paths",
    params(Page),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of paths", body = Listing<PathView>),
        (status = 400, description = "Bad pagination", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn paths(State(s): State<Arc<PathsState>>, Query(page): Query<Page>) -> Response {
    match page.cut(all_paths(&s)) {
        Ok(listing) => Json(listing).into_response(),
        Err(p) => p.into_response(),
    }
}

/// One path by name; the name may contain `/` (`/v1/paths/cams/door`).
#[utoipa::path(
    get,
    path = "/v1/paths/{*name}",
    tag = "paths",
    params(("name" = String, Path, description = "The path's name, `/` included")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The path", body = PathView),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such path", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn path(State(s): State<Arc<PathsState>>, Path(name): Path<String>) -> Response {
    let name = name.trim_start_matches('/');
    let live = s.hub.registry().lookup(name).cloned();
    match live {
        Some(stream) => Json(live_view(&stream, &stream.stats())).into_response(),
        None if s.configured.contains_key(name) => Json(idle_view(name, "none")).into_response(),
        None => {
            Problem::new(StatusCode::NOT_FOUND, format!("no path named {name:?}")).into_response()
        }
    }
}

/// A live session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Its id (for RTSP, the Session header's).
    pub id: String,
    /// The path it reads or publishes.
    pub path: String,
    /// `rtsp`, …
    pub protocol: String,
    /// `udp`, `tcp`, `multicast`, or empty before a transport is set up.
    pub transport: String,
    /// `reader` or `publisher`.
    pub role: String,
    /// The client's address.
    pub peer: String,
    /// The user it authenticated as; absent when anonymous.
    pub user: Option<String>,
    /// When it started, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// RTP packets sent to it (reader) or received from it (publisher).
    pub packets: u64,
    /// RTP payload bytes of those packets.
    pub bytes: u64,
}

impl From<SessionInfo> for SessionView {
    fn from(s: SessionInfo) -> SessionView {
        SessionView {
            id: s.id,
            path: s.path,
            protocol: s.protocol.to_owned(),
            transport: s.transport.to_owned(),
            role: s.role.as_str().to_owned(),
            peer: s.peer.to_string(),
            user: s.user,
            created_unix: s.created_unix,
            packets: s.packets,
            bytes: s.bytes,
        }
    }
}

/// Filters of `GET /v1/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionFilter {
    /// Only sessions of this path.
    path: Option<String>,
    /// Only sessions of this protocol (`rtsp`, …).
    protocol: Option<String>,
}

/// Live sessions, filtered by path and protocol, a page at a time, ordered by creation
/// time then id.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(SessionFilter, Page),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of sessions", body = Listing<SessionView>),
        (status = 400, description = "Bad pagination", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn sessions(
    State(s): State<Arc<PathsState>>,
    Query(filter): Query<SessionFilter>,
    Query(page): Query<Page>,
) -> Response {
    let mut all: Vec<SessionInfo> = s
        .hub
        .sessions()
        .into_iter()
        .filter(|x| filter.path.as_deref().is_none_or(|p| x.path == p))
        .filter(|x| filter.protocol.as_deref().is_none_or(|p| x.protocol == p))
        .collect();
    all.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
    let views: Vec<SessionView> = all.into_iter().map(SessionView::from).collect();
    match page.cut(views) {
        Ok(listing) => Json(listing).into_response(),
        Err(p) => p.into_response(),
    }
}

/// One live session.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn session(State(s): State<Arc<PathsState>>, Path(id): Path<String>) -> Response {
    match s.hub.session(&id) {
        Some(info) => Json(SessionView::from(info)).into_response(),
        None => no_session(&id).into_response(),
    }
}

fn no_session(id: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no session {id:?}"))
}

/// Kicks a session: it ends and its client's connection closes (within a second).
/// Needs `api_write`.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "The session's id")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Kicked"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn kick(State(s): State<Arc<PathsState>>, Path(id): Path<String>) -> Response {
    if s.hub.kick(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        no_session(&id).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::{Method, Request};
    use sluice_hub::registry::Claim;
    use sluice_hub::{Presentation, SessionRole, Sessions};
    use tower::ServiceExt;

    use super::super::{access::Peer, HttpContext};
    use super::*;
    use crate::auth::Authenticator;

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n";

    /// A directory of fixed sessions that forgets the ones kicked.
    struct Fixed(Mutex<Vec<SessionInfo>>);

    impl Sessions for Fixed {
        fn list(&self) -> Vec<SessionInfo> {
            self.0.lock().unwrap().clone()
        }
        fn kick(&self, id: &str) -> bool {
            let mut all = self.0.lock().unwrap();
            let before = all.len();
            all.retain(|s| s.id != id);
            before != all.len()
        }
    }

    fn session(id: &str, path: &str, created: u64) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            path: path.into(),
            protocol: "rtsp",
            transport: "tcp",
            role: SessionRole::Reader,
            peer: "127.0.0.1:4000".parse().unwrap(),
            user: Some("u".into()),
            created_unix: created,
            packets: 1,
            bytes: 2,
        }
    }

    fn router() -> axum::Router {
        let c = Config::from_toml(
            "[demo]\nenabled = false\n[paths.\"idle/cam\"]\nsource = \"rtsp://10.0.0.1/x\"\n",
        )
        .unwrap();
        let auth = Arc::new(Authenticator::new(&c.users, c.auth.clone()).unwrap());
        let hub = Arc::new(Hub::default());
        for name in ["cams/door", "b"] {
            let s = hub.create_stream(name, Presentation::from_sdp(SDP.as_bytes()).unwrap());
            s.set_source_kind(sluice_hub::SourceKind::RtspPublisher);
            hub.publish(hub.new_owner(), Claim::Exclusive, &s).unwrap();
            hub.set_ready(&s);
        }
        hub.add_sessions(Arc::new(Fixed(Mutex::new(vec![
            session("late", "cams/door", 20),
            session("early", "cams/door", 10),
            session("other", "b", 5),
        ]))));
        let mut ctx = HttpContext::new(&c, auth);
        ctx.hub(hub);
        ctx.into_router(Vec::new()).0
    }

    async fn call(r: &axum::Router, method: Method, uri: &str) -> (u16, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls: false,
        });
        let res = r.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn paths_are_listed_by_name_in_pages_and_found_with_slashes() {
        let r = router();
        let (status, all) = call(&r, Method::GET, "/v1/paths").await;
        assert_eq!(status, 200, "{all}");
        let names: Vec<&str> = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "cams/door", "idle/cam"]);
        assert_eq!(all["items"][2]["ready"], false);
        assert_eq!(all["items"][2]["source"], "none");
        let (_, page) = call(&r, Method::GET, "/v1/paths?items_per_page=2&page=1").await;
        assert_eq!(
            (page["item_count"].as_u64(), page["page_count"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(page["items"][0]["name"], "idle/cam");
        for bad in ["items_per_page=0", "items_per_page=1001", "page=-1"] {
            let (status, p) = call(&r, Method::GET, &format!("/v1/paths?{bad}")).await;
            assert_eq!(status, 400, "{bad}: {p}");
        }
        let (status, door) = call(&r, Method::GET, "/v1/paths/cams/door").await;
        assert_eq!(status, 200, "{door}");
        assert_eq!(door["source"], "rtsp_publisher");
        assert_eq!(door["ready"], true);
        assert_eq!(door["tracks"][0]["codec"], "H264");
        assert_eq!(door["tracks"][0]["clock_rate"], 90000);
        assert_eq!(door["tracks"][0]["fmtp"], "packetization-mode=1");
        let (status, _) = call(&r, Method::GET, "/v1/paths/cams/nope").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn sessions_are_filtered_ordered_and_kicked_once() {
        let r = router();
        let (_, door) = call(&r, Method::GET, "/v1/sessions?path=cams/door").await;
        let ids: Vec<&str> = door["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["early", "late"], "oldest first");
        assert_eq!(door["items"][0]["role"], "reader");
        assert_eq!(door["items"][0]["peer"], "127.0.0.1:4000");
        let (_, none) = call(&r, Method::GET, "/v1/sessions?protocol=webrtc").await;
        assert_eq!(none["item_count"], 0);
        let (status, one) = call(&r, Method::GET, "/v1/sessions/other").await;
        assert_eq!((status, one["path"].as_str()), (200, Some("b")));
        assert_eq!(call(&r, Method::DELETE, "/v1/sessions/other").await.0, 204);
        assert_eq!(call(&r, Method::DELETE, "/v1/sessions/other").await.0, 404);
        assert_eq!(call(&r, Method::GET, "/v1/sessions/other").await.0, 404);
    }
}
