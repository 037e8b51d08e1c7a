//! A path's reader group: the one [`sluice_hub::Sink`] of a stream behind which all its
//! RTSP readers and multicast groups sit.
//!
//! The stream hands the group each batch once ([`sluice_hub::Sink::on_batch`]); the group
//! files it in its GOP cache, moves the readers that joined since the last batch into its
//! delivery list, plans the batch once ([`UdpPlan`]) and fans it out to every reader
//! ([`crate::rtsp::readers::fanout`]): on the caller's thread, or with [`OFFLOAD_SINKS`] readers
//! or more on the fan-out threads ([`crate::rtsp::readers::outbox`]), in order, so the source
//! goes on at once. Readers subscribe to the group, which hands each the GOP cache and its
//! exact per-track start (for RTP-Info) without waiting for a fan-out in progress.
//! Readers must not block: each owns a bounded queue and decides itself what happens when
//! it is full.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sluice_hub::packet::{Batch, EndReason, MediaPacket};
use sluice_rtp::packet::RtpHeader;

use crate::rtsp::readers::egress::{Egress, Refund, UdpPlan};
use crate::rtsp::readers::outbox::Outbox;
use sluice_hub::gop::{GopCache, TrackStart};
use sluice_hub::presentation::Presentation;
use sluice_hub::Stream;

/// Fewest readers whose deliveries run on the fan-out threads instead of the source's
/// ([`crate::rtsp::readers::outbox`]): as many as the fan-out cuts into shards. Below, a
/// delivery takes well under a millisecond, less than the hand-over would add.
pub const OFFLOAD_SINKS: usize = crate::rtsp::readers::fanout::SHARDED_SINKS;

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
/// wait (see [`crate::rtsp::readers::fanout::deliver`]).
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
        let sent = crate::rtsp::readers::fanout::deliver(&sinks, batch, &plan);
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
                Some(me) => crate::rtsp::readers::fanout::spawn(move || me.run_outbox()),
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
