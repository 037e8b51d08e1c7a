//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! annotations (utoipa) as the routes are added, so a route cannot exist undocumented.
//! It declares access as it is: every operation may be called anonymously (loopback
//! clients, or the `any` user) or with Basic or Bearer credentials.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts: info, tags, security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "The Sluice media server's HTTP API. Errors are RFC 9457 problem details. \
            Without [[users]] loopback clients may do everything and other clients may read; \
            with users, Basic or Bearer credentials carry the actions api, api_write and metrics.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "server", description = "Version, uptime, liveness, readiness"),
        (name = "config", description = "The configuration in force"),
        (name = "paths", description = "Paths: sources, tracks, readers, traffic"),
        (name = "sessions", description = "Live sessions: listing and kicking"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "events", description = "The server's events as Server-Sent Events"),
        (name = "openapi", description = "This document"),
    ),
    modifiers(&SecuritySchemes)
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of [[http.tokens]] (stored as sha256:<hex>), standing for a user",
                    ))
                    .build(),
            ),
        );
    }
}

/// Makes the document declare access as this server's configuration has it: anonymous
/// access (the empty security requirement) stays only on operations a client without
/// credentials may call.
pub(crate) fn declare_access(doc: &mut utoipa::openapi::OpenApi, access: &super::access::Access) {
    use axum::http::Method;
    use utoipa::openapi::security::SecurityRequirement;
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ] {
            let Some(op) = op else { continue };
            if access.anonymous_may(&method, path) {
                continue;
            }
            if let Some(security) = &mut op.security {
                security.retain(|r| *r != SecurityRequirement::default());
            }
        }
    }
}

/// Writes axum's catch-all parameters (`/v1/paths/{*name}`, whose value may hold `/`) as
/// OpenAPI path templates (`/v1/paths/{name}`); the operation documents that the name
/// may contain `/`.
pub(crate) fn name_wildcards(doc: &mut utoipa::openapi::OpenApi) {
    let wild: Vec<String> = doc
        .paths
        .paths
        .keys()
        .filter(|k| k.contains("{*"))
        .cloned()
        .collect();
    for key in wild {
        if let Some(item) = doc.paths.paths.remove(&key) {
            doc.paths.paths.insert(key.replace("{*", "{"), item);
        }
    }
}

/// The serialized document, set once the router is complete.
pub(crate) type Document = Arc<OnceLock<String>>;

/// This document. Public.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi_json(State(doc): State<Document>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use super::super::{access::Peer, HttpContext};
    use crate::auth::Authenticator;
    use crate::Config;

    fn router() -> (axum::Router, utoipa::openapi::OpenApi) {
        let c = Config::from_toml("").unwrap();
        let auth = Arc::new(Authenticator::new(&c.users, c.auth.clone()).unwrap());
        let ctx = HttpContext::new(&c, auth);
        ctx.into_router(Vec::new())
    }

    async fn call(r: &axum::Router, method: Method, path: &str) -> (StatusCode, String, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            tls: false,
        });
        let res = r.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, String::from_utf8_lossy(&body).into_owned())
    }

    /// Every documented operation is routed, every route of a documented path is
    /// documented (other methods get 405), and what is not documented is not routed.
    #[tokio::test]
    async fn the_router_and_the_document_list_the_same_routes() {
        let (r, doc) = router();
        assert!(doc.paths.paths.len() >= 6, "{:?}", doc.paths.paths.keys());
        let all = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ];
        for (path, item) in &doc.paths.paths {
            let documented: Vec<Method> = [
                (Method::GET, item.get.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::PATCH, item.patch.is_some()),
                (Method::DELETE, item.delete.is_some()),
            ]
            .into_iter()
            .filter_map(|(m, d)| d.then_some(m))
            .collect();
            assert!(!documented.is_empty(), "{path}");
            for m in &all {
                let (status, ct, body) = call(&r, m.clone(), path).await;
                if documented.contains(m) {
                    // A templated path's literal `{name}` names no resource: the
                    // handler's own 404 shows it is routed; the fallback's does not.
                    let routed = status != StatusCode::NOT_FOUND
                        || (path.contains('{') && !body.contains("no resource at"));
                    assert!(
                        routed && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{m} {path}: {status} {body}"
                    );
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {body}");
                    assert_eq!(ct, "application/problem+json", "{m} {path}");
                }
            }
        }
        for undocumented in ["/v1", "/v1/nope", "/v1/info/x", "/nothing", "/"] {
            let (status, ct, body) = call(&r, Method::GET, undocumented).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{undocumented}: {body}");
            assert_eq!(ct, "application/problem+json");
            assert!(body.contains("\"status\":404"), "{body}");
        }
        let (status, _, body) = call(&r, Method::GET, "/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        let served: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(served["openapi"], "3.1.0");
        assert!(served["components"]["securitySchemes"]["bearer"].is_object());
        assert_eq!(
            served["paths"].as_object().unwrap().len(),
            doc.paths.paths.len()
        );
    }
}
