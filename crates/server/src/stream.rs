//! The stream model: one source feeds a per-path [`Stream`]; any number of [`Sink`]s
//! subscribe to it.
//!
//! A source (an RTSP publisher, a pull, a file) calls [`Stream::push_rtp`] with each packet as
//! a shared [`Bytes`](bytes::Bytes). The stream collects a frame's packets and hands the batch
//! to every sink at once ([`Sink::handle_batch`]): the same buffers (a reference count, never a
//! copy), and one shared [`Egress`] in which UDP readers queue their messages so that a frame
//! reaches hundreds of readers in a few `sendmmsg` calls. A batch is flushed at a video frame's
//! last packet (RTP marker), when a new frame begins, for every non-video packet, at 64
//! packets, when the source calls [`Stream::flush`] (a file source after each sample), and by
//! the server's reaper once it is 50 ms old (a frame without a marker and no next frame yet).
//! With a fan-out window ([`Stream::set_fanout_window`], `rtsp.fanout_window`), a live stream's
//! batch instead spans up to that much media, across frames and tracks: every reader then gets
//! several frames per send, for that much added latency. Where a batch ends is decided by the
//! hub's [`Batcher`] (sans-IO, tested on a virtual clock); the stream keeps the locks, the
//! fan-out and the delivery. Live sources do not flush when their socket runs dry: publishers
//! write a frame packet by packet, and the reads would split it. But while a live source has
//! more input at hand than one frame ([`Stream::hold_frames`]), the frames that end in it are
//! collected and go out together when it is used up ([`Stream::release_frames`]): a server that
//! falls behind sends bigger batches instead of falling further behind, and an idle one still
//! sends each frame as it ends. A stream with [`OFFLOAD_SINKS`] sinks or more does not deliver
//! on its source's thread (a runtime worker, shared with other sessions' tasks): its batches go
//! to the fan-out threads ([`crate::outbox`]), in order, and the source goes on at once. Sinks
//! must not block: each owns a bounded queue and decides itself what happens when it is full.
//! Adding a kind of source or sink never touches another.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

#[cfg(test)]
use bytes::Bytes;
use bytes::BytesMut;
use sluice_rtp::clock::SrMapping;
use sluice_rtp::packet::{rewrite_header, RtpHeader};
use sluice_rtp::rtcp::SenderInfo;
use sluice_rtp::timeline::Timeline;

use crate::egress::{Egress, Refund, UdpPlan};
use crate::gop::GopCache;
use crate::outbox::Outbox;
use crate::presentation::Presentation;
use sluice_hub::batcher::Batcher;

pub use sluice_hub::batcher::INPUT_PAUSE;
pub use sluice_hub::packet::{EndReason, MediaPacket};

/// Fewest sinks whose deliveries run on the fan-out threads instead of the source's
/// ([`crate::outbox`]): as many as the fan-out cuts into shards. Below, a delivery takes
/// well under a millisecond, less than the hand-over would add.
pub const OFFLOAD_SINKS: usize = crate::fanout::SHARDED_SINKS;

/// Most packets collected before a flush (the batcher's per-frame cap), for the tests.
#[cfg(test)]
const MAX_PENDING: usize = sluice_hub::batcher::MAX_PENDING;

/// Most packets collected before a flush with a fan-out window: a TCP reader's batch is
/// still one vectored write (two slices per packet, [`crate::media_queue::MAX_IOV`]).
const MAX_PENDING_WINDOWED: usize = crate::media_queue::MAX_IOV / 2;

/// The first video track whose codec Sluice recognizes keyframes of: what the GOP cache
/// and frame batching key on.
fn keyframe_track(presentation: &Presentation) -> Option<(usize, sluice_codec::Codec)> {
    presentation.tracks().iter().enumerate().find_map(|(i, t)| {
        (t.media == "video")
            .then(|| sluice_codec::codec_from_encoding(&t.encoding))
            .flatten()
            .map(|c| (i, c))
    })
}

/// A consumer of a stream: an RTSP reader, a multicast group, later recorders and web outputs.
pub trait Sink: Send + Sync {
    /// Called for every RTP packet while the sink is subscribed (and for the GOP cache
    /// handed over at subscription), unless the sink takes whole batches. Must never block.
    fn handle_packet(&self, packet: &MediaPacket);
    /// Called with each batch of packets (usually one frame's). The default hands each
    /// packet to [`Sink::handle_packet`]; UDP readers queue messages into `egress` instead.
    fn handle_batch(&self, egress: &mut Egress<'_>) {
        for p in egress.packets() {
            self.handle_packet(p);
        }
    }
    /// The fan-out will hand this sink a batch shortly: hint the caches to fetch the
    /// state [`Sink::handle_batch`] reads first (see [`crate::prefetch`]). Must not
    /// block or change anything. The default does nothing.
    fn prefetch(&self) {}
    /// A UDP message this sink queued in [`Egress::send_udp`] was refused by the kernel:
    /// what it counted for it, to take back.
    fn handle_refused(&self, _refund: Refund) {}
    /// Whether this sink sends GSO runs (a UDP reader whose socket can): the stream then
    /// plans its batches into runs ([`UdpPlan`]). Asked once, at subscription. The
    /// default: no.
    fn sends_gso_runs(&self) -> bool {
        false
    }
    /// The stream has ended; no more packets will come.
    fn handle_end(&self, reason: EndReason);
    /// The source reached the end of its media (a file's end or a PLAY range's end) but
    /// the stream stays open: a new PLAY may start it again.
    fn handle_end_of_stream(&self) {}
}

/// Identifies a subscription, to remove it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkId(u64);

#[cfg(test)]
impl SinkId {
    /// An id for tests that build sink lists by hand.
    pub(crate) fn for_test(n: u64) -> SinkId {
        SinkId(n)
    }
}

/// The batch being collected: the packets in arrival order, in the [`Batcher`] that
/// decides where batches end (frame ends, holds, the fan-out window, pauses).
#[derive(Debug)]
struct Pending {
    /// The packets and the batching decisions over them.
    packets: Batcher,
}

/// Per-track live state kept by the stream.
#[derive(Debug)]
struct TrackState {
    /// Outgoing numbering, continuous across source changes.
    timeline: Mutex<Timeline>,
    /// The last RTP header seen (for RTP-Info and SSRC).
    last: Mutex<Option<RtpHeader>>,
    /// NTP↔RTP mapping from the source's latest Sender Report.
    sr: Mutex<Option<SrMapping>>,
}

/// Runs `f`, a wait of milliseconds (for a fan-out in progress), so that a runtime worker
/// calling it first hands its other tasks (other sessions' requests) to another thread
/// (`tokio::task::block_in_place`). Elsewhere (a current-thread runtime, no runtime) it
/// just runs `f`. Only for rare waits: done per flush, the hand-overs cost more than the
/// wait (see [`crate::fanout::deliver`]).
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The live stream of one path: its presentation, per-track state and its sinks.
pub struct Stream {
    path: String,
    presentation: Presentation,
    tracks: Vec<TrackState>,
    /// The sinks each batch goes to. A flush holds this lock while it delivers, which takes
    /// milliseconds at thousands of readers; so subscribing does not take it (see
    /// [`Stream::joining`]).
    sinks: Mutex<Vec<(SinkId, Arc<dyn Sink>)>>,
    /// Sinks subscribed since the last flush: each has been handed the GOP cache up to the
    /// last batch filed, and the next flush moves it into `sinks` before delivering.
    joining: Mutex<Vec<(SinkId, Arc<dyn Sink>)>>,
    next_sink: AtomicU64,
    ready: AtomicBool,
    ended: AtomicBool,
    ended_notify: tokio::sync::Notify,
    version: u64,
    gop: Mutex<GopCache>,
    /// Packets pushed but not yet handed to sinks (the batch being collected).
    pending: Mutex<Pending>,
    /// UDP datagrams sinks could not send (send buffer full), for the drop log.
    udp_dropped: AtomicU64,
    /// This stream, for the fan-out job that delivers its offloaded batches.
    me: Weak<Stream>,
    /// Batches handed to the fan-out threads and not yet delivered.
    outbox: Outbox,
    /// The buffer a flush's UDP plan copies its GSO runs into ([`UdpPlan::new`]), kept
    /// for its allocation.
    plan_buffer: Mutex<Vec<u8>>,
    /// Sinks subscribed and not removed (joined or joining): whether a flush is offloaded.
    subscribed: AtomicUsize,
    /// Whether a flush plans GSO runs: set for good once a sink that sends them
    /// subscribed ([`Sink::sends_gso_runs`]). Each sink's socket still decides, at
    /// send time, whether a run goes as one message; the runs are only the plan's copy.
    gso_runs: AtomicBool,
}

pub use sluice_hub::gop::TrackStart;

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

impl Stream {
    /// A new, not yet ready stream for `path` carrying `presentation`'s tracks.
    pub fn new(path: String, presentation: Presentation, version: u64) -> Arc<Stream> {
        let video = keyframe_track(&presentation);
        let tracks = presentation
            .tracks()
            .iter()
            .map(|t| TrackState {
                timeline: Mutex::new(Timeline::new(t.clock_rate)),
                last: Mutex::new(None),
                sr: Mutex::new(None),
            })
            .collect();
        Arc::new_cyclic(|me| Stream {
            path,
            presentation,
            tracks,
            sinks: Mutex::new(Vec::new()),
            joining: Mutex::new(Vec::new()),
            next_sink: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            ended_notify: tokio::sync::Notify::new(),
            version,
            gop: Mutex::new(GopCache::new(video)),
            pending: Mutex::new(Pending {
                packets: Batcher::new(video.map(|(i, _)| i), MAX_PENDING_WINDOWED),
            }),
            udp_dropped: AtomicU64::new(0),
            me: me.clone(),
            outbox: Outbox::default(),
            plan_buffer: Mutex::new(Vec::new()),
            subscribed: AtomicUsize::new(0),
            gso_runs: AtomicBool::new(false),
        })
    }

    /// Collects up to `window` of media (from the arrival of a batch's first packet) into
    /// one batch, across frames and tracks, instead of a batch per frame: fewer, larger
    /// sends per reader for up to `window` of added latency. Zero: a batch per frame.
    /// For live sources (publishers, pulls); a file source flushes each sample itself.
    pub fn set_fanout_window(&self, window: std::time::Duration) {
        self.pending().packets.set_window(window);
    }

    /// The fan-out window (zero: a batch per frame).
    pub fn fanout_window(&self) -> std::time::Duration {
        self.pending().packets.window()
    }

    /// When a live source that last had input at `last_input` should flush the packets
    /// collected so far, if any: once its input has paused for [`INPUT_PAUSE`] or, with a
    /// fan-out window, once the window since the batch's first packet has passed.
    pub fn flush_at(&self, last_input: Instant) -> Option<Instant> {
        self.pending().packets.flush_at(last_input)
    }

    /// The source had input at `now` that completed no packet (a read that ended within
    /// one): the input-pause timer ([`Stream::poll_timeout`]) runs from here, so a frame
    /// still arriving is not cut.
    pub fn note_input(&self, now: Instant) {
        self.pending().packets.note_input(now);
    }

    /// When the live source's timer should call [`Stream::handle_timeout`]: the
    /// [`Stream::flush_at`] of its latest input (pushed or noted). None while nothing is
    /// collected, so an idle source arms no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending().packets.poll_timeout()
    }

    /// The live source's timer fired at `now`: if [`Stream::poll_timeout`] has passed,
    /// the packets collected go to the sinks without waiting for the rest of their frame.
    pub fn handle_timeout(&self, now: Instant) {
        let mut pending = self.pending();
        pending.packets.handle_timeout(now);
        self.send_batches(&mut pending.packets);
    }

    /// The batch being collected.
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Completes when the stream ends.
    pub async fn ended(&self) {
        let notified = self.ended_notify.notified();
        if self.is_ended() {
            return;
        }
        notified.await;
    }

    /// Subscribes a sink. A sink added to an ended stream is told so at once.
    pub fn add_sink(&self, sink: Arc<dyn Sink>) -> SinkId {
        self.subscribe(sink).0
    }

    /// Turns the GOP cache on (the default for streams with video) or off (private
    /// on-demand streams, or `rtsp.gop_cache = false`).
    pub fn set_gop_cache(&self, on: bool) {
        let video = if on {
            keyframe_track(&self.presentation)
        } else {
            None
        };
        *self.gop.lock().unwrap_or_else(|e| e.into_inner()) = GopCache::new(video);
    }

    /// Subscribes a sink. Atomically with the subscription, the sink first receives the
    /// GOP cache (packets since the last keyframe), and the returned per-track starts say
    /// which packet it gets first (for RTP-Info).
    ///
    /// Never waits for a fan-out in progress (the caller is a session's request, on a
    /// runtime worker that other sessions share): the GOP lock, which a flush holds only
    /// while it files its batch, orders the subscription between two batches, and the
    /// sink joins the delivery list at the next flush.
    pub fn subscribe(&self, sink: Arc<dyn Sink>) -> (SinkId, Vec<Option<TrackStart>>) {
        let id = SinkId(self.next_sink.fetch_add(1, Ordering::Relaxed));
        if sink.sends_gso_runs() {
            self.gso_runs.store(true, Ordering::Relaxed);
        }
        if !self.is_ended() {
            let gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
            let starts = gop.starts(self.tracks.len(), |t| self.last_header(t));
            for p in gop.packets() {
                sink.handle_packet(p);
            }
            // Checked under the joining lock, which `end` drains after setting `ended`: a
            // sink is either joined and ended by `end`, or ended here.
            let mut joining = self.joining();
            if !self.is_ended() {
                joining.push((id, sink));
                self.subscribed.fetch_add(1, Ordering::Relaxed);
                return (id, starts);
            }
        }
        sink.handle_end(EndReason::SourceGone);
        (id, vec![None; self.tracks.len()])
    }

    /// Unsubscribes a sink; unknown ids are ignored. Waits for a fan-out in progress, so
    /// that the sink is handed nothing once this returns (a PAUSE or TEARDOWN reply, a BYE,
    /// the session's final counts); a runtime worker hands its other tasks to another
    /// thread while it waits.
    pub fn remove_sink(&self, id: SinkId) {
        let mut sinks = match self.sinks.try_lock() {
            Ok(sinks) => sinks,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => off_the_runtime(|| self.sinks()),
        };
        let before = sinks.len();
        sinks.retain(|(i, _)| *i != id);
        let mut joining = self.joining();
        let before = before + joining.len();
        joining.retain(|(i, _)| *i != id);
        let removed = before - sinks.len() - joining.len();
        self.subscribed.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Number of subscribed sinks.
    pub fn sink_count(&self) -> usize {
        let sinks = self.sinks();
        sinks.len() + self.joining().len()
    }

    /// The delivery list (lock order: `sinks`, then `gop`, then `joining`).
    fn sinks(&self) -> MutexGuard<'_, Vec<(SinkId, Arc<dyn Sink>)>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sinks waiting for the next flush.
    fn joining(&self) -> MutexGuard<'_, Vec<(SinkId, Arc<dyn Sink>)>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The source changed (e.g. a pull source reconnected) but the media did not: the
    /// next packets continue the stream's numbering instead of jumping.
    pub fn handle_source_change(&self) {
        for t in &self.tracks {
            t.timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handle_source_change();
        }
    }

    /// Hands one RTP packet of `track` to every sink (a shared buffer, no copies). Its
    /// numbering is first mapped onto the stream's timeline, which changes nothing until
    /// the source changes; then the header is rewritten once, here, for all sinks.
    pub fn push_rtp(&self, mut packet: MediaPacket) {
        let Some(state) = self.tracks.get(packet.track) else {
            return;
        };
        let mapped = state
            .timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(&packet.header, packet.received_at);
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
        let mut pending = self.pending();
        let now = packet.received_at;
        pending.packets.push(now, packet);
        self.send_batches(&mut pending.packets);
    }

    /// The source has more input at hand (a read returned several frames, or more is
    /// waiting): until [`Stream::release_frames`], frames that end are not handed to the
    /// sinks one by one but collected (up to 256 packets), so that a busy server sends
    /// each reader several frames per system call. An idle one, whose reads each end
    /// within a frame or at its end, still sends each frame as soon as it is complete:
    /// the batches grow with the load, not with a fixed delay. No effect with a fan-out
    /// window, which batches anyway.
    pub fn hold_frames(&self) {
        self.pending().packets.hold();
    }

    /// The source's input at hand is used up: the complete frames collected since
    /// [`Stream::hold_frames`] go to the sinks in one batch; an unfinished frame waits
    /// for its end as usual.
    pub fn release_frames(&self) {
        let mut pending = self.pending();
        pending.packets.release();
        self.send_batches(&mut pending.packets);
    }

    /// Hands the packets collected so far to the sinks (or to the fan-out threads that
    /// deliver them, see [`crate::outbox`]). Sources call it when they have no more
    /// input at hand, so a batch never waits for input that is not coming.
    pub fn flush(&self) {
        let mut pending = self.pending();
        pending.packets.flush();
        self.send_batches(&mut pending.packets);
    }

    /// Flushes the batch if its first packet arrived more than `max_age` before `now`: a
    /// frame without a marker bit, with no next frame yet to end it.
    pub fn flush_stale(&self, now: Instant, max_age: std::time::Duration) {
        let mut pending = self.pending();
        pending.packets.flush_stale(now, max_age);
        self.send_batches(&mut pending.packets);
    }

    /// Hands every batch the batcher has cut to the sinks, oldest first.
    fn send_batches(&self, batcher: &mut Batcher) {
        while let Some(batch) = batcher.next_batch() {
            self.send_batch(batch);
        }
    }

    /// Hands one batch to the sinks: here, or with [`OFFLOAD_SINKS`] sinks or more on the
    /// fan-out threads, so that the source (on a runtime worker) goes on at once. While
    /// offloaded batches wait, every batch waits behind them, so the sinks see them in
    /// order.
    fn send_batch(&self, batch: std::vec::Drain<'_, MediaPacket>) {
        let offload =
            self.subscribed.load(Ordering::Relaxed) >= OFFLOAD_SINKS || self.outbox.is_busy();
        if offload {
            let mut spare = self.outbox.spare();
            spare.extend(batch);
            if self.outbox.post(spare) {
                match self.me.upgrade() {
                    Some(me) => crate::fanout::spawn(move || me.run_outbox()),
                    None => self.run_outbox(),
                }
            }
            if self.outbox.is_full() {
                // The fan-out falls behind for good: the source waits, as it would for
                // its own deliveries.
                off_the_runtime(|| self.outbox.wait_for_room());
            }
        } else {
            self.deliver(batch.as_slice());
        }
    }

    /// The fan-out job: delivers the offloaded batches until none waits.
    fn run_outbox(&self) {
        /// Puts the outbox right if a delivery panics, so the stream's waits end.
        struct Abandon<'a>(&'a Outbox);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.abandon();
                }
            }
        }
        let _guard = Abandon(&self.outbox);
        let mut delivered = None;
        while let Some(batch) = self.outbox.next(delivered.take(), MAX_PENDING_WINDOWED) {
            self.deliver(&batch);
            delivered = Some(batch);
        }
    }

    /// Waits until the offloaded batches are delivered (a runtime worker hands its other
    /// tasks on meanwhile): before anything that must come after them.
    fn wait_for_deliveries(&self) {
        if self.outbox.is_busy() {
            off_the_runtime(|| self.outbox.wait_until_idle());
        }
    }

    /// Files `batch` (the GOP cache, the last headers), moves the sinks that joined since
    /// the last batch into the delivery list, and hands it to every sink.
    fn deliver(&self, batch: &[MediaPacket]) {
        let mut sinks = self.sinks();
        {
            // Under the GOP lock: `subscribe` sees, for every track, exactly the last
            // packet its new sink will not get, and a GOP cache ending with it. The sinks
            // that subscribed before this batch was filed get it, the later ones do not.
            let mut gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
            sinks.append(&mut self.joining());
            for p in batch {
                if let Some(state) = self.tracks.get(p.track) {
                    *state.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.header);
                }
                gop.handle_packet(p);
            }
        }
        // Deliveries of one stream do not overlap; if one ever did, it plans into a buffer
        // of its own.
        let mut lent = self.plan_buffer.try_lock().ok();
        let mut own = Vec::new();
        let buffer = lent.as_deref_mut().unwrap_or(&mut own);
        let plan = UdpPlan::new(batch, self.gso_runs.load(Ordering::Relaxed), buffer);
        let sent = crate::fanout::deliver(&sinks, batch, &plan);
        drop(sinks);
        if sent.dropped > 0 && self.udp_dropped.fetch_add(sent.dropped, Ordering::Relaxed) == 0 {
            tracing::warn!(path = %self.path, dropped = sent.dropped, "UDP send buffer full: datagrams dropped");
        }
    }

    /// UDP datagrams dropped because the kernel refused them (send buffer full).
    pub fn udp_dropped(&self) -> u64 {
        self.udp_dropped.load(Ordering::Relaxed)
    }

    /// Records the source's Sender Report for `track`, so sinks can emit their own SRs
    /// with the same NTP↔RTP mapping.
    pub fn handle_sender_report(&self, track: usize, info: &SenderInfo, now: Instant) {
        if let Some(state) = self.tracks.get(track) {
            let rtp_timestamp = state
                .timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_timestamp(info.rtp_timestamp);
            *state.sr.lock().unwrap_or_else(|e| e.into_inner()) = Some(SrMapping {
                ntp: info.ntp,
                rtp_timestamp,
                received_at: now,
            });
        }
    }

    /// The source's latest NTP↔RTP mapping for `track`, if it sent an SR.
    pub fn sr_mapping(&self, track: usize) -> Option<SrMapping> {
        *self
            .tracks
            .get(track)?
            .sr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The last RTP header seen on `track`.
    pub fn last_header(&self, track: usize) -> Option<RtpHeader> {
        *self
            .tracks
            .get(track)?
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every sink that the source's media ended (see [`Sink::handle_end_of_stream`]).
    pub fn push_end_of_stream(&self) {
        self.flush();
        self.wait_for_deliveries();
        let sinks = self.sinks();
        for (_, sink) in sinks.iter().chain(self.joining().iter()) {
            sink.handle_end_of_stream();
        }
    }

    /// Ends the stream: every sink is told and dropped; `ended()` completes.
    pub fn end(&self, reason: EndReason) {
        if self.is_ended() {
            return;
        }
        self.flush();
        self.wait_for_deliveries();
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let sinks = {
            let mut sinks = self.sinks();
            let mut all = std::mem::take(&mut *sinks);
            all.append(&mut self.joining());
            self.subscribed.store(0, Ordering::Relaxed);
            all
        };
        for (_, sink) in sinks {
            sink.handle_end(reason);
        }
        self.ended_notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    #[derive(Default)]
    struct Counting {
        packets: AtomicUsize,
        ends: AtomicUsize,
        last_ptr: Mutex<Option<usize>>,
    }
    impl Sink for Counting {
        fn handle_packet(&self, p: &MediaPacket) {
            self.packets.fetch_add(1, Ordering::SeqCst);
            *self.last_ptr.lock().unwrap() = Some(p.data.as_ptr() as usize);
        }
        fn handle_end(&self, _: EndReason) {
            self.ends.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn packet(data: &Bytes) -> MediaPacket {
        MediaPacket {
            track: 0,
            data: data.clone(),
            header: RtpHeader {
                payload_type: 96,
                marker: false,
                sequence: 1,
                timestamp: 2,
                ssrc: 3,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    #[test]
    fn fan_out_shares_one_buffer_and_end_reaches_every_sink() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let a = Arc::new(Counting::default());
        let b = Arc::new(Counting::default());
        let ida = s.add_sink(a.clone());
        s.add_sink(b.clone());
        let data = Bytes::from(vec![0x80u8; 100]);
        s.push_rtp(packet(&data));
        assert_eq!(
            a.packets.load(Ordering::SeqCst),
            0,
            "a frame waits for its end"
        );
        s.flush();
        assert_eq!(a.packets.load(Ordering::SeqCst), 1);
        // Same allocation, not a copy.
        assert_eq!(*a.last_ptr.lock().unwrap(), Some(data.as_ptr() as usize));
        assert_eq!(*b.last_ptr.lock().unwrap(), Some(data.as_ptr() as usize));
        s.remove_sink(ida);
        s.push_rtp(packet(&data));
        s.flush();
        assert_eq!(a.packets.load(Ordering::SeqCst), 1);
        assert_eq!(b.packets.load(Ordering::SeqCst), 2);
        assert_eq!(s.last_header(0).unwrap().sequence, 1);
        s.end(EndReason::SourceGone);
        s.end(EndReason::SourceGone);
        assert_eq!(b.ends.load(Ordering::SeqCst), 1);
        assert_eq!(a.ends.load(Ordering::SeqCst), 0);
        // Late subscribers are told at once.
        let c = Arc::new(Counting::default());
        s.add_sink(c.clone());
        assert_eq!(c.ends.load(Ordering::SeqCst), 1);
        assert_eq!(s.sink_count(), 0);
    }

    #[test]
    fn a_source_change_keeps_numbering_continuous_for_sinks() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        type Seen = Vec<(u16, u32, u32, Vec<u8>)>;
        struct Rec(Arc<Mutex<Seen>>);
        impl Sink for Rec {
            fn handle_packet(&self, p: &MediaPacket) {
                let h = sluice_rtp::packet::parse_rtp(&p.data).unwrap();
                assert_eq!(
                    (h.sequence, h.timestamp, h.ssrc),
                    (p.header.sequence, p.header.timestamp, p.header.ssrc)
                );
                self.0.lock().unwrap().push((
                    h.sequence,
                    h.timestamp,
                    h.ssrc,
                    p.data[12..].to_vec(),
                ));
            }
            fn handle_end(&self, _: EndReason) {}
        }
        s.add_sink(Arc::new(Rec(seen.clone())));
        let pkt = |seq: u16, ts: u32, ssrc: u32| rtp_packet(false, seq, ts, ssrc, &[seq as u8]);
        s.push_rtp(pkt(10, 1000, 5));
        s.push_rtp(pkt(11, 4000, 5));
        s.handle_source_change();
        s.push_rtp(pkt(30_000, 77, 9));
        s.flush();
        let v = seen.lock().unwrap();
        assert_eq!(v[0].0, 10);
        assert_eq!(v[2].0, 12, "sequence continues");
        assert_eq!(v[2].2, 5, "SSRC kept");
        assert!(v[2].1.wrapping_sub(4000) > 0 && v[2].1.wrapping_sub(4000) < 90_000);
        assert_eq!(v[2].3, vec![(30_000u16) as u8], "payload untouched");
    }

    /// A sink recording each batch it is handed, as its packets' sequence numbers.
    struct Batches(Mutex<Vec<Vec<u16>>>);

    impl Sink for Batches {
        fn handle_packet(&self, _: &MediaPacket) {}
        fn handle_batch(&self, e: &mut Egress<'_>) {
            let seqs = e.packets().iter().map(|p| p.header.sequence).collect();
            self.0.lock().unwrap().push(seqs);
        }
        fn handle_end(&self, _: EndReason) {}
    }

    /// Subscribes a [`Batches`] recorder to `s`.
    fn record_batches(s: &Stream) -> Arc<Batches> {
        let b = Arc::new(Batches(Mutex::new(Vec::new())));
        s.add_sink(b.clone());
        b
    }

    /// A stream with an H.264 video track (0) and an AAC audio track (1).
    fn av_stream() -> Arc<Stream> {
        const AV: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
            m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
            m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";
        Stream::new(
            "p".into(),
            Presentation::from_sdp(AV.as_bytes()).unwrap(),
            1,
        )
    }

    /// A small packet of an [`av_stream`] track, received `at`.
    fn av_packet(track: usize, seq: u16, ts: u32, marker: bool, at: Instant) -> MediaPacket {
        MediaPacket {
            track,
            header: RtpHeader {
                payload_type: 96 + track as u8,
                marker,
                sequence: seq,
                timestamp: ts,
                ssrc: 1 + track as u32,
                payload_offset: 12,
            },
            data: Bytes::from_static(&[0x80; 20]),
            received_at: at,
        }
    }

    /// An RTP packet of track 0 (payload type 96), as parsed from its bytes.
    fn rtp_packet(marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> MediaPacket {
        let mut d = vec![0x80, u8::from(marker) << 7 | 96];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(payload);
        let data = Bytes::from(d);
        MediaPacket {
            track: 0,
            header: sluice_rtp::packet::parse_rtp(&data).unwrap(),
            data,
            received_at: Instant::now(),
        }
    }

    /// A whole video frame of [`av_stream`]: one H.264 NAL unit (`nal`: its header byte).
    fn h264_packet(seq: u16, ts: u32, nal: u8) -> MediaPacket {
        rtp_packet(true, seq, ts, 1, &[nal, 0x88])
    }

    /// A sink whose first batch blocks until the test lets it go: a fan-out in progress.
    struct Stuck {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }
    impl Sink for Stuck {
        fn handle_packet(&self, _: &MediaPacket) {}
        fn handle_batch(&self, _: &mut Egress<'_>) {
            let _ = self.entered.try_send(());
            let _ = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
        }
        fn handle_end(&self, _: EndReason) {}
    }

    /// Records the sequence numbers of the GOP handover and of each batch.
    #[derive(Default)]
    struct Joiner {
        handover: Mutex<Vec<u16>>,
        batches: Mutex<Vec<Vec<u16>>>,
        ends: AtomicUsize,
    }
    impl Sink for Joiner {
        fn handle_packet(&self, p: &MediaPacket) {
            self.handover.lock().unwrap().push(p.header.sequence);
        }
        fn handle_batch(&self, e: &mut Egress<'_>) {
            let seqs = e.packets().iter().map(|p| p.header.sequence).collect();
            self.batches.lock().unwrap().push(seqs);
        }
        fn handle_end(&self, _: EndReason) {
            self.ends.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An [`av_stream`] whose first sink is [`Stuck`].
    struct Stalling {
        stream: Arc<Stream>,
        entered: std::sync::mpsc::Receiver<()>,
        /// Lets the stalled batch go on; dropped, lets every later batch pass.
        release: std::sync::mpsc::Sender<()>,
    }

    impl Stalling {
        fn new() -> Stalling {
            let stream = av_stream();
            let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
            let (release, release_rx) = std::sync::mpsc::channel();
            stream.add_sink(Arc::new(Stuck {
                entered: entered_tx,
                release: Mutex::new(release_rx),
            }));
            Stalling {
                stream,
                entered,
                release,
            }
        }

        /// Pushes a keyframe (sequence 1) from another thread; returns once its fan-out
        /// has stalled in the first sink.
        fn stall(&self) -> std::thread::JoinHandle<()> {
            let s = self.stream.clone();
            let flusher = std::thread::spawn(move || s.push_rtp(h264_packet(1, 3000, 0x65)));
            self.entered.recv_timeout(Duration::from_secs(10)).unwrap();
            flusher
        }

        /// Lets the stalled fan-out and every later one go on, and waits for the first.
        fn release(self, flusher: std::thread::JoinHandle<()>) -> Arc<Stream> {
            self.release.send(()).unwrap();
            drop(self.release);
            flusher.join().unwrap();
            self.stream
        }
    }

    #[test]
    fn a_subscribe_does_not_wait_for_a_fan_out_in_progress_and_misses_nothing() {
        let stalling = Stalling::new();
        let s = stalling.stream.clone();
        // A keyframe goes out and its fan-out stalls in the first sink.
        let flusher = stalling.stall();
        // A reader subscribes meanwhile: it gets the GOP (the keyframe being delivered)
        // and its RTP-Info start, without waiting for the delivery to end.
        let joiner = Arc::new(Joiner::default());
        let (done_tx, done) = std::sync::mpsc::channel();
        {
            let s = s.clone();
            let joiner = joiner.clone();
            std::thread::spawn(move || {
                let (_, starts) = s.subscribe(joiner);
                let _ = done_tx.send(starts);
            });
        }
        let starts = done.recv_timeout(Duration::from_secs(5));
        stalling.release(flusher);
        let starts = starts.expect("subscribe waited for the fan-out in progress");
        assert_eq!(
            starts[0],
            Some(TrackStart {
                seq: 1,
                rtptime: 3000
            })
        );
        assert_eq!(*joiner.handover.lock().unwrap(), vec![1]);
        assert!(joiner.batches.lock().unwrap().is_empty());
        assert_eq!(s.sink_count(), 2);
        // The next frame reaches it once, from the live fan-out.
        s.push_rtp(h264_packet(2, 6000, 0x41));
        assert_eq!(*joiner.batches.lock().unwrap(), vec![vec![2]]);
        assert_eq!(*joiner.handover.lock().unwrap(), vec![1]);
        // A sink subscribed but not yet joined is still told the end, once.
        let late = Arc::new(Joiner::default());
        s.subscribe(late.clone());
        assert_eq!(*late.handover.lock().unwrap(), vec![1, 2]);
        s.end(EndReason::SourceGone);
        assert_eq!(late.ends.load(Ordering::SeqCst), 1);
        assert_eq!(joiner.ends.load(Ordering::SeqCst), 1);
        assert_eq!(s.sink_count(), 0);
    }

    #[test]
    fn removing_a_sink_during_a_fan_out_waits_for_it_and_leaves_the_runtime_free() {
        let stalling = Stalling::new();
        let s = stalling.stream.clone();
        let leaving = Arc::new(Joiner::default());
        let (id, _) = s.subscribe(leaving.clone());
        let flusher = stalling.stall();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        // A TEARDOWN on the runtime's only worker waits for the stalled fan-out; another
        // session's task still runs meanwhile.
        let removal = rt.spawn({
            let s = s.clone();
            async move { s.remove_sink(id) }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!removal.is_finished(), "the removal waits for the fan-out");
        let other = rt.spawn(async {});
        let deadline = Instant::now() + Duration::from_secs(3);
        while !other.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let other_ran = other.is_finished();
        stalling.release(flusher);
        rt.block_on(removal).unwrap();
        assert!(
            other_ran,
            "a task waited for the removal, which waited for the fan-out"
        );
        // The batch in progress reached the sink; nothing after the removal does.
        assert_eq!(*leaving.batches.lock().unwrap(), vec![vec![1]]);
        s.push_rtp(h264_packet(2, 6000, 0x41));
        assert_eq!(*leaving.batches.lock().unwrap(), vec![vec![1]]);
        assert_eq!(s.sink_count(), 1);
    }

    #[test]
    fn with_many_sinks_the_source_goes_on_while_a_fan_out_thread_delivers_and_nothing_is_lost() {
        let stalling = Stalling::new();
        let s = stalling.stream.clone();
        let readers: Vec<Arc<Joiner>> = (1..OFFLOAD_SINKS)
            .map(|_| Arc::new(Joiner::default()))
            .collect();
        for r in &readers {
            s.subscribe(r.clone());
        }
        // A keyframe, whose delivery stalls, then two more frames.
        let (pushed_tx, pushed) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let source = {
            let s = s.clone();
            std::thread::spawn(move || {
                s.push_rtp(h264_packet(1, 3000, 0x65));
                let _ = pushed_tx.send(());
                let _ = go_rx.recv();
                s.push_rtp(h264_packet(2, 6000, 0x41));
                s.push_rtp(h264_packet(3, 9000, 0x41));
                let _ = pushed_tx.send(());
            })
        };
        stalling
            .entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the keyframe's delivery began");
        let first_returned = pushed.recv_timeout(Duration::from_secs(5)).is_ok();
        go.send(()).unwrap();
        let next_returned = pushed.recv_timeout(Duration::from_secs(5)).is_ok();
        // A reader subscribing now gets the keyframe being delivered from the GOP, and the
        // frames waiting for the fan-out from the fan-out.
        let late = Arc::new(Joiner::default());
        s.subscribe(late.clone());
        let s = stalling.release(source);
        assert!(
            first_returned,
            "the source waited for the keyframe's delivery"
        );
        assert!(next_returned, "the source waited for the fan-out");
        // The end waits for the deliveries, and comes after them.
        s.end(EndReason::SourceGone);
        let flat = |j: &Joiner| -> Vec<u16> { j.batches.lock().unwrap().concat() };
        for r in &readers {
            assert_eq!(flat(r), [1, 2, 3]);
            assert_eq!(r.ends.load(Ordering::SeqCst), 1);
        }
        assert_eq!(*late.handover.lock().unwrap(), [1]);
        assert_eq!(flat(&late), [2, 3]);
        assert_eq!(late.ends.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_sink_removed_before_it_joined_gets_nothing_more() {
        let s = av_stream();
        s.push_rtp(h264_packet(1, 3000, 0x65));
        let j = Arc::new(Joiner::default());
        let (id, _) = s.subscribe(j.clone());
        assert_eq!(s.sink_count(), 1);
        s.remove_sink(id);
        assert_eq!(s.sink_count(), 0);
        s.push_rtp(h264_packet(2, 6000, 0x41));
        assert_eq!(*j.handover.lock().unwrap(), vec![1]);
        assert!(j.batches.lock().unwrap().is_empty());
    }

    #[test]
    fn a_fanout_window_batches_frames_and_tracks_until_it_ends() {
        let s = av_stream();
        let b = record_batches(&s);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let pkt = av_packet;
        // Without a window: a batch per frame, and audio alone.
        assert_eq!(s.flush_at(ms(0)), None, "nothing pending");
        s.push_rtp(pkt(0, 1, 0, false, ms(0)));
        assert_eq!(s.flush_at(ms(0)), Some(ms(0) + INPUT_PAUSE));
        s.push_rtp(pkt(0, 2, 0, true, ms(0)));
        s.push_rtp(pkt(1, 3, 0, true, ms(5)));
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1, 2], vec![3]]);

        s.set_fanout_window(Duration::from_millis(40));
        // Frames and audio within 40 ms of the batch's first packet stay together...
        s.push_rtp(pkt(0, 4, 3000, true, ms(10)));
        s.push_rtp(pkt(1, 5, 1024, true, ms(20)));
        s.push_rtp(pkt(0, 6, 6000, false, ms(43)));
        s.push_rtp(pkt(0, 7, 6000, true, ms(43)));
        assert_eq!(
            b.0.lock().unwrap().len(),
            2,
            "nothing flushed inside the window"
        );
        // ... the source's timer fires at the window's end...
        assert_eq!(s.flush_at(ms(45)), Some(ms(50)));
        // ... and the first packet past it ends the batch, itself included.
        s.push_rtp(pkt(0, 8, 9000, true, ms(51)));
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![4, 5, 6, 7, 8]));
        s.push_rtp(pkt(1, 9, 2048, true, ms(60)));
        assert_eq!(s.flush_at(ms(61)), Some(ms(100)));
        s.flush_stale(ms(95), Duration::from_millis(20));
        assert_eq!(
            b.0.lock().unwrap().len(),
            3,
            "the reaper waits for the window too"
        );
        s.flush();
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![9]));
        // Holding and releasing frames changes nothing inside a window, even for a
        // batch past the per-frame cap.
        s.hold_frames();
        for i in 0..70u16 {
            s.push_rtp(pkt(0, 20 + i, 10000 + u32::from(i), true, ms(150)));
        }
        s.release_frames();
        assert_eq!(b.0.lock().unwrap().len(), 4, "the window's batch waits");
        s.flush();
        // A window's batch is bounded: one vectored write per TCP reader.
        for i in 0..600u16 {
            s.push_rtp(pkt(0, 100 + i, 12000, false, ms(200)));
        }
        assert!(b.0.lock().unwrap()[5..]
            .iter()
            .all(|batch| batch.len() == MAX_PENDING_WINDOWED));
    }

    #[test]
    fn a_frame_is_one_batch_ended_by_its_marker_or_the_next_frame() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let b = record_batches(&s);
        let pkt = |seq: u16, ts: u32, marker: bool| {
            let data = Bytes::from_static(&[0x80; 20]);
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
                data,
                received_at: Instant::now(),
            }
        };
        s.push_rtp(pkt(1, 0, false));
        s.push_rtp(pkt(2, 0, false));
        s.push_rtp(pkt(3, 0, true));
        s.push_rtp(pkt(4, 3000, false)); // marker lost
        s.push_rtp(pkt(5, 6000, false));
        s.push_rtp(pkt(6, 6000, false));
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1, 2, 3], vec![4]]);
        s.flush();
        s.flush();
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![5, 6]));
        for i in 0..100u16 {
            s.push_rtp(pkt(100 + i, 9000, false));
        }
        assert_eq!(b.0.lock().unwrap().last().map(Vec::len), Some(MAX_PENDING));
    }

    #[test]
    fn held_frames_go_out_together_when_the_input_at_hand_is_used_up() {
        let s = av_stream();
        let b = record_batches(&s);
        let pkt = |track, seq, ts, marker| av_packet(track, seq, ts, marker, Instant::now());
        let batches = || b.0.lock().unwrap().clone();
        // Two frames, audio between them, a frame with a lost marker and half a frame
        // arrive in one read: nothing goes out until the read is used up...
        s.hold_frames();
        s.push_rtp(pkt(0, 1, 0, false));
        s.push_rtp(pkt(0, 2, 0, true));
        s.push_rtp(pkt(1, 3, 0, true));
        s.push_rtp(pkt(0, 4, 3000, false)); // marker lost
        s.push_rtp(pkt(0, 5, 6000, false));
        assert!(batches().is_empty(), "held frames wait for the release");
        // ... then the complete frames go in one batch and the unfinished one waits.
        s.release_frames();
        assert_eq!(batches(), vec![vec![1, 2, 3, 4]]);
        // Released, frames go one by one again; the unfinished one ends with its marker.
        s.push_rtp(pkt(0, 6, 6000, true));
        assert_eq!(batches().last(), Some(&vec![5, 6]));
        s.push_rtp(pkt(1, 7, 1024, true));
        assert_eq!(batches().last(), Some(&vec![7]));
        // A read that ends inside a frame sends nothing of it.
        s.hold_frames();
        s.push_rtp(pkt(0, 8, 9000, false));
        s.release_frames();
        assert_eq!(batches().len(), 3);
        assert!(s.flush_at(Instant::now()).is_some(), "the pause timer runs");
        s.flush();
        assert_eq!(batches().last(), Some(&vec![8]));
        // A long backlog is cut at 256 packets, at the last frame's end before it.
        s.hold_frames();
        for f in 0..100u16 {
            s.push_rtp(pkt(0, 100 + 3 * f, 12000 + u32::from(f), false));
            s.push_rtp(pkt(0, 101 + 3 * f, 12000 + u32::from(f), false));
            s.push_rtp(pkt(0, 102 + 3 * f, 12000 + u32::from(f), true));
        }
        s.release_frames();
        let sizes: Vec<usize> = batches()[4..].iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![255, 45],
            "cut at frame ends, at most 256 packets"
        );
        // With nothing held, nothing is left behind.
        assert_eq!(s.flush_at(Instant::now()), None);
    }

    #[test]
    fn an_unfinished_frame_goes_out_when_the_source_timer_fires_after_a_pause() {
        let s = av_stream();
        let b = record_batches(&s);
        let t0 = Instant::now();
        assert_eq!(s.poll_timeout(), None, "nothing collected: no timer");
        s.push_rtp(av_packet(0, 1, 0, false, t0));
        // More of the frame is still arriving: the pause runs from the latest input.
        s.note_input(t0 + Duration::from_millis(5));
        let due = s.poll_timeout().expect("a timer for the collected packet");
        assert_eq!(due, t0 + Duration::from_millis(5) + INPUT_PAUSE);
        s.handle_timeout(t0 + Duration::from_millis(5));
        assert!(b.0.lock().unwrap().is_empty(), "not due yet");
        s.handle_timeout(due);
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1]]);
        assert_eq!(s.poll_timeout(), None);
    }

    /// What a live source may do to a stream, for the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        /// A packet: audio, or video continuing the frame or starting a new one.
        Push {
            audio: bool,
            new_frame: bool,
            marker: bool,
        },
        /// A keyframe's worth: this many packets of a new video frame, no marker yet.
        LongFrame(u16),
        Hold,
        Release,
        Flush,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (any::<bool>(), any::<bool>(), proptest::bool::weighted(0.3))
                .prop_map(|(audio, new_frame, marker)| Op::Push { audio, new_frame, marker }),
            1 => (1u16..200).prop_map(Op::LongFrame),
            1 => Just(Op::Hold),
            1 => Just(Op::Release),
            1 => Just(Op::Flush),
        ]
    }

    proptest::proptest! {
        /// Whatever a source's pushes, holds, releases and flushes: every packet reaches
        /// the sinks once and in order, no batch exceeds 256 packets, and outside a hold
        /// what waits is at most one unfinished video frame, shorter than 64 packets.
        #[test]
        fn held_or_not_every_packet_goes_out_once_in_order(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let s = av_stream();
            let b = record_batches(&s);
            // At most 200 ops of at most 199 packets: sequence numbers do not wrap.
            let (mut seq, mut video_ts, mut audio_ts, mut held) = (0u16, 0u32, 0u32, false);
            let push = |track, seq, ts, marker| s.push_rtp(av_packet(track, seq, ts, marker, Instant::now()));
            for op in ops {
                match op {
                    Op::Push { audio, new_frame, marker } => {
                        let ts = if audio {
                            audio_ts += 1024;
                            audio_ts
                        } else {
                            if new_frame {
                                video_ts += 3000;
                            }
                            video_ts
                        };
                        seq += 1;
                        push(usize::from(audio), seq, ts, marker);
                    }
                    Op::LongFrame(n) => {
                        video_ts += 3000;
                        for _ in 0..n {
                            seq += 1;
                            push(0, seq, video_ts, false);
                        }
                    }
                    Op::Hold => {
                        s.hold_frames();
                        held = true;
                    }
                    Op::Release => {
                        s.release_frames();
                        held = false;
                    }
                    Op::Flush => s.flush(),
                }
                if !held {
                    let pending = s.pending.lock().unwrap();
                    let p = &pending.packets;
                    proptest::prop_assert!(p.len() < MAX_PENDING, "{} waiting", p.len());
                    proptest::prop_assert!(
                        p.iter().all(|x| x.track == 0 && !x.header.marker
                            && x.header.timestamp == p[0].header.timestamp),
                        "waiting is not one unfinished video frame"
                    );
                }
            }
            s.release_frames();
            s.flush();
            let batches = b.0.lock().unwrap();
            proptest::prop_assert!(batches.iter().all(|x| !x.is_empty() && x.len() <= MAX_PENDING_WINDOWED));
            let got: Vec<u16> = batches.iter().flatten().copied().collect();
            let want: Vec<u16> = (1..=seq).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn packets_for_unknown_tracks_are_ignored() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let a = Arc::new(Counting::default());
        s.add_sink(a.clone());
        let mut p = packet(&Bytes::from_static(&[0x80; 12]));
        p.track = 7;
        s.push_rtp(p);
        assert_eq!(a.packets.load(Ordering::SeqCst), 0);
    }
}
