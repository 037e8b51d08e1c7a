//! A source's handle on its path: the claim it holds, the batcher that decides when its
//! packets go out, and the stream (a [`Sink`]) they go to.
//!
//! Every kind of source (an RTSP publisher, a pull, a file, later WHIP or RTMP) pushes
//! packets through one of these instead of running its own batching in its read loop:
//! - per read: [`SourceHandle::hold`] while more input is at hand, [`SourceHandle::push`]
//!   each packet, [`SourceHandle::release`] once the input at hand is used up;
//! - between reads: wait at most until [`SourceHandle::poll_timeout`], and call
//!   [`SourceHandle::handle_timeout`] when it passes;
//! - a file source: [`SourceHandle::flush`] after each sample;
//! - at the end: [`SourceHandle::end`], then end the claim in the registry.

use std::time::{Duration, Instant};

use crate::batcher::Batcher;
use crate::packet::{Batch, EndReason, MediaPacket};
use crate::registry::PathClaim;
use crate::sink::Sink;

/// A source's claim on its path and the way its packets go to the path's stream.
#[derive(Debug)]
pub struct SourceHandle<S: Sink> {
    claim: PathClaim,
    stream: S,
    batcher: Batcher,
    /// The batch handed to the stream, kept for its allocation.
    batch: Batch,
}

impl<S: Sink> SourceHandle<S> {
    /// A handle for the source holding `claim`, whose packets `batcher` cuts into the
    /// batches handed to `stream`.
    pub fn new(claim: PathClaim, stream: S, batcher: Batcher) -> SourceHandle<S> {
        let batch = Batch::with_capacity(batcher.max_batch().min(crate::batcher::MAX_PENDING));
        SourceHandle {
            claim,
            stream,
            batcher,
            batch,
        }
    }

    /// The source's claim, for the registry.
    pub fn claim(&self) -> &PathClaim {
        &self.claim
    }

    /// The stream the batches go to.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The batcher, e.g. to set its window.
    pub fn batcher_mut(&mut self) -> &mut Batcher {
        &mut self.batcher
    }

    /// A packet the source received (input at `now`); the batches it completes go out.
    pub fn push(&mut self, now: Instant, packet: MediaPacket) {
        self.batcher.push(now, packet);
        self.send();
    }

    /// Input at `now` that completed no packet: the pause timer runs from here.
    pub fn note_input(&mut self, now: Instant) {
        self.batcher.note_input(now);
    }

    /// More input is at hand: frames that end are collected until [`SourceHandle::release`].
    pub fn hold(&mut self) {
        self.batcher.hold();
    }

    /// The input at hand is used up: the frames held go out together.
    pub fn release(&mut self) {
        self.batcher.release();
        self.send();
    }

    /// Everything collected goes out now, whatever the frames.
    pub fn flush(&mut self) {
        self.batcher.flush();
        self.send();
    }

    /// Everything collected goes out if its first packet is `max_age` old at `now`.
    pub fn flush_stale(&mut self, now: Instant, max_age: Duration) {
        self.batcher.flush_stale(now, max_age);
        self.send();
    }

    /// When to call [`SourceHandle::handle_timeout`], if anything waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.batcher.poll_timeout()
    }

    /// The source's timer fired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.batcher.handle_timeout(now);
        self.send();
    }

    /// The source is done: what it collected goes out, then the stream's end. Returns the
    /// claim, for [`crate::Registry::end`].
    pub fn end(mut self, reason: EndReason) -> PathClaim {
        self.flush();
        self.stream.on_end(reason);
        self.claim
    }

    /// Hands every ready batch to the stream.
    fn send(&mut self) {
        while let Some(packets) = self.batcher.next_batch() {
            self.batch.extend(packets);
            self.stream.on_batch(&self.batch);
            self.batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Claim, Owner, Registry};
    use bytes::Bytes;
    use sluice_rtp::packet::RtpHeader;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<u16>>>,
        end: Mutex<Option<EndReason>>,
    }

    impl Sink for Recorder {
        fn on_batch(&self, batch: &Batch) {
            let seqs = batch.packets().iter().map(|p| p.header.sequence).collect();
            self.batches.lock().unwrap().push(seqs);
        }
        fn on_end(&self, reason: EndReason) {
            *self.end.lock().unwrap() = Some(reason);
        }
    }

    fn pkt(seq: u16, ts: u32, marker: bool, at: Instant) -> MediaPacket {
        MediaPacket {
            track: 0,
            header: RtpHeader {
                payload_type: 96,
                marker,
                sequence: seq,
                timestamp: ts,
                ssrc: 1,
                payload_offset: 12,
            },
            data: Bytes::from_static(&[0x80; 16]),
            received_at: at,
        }
    }

    #[test]
    fn a_source_pushes_frames_through_its_handle_and_ends_its_claim() {
        let mut registry: Registry<Arc<Recorder>> = Registry::new();
        let stream = Arc::new(Recorder::default());
        let published = registry
            .publish("cams/a", Owner(1), Claim::Exclusive, stream.clone())
            .unwrap();
        let mut source =
            SourceHandle::new(published.claim, stream.clone(), Batcher::new(Some(0), 256));
        registry.set_ready(source.claim());
        let t0 = Instant::now();
        // A read holding two frames and the start of a third.
        source.hold();
        source.push(t0, pkt(1, 0, true, t0));
        source.push(t0, pkt(2, 3000, true, t0));
        source.push(t0, pkt(3, 6000, false, t0));
        assert!(stream.batches.lock().unwrap().is_empty());
        source.release();
        assert_eq!(*stream.batches.lock().unwrap(), vec![vec![1, 2]]);
        // The rest of the frame does not come: the timer sends what there is.
        let due = source.poll_timeout().unwrap();
        source.handle_timeout(due);
        assert_eq!(stream.batches.lock().unwrap().last(), Some(&vec![3]));
        source.push(t0, pkt(4, 9000, false, t0));
        let claim = source.end(EndReason::SourceGone);
        assert_eq!(stream.batches.lock().unwrap().last(), Some(&vec![4]));
        assert_eq!(*stream.end.lock().unwrap(), Some(EndReason::SourceGone));
        assert!(registry.end(&claim, EndReason::SourceGone).is_some());
        assert!(registry.is_empty());
    }
}
