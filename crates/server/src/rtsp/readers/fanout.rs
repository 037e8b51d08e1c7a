//! Delivery of one batch to a stream's sinks, spread over the machine's cores when there
//! are many sinks.
//!
//! Handing a frame to hundreds of readers is almost all kernel work (one `sendmmsg`
//! message or one `sendmsg` per reader), and one thread does it at one core's speed: at
//! 400 readers of a 4 Mb/s stream a frame takes several milliseconds, which is the added
//! latency of the last reader served. With many sinks the batch is cut into contiguous
//! shards, one per core; the calling thread serves the first and the pool's other threads
//! the others, and the call returns when all are done. So a delivery is one step (the
//! stream files a batch and moves its new sinks in just before it), and each sink still
//! sees its batches in order. The same threads run the big deliveries themselves, off the
//! runtime's workers ([`spawn`], [`crate::rtsp::readers::outbox`]).
//!
//! The pool is `rayon-core`'s (scoped, borrow-friendly fork-join): the shards borrow the
//! batch and its UDP plan, nothing is copied or reference-counted per shard.

use std::sync::{Arc, Mutex, OnceLock};

use crate::rtsp::readers::egress::{Egress, UdpPlan};
use crate::rtsp::readers::group::{Reader, SinkId};
use crate::rtsp::readers::udp_send::Sent;
use sluice_hub::MediaPacket;

/// Fewest sinks per shard: below this, a second thread costs more (its wake-up, tens of
/// microseconds) than it saves.
pub const MIN_SINKS_PER_SHARD: usize = 128;

/// Fewest sinks a delivery is cut into shards for (two shards' worth).
pub const SHARDED_SINKS: usize = 2 * MIN_SINKS_PER_SHARD;

/// The machine's cores: how many shards a big delivery is cut into.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The fan-out threads, one per core: they run the offloaded deliveries
/// ([`crate::rtsp::readers::outbox`]) and the shards of big ones. `None` if the threads could not be
/// started; everything is then delivered on the caller's thread.
fn pool() -> Option<&'static rayon_core::ThreadPool> {
    static POOL: OnceLock<Option<rayon_core::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon_core::ThreadPoolBuilder::new()
            .num_threads(cores())
            .thread_name(|i| format!("sluice-fanout-{i}"))
            // Nobody waits for these threads: they write to TCP readers directly.
            .start_handler(|_| crate::rtsp::readers::direct_budget::exempt_this_thread())
            // Without a handler, a panic in a job aborts the process; the job's own
            // guard (see `spawn`) has already put its stream right.
            .panic_handler(|_| tracing::error!("a fan-out job panicked"))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no fan-out threads: delivering on the sources' threads"))
            .ok()
    })
    .as_ref()
}

/// Runs `job` on a fan-out thread, or at once on this one if there are none.
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    match pool() {
        Some(pool) => pool.spawn(job),
        None => job(),
    }
}

/// How many shards `sinks` sinks are cut into, given `threads` threads in all.
pub fn shard_count(sinks: usize, threads: usize) -> usize {
    (sinks / MIN_SINKS_PER_SHARD).clamp(1, threads.max(1))
}

/// Hands `packets` (planned as `plan`) to every sink; returns what went out over UDP.
///
/// Runs on the caller's thread, and with many sinks on the other fan-out threads too. A
/// big delivery is not run on a runtime worker: the stream hands it to a fan-out thread
/// ([`crate::rtsp::readers::outbox`]). Handing the worker's other tasks to another thread instead
/// (`tokio::task::block_in_place`) cut PLAY p99 at 10,000 UDP readers as well, but cost
/// 17–27 % more CPU at 1,000 (4 Mb/s) to 3,000 (200 kb/s) UDP readers: the context
/// switches of the server went from ~800 to 15,000–29,000 a second.
pub fn deliver(
    sinks: &[(SinkId, Arc<dyn Reader>)],
    packets: &[MediaPacket],
    plan: &UdpPlan<'_>,
) -> Sent {
    match pool().filter(|_| cores() >= 2 && sinks.len() >= SHARDED_SINKS) {
        Some(pool) => sharded(pool, sinks, packets, plan),
        None => serve(sinks, packets, plan),
    }
}

/// Serves `sinks` in a shard per core, the first on the calling thread and the others on
/// `pool` (its other threads, when the caller is one of them).
fn sharded(
    pool: &rayon_core::ThreadPool,
    sinks: &[(SinkId, Arc<dyn Reader>)],
    packets: &[MediaPacket],
    plan: &UdpPlan<'_>,
) -> Sent {
    let shards = shard_count(sinks.len(), cores());
    let mut parts = sinks.chunks(sinks.len().div_ceil(shards));
    let Some(first) = parts.next() else {
        return Sent::default();
    };
    let total = Mutex::new(Sent::default());
    pool.in_place_scope(|scope| {
        for part in parts {
            let total = &total;
            scope.spawn(move |_| {
                let sent = serve(part, packets, plan);
                *total.lock().unwrap_or_else(|e| e.into_inner()) += sent;
            });
        }
        let sent = serve(first, packets, plan);
        *total.lock().unwrap_or_else(|e| e.into_inner()) += sent;
    });
    total.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Serves one shard on the calling thread.
fn serve(sinks: &[(SinkId, Arc<dyn Reader>)], packets: &[MediaPacket], plan: &UdpPlan<'_>) -> Sent {
    let mut egress = Egress::new(packets, plan).for_sinks(sinks.len());
    for (i, (_, sink)) in sinks.iter().enumerate() {
        // Two stages ahead (crate::rtsp::readers::prefetch): the sink itself, then what it points to.
        if let Some((_, far)) = sinks.get(i + 2 * PREFETCH_AHEAD) {
            crate::rtsp::readers::prefetch::prefetch(&**far);
        }
        if let Some((_, near)) = sinks.get(i + PREFETCH_AHEAD) {
            near.prefetch();
        }
        egress.begin_sink();
        sink.handle_batch(&mut egress);
    }
    egress.finish_noting(|i, refund| {
        if let Some((_, sink)) = sinks.get(i) {
            sink.handle_refused(refund);
        }
    })
}

/// How many sinks ahead of the one served the fan-out hints the caches: far enough for a
/// memory load (~100 ns) to land while the sinks in between are served (µs each).
const PREFETCH_AHEAD: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_hub::EndReason;
    use sluice_rtp::packet::RtpHeader;
    use std::time::Instant;

    /// Records the sequence numbers it is handed, on which thread, and each prefetch hint
    /// with how many packets it had been handed by then.
    #[derive(Default)]
    struct Recording {
        seqs: Mutex<Vec<u16>>,
        threads: Mutex<Vec<std::thread::ThreadId>>,
        prefetched: Mutex<Vec<usize>>,
    }
    impl Reader for Recording {
        fn prefetch(&self) {
            let seen = self.seqs.lock().unwrap().len();
            self.prefetched.lock().unwrap().push(seen);
        }
        fn handle_packet(&self, p: &MediaPacket) {
            self.seqs.lock().unwrap().push(p.header.sequence);
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
        }
        fn handle_end(&self, _: EndReason) {}
    }

    fn batch(first: u16, n: u16) -> Vec<MediaPacket> {
        (first..first + n)
            .map(|sequence| MediaPacket {
                track: 0,
                data: Bytes::from_static(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1]),
                header: RtpHeader {
                    payload_type: 96,
                    marker: false,
                    sequence,
                    timestamp: 0,
                    ssrc: 3,
                    payload_offset: 12,
                },
                received_at: Instant::now(),
            })
            .collect()
    }

    /// Delivers `batches` batches of `per_batch` packets (sequence numbers counting up from
    /// 0) to `sinks` recording sinks; returns the sinks.
    fn deliver_to_recordings(sinks: usize, batches: u16, per_batch: u16) -> Vec<Arc<Recording>> {
        let recs: Vec<Arc<Recording>> =
            (0..sinks).map(|_| Arc::new(Recording::default())).collect();
        let list: Vec<(SinkId, Arc<dyn Reader>)> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| (SinkId::for_test(i as u64), r.clone() as Arc<dyn Reader>))
            .collect();
        for b in 0..batches {
            let packets = batch(b * per_batch, per_batch);
            let mut joined = Vec::new();
            let plan = UdpPlan::new(&packets, false, &mut joined);
            deliver(&list, &packets, &plan);
        }
        recs
    }

    #[test]
    fn many_sinks_get_every_batch_once_in_order_across_threads() {
        let recs = deliver_to_recordings(3 * MIN_SINKS_PER_SHARD, 20, 4);
        let want: Vec<u16> = (0..80).collect();
        for r in &recs {
            assert_eq!(*r.seqs.lock().unwrap(), want);
        }
        let threads: std::collections::HashSet<_> = recs
            .iter()
            .flat_map(|r| r.threads.lock().unwrap().clone())
            .collect();
        if pool().is_some() && cores() >= 2 {
            assert!(threads.len() >= 2, "the shards ran on one thread");
        }
    }

    #[test]
    fn each_sink_but_the_first_few_is_hinted_once_before_its_batch() {
        let recs = deliver_to_recordings(10, 3, 2);
        for (i, r) in recs.iter().enumerate() {
            let hints = r.prefetched.lock().unwrap().clone();
            if i < PREFETCH_AHEAD {
                assert!(hints.is_empty(), "sink {i} is served first: {hints:?}");
            } else {
                // One hint per batch, each before that batch reached the sink.
                assert_eq!(hints, vec![0, 2, 4], "sink {i}");
            }
            assert_eq!(r.seqs.lock().unwrap().len(), 6);
        }
    }

    #[test]
    fn shards_only_when_each_has_enough_sinks() {
        assert_eq!(shard_count(10, 2), 1);
        assert_eq!(shard_count(2 * MIN_SINKS_PER_SHARD - 1, 2), 1);
        assert_eq!(shard_count(2 * MIN_SINKS_PER_SHARD, 2), 2);
        assert_eq!(shard_count(100_000, 2), 2);
        assert_eq!(shard_count(100_000, 1), 1);
        assert_eq!(shard_count(3 * MIN_SINKS_PER_SHARD, 8), 3);
    }
}
