//! `GET /metrics`: Prometheus metrics from one registry that every module contributes to
//! (a [`Collector`] read at scrape time, or metrics registered up front). OpenMetrics
//! when the scraper's `Accept` asks for it, the classic text format 0.0.4 otherwise; every
//! family has HELP and TYPE, and counters end in `_total`.

use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::problem::Problem;

/// `Content-Type` of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of `sluice_http_requests_total`: the route template (never the raw path, so the
/// number of series stays bounded), the method and the status code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

/// The registry being filled while the server is composed: modules add their metrics
/// and collectors here before the listener starts.
#[derive(Debug)]
pub struct MetricsBuilder {
    registry: Registry,
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsBuilder {
    /// A registry with the process and build metrics.
    pub fn new() -> MetricsBuilder {
        let mut registry = Registry::default();
        registry.register(
            "sluice_build",
            "Build of the running server (value 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ProcessCollector));
        MetricsBuilder { registry }
    }

    /// Adds a collector, read at every scrape.
    pub fn collector(&mut self, c: Box<dyn Collector>) -> &mut Self {
        self.registry.register_collector(c);
        self
    }

    /// The registry itself, for modules that register metrics they update as they go.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub(crate) fn build(mut self) -> Arc<Metrics> {
        let requests = Family::<RequestLabels, Counter>::default();
        self.registry.register(
            "sluice_http_requests",
            "HTTP requests answered, by route template, method and status code",
            requests.clone(),
        );
        Arc::new(Metrics {
            registry: self.registry,
            requests,
        })
    }
}

/// The finished registry and the HTTP module's own metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    /// The registry in the format `accept` asks for, with its content type.
    pub(crate) fn encode(&self, accept: Option<&str>) -> Result<(String, &'static str), Problem> {
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        let mut out = String::new();
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        r.map_err(|_| {
            Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed",
            )
        })?;
        Ok((
            out,
            if openmetrics {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            },
        ))
    }
}

/// The method as a label: the standard ones, `other` for anything else (bounded).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts each answered request by route template and status.
pub(crate) async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = method_label(req.method());
    let res = next.run(req).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: method.to_owned(),
            status: res.status().as_u16().to_string(),
        })
        .inc();
    res
}

/// Prometheus metrics: the text format 0.0.4, or OpenMetrics 1.0 when `Accept` names
/// `application/openmetrics-text`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The metrics", content(
            (String = "text/plain"),
            (String = "application/openmetrics-text"),
        )),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn metrics(State(m): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match m.encode(accept) {
        Ok((body, ct)) => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], body).into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// Process CPU time, resident memory and open file descriptors, read from `/proc/self`
/// at each scrape (Linux; absent elsewhere).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat`'s CPU times: `USER_HZ`, 100 on every
/// Linux architecture the server targets.
const USER_HZ: f64 = 100.0;

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent by the process",
                None,
                c.metric_type(),
            )?)?;
        }
        if let Some(rss) = resident_bytes() {
            let g = ConstGauge::new(rss);
            g.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory of the process",
                Some(&Unit::Bytes),
                g.metric_type(),
            )?)?;
        }
        if let Some(fds) = open_fds() {
            let g = ConstGauge::new(fds);
            g.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the process",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Reads and resets a latency histogram: (upper bound in µs, packets) per bucket,
/// ascending, counted since the previous call.
pub type TakeBuckets = Box<dyn Fn() -> Vec<(f64, u64)> + Send + Sync>;

/// A histogram kept by another module (the egress latency) exported as a Prometheus
/// histogram in seconds: at each scrape it takes what was recorded since the last one
/// and adds it to running totals, so it must be the histogram's only reader. The fine
/// buckets are merged into powers of two of microseconds (1 µs … ~4 s) to keep the
/// series few; `_sum` is estimated from each fine bucket's geometric midpoint.
pub struct LatencyCollector {
    name: &'static str,
    help: &'static str,
    take: TakeBuckets,
    totals: Mutex<(Vec<u64>, f64)>,
}

impl std::fmt::Debug for LatencyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyCollector")
            .field("name", &self.name)
            .finish()
    }
}

/// Upper bounds of the exported buckets: 2^0 … 2^22 µs.
const EXPORTED_OCTAVES: usize = 23;

impl LatencyCollector {
    /// Exports what `take` reads as the histogram `name` (without `_seconds`).
    pub fn new(name: &'static str, help: &'static str, take: TakeBuckets) -> LatencyCollector {
        LatencyCollector {
            name,
            help,
            take,
            totals: Mutex::new((vec![0; EXPORTED_OCTAVES], 0.0)),
        }
    }

    fn absorb(&self) -> (Vec<u64>, f64) {
        let fresh = (self.take)();
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut lower = 0.0;
        for (ub, n) in fresh {
            let octave = (ub.log2() - 1e-9).ceil().max(0.0) as usize;
            if let Some(slot) = t.0.get_mut(octave.min(EXPORTED_OCTAVES - 1)) {
                *slot += n;
            }
            let mid_us = if lower > 0.0 {
                (lower * ub).sqrt()
            } else {
                ub / 2.0
            };
            t.1 += n as f64 * mid_us / 1e6;
            lower = ub;
        }
        t.clone()
    }
}

impl Collector for LatencyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (counts, sum) = self.absorb();
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(k, &n)| (2f64.powi(k as i32) / 1e6, n))
            .collect();
        let count = counts.iter().sum();
        let mut m = encoder.encode_descriptor(
            self.name,
            self.help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_and_openmetrics_have_help_type_and_total() {
        let mut b = MetricsBuilder::new();
        b.collector(Box::new(LatencyCollector::new(
            "sluice_egress_latency",
            "Ingest to egress latency",
            Box::new(|| vec![(1.0, 2), (2f64.powf(0.25), 1), (3.0, 4)]),
        )));
        let m = b.build();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/v1/info".into(),
                method: "GET".into(),
                status: "200".into(),
            })
            .inc();
        let (classic, ct) = m.encode(None).unwrap();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        for want in [
            "# TYPE sluice_http_requests_total counter",
            "sluice_http_requests_total{route=\"/v1/info\",method=\"GET\",status=\"200\"} 1",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE sluice_egress_latency_seconds histogram",
            "sluice_egress_latency_seconds_bucket{le=\"1e-06\"} 2",
            "sluice_egress_latency_seconds_bucket{le=\"2e-06\"} 3",
            "sluice_egress_latency_seconds_bucket{le=\"4e-06\"} 7",
            "sluice_egress_latency_seconds_count 7",
            "sluice_build_info{version=",
        ] {
            assert!(classic.contains(want), "missing {want:?} in\n{classic}");
        }
        // Every family has HELP and TYPE.
        let helps = classic.lines().filter(|l| l.starts_with("# HELP")).count();
        let types = classic.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(helps, types, "{classic}");
        assert!(!classic.contains("# EOF"));
        let (om, ct) = m
            .encode(Some("application/openmetrics-text;version=1.0.0"))
            .unwrap();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(om.trim_end().ends_with("# EOF"), "{om}");
        // Running totals: each scrape (this is the third) adds the fresh counts to the old.
        let (again, _) = m.encode(None).unwrap();
        assert!(
            again.contains("sluice_egress_latency_seconds_count 21"),
            "{again}"
        );
    }
}
