//! The RTSP reader sink: delivers a stream's packets to one reader session (UDP unicast
//! or TCP interleaved) or to one multicast group, through a bounded queue.
//!
//! UDP readers have no queue and no task of their own: their RTP goes out in the stream's
//! batched fan-out (`sendmmsg`, GSO), straight from the source's task. Only a new reader's
//! catch-up (the GOP cache handed over at PLAY) is queued, and sent paced by a short-lived
//! task until the reader has caught up with the live edge. TCP readers feed their
//! connection's [`MediaQueue`] a frame at a time.
//!
//! A full queue never blocks the source: UDP targets drop the packet (counted, logged once
//! per burst); a TCP reader whose queue stays full past `slow_timeout` is disconnected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use bytes::Bytes;
use sluice_net::media_socket::MediaSocket;
use sluice_rtp::rtcp::{self, SenderInfo};
use tracing::{debug, info, warn};

use crate::rtsp::readers::group::Reader;
use crate::rtsp::readers::group::{Egress, Refund, UdpPlan};
use crate::rtsp::readers::latency::LatencyHistogram;
use crate::rtsp::readers::media_queue::{
    channel_of, ChannelMap, MediaQueue, PushError, TcpOut, NO_CHANNEL,
};
use sluice_hub::{EndReason, MediaPacket, Stream};

/// CNAME Sluice puts in its RTCP packets.
pub const CNAME: &str = "sluice";

/// Where one track of a reader goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Not delivered by this sink.
    None,
    /// UDP datagrams to these addresses (unicast reader or multicast group).
    Udp {
        /// RTP destination.
        rtp: SocketAddr,
        /// RTCP destination.
        rtcp: SocketAddr,
    },
    /// Interleaved frames on these channels of the reader's RTSP connection.
    Tcp {
        /// RTP channel.
        rtp: u8,
        /// RTCP channel.
        rtcp: u8,
    },
}

/// The queue or sockets a sink delivers through.
#[derive(Debug, Clone)]
pub enum Outbox {
    /// Directly from the server's UDP sockets: RTP through the batched fan-out, RTCP
    /// with a plain non-blocking send.
    Udp {
        /// Socket RTP leaves from.
        rtp: Arc<MediaSocket>,
        /// Socket RTCP leaves from.
        rtcp: Arc<MediaSocket>,
        /// Whether runs of equal-sized packets may go as one GSO message.
        gso: bool,
    },
    /// The reader's RTSP connection's media queue.
    Tcp(Arc<MediaQueue>),
}

/// Called when a TCP reader is too slow or its stream ended: closes its connection.
pub type CloseFn = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Default)]
struct TrackCounters {
    /// Packets sent; the Sender Reports carry its low 32 bits (RTCP's counts wrap).
    packets: AtomicU64,
    /// Payload bytes sent; the Sender Reports carry its low 32 bits.
    octets: AtomicU64,
    ssrc: AtomicU32,
    seen: AtomicBool,
}

/// A sink delivering to one RTSP reader session or one multicast group.
pub struct ReaderSink {
    label: String,
    targets: Vec<Target>,
    outbox: Outbox,
    slow_timeout: Duration,
    counters: Vec<TrackCounters>,
    dropped: AtomicU64,
    in_drop_burst: AtomicBool,
    full_since: Mutex<Option<Instant>>,
    ended: AtomicBool,
    on_close: CloseFn,
    /// Until opened, packets are held here (bounded) instead of queued, so that a
    /// PLAY response is on the wire before the first packet it announces.
    gate: Mutex<Option<VecDeque<MediaPacket>>>,
    open: AtomicBool,
    /// UDP only: while Some, the reader is catching up and its packets are queued here for
    /// the paced catch-up task instead of joining the batched fan-out.
    catch_up: Mutex<Option<VecDeque<MediaPacket>>>,
    catching_up: AtomicBool,
    /// When the next Sender Report is due, in ms after `created`.
    next_report_ms: AtomicU64,
    created: Instant,
    /// TCP: the RTP channel per track.
    channels: ChannelMap,
    /// The transport it serves a session over, for the path's reader counts (`udp`,
    /// `tcp`, `multicast`); None for a multicast group's feed, which is no reader.
    transport: Option<&'static str>,
    /// UDP: where the latency of this sink's sends is recorded (see
    /// [`ReaderSink::recording_latency`]).
    latency: Option<Arc<LatencyHistogram>>,
}

/// Most packets a closed gate holds: the GOP cache handed over at subscription, plus what
/// arrives before the PLAY answer is queued (microseconds).
const GATE_CAPACITY: usize = sluice_hub::gop::MAX_PACKETS + 1024;

impl std::fmt::Debug for ReaderSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSink")
            .field("label", &self.label)
            .field("targets", &self.targets)
            .finish()
    }
}

impl ReaderSink {
    /// A sink named `label` (for logs: the session id or the group) sending each track to
    /// its target through `outbox`. `on_close` is called (once) when a TCP reader is too
    /// slow or the stream ends.
    pub fn new(
        label: String,
        targets: Vec<Target>,
        outbox: Outbox,
        slow_timeout: Duration,
        on_close: CloseFn,
    ) -> ReaderSink {
        let counters = targets.iter().map(|_| TrackCounters::default()).collect();
        let mut channels = [NO_CHANNEL; sluice_hub::presentation::MAX_TRACKS];
        for (slot, t) in channels.iter_mut().zip(&targets) {
            if let Target::Tcp { rtp, .. } = t {
                *slot = *rtp;
            }
        }
        ReaderSink {
            label,
            targets,
            outbox,
            slow_timeout,
            counters,
            dropped: AtomicU64::new(0),
            in_drop_burst: AtomicBool::new(false),
            full_since: Mutex::new(None),
            ended: AtomicBool::new(false),
            on_close,
            gate: Mutex::new(Some(VecDeque::new())),
            open: AtomicBool::new(false),
            catch_up: Mutex::new(None),
            catching_up: AtomicBool::new(false),
            // The first report a second after subscription, as RFC 3550 suggests starting early.
            next_report_ms: AtomicU64::new(1000),
            created: Instant::now(),
            channels,
            latency: None,
            transport: None,
        }
    }

    /// This sink, counted as one reader over `transport` (`udp`, `tcp`, `multicast`) in
    /// its path's figures ([`Reader::transport`]).
    pub fn serving(mut self, transport: &'static str) -> ReaderSink {
        self.transport = Some(transport);
        self
    }

    /// This sink, recording the ingest → egress latency of its UDP sends into `latency`:
    /// its server's histogram, so that servers sharing a process measure apart. (A TCP
    /// reader's writes are recorded by its connection's [`MediaQueue`].) A sink made
    /// without it (tests, micro-benchmarks) records nothing.
    pub fn recording_latency(mut self, latency: Arc<LatencyHistogram>) -> ReaderSink {
        self.latency = Some(latency);
        self
    }

    /// Whether this sink's Sender Reports are due at `now`; if so, schedules the next
    /// ones `interval` later.
    pub fn report_due(&self, now: Instant, interval: Duration) -> bool {
        let at = now.saturating_duration_since(self.created).as_millis() as u64;
        let next = self.next_report_ms.load(Ordering::Relaxed);
        at >= next
            && self
                .next_report_ms
                .compare_exchange(
                    next,
                    at + interval.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Starts delivery: packets held since subscription go out first, in order. Over
    /// UDP they are sent paced by a catch-up task; the reader joins the batched fan-out
    /// once that has drained.
    pub fn open(self: &Arc<Self>) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let held = gate.take().unwrap_or_default();
        match &self.outbox {
            Outbox::Udp { rtp, .. } if !held.is_empty() => {
                *self.catch_up.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
                self.catching_up.store(true, Ordering::Release);
                // The first burst (the keyframe) leaves from here, at once, without
                // waiting for room (as the live fan-out sends): a new task waits for a
                // runtime worker, tens of milliseconds on a busy server.
                let mut pacer = CatchUp::new();
                if pacer.send_burst(self) == Burst::Sent {
                    catch_up_runtime().spawn(run_catch_up(self.clone(), rtp.clone(), pacer));
                }
            }
            Outbox::Tcp(q) => self.push_tcp(q, held.iter()),
            Outbox::Udp { .. } => {}
        }
        self.open.store(true, Ordering::Release);
    }

    /// Packets dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// RTP packets sent to `track`'s target.
    pub fn packets_sent(&self, track: usize) -> u32 {
        self.counters
            .get(track)
            .map_or(0, |c| c.packets.load(Ordering::Relaxed) as u32)
    }

    /// RTP payload bytes sent on `track` (the Sender Reports' octet count).
    pub fn octets_sent(&self, track: usize) -> u32 {
        self.counters
            .get(track)
            .map_or(0, |c| c.octets.load(Ordering::Relaxed) as u32)
    }

    /// Whether the sink delivers anything (multicast members' session sinks do not).
    pub fn has_targets(&self) -> bool {
        self.targets.iter().any(|t| *t != Target::None)
    }

    /// Sends or queues one RTCP packet to `target`'s RTCP destination.
    fn send_rtcp(&self, target: Target, data: Bytes) {
        match (&self.outbox, target) {
            (Outbox::Udp { rtcp, .. }, Target::Udp { rtcp: to, .. }) => {
                if let Err(e) = rtcp.try_send_to(&data, to) {
                    debug!(reader = %self.label, error = %e, "RTCP send failed");
                }
            }
            (Outbox::Tcp(q), Target::Tcp { rtcp, .. }) => {
                let _ = q.push(TcpOut::Frame {
                    channel: rtcp,
                    data,
                    received_at: None,
                });
            }
            _ => {}
        }
    }

    /// Queues `egress`'s batch for this reader's UDP targets, a message per run, and
    /// counts it for the Sender Reports (what the kernel refuses is handed back).
    fn send_udp(&self, rtp: &Arc<MediaSocket>, gso: bool, egress: &mut Egress<'_>) {
        for run in egress.runs() {
            if let Some(Target::Udp { rtp: to, .. }) = self.targets.get(run.track) {
                egress.send_udp(rtp, *to, run, gso, self.latency.as_ref());
                self.count(
                    run.track,
                    u32::from(run.packets),
                    run.payload_bytes,
                    run.ssrc,
                );
            }
        }
    }

    /// Counts a packet sent (or queued) to `track` for the Sender Reports.
    fn count(&self, track: usize, packets: u32, payload_bytes: u32, ssrc: u32) {
        if let Some(c) = self.counters.get(track) {
            c.packets.fetch_add(u64::from(packets), Ordering::Relaxed);
            c.octets
                .fetch_add(u64::from(payload_bytes), Ordering::Relaxed);
            c.ssrc.store(ssrc, Ordering::Relaxed);
            c.seen.store(true, Ordering::Relaxed);
        }
    }

    fn note_drop(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if !self.in_drop_burst.swap(true, Ordering::Relaxed) {
            warn!(reader = %self.label, dropped = self.dropped(), "slow reader: queue full, dropping packets");
        }
    }

    /// Queues frames on a TCP reader's connection; handles a full queue (drop, and
    /// disconnect once it has been full for `slow_timeout`).
    fn push_tcp<'a>(&self, q: &MediaQueue, packets: impl Iterator<Item = &'a MediaPacket> + Clone) {
        let mine = packets.filter_map(|p| Some((p, channel_of(&self.channels, p.track)?)));
        let result = q.push_all(mine.clone().map(|(p, channel)| TcpOut::Frame {
            channel,
            data: p.data.clone(),
            received_at: Some(p.received_at),
        }));
        let queued = match result {
            Ok(n) | Err((n, _)) => n,
        };
        let mut total = 0usize;
        for (i, (p, _)) in mine.enumerate() {
            total += 1;
            if i < queued {
                self.count(p.track, 1, p.payload_len(), p.header.ssrc);
            }
        }
        self.handle_push_result(result.map(|_| ()).map_err(|(n, e)| (total - n, e)));
    }

    /// After queueing on a TCP connection: clears or advances the slow-reader clock.
    /// `Err((dropped, why))` when some packets did not fit.
    fn handle_push_result(&self, result: Result<(), (usize, PushError)>) {
        match result {
            Ok(()) => {
                let mut full = self.full_since.lock().unwrap_or_else(|e| e.into_inner());
                *full = None;
                if self.in_drop_burst.swap(false, Ordering::Relaxed) {
                    debug!(reader = %self.label, dropped = self.dropped(), "reader queue drained");
                }
            }
            Err((dropped, PushError::Full)) => {
                self.note_drop(dropped as u64);
                let now = Instant::now();
                let mut full = self.full_since.lock().unwrap_or_else(|e| e.into_inner());
                let since = *full.get_or_insert(now);
                if now.duration_since(since) >= self.slow_timeout
                    && !self.ended.swap(true, Ordering::AcqRel)
                {
                    warn!(reader = %self.label, dropped = self.dropped(), "slow TCP reader: queue full too long, disconnecting");
                    (self.on_close)("slow reader");
                }
            }
            Err((_, PushError::Closed)) => {}
        }
    }

    /// Queues a whole batch on a TCP reader's connection as one shared item.
    fn push_tcp_batch(&self, q: &MediaQueue, egress: &mut Egress<'_>) {
        // The flush's plan already has each track's packet and byte counts (its runs):
        // this reader's share is found per run, not per packet.
        let runs = egress.runs();
        let mine = || {
            runs.iter()
                .filter(|r| channel_of(&self.channels, r.track).is_some())
        };
        let n: usize = mine().map(|r| usize::from(r.packets)).sum();
        if n == 0 {
            return;
        }
        let direct = egress.direct_allowed();
        let result = q.push_with(
            TcpOut::Batch {
                packets: egress.shared_packets(),
                channels: self.channels,
                frames: n,
                framed: egress.framed(&self.channels),
                received_at: egress.oldest(),
            },
            direct,
        );
        if result.is_ok() {
            for r in mine() {
                self.count(r.track, u32::from(r.packets), r.payload_bytes, r.ssrc);
            }
        }
        self.handle_push_result(result.map_err(|e| (n, e)));
    }

    /// Builds this sink's Sender Reports for every delivered track from the stream's
    /// NTP↔RTP mapping, and queues them.
    pub fn send_sender_reports(&self, stream: &Stream, now: Instant) {
        for (track, target) in self.targets.iter().enumerate() {
            if *target == Target::None {
                continue;
            }
            let (Some(c), Some(mapping), Some(t)) = (
                self.counters.get(track),
                stream.sr_mapping(track),
                stream.presentation().tracks().get(track),
            ) else {
                continue;
            };
            if !c.seen.load(Ordering::Relaxed) {
                continue;
            }
            let (ntp, rtp_timestamp) = mapping.extrapolate(now, t.clock_rate);
            let info = SenderInfo {
                ssrc: c.ssrc.load(Ordering::Relaxed),
                ntp,
                rtp_timestamp,
                packet_count: c.packets.load(Ordering::Relaxed) as u32,
                octet_count: c.octets.load(Ordering::Relaxed) as u32,
            };
            let mut buf = Vec::with_capacity(64);
            rtcp::write_sender_report(&mut buf, &info, &[], CNAME);
            self.send_rtcp(*target, Bytes::from(buf));
        }
    }

    /// Queues an RTCP BYE for every delivered track (on PAUSE-less endings: TEARDOWN, end of stream).
    pub fn send_bye(&self) {
        for (track, target) in self.targets.iter().enumerate() {
            let Some(c) = self.counters.get(track) else {
                continue;
            };
            if *target == Target::None || !c.seen.load(Ordering::Relaxed) {
                continue;
            }
            let mut buf = Vec::with_capacity(48);
            rtcp::write_bye(&mut buf, c.ssrc.load(Ordering::Relaxed), CNAME);
            self.send_rtcp(*target, Bytes::from(buf));
        }
    }
}

impl ReaderSink {
    /// Holds packets while the gate is closed; returns false once it is open.
    fn hold(&self, packets: &[MediaPacket]) -> bool {
        if self.open.load(Ordering::Acquire) {
            return false;
        }
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let Some(held) = gate.as_mut() else {
            return false;
        };
        let dropped = append_capped(held, packets);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        true
    }

    /// Queues packets for the catch-up task; returns false once the reader is live.
    fn queue_catch_up(&self, packets: &[MediaPacket]) -> bool {
        if !self.catching_up.load(Ordering::Acquire) {
            return false;
        }
        let mut q = self.catch_up.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = q.as_mut() else {
            return false;
        };
        let dropped = append_capped(q, packets);
        if dropped > 0 {
            self.note_drop(dropped);
        }
        true
    }
}

/// Appends `packets` to a gate or catch-up queue while it holds fewer than
/// [`GATE_CAPACITY`]; returns how many did not fit.
fn append_capped(q: &mut VecDeque<MediaPacket>, packets: &[MediaPacket]) -> u64 {
    let room = GATE_CAPACITY.saturating_sub(q.len()).min(packets.len());
    q.extend(packets[..room].iter().cloned());
    (packets.len() - room) as u64
}

impl Reader for ReaderSink {
    fn room(&self) -> Option<sluice_hub::Room> {
        match &self.outbox {
            Outbox::Tcp(q) => Some(q.room()),
            Outbox::Udp { .. } => None,
        }
    }

    fn handle_packet(&self, packet: &MediaPacket) {
        let one = std::slice::from_ref(packet);
        if self.hold(one) || self.queue_catch_up(one) || self.ended.load(Ordering::Relaxed) {
            return;
        }
        match &self.outbox {
            Outbox::Tcp(q) => self.push_tcp(q, one.iter()),
            // Only the GOP handover calls this, and the gate is closed then.
            Outbox::Udp { .. } => {}
        }
    }

    fn handle_batch(&self, egress: &mut Egress<'_>) {
        if self.ended.load(Ordering::Relaxed) {
            return;
        }
        let packets = egress.packets();
        if self.hold(packets) || self.queue_catch_up(packets) {
            return;
        }
        match &self.outbox {
            Outbox::Udp { rtp, gso, .. } => self.send_udp(rtp, *gso, egress),
            Outbox::Tcp(q) => self.push_tcp_batch(q, egress),
        }
    }

    fn sends_gso_runs(&self) -> bool {
        matches!(&self.outbox, Outbox::Udp { rtp, gso: true, .. } if rtp.gso())
    }

    fn handle_refused(&self, refund: Refund) {
        // Taken back from what `count` added before, so never below zero.
        if let Some(c) = self.counters.get(refund.track) {
            c.packets
                .fetch_sub(u64::from(refund.packets), Ordering::Relaxed);
            c.octets
                .fetch_sub(u64::from(refund.payload_bytes), Ordering::Relaxed);
        }
    }

    fn transport(&self) -> Option<&'static str> {
        self.transport
    }

    fn sent(&self) -> (u64, u64) {
        self.counters.iter().fold((0, 0), |(p, b), c| {
            (
                p + c.packets.load(Ordering::Relaxed),
                b + c.octets.load(Ordering::Relaxed),
            )
        })
    }

    fn dropped(&self) -> u64 {
        ReaderSink::dropped(self)
    }

    fn prefetch(&self) {
        crate::rtsp::readers::prefetch::prefetch(&self.counters[..]);
        crate::rtsp::readers::prefetch::prefetch(&self.targets[..]);
        if let Outbox::Tcp(q) = &self.outbox {
            crate::rtsp::readers::prefetch::prefetch(&**q);
        }
    }

    fn handle_end_of_stream(&self) {
        self.send_bye();
    }

    fn handle_end(&self, reason: EndReason) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(reader = %self.label, ?reason, "stream ended for reader");
        self.send_bye();
        if let Outbox::Tcp(q) = &self.outbox {
            q.close();
        }
        (self.on_close)("stream ended");
    }
}

/// Rate at which a new UDP reader's catch-up (GOP cache) packets are sent: 32 Mbit/s, a
/// few times a typical stream's rate, gentle on clients' default socket buffers. The
/// keyframe comes first, so this does not delay the first picture.
const BACKLOG_BYTES_PER_SEC: f64 = 4_000_000.0;

/// Most catch-up packets sent in one `sendmmsg`.
const CATCH_UP_BATCH: usize = 32;

/// How long a catch-up waits before asking again for room in a full send buffer.
const CATCH_UP_ROOM_WAIT: Duration = Duration::from_millis(1);

/// How far ahead of the pacing clock a catch-up may send at once (16 KB at the rate).
const CATCH_UP_BURST: Duration = Duration::from_millis(4);

/// The runtime that sends UDP readers' catch-ups: a thread of its own, so that a connect
/// storm's catch-ups (a GOP for each new reader, most of the runtime workers' time while
/// they last) share the cores with the RTSP sessions' tasks instead of queuing ahead of
/// them on the same workers. If that thread cannot be started, and in unit tests (which
/// run a catch-up step by step on their own runtime), the caller's runtime.
fn catch_up_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    let own = RUNTIME.get_or_init(|| {
        if cfg!(test) {
            return None;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "no catch-up runtime: catch-ups run on the workers"),
            )
            .ok()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("sluice-catch-up".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(
                |e| tracing::warn!(error = %e, "no catch-up thread: catch-ups run on the workers"),
            )
            .ok()?;
        Some(handle)
    });
    own.clone().unwrap_or_else(tokio::runtime::Handle::current)
}

/// Sends a new UDP reader's catch-up queue, paced, a `sendmmsg` per burst, then lets the
/// reader join the batched fan-out: the switch happens under the queue's lock, when it
/// is empty, so no packet is sent twice, skipped or reordered.
async fn run_catch_up(sink: Arc<ReaderSink>, socket: Arc<MediaSocket>, mut pacer: CatchUp) {
    loop {
        if pacer.clock > tokio::time::Instant::now() + CATCH_UP_BURST {
            tokio::time::sleep_until(pacer.clock).await;
        }
        // Room first (the live fan-out shares the socket); the send itself never blocks.
        while !socket.has_room() {
            tokio::time::sleep(CATCH_UP_ROOM_WAIT).await;
        }
        if pacer.send_burst(&sink) == Burst::Done {
            return;
        }
    }
}

/// The pacing state of one reader's catch-up.
struct CatchUp {
    /// Token bucket for catch-up data: when the next byte may leave.
    clock: tokio::time::Instant,
    /// The burst being sent (kept for its allocation).
    batch: Vec<MediaPacket>,
    /// The buffer the burst's UDP plan copies its GSO runs into (kept for its allocation).
    joined: Vec<u8>,
    errors_logged: bool,
}

/// What [`CatchUp::send_burst`] did.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    /// Sent (or, for an ended reader, skipped) what the pacing allowed; more may follow.
    Sent,
    /// The queue was empty: the reader has joined the fan-out.
    Done,
}

impl CatchUp {
    fn new() -> CatchUp {
        CatchUp {
            clock: tokio::time::Instant::now(),
            batch: Vec::with_capacity(CATCH_UP_BATCH),
            joined: Vec::new(),
            errors_logged: false,
        }
    }

    /// Takes what the pacing allows now from `sink`'s catch-up queue (the first packet
    /// always, then up to [`CATCH_UP_BURST`] ahead of the clock) and sends it in one
    /// `sendmmsg` on the reader's RTP socket; once the queue is empty, ends the catch-up.
    fn send_burst(&mut self, sink: &ReaderSink) -> Burst {
        let batch = &mut self.batch;
        batch.clear();
        {
            let mut q = sink.catch_up.lock().unwrap_or_else(|e| e.into_inner());
            let Some(queue) = q.as_mut() else {
                sink.catching_up.store(false, Ordering::Release);
                return Burst::Done;
            };
            let now = tokio::time::Instant::now();
            self.clock = self.clock.max(now);
            while batch.len() < CATCH_UP_BATCH
                && (batch.is_empty() || self.clock <= now + CATCH_UP_BURST)
            {
                let Some(p) = queue.pop_front() else {
                    break;
                };
                self.clock += Duration::from_secs_f64(p.data.len() as f64 / BACKLOG_BYTES_PER_SEC);
                batch.push(p);
            }
            if batch.is_empty() {
                *q = None;
                sink.catching_up.store(false, Ordering::Release);
                return Burst::Done;
            }
        }
        if sink.ended.load(Ordering::Relaxed) {
            return Burst::Sent;
        }
        let Outbox::Udp { rtp, gso, .. } = &sink.outbox else {
            return Burst::Sent;
        };
        // As the live fan-out sends: GSO runs, and Sender Reports that count only what
        // the kernel took. The packets' age is the catch-up's, not the server's latency.
        let plan = UdpPlan::new(batch, *gso, &mut self.joined);
        let mut egress = Egress::new(batch, &plan).without_latency();
        egress.begin_sink();
        sink.send_udp(rtp, *gso, &mut egress);
        let sent = egress.finish_noting(|_, refund| sink.handle_refused(refund));
        if sent.dropped > 0 {
            sink.note_drop(sent.dropped);
            if !self.errors_logged {
                debug!(reader = %sink.label, dropped = sent.dropped, "catch-up datagrams refused by the kernel");
                self.errors_logged = true;
            }
        }
        Burst::Sent
    }
}

/// Sends the sink's Sender Reports every `interval` (the first after one second) until aborted.
pub async fn run_sender_reports(sink: Arc<ReaderSink>, stream: Arc<Stream>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        interval,
    );
    loop {
        ticker.tick().await;
        if sink.ended.load(Ordering::Relaxed) || stream.is_ended() {
            return;
        }
        sink.send_sender_reports(&stream, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtsp::readers::group::UdpPlan;
    use crate::rtsp::readers::media_queue::Taken;
    use crate::rtsp::readers::SinkId;
    use sluice_rtp::packet::RtpHeader;

    fn packet(seq: u16) -> MediaPacket {
        let mut data = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        data[2..4].copy_from_slice(&seq.to_be_bytes());
        data.extend_from_slice(&[0xab; 100]);
        MediaPacket {
            track: 0,
            data: Bytes::from(data),
            header: RtpHeader {
                payload_type: 96,
                marker: true,
                sequence: seq,
                timestamp: 0,
                ssrc: 7,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    fn deliver(sink: &ReaderSink, packets: &[MediaPacket]) {
        let mut joined = Vec::new();
        let plan = UdpPlan::new(packets, false, &mut joined);
        let mut egress = Egress::new(packets, &plan);
        sink.handle_batch(&mut egress);
        egress.finish();
    }

    /// A UDP reader of one track sending to `to` from `tx`, its gate still closed. GSO
    /// off: one message per packet (a GSO run to port 0 would read as a device without
    /// GSO and be split, turning GSO off for `tx`).
    fn udp_reader(to: SocketAddr, tx: &Arc<MediaSocket>) -> Arc<ReaderSink> {
        udp_reader_with(to, tx, false)
    }

    /// A UDP reader sending from `tx`, in GSO runs if `gso`.
    fn udp_reader_with(to: SocketAddr, tx: &Arc<MediaSocket>, gso: bool) -> Arc<ReaderSink> {
        Arc::new(ReaderSink::new(
            format!("to {to}"),
            vec![Target::Udp { rtp: to, rtcp: to }],
            Outbox::Udp {
                rtp: tx.clone(),
                rtcp: tx.clone(),
                gso,
            },
            Duration::from_secs(5),
            Arc::new(|_| {}),
        ))
    }

    #[tokio::test]
    async fn a_udp_reader_gets_its_catch_up_then_live_packets_once_and_in_order() {
        catch_up_then_live(false).await;
    }

    #[tokio::test]
    async fn a_udp_reader_gets_its_catch_up_in_gso_runs_then_live_packets_once_and_in_order() {
        catch_up_then_live(true).await;
    }

    async fn catch_up_then_live(gso: bool) {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // Read as it arrives (a small receive buffer would drop a backlog).
        let (seqs_tx, mut seqs) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(n) = rx.recv(&mut buf).await {
                let _ = seqs_tx.send((n, u16::from_be_bytes([buf[2], buf[3]])));
            }
        });
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        // Without GSO here, the GSO case is the other one over again.
        if gso && !tx.probe_gso() {
            return;
        }
        let sink = udp_reader_with(to, &tx, gso);
        // The GOP handed over at subscription (gate closed), then PLAY opens the gate.
        for seq in 0..200 {
            sink.handle_packet(&packet(seq));
        }
        sink.open();
        // Live batches while the reader catches up, then after it has joined the fan-out.
        let mut seq = 200;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.catching_up.load(Ordering::Acquire) || seq < 260 {
            assert!(Instant::now() < deadline, "catch-up never finished");
            deliver(&sink, &[packet(seq), packet(seq + 1)]);
            seq += 2;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut got = Vec::new();
        while got.len() < usize::from(seq) {
            let (n, s) = tokio::time::timeout(Duration::from_secs(2), seqs.recv())
                .await
                .unwrap_or_else(|_| panic!("a datagram went missing after {got:?}"))
                .unwrap();
            assert_eq!(n, 112);
            got.push(s);
        }
        assert_eq!(got, (0..seq).collect::<Vec<_>>());
        assert_eq!(sink.packets_sent(0), u32::from(seq));
        assert_eq!(sink.dropped(), 0);
    }

    #[tokio::test]
    async fn a_udp_readers_live_sends_are_timed_into_the_histogram_it_was_given() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let servers = Arc::new(LatencyHistogram::new());
        let timed = Arc::new(
            ReaderSink::new(
                format!("to {to}"),
                vec![Target::Udp { rtp: to, rtcp: to }],
                Outbox::Udp {
                    rtp: tx.clone(),
                    rtcp: tx.clone(),
                    gso: false,
                },
                Duration::from_secs(5),
                Arc::new(|_| {}),
            )
            .recording_latency(servers.clone()),
        );
        let untimed = udp_reader(to, &tx);
        timed.open();
        untimed.open();
        deliver(&timed, &[packet(0), packet(1), packet(2)]);
        assert_eq!(servers.take().count, 3, "each packet sent, once");
        deliver(&untimed, &[packet(3), packet(4)]);
        assert_eq!(
            servers.take().count,
            0,
            "another sink's sends are not this one's"
        );
    }

    /// On a current-thread runtime no task runs until the test yields: what arrives before
    /// that was sent by `open` itself.
    #[tokio::test]
    async fn a_udp_readers_first_catch_up_burst_leaves_inside_open() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let sink = udp_reader(to, &tx);
        // 100 packets of 112 bytes: 11 KB, a burst's worth of the pacing and more than
        // a `sendmmsg` takes.
        for seq in 0..100 {
            sink.handle_packet(&packet(seq));
        }
        sink.open();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            assert_eq!(n, 112);
            got.push(u16::from_be_bytes([buf[2], buf[3]]));
        }
        assert_eq!(got, (0..CATCH_UP_BATCH as u16).collect::<Vec<_>>());
        assert!(sink.catching_up.load(Ordering::Acquire));
        // The task sends the rest.
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 100 {
            assert!(Instant::now() < deadline, "the rest never came: {got:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
            while rx.recv(&mut buf).is_ok() {
                got.push(u16::from_be_bytes([buf[2], buf[3]]));
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(sink.packets_sent(0), 100);
    }

    #[tokio::test]
    async fn a_udp_reader_asks_for_gso_runs_only_while_its_socket_sends_them() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        // Not probed: the socket sends no GSO runs, whatever the reader was set up with.
        assert!(!udp_reader_with(to, &tx, true).sends_gso_runs());
        if tx.probe_gso() {
            assert!(udp_reader_with(to, &tx, true).sends_gso_runs());
            assert!(!udp_reader_with(to, &tx, false).sends_gso_runs());
            tx.disable_gso();
            assert!(!udp_reader_with(to, &tx, true).sends_gso_runs());
        }
    }

    #[tokio::test]
    async fn sender_report_counts_leave_out_datagrams_the_kernel_refused() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let good = rx.local_addr().unwrap();
        // The kernel refuses any datagram to port 0 (EINVAL).
        let refused: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let reader = |to: SocketAddr| {
            let sink = udp_reader(to, &tx);
            sink.open();
            sink
        };
        let readers = [reader(good), reader(refused), reader(good), reader(refused)];
        let sinks: Vec<(SinkId, Arc<dyn Reader>)> = readers
            .iter()
            .enumerate()
            .map(|(i, r)| (SinkId::for_test(i as u64), r.clone() as Arc<dyn Reader>))
            .collect();
        // Payloads of 100, 150 and 200 bytes, planned as GSO runs that these readers
        // send packet by packet.
        let sized = |seq: u16, extra: usize| {
            let mut p = packet(seq);
            let mut data = p.data.to_vec();
            data.extend(std::iter::repeat_n(0xcd, extra));
            p.data = Bytes::from(data);
            p
        };
        let batch = [sized(0, 0), sized(1, 50), sized(2, 100)];
        let mut joined = Vec::new();
        let plan = UdpPlan::new(&batch, true, &mut joined);
        let sent = crate::rtsp::readers::group::deliver(&sinks, &batch, &plan);
        assert_eq!((sent.packets, sent.dropped), (6, 6));
        for (i, r) in readers.iter().enumerate() {
            let (packets, octets) = if i % 2 == 0 { (3, 450) } else { (0, 0) };
            assert_eq!(
                (r.packets_sent(0), r.octets_sent(0)),
                (packets, octets),
                "reader {i}"
            );
        }
        let mut buf = [0u8; 2048];
        for _ in 0..6 {
            tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                .await
                .expect("a sent datagram arrives")
                .unwrap();
        }
    }

    #[test]
    fn a_tcp_reader_gets_and_counts_only_its_tracks_packets() {
        let queue = Arc::new(MediaQueue::new(64, None));
        let sink = Arc::new(ReaderSink::new(
            "test".into(),
            vec![Target::Tcp { rtp: 0, rtcp: 1 }, Target::None],
            Outbox::Tcp(queue.clone()),
            Duration::from_secs(5),
            Arc::new(|_| {}),
        ));
        sink.open();
        let other = |seq| MediaPacket {
            track: 1,
            ..packet(seq)
        };
        // Batches mixing its track with one it did not set up, planned in GSO runs (the
        // counts come from the runs, several packets each).
        let batches = [
            vec![packet(0), packet(1), other(0), packet(2)],
            vec![other(1), other(2)],
            vec![packet(3), other(3), packet(4)],
        ];
        for batch in &batches {
            let mut joined = Vec::new();
            let plan = UdpPlan::new(batch, true, &mut joined);
            let mut egress = Egress::new(batch, &plan);
            sink.handle_batch(&mut egress);
            egress.finish();
        }
        let mut taken = Taken::default();
        assert!(queue.take(&mut taken, 64));
        let frames: usize = taken.items.iter().map(|i| i.frames()).sum();
        assert_eq!(frames, 5, "track 0's packets only");
        assert_eq!(sink.packets_sent(0), 5);
        assert_eq!(sink.octets_sent(0), 5 * 100);
        assert_eq!(sink.packets_sent(1), 0);
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn tcp_readers_of_one_flush_write_the_same_frames_framed_once_or_not() {
        use crate::rtsp::readers::media_queue::{frame_headers, gather};
        // Three readers of track 0: two on channel 0, one on channel 4.
        let reader = |rtp: u8| {
            let queue = Arc::new(MediaQueue::new(64, None));
            let sink = Arc::new(ReaderSink::new(
                "test".into(),
                vec![Target::Tcp { rtp, rtcp: rtp + 1 }, Target::None],
                Outbox::Tcp(queue.clone()),
                Duration::from_secs(5),
                Arc::new(|_| {}),
            ));
            sink.open();
            (sink, queue, rtp)
        };
        let readers = [reader(0), reader(0), reader(4)];
        let other = MediaPacket {
            track: 1,
            ..packet(9)
        };
        let batch = vec![packet(1), other, packet(2)];
        let mut joined = Vec::new();
        let plan = UdpPlan::new(&batch, true, &mut joined);
        let mut egress = Egress::new(&batch, &plan);
        for (sink, _, _) in &readers {
            egress.begin_sink();
            sink.handle_batch(&mut egress);
        }
        egress.finish();
        let mut framed = Vec::new();
        for (_, queue, channel) in &readers {
            let mut taken = Taken::default();
            assert!(queue.take(&mut taken, 64));
            framed.push(matches!(
                taken.items[..],
                [TcpOut::Batch {
                    framed: Some(_),
                    ..
                }]
            ));
            let mut headers = Vec::new();
            frame_headers(&taken.items, &mut headers);
            let mut slices = Vec::new();
            assert_eq!(gather(&taken.items, &headers, 0, &mut slices), 2);
            let written: Vec<u8> = slices.iter().flat_map(|s| s.to_vec()).collect();
            let mut expected = Vec::new();
            for p in [&batch[0], &batch[2]] {
                expected.extend_from_slice(&sluice_rtsp::interleaved::header(*channel, 112));
                expected.extend_from_slice(&p.data);
            }
            assert_eq!(written, expected, "channel {channel}");
        }
        assert_eq!(
            framed,
            [false, true, false],
            "framed once, from the second reader, for its channels only"
        );
    }
}
