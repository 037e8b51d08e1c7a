//! The RTSP reader sink: delivers a stream's packets to one reader session (UDP unicast
//! or TCP interleaved) or to one multicast group, through a bounded queue.
//!
//! A full queue never blocks the source: UDP targets drop the packet (counted, logged once
//! per burst); a TCP reader whose queue stays full past `slow_timeout` is disconnected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_rtp::rtcp::{self, SenderInfo};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::stream::{EndReason, MediaPacket, Sink, Stream};

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

/// An item for a UDP writer task.
#[derive(Debug)]
pub enum UdpOut {
    /// A datagram; `rtcp` selects the server's RTCP socket as sender.
    Packet {
        /// Destination.
        to: SocketAddr,
        /// Send from the RTCP socket rather than the RTP socket.
        rtcp: bool,
        /// The datagram.
        data: Bytes,
        /// Catch-up data (the GOP cache handed to a new reader): paced, so a burst does
        /// not overflow the client's receive buffer.
        backlog: bool,
    },
    /// Stop the writer after what is queued.
    Close,
}

/// An item for a TCP connection's media writer.
#[derive(Debug)]
pub enum TcpOut {
    /// One interleaved frame.
    Frame {
        /// Interleaved channel.
        channel: u8,
        /// Frame payload (an RTP or RTCP packet).
        data: Bytes,
    },
    /// Close the connection after what is queued.
    Close,
}

/// The queue a sink feeds.
#[derive(Debug, Clone)]
pub enum Outbox {
    /// A UDP writer task's queue.
    Udp(mpsc::Sender<UdpOut>),
    /// The reader's RTSP connection's media queue.
    Tcp(mpsc::Sender<TcpOut>),
}

/// Called when a TCP reader is too slow or its stream ended: closes its connection.
pub type CloseFn = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Default)]
struct TrackCounters {
    packets: AtomicU32,
    octets: AtomicU32,
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
    gate: Mutex<Option<Vec<MediaPacket>>>,
    open: AtomicBool,
}

/// Most packets a closed gate holds: the GOP cache handed over at subscription, plus what
/// arrives before the PLAY answer is queued (microseconds).
const GATE_CAPACITY: usize = crate::gop::MAX_PACKETS + 1024;

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
            gate: Mutex::new(Some(Vec::new())),
            open: AtomicBool::new(false),
        }
    }

    /// Starts delivery: packets held since subscription go out first, in order.
    pub fn open(&self) {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = gate.take() {
            for p in &held {
                self.deliver(p, true);
            }
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
            .map_or(0, |c| c.packets.load(Ordering::Relaxed))
    }

    /// Whether the sink delivers anything (multicast members' session sinks do not).
    pub fn has_targets(&self) -> bool {
        self.targets.iter().any(|t| *t != Target::None)
    }

    fn enqueue(&self, target: Target, rtcp: bool, data: Bytes) -> bool {
        self.enqueue_with(target, rtcp, data, false)
    }

    fn enqueue_with(&self, target: Target, rtcp: bool, data: Bytes, backlog: bool) -> bool {
        match (&self.outbox, target) {
            (
                Outbox::Udp(tx),
                Target::Udp {
                    rtp,
                    rtcp: rtcp_addr,
                },
            ) => {
                let to = if rtcp { rtcp_addr } else { rtp };
                match tx.try_send(UdpOut::Packet {
                    to,
                    rtcp,
                    data,
                    backlog,
                }) {
                    Ok(()) => {
                        if self.in_drop_burst.swap(false, Ordering::Relaxed) {
                            debug!(reader = %self.label, dropped = self.dropped(), "reader queue drained");
                        }
                        true
                    }
                    Err(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        if !self.in_drop_burst.swap(true, Ordering::Relaxed) {
                            warn!(reader = %self.label, dropped = self.dropped(), "slow UDP reader: queue full, dropping packets");
                        }
                        false
                    }
                }
            }
            (Outbox::Tcp(tx), Target::Tcp { rtp, rtcp: rtcp_ch }) => {
                let channel = if rtcp { rtcp_ch } else { rtp };
                match tx.try_send(TcpOut::Frame { channel, data }) {
                    Ok(()) => {
                        let mut full = self.full_since.lock().unwrap_or_else(|e| e.into_inner());
                        *full = None;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        let mut full = self.full_since.lock().unwrap_or_else(|e| e.into_inner());
                        let since = *full.get_or_insert(now);
                        if now.duration_since(since) >= self.slow_timeout
                            && !self.ended.swap(true, Ordering::AcqRel)
                        {
                            warn!(reader = %self.label, dropped = self.dropped(), "slow TCP reader: queue full too long, disconnecting");
                            (self.on_close)("slow reader");
                        }
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            }
            _ => false,
        }
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
                packet_count: c.packets.load(Ordering::Relaxed),
                octet_count: c.octets.load(Ordering::Relaxed),
            };
            let mut buf = Vec::with_capacity(64);
            rtcp::write_sender_report(&mut buf, &info, &[], CNAME);
            self.enqueue(*target, true, Bytes::from(buf));
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
            self.enqueue(*target, true, Bytes::from(buf));
        }
    }
}

impl ReaderSink {
    fn deliver(&self, packet: &MediaPacket, backlog: bool) {
        let Some(target) = self.targets.get(packet.track).copied() else {
            return;
        };
        if target == Target::None || self.ended.load(Ordering::Relaxed) {
            return;
        }
        if self.enqueue_with(target, false, packet.data.clone(), backlog) {
            if let Some(c) = self.counters.get(packet.track) {
                c.packets.fetch_add(1, Ordering::Relaxed);
                let payload = packet
                    .data
                    .len()
                    .saturating_sub(packet.header.payload_offset);
                c.octets.fetch_add(payload as u32, Ordering::Relaxed);
                c.ssrc.store(packet.header.ssrc, Ordering::Relaxed);
                c.seen.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Sink for ReaderSink {
    fn handle_packet(&self, packet: &MediaPacket) {
        if !self.open.load(Ordering::Acquire) {
            let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(held) = gate.as_mut() {
                if held.len() < GATE_CAPACITY {
                    held.push(packet.clone());
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        self.deliver(packet, false);
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
        match &self.outbox {
            Outbox::Udp(tx) => {
                let _ = tx.try_send(UdpOut::Close);
            }
            Outbox::Tcp(tx) => {
                let _ = tx.try_send(TcpOut::Close);
            }
        }
        (self.on_close)("stream ended");
    }
}

/// Rate at which a new UDP reader's catch-up (GOP cache) packets are sent: 32 Mbit/s, a
/// few times a typical stream's rate, gentle on clients' default socket buffers. The
/// keyframe comes first, so this does not delay the first picture.
const BACKLOG_BYTES_PER_SEC: f64 = 4_000_000.0;

/// Drains a UDP outbox: RTP from `rtp_socket`, RTCP from `rtcp_socket`. Ends on `Close`
/// or when every sender is gone.
pub async fn run_udp_writer(
    mut rx: mpsc::Receiver<UdpOut>,
    rtp_socket: Arc<UdpSocket>,
    rtcp_socket: Arc<UdpSocket>,
) {
    let mut errors_logged = false;
    // Token bucket for catch-up data: when the next backlog byte may leave.
    let mut backlog_clock = tokio::time::Instant::now();
    while let Some(item) = rx.recv().await {
        match item {
            UdpOut::Packet {
                to,
                rtcp,
                data,
                backlog,
            } => {
                if backlog {
                    let now = tokio::time::Instant::now();
                    if backlog_clock > now {
                        tokio::time::sleep_until(backlog_clock).await;
                    }
                    let cost = Duration::from_secs_f64(data.len() as f64 / BACKLOG_BYTES_PER_SEC);
                    backlog_clock = backlog_clock.max(now) + cost;
                }
                let socket = if rtcp { &rtcp_socket } else { &rtp_socket };
                if let Err(e) = socket.send_to(&data, to).await {
                    if !errors_logged {
                        debug!(%to, error = %e, "UDP send failed");
                        errors_logged = true;
                    }
                }
            }
            UdpOut::Close => break,
        }
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
