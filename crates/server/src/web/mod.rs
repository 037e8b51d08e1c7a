//! The player page: `/` lists the live paths the visitor may read (as HTML, or as JSON for
//! `Accept: application/json`, which the page polls to refresh itself), `/<path>/` plays one
//! path (WebRTC through the path's WHEP endpoint first, LL-HLS through the vendored hls.js
//! as the fallback), and `/assets/` serves the page's scripts, style and hls.js, all
//! embedded in the binary so that a page makes no request outside this server.
//!
//! The module serves HTTP routes only: it reads the hub's registry for the list and asks
//! [`HttpAuth`] who the visitor is and what they may read, so that the list shows exactly
//! the paths RTSP would let them play. Every answer carries a Content-Security-Policy that
//! allows nothing but this origin (the player page may be framed by other sites, the list
//! may not).

mod list;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use sluice_hub::Hub;

use crate::auth::Action;
use crate::http::access::Peer;
use crate::http::{HttpAuth, HttpError, HttpRoutes, Marker};

pub use list::{LivePath, PathList, TrackSummary};

/// The policy of the list page: scripts, styles and media from this origin only, no
/// framing by other sites.
const CSP_LIST: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'self'";

/// The policy of the player page: as the list's, plus media from `blob:` (hls.js feeds
/// the video element through Media Source Extensions), and framing by any site (the
/// documented `<iframe>` embedding).
const CSP_PLAYER: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors *";

const INDEX_HTML: &str = include_str!("assets/index.html");
const PLAYER_HTML: &str = include_str!("assets/player.html");
const INDEX_JS: &str = include_str!("assets/index.js");
const PLAYER_JS: &str = include_str!("assets/player.js");
const STYLE_CSS: &str = include_str!("assets/sluice.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");
/// hls.js 1.7.4, vendored from npm (see `crates/server/vendor/hls.js/README.md`).
const HLS_JS: &[u8] = include_bytes!("../../vendor/hls.js/hls.min.js");

/// The player page's state: the hub whose registry the list shows, and the RTSP port the
/// list's `rtsp://` URLs name.
#[derive(Debug)]
pub struct Web {
    hub: Arc<Hub>,
    rtsp_port: u16,
}

impl Web {
    /// The page for `hub`'s paths; `rtsp_port` is the RTSP listener's port, shown in the
    /// URLs to copy (the host is the one the browser used).
    pub fn new(hub: Arc<Hub>, rtsp_port: u16) -> Arc<Web> {
        Arc::new(Web { hub, rtsp_port })
    }

    /// Adds the page's routes: `/` (the list), `/<path>/` (the player, needing `read` on
    /// the path like RTSP) and `/assets/…` (scripts, style, hls.js).
    pub fn add_routes(self: &Arc<Self>, routes: &mut HttpRoutes) -> Result<(), HttpError> {
        routes.mount(
            "/",
            Router::new()
                .route("/", get(index))
                .with_state(self.clone()),
        )?;
        routes.assets(
            Router::new()
                .route("/assets/player.js", get(|| asset(PLAYER_JS.as_bytes(), JS)))
                .route("/assets/index.js", get(|| asset(INDEX_JS.as_bytes(), JS)))
                .route(
                    "/assets/sluice.css",
                    get(|| asset(STYLE_CSS.as_bytes(), CSS)),
                )
                .route(
                    "/assets/favicon.svg",
                    get(|| asset(FAVICON_SVG.as_bytes(), SVG)),
                )
                .route("/assets/hls.min.js", get(|| asset(HLS_JS, JS))),
        );
        routes.per_stream(
            Marker::Index,
            need_read,
            Router::new().route("/", get(player_page)),
        );
        Ok(())
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// `/<path>/` needs `read` on the path for the methods that show it.
fn need_read(method: &Method, _tail: &str) -> Option<Action> {
    (method == Method::GET || method == Method::HEAD).then_some(Action::Read)
}

/// Headers every page answer carries.
fn page_headers(res: &mut Response, csp: &'static str) {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A static asset, cached for an hour by browsers.
async fn asset(body: &'static [u8], content_type: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Scripts are loaded cross-origin by embedding pages (the documented snippet).
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// Whether the client asked for JSON rather than a page.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") && !v.contains("text/html"))
}

/// `GET /`: the list of live paths the visitor may read, as a page or as JSON. An
/// anonymous visitor who may read none of them while users are configured gets 401 with
/// the Basic and Bearer challenges, so that a browser asks for credentials.
async fn index(
    State(web): State<Arc<Web>>,
    auth: Option<Extension<HttpAuth>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let (Some(Extension(auth)), Some(Extension(peer))) = (auth, peer) else {
        return (StatusCode::FORBIDDEN, "unknown client").into_response();
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.identify(peer, authorization) {
        Ok(user) => user,
        Err(res) => return res,
    };
    let who = user.as_deref().unwrap_or("any");
    let list = list::readable(&web.hub, web.rtsp_port, |path| {
        auth.may(who, Action::Read, path, peer)
    });
    if user.is_none() && !auth.is_open() && list.paths.is_empty() {
        return auth.unauthorized("the list of paths needs credentials".into());
    }
    let mut res = if wants_json(&headers) {
        Json(list).into_response()
    } else {
        let mut res = INDEX_HTML.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        res
    };
    page_headers(&mut res, CSP_LIST);
    res.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static("Accept, Authorization"),
    );
    res
}

/// `GET /<path>/`: the player page (the script reads the path and the query flags from
/// the page's URL). Served whether or not the path is live: the player waits for it.
async fn player_page() -> Response {
    let mut res = PLAYER_HTML.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page_headers(&mut res, CSP_PLAYER);
    res
}

#[cfg(test)]
mod tests;
