//! The outbound queue of one RTSP connection: RTSP responses and interleaved media.
//!
//! Sinks push a whole batch (a frame's packets) under one lock. On a plain TCP
//! connection whose queue is empty and whose writer is idle, the batch is written at once
//! from the pushing thread with one non-blocking vectored write (as ZLMediaKit does: one
//! send per frame over shared buffers); the writer task is only woken when the socket
//! pushes back, for TLS, or when something is already queued. At thousands of readers of
//! a low-rate stream, a task wake-up per reader per frame cost more than the write itself.
//!
//! Hand-written rather than a channel: the queue must decide, under one lock, whether
//! the socket is free for a direct write, and count its capacity in interleaved frames.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use sluice_net::tcp::HeldFd;

use crate::rtsp::readers::latency::LatencyHistogram;
use sluice_hub::presentation::MAX_TRACKS;
use sluice_hub::MediaPacket;

/// Per track: the interleaved RTP channel a reader gets it on, or [`NO_CHANNEL`].
pub type ChannelMap = [u8; MAX_TRACKS];

/// In a [`ChannelMap`]: the reader does not get this track.
pub const NO_CHANNEL: u8 = 0xff;

/// Responses queued per connection before the next one waits for room (requests are
/// answered one at a time, so this only fills when the client does not read).
pub const RESPONSE_QUEUE: usize = 16;

/// Most slices per vectored write (a 4-byte header and a payload per frame; IOV_MAX is 1024).
pub const MAX_IOV: usize = 512;

// A stream's largest batch must fit one vectored write: two slices per packet.
const _: () = assert!(2 * sluice_hub::stream::MAX_BATCH <= MAX_IOV);

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
        /// The same frames already framed for `channels` (header and packet, back to
        /// back), made once per flush for every reader with these channels
        /// ([`crate::rtsp::readers::group::Egress::framed`]): written as one slice instead of two per
        /// packet. `None`: written from `packets`.
        framed: Option<Bytes>,
        /// When the batch's oldest packet was received (found once per flush, for the
        /// latency histogram).
        received_at: Option<Instant>,
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

/// What the writer takes from the queue in one go, written in this order.
#[derive(Debug, Default)]
pub struct Taken {
    /// The unwritten end of a direct write the socket cut short (goes first: the peer
    /// has the frame's beginning).
    pub partial: Option<Bytes>,
    /// Encoded responses, in order.
    pub responses: Vec<Bytes>,
    /// Media items, in order (a [`TcpOut::Close`] ends the connection).
    pub items: Vec<TcpOut>,
}

impl Taken {
    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.partial.is_none() && self.responses.is_empty() && self.items.is_empty()
    }

    /// Empties it (keeping its memory for the next take).
    pub fn clear(&mut self) {
        self.partial = None;
        self.responses.clear();
        self.items.clear();
    }

    /// Empties it and gives back most of its memory (a GOP catch-up can grow it a lot):
    /// for an idle writer.
    pub fn release(&mut self) {
        self.clear();
        self.responses.shrink_to(RESPONSE_QUEUE);
        self.items.shrink_to(KEEP);
    }
}

/// A bounded queue of responses and [`TcpOut`] with a single consumer (the connection's
/// writer), which may write straight to a plain TCP socket when that is free.
#[derive(Debug)]
pub struct MediaQueue {
    state: Mutex<Queued>,
    /// Wakes the writer.
    wake: Notify,
    /// Wakes a response waiting for room.
    room: Notify,
    capacity: usize,
    closed: AtomicBool,
    /// Where the ingest → egress latency of what this queue's connection writes is
    /// recorded (the server's histogram); `None`: nowhere.
    latency: Option<Arc<LatencyHistogram>>,
}

/// The queue under its lock.
#[derive(Debug, Default)]
struct Queued {
    partial: Option<Bytes>,
    responses: VecDeque<Bytes>,
    items: VecDeque<TcpOut>,
    /// Interleaved frames in `items`.
    frames: usize,
    /// The writer took items and has not come back empty-handed: it owns the socket.
    writing: bool,
    /// The socket, for direct writes (plain TCP only; dropped once the writer is gone),
    /// with its file descriptor read once: a direct write goes straight to `sendmsg(2)`
    /// from here instead of through three pointers to tokio's readiness state, which
    /// with thousands of readers are cache misses per reader per batch (see
    /// [`crate::rtsp::readers::prefetch`]). Tokio's readiness is not updated by these writes; the
    /// writer task, which does go through tokio, meets any `EAGAIN` itself.
    direct: Option<HeldFd<Arc<OwnedWriteHalf>>>,
}

impl Queued {
    /// Nothing queued and the writer idle: a write now is next on the wire.
    fn socket_free(&self) -> bool {
        !self.writing
            && self.partial.is_none()
            && self.responses.is_empty()
            && self.items.is_empty()
    }
}

/// Items a drained queue keeps room for.
const KEEP: usize = 8;

impl MediaQueue {
    /// An empty queue of at most `capacity` interleaved frames; with `direct`, media may
    /// be written to that socket straight from the pushing thread.
    pub fn new(capacity: usize, direct: Option<Arc<OwnedWriteHalf>>) -> MediaQueue {
        MediaQueue {
            state: Mutex::new(Queued {
                direct: direct.map(HeldFd::new),
                ..Queued::default()
            }),
            wake: Notify::new(),
            room: Notify::new(),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            latency: None,
        }
    }

    /// This queue, recording the ingest → egress latency of the media its connection
    /// writes (directly from the pushing thread, or by the connection's writer) into
    /// `latency`: the server's own histogram, so that servers sharing a process measure
    /// apart. A queue made without it (tests, micro-benchmarks) records nothing.
    pub fn recording_latency(mut self, latency: Arc<LatencyHistogram>) -> MediaQueue {
        self.latency = Some(latency);
        self
    }

    /// The histogram this queue's writes are recorded into, if any (see
    /// [`MediaQueue::recording_latency`]).
    pub fn latency(&self) -> Option<&LatencyHistogram> {
        self.latency.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room left: interleaved frames it can take now, of its capacity.
    pub fn room(&self) -> sluice_hub::Room {
        let frames = self.lock().frames;
        sluice_hub::Room {
            free: self.capacity.saturating_sub(frames),
            capacity: self.capacity,
        }
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
                if !self.enqueue(&mut q, item) {
                    break true;
                }
                n += 1;
            }
        };
        if n > 0 {
            self.wake.notify_one();
        }
        if full {
            Err((n, PushError::Full))
        } else {
            Ok(n)
        }
    }

    /// Appends `item` if it fits.
    fn enqueue(&self, q: &mut Queued, item: TcpOut) -> bool {
        let frames = item.frames();
        if q.frames + frames > self.capacity && !q.items.is_empty() {
            return false;
        }
        q.frames += frames;
        q.items.push_back(item);
        true
    }

    /// Sends one item: written at once when the connection is plain TCP, nothing is
    /// queued and the writer is idle; queued for the writer otherwise.
    pub fn push(&self, item: TcpOut) -> Result<(), PushError> {
        self.push_with(item, true)
    }

    /// Like [`MediaQueue::push`], but only tries a direct write when `direct` (the
    /// fan-out's time budget for direct writes is not spent).
    pub fn push_with(&self, item: TcpOut, direct: bool) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let q = self.lock();
        let mut q = if direct {
            match self.write_now(q, |fd| write_direct(fd, &item, self.latency())) {
                Some(q) => q,
                None => return Ok(()),
            }
        } else {
            q
        };
        let queued = self.enqueue(&mut q, item);
        drop(q);
        if queued {
            self.wake.notify_one();
            Ok(())
        } else {
            Err(PushError::Full)
        }
    }

    /// Sends an encoded response: written at once when the connection is plain TCP,
    /// nothing is queued and the writer is idle (as media is); otherwise queued, waiting
    /// while [`RESPONSE_QUEUE`] are queued (the client is not reading). Dropped if the
    /// writer is gone.
    ///
    /// The direct write spares the response a hop through the writer task: on a busy
    /// server (10,000 UDP readers of one stream on two cores), that task waited up to
    /// 220 ms for a runtime worker while the request itself took 16 µs to handle.
    pub async fn push_response(&self, response: Bytes) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            {
                let q = self.lock();
                let Some(mut q) = self.write_now(q, |fd| write_bytes(fd, &response)) else {
                    return;
                };
                if q.responses.len() < RESPONSE_QUEUE {
                    q.responses.push_back(response);
                    drop(q);
                    self.wake.notify_one();
                    return;
                }
            }
            self.room.notified().await;
        }
    }

    /// Writes straight to the socket from the calling thread when the connection is plain
    /// TCP and the socket is free ([`Queued::socket_free`]): `write` makes one
    /// non-blocking write to the descriptor. The unwritten end of a cut-short write is left
    /// for the writer, which is woken. Hands `q` back when nothing was written: the caller
    /// queues instead, and the writer waits for room (or meets the error).
    fn write_now<'q>(
        &self,
        mut q: MutexGuard<'q, Queued>,
        write: impl FnOnce(BorrowedFd<'_>) -> Direct,
    ) -> Option<MutexGuard<'q, Queued>> {
        let direct = match &q.direct {
            // `q.direct` (held under the lock for the call) keeps the socket open.
            Some(socket) if q.socket_free() => write(socket.fd()),
            _ => Direct::NotWritten,
        };
        match direct {
            Direct::Written => None,
            Direct::Partial(rest) => {
                q.partial = Some(rest);
                drop(q);
                self.wake.notify_one();
                None
            }
            Direct::NotWritten => Some(q),
        }
    }

    /// Asks the writer to stop after what is queued (always accepted).
    pub fn close(&self) {
        self.lock().items.push_back(TcpOut::Close);
        self.wake.notify_one();
    }

    /// The writer is gone: later pushes fail, and the socket is no longer written to.
    pub fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
        let mut q = self.lock();
        q.direct = None;
        drop(q);
        self.room.notify_one();
    }

    /// Waits until something may be queued (a wake-up from a push or close).
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Moves what is queued into `out` (at most `max` media items): the writer owns the
    /// socket until a take finds nothing. Returns whether anything was taken.
    pub fn take(&self, out: &mut Taken, max: usize) -> bool {
        let mut q = self.lock();
        out.partial = q.partial.take();
        let responses = !q.responses.is_empty();
        out.responses.extend(q.responses.drain(..));
        let n = q.items.len().min(max);
        let mut frames = 0;
        out.items
            .extend(q.items.drain(..n).inspect(|i| frames += i.frames()));
        q.frames -= frames;
        if q.items.is_empty() && q.items.capacity() > 4 * KEEP {
            q.items.shrink_to(KEEP);
        }
        q.writing = !out.is_empty();
        drop(q);
        if responses {
            self.room.notify_one();
        }
        !out.is_empty()
    }
}

/// How a direct write went.
enum Direct {
    /// All of it is on the wire.
    Written,
    /// The socket took only the beginning; this is the rest.
    Partial(Bytes),
    /// Nothing was written (no room, an error, or too large to try).
    NotWritten,
}

thread_local! {
    /// Headers and slices reused by every direct write on this thread (writes allocate nothing).
    static DIRECT_SCRATCH: RefCell<(Vec<[u8; 4]>, Vec<IoSlice<'static>>)> =
        const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Writes `item`'s interleaved frames to the socket `fd` with one non-blocking vectored
/// write; a whole write's latency is recorded into `latency`.
fn write_direct(fd: BorrowedFd<'_>, item: &TcpOut, latency: Option<&LatencyHistogram>) -> Direct {
    let items = std::slice::from_ref(item);
    if matches!(item, TcpOut::Close) || 2 * item.frames() > MAX_IOV {
        return Direct::NotWritten;
    }
    if let TcpOut::Batch {
        framed: Some(image),
        ..
    } = item
    {
        // Already one slice: no headers to build or slices to gather, and the rest of a
        // cut-short write is a slice of it, not a copy.
        let result = write_bytes(fd, image);
        if matches!(result, Direct::Written) {
            record_latency(items, latency);
        }
        return result;
    }
    DIRECT_SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            return Direct::NotWritten;
        };
        let (headers, slices) = &mut *scratch;
        frame_headers(items, headers);
        let mut iov = recycle(std::mem::take(slices));
        gather(items, headers, 0, &mut iov);
        let total: usize = iov.iter().map(|s| s.len()).sum();
        let result = match send_vectored(fd, &iov) {
            Ok(n) if n >= total => {
                record_latency(items, latency);
                Direct::Written
            }
            Ok(n) => Direct::Partial(rest_after(&iov, n)),
            Err(_) => Direct::NotWritten,
        };
        *slices = recycle(iov);
        result
    })
}

/// Records the ingest → egress latency of `items`' relayed packets, just written, into
/// `latency`.
pub fn record_latency(items: &[TcpOut], latency: Option<&LatencyHistogram>) {
    let Some(latency) = latency else {
        return;
    };
    let (oldest, frames) = frame_stats(items);
    if let Some(t) = oldest {
        latency.record(Instant::now().saturating_duration_since(t), frames);
    }
}

/// Writes `bytes` (an encoded response, or a framed batch) to the socket `fd` with one non-blocking write;
/// the rest of a cut-short write is a slice of it, not a copy.
fn write_bytes(fd: BorrowedFd<'_>, bytes: &Bytes) -> Direct {
    match send_vectored(fd, &[IoSlice::new(bytes)]) {
        Ok(n) if n >= bytes.len() => Direct::Written,
        Ok(n) if n > 0 => Direct::Partial(bytes.slice(n..)),
        _ => Direct::NotWritten,
    }
}

/// One non-blocking `sendmsg(2)` of `iov` (at most [`MAX_IOV`] slices of it) to the TCP
/// socket `fd` ([`sluice_net::tcp::send_vectored`]: never blocks, a reader gone is an
/// error and not a `SIGPIPE`).
///
/// `sendmsg`, not `writev`: both end in the same `tcp_sendmsg`, but `writev` goes through
/// the file layer first (`fdget_pos`, `rw_verify_area`, `fsnotify_modify`), which is
/// measurable with one small write per reader per frame (bench/RESULTS.md, session 11).
pub(crate) fn send_vectored(fd: impl AsFd, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    let count = iov.len().min(MAX_IOV);
    sluice_net::tcp::send_vectored(fd, &iov[..count])
}

/// The bytes of `slices` after the first `n`, copied (only when a socket cuts a write short).
fn rest_after(slices: &[IoSlice<'_>], mut n: usize) -> Bytes {
    let mut rest = Vec::new();
    for s in slices {
        if n >= s.len() {
            n -= s.len();
        } else {
            rest.extend_from_slice(&s[n..]);
            n = 0;
        }
    }
    Bytes::from(rest)
}

/// An empty vector of slices reusing `v`'s allocation (in-place collect), so a writer
/// keeps one scratch vector across writes whatever the slices borrow.
pub fn recycle<'b>(mut v: Vec<IoSlice<'_>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| IoSlice::new(&[])).collect()
}

/// Replaces `headers` with the 4-byte interleaved header of each frame of `items`.
pub fn frame_headers(items: &[TcpOut], headers: &mut Vec<[u8; 4]>) {
    headers.clear();
    headers.extend(frames_of(items).map(|(channel, data)| {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        sluice_rtsp::interleaved::header(channel, len)
    }));
}

/// Appends to `slices` the interleaved frames of `items` from frame `skip` on: a batch
/// that comes framed as one slice (from its first frame not skipped), any other frame as
/// a header (from `headers`, as [`frame_headers`] made them) and its payload; stops
/// before [`MAX_IOV`] slices. Returns how many frames it added. Nothing is copied.
pub fn gather<'a>(
    items: &'a [TcpOut],
    headers: &'a [[u8; 4]],
    skip: usize,
    slices: &mut Vec<IoSlice<'a>>,
) -> usize {
    let mut added = 0;
    // Index of the current item's first frame among all of `items`' frames.
    let mut first = 0;
    for item in items.iter().take_while(|i| !matches!(i, TcpOut::Close)) {
        let frames = frames_of(std::slice::from_ref(item));
        if let TcpOut::Batch {
            framed: Some(image),
            ..
        } = item
        {
            // Its frames, and where in the image the first one not skipped starts.
            let (mut count, mut offset) = (0, 0);
            for (_, data) in frames {
                if first + count < skip {
                    offset += 4 + wire_len(data);
                }
                count += 1;
            }
            if first + count > skip {
                if slices.len() + 1 > MAX_IOV {
                    break;
                }
                slices.push(IoSlice::new(image.get(offset..).unwrap_or_default()));
                added += first + count - skip.max(first);
            }
            first += count;
            continue;
        }
        let mut count = 0;
        for (_, data) in frames {
            let index = first + count;
            count += 1;
            if index < skip {
                continue;
            }
            let Some(h) = headers.get(index) else {
                return added;
            };
            if slices.len() + 2 > MAX_IOV {
                return added;
            }
            slices.push(IoSlice::new(&h[..]));
            slices.push(IoSlice::new(&data[..wire_len(data)]));
            added += 1;
        }
        first += count;
    }
    added
}

/// How much of a packet an interleaved frame carries (its length field is 16 bits).
fn wire_len(data: &[u8]) -> usize {
    data.len().min(usize::from(u16::MAX))
}

/// `packets` framed for `channels`: for each packet with a channel, its interleaved header
/// and the packet, back to back, as [`gather`] would write them slice by slice.
pub fn framed(packets: &[MediaPacket], channels: &ChannelMap) -> Bytes {
    let with_channel = || {
        packets
            .iter()
            .filter_map(|p| Some((channel_of(channels, p.track)?, &p.data[..wire_len(&p.data)])))
    };
    let total = with_channel().map(|(_, d)| 4 + d.len()).sum();
    let mut image = Vec::with_capacity(total);
    for (channel, data) in with_channel() {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        image.extend_from_slice(&sluice_rtsp::interleaved::header(channel, len));
        image.extend_from_slice(data);
    }
    Bytes::from(image)
}

/// The interleaved frames of `items` (up to a Close), as (channel, packet) pairs.
pub fn frames_of(items: &[TcpOut]) -> impl Iterator<Item = (u8, &[u8])> {
    items
        .iter()
        .take_while(|i| !matches!(i, TcpOut::Close))
        .flat_map(|item| {
            let (single, batch) = match item {
                TcpOut::Frame { channel, data, .. } => (Some((*channel, &data[..])), None),
                TcpOut::Batch {
                    packets, channels, ..
                } => (None, Some((packets, channels))),
                TcpOut::Close => (None, None),
            };
            single
                .into_iter()
                .chain(batch.into_iter().flat_map(|(packets, channels)| {
                    packets
                        .iter()
                        .filter_map(|p| Some((channel_of(channels, p.track)?, &p.data[..])))
                }))
        })
}

/// When the oldest relayed packet among `items` was received, and how many relayed
/// packets they hold (RTCP and other unstamped frames aside).
pub fn frame_stats(items: &[TcpOut]) -> (Option<Instant>, u64) {
    let mut oldest: Option<Instant> = None;
    let mut n = 0u64;
    let mut see = |t: Instant, k: u64| {
        oldest = Some(oldest.map_or(t, |o| o.min(t)));
        n += k;
    };
    for item in items {
        match item {
            TcpOut::Frame {
                received_at: Some(t),
                ..
            } => see(*t, 1),
            TcpOut::Batch {
                received_at: Some(t),
                frames,
                ..
            } => see(*t, *frames as u64),
            _ => {}
        }
    }
    (oldest, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    fn frame(n: u8) -> TcpOut {
        TcpOut::Frame {
            channel: n,
            data: Bytes::from(vec![n; 3]),
            received_at: None,
        }
    }

    /// A relayed packet of `track` whose bytes (as framed on the wire) are `data`.
    fn media_packet(track: usize, sequence: u16, data: Vec<u8>) -> MediaPacket {
        MediaPacket {
            track,
            data: Bytes::from(data),
            header: sluice_rtp::packet::RtpHeader {
                payload_type: 96,
                marker: false,
                sequence,
                timestamp: 0,
                ssrc: 1,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    fn channels(taken: &Taken) -> Vec<u8> {
        taken
            .items
            .iter()
            .map(|o| match o {
                TcpOut::Frame { channel, .. } => *channel,
                _ => 255,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_is_one_wake_and_keeps_order_up_to_capacity() {
        let q = MediaQueue::new(3, None);
        assert_eq!(q.push_all((0..2).map(frame)), Ok(2));
        assert_eq!(
            q.push_all((2..5).map(frame)),
            Err((1, PushError::Full)),
            "only one fits"
        );
        assert_eq!(q.push(frame(9)), Err(PushError::Full));
        let full = sluice_hub::Room {
            free: 0,
            capacity: 3,
        };
        assert_eq!(q.room(), full, "what a replay waits on");
        q.wait().await; // the permit left by the pushes
        let mut out = Taken::default();
        assert!(q.take(&mut out, 10));
        assert_eq!(channels(&out), vec![0, 1, 2]);
        assert_eq!(q.room().free, 3, "room again once the writer took them");
        q.close();
        out.clear();
        q.take(&mut out, 10);
        assert!(matches!(out.items[0], TcpOut::Close));
        q.set_closed();
        assert_eq!(q.push(frame(1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn responses_are_taken_before_media_and_wait_for_room() {
        let q = Arc::new(MediaQueue::new(8, None));
        q.push(frame(1)).unwrap();
        for i in 0..RESPONSE_QUEUE {
            q.push_response(Bytes::from(vec![i as u8])).await;
        }
        // The 17th waits until the writer takes the others.
        let late = tokio::spawn({
            let q = q.clone();
            async move { q.push_response(Bytes::from_static(b"late")).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !late.is_finished(),
            "a full response queue holds the next one back"
        );
        let mut out = Taken::default();
        assert!(q.take(&mut out, 10));
        assert_eq!(out.responses.len(), RESPONSE_QUEUE);
        assert_eq!(channels(&out), vec![1]);
        late.await.unwrap();
        out.clear();
        assert!(q.take(&mut out, 10));
        assert_eq!(out.responses, vec![Bytes::from_static(b"late")]);
        out.clear();
        assert!(!q.take(&mut out, 10), "drained");
    }

    /// A connected loopback pair: the server side split, the client side to read.
    async fn pair() -> (
        Arc<OwnedWriteHalf>,
        tokio::net::tcp::OwnedReadHalf,
        TcpStream,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, wr) = server.into_split();
        (Arc::new(wr), rd, client)
    }

    #[tokio::test]
    async fn an_idle_plain_tcp_queue_writes_a_framed_batch_at_once_as_framed() {
        let (wr, _rd, mut client) = pair().await;
        let q = MediaQueue::new(8, Some(wr));
        let packets: Arc<[MediaPacket]> = vec![media_packet(0, 1, vec![5; 3])].into();
        let mut channels = [NO_CHANNEL; MAX_TRACKS];
        channels[0] = 7;
        let image = framed(&packets, &channels);
        q.push(TcpOut::Batch {
            packets,
            channels,
            frames: 1,
            framed: Some(image),
            received_at: None,
        })
        .unwrap();
        let mut got = [0u8; 7];
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.read_exact(&mut got),
        )
        .await
        .expect("the frame is written at once")
        .unwrap();
        assert_eq!(got, [b'$', 7, 0, 3, 5, 5, 5]);
        let mut out = Taken::default();
        assert!(!q.take(&mut out, 10), "nothing was queued");
    }

    #[tokio::test]
    async fn an_idle_plain_tcp_queue_writes_at_once_and_a_busy_one_queues() {
        let (wr, _rd, mut client) = pair().await;
        let q = MediaQueue::new(8, Some(wr));
        q.push(frame(7)).unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got,
            [b'$', 7, 0, 3, 7, 7, 7],
            "on the wire without any writer"
        );
        let mut out = Taken::default();
        assert!(!q.take(&mut out, 10), "nothing was queued");

        // A response goes out at once too.
        q.push_response(Bytes::from_static(b"RTSP/1.0 200 OK\r\n\r\n"))
            .await;
        let mut got = [0u8; 19];
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.read_exact(&mut got),
        )
        .await
        .expect("the response waits for a writer")
        .unwrap();
        assert_eq!(&got, b"RTSP/1.0 200 OK\r\n\r\n");
        assert!(!q.take(&mut out, 10), "nothing was queued");

        // Behind queued media, a response waits for the writer, which writes it first.
        q.push_with(frame(6), false).unwrap();
        q.push_response(Bytes::from_static(b"RTSP/1.0 200 OK\r\n\r\n"))
            .await;
        q.push(frame(8)).unwrap();
        assert!(q.take(&mut out, 10));
        assert_eq!(out.responses.len(), 1);
        assert_eq!(channels(&out), vec![6, 8]);
        // The writer owns the socket until a take comes back empty.
        q.push(frame(9)).unwrap();
        out.clear();
        assert!(q.take(&mut out, 10));
        assert_eq!(channels(&out), vec![9]);
        out.clear();
        assert!(!q.take(&mut out, 10));
        q.push(frame(10)).unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got[1], 10, "direct again once the writer is idle");
        // Past the fan-out's direct-write budget, an idle connection's frame is queued.
        q.push_with(frame(11), false).unwrap();
        out.clear();
        assert!(q.take(&mut out, 10));
        assert_eq!(channels(&out), vec![11]);
    }

    #[tokio::test]
    async fn a_full_socket_hands_over_to_the_writer_without_tearing_a_frame() {
        let (wr, _rd, mut client) = pair().await;
        let q = MediaQueue::new(1 << 20, Some(wr.clone()));
        let big = |c: u8| TcpOut::Frame {
            channel: c,
            data: Bytes::from(vec![c; 60_000]),
            received_at: None,
        };
        // The client does not read: the socket fills, and a write is cut short or refused.
        let mut pushed = 0usize;
        while q.lock().socket_free() {
            q.push(big(pushed as u8)).unwrap();
            pushed += 1;
            assert!(pushed < 200, "the socket never filled");
        }
        q.push(big(pushed as u8)).unwrap();
        pushed += 1;
        assert_eq!(q.lock().items.len(), 1, "queued behind the cut-short write");
        // What the writer would do: the rest first, then the queue.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; pushed * 60_004];
            client.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut out = Taken::default();
        while q.take(&mut out, 10) {
            let mut bytes = out.partial.take().map(|b| b.to_vec()).unwrap_or_default();
            let mut headers = Vec::new();
            frame_headers(&out.items, &mut headers);
            let mut slices = Vec::new();
            gather(&out.items, &headers, 0, &mut slices);
            for s in &slices {
                bytes.extend_from_slice(s);
            }
            let stream: &TcpStream = (*wr).as_ref();
            let mut off = 0;
            while off < bytes.len() {
                stream.writable().await.unwrap();
                if let Ok(n) = stream.try_write(&bytes[off..]) {
                    off += n;
                }
            }
            out.clear();
        }
        let buf = reader.await.unwrap();
        for (i, f) in buf.chunks(60_004).enumerate() {
            assert_eq!(&f[..4], &[b'$', i as u8, 0xea, 0x60], "frame {i} header");
            assert!(f[4..].iter().all(|b| *b == i as u8), "frame {i} payload");
        }
    }

    #[test]
    fn a_framed_batch_writes_the_same_bytes_as_its_packets_from_any_frame_on() {
        let packet = |track, seq: u16, len| media_packet(track, seq, vec![seq as u8; len]);
        // Video on channel 0, audio on 2, a third track the reader does not get.
        let packets: Arc<[MediaPacket]> = vec![
            packet(0, 1, 1400),
            packet(2, 2, 50),
            packet(1, 3, 300),
            packet(0, 4, 900),
        ]
        .into();
        let mut channels = [NO_CHANNEL; MAX_TRACKS];
        channels[0] = 0;
        channels[1] = 2;
        let batch = |framed: Option<Bytes>| TcpOut::Batch {
            packets: packets.clone(),
            channels,
            frames: 3,
            framed,
            received_at: None,
        };
        let image = framed(&packets, &channels);
        let items = |framed: bool| {
            vec![
                frame(1),
                batch(framed.then(|| image.clone())),
                frame(3),
                batch(framed.then(|| image.clone())),
            ]
        };
        let (plain, with_image) = (items(false), items(true));
        let mut headers = Vec::new();
        frame_headers(&plain, &mut headers);
        assert_eq!(headers.len(), 8);
        let bytes = |items: &[TcpOut], skip: usize| {
            let mut slices = Vec::new();
            let n = gather(items, &headers, skip, &mut slices);
            (
                n,
                slices.iter().flat_map(|s| s.to_vec()).collect::<Vec<u8>>(),
            )
        };
        for skip in 0..=8 {
            let (n, expected) = bytes(&plain, skip);
            assert_eq!(n, 8 - skip);
            assert_eq!(bytes(&with_image, skip), (n, expected), "from frame {skip}");
        }
        let mut slices = Vec::new();
        gather(&with_image, &headers, 0, &mut slices);
        assert_eq!(
            slices.len(),
            6,
            "a slice per framed batch, two per other frame"
        );
    }

    #[test]
    fn the_rest_of_a_cut_short_write_spans_slices() {
        let slices = [
            IoSlice::new(b"$\x00\x00\x03"),
            IoSlice::new(b"abc"),
            IoSlice::new(b"de"),
        ];
        assert_eq!(
            rest_after(&slices, 0),
            Bytes::from_static(b"$\x00\x00\x03abcde")
        );
        assert_eq!(rest_after(&slices, 5), Bytes::from_static(b"bcde"));
        assert_eq!(rest_after(&slices, 7), Bytes::from_static(b"de"));
        assert_eq!(rest_after(&slices, 9), Bytes::new());
    }
}
