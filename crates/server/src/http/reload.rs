//! `GET` and `POST /v1/config/reload`: the outcome of the last configuration reload, and
//! a reload on demand; and the reload figures for `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::problem::Problem;
use crate::config::{ConfigControl, ReloadStatus};

/// The reload routes' state: the composition root's handle on the configuration.
pub(crate) type Control = Arc<dyn ConfigControl>;

/// The outcome of the last configuration reload.
#[utoipa::path(
    get,
    path = "/v1/config/reload",
    tag = "config",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The last reload", body = ReloadStatus),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn status(State(control): State<Control>) -> Json<ReloadStatus> {
    Json(control.status())
}

/// Reloads the configuration now (as SIGHUP or an edit of the file would): what changed
/// applies, unchanged paths and their readers go on. A file that does not load leaves
/// the running configuration in force: 422, naming the line and column.
#[utoipa::path(
    post,
    path = "/v1/config/reload",
    tag = "config",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Reloaded", body = ReloadStatus),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The configuration does not load; the running one stays", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn reload(State(control): State<Control>) -> Response {
    // Reading files and starting sources: off the runtime's workers.
    let outcome = tokio::task::spawn_blocking(move || control.reload("api")).await;
    match outcome {
        Ok(s) if s.ok => Json(s).into_response(),
        Ok(s) => {
            let at = match (s.line, s.column) {
                (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                _ => String::new(),
            };
            let why = s.error.unwrap_or_default();
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}{at}")).into_response()
        }
        Err(e) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}"),
        )
        .into_response(),
    }
}

/// The reload figures, read at each scrape.
pub(crate) struct ReloadCollector(pub(crate) Control);

impl std::fmt::Debug for ReloadCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadCollector")
    }
}

impl Collector for ReloadCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();
        let ok = ConstGauge::new(i64::from(s.ok));
        ok.encode(encoder.encode_descriptor(
            "sluice_config_last_reload_successful",
            "Whether the last configuration reload applied (1) or was refused (0)",
            None,
            ok.metric_type(),
        )?)?;
        let at = ConstGauge::new(s.at_unix as f64);
        at.encode(encoder.encode_descriptor(
            "sluice_config_last_reload_timestamp_seconds",
            "When the last configuration reload was tried, in seconds since the Unix epoch",
            None,
            at.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "sluice_config_reloads",
            "Configuration reloads since start, by result",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (result, n) in [("success", s.succeeded), ("failure", s.failed)] {
            let c = ConstCounter::new(n);
            c.encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}
