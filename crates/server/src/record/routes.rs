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
    #[schema(min_length = 1)]
    pub path: String,
    /// One end of the range (RFC 3339).
    #[schema(format = DateTime)]
    pub start: String,
    /// The other end (RFC 3339; a range given backwards is taken forwards).
    #[schema(format = DateTime)]
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
    rfc3339_parse(s).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("{what} {s:?} is not an RFC 3339 time (like 2026-12-07T03:00:00Z)"),
        )
        .into_response()
    })
}

/// Parses an RFC 3339 date-time (`T` or space, fractions, `Z` or `±HH:MM`).
pub(crate) fn rfc3339_parse(s: &str) -> Option<SystemTime> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(d).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Days from civil (H. Hinnant).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset;
    match u64::try_from(secs) {
        Ok(secs) => {
            SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos as u32))
        }
        Err(_) => SystemTime::UNIX_EPOCH
            .checked_sub(std::time::Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(std::time::Duration::from_nanos(nanos)),
    }
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
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of another shape", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn add_lock(State(rec): State<Recording>, Json(new): Json<NewLock>) -> Response {
    let (start, end) = match (parse_time("start", &new.start), parse_time("end", &new.end)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let (start, end) = if end < start {
        (end, start)
    } else {
        (start, end)
    };
    let path = new.path;
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
        (status = 400, description = "Not a lock id", body = Problem, content_type = "application/problem+json"),
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

#[cfg(test)]
mod tests {
    use super::rfc3339_parse;
    use std::time::{Duration, SystemTime};

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        let t = |s| rfc3339_parse(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(t("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert!(rfc3339_parse("0000-01-01T00:00:00Z").is_some());
        assert_eq!(
            t("2026-12-07T03:08:20Z"),
            Some(Duration::from_secs(1_796_612_900))
        );
        assert_eq!(
            t("2026-12-07T04:08:20.5+01:00"),
            Some(Duration::from_millis(1_796_612_900_500))
        );
        assert_eq!(
            t("2026-12-07 03:08:20.000001z"),
            Some(Duration::from_micros(1_796_612_900_000_001))
        );
        for bad in [
            "",
            "MXS",
            "2026-12-07",
            "2026-13-07T00:00:00Z",
            "2026-12-07T03:08:20",
        ] {
            assert_eq!(rfc3339_parse(bad), None, "{bad}");
        }
    }
}
