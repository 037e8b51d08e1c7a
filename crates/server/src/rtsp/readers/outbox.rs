//! The batches a stream has handed to the fan-out threads and they have not yet
//! delivered, in order.
//!
//! A stream with many sinks does not deliver on its source's thread: a live source runs on
//! a runtime worker, and a delivery to thousands of readers takes milliseconds in which
//! every task queued on that worker (other sessions' requests, PLAY replies) would wait.
//! The source files the batch here instead and goes on; one job at a time on the fan-out
//! pool ([`crate::rtsp::readers::group::spawn`]) takes the batches out and delivers them, so each sink
//! still sees them in order. The queue is bounded: a source that outruns its fan-out waits
//! for room, as it waited for each delivery before.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use sluice_hub::MediaPacket;

/// Most batches waiting for the fan-out threads before the source waits for room: a
/// second or so of a 30 fps stream's frames and its audio, so a source never waits unless
/// its fan-out falls behind for good.
pub const MAX_WAITING: usize = 64;

/// Emptied batches kept for reuse, so that offloading a batch allocates nothing.
const SPARES: usize = 4;

/// A stream's batches on their way to the fan-out threads.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<State>,
    /// Signalled when a batch has been delivered or the job stops.
    progress: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Batches filed and not yet taken by the job, oldest first.
    waiting: VecDeque<Vec<MediaPacket>>,
    /// Whether a job is delivering (or about to deliver) this outbox's batches.
    busy: bool,
    /// Emptied batch buffers, for [`Outbox::spare`].
    spares: Vec<Vec<MediaPacket>>,
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a job is delivering this outbox's batches. While it is, every batch must go
    /// through the outbox, or it could overtake the ones waiting; once it is not, the last
    /// delivery has returned.
    pub fn is_busy(&self) -> bool {
        self.state().busy
    }

    /// An empty buffer for the next batch (a reused one when there is one).
    pub fn spare(&self) -> Vec<MediaPacket> {
        self.state().spares.pop().unwrap_or_default()
    }

    /// Files `batch` after the ones waiting. Returns whether the caller must start the job
    /// that delivers them (none is running).
    pub fn post(&self, batch: Vec<MediaPacket>) -> bool {
        let mut state = self.state();
        state.waiting.push_back(batch);
        !std::mem::replace(&mut state.busy, true)
    }

    /// For the job: takes back `delivered` (the batch it last delivered, if any) and hands
    /// out the next one, joined with the ones behind it up to `max_packets` packets in all:
    /// a fan-out that falls behind sends bigger batches instead of falling further behind.
    /// `None` ends the job: the outbox is idle until the next [`Outbox::post`] starts
    /// another.
    pub fn next(
        &self,
        delivered: Option<Vec<MediaPacket>>,
        max_packets: usize,
    ) -> Option<Vec<MediaPacket>> {
        // Dropping the packets' buffers (reference counts) outside the lock.
        let delivered = delivered.map(|mut batch| {
            batch.clear();
            batch
        });
        let mut state = self.state();
        if let Some(batch) = delivered {
            if state.spares.len() < SPARES {
                state.spares.push(batch);
            }
        }
        let mut next = state.waiting.pop_front();
        match &mut next {
            None => state.busy = false,
            Some(first) => {
                while state
                    .waiting
                    .front()
                    .is_some_and(|b| first.len() + b.len() <= max_packets)
                {
                    let Some(mut more) = state.waiting.pop_front() else {
                        break;
                    };
                    first.append(&mut more);
                    if state.spares.len() < SPARES {
                        state.spares.push(more);
                    }
                }
            }
        }
        drop(state);
        self.progress.notify_all();
        next
    }

    /// The job ended without taking its batches (it panicked): they are dropped, and the
    /// outbox is idle, so that its stream's waits end and later batches go out.
    pub fn abandon(&self) {
        let mut state = self.state();
        let lost = state.waiting.len();
        state.waiting.clear();
        state.busy = false;
        drop(state);
        self.progress.notify_all();
        tracing::error!(batches = lost, "fan-out job failed: batches dropped");
    }

    /// Whether [`Outbox::wait_for_room`] would wait.
    pub fn is_full(&self) -> bool {
        self.state().waiting.len() >= MAX_WAITING
    }

    /// Waits until fewer than [`MAX_WAITING`] batches wait.
    pub fn wait_for_room(&self) {
        let mut state = self.state();
        while state.waiting.len() >= MAX_WAITING && state.busy {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until every batch filed has been delivered and the job has stopped.
    pub fn wait_until_idle(&self) {
        let mut state = self.state();
        while state.busy {
            state = self.progress.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_rtp::packet::RtpHeader;

    /// `n` packets numbered from `first`.
    fn batch(first: u16, n: u16) -> Vec<MediaPacket> {
        (first..first + n)
            .map(|sequence| MediaPacket {
                track: 0,
                data: Bytes::new(),
                header: RtpHeader {
                    payload_type: 96,
                    marker: false,
                    sequence,
                    timestamp: 0,
                    ssrc: 0,
                    payload_offset: 12,
                },
                received_at: std::time::Instant::now(),
            })
            .collect()
    }

    fn seqs(batch: &[MediaPacket]) -> Vec<u16> {
        batch.iter().map(|p| p.header.sequence).collect()
    }

    #[test]
    fn the_first_post_starts_a_job_which_takes_the_batches_in_order_then_stops() {
        let o = Outbox::default();
        assert!(!o.is_busy());
        assert!(o.post(batch(0, 2)), "the first post starts the job");
        assert!(!o.post(batch(2, 1)), "the job runs: no second one");
        assert!(o.is_busy());
        let first = o.next(None, 2).unwrap();
        assert_eq!(
            seqs(&first),
            [0, 1],
            "oldest first, alone when they would not fit"
        );
        let second = o.next(Some(first), 2).unwrap();
        assert_eq!(seqs(&second), [2]);
        assert!(o.is_busy(), "busy while the last batch is delivered");
        assert!(o.next(Some(second), 2).is_none());
        assert!(!o.is_busy());
        assert!(o.spare().capacity() >= 1, "delivered buffers are reused");
        assert!(o.post(Vec::new()), "idle again: a new job");
    }

    #[test]
    fn a_job_behind_its_source_joins_the_waiting_batches_up_to_the_limit() {
        let o = Outbox::default();
        o.post(batch(0, 3));
        for first in 3..8 {
            o.post(batch(first, 1));
        }
        let joined = o.next(None, 5).unwrap();
        assert_eq!(seqs(&joined), [0, 1, 2, 3, 4]);
        let rest = o.next(Some(joined), 5).unwrap();
        assert_eq!(seqs(&rest), [5, 6, 7]);
        assert!(o.next(Some(rest), 5).is_none());
    }

    #[test]
    fn waits_end_when_the_job_delivers_or_gives_up() {
        let o = std::sync::Arc::new(Outbox::default());
        for _ in 0..MAX_WAITING {
            o.post(Vec::new());
        }
        assert!(o.is_full());
        let job = {
            let o = o.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                let batch = o.next(None, usize::MAX);
                std::thread::sleep(std::time::Duration::from_millis(20));
                drop(batch);
                o.abandon();
            })
        };
        o.wait_for_room();
        assert!(!o.is_full());
        o.wait_until_idle();
        assert!(!o.is_busy());
        job.join().unwrap();
    }
}
