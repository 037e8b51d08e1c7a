//! The HTTP side of the server: one listener (optionally HTTPS, ALPN h2 and http/1.1)
//! serving the REST API under `/v1`, the OpenAPI document at `/openapi.json` and the
//! Prometheus metrics at `/metrics`, plus whatever routes other modules contribute
//! (HLS, WHEP, recording playback) through [`HttpContext::routes`].
//!
//! The module knows nothing of the rest of the server: the composition root fills an
//! [`HttpContext`] (listeners to report, readiness, metric collectors, routes, the TLS
//! configuration) and binds an [`HttpServer`] from it. Path names whose first segment the
//! listener reserves are listed in [`crate::config::RESERVED_FIRST_SEGMENTS`].

pub mod access;
pub mod config_routes;
pub mod config_store;
pub mod events;
pub mod info;
mod listener;
pub mod metrics;
mod openapi;
mod path_metrics;
pub mod paths;
pub mod problem;
mod reload;
pub mod streams;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use listener::{HttpHandle, HttpServer};
pub use metrics::{LatencyCollector, MetricsBuilder, TakeBuckets};
pub use streams::{HttpAuth, Marker, NeedFn, StreamTarget};

use sluice_hub::Hub;

use crate::auth::Authenticator;
use crate::config::{is_reserved_path, Config};

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot bind the HTTP listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A module tried to mount routes under a reserved or invalid prefix.
    #[error("cannot mount HTTP routes at {prefix:?}: {reason}")]
    Mount {
        /// The prefix.
        prefix: String,
        /// Why.
        reason: &'static str,
    },
}

/// A listener reported by `GET /v1/info`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Listener {
    /// What it serves (`rtsp`, `rtsps`, `http`, `https`).
    pub protocol: String,
    /// Its bound address.
    pub address: String,
}

/// Whether the server is ready: `None` when it is, else why not (answered by
/// `GET /v1/ready` as 503).
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Routes other modules add to the listener.
#[derive(Default)]
pub struct HttpRoutes {
    documented: Vec<OpenApiRouter>,
    mounted: Vec<(String, Router)>,
    per_stream: Vec<(Marker, NeedFn, Router)>,
}

impl std::fmt::Debug for HttpRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRoutes")
            .field("documented", &self.documented.len())
            .field("mounted", &self.mounted.len())
            .field("per_stream", &self.per_stream.len())
            .finish()
    }
}

impl HttpRoutes {
    /// Adds routes built with `utoipa_axum::routes!`, which puts each handler's
    /// `#[utoipa::path]` into the served document: how API routes (under `/v1`) are added.
    pub fn documented(&mut self, routes: OpenApiRouter) -> &mut Self {
        self.documented.push(routes);
        self
    }

    /// Mounts media routes (HLS playlists, WHEP) that are not part of the API document
    /// at `prefix` (`/hls`, or `/` for stream-named routes such as `/{*path}`); a prefix
    /// whose first segment is reserved ([`crate::config::RESERVED_FIRST_SEGMENTS`]) is
    /// refused, so the API and the document stay the only things there.
    pub fn mount(&mut self, prefix: &str, routes: Router) -> Result<&mut Self, HttpError> {
        let inner = prefix.trim_start_matches('/');
        if !prefix.starts_with('/') {
            return Err(HttpError::Mount {
                prefix: prefix.into(),
                reason: "a prefix starts with /",
            });
        }
        if !inner.is_empty() && is_reserved_path(inner) {
            return Err(HttpError::Mount {
                prefix: prefix.into(),
                reason: "the first segment is reserved",
            });
        }
        self.mounted.push((prefix.to_owned(), routes));
        Ok(self)
    }

    /// Adds static files under the listener's reserved `/assets/` (scripts and styles of
    /// the player page): `routes` must only hold routes whose paths start with `/assets/`,
    /// which no stream name can (the segment is reserved).
    pub fn assets(&mut self, routes: Router) -> &mut Self {
        self.mounted.push(("/".to_owned(), routes));
        self
    }

    /// Adds routes under stream names (`/<path>/index.m3u8`, `/<path>/whep/<id>`): see
    /// [`streams`]. A URL no other route matched is split at the rightmost `marker`; the
    /// client's permission for `need(method, tail)` on the name is checked like RTSP's, and
    /// `routes` gets the request for the tail with a [`StreamTarget`] extension.
    pub fn per_stream(&mut self, marker: Marker, need: NeedFn, routes: Router) -> &mut Self {
        self.per_stream.push((marker, need, routes));
        self
    }
}

/// What the HTTP module needs from the rest of the server, filled by the composition root.
pub struct HttpContext {
    config: Config,
    auth: Arc<Authenticator>,
    started: Instant,
    started_at: SystemTime,
    listeners: Vec<Listener>,
    readiness: Readiness,
    metrics: MetricsBuilder,
    routes: HttpRoutes,
    tls: Option<rustls::ServerConfig>,
    control: Option<Arc<dyn crate::config::ConfigControl>>,
    hub: Option<Arc<Hub>>,
    /// The hub whose event bus `GET /v1/events` streams.
    event_source: Arc<sluice_hub::Hub>,
}

impl std::fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpContext")
            .field("listen", &self.config.http.listen)
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl HttpContext {
    /// A context for `config`, checking clients against `auth` (the server's users);
    /// uptime counts from now.
    pub fn new(config: &Config, auth: Arc<Authenticator>) -> HttpContext {
        HttpContext {
            config: config.clone(),
            auth,
            started: Instant::now(),
            started_at: SystemTime::now(),
            listeners: Vec::new(),
            readiness: Arc::new(|| None),
            metrics: MetricsBuilder::new(),
            routes: HttpRoutes::default(),
            tls: None,
            control: None,
            hub: None,
            event_source: Arc::new(sluice_hub::Hub::default()),
        }
    }

    /// Reports a listener of another module in `GET /v1/info`.
    pub fn listener(&mut self, protocol: &str, address: SocketAddr) -> &mut Self {
        self.listeners.push(Listener {
            protocol: protocol.into(),
            address: address.to_string(),
        });
        self
    }

    /// How `GET /v1/ready` learns whether the server is ready (ready by default).
    pub fn readiness(&mut self, f: Readiness) -> &mut Self {
        self.readiness = f;
        self
    }

    /// The metrics registry, for modules' collectors.
    pub fn metrics(&mut self) -> &mut MetricsBuilder {
        &mut self.metrics
    }

    /// The routes other modules contribute.
    pub fn routes(&mut self) -> &mut HttpRoutes {
        &mut self.routes
    }

    /// The handle on the running configuration: `/v1/config` shows what is in force after
    /// reloads, and `/v1/config/reload` reports and triggers them. Without one, the
    /// configuration the context was made with is shown and the reload routes are absent.
    pub fn control(&mut self, control: Arc<dyn crate::config::ConfigControl>) -> &mut Self {
        self.metrics
            .collector(Box::new(reload::ReloadCollector(control.clone())));
        self.control = Some(control);
        self
    }

    /// The hub the server's modules share: `/v1/paths` and `/v1/sessions` list its
    /// streams and session directories, `DELETE /v1/sessions/{id}` kicks through it, and
    /// `/metrics` reads per-path figures from it. Without it those routes see an empty
    /// hub.
    pub fn hub(&mut self, hub: Arc<Hub>) -> &mut Self {
        self.hub = Some(hub);
        self
    }

    /// Streams `hub`'s event bus at `GET /v1/events` (by default an empty bus of its own).
    pub fn event_source(&mut self, hub: Arc<sluice_hub::Hub>) -> &mut Self {
        self.event_source = hub;
        self
    }

    /// Serves HTTPS with this TLS configuration (its ALPN is set to h2 and http/1.1).
    pub fn tls(&mut self, config: rustls::ServerConfig) -> &mut Self {
        self.tls = Some(config);
        self
    }

    /// The complete router and its OpenAPI document. `own` lists the HTTP listener's
    /// own addresses for `/v1/info`.
    pub(crate) fn into_router(self, own: Vec<Listener>) -> (Router, utoipa::openapi::OpenApi) {
        let http = &self.config.http;
        let hub = self.hub.unwrap_or_default();
        let mut metrics = self.metrics;
        metrics.collector(Box::new(path_metrics::PathCollector::new(hub.clone())));
        if http.session_metrics {
            metrics.collector(Box::new(path_metrics::SessionCollector::new(hub.clone())));
        }
        let metrics = metrics.build();
        let paths_state = Arc::new(paths::PathsState::new(hub, &self.config));
        let access = Arc::new(access::Access::new(&self.config, self.auth.clone()));
        let mut listeners = self.listeners;
        listeners.extend(own);
        let state = Arc::new(info::InfoState {
            started: self.started,
            started_at: self.started_at,
            listeners,
            readiness: self.readiness,
            source: self.config.source.clone(),
            control: self.control.clone(),
        });
        let document: openapi::Document = Arc::new(OnceLock::new());
        let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(info::info))
                    .routes(routes!(info::health))
                    .routes(routes!(info::ready))
                    .routes(routes!(info::config))
                    .with_state(state),
            )
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(paths::paths))
                    .routes(routes!(paths::path))
                    .routes(routes!(paths::sessions))
                    .routes(routes!(paths::session, paths::kick))
                    .with_state(paths_state),
            )
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(metrics::metrics))
                    .with_state(metrics.clone()),
            )
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(events::events))
                    .with_state(self.event_source),
            )
            .merge(
                OpenApiRouter::new()
                    .routes(routes!(openapi::openapi_json))
                    .with_state(document.clone()),
            );
        if let Some(control) = self.control.clone() {
            api = api.merge(
                OpenApiRouter::new()
                    .routes(routes!(reload::status, reload::reload))
                    .with_state(control),
            );
        }
        if let Some(control) = self.control.clone() {
            let store = control
                .config()
                .source
                .file
                .as_deref()
                .and_then(|f| config_store::ConfigStore::open(f).ok());
            let state = Arc::new(config_routes::ConfigRoutes { store, control });
            api = api.merge(
                OpenApiRouter::new()
                    .routes(routes!(
                        config_routes::get_path,
                        config_routes::put_path,
                        config_routes::patch_path,
                        config_routes::delete_path
                    ))
                    .with_state(state),
            );
        }
        for r in self.routes.documented {
            api = api.merge(r);
        }
        let (mut router, mut doc) = api.split_for_parts();
        openapi::name_wildcards(&mut doc);
        openapi::declare_access(&mut doc, &access);
        let _ = document.set(serde_json::to_string(&doc).unwrap_or_default());
        for (prefix, r) in self.routes.mounted {
            router = if prefix == "/" {
                router.merge(r)
            } else {
                router.nest(&prefix, r)
            };
        }
        let streams = streams::StreamRoutes::new(self.routes.per_stream);
        let mut router = router
            .fallback(move |req| streams::dispatch(axum::extract::State(streams.clone()), req))
            .layer(from_fn_with_state(access, access::check))
            .layer(DefaultBodyLimit::max(http.max_body_bytes))
            .layer(RequestBodyLimitLayer::new(http.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                http.request_timeout,
            ))
            .layer(from_fn(problem::problemize))
            .layer(from_fn_with_state(metrics, metrics::count_requests))
            // One debug line per answered request.
            .layer(
                TraceLayer::new_for_http()
                    .on_request(())
                    .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
            );
        if let Some(cors) = cors_layer(&http.cors_origins) {
            router = router.layer(cors);
        }
        (router, doc)
    }
}

/// The CORS layer for the allow-list, or none when it is empty (same-origin only).
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| o.trim_end_matches('/').parse().ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(tower_http::cors::Any)
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                axum::http::header::IF_MATCH,
            ])
            .expose_headers([axum::http::header::ETAG]),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn context(toml: &str) -> HttpContext {
        let c = Config::from_toml(toml).unwrap();
        let auth = Arc::new(Authenticator::new(&c.users, c.auth.clone()).unwrap());
        HttpContext::new(&c, auth)
    }

    async fn call(r: &Router, req: Request<Body>) -> axum::response::Response {
        let mut req = req;
        req.extensions_mut().insert(access::Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls: false,
        });
        r.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn mounted_routes_time_out_with_408_and_reserved_prefixes_are_refused() {
        let mut ctx = context("[http]\nrequest_timeout = \"100ms\"\n");
        let slow = Router::new().route(
            "/x",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        ctx.routes().mount("/slow", slow).unwrap();
        for bad in ["/v1", "/metrics/x", "/openapi.json", "/assets", "nope"] {
            assert!(ctx.routes().mount(bad, Router::new()).is_err(), "{bad}");
        }
        let (r, _) = ctx.into_router(Vec::new());
        let res = call(&r, Request::get("/slow/x").body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            res.headers()["content-type"],
            problem::PROBLEM_JSON,
            "timeouts are problems too"
        );
    }

    #[tokio::test]
    async fn per_stream_routes_get_the_name_and_check_read_like_rtsp() {
        let toml = r#"
            [[users]]
            user = "viewer"
            pass = "pw"
            permissions = [{ action = "read", path = "cams/front" }]
        "#;
        let mut ctx = context(toml);
        let hls = Router::new().route(
            "/index.m3u8",
            get(
                |axum::Extension(t): axum::Extension<StreamTarget>| async move {
                    format!("{} for {}", t.path, t.user)
                },
            ),
        );
        ctx.routes().per_stream(
            Marker::Extension(&["m3u8"]),
            |_, _| Some(crate::auth::Action::Read),
            hls,
        );
        let (r, _) = ctx.into_router(Vec::new());
        let get_as = |uri: &str, auth: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(Body::empty()).unwrap()
        };
        let res = call(&r, get_as("/cams/front/index.m3u8", None)).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().get("www-authenticate").is_some());
        // viewer:pw
        let basic = "Basic dmlld2VyOnB3";
        let res = call(&r, get_as("/cams/front/index.m3u8?x=1", Some(basic))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1000).await.unwrap();
        assert_eq!(&body[..], b"cams/front for viewer");
        let res = call(&r, get_as("/cams/back/index.m3u8", Some(basic))).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let res = call(&r, get_as("/cams/front/other.txt", Some(basic))).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn cors_allows_listed_origins_only() {
        let ctx = context("[http]\ncors_origins = [\"https://dash.example.com\"]\n");
        let (r, _) = ctx.into_router(Vec::new());
        let preflight = Request::builder()
            .method("OPTIONS")
            .uri("/v1/info")
            .header("origin", "https://dash.example.com")
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .unwrap();
        let res = call(&r, preflight).await;
        assert!(res.status().is_success(), "{:?}", res.status());
        assert_eq!(
            res.headers()["access-control-allow-origin"],
            "https://dash.example.com"
        );
        let other = Request::get("/v1/info")
            .header("origin", "https://evil.example.com")
            .body(Body::empty())
            .unwrap();
        let res = call(&r, other).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("access-control-allow-origin").is_none());
        // Without an allow-list no CORS headers at all.
        let (r, _) = context("").into_router(Vec::new());
        let res = call(
            &r,
            Request::get("/v1/info")
                .header("origin", "https://dash.example.com")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
}
