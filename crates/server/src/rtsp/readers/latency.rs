//! Ingest → egress latency: how long a packet spent in Sluice, from the moment it was
//! received from its source to the moment the send system call that carried it to a
//! reader returned. Recorded per send call, weighted by the packets it carried, into a
//! lock-free log-scale histogram striped by thread. Each [`crate::rtsp::Rtsp`] owns one
//! ([`crate::rtsp::Rtsp::egress_latency`]) and hands it to its reader path (the connections'
//! media queues and writers, and its reader sinks' UDP sends), so that servers sharing a
//! process measure apart; whoever exports it (the metrics endpoint) reads and resets it
//! with [`LatencyHistogram::take`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Buckets: 0 holds < 1 µs; bucket i ≥ 1 holds [2^((i-1)/4), 2^(i/4)) µs, up to ~4.1 s
/// (2^22 µs; the last bucket also takes anything longer). Wide enough that a saturated
/// server's latency is still measured, not clipped at the top bucket.
const BUCKETS: usize = 89;

/// Stripes of a histogram: each thread records into its own (see [`stripe_of_this_thread`]).
/// The threads that send media are the runtime's workers and the fan-out threads, one of
/// each per core: on up to four cores every one has a stripe to itself; on bigger machines
/// some share one, which only brings back some of the contention.
const STRIPES: usize = 8;

/// One thread's share of a histogram's counts, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    counts: [AtomicU64; BUCKETS],
}

/// A histogram of durations, in microseconds, with four buckets per octave.
///
/// Recorded after every send to a reader, from every thread that sends: with one set of
/// counters each send would take the counter's cache line from the core that last wrote
/// it (thousands of times a second at hundreds of readers). Each thread therefore counts
/// in a stripe of its own, and [`LatencyHistogram::take`] adds the stripes up.
#[derive(Debug)]
pub struct LatencyHistogram {
    stripes: [Stripe; STRIPES],
}

/// The stripe this thread records into: handed out round-robin at a thread's first
/// record, so the few sending threads get one each.
fn stripe_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<Option<usize>> = const { Cell::new(None) };
    }
    MINE.with(|mine| {
        mine.get().unwrap_or_else(|| {
            let stripe = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            mine.set(Some(stripe));
            stripe
        })
    })
}

/// Percentiles read from a histogram (bucket upper bounds, µs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Packets recorded.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Largest bucket used.
    pub max_us: f64,
}

fn bucket_of(us: f64) -> usize {
    if us < 1.0 {
        0
    } else {
        ((us.log2() * 4.0).floor() as usize + 1).min(BUCKETS - 1)
    }
}

fn upper_bound(bucket: usize) -> f64 {
    if bucket == 0 {
        1.0
    } else {
        2f64.powf(bucket as f64 / 4.0)
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            stripes: [const {
                Stripe {
                    counts: [const { AtomicU64::new(0) }; BUCKETS],
                }
            }; STRIPES],
        }
    }

    /// Records `packets` packets that took `d`.
    pub fn record(&self, d: Duration, packets: u64) {
        if packets == 0 {
            return;
        }
        let us = d.as_secs_f64() * 1e6;
        let stripe = &self.stripes[stripe_of_this_thread()];
        stripe.counts[bucket_of(us)].fetch_add(packets, Ordering::Relaxed);
    }

    /// Percentiles of what was recorded since the last `take`, and a reset.
    pub fn take(&self) -> Summary {
        let mut counts = [0u64; BUCKETS];
        for stripe in &self.stripes {
            for (sum, c) in counts.iter_mut().zip(&stripe.counts) {
                *sum += c.swap(0, Ordering::Relaxed);
            }
        }
        summarize(&counts)
    }

    /// What was recorded since the last `take` or `take_buckets`, bucket by bucket as
    /// (upper bound in µs, packets) in ascending order, and a reset: for an exporter that
    /// keeps running totals (a Prometheus histogram is cumulative).
    pub fn take_buckets(&self) -> Vec<(f64, u64)> {
        let mut counts = [0u64; BUCKETS];
        for stripe in &self.stripes {
            for (sum, c) in counts.iter_mut().zip(&stripe.counts) {
                *sum += c.swap(0, Ordering::Relaxed);
            }
        }
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| (upper_bound(i), c))
            .collect()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn summarize(counts: &[u64]) -> Summary {
    let total: u64 = counts.iter().sum();
    let at = |q: f64| -> f64 {
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i);
            }
        }
        upper_bound(counts.len() - 1)
    };
    let max = counts.iter().rposition(|&c| c > 0).map_or(0.0, upper_bound);
    Summary {
        count: total,
        p50_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        max_us: max,
    }
}

impl std::fmt::Display for Summary {
    /// `count=N p50_us=… p90_us=… p99_us=… max_us=…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "count={} p50_us={:.0} p90_us={:.0} p99_us={:.0} max_us={:.0}",
            self.count, self.p50_us, self.p90_us, self.p99_us, self.max_us
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_bucket_upper_bounds_within_a_fifth() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_micros(10), 98);
        h.record(Duration::from_micros(500), 1);
        h.record(Duration::from_millis(5), 1);
        let s = h.take();
        assert_eq!(s.count, 100);
        assert!(s.p50_us >= 10.0 && s.p50_us < 12.0, "{s}");
        assert!(s.p99_us >= 500.0 && s.p99_us < 600.0, "{s}");
        assert!(s.max_us >= 5000.0 && s.max_us < 6000.0, "{s}");
        assert_eq!(h.take().count, 0, "take resets");
        h.record(Duration::from_nanos(10), 3);
        assert_eq!(h.take().p99_us, 1.0);
        // A saturated server's ~1 s is measured, not clipped (the top bucket was ~78 ms).
        h.record(Duration::from_millis(900), 1);
        let s = h.take();
        assert!(s.max_us >= 900_000.0 && s.max_us < 1_100_000.0, "{s}");
        h.record(Duration::from_secs(10), 1);
        assert!(h.take().max_us >= 4_000_000.0);
    }

    #[test]
    fn records_from_many_threads_are_all_counted() {
        let h = LatencyHistogram::new();
        // More threads than stripes, so some share one; each records 10 µs 1,000 times and
        // 5 ms once.
        std::thread::scope(|s| {
            for _ in 0..STRIPES + 3 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        h.record(Duration::from_micros(10), 1);
                    }
                    h.record(Duration::from_millis(5), 1);
                });
            }
        });
        let s = h.take();
        assert_eq!(s.count, (STRIPES as u64 + 3) * 1_001, "{s}");
        assert!(s.p50_us >= 10.0 && s.p50_us < 12.0, "{s}");
        assert!(s.max_us >= 5000.0 && s.max_us < 6000.0, "{s}");
        assert_eq!(h.take().count, 0, "take resets every stripe");
    }
}
