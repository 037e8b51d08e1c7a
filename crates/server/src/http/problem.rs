//! RFC 9457 problem details: every error the HTTP listener answers is
//! `application/problem+json` with the real status code, including the ones axum and
//! tower-http produce on their own (404, 405 with `Allow`, 413, 408, 415, 422).

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem details object (RFC 9457 §3).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` when the status code says it all.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status code's reason phrase.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for a human.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    /// A problem of type `about:blank` for `status`, explained by `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        let detail = detail.into();
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: (!detail.is_empty()).then_some(detail),
        }
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response()
    }
}

/// Answers routes that do not exist with a 404 problem.
pub(crate) async fn not_found(req: Request<Body>) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no resource at {}", req.uri().path()),
    )
}

/// Largest error body read back to become a problem's `detail`.
const MAX_DETAIL: usize = 1024;

/// Middleware: turns an error response that is not already problem details (axum's
/// 405 and extractor rejections, tower-http's 413 and 408) into one, keeping its status
/// and headers (`Allow`, `WWW-Authenticate`) and using its text as the detail.
pub(crate) async fn problemize(req: Request<Body>, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if is_problem {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = to_bytes(body, MAX_DETAIL)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .unwrap_or_default();
    let detail = if text.trim().is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this resource".to_owned(),
            StatusCode::REQUEST_TIMEOUT => "the request took too long".to_owned(),
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
            _ => String::new(),
        }
    } else {
        text.trim().to_owned()
    };
    let problem = Problem::new(status, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&problem).unwrap_or_default()),
    )
}
