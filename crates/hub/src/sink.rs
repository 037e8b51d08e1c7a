//! What a stream hands its output to.
//!
//! A sink (an RTSP reader group, a recorder, an HLS muxer, a WebRTC peer group) sees a
//! stream as batches of shared packets and one end with its reason: two methods, nothing
//! about sockets, shards or threads. It must never block the source: it owns a bounded
//! queue and decides itself what happens when it is full (drop, disconnect, skip to the
//! next keyframe).
//!
//! The server's RTSP fast path sits behind this trait as one *reader-group* sink per path
//! (`crates/server/src/readers/group.rs`): its `on_batch` plans the batch once (UDP runs for
//! `sendmmsg`/GSO, TCP `$` framing), then fans it out to its readers on the fan-out shards
//! and offload threads, with the egress accounting, refunds and prefetch hints; the stream
//! knows the whole group as one sink.

use crate::packet::{Batch, EndReason};
use crate::stats::SinkStats;

/// A consumer of a stream's batches.
pub trait Sink: Send + Sync {
    /// The next batch of packets (one frame, or several; see [`crate::batcher`]), in
    /// stream order. Every batch reaches every subscribed sink as the same shared buffers.
    /// Must not block.
    fn on_batch(&self, batch: &Batch);

    /// The stream ended; no batch follows.
    fn on_end(&self, reason: EndReason);

    /// The source's media reached its end but the stream goes on (an on-demand file played
    /// to its end waits for the next PLAY): RTSP readers send BYE. Provided, a no-op: only
    /// sinks that tell their peers care.
    fn on_end_of_media(&self) {}

    /// What this sink serves: its readers by protocol and transport, packets and bytes
    /// out, drops by reason (see [`SinkStats`]). Read at API request and metrics scrape
    /// time, never per packet. Provided, reporting nothing: a sink without readers of its
    /// own (a recorder) need not say anything.
    fn stats(&self) -> SinkStats {
        SinkStats::default()
    }

    /// Room left in this sink's bounded queues, for a source that can wait instead of
    /// overrunning them (a recording played back as fast as its reader takes it, ONVIF
    /// `Rate-Control: no`). Asked per frame by such sources only, never by live ones.
    /// Provided: None, no bound to report.
    fn room(&self) -> Option<Room> {
        None
    }
}

/// Room left in a sink's queue (see [`Sink::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Packets it can take now.
    pub free: usize,
    /// Packets it holds at most.
    pub capacity: usize,
}

impl Room {
    /// The tighter of two rooms (the one with less free).
    pub fn min(self, other: Room) -> Room {
        if other.free < self.free {
            other
        } else {
            self
        }
    }
}

impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    fn on_batch(&self, batch: &Batch) {
        (**self).on_batch(batch);
    }

    fn on_end(&self, reason: EndReason) {
        (**self).on_end(reason);
    }

    fn on_end_of_media(&self) {
        (**self).on_end_of_media();
    }

    fn stats(&self) -> SinkStats {
        (**self).stats()
    }

    fn room(&self) -> Option<Room> {
        (**self).room()
    }
}
