//! Hooks: the server's events told to the outside world, never at the media's expense.
//!
//! One dispatcher task reads the hub's event bus ([`sluice_hub::EventBus`]) and offers
//! each event to every hook that wants it. Each hook has its own bounded queue and its
//! own worker, so a slow or dead receiver only fills (and then overflows, counted) its
//! own queue: the bus, the media and the other hooks go on.
//!
//! - [`webhook`]: `[[hooks.webhook]]` — a signed JSON POST per event, retried with
//!   exponential backoff and jitter on 5xx, 429, timeouts and connection errors.
//! - [`command`]: `[[hooks.command]]` — a program per event (argv, no shell), the event
//!   JSON on its standard input, killed after its timeout.
//!
//! Outcomes are counted per hook (`delivered`, `retried`, `dropped`, `failed`) and read
//! at scrape time through [`Hooks::collector`] (`sluice_hook_deliveries_total`).

pub mod command;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use sluice_hub::{Hub, Record};
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::Config;

/// Why the hooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// The HTTPS client could not be set up.
    #[error("cannot set up the webhooks' HTTPS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// Deliveries of one hook by outcome; relaxed atomics, read at scrape time.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Events the receiver accepted (2xx) or the command ran for with exit status 0.
    pub delivered: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Events dropped because the hook's queue was full (or the bus lost them).
    pub dropped: AtomicU64,
    /// Events given up on: attempts exhausted, a refusal (4xx), a failed command.
    pub failed: AtomicU64,
}

impl Outcomes {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (outcome label, count), in a fixed order.
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("delivered", self.delivered.load(Ordering::Relaxed)),
            ("retried", self.retried.load(Ordering::Relaxed)),
            ("dropped", self.dropped.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// A hook as the dispatcher sees it: its filter and its bounded queue.
#[derive(Debug)]
pub(crate) struct Inlet {
    label: String,
    /// Event names it wants; empty: all.
    events: Vec<String>,
    queue: mpsc::Sender<Arc<Record>>,
    outcomes: Arc<Outcomes>,
}

impl Inlet {
    pub(crate) fn new(
        label: String,
        events: Vec<String>,
        queue: mpsc::Sender<Arc<Record>>,
        outcomes: Arc<Outcomes>,
    ) -> Inlet {
        Inlet {
            label,
            events,
            queue,
            outcomes,
        }
    }

    fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == name)
    }

    /// Queues `record` without waiting: a full (or closed) queue drops it, counted.
    pub(crate) fn offer(&self, record: &Arc<Record>) {
        if !self.wants(record.event.name()) {
            return;
        }
        if self.queue.try_send(record.clone()).is_err() {
            Outcomes::add(&self.outcomes.dropped);
            warn!(hook = %self.label, event = record.event.name(), id = record.id, "hook queue full: event dropped");
        }
    }
}

/// The running hooks: their counters (for metrics) and the tasks that serve them.
#[derive(Debug, Default)]
pub struct Hooks {
    counters: Vec<(String, Arc<Outcomes>)>,
}

impl Hooks {
    /// Starts a worker per configured hook and the dispatcher that feeds them from
    /// `hub`'s event bus, from the oldest event it holds (so events of the start-up are
    /// not missed). Must run inside a tokio runtime. Nothing is spawned without hooks.
    pub fn start(config: &Config, hub: Arc<Hub>) -> Result<Hooks, HooksError> {
        let h = &config.hooks;
        let mut inlets = Vec::new();
        let mut counters = Vec::new();
        if !h.webhook.is_empty() {
            let client = webhook::client()?;
            for (i, w) in h.webhook.iter().enumerate() {
                let label = w.label(i);
                let outcomes = Arc::new(Outcomes::default());
                let (tx, rx) = mpsc::channel(w.queue);
                let target = webhook::Target::new(label.clone(), w, outcomes.clone());
                tokio::spawn(webhook::deliver(target, rx, client.clone()));
                inlets.push(Inlet::new(
                    label.clone(),
                    w.events.clone(),
                    tx,
                    outcomes.clone(),
                ));
                counters.push((label, outcomes));
            }
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(h.max_concurrent_commands));
        for (i, c) in h.command.iter().enumerate() {
            let label = c.label(i);
            let outcomes = Arc::new(Outcomes::default());
            let (tx, rx) = mpsc::channel(c.queue);
            let hook = Arc::new(command::CommandHook::new(
                label.clone(),
                c,
                outcomes.clone(),
            ));
            tokio::spawn(command::run_queue(hook, rx, slots.clone()));
            inlets.push(Inlet::new(
                label.clone(),
                c.events.clone(),
                tx,
                outcomes.clone(),
            ));
            counters.push((label, outcomes));
        }
        if !inlets.is_empty() {
            tokio::spawn(dispatch(hub, inlets));
        }
        Ok(Hooks { counters })
    }

    /// The metrics collector of every hook's outcomes (`sluice_hook_deliveries_total`).
    pub fn collector(&self) -> HookCollector {
        HookCollector {
            counters: self.counters.clone(),
        }
    }

    /// Each hook's label and outcomes.
    pub fn outcomes(&self) -> &[(String, Arc<Outcomes>)] {
        &self.counters
    }
}

/// Reads the bus and offers every event to every hook, in order, never waiting on one.
async fn dispatch(hub: Arc<Hub>, inlets: Vec<Inlet>) {
    let mut last = 0;
    loop {
        let since = hub.events().since(last);
        if since.missed > 0 {
            warn!(
                missed = since.missed,
                "hooks fell behind the event bus: events lost"
            );
            for i in &inlets {
                i.outcomes
                    .dropped
                    .fetch_add(since.missed, Ordering::Relaxed);
            }
        }
        for record in &since.records {
            last = record.id;
            for i in &inlets {
                i.offer(record);
            }
        }
        hub.events().next_after(last).await;
    }
}

/// `sluice_hook_deliveries_total{target, outcome}`: one series per configured hook and
/// outcome (bounded by the configuration).
#[derive(Debug)]
pub struct HookCollector {
    counters: Vec<(String, Arc<Outcomes>)>,
}

impl Collector for HookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.counters.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "sluice_hook_deliveries",
            "Hook deliveries by hook (configured name or index) and outcome: delivered, retried (attempts tried again), dropped (queue full), failed (given up)",
            None,
            MetricType::Counter,
        )?;
        for (target, outcomes) in &self.counters {
            for (outcome, n) in outcomes.snapshot() {
                let labels = vec![("target", target.as_str()), ("outcome", outcome)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_hub::ServerEvent;

    fn record(id: u64, name: &str) -> Arc<Record> {
        let event = match name {
            "path_ready" => ServerEvent::PathReady {
                path: "a".into(),
                source: 1,
            },
            _ => ServerEvent::ServerStarted {
                version: "x".into(),
            },
        };
        Arc::new(Record {
            id,
            time_ms: 0,
            event,
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = mpsc::channel(3);
        let outcomes = Arc::new(Outcomes::default());
        let inlet = Inlet::new("t".into(), vec!["path_ready".into()], tx, outcomes.clone());
        for id in 1..=5 {
            inlet.offer(&record(id, "path_ready"));
        }
        inlet.offer(&record(6, "server_started"));
        assert_eq!(outcomes.dropped.load(Ordering::Relaxed), 2);
        let got: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.id)
            .collect();
        assert_eq!(
            got,
            [1, 2, 3],
            "the oldest wait, the filter keeps others out"
        );
    }

    #[test]
    fn the_collector_has_one_series_per_hook_and_outcome() {
        let outcomes = Arc::new(Outcomes::default());
        outcomes.delivered.fetch_add(2, Ordering::Relaxed);
        let hooks = Hooks {
            counters: vec![("cams".into(), outcomes)],
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(hooks.collector()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("# TYPE sluice_hook_deliveries counter"),
            "{out}"
        );
        assert!(
            out.contains("sluice_hook_deliveries_total{target=\"cams\",outcome=\"delivered\"} 2"),
            "{out}"
        );
        assert_eq!(out.matches("sluice_hook_deliveries_total{").count(), 4);
    }
}
