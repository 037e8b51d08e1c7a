//! The configuration's paths through the API: `GET`, `PUT`, `PATCH` (JSON merge patch,
//! RFC 7396) and `DELETE /v1/config/paths/{name}`. A change is checked by the running
//! server first (the reload's checks: a source that cannot start is refused with 422 and
//! nothing is written), then written into the file in place ([`ConfigStore`]: comments,
//! order and untouched lines kept) or, with `?persist=false`, held in memory only, and
//! applied at once as a reload: the other paths and their readers go on untouched.
//!
//! Path names containing `/` are written URL-encoded (`cams%2Ffront`). A change sent
//! with `If-Match: "<etag>"` (the `ETag` of `GET /v1/config/paths/{name}` or of the last
//! change) is refused with 412 if the configuration changed since.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::config_store::{Commit, ConfigStore, StoreError, Written};
use super::problem::Problem;
use crate::config::{ConfigControl, ReloadStatus};

/// The routes' state: the file's store (None: the server runs without a file) and the
/// running configuration.
pub(crate) struct ConfigRoutes {
    pub(crate) store: Option<ConfigStore>,
    pub(crate) control: Arc<dyn ConfigControl>,
}

/// `?persist=`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct PersistQuery {
    /// Write the change into the configuration file (the default); `false` applies it
    /// to the running server only, until the next reload from the file.
    persist: Option<bool>,
}

/// What a change did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Changed {
    /// The configuration's new ETag (for the next `If-Match`).
    pub etag: String,
    /// Whether the change was written into the file.
    pub persisted: bool,
    /// The reload that applied it.
    pub reload: ReloadStatus,
}

/// One path's configuration as in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct PathEntry {
    /// The path's name.
    pub name: String,
    /// Its keys, as in the file (`source`, `source_on_demand`, …).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

fn no_file() -> Response {
    Problem::new(
        StatusCode::CONFLICT,
        "the server runs without a configuration file: start it with --config FILE to change paths through the API",
    )
    .into_response()
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Runs a change off the runtime's workers (file I/O, sources starting) and answers.
async fn change(
    state: Arc<ConfigRoutes>,
    headers: HeaderMap,
    query: PersistQuery,
    edit: impl FnOnce(&ConfigStore, &Commit<'_>) -> Result<Written, StoreError> + Send + 'static,
) -> Response {
    let persist = query.persist.unwrap_or(true);
    let tag = if_match(&headers);
    let outcome = tokio::task::spawn_blocking(move || {
        let Some(store) = &state.store else {
            return Err(no_file());
        };
        let control = state.control.clone();
        let accept = move |text: &str| control.check_text(text);
        let how = Commit {
            if_match: tag.as_deref(),
            persist,
            accept: &accept,
            applied: state.control.file_tag(),
        };
        let written = edit(store, &how).map_err(|e| e.problem().into_response())?;
        let reload = state.control.apply_text(&written.text, "api", persist);
        if !reload.ok {
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the change was accepted but did not apply: {}",
                    reload.error.unwrap_or_default()
                ),
            )
            .into_response());
        }
        Ok(Changed {
            etag: written.etag,
            persisted: persist,
            reload,
        })
    })
    .await;
    match outcome {
        Ok(Ok(changed)) => {
            let etag = HeaderValue::from_str(&changed.etag).ok();
            let mut r = Json(changed).into_response();
            if let Some(v) = etag {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Ok(Err(r)) => r,
        Err(e) => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// One path's configuration as in force, with the configuration's ETag.
#[utoipa::path(
    get,
    path = "/v1/config/paths/{name}",
    tag = "config",
    params(("name" = String, Path, description = "The path's name, `/` URL-encoded")),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The path's keys", body = PathEntry),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such path in the configuration", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_path(
    State(state): State<Arc<ConfigRoutes>>,
    Path(name): Path<String>,
) -> Response {
    let config = state.control.config();
    let Some(entry) = config
        .source
        .values
        .get("paths")
        .and_then(|p| p.as_table())
        .and_then(|p| p.get(&name))
    else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            format!("no path {name:?} configured"),
        )
        .into_response();
    };
    let value = serde_json::to_value(entry).unwrap_or_default();
    let mut r = Json(PathEntry {
        name,
        config: value,
    })
    .into_response();
    // The memory-only content's tag, else the file's as last applied.
    let tag = state
        .store
        .as_ref()
        .and_then(ConfigStore::memory_tag)
        .or_else(|| state.control.file_tag());
    if let Some(tag) = tag.and_then(|t| HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(header::ETAG, tag);
    }
    r
}

/// Adds a path, or replaces it whole.
#[utoipa::path(
    put,
    path = "/v1/config/paths/{name}",
    tag = "config",
    params(
        ("name" = String, Path, description = "The path's name, `/` URL-encoded"),
        PersistQuery,
    ),
    request_body(content = Object, description = "The path's keys, as in `[paths.NAME]`"),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Applied (and written)", body = Changed),
        (status = 400, description = "The body is not valid JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No configuration file, or it changed on disk behind the server", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names an older version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid: names the field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_path(
    State(state): State<Arc<ConfigRoutes>>,
    Path(name): Path<String>,
    Query(query): Query<PersistQuery>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    change(state, headers, query, move |store, how| {
        store.put_path(&name, &body, how)
    })
    .await
}

/// Changes some keys of a path (JSON merge patch: `null` removes a key).
#[utoipa::path(
    patch,
    path = "/v1/config/paths/{name}",
    tag = "config",
    params(
        ("name" = String, Path, description = "The path's name, `/` URL-encoded"),
        PersistQuery,
    ),
    request_body(content = Object, description = "A JSON merge patch of the path's keys"),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Applied (and written)", body = Changed),
        (status = 400, description = "The body is not valid JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such path in the file", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No configuration file, or it changed on disk behind the server", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names an older version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid: names the field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn patch_path(
    State(state): State<Arc<ConfigRoutes>>,
    Path(name): Path<String>,
    Query(query): Query<PersistQuery>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    change(state, headers, query, move |store, how| {
        store.patch_path(&name, &body, how)
    })
    .await
}

/// Removes a path: its source stops and its readers are ended.
#[utoipa::path(
    delete,
    path = "/v1/config/paths/{name}",
    tag = "config",
    params(
        ("name" = String, Path, description = "The path's name, `/` URL-encoded"),
        PersistQuery,
    ),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Removed (and written)", body = Changed),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such path in the file", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No configuration file, or it changed on disk behind the server", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names an older version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_path(
    State(state): State<Arc<ConfigRoutes>>,
    Path(name): Path<String>,
    Query(query): Query<PersistQuery>,
    headers: HeaderMap,
) -> Response {
    change(state, headers, query, move |store, how| {
        store.delete_path(&name, how)
    })
    .await
}
