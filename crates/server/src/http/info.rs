//! The REST basics: `GET /v1/info`, `/v1/health`, `/v1/ready` and `/v1/config`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::problem::Problem;
use super::{Listener, Readiness};
use crate::config::ConfigSource;

/// What the info and config routes read: fixed when the server is composed.
pub(crate) struct InfoState {
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) readiness: Readiness,
    pub(crate) source: ConfigSource,
    /// The running configuration after reloads, when the server gave a handle on it.
    pub(crate) control: Option<Arc<dyn crate::config::ConfigControl>>,
}

/// `GET /v1/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Info {
    /// The server's version.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// When it started, in seconds since the Unix epoch.
    pub started_at_unix: u64,
    /// Its listeners.
    pub listeners: Vec<Listener>,
}

/// `GET /v1/health` and `GET /v1/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok`.
    pub status: String,
}

/// `GET /v1/config`: the configuration in force as layered from the file, the
/// environment and the flags (built-in defaults are not listed), secrets redacted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigView {
    /// The file it was read from, if any.
    pub file: Option<String>,
    /// The values, as the TOML file's tables (`rtsp`, `paths`, …).
    #[schema(value_type = Object)]
    pub values: serde_json::Value,
    /// Dotted keys an `SLUICE_…` environment variable set, overriding the file.
    pub overridden_by_env: Vec<String>,
    /// Dotted keys a `--set` flag set, overriding the file and the environment.
    pub overridden_by_flag: Vec<String>,
}

/// The server, its version, uptime and listeners.
#[utoipa::path(
    get,
    path = "/v1/info",
    tag = "server",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The server", body = Info),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn info(State(s): State<Arc<InfoState>>) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: s.started.elapsed().as_secs_f64(),
        started_at_unix: s
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        listeners: s.listeners.clone(),
    })
}

/// Liveness: the process answers. Public.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "server",
    security(()),
    responses((status = 200, description = "Alive", body = Status))
)]
pub(crate) async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Readiness: the server serves (503 while it cannot, saying why). Public.
#[utoipa::path(
    get,
    path = "/v1/ready",
    tag = "server",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ready(State(s): State<Arc<InfoState>>) -> Response {
    match (s.readiness)() {
        None => Json(Status {
            status: "ok".into(),
        })
        .into_response(),
        Some(why) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Keys whose values are secrets.
const SECRET_KEYS: &[&str] = &["pass", "source_pass", "hash", "secret"];

/// The value with secrets replaced: passwords, token hashes, and passwords in URLs.
fn redact(v: toml::Value, key: &str) -> serde_json::Value {
    match v {
        toml::Value::Table(t) => serde_json::Value::Object(
            t.into_iter()
                .map(|(k, v)| {
                    let r = redact(v, &k);
                    (k, r)
                })
                .collect(),
        ),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(|v| redact(v, key)).collect())
        }
        _ if SECRET_KEYS.contains(&key) => serde_json::Value::String("(redacted)".into()),
        toml::Value::String(s) => serde_json::Value::String(redact_url(&s)),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
    }
}

/// `rtsp://user:pass@host/x` → `rtsp://user:(redacted)@host/x`.
fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return s.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:(redacted){}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// The configuration in force, with which keys the environment or flags set.
#[utoipa::path(
    get,
    path = "/v1/config",
    tag = "config",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The configuration", body = ConfigView),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn config(State(s): State<Arc<InfoState>>) -> Json<ConfigView> {
    let running = s.control.as_ref().map(|c| c.config());
    let src = running.as_ref().map_or(&s.source, |c| &c.source);
    Json(ConfigView {
        file: src.file.as_ref().map(|f| f.display().to_string()),
        values: redact(toml::Value::Table(src.values.clone()), ""),
        overridden_by_env: src.overridden_by_env.clone(),
        overridden_by_flag: src.overridden_by_flag.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let t: toml::Table = toml::from_str(
            "[paths.cam]\nsource = \"rtsp://u:p@h:554/x\"\nsource_pass = \"sp\"\n\
             [[users]]\nuser = \"a\"\npass = \"pw\"\n[[http.tokens]]\nuser = \"a\"\nhash = \"sha256:00\"\n",
        )
        .unwrap();
        let v = redact(toml::Value::Table(t), "");
        let s = v.to_string();
        assert!(
            !s.contains("\"pw\"") && !s.contains("\"sp\"") && !s.contains("u:p@"),
            "{s}"
        );
        assert!(s.contains("rtsp://u:(redacted)@h:554/x"), "{s}");
        assert_eq!(redact_url("rtsp://h/x@y"), "rtsp://h/x@y");
    }
}
