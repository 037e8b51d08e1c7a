//! The interleaved-media queue of one RTSP connection: sinks push a whole batch (a
//! frame's packets) under one lock and wake the connection's writer once, which then
//! writes the batch with one vectored write. A tokio channel would wake the writer per
//! packet, and at hundreds of readers those wake-ups cost more than the writes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::presentation::MAX_TRACKS;
use crate::stream::MediaPacket;

/// Per track: the interleaved RTP channel a reader gets it on, or [`NO_CHANNEL`].
pub type ChannelMap = [u8; MAX_TRACKS];

/// In a [`ChannelMap`]: the reader does not get this track.
pub const NO_CHANNEL: u8 = 0xff;

/// The channel `track` goes out on, if the reader gets it.
pub fn channel_of(channels: &ChannelMap, track: usize) -> Option<u8> {
    channels.get(track).copied().filter(|c| *c != NO_CHANNEL)
}

/// An item for a connection's media writer.
#[derive(Debug)]
pub enum TcpOut {
    /// One interleaved frame.
    Frame {
        /// Interleaved channel.
        channel: u8,
        /// Frame payload (an RTP or RTCP packet).
        data: Bytes,
        /// When the packet was received from its source (for the latency histogram).
        received_at: Option<Instant>,
    },
    /// A batch of a stream's packets (shared by every reader of the batch: one
    /// reference count per reader, not per packet), each sent on its track's channel.
    Batch {
        /// The packets, in order.
        packets: Arc<[MediaPacket]>,
        /// Channel per track; packets of tracks without one are skipped.
        channels: ChannelMap,
        /// How many of the packets have a channel (counted once, by the sink).
        frames: usize,
    },
    /// Close the connection after what is queued.
    Close,
}

impl TcpOut {
    /// Interleaved frames this item writes (what the queue's capacity counts).
    pub fn frames(&self) -> usize {
        match self {
            TcpOut::Frame { .. } => 1,
            TcpOut::Batch { frames, .. } => *frames,
            TcpOut::Close => 0,
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` items.
    Full,
    /// The writer is gone.
    Closed,
}

/// A bounded queue of [`TcpOut`] with a single consumer (the connection's writer).
#[derive(Debug)]
pub struct MediaQueue {
    items: Mutex<Queued>,
    notify: Notify,
    capacity: usize,
    closed: AtomicBool,
}

/// The queued items and the interleaved frames they hold.
#[derive(Debug, Default)]
struct Queued {
    items: VecDeque<TcpOut>,
    frames: usize,
}

/// Capacity kept when a drained queue shrinks (a GOP catch-up can grow it a lot).
const KEEP: usize = 64;

impl MediaQueue {
    /// An empty queue of at most `capacity` items.
    pub fn new(capacity: usize) -> MediaQueue {
        MediaQueue {
            items: Mutex::new(Queued::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues items in order, all or as many as fit (capacity counts interleaved frames;
    /// an item that would overflow it is not queued); wakes the writer once. Returns how
    /// many items were queued, or how many were and why the rest could not be.
    pub fn push_all(
        &self,
        items: impl IntoIterator<Item = TcpOut>,
    ) -> Result<usize, (usize, PushError)> {
        if self.closed.load(Ordering::Acquire) {
            return Err((0, PushError::Closed));
        }
        let mut n = 0;
        let mut items = items.into_iter();
        let full = {
            let mut q = self.lock();
            loop {
                let Some(item) = items.next() else {
                    break false;
                };
                let frames = item.frames();
                if q.frames + frames > self.capacity && !q.items.is_empty() {
                    break true;
                }
                q.frames += frames;
                q.items.push_back(item);
                n += 1;
            }
        };
        if n > 0 {
            self.notify.notify_one();
        }
        if full {
            Err((n, PushError::Full))
        } else {
            Ok(n)
        }
    }

    /// Queues one item.
    pub fn push(&self, item: TcpOut) -> Result<(), PushError> {
        self.push_all(std::iter::once(item))
            .map(|_| ())
            .map_err(|(_, e)| e)
    }

    /// Asks the writer to stop after what is queued (always accepted).
    pub fn close(&self) {
        self.lock().items.push_back(TcpOut::Close);
        self.notify.notify_one();
    }

    /// The writer is gone: later pushes fail.
    pub fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Waits until something may be queued (a wake-up from a push or close).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Moves up to `max` queued items into `out`; returns how many.
    pub fn take(&self, out: &mut Vec<TcpOut>, max: usize) -> usize {
        let mut q = self.lock();
        let n = q.items.len().min(max);
        let mut frames = 0;
        out.extend(q.items.drain(..n).inspect(|i| frames += i.frames()));
        q.frames -= frames;
        if q.items.is_empty() && q.items.capacity() > 4 * KEEP {
            q.items.shrink_to(KEEP);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> TcpOut {
        TcpOut::Frame {
            channel: n,
            data: Bytes::new(),
            received_at: None,
        }
    }

    #[tokio::test]
    async fn a_batch_is_one_wake_and_keeps_order_up_to_capacity() {
        let q = MediaQueue::new(3);
        assert_eq!(q.push_all((0..2).map(frame)), Ok(2));
        assert_eq!(
            q.push_all((2..5).map(frame)),
            Err((1, PushError::Full)),
            "only one fits"
        );
        assert_eq!(q.push(frame(9)), Err(PushError::Full));
        q.wait().await; // the permit left by the pushes
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out, 10), 3);
        let channels: Vec<u8> = out
            .iter()
            .map(|o| match o {
                TcpOut::Frame { channel, .. } => *channel,
                _ => 255,
            })
            .collect();
        assert_eq!(channels, vec![0, 1, 2]);
        q.close();
        out.clear();
        q.take(&mut out, 10);
        assert!(matches!(out[0], TcpOut::Close));
        q.set_closed();
        assert_eq!(q.push(frame(1)), Err(PushError::Closed));
    }
}
