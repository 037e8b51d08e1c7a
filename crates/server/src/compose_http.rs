//! Composition of the HTTP module ([`crate::http`]) with the rest of the server: the
//! listeners it reports, the collectors it exports (the egress latency), its TLS
//! configuration. The HTTP module imports none of the others; this file is where they meet.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::{HttpContext, HttpServer, LatencyCollector};
use crate::latency::LatencyHistogram;
use crate::server::ServerError;

/// Binds the HTTP listener of `config` (`None` when `[http]` is disabled), reporting the
/// RTSP listeners at `rtsp`/`rtsps` and exporting `egress` as a histogram.
pub(crate) async fn bind_http(
    config: &Config,
    auth: &Arc<Authenticator>,
    rtsp: SocketAddr,
    rtsps: Option<SocketAddr>,
    egress: &Arc<LatencyHistogram>,
) -> Result<Option<HttpServer>, ServerError> {
    let mut ctx = HttpContext::new(config, auth.clone());
    ctx.listener("rtsp", rtsp);
    if let Some(a) = rtsps {
        ctx.listener("rtsps", a);
    }
    let egress = egress.clone();
    ctx.metrics().collector(Box::new(LatencyCollector::new(
        "sluice_egress_latency",
        "Time packets spent in the server, from their source to the send that carried them to a reader (sum estimated from bucket midpoints)",
        Box::new(move || egress.take_buckets()),
    )));
    if let Some((cert, key)) = config.http.tls_pair(&config.rtsps) {
        ctx.tls(crate::tls::server_config(&cert, &key).map_err(ServerError::Tls)?);
    }
    Ok(HttpServer::bind(ctx).await?)
}
