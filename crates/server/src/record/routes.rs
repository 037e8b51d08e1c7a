//! The recorder's API: what is recorded, runtime start/stop, and retention locks.
//!
//! - `GET /v1/recordings`: each recorded path's first and last times, bytes, segments,
//!   and whether it is being recorded now;
//! - `POST` / `DELETE /v1/recordings/active/{path}`: start / stop recording a path from
//!   now on (over the configuration, until the next call or a restart);
//! - `GET /v1/recordings/locks[?path=]`, `POST /v1/recordings/locks` (`{path, start, end,
//!   reason}`, RFC 3339 times), `DELETE /v1/recordings/locks/{id}`: ranges retention never
//!   deletes.
//!
//! Reads need `api`, changes `api_write` (as every `/v1` route).

use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{rfc3339, Recording};
use crate::http::problem::Problem;

/// The recorder's documented `/v1/recordings…` routes.
#[derive(Debug, Clone)]
pub struct RecordingRoutes(Recording);

impl RecordingRoutes {
    /// The routes of `recording`.
    pub fn new(recording: &Recording) -> RecordingRoutes {
        RecordingRoutes(recording.clone())
    }

    /// The router, to hand to `HttpRoutes::documented`.
    pub fn router(self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(list))
            .routes(routes!(start, stop))
            .routes(routes!(locks, add_lock))
            .routes(routes!(remove_lock))
            .with_state(self.0)
    }
}

/// A recorded path.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RecordedPath {
    /// The path's name.
    pub path: String,
    /// Start of its oldest recording kept (RFC 3339), if any.
    pub first: Option<String>,
    /// End of its newest recording (RFC 3339), if any.
    pub last: Option<String>,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segments on disk.
    pub segments: u64,
    /// Being recorded now.
    pub recording: bool,
    /// Recorded whenever it is live (configuration or API).
    pub wanted: bool,
}

fn internal(e: impl std::fmt::Display) -> Response {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

/// The recorded paths.
#[utoipa::path(
    get,
    path = "/v1/recordings",
    tag = "recordings",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Recorded paths, by name", body = Vec<RecordedPath>),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(State(rec): State<Recording>) -> Response {
    let r = rec.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Vec<RecordedPath>, String> {
        let index = r.index();
        let mut out = Vec::new();
        for path in index.streams().map_err(|e| e.to_string())? {
            let (bytes, segments) = index.stored(&path).map_err(|e| e.to_string())?;
            let fl = index.first_last(&path).map_err(|e| e.to_string())?;
            out.push(RecordedPath {
                first: fl.map(|f| rfc3339(f.0)),
                last: fl.map(|f| rfc3339(f.1)),
                bytes,
                segments,
                recording: r.is_active(&path),
                wanted: r.wants(&path),
                path,
            });
        }
        Ok(out)
    })
    .await;
    match found {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Starts recording a path now (if live) and whenever it is live, until stopped or the
/// server restarts. Needs `api_write`.
#[utoipa::path(
    post,
    path = "/v1/recordings/active/{*path}",
    tag = "recordings",
    params(("path" = String, Path, description = "The path's name, `/` included")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Recording (or will record when the path is live)"),
        (status = 400, description = "Empty path name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn start(State(rec): State<Recording>, Path(path): Path<String>) -> Response {
    set(rec, path, true)
}

/// Stops recording a path (its segment ends now) until started again or the server
/// restarts. Needs `api_write`.
#[utoipa::path(
    delete,
    path = "/v1/recordings/active/{*path}",
    tag = "recordings",
    params(("path" = String, Path, description = "The path's name, `/` included")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Not recording"),
        (status = 400, description = "Empty path name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn stop(State(rec): State<Recording>, Path(path): Path<String>) -> Response {
    set(rec, path, false)
}

fn set(rec: Recording, path: String, on: bool) -> Response {
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Problem::new(StatusCode::BAD_REQUEST, "a path name is needed").into_response();
    }
    rec.set_active(path, on);
    StatusCode::NO_CONTENT.into_response()
}

/// A retention lock.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LockView {
    /// Its id.
    pub id: u64,
    /// The path protected.
    pub path: String,
    /// Start of the range (RFC 3339).
    pub start: String,
    /// End of the range (RFC 3339, exclusive).
    pub end: String,
    /// Why.
    pub reason: String,
}

impl From<sluice_archive::Lock> for LockView {
    fn from(l: sluice_archive::Lock) -> LockView {
        LockView {
            id: l.id,
            path: l.stream,
            start: rfc3339(l.start),
            end: rfc3339(l.end),
            reason: l.reason,
        }
    }
}

/// A lock to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewLock {
    /// The path to protect.
    pub path: String,
    /// Start of the range (RFC 3339).
    pub start: String,
    /// End of the range (RFC 3339, after `start`).
    pub end: String,
    /// Why (free text).
    #[serde(default)]
    pub reason: String,
}

/// Which locks to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LockFilter {
    /// Only this path's.
    pub path: Option<String>,
}

/// The retention locks.
#[utoipa::path(
    get,
    path = "/v1/recordings/locks",
    tag = "recordings",
    params(LockFilter),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Locks, by id", body = Vec<LockView>),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn locks(State(rec): State<Recording>, Query(f): Query<LockFilter>) -> Response {
    let r = rec.clone();
    let got = tokio::task::spawn_blocking(move || r.index().locks(f.path.as_deref())).await;
    match got {
        Ok(Ok(l)) => Json(l.into_iter().map(LockView::from).collect::<Vec<_>>()).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

fn parse_time(what: &str, s: &str) -> Result<SystemTime, Response> {
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{what} {s:?} is not an RFC 3339 time: {e}"),
        )
        .into_response()
    })
}

/// Adds a retention lock: segments of `path` overlapping `[start, end)` are never deleted
/// by retention while it exists (it survives restarts). Needs `api_write`.
#[utoipa::path(
    post,
    path = "/v1/recordings/locks",
    tag = "recordings",
    request_body = NewLock,
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 201, description = "The lock", body = LockView),
        (status = 400, description = "Bad times or path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn add_lock(State(rec): State<Recording>, Json(new): Json<NewLock>) -> Response {
    let (start, end) = match (parse_time("start", &new.start), parse_time("end", &new.end)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if end <= start {
        return Problem::new(StatusCode::BAD_REQUEST, "end must be after start").into_response();
    }
    let path = new.path.trim_matches('/').to_owned();
    if path.is_empty() {
        return Problem::new(StatusCode::BAD_REQUEST, "a path name is needed").into_response();
    }
    let r = rec.clone();
    let reason = new.reason;
    let got = tokio::task::spawn_blocking(move || {
        let id = r.index().add_lock(&path, start, end, &reason)?;
        Ok::<_, sluice_archive::IndexError>(sluice_archive::Lock {
            id,
            stream: path,
            start,
            end,
            reason,
        })
    })
    .await;
    match got {
        Ok(Ok(l)) => (StatusCode::CREATED, Json(LockView::from(l))).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Removes a retention lock. Needs `api_write`.
#[utoipa::path(
    delete,
    path = "/v1/recordings/locks/{id}",
    tag = "recordings",
    params(("id" = u64, Path, description = "The lock's id")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such lock", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn remove_lock(State(rec): State<Recording>, Path(id): Path<u64>) -> Response {
    let r = rec.clone();
    let got = tokio::task::spawn_blocking(move || r.index().remove_lock(id)).await;
    match got {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => {
            Problem::new(StatusCode::NOT_FOUND, format!("no lock {id}")).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
