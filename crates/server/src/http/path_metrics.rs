//! Per-path and per-session-kind metrics, read from the hub at every scrape: nothing is
//! kept between scrapes, so a path that goes away disappears from the output, and the
//! labels are bounded (path, protocol, transport, drop reason; never a session id).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use sluice_hub::{Hub, StreamStats};

/// Transports every protocol-`rtsp` series is emitted for, even at zero, so that the
/// number of series does not change as readers come and go.
const RTSP_TRANSPORTS: [&str; 3] = ["udp", "tcp", "multicast"];

/// The hub's paths and sessions as Prometheus families.
#[derive(Debug)]
pub(crate) struct PathCollector {
    hub: Arc<Hub>,
}

impl PathCollector {
    pub(crate) fn new(hub: Arc<Hub>) -> PathCollector {
        PathCollector { hub }
    }
}

/// One series per live session (`[http] session_metrics`): read from the hub's session
/// directories at each scrape, so a session that ends is gone from the next one.
#[derive(Debug)]
pub(crate) struct SessionCollector {
    hub: Arc<Hub>,
}

impl SessionCollector {
    pub(crate) fn new(hub: Arc<Hub>) -> SessionCollector {
        SessionCollector { hub }
    }
}

impl Collector for SessionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = self.hub.sessions();
        let labels = |s: &sluice_hub::SessionInfo| {
            vec![
                ("session", s.id.clone()),
                ("path", s.path.clone()),
                ("protocol", s.protocol.to_owned()),
                ("transport", s.transport.to_owned()),
                ("role", s.role.as_str().to_owned()),
            ]
        };
        let e = &mut encoder;
        counters(
            e,
            "sluice_session_bytes",
            "RTP payload bytes sent to a reader or received from a publisher, per session",
            &sessions
                .iter()
                .map(|s| (labels(s), s.bytes))
                .collect::<Vec<_>>(),
        )?;
        counters(
            e,
            "sluice_session_packets",
            "RTP packets sent to a reader or received from a publisher, per session",
            &sessions
                .iter()
                .map(|s| (labels(s), s.packets))
                .collect::<Vec<_>>(),
        )?;
        gauges(
            e,
            "sluice_session_created_timestamp_seconds",
            "When the session was created, in seconds since the Unix epoch",
            None,
            &sessions
                .iter()
                .map(|s| (labels(s), s.created_unix as i64))
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }
}

/// One live path's figures at this scrape.
struct Row {
    path: String,
    ready: bool,
    stats: StreamStats,
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &[(Vec<(&'static str, String)>, V)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn by_path<V>(
    rows: &[Row],
    f: impl Fn(&Row) -> Option<V>,
) -> Vec<(Vec<(&'static str, String)>, V)> {
    rows.iter()
        .filter_map(|r| Some((vec![("path", r.path.clone())], f(r)?)))
        .collect()
}

impl Collector for PathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<Row> = self
            .hub
            .streams()
            .iter()
            .map(|s| Row {
                path: s.path().to_owned(),
                ready: s.is_ready(),
                stats: s.stats(),
            })
            .collect();
        let e = &mut encoder;
        gauges(
            e,
            "sluice_path_ready",
            "Whether the path's stream is ready for readers (1) or not yet (0)",
            None,
            &by_path(&rows, |r| Some(i64::from(r.ready))),
        )?;
        gauges(
            e,
            "sluice_path_publishers",
            "Sources feeding the path (a publisher, pull, file or the demo): 1 while it is live",
            None,
            &by_path(&rows, |_| Some(1i64)),
        )?;
        let mut readers = Vec::new();
        for r in &rows {
            let mut by_protocol: BTreeMap<&str, u64> = BTreeMap::from([("rtsp", 0)]);
            for c in &r.stats.sinks.readers {
                *by_protocol.entry(c.protocol).or_default() += c.count;
            }
            for (protocol, n) in by_protocol {
                readers.push((
                    vec![("path", r.path.clone()), ("protocol", protocol.to_owned())],
                    n,
                ));
            }
        }
        gauges(
            e,
            "sluice_path_readers",
            "Readers of the path now, by protocol",
            None,
            &readers,
        )?;
        counters(
            e,
            "sluice_path_packets_in",
            "RTP packets the path's source delivered",
            &by_path(&rows, |r| Some(r.stats.packets_in)),
        )?;
        counters(
            e,
            "sluice_path_bytes_in",
            "RTP payload bytes the path's source delivered",
            &by_path(&rows, |r| Some(r.stats.bytes_in)),
        )?;
        counters(
            e,
            "sluice_path_packets_out",
            "RTP packets sent to the path's readers",
            &by_path(&rows, |r| Some(r.stats.sinks.packets_out)),
        )?;
        counters(
            e,
            "sluice_path_bytes_out",
            "RTP payload bytes sent to the path's readers",
            &by_path(&rows, |r| Some(r.stats.sinks.bytes_out)),
        )?;
        counters(
            e,
            "sluice_path_packets_lost",
            "RTP packets lost between the path's source and the server (sources that report it)",
            &by_path(&rows, |r| r.stats.source.map(|s| s.packets_lost)),
        )?;
        gauges(
            e,
            "sluice_path_jitter",
            "Interarrival jitter of the path's source, the largest over its tracks (sources that report it)",
            Some(&Unit::Seconds),
            &by_path(&rows, |r| r.stats.source.map(|s| s.jitter_seconds)),
        )?;
        let mut dropped = Vec::new();
        for r in &rows {
            for (reason, n) in &r.stats.sinks.dropped {
                dropped.push((
                    vec![("path", r.path.clone()), ("reason", (*reason).to_owned())],
                    *n,
                ));
            }
        }
        counters(
            e,
            "sluice_path_dropped",
            "RTP packets dropped for slow readers, by reason (queue_full, send_buffer_full)",
            &dropped,
        )?;
        let mut sessions: BTreeMap<(&str, &str), i64> =
            RTSP_TRANSPORTS.iter().map(|t| (("rtsp", *t), 0)).collect();
        for s in self.hub.sessions() {
            if !s.transport.is_empty() {
                *sessions.entry((s.protocol, s.transport)).or_default() += 1;
            }
        }
        let sessions: Vec<_> = sessions
            .into_iter()
            .map(|((p, t), n)| {
                (
                    vec![("protocol", p.to_owned()), ("transport", t.to_owned())],
                    n,
                )
            })
            .collect();
        gauges(
            e,
            "sluice_sessions",
            "Live sessions (readers and publishers) by protocol and transport",
            None,
            &sessions,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MetricsBuilder;
    use sluice_hub::registry::Claim;
    use sluice_hub::{EndReason, Presentation};

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    #[test]
    fn live_paths_have_series_with_help_and_type_and_ended_ones_vanish() {
        let hub = Arc::new(Hub::default());
        let s = hub.create_stream("cams/a", Presentation::from_sdp(SDP.as_bytes()).unwrap());
        hub.publish(hub.new_owner(), Claim::Exclusive, &s).unwrap();
        hub.set_ready(&s);
        let mut b = MetricsBuilder::new();
        b.collector(Box::new(PathCollector::new(hub.clone())));
        let m = b.build();
        let (text, _) = m.encode(None).unwrap();
        for want in [
            "# TYPE sluice_path_readers gauge",
            "sluice_path_readers{path=\"cams/a\",protocol=\"rtsp\"} 0",
            "sluice_path_ready{path=\"cams/a\"} 1",
            "sluice_path_publishers{path=\"cams/a\"} 1",
            "# TYPE sluice_path_bytes_in_total counter",
            "sluice_path_packets_in_total{path=\"cams/a\"} 0",
            "sluice_path_bytes_out_total{path=\"cams/a\"} 0",
            "# TYPE sluice_path_jitter_seconds gauge",
            "# TYPE sluice_path_dropped_total counter",
            "sluice_sessions{protocol=\"rtsp\",transport=\"udp\"} 0",
            "sluice_sessions{protocol=\"rtsp\",transport=\"multicast\"} 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(helps, types, "{text}");
        hub.end(&s, EndReason::SourceGone);
        let (text, _) = m.encode(None).unwrap();
        assert!(!text.contains("cams/a"), "{text}");
    }
}
