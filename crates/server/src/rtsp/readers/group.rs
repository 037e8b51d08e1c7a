//! A path's reader group: the one [`sluice_hub::Sink`] of a stream behind which all its
//! RTSP readers and multicast groups sit.
//!
//! The stream hands the group each batch once ([`sluice_hub::Sink::on_batch`]); the group
//! files it in its GOP cache, moves the readers that joined since the last batch into its
//! delivery list, plans the batch once ([`UdpPlan`]) and fans it out to every reader
//! (the fan-out section below): on the caller's thread, or with [`OFFLOAD_SINKS`] readers
//! or more on the fan-out threads ([`crate::rtsp::readers::outbox`]), in order, so the source
//! goes on at once. Readers subscribe to the group, which hands each the GOP cache and its
//! exact per-track start (for RTP-Info) without waiting for a fan-out in progress.
//! Readers must not block: each owns a bounded queue and decides itself what happens when
//! it is full.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;

use sluice_hub::packet::{Batch, EndReason, MediaPacket};
use sluice_rtp::packet::RtpHeader;

use crate::rtsp::readers::direct_budget;
use crate::rtsp::readers::latency::LatencyHistogram;
use crate::rtsp::readers::media_queue::ChannelMap;
use crate::rtsp::readers::outbox::Outbox;
use sluice_hub::gop::{GopCache, TrackStart};
use sluice_hub::presentation::Presentation;
use sluice_hub::Stream;
use sluice_net::media_socket::MediaSocket;
use sluice_net::udp_send::{self, Datagram, Sent};

/// Fewest readers whose deliveries run on the fan-out threads instead of the source's
/// ([`crate::rtsp::readers::outbox`]): as many as the fan-out cuts into shards. Below, a
/// delivery takes well under a millisecond, less than the hand-over would add.
pub const OFFLOAD_SINKS: usize = SHARDED_SINKS;

/// Most packets an offloaded delivery joins from waiting batches: a TCP reader's batch is
/// still one vectored write (two slices per packet, [`crate::rtsp::readers::media_queue::MAX_IOV`]).
const MAX_JOINED: usize = crate::rtsp::readers::media_queue::MAX_IOV / 2;

/// A member of a reader group: an RTSP reader, or a multicast group's feed.
pub trait Reader: Send + Sync {
    /// Called for every RTP packet of the GOP cache handed over at subscription, and for
    /// every packet of a batch if the reader does not take whole batches. Must never block.
    fn handle_packet(&self, packet: &MediaPacket);
    /// Called with each batch of packets (usually one frame's). The default hands each
    /// packet to [`Reader::handle_packet`]; UDP readers queue messages into `egress` instead.
    fn handle_batch(&self, egress: &mut Egress<'_>) {
        for p in egress.packets() {
            self.handle_packet(p);
        }
    }
    /// The fan-out will hand this reader a batch shortly: hint the caches to fetch the
    /// state [`Reader::handle_batch`] reads first (see [`crate::rtsp::readers::prefetch`]). Must
    /// not block or change anything. The default does nothing.
    fn prefetch(&self) {}
    /// A UDP message this reader queued in [`Egress::send_udp`] was refused by the kernel:
    /// what it counted for it, to take back.
    fn handle_refused(&self, _refund: Refund) {}
    /// Whether this reader sends GSO runs (a UDP reader whose socket can): the group then
    /// plans its batches into runs ([`UdpPlan`]). Asked once, at subscription. The
    /// default: no.
    fn sends_gso_runs(&self) -> bool {
        false
    }
    /// The stream has ended; no more packets will come.
    fn handle_end(&self, reason: EndReason);
    /// The transport this reader serves a client over (`udp`, `tcp`, `multicast`), for
    /// the path's reader counts; None (the default) for a member that is no client (a
    /// multicast group's feed).
    fn transport(&self) -> Option<&'static str> {
        None
    }
    /// (RTP packets, payload bytes) sent so far, for the path's figures. Read at report
    /// time only. The default: none.
    fn sent(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Packets dropped because its queue was full. The default: none.
    fn dropped(&self) -> u64 {
        0
    }
    /// Room left in its queue (see [`sluice_hub::Sink::room`]). The default: no bound.
    fn room(&self) -> Option<sluice_hub::Room> {
        None
    }
    /// The source reached the end of its media (a file's end or a PLAY range's end) but
    /// the stream stays open: a new PLAY may start it again.
    fn handle_end_of_stream(&self) {}
}

/// Identifies a reader's subscription to its group, to remove it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkId(u64);

#[cfg(test)]
impl SinkId {
    /// An id for tests that build reader lists by hand.
    pub(crate) fn for_test(n: u64) -> SinkId {
        SinkId(n)
    }
}

/// The readers of one path, fed as one sink of its stream.
pub struct ReaderGroup {
    path: String,
    /// The last RTP header delivered on each track (for RTP-Info and SSRC).
    last: Vec<Mutex<Option<RtpHeader>>>,
    /// The readers each batch goes to. A delivery holds this lock while it fans out, which
    /// takes milliseconds at thousands of readers; so subscribing does not take it (see
    /// [`ReaderGroup::joining`]).
    sinks: Mutex<Vec<(SinkId, Arc<dyn Reader>)>>,
    /// Readers subscribed since the last delivery: each has been handed the GOP cache up
    /// to the last batch filed, and the next delivery moves it into `sinks` first.
    joining: Mutex<Vec<(SinkId, Arc<dyn Reader>)>>,
    next_sink: AtomicU64,
    ended: AtomicBool,
    gop: Mutex<GopCache>,
    /// UDP datagrams readers could not send (send buffer full), for the drop log.
    udp_dropped: AtomicU64,
    /// This group, for the fan-out job that delivers its offloaded batches.
    me: Weak<ReaderGroup>,
    /// Batches handed to the fan-out threads and not yet delivered.
    outbox: Outbox,
    /// The buffer a delivery's UDP plan copies its GSO runs into ([`UdpPlan::new`]), kept
    /// for its allocation.
    plan_buffer: Mutex<Vec<u8>>,
    /// Readers subscribed and not removed (joined or joining): whether a batch is offloaded.
    subscribed: AtomicUsize,
    /// What readers that left had sent and dropped (packets, bytes, queue-full drops),
    /// kept so that the group's figures only grow. Updated under the `sinks` lock, which
    /// [`sluice_hub::Sink::stats`] reads them under too.
    retired: Mutex<(u64, u64, u64)>,
    /// Whether a delivery plans GSO runs: set for good once a reader that sends them
    /// subscribed ([`Reader::sends_gso_runs`]). Each reader's socket still decides, at
    /// send time, whether a run goes as one message; the runs are only the plan's copy.
    gso_runs: AtomicBool,
}

impl std::fmt::Debug for ReaderGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderGroup")
            .field("path", &self.path)
            .field("readers", &self.subscribed.load(Ordering::Relaxed))
            .field("ended", &self.is_ended())
            .finish()
    }
}

/// Runs `f`, a wait of milliseconds (for a fan-out in progress), so that a runtime worker
/// calling it first hands its other tasks (other sessions' requests) to another thread
/// (`tokio::task::block_in_place`). Elsewhere (a current-thread runtime, no runtime) it
/// just runs `f`. Only for rare waits: done per batch, the hand-overs cost more than the
/// wait (see [`deliver`]).
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl ReaderGroup {
    /// An empty group for `path`'s `presentation`, with a GOP cache on its first video
    /// track whose keyframes Sluice recognizes.
    pub fn new(path: String, presentation: &Presentation) -> Arc<ReaderGroup> {
        let video = presentation.keyframe_track();
        Arc::new_cyclic(|me| ReaderGroup {
            path,
            last: presentation
                .tracks()
                .iter()
                .map(|_| Mutex::new(None))
                .collect(),
            sinks: Mutex::new(Vec::new()),
            joining: Mutex::new(Vec::new()),
            next_sink: AtomicU64::new(1),
            ended: AtomicBool::new(false),
            gop: Mutex::new(GopCache::new(video)),
            udp_dropped: AtomicU64::new(0),
            me: me.clone(),
            outbox: Outbox::default(),
            plan_buffer: Mutex::new(Vec::new()),
            subscribed: AtomicUsize::new(0),
            retired: Mutex::new((0, 0, 0)),
            gso_runs: AtomicBool::new(false),
        })
    }

    /// The reader group of `stream`: the one the RTSP module's hook attached when the hub
    /// created it, or (a stream made without the hub: a private on-demand stream, a test)
    /// one attached now.
    pub fn of(stream: &Stream) -> Arc<ReaderGroup> {
        stream.attach_once(|| ReaderGroup::new(stream.path().to_owned(), stream.presentation()))
    }

    /// Replaces the GOP cache: on `video`'s keyframes, or off (`None`).
    pub fn set_gop_cache(&self, video: Option<(usize, sluice_codec::Codec)>) {
        *self.gop.lock().unwrap_or_else(|e| e.into_inner()) = GopCache::new(video);
    }

    /// Whether the group's stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Subscribes a reader. A reader added to an ended group is told so at once.
    pub fn add(&self, sink: Arc<dyn Reader>) -> SinkId {
        self.subscribe(sink).0
    }

    /// Subscribes a reader. Atomically with the subscription, the reader first receives
    /// the GOP cache (packets since the last keyframe), and the returned per-track starts
    /// say which packet it gets first (for RTP-Info).
    ///
    /// Never waits for a fan-out in progress (the caller is a session's request, on a
    /// runtime worker that other sessions share): the GOP lock, which a delivery holds only
    /// while it files its batch, orders the subscription between two batches, and the
    /// reader joins the delivery list at the next delivery.
    pub fn subscribe(&self, sink: Arc<dyn Reader>) -> (SinkId, Vec<Option<TrackStart>>) {
        let id = SinkId(self.next_sink.fetch_add(1, Ordering::Relaxed));
        if sink.sends_gso_runs() {
            self.gso_runs.store(true, Ordering::Relaxed);
        }
        if !self.is_ended() {
            let gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
            let starts = gop.starts(self.last.len(), |t| self.last_header(t));
            for p in gop.packets() {
                sink.handle_packet(p);
            }
            // Checked under the joining lock, which `on_end` drains after setting `ended`:
            // a reader is either joined and ended by `on_end`, or ended here.
            let mut joining = self.joining();
            if !self.is_ended() {
                joining.push((id, sink));
                self.subscribed.fetch_add(1, Ordering::Relaxed);
                return (id, starts);
            }
        }
        sink.handle_end(EndReason::SourceGone);
        (id, vec![None; self.last.len()])
    }

    /// Unsubscribes a reader; unknown ids are ignored. Waits for a fan-out in progress, so
    /// that the reader is handed nothing once this returns (a PAUSE or TEARDOWN reply, a
    /// BYE, the session's final counts); a runtime worker hands its other tasks to another
    /// thread while it waits.
    pub fn remove(&self, id: SinkId) {
        let mut sinks = match self.sinks.try_lock() {
            Ok(sinks) => sinks,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => off_the_runtime(|| self.sinks()),
        };
        let mut joining = self.joining();
        let before = sinks.len() + joining.len();
        for (_, r) in sinks.iter().chain(joining.iter()).filter(|(i, _)| *i == id) {
            self.retire(r.as_ref());
        }
        sinks.retain(|(i, _)| *i != id);
        joining.retain(|(i, _)| *i != id);
        let removed = before - sinks.len() - joining.len();
        self.subscribed.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Keeps a leaving reader's figures (under the `sinks` lock).
    fn retire(&self, reader: &dyn Reader) {
        let (packets, bytes) = reader.sent();
        let mut r = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        r.0 += packets;
        r.1 += bytes;
        r.2 += reader.dropped();
    }

    /// Number of subscribed readers.
    pub fn len(&self) -> usize {
        let sinks = self.sinks();
        sinks.len() + self.joining().len()
    }

    /// Whether no reader is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The delivery list (lock order: `sinks`, then `gop`, then `joining`).
    fn sinks(&self) -> MutexGuard<'_, Vec<(SinkId, Arc<dyn Reader>)>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The readers waiting for the next delivery.
    fn joining(&self) -> MutexGuard<'_, Vec<(SinkId, Arc<dyn Reader>)>> {
        self.joining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last RTP header delivered on `track`.
    pub fn last_header(&self, track: usize) -> Option<RtpHeader> {
        *self
            .last
            .get(track)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// UDP datagrams dropped because the kernel refused them (send buffer full).
    pub fn udp_dropped(&self) -> u64 {
        self.udp_dropped.load(Ordering::Relaxed)
    }

    /// The fan-out job: delivers the offloaded batches until none waits.
    fn run_outbox(&self) {
        /// Puts the outbox right if a delivery panics, so the group's waits end.
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
        while let Some(batch) = self.outbox.next(delivered.take(), MAX_JOINED) {
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

    /// Files `batch` (the GOP cache, the last headers), moves the readers that joined since
    /// the last batch into the delivery list, plans the batch once and hands it to every
    /// reader.
    fn deliver(&self, batch: &[MediaPacket]) {
        let mut sinks = self.sinks();
        {
            // Under the GOP lock: `subscribe` sees, for every track, exactly the last
            // packet its new reader will not get, and a GOP cache ending with it. The
            // readers that subscribed before this batch was filed get it, the later ones
            // do not.
            let mut gop = self.gop.lock().unwrap_or_else(|e| e.into_inner());
            sinks.append(&mut self.joining());
            for p in batch {
                if let Some(last) = self.last.get(p.track) {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.header);
                }
                gop.handle_packet(p);
            }
        }
        // Deliveries of one group do not overlap; if one ever did, it plans into a buffer
        // of its own.
        let mut lent = self.plan_buffer.try_lock().ok();
        let mut own = Vec::new();
        let buffer = lent.as_deref_mut().unwrap_or(&mut own);
        let plan = UdpPlan::new(batch, self.gso_runs.load(Ordering::Relaxed), buffer);
        let sent = deliver(&sinks, batch, &plan);
        drop(sinks);
        if sent.dropped > 0 && self.udp_dropped.fetch_add(sent.dropped, Ordering::Relaxed) == 0 {
            tracing::warn!(path = %self.path, dropped = sent.dropped, "UDP send buffer full: datagrams dropped");
        }
    }

    /// Tells every reader that the source's media ended (see
    /// [`Reader::handle_end_of_stream`]), after the batches before it.
    pub fn end_of_stream(&self) {
        self.wait_for_deliveries();
        let sinks = self.sinks();
        for (_, sink) in sinks.iter().chain(self.joining().iter()) {
            sink.handle_end_of_stream();
        }
    }
}

impl sluice_hub::Sink for ReaderGroup {
    /// The least room among the readers' queues (asked by on-demand sources that can
    /// wait, per frame; not by live ones).
    fn room(&self) -> Option<sluice_hub::Room> {
        let sinks = self.sinks();
        let joining = self.joining();
        sinks
            .iter()
            .chain(joining.iter())
            .filter_map(|(_, r)| r.room())
            .reduce(sluice_hub::Room::min)
    }

    /// Hands one batch to the readers: here, or with [`OFFLOAD_SINKS`] readers or more on
    /// the fan-out threads, so that the source (on a runtime worker) goes on at once. While
    /// offloaded batches wait, every batch waits behind them, so the readers see them in
    /// order.
    fn on_batch(&self, batch: &Batch) {
        let offload =
            self.subscribed.load(Ordering::Relaxed) >= OFFLOAD_SINKS || self.outbox.is_busy();
        if !offload {
            self.deliver(batch.packets());
            return;
        }
        let mut spare = self.outbox.spare();
        spare.extend_from_slice(batch.packets());
        if self.outbox.post(spare) {
            match self.me.upgrade() {
                Some(me) => spawn(move || me.run_outbox()),
                None => self.run_outbox(),
            }
        }
        if self.outbox.is_full() {
            // The fan-out falls behind for good: the source waits, as it would for its own
            // deliveries.
            off_the_runtime(|| self.outbox.wait_for_room());
        }
    }

    /// Ends every reader, after the batches handed over before.
    fn on_end(&self, reason: EndReason) {
        self.wait_for_deliveries();
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let sinks = {
            let mut sinks = self.sinks();
            let mut all = std::mem::take(&mut *sinks);
            all.append(&mut self.joining());
            self.subscribed.store(0, Ordering::Relaxed);
            for (_, r) in &all {
                self.retire(r.as_ref());
            }
            all
        };
        for (_, sink) in sinks {
            sink.handle_end(reason);
        }
    }

    /// The media ended, the stream goes on: every reader sends BYE.
    fn on_end_of_media(&self) {
        self.end_of_stream();
    }

    /// Readers by transport (protocol `rtsp`), what every reader past and present sent,
    /// and drops by reason: `queue_full` (a reader's queue), `send_buffer_full` (the
    /// kernel refused UDP datagrams). Waits for a fan-out in progress (milliseconds at
    /// thousands of readers): a report, not a packet.
    fn stats(&self) -> sluice_hub::SinkStats {
        use sluice_hub::ReaderCount;
        let sinks = off_the_runtime(|| self.sinks());
        let joining = self.joining();
        let retired = *self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats = sluice_hub::SinkStats {
            readers: ["udp", "tcp", "multicast"]
                .into_iter()
                .map(|transport| ReaderCount {
                    protocol: "rtsp",
                    transport,
                    count: 0,
                })
                .collect(),
            packets_out: retired.0,
            bytes_out: retired.1,
            dropped: Vec::new(),
        };
        let mut queue_full = retired.2;
        for (_, r) in sinks.iter().chain(joining.iter()) {
            let (packets, bytes) = r.sent();
            stats.packets_out += packets;
            stats.bytes_out += bytes;
            queue_full += r.dropped();
            if let Some(t) = r.transport() {
                match stats.readers.iter_mut().find(|c| c.transport == t) {
                    Some(c) => c.count += 1,
                    None => stats.readers.push(ReaderCount {
                        protocol: "rtsp",
                        transport: t,
                        count: 1,
                    }),
                }
            }
        }
        stats.dropped = vec![
            ("queue_full", queue_full),
            ("send_buffer_full", self.udp_dropped()),
        ];
        stats
    }
}

// ---------------------------------------------------------------------------------
// Egress: one delivery of a batch.
//
// One flush of a stream's packets to its sinks: the shared view every sink gets of a
// batch (a frame's packets, usually), and the UDP messages the sinks add to it, sent
// together with `sendmmsg` at the end (see [`sluice_net::udp_send`]).
//
// The batch is planned once per flush for all readers: per track, the packets' slices
// and their GSO runs. A UDP reader then adds one message per run (its address and a
// pointer to the shared slices): no payload is copied, nothing is allocated per reader.
//
// A GSO run's packets are copied once per flush, back to back, into a buffer the caller
// lends the plan, and every reader's message for the run is that one contiguous slice:
// the kernel then copies each message from one place instead of walking a slice per
// packet, which costs the sender measurably less CPU (bench/RESULTS.md).

/// A group of a track's consecutive packets sent as one UDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Track of the packets.
    pub track: usize,
    /// Range of the plan's slices (one per packet).
    start: usize,
    /// The run's packets as one contiguous slice (index in the plan's `joined`), for a
    /// GSO run of more than one packet.
    joined: Option<usize>,
    /// Packets in the run.
    pub packets: u16,
    /// GSO segment size (the first packet's size).
    segment: u16,
    /// RTP payload bytes in the run (for Sender Report octet counts).
    pub payload_bytes: u32,
    /// SSRC of the run's packets.
    pub ssrc: u32,
}

/// The per-flush plan shared by every UDP reader.
#[derive(Debug)]
pub struct UdpPlan<'a> {
    slices: Vec<IoSlice<'a>>,
    /// One slice per GSO run of more than one packet: its packets back to back.
    joined: Vec<IoSlice<'a>>,
    /// RTP payload bytes of each slice's packet (for refunds of refused messages).
    payloads: Vec<u32>,
    runs: Vec<Run>,
}

impl<'a> UdpPlan<'a> {
    /// Plans `packets`: grouped by track (order kept within a track), split into runs.
    /// `buffer` (cleared first) receives a copy of each GSO run's packets, back to back,
    /// which the run's messages then send from.
    pub fn new(packets: &'a [MediaPacket], gso: bool, buffer: &'a mut Vec<u8>) -> UdpPlan<'a> {
        let mut slices = Vec::with_capacity(packets.len());
        let mut payloads = Vec::with_capacity(packets.len());
        let mut runs = Vec::new();
        // Byte ranges in `buffer` of the runs that get one, filled below.
        let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
        buffer.clear();
        let mut tracks: Vec<usize> = packets.iter().map(|p| p.track).collect();
        tracks.sort_unstable();
        tracks.dedup();
        let mut ranges = Vec::new();
        for track in tracks {
            let of_track: Vec<&MediaPacket> = packets.iter().filter(|p| p.track == track).collect();
            let base = slices.len();
            slices.extend(of_track.iter().map(|p| IoSlice::new(&p.data)));
            payloads.extend(of_track.iter().map(|p| p.payload_len()));
            ranges.clear();
            udp_send::runs(of_track.iter().map(|p| p.data.len()), gso, &mut ranges);
            for &(start, count, segment) in &ranges {
                let payload_bytes: u32 = payloads[base + start..base + start + count].iter().sum();
                let joined = (count > 1).then(|| {
                    let from = buffer.len();
                    for p in &of_track[start..start + count] {
                        buffer.extend_from_slice(&p.data);
                    }
                    spans.push(from..buffer.len());
                    spans.len() - 1
                });
                runs.push(Run {
                    track,
                    start: base + start,
                    joined,
                    packets: count as u16,
                    segment,
                    payload_bytes,
                    ssrc: of_track[start].header.ssrc,
                });
            }
        }
        let buffer: &'a Vec<u8> = buffer;
        let joined = spans
            .into_iter()
            .map(|span| IoSlice::new(&buffer[span]))
            .collect();
        UdpPlan {
            slices,
            joined,
            payloads,
            runs,
        }
    }

    /// The runs, grouped by track.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// What a sink had counted for a UDP message the kernel refused whole (send buffer full,
/// destination unreachable, …), handed back so that its Sender Reports count only what
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// Track of the message's packets.
    pub track: usize,
    /// Packets in the message.
    pub packets: u32,
    /// Their RTP payload bytes.
    pub payload_bytes: u32,
}

/// One flush as a sink sees it.
pub struct Egress<'p> {
    packets: &'p [MediaPacket],
    plan: &'p UdpPlan<'p>,
    socket: Option<Arc<MediaSocket>>,
    pending: Vec<Datagram<'p>>,
    /// For each pending message: the sink that queued it (its place in the flush) and
    /// what it counted for it.
    owners: Vec<(usize, Refund)>,
    /// Refused messages' owners and refunds, handed back by [`Egress::finish_noting`].
    refused: Vec<(usize, Refund)>,
    sent: Sent,
    /// When the oldest packet of the batch arrived.
    oldest: Option<Instant>,
    /// Where the UDP sends' latency is recorded: the histogram the first sink to send
    /// handed over (a stream's sinks are all one server's).
    latency: Option<Arc<LatencyHistogram>>,
    /// The packets as one shared allocation, made for the first queue-based sink.
    shared: Option<Arc<[MediaPacket]>>,
    /// The packets framed for TCP readers with these channels ([`Egress::framed`]).
    framed: Option<(ChannelMap, Bytes)>,
    /// TCP readers that asked for a framed batch so far.
    framed_asked: usize,
    /// When the flush started.
    start: Instant,
    /// This thread's direct-write time saved up at the start (see [`direct_budget`]).
    saved: std::time::Duration,
    /// Until when TCP sinks may write straight to their sockets (`None`: to the last, on
    /// a thread exempt from the budget).
    direct_until: Option<Instant>,
    /// Whether the stretch ran out and the whole flush was judged against `saved`.
    judged: bool,
    /// When a TCP sink was last allowed to write directly (what the flush spent).
    direct_last: Option<Instant>,
    /// Sinks in the flush (its shard), and how many were begun.
    sinks: usize,
    begun: usize,
}

impl std::fmt::Debug for Egress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("packets", &self.packets.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<'p> Egress<'p> {
    /// A flush of `packets`, planned as `plan`.
    pub fn new(packets: &'p [MediaPacket], plan: &'p UdpPlan<'p>) -> Egress<'p> {
        let start = Instant::now();
        let saved = direct_budget::start(start);
        Egress {
            packets,
            plan,
            socket: None,
            pending: Vec::with_capacity(udp_send::MAX_BATCH),
            owners: Vec::with_capacity(udp_send::MAX_BATCH),
            refused: Vec::new(),
            sent: Sent::default(),
            oldest: packets.iter().map(|p| p.received_at).min(),
            latency: None,
            shared: None,
            framed: None,
            framed_asked: 0,
            start,
            saved: saved.unwrap_or_default(),
            direct_until: saved.map(|_| start + direct_budget::DIRECT_STRETCH),
            judged: false,
            direct_last: None,
            sinks: 1,
            begun: 0,
        }
    }

    /// Records no ingest → egress latency for this flush: its packets are resent (a
    /// reader's catch-up), and their age is not the time the server took.
    pub fn without_latency(mut self) -> Egress<'p> {
        self.oldest = None;
        self
    }

    /// Says the flush will serve `sinks` sinks (one shard's), each announced with
    /// [`Egress::begin_sink`]: what lets it predict its whole length.
    pub fn for_sinks(mut self, sinks: usize) -> Egress<'p> {
        self.sinks = sinks;
        self
    }

    /// Notes that the next sink is being served.
    pub fn begin_sink(&mut self) {
        self.begun += 1;
    }

    /// Whether a TCP sink may still write this batch to its socket itself: within the
    /// flush's first [`direct_budget::DIRECT_STRETCH`], or past it when the whole flush,
    /// at its pace so far, fits in this thread's saved-up direct-write time. Always on a
    /// thread exempt from the budget ([`direct_budget::exempt_this_thread`]).
    pub fn direct_allowed(&mut self) -> bool {
        let Some(until) = self.direct_until else {
            return true;
        };
        let now = Instant::now();
        if now >= until && !self.judged {
            self.judged = true;
            let elapsed = now.saturating_duration_since(self.start);
            let done = self.begun.saturating_sub(1);
            if direct_budget::whole_flush_fits(elapsed, done, self.sinks, self.saved) {
                self.direct_until = Some(self.start + self.saved);
            }
        }
        let allowed = self.direct_until.is_some_and(|until| now < until);
        if allowed {
            self.direct_last = Some(now);
        }
        allowed
    }

    /// The batch as one shared allocation (made once per flush, on first use), for sinks
    /// that queue it: each then holds one reference count instead of one per packet.
    pub fn shared_packets(&mut self) -> Arc<[MediaPacket]> {
        self.shared
            .get_or_insert_with(|| self.packets.iter().cloned().collect())
            .clone()
    }

    /// The batch framed for a TCP reader on `channels` (each packet's interleaved header
    /// and the packet, back to back), so that its write is one slice instead of two per
    /// packet: copied once per flush, from the second reader that asks on (a flush to
    /// one reader gains nothing from the copy), and shared by every reader with the
    /// channels the first framing was made for. `None` for the first reader and for
    /// readers on other channels: they are written from the packets.
    ///
    /// One slice per frame instead of a header and a payload slice per packet, because the
    /// kernel then copies each write from one place (the saving is in bench/RESULTS.md).
    pub fn framed(&mut self, channels: &ChannelMap) -> Option<Bytes> {
        self.framed_asked += 1;
        match &self.framed {
            Some((made_for, image)) => (made_for == channels).then(|| image.clone()),
            None if self.framed_asked >= 2 => {
                let image = crate::rtsp::readers::media_queue::framed(self.packets, channels);
                self.framed = Some((*channels, image.clone()));
                Some(image)
            }
            None => None,
        }
    }

    /// When the batch's oldest packet was received.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    /// The batch's packets, in arrival order.
    pub fn packets(&self) -> &'p [MediaPacket] {
        self.packets
    }

    /// The batch's UDP runs, grouped by track.
    pub fn runs(&self) -> &'p [Run] {
        self.plan.runs()
    }

    /// Queues `run` to `to` from `socket` (as one GSO message if `gso` and the socket
    /// still sends GSO runs ([`MediaSocket::gso`]), else a message per packet); sent with
    /// other readers' messages in one `sendmmsg` (at most [`udp_send::MAX_BATCH`] queued
    /// at a time), whose ingest → egress latency is recorded into `latency` (the sending
    /// sink's server's histogram; `None`: nowhere).
    pub fn send_udp(
        &mut self,
        socket: &Arc<MediaSocket>,
        to: SocketAddr,
        run: &Run,
        gso: bool,
        latency: Option<&Arc<LatencyHistogram>>,
    ) {
        if self.latency.is_none() {
            // Once per flush, not per reader: one reference count for the whole flush.
            self.latency = latency.cloned();
        }
        if !self.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            self.flush_udp();
            self.socket = Some(socket.clone());
        }
        let gso = gso && socket.gso();
        let range = run.start..run.start + usize::from(run.packets);
        let parts = &self.plan.slices[range.clone()];
        if gso || run.packets == 1 {
            let parts = match run.joined {
                Some(i) if gso => &self.plan.joined[i..=i],
                _ => parts,
            };
            let refund = Refund {
                track: run.track,
                packets: u32::from(run.packets),
                payload_bytes: run.payload_bytes,
            };
            self.push(
                Datagram {
                    to,
                    parts,
                    segment: (run.packets > 1).then_some(run.segment),
                    packets: run.packets,
                },
                refund,
            );
        } else {
            let payloads = &self.plan.payloads[range];
            for (part, &payload_bytes) in parts.chunks(1).zip(payloads) {
                let refund = Refund {
                    track: run.track,
                    packets: 1,
                    payload_bytes,
                };
                self.push(
                    Datagram {
                        to,
                        parts: part,
                        segment: None,
                        packets: 1,
                    },
                    refund,
                );
            }
        }
    }

    fn push(&mut self, d: Datagram<'p>, refund: Refund) {
        self.pending.push(d);
        self.owners.push((self.begun.saturating_sub(1), refund));
        if self.pending.len() >= udp_send::MAX_BATCH {
            self.flush_udp();
        }
    }

    fn flush_udp(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(socket) = &self.socket {
            let (owners, refused) = (&self.owners, &mut self.refused);
            let sent = udp_send::send_batch_noting(socket, &self.pending, |i| {
                if let Some(&owner) = owners.get(i) {
                    refused.push(owner);
                }
            });
            if let (Some(oldest), Some(latency)) = (self.oldest, &self.latency) {
                latency.record(
                    Instant::now().saturating_duration_since(oldest),
                    sent.packets,
                );
            }
            self.sent += sent;
        }
        self.pending.clear();
        self.owners.clear();
    }

    /// Sends what is queued; returns what the whole flush sent over UDP.
    pub fn finish(self) -> Sent {
        self.finish_noting(|_, _| {})
    }

    /// As [`Egress::finish`], and hands each message the kernel refused to `refused`, with
    /// the place in the flush of the sink that queued it (counted by
    /// [`Egress::begin_sink`], from 0).
    pub fn finish_noting(mut self, mut refused: impl FnMut(usize, Refund)) -> Sent {
        self.flush_udp();
        if let Some(last) = self.direct_last {
            direct_budget::spend(last.saturating_duration_since(self.start));
        }
        for &(owner, refund) in &self.refused {
            refused(owner, refund);
        }
        self.sent
    }
}

// ---------------------------------------------------------------------------------
// Fan-out.
//
// Delivery of one batch to a stream's sinks, spread over the machine's cores when there
// are many sinks.
//
// Handing a frame to hundreds of readers is almost all kernel work (one `sendmmsg`
// message or one `sendmsg` per reader), and one thread does it at one core's speed: at
// 400 readers of a 4 Mb/s stream a frame takes several milliseconds, which is the added
// latency of the last reader served. With many sinks the batch is cut into contiguous
// shards, one per core; the calling thread serves the first and the pool's other threads
// the others, and the call returns when all are done. So a delivery is one step (the
// stream files a batch and moves its new sinks in just before it), and each sink still
// sees its batches in order. The same threads run the big deliveries themselves, off the
// runtime's workers ([`spawn`], [`crate::rtsp::readers::outbox`]).
//
// The pool is `rayon-core`'s (scoped, borrow-friendly fork-join): the shards borrow the
// batch and its UDP plan, nothing is copied or reference-counted per shard.

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
    use crate::rtsp::readers::tests::{av_stream, h264_packet, packet, Counting, SDP};
    use bytes::Bytes;
    use sluice_hub::Stream;
    use std::time::{Duration, Instant};

    #[test]
    fn fan_out_shares_one_buffer_and_end_reaches_every_sink() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let a = Arc::new(Counting::default());
        let b = Arc::new(Counting::default());
        let ida = ReaderGroup::of(&s).add(a.clone());
        ReaderGroup::of(&s).add(b.clone());
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
        ReaderGroup::of(&s).remove(ida);
        s.push_rtp(packet(&data));
        s.flush();
        assert_eq!(a.packets.load(Ordering::SeqCst), 1);
        assert_eq!(b.packets.load(Ordering::SeqCst), 2);
        assert_eq!(ReaderGroup::of(&s).last_header(0).unwrap().sequence, 1);
        s.end(EndReason::SourceGone);
        s.end(EndReason::SourceGone);
        assert_eq!(b.ends.load(Ordering::SeqCst), 1);
        assert_eq!(a.ends.load(Ordering::SeqCst), 0);
        // Late subscribers are told at once.
        let c = Arc::new(Counting::default());
        ReaderGroup::of(&s).add(c.clone());
        assert_eq!(c.ends.load(Ordering::SeqCst), 1);
        assert_eq!(ReaderGroup::of(&s).len(), 0);
    }

    /// A reader that says its transport and reports fixed figures.
    struct Said(Option<&'static str>, u64);

    impl Reader for Said {
        fn handle_packet(&self, _: &MediaPacket) {}
        fn handle_end(&self, _: EndReason) {}
        fn transport(&self) -> Option<&'static str> {
            self.0
        }
        fn sent(&self) -> (u64, u64) {
            (self.1, 10 * self.1)
        }
        fn dropped(&self) -> u64 {
            1
        }
    }

    #[test]
    fn stats_count_readers_by_transport_and_keep_what_leavers_sent() {
        use sluice_hub::Sink;
        let g = ReaderGroup::new("p".into(), &Presentation::from_sdp(SDP.as_bytes()).unwrap());
        let count = |g: &ReaderGroup, t: &str| {
            g.stats()
                .readers
                .iter()
                .find(|c| c.transport == t)
                .map_or(0, |c| c.count)
        };
        let tcp = g.add(Arc::new(Said(Some("tcp"), 5)));
        g.add(Arc::new(Said(Some("udp"), 7)));
        g.add(Arc::new(Said(Some("udp"), 1)));
        g.add(Arc::new(Said(None, 100))); // a multicast feed: sends, is no reader
        let st = g.stats();
        assert_eq!(
            (count(&g, "tcp"), count(&g, "udp"), count(&g, "multicast")),
            (1, 2, 0)
        );
        assert_eq!(st.readers_of("rtsp"), 3);
        assert_eq!((st.packets_out, st.bytes_out), (113, 1130));
        assert_eq!(st.dropped, vec![("queue_full", 4), ("send_buffer_full", 0)]);
        g.remove(tcp);
        let st = g.stats();
        assert_eq!(count(&g, "tcp"), 0);
        assert_eq!(st.packets_out, 113, "a reader that left still counts");
        g.on_end(EndReason::SourceGone);
        let st = g.stats();
        assert_eq!(st.readers_of("rtsp"), 0);
        assert_eq!((st.packets_out, st.dropped[0].1), (113, 4));
    }

    /// A sink whose first batch blocks until the test lets it go: a fan-out in progress.
    struct Stuck {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }
    impl Reader for Stuck {
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
    impl Reader for Joiner {
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
            ReaderGroup::of(&stream).add(Arc::new(Stuck {
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
                let (_, starts) = ReaderGroup::of(&s).subscribe(joiner);
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
        assert_eq!(ReaderGroup::of(&s).len(), 2);
        // The next frame reaches it once, from the live fan-out.
        s.push_rtp(h264_packet(2, 6000, 0x41));
        assert_eq!(*joiner.batches.lock().unwrap(), vec![vec![2]]);
        assert_eq!(*joiner.handover.lock().unwrap(), vec![1]);
        // A sink subscribed but not yet joined is still told the end, once.
        let late = Arc::new(Joiner::default());
        ReaderGroup::of(&s).subscribe(late.clone());
        assert_eq!(*late.handover.lock().unwrap(), vec![1, 2]);
        s.end(EndReason::SourceGone);
        assert_eq!(late.ends.load(Ordering::SeqCst), 1);
        assert_eq!(joiner.ends.load(Ordering::SeqCst), 1);
        assert_eq!(ReaderGroup::of(&s).len(), 0);
    }

    #[test]
    fn removing_a_sink_during_a_fan_out_waits_for_it_and_leaves_the_runtime_free() {
        let stalling = Stalling::new();
        let s = stalling.stream.clone();
        let leaving = Arc::new(Joiner::default());
        let (id, _) = ReaderGroup::of(&s).subscribe(leaving.clone());
        let flusher = stalling.stall();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        // A TEARDOWN on the runtime's only worker waits for the stalled fan-out; another
        // session's task still runs meanwhile.
        let removal = rt.spawn({
            let s = s.clone();
            async move { ReaderGroup::of(&s).remove(id) }
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
        assert_eq!(ReaderGroup::of(&s).len(), 1);
    }

    #[test]
    fn with_many_sinks_the_source_goes_on_while_a_fan_out_thread_delivers_and_nothing_is_lost() {
        let stalling = Stalling::new();
        let s = stalling.stream.clone();
        let readers: Vec<Arc<Joiner>> = (1..OFFLOAD_SINKS)
            .map(|_| Arc::new(Joiner::default()))
            .collect();
        for r in &readers {
            ReaderGroup::of(&s).subscribe(r.clone());
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
        ReaderGroup::of(&s).subscribe(late.clone());
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
        let (id, _) = ReaderGroup::of(&s).subscribe(j.clone());
        assert_eq!(ReaderGroup::of(&s).len(), 1);
        ReaderGroup::of(&s).remove(id);
        assert_eq!(ReaderGroup::of(&s).len(), 0);
        s.push_rtp(h264_packet(2, 6000, 0x41));
        assert_eq!(*j.handover.lock().unwrap(), vec![1]);
        assert!(j.batches.lock().unwrap().is_empty());
    }

    #[test]
    fn as_a_hub_sink_the_group_hands_each_reader_the_gop_its_exact_start_and_the_rest_once() {
        // Driven through `sluice_hub::Sink` alone, as a stream drives it.
        use sluice_hub::Sink as _;
        let presentation =
            sluice_hub::presentation::Presentation::from_sdp(SDP.as_bytes()).unwrap();
        let group = ReaderGroup::new("p".into(), &presentation);
        let early = Arc::new(Joiner::default());
        let (_, starts) = group.subscribe(early.clone());
        assert_eq!(starts, vec![None], "nothing delivered yet: no start known");
        group.on_batch(&Batch::from(vec![h264_packet(1, 3000, 0x65)]));
        group.on_batch(&Batch::from(vec![h264_packet(2, 6000, 0x41)]));
        // A reader joining now gets the GOP (keyframe on) and RTP-Info at the keyframe.
        let late = Arc::new(Joiner::default());
        let (_, starts) = group.subscribe(late.clone());
        assert_eq!(
            starts,
            vec![Some(TrackStart {
                seq: 1,
                rtptime: 3000
            })]
        );
        let third = Batch::from(vec![h264_packet(3, 9000, 0x41)]);
        group.on_batch(&third);
        assert_eq!(
            *early.batches.lock().unwrap(),
            vec![vec![1], vec![2], vec![3]]
        );
        assert!(early.handover.lock().unwrap().is_empty());
        assert_eq!(*late.handover.lock().unwrap(), vec![1, 2]);
        assert_eq!(*late.batches.lock().unwrap(), vec![vec![3]]);
        assert_eq!(group.last_header(0).map(|h| h.sequence), Some(3));
        group.on_end(EndReason::SourceGone);
        group.on_end(EndReason::SourceGone);
        assert_eq!(early.ends.load(Ordering::SeqCst), 1);
        assert_eq!(late.ends.load(Ordering::SeqCst), 1);
        assert!(group.is_empty());
    }
}

#[cfg(test)]
mod fanout_tests {
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

#[cfg(test)]
mod egress_tests {
    use super::*;
    use std::time::Duration;

    /// Runs one flush of `sinks` sinks, each taking `work` (spun, not slept), on a fresh
    /// thread (so with a full direct-write bucket, or `exempt` from the budget); returns
    /// how many sinks were allowed to write directly.
    fn allowed_of(sinks: usize, work: Duration, exempt: bool) -> usize {
        std::thread::spawn(move || {
            if exempt {
                direct_budget::exempt_this_thread();
            }
            let packets: Vec<MediaPacket> = Vec::new();
            let mut joined = Vec::new();
            let plan = UdpPlan::new(&packets, false, &mut joined);
            let mut egress = Egress::new(&packets, &plan).for_sinks(sinks);
            let mut allowed = 0;
            for _ in 0..sinks {
                egress.begin_sink();
                if egress.direct_allowed() {
                    allowed += 1;
                }
                let t = Instant::now();
                while t.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            egress.finish();
            allowed
        })
        .join()
        .expect("flush thread")
    }

    fn packet(track: usize, seq: u16, len: usize) -> MediaPacket {
        let mut data = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        data[2..4].copy_from_slice(&seq.to_be_bytes());
        data.resize(len, seq as u8);
        MediaPacket {
            track,
            data: bytes::Bytes::from(data),
            header: sluice_rtp::packet::RtpHeader {
                payload_type: 96,
                marker: false,
                sequence: seq,
                timestamp: 0,
                ssrc: 7,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    #[test]
    fn a_gso_run_is_planned_as_its_packets_back_to_back_in_one_slice() {
        // Video: three full packets and a short one (one run), audio: one packet.
        let packets = vec![
            packet(0, 1, 1400),
            packet(1, 50, 300),
            packet(0, 2, 1400),
            packet(0, 3, 1400),
            packet(0, 4, 900),
        ];
        let mut buffer = vec![0xee; 7];
        let plan = UdpPlan::new(&packets, true, &mut buffer);
        let runs = plan.runs();
        assert_eq!(runs.len(), 2);
        let video = runs[0];
        assert_eq!((video.track, video.packets, video.segment), (0, 4, 1400));
        let whole = &plan.joined[video.joined.expect("a run of 4 is joined")];
        let expected: Vec<u8> = [0, 2, 3, 4]
            .iter()
            .flat_map(|&i| packets[i].data.to_vec())
            .collect();
        assert_eq!(
            &whole[..],
            &expected[..],
            "the packets, in order, and nothing else"
        );
        assert_eq!(
            runs[1].joined, None,
            "a single packet is sent from where it is"
        );
        assert_eq!(plan.joined.len(), 1);
        drop(plan);
        assert_eq!(buffer.len(), 5100, "the lent buffer was cleared first");
        // Without GSO nothing is copied.
        let plan = UdpPlan::new(&packets, false, &mut buffer);
        assert!(plan.runs().iter().all(|r| r.joined.is_none()));
    }

    #[tokio::test]
    async fn a_reader_receives_a_joined_run_as_the_original_datagrams() {
        let packets = vec![packet(0, 1, 1400), packet(0, 2, 1400), packet(0, 3, 500)];
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let gso = tx.probe_gso();
        let mut buffer = Vec::new();
        let plan = UdpPlan::new(&packets, gso, &mut buffer);
        let mut egress = Egress::new(&packets, &plan);
        egress.begin_sink();
        for run in plan.runs() {
            egress.send_udp(&tx, to, run, gso, None);
        }
        let sent = egress.finish();
        assert_eq!(sent.packets, 3);
        let mut buf = [0u8; 2048];
        for p in &packets {
            let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                .await
                .expect("a datagram arrives")
                .unwrap();
            assert_eq!(&buf[..n], &p.data[..]);
        }
    }

    #[test]
    fn a_flush_that_fits_its_saved_time_is_written_directly_to_the_last_sink() {
        // 60 sinks of 50 µs: 3 ms, past the 2 ms stretch but within the 8 ms saved up.
        // Tried a few times: a thread descheduled during its stretch predicts a longer
        // flush and rightly stops.
        let runs: Vec<usize> = (0..5)
            .map(|_| allowed_of(60, Duration::from_micros(50), false))
            .collect();
        assert!(runs.contains(&60), "{runs:?}");
    }

    #[test]
    fn a_flush_too_long_for_its_saved_time_stops_at_the_stretch() {
        // 400 sinks of 50 µs: at least 20 ms, over the 8 ms saved up. Only the sinks
        // begun within the 2 ms stretch (at most 40, one every 50 µs or slower) write.
        let allowed = allowed_of(400, Duration::from_micros(50), false);
        assert!((1..=41).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_thread_exempt_from_the_budget_writes_directly_to_the_last_sink() {
        assert_eq!(allowed_of(400, Duration::from_micros(50), true), 400);
    }
}
