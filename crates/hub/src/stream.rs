//! The per-path stream: one source pushes RTP packets in, a handful of sinks get them as
//! batches.
//!
//! A source (an RTSP publisher, a pull, a file) calls [`Stream::push_rtp`] with each packet
//! as a shared [`Bytes`](bytes::Bytes). The stream maps its numbering onto the path's
//! timeline (continuous across source changes), lets its [`Batcher`] decide where batches
//! end (frame ends, markers, holds, the fan-out window, pauses, stale flushes), and hands
//! each batch to every subscribed [`Sink`]: the same buffers, a reference count, never a
//! copy. Sinks must not block: each owns a bounded queue and decides itself what happens
//! when it is full.
//!
//! Modules that keep per-stream state of their own (the RTSP module's reader group, which
//! holds the GOP cache and the readers) [`Stream::attach`] it as a typed sink when the
//! stream is created ([`crate::hub::Hub::create_stream`] runs every module's hook), and find
//! it again with [`Stream::attached`]; the stream knows it only as one more sink.
//!
//! Live sources drive the batcher's clock: [`Stream::note_input`], [`Stream::hold_frames`]
//! and [`Stream::release_frames`] around the input at hand, and a timer on
//! [`Stream::poll_timeout`] that calls [`Stream::handle_timeout`]. A file source calls
//! [`Stream::flush`] after each sample.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_rtp::clock::SrMapping;
use sluice_rtp::packet::rewrite_header;
use sluice_rtp::rtcp::SenderInfo;
use sluice_rtp::timeline::Timeline;

use crate::batcher::Batcher;
use crate::delivery::DeliveryNote;
use crate::packet::{Batch, EndReason, MediaPacket};
use crate::presentation::Presentation;
use crate::sink::{Room, Sink};
use crate::stats::{SinkStats, SourceFigures, SourceKind, StreamStats};

/// Most packets one batch holds: with a fan-out window, a batch spans several frames, and
/// a TCP reader's batch must still be one vectored write (two slices per packet, within
/// the RTSP readers' 512-slice limit, which checks this at compile time).
pub const MAX_BATCH: usize = 256;

/// Identifies a sink's subscription to a stream, to remove it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamSinkId(u64);

/// Per-track live state.
#[derive(Debug)]
struct TrackState {
    /// Outgoing numbering, continuous across source changes.
    timeline: Mutex<Timeline>,
    /// NTP↔RTP mapping from the source's latest Sender Report.
    sr: Mutex<Option<SrMapping>>,
}

/// The tasks waiting in [`Stream::ended`], woken when it ends.
#[derive(Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

/// The live stream of one path: its presentation, per-track state and its sinks.
pub struct Stream {
    path: String,
    presentation: Presentation,
    tracks: Vec<TrackState>,
    /// Subscribed sinks, in subscription order.
    sinks: Mutex<Vec<(StreamSinkId, Arc<dyn Sink>)>>,
    /// Sinks attached by type ([`Stream::attach`]), to be found again by their module.
    attached: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    next_sink: AtomicU64,
    ready: AtomicBool,
    ended: AtomicBool,
    waiters: Mutex<Waiters>,
    version: u64,
    /// Packets pushed but not yet handed to sinks, and the decisions over them.
    pending: Mutex<Batcher>,
    /// The batch handed to the sinks, refilled from the batcher (kept for its allocation).
    out: Mutex<Batch>,
    /// RTP packets pushed (relaxed: read only for reports).
    packets_in: AtomicU64,
    /// RTP payload bytes pushed.
    bytes_in: AtomicU64,
    /// What kind of source feeds it ([`SourceKind`] as a number).
    source_kind: AtomicU8,
    /// The source's receiving figures, if it reports them (weak: the source holds the
    /// stream).
    source_stats: Mutex<Option<Weak<dyn SourceFigures>>>,
    /// What each delivery module can carry of this stream ([`Stream::set_delivery`]).
    delivery: Mutex<Vec<DeliveryNote>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("path", &self.path)
            .field("tracks", &self.tracks.len())
            .field("ready", &self.is_ready())
            .field("ended", &self.is_ended())
            .finish()
    }
}

/// Locks a mutex, recovering from a panic elsewhere (the data stays consistent: every
/// critical section here leaves it so).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stream {
    /// A new, not yet ready stream for `path` carrying `presentation`'s tracks; `version`
    /// differs between successive streams on a path (the SDP version). Modules attach
    /// their sinks through [`crate::hub::Hub::create_stream`], which calls this.
    pub fn new(path: String, presentation: Presentation, version: u64) -> Arc<Stream> {
        let video = presentation.keyframe_track();
        let tracks = presentation
            .tracks()
            .iter()
            .map(|t| TrackState {
                timeline: Mutex::new(Timeline::new(t.clock_rate)),
                sr: Mutex::new(None),
            })
            .collect();
        Arc::new(Stream {
            path,
            presentation,
            tracks,
            sinks: Mutex::new(Vec::new()),
            attached: Mutex::new(Vec::new()),
            next_sink: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            waiters: Mutex::new(Waiters::default()),
            version,
            pending: Mutex::new(Batcher::new(video.map(|(i, _)| i), MAX_BATCH)),
            out: Mutex::new(Batch::with_capacity(MAX_BATCH)),
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            source_kind: AtomicU8::new(SourceKind::Unknown.to_u8()),
            source_stats: Mutex::new(None),
            delivery: Mutex::new(Vec::new()),
        })
    }

    /// Says what kind of source feeds this stream (its creator calls it once), for the
    /// API's path listing.
    pub fn set_source_kind(&self, kind: SourceKind) {
        self.source_kind.store(kind.to_u8(), Ordering::Relaxed);
    }

    /// What kind of source feeds this stream ([`SourceKind::Unknown`] if never said).
    pub fn source_kind(&self) -> SourceKind {
        SourceKind::from_u8(self.source_kind.load(Ordering::Relaxed))
    }

    /// Registers the source's receiving figures (loss, jitter), read by [`Stream::stats`]
    /// while the source lives. Held weakly: the source already holds the stream.
    pub fn set_source_stats(&self, source: Weak<dyn SourceFigures>) {
        *lock(&self.source_stats) = Some(source);
    }

    /// The stream's figures now: packets and bytes in, its sinks' figures merged, its
    /// source's loss and jitter. Copies the sink list under its lock, then asks each sink
    /// (a report, not a packet).
    pub fn stats(&self) -> StreamStats {
        let subscribed: Vec<Arc<dyn Sink>> =
            lock(&self.sinks).iter().map(|(_, s)| s.clone()).collect();
        let mut sinks = SinkStats::default();
        for sink in subscribed {
            sinks.merge(&sink.stats());
        }
        let source = lock(&self.source_stats)
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|s| s.source_stats());
        StreamStats {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            sinks,
            source,
        }
    }

    /// Collects up to `window` of media (from the arrival of a batch's first packet) into
    /// one batch, across frames and tracks, instead of a batch per frame: fewer, larger
    /// sends per reader for up to `window` of added latency. Zero: a batch per frame.
    /// For live sources (publishers, pulls); a file source flushes each sample itself.
    pub fn set_fanout_window(&self, window: Duration) {
        lock(&self.pending).set_window(window);
    }

    /// The fan-out window (zero: a batch per frame).
    pub fn fanout_window(&self) -> Duration {
        lock(&self.pending).window()
    }

    /// When a live source that last had input at `last_input` should flush the packets
    /// collected so far, if any: once its input has paused for
    /// [`crate::batcher::INPUT_PAUSE`] or, with a fan-out window, once the window since the
    /// batch's first packet has passed.
    pub fn flush_at(&self, last_input: Instant) -> Option<Instant> {
        lock(&self.pending).flush_at(last_input)
    }

    /// The source had input at `now` that completed no packet (a read that ended within
    /// one): the input-pause timer ([`Stream::poll_timeout`]) runs from here, so a frame
    /// still arriving is not cut.
    pub fn note_input(&self, now: Instant) {
        lock(&self.pending).note_input(now);
    }

    /// When the live source's timer should call [`Stream::handle_timeout`]. None while
    /// nothing is collected, so an idle source arms no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        lock(&self.pending).poll_timeout()
    }

    /// The live source's timer fired at `now`: if [`Stream::poll_timeout`] has passed,
    /// the packets collected go to the sinks without waiting for the rest of their frame.
    pub fn handle_timeout(&self, now: Instant) {
        let mut pending = lock(&self.pending);
        pending.handle_timeout(now);
        self.send_batches(&mut pending);
    }

    /// Runs `f` on the packets collected but not yet handed to the sinks (an unfinished
    /// frame, held frames): what a diagnosis or an invariant check looks at.
    pub fn with_collected<R>(&self, f: impl FnOnce(&[MediaPacket]) -> R) -> R {
        f(lock(&self.pending).pending())
    }

    /// The path this stream is published on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The announced presentation.
    pub fn presentation(&self) -> &Presentation {
        &self.presentation
    }

    /// A number that differs between successive streams on a path (the SDP version).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Marks the stream as readable (its source started sending).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether readers may DESCRIBE and PLAY it.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_ended()
    }

    /// Whether the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Completes when the stream ends (at once if it has). Runtime-agnostic: the waker of
    /// the task polling it is woken by [`Stream::end`]; dropping the future forgets it.
    pub fn ended(&self) -> Ended<'_> {
        Ended {
            stream: self,
            slot: None,
        }
    }

    /// Subscribes `sink`: it gets every batch from now on, and the end. A sink added to an
    /// ended stream is told so at once.
    pub fn add_sink(&self, sink: Arc<dyn Sink>) -> StreamSinkId {
        let id = StreamSinkId(self.next_sink.fetch_add(1, Ordering::Relaxed));
        let mut sinks = lock(&self.sinks);
        if self.is_ended() {
            drop(sinks);
            sink.on_end(EndReason::SourceGone);
        } else {
            sinks.push((id, sink));
        }
        id
    }

    /// Unsubscribes a sink; unknown ids are ignored. A batch being handed out may still
    /// reach it.
    pub fn remove_sink(&self, id: StreamSinkId) {
        lock(&self.sinks).retain(|(i, _)| *i != id);
    }

    /// Subscribes `sink` as [`Stream::add_sink`] does and keeps it findable by its type
    /// with [`Stream::attached`]: a module's per-stream state (one per type and stream; a
    /// second of the same type replaces the first for look-ups, both stay subscribed).
    pub fn attach<T: Sink + Any>(&self, sink: Arc<T>) -> StreamSinkId {
        let any: Arc<dyn Any + Send + Sync> = sink.clone();
        lock(&self.attached).insert(0, any);
        self.add_sink(sink)
    }

    /// The sink of type `T` attached to this stream, attaching the one `make` builds if
    /// there is none yet (atomically: two callers never attach two).
    pub fn attach_once<T: Sink + Any>(&self, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        let mut attached = lock(&self.attached);
        if let Some(found) = attached.iter().find_map(|a| a.clone().downcast::<T>().ok()) {
            return found;
        }
        let sink = make();
        let any: Arc<dyn Any + Send + Sync> = sink.clone();
        attached.insert(0, any);
        self.add_sink(sink.clone());
        sink
    }

    /// Files what a delivery module can carry of this stream (replacing its earlier note):
    /// modules call it from their stream hook, so the API and the page can say per path
    /// which protocol plays it and why not, without naming the module.
    pub fn set_delivery(&self, note: DeliveryNote) {
        let mut d = lock(&self.delivery);
        match d.iter_mut().find(|n| n.protocol == note.protocol) {
            Some(n) => *n = note,
            None => d.push(note),
        }
    }

    /// The delivery notes filed so far, in the order the modules filed them.
    pub fn delivery(&self) -> Vec<DeliveryNote> {
        lock(&self.delivery).clone()
    }

    /// The sink of type `T` attached to this stream, if any.
    pub fn attached<T: Sink + Any>(&self) -> Option<Arc<T>> {
        lock(&self.attached)
            .iter()
            .find_map(|a| a.clone().downcast::<T>().ok())
    }

    /// The source changed (e.g. a pull source reconnected) but the media did not: the
    /// next packets continue the stream's numbering instead of jumping.
    pub fn handle_source_change(&self) {
        for t in &self.tracks {
            lock(&t.timeline).handle_source_change();
        }
    }

    /// Hands one frame's RTP packets of `track`, packetized by the server itself (a stored
    /// file, a recording), to every sink and flushes: the frame goes out as one batch when
    /// its turn comes. A packet that does not parse as RTP is skipped.
    pub fn push_frame(
        &self,
        track: usize,
        packets: impl IntoIterator<Item = bytes::Bytes>,
        received_at: Instant,
    ) {
        for data in packets {
            let Ok(header) = sluice_rtp::packet::parse_rtp(&data) else {
                continue;
            };
            self.push_rtp(MediaPacket {
                track,
                data,
                header,
                received_at,
            });
        }
        self.flush();
    }

    /// Hands one RTP packet of `track` to every sink (a shared buffer, no copies). Its
    /// numbering is first mapped onto the stream's timeline, which changes nothing until
    /// the source changes; then the header is rewritten once, here, for all sinks.
    pub fn push_rtp(&self, mut packet: MediaPacket) {
        let Some(state) = self.tracks.get(packet.track) else {
            return;
        };
        self.packets_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in
            .fetch_add(u64::from(packet.payload_len()), Ordering::Relaxed);
        let mapped = lock(&state.timeline).map(&packet.header, packet.received_at);
        let h = packet.header;
        if (mapped.sequence, mapped.timestamp, mapped.ssrc) != (h.sequence, h.timestamp, h.ssrc) {
            // A freshly received buffer is uniquely owned: rewrite in place, else copy once.
            let mut buf = packet
                .data
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            rewrite_header(&mut buf, mapped.sequence, mapped.timestamp, mapped.ssrc);
            packet.data = buf.freeze();
            packet.header.sequence = mapped.sequence;
            packet.header.timestamp = mapped.timestamp;
            packet.header.ssrc = mapped.ssrc;
        }
        let mut pending = lock(&self.pending);
        let now = packet.received_at;
        pending.push(now, packet);
        self.send_batches(&mut pending);
    }

    /// The source has more input at hand (a read returned several frames, or more is
    /// waiting): until [`Stream::release_frames`], frames that end are collected instead
    /// of handed out one by one, so that a busy server sends each reader several frames
    /// per system call, while an idle one still sends each frame as soon as it is
    /// complete. No effect with a fan-out window, which batches anyway.
    pub fn hold_frames(&self) {
        lock(&self.pending).hold();
    }

    /// The source's input at hand is used up: the complete frames collected since
    /// [`Stream::hold_frames`] go to the sinks in one batch; an unfinished frame waits
    /// for its end as usual.
    pub fn release_frames(&self) {
        let mut pending = lock(&self.pending);
        pending.release();
        self.send_batches(&mut pending);
    }

    /// Hands the packets collected so far to the sinks. Sources call it when they have no
    /// more input at hand, so a batch never waits for input that is not coming.
    pub fn flush(&self) {
        let mut pending = lock(&self.pending);
        pending.flush();
        self.send_batches(&mut pending);
    }

    /// Flushes the batch if its first packet arrived more than `max_age` before `now`: a
    /// frame without a marker bit, with no next frame yet to end it.
    pub fn flush_stale(&self, now: Instant, max_age: Duration) {
        let mut pending = lock(&self.pending);
        pending.flush_stale(now, max_age);
        self.send_batches(&mut pending);
    }

    /// Hands every batch the batcher has cut to the sinks, oldest first.
    fn send_batches(&self, batcher: &mut Batcher) {
        while let Some(batch) = batcher.next_batch() {
            self.send_batch(batch);
        }
    }

    /// Hands one batch to every sink as one shared [`Batch`] (the packets moved in,
    /// refilled for every batch: no allocation once warm).
    fn send_batch(&self, batch: std::vec::Drain<'_, MediaPacket>) {
        let mut out = lock(&self.out);
        out.extend(batch);
        {
            let sinks = lock(&self.sinks);
            for (_, sink) in sinks.iter() {
                sink.on_batch(&out);
            }
        }
        out.clear();
    }

    /// Records the source's Sender Report for `track`, so sinks can emit their own SRs
    /// with the same NTP↔RTP mapping.
    pub fn handle_sender_report(&self, track: usize, info: &SenderInfo, now: Instant) {
        if let Some(state) = self.tracks.get(track) {
            let rtp_timestamp = lock(&state.timeline).map_timestamp(info.rtp_timestamp);
            *lock(&state.sr) = Some(SrMapping {
                ntp: info.ntp,
                rtp_timestamp,
                received_at: now,
            });
        }
    }

    /// The least room among the sinks' queues ([`Sink::room`]); None when no sink reports
    /// one. For sources that can wait (a recording played as fast as the reader takes
    /// it), not for live ones.
    pub fn room(&self) -> Option<Room> {
        let sinks = lock(&self.sinks);
        sinks.iter().filter_map(|(_, s)| s.room()).reduce(Room::min)
    }

    /// The source's latest NTP↔RTP mapping for `track`, if it sent an SR.
    pub fn sr_mapping(&self, track: usize) -> Option<SrMapping> {
        *lock(&self.tracks.get(track)?.sr)
    }

    /// The source's media reached its end, the stream goes on (an on-demand file waits
    /// for the next PLAY): what is collected goes out, then every sink's
    /// [`Sink::on_end_of_media`].
    pub fn push_end_of_media(&self) {
        self.flush();
        let sinks = lock(&self.sinks);
        for (_, sink) in sinks.iter() {
            sink.on_end_of_media();
        }
    }

    /// Ends the stream: every sink is told (after the batches before) and dropped, and
    /// [`Stream::ended`] completes.
    pub fn end(&self, reason: EndReason) {
        if self.is_ended() {
            return;
        }
        self.flush();
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let sinks = std::mem::take(&mut *lock(&self.sinks));
        for (_, sink) in sinks {
            sink.on_end(reason);
        }
        let wakers = std::mem::take(&mut lock(&self.waiters).wakers);
        for (_, w) in wakers {
            w.wake();
        }
    }
}

/// The future of [`Stream::ended`].
#[derive(Debug)]
pub struct Ended<'a> {
    stream: &'a Stream,
    /// Its place among the stream's waiters, once it waited.
    slot: Option<u64>,
}

impl Future for Ended<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stream.is_ended() {
            return Poll::Ready(());
        }
        let mut waiters = lock(&self.stream.waiters);
        // Checked again under the lock `end` takes its wakers under: no wake-up is lost.
        if self.stream.is_ended() {
            return Poll::Ready(());
        }
        let slot = match self.slot {
            Some(slot) => slot,
            None => {
                waiters.next += 1;
                waiters.next
            }
        };
        match waiters.wakers.get_mut(&slot) {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                waiters.wakers.insert(slot, cx.waker().clone());
            }
        }
        drop(waiters);
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            lock(&self.stream.waiters).wakers.remove(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    const AV: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
        m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";

    fn stream() -> Arc<Stream> {
        Stream::new(
            "p".into(),
            Presentation::from_sdp(AV.as_bytes()).unwrap(),
            1,
        )
    }

    /// An RTP packet of `track` as parsed from its bytes.
    fn rtp(track: usize, marker: bool, seq: u16, ts: u32, ssrc: u32) -> MediaPacket {
        let mut d = vec![0x80, u8::from(marker) << 7 | (96 + track as u8)];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(&[0x65, seq as u8]);
        let data = Bytes::from(d);
        MediaPacket {
            track,
            header: sluice_rtp::packet::parse_rtp(&data).unwrap(),
            data,
            received_at: Instant::now(),
        }
    }

    /// Records every batch as its sequence numbers, and the ends.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<(u16, u32, u32)>>>,
        ends: Mutex<Vec<EndReason>>,
        media_ends: AtomicUsize,
    }

    impl Sink for Recorder {
        fn on_batch(&self, batch: &Batch) {
            let seen = batch
                .packets()
                .iter()
                .map(|p| {
                    let h = sluice_rtp::packet::parse_rtp(&p.data).unwrap();
                    assert_eq!(
                        (h.sequence, h.timestamp, h.ssrc),
                        (p.header.sequence, p.header.timestamp, p.header.ssrc),
                        "header rewritten in the bytes too"
                    );
                    (h.sequence, h.timestamp, h.ssrc)
                })
                .collect();
            self.batches.lock().unwrap().push(seen);
        }
        fn on_end(&self, reason: EndReason) {
            self.ends.lock().unwrap().push(reason);
        }
        fn on_end_of_media(&self) {
            self.media_ends.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_sink_gets_each_frame_once_in_order_and_the_end() {
        let s = stream();
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        s.add_sink(a.clone());
        s.add_sink(b.clone());
        s.push_rtp(rtp(0, false, 1, 0, 7));
        s.push_rtp(rtp(0, true, 2, 0, 7));
        s.push_rtp(rtp(0, true, 3, 3000, 7));
        s.end(EndReason::SourceGone);
        for r in [&a, &b] {
            let batches = r.batches.lock().unwrap();
            assert_eq!(
                *batches,
                vec![vec![(1, 0, 7), (2, 0, 7)], vec![(3, 3000, 7)]]
            );
            assert_eq!(*r.ends.lock().unwrap(), vec![EndReason::SourceGone]);
        }
        // After the end: a new sink is told at once, pushes reach no one.
        let late = Arc::new(Recorder::default());
        s.add_sink(late.clone());
        assert_eq!(*late.ends.lock().unwrap(), vec![EndReason::SourceGone]);
    }

    #[test]
    fn a_removed_sink_gets_nothing_more() {
        let s = stream();
        let a = Arc::new(Recorder::default());
        let id = s.add_sink(a.clone());
        s.push_rtp(rtp(0, true, 1, 0, 7));
        s.remove_sink(id);
        s.push_rtp(rtp(0, true, 2, 3000, 7));
        s.end(EndReason::Replaced);
        assert_eq!(a.batches.lock().unwrap().len(), 1);
        assert!(a.ends.lock().unwrap().is_empty());
    }

    #[test]
    fn a_source_change_keeps_numbering_continuous() {
        let s = stream();
        let a = Arc::new(Recorder::default());
        s.add_sink(a.clone());
        s.push_rtp(rtp(1, false, 10, 1000, 5));
        s.push_rtp(rtp(1, false, 11, 4000, 5));
        s.handle_source_change();
        s.push_rtp(rtp(1, false, 30_000, 77, 9));
        let seen: Vec<_> = a.batches.lock().unwrap().concat();
        assert_eq!(seen[0].0, 10);
        assert_eq!(seen[2].0, 12, "sequence continues");
        assert_eq!(seen[2].2, 5, "SSRC kept");
        let step = seen[2].1.wrapping_sub(4000);
        assert!(
            step > 0 && step < 48_000,
            "timestamp moves on a little: {step}"
        );
    }

    #[test]
    fn attached_sinks_are_found_by_type_and_get_batches() {
        let s = stream();
        let r = Arc::new(Recorder::default());
        s.attach(r.clone());
        let found = s.attached::<Recorder>().expect("attached");
        assert!(Arc::ptr_eq(&found, &r));
        s.push_rtp(rtp(0, true, 1, 0, 7));
        assert_eq!(r.batches.lock().unwrap().len(), 1);
        s.push_end_of_media();
        assert_eq!(r.media_ends.load(Ordering::SeqCst), 1);
        s.end(EndReason::SourceGone);
        assert_eq!(*r.ends.lock().unwrap(), vec![EndReason::SourceGone]);
        assert!(
            s.attached::<Recorder>().is_some(),
            "still found after the end"
        );
    }

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn ended_wakes_its_waiter_once_the_stream_ends_and_forgets_dropped_ones() {
        let s = stream();
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        {
            let mut dropped = Box::pin(s.ended());
            assert!(dropped.as_mut().poll(&mut cx).is_pending());
        }
        assert!(
            s.waiters.lock().unwrap().wakers.is_empty(),
            "dropped: forgotten"
        );
        let mut fut = Box::pin(s.ended());
        for _ in 0..3 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            s.waiters.lock().unwrap().wakers.len(),
            1,
            "one slot per waiter"
        );
        s.end(EndReason::SourceGone);
        assert!(flag.0.load(Ordering::SeqCst), "woken");
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }
}
