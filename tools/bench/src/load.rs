//! `sluice-bench load`: a fan-out load client. One process opens N RTSP reader sessions
//! (DESCRIBE/SETUP/PLAY) against one URL, keeps them playing for a measurement window, and
//! reports totals and percentiles as one JSON line.
//!
//! It has to cost far less CPU than the server it measures, so it is built for few
//! syscalls and no per-packet allocation:
//!
//! - Handshakes run as one task per reader on a small runtime (the tool uses a
//!   current-thread runtime by default); the task is a hand-written poll loop over the
//!   reader's sockets, not a `select!` re-creating futures per packet.
//! - Once a reader's PLAY is answered and its first keyframe timed, the reader moves to
//!   the media thread (`load/media.rs`), which reads every playing reader from one edge-triggered poll,
//!   with no task wake-up per read.
//! - The RTSP handshake and keep-alives are driven by the sans-IO
//!   [`ClientSession`], but the TCP byte stream is framed here: `$` interleaved frames are
//!   parsed in place from a per-thread scratch buffer and never reach the session (which
//!   would copy each into a `Bytes` and an event); only whole RTSP messages (responses to
//!   our requests) are handed to [`ClientSession::handle_input`], so the session's own
//!   buffer is always empty and the framing stays ours.
//! - UDP RTP sockets are read with `recvmmsg` (64 datagrams per syscall) into a scratch
//!   buffer, and a socket counts as drained after a short batch instead of paying one
//!   more `EAGAIN` call. RTCP sockets are bound (as a well-behaved client) but not read.
//! - At most `concurrency` handshakes run at once (a semaphore): the connect storm.
//!
//! Per reader it measures the PLAY reply time, the first RTP packet and the first packet
//! beginning a keyframe on the first video track ([`sluice_codec::starts_random_access`]:
//! an H.264 IDR or H.265 IRAP slice, also inside aggregation and fragmentation units, not parameter sets alone),
//! all relative to sending PLAY and ending when the kernel queued the bytes (`load/stamp.rs`);
//! packets and bytes; loss from RTP sequence numbers
//! (RFC 3550: expected − received over the extended sequence range, per track).

mod media;
mod stamp;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_client::authority;
use sluice_codec::{codec_from_encoding, starts_random_access, Codec};
use smallvec::{smallvec, SmallVec};

use sluice_rtsp::client::{ClientConfig, ClientEvent, ClientMode, ClientSession, ClientTransport};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    /// `rtsp://host[:port]/path` to read.
    pub url: String,
    /// Reader sessions to open.
    pub readers: usize,
    /// true: RTP over UDP; false: TCP interleaved.
    pub udp: bool,
    /// Length of the measurement window (starts once every handshake has ended, plus `settle`).
    pub duration: Duration,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Time allowed for one reader's connect + DESCRIBE/SETUP/PLAY (and for each later request).
    pub handshake_timeout: Duration,
    /// Wait between the end of the ramp and the start of the window.
    pub settle: Duration,
    /// First local UDP port handed out (each reader takes 2 per track, consecutively).
    pub udp_port_base: u16,
    /// SO_RCVBUF asked for each RTP socket.
    pub udp_rcvbuf: usize,
    /// Server process to sample (utime+stime, VmRSS) over the window.
    pub server_pid: Option<u32>,
    /// Free-form label copied to the report.
    pub label: Option<String>,
    /// Start the window at this wall-clock time (Unix seconds) instead of after the ramp:
    /// several load processes (one process's fd limit is too low for 10,000 UDP readers)
    /// then measure the same window.
    pub window_start_unix: Option<f64>,
    /// Include every reader's samples in the report (for merging reports of several processes).
    pub samples: bool,
    /// After reading media, a reader waits this long before reading again (only once its
    /// first keyframe has been timed, so the latency figures keep full precision): bursts
    /// are then read in one batch. Zero (the default): read as soon as data arrives —
    /// measured cheaper on loopback, where one fan-out burst makes many readers ready per
    /// `epoll_wait` anyway, while resting readers add timer wake-ups.
    pub rest: Duration,
}

impl LoadOptions {
    /// Defaults for `url`: 1 reader over UDP for 20 s, 64 concurrent handshakes.
    pub(crate) fn new(url: impl Into<String>) -> LoadOptions {
        LoadOptions {
            url: url.into(),
            readers: 1,
            udp: true,
            duration: Duration::from_secs(20),
            concurrency: 64,
            handshake_timeout: Duration::from_secs(30),
            settle: Duration::from_secs(1),
            udp_port_base: 10_000,
            udp_rcvbuf: 1 << 20,
            server_pid: None,
            label: None,
            window_start_unix: None,
            samples: false,
            rest: Duration::ZERO,
        }
    }
}

/// p50/p90/p99/max of a set of samples (milliseconds), over `n` samples.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let r = |x: f64| (x * 10.0).round() / 10.0;
        Percentiles {
            n: v.len(),
            p50: r(at(0.50)),
            p90: r(at(0.90)),
            p99: r(at(0.99)),
            max: r(v[v.len() - 1]),
        }
    }
}

/// The sampled server process over the window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerSample {
    /// Process id.
    pub pid: u32,
    /// utime+stime over the window, in % of one core.
    pub cpu_pct: f64,
    /// VmRSS before the first reader connected.
    pub rss_mib_before: f64,
    /// VmRSS at the end of the window.
    pub rss_mib_after: f64,
    /// (after − before) / connected readers.
    pub rss_kib_per_reader: f64,
    /// cpu_pct / egress Gbit/s.
    pub cpu_pct_per_gbit: f64,
    /// CPU µs per RTP packet received by the readers.
    pub us_per_packet: f64,
}

/// Result of a load run (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadReport {
    /// `--label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// URL read.
    pub url: String,
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// Readers asked for.
    pub readers_requested: usize,
    /// Readers that got a PLAY reply.
    pub readers_connected: usize,
    /// Readers that did not.
    pub readers_failed: usize,
    /// Why they failed, with counts (e.g. "connect: Too many open files (os error 24)").
    pub failures: BTreeMap<String, usize>,
    /// Readers whose session ended before the window closed, by reason.
    pub ended_early: BTreeMap<String, usize>,
    /// Seconds from the first connect until every handshake had ended.
    pub ramp_s: f64,
    /// Measurement window, seconds.
    pub window_s: f64,
    /// RTP packets received over the whole run.
    pub packets: u64,
    /// RTP bytes (headers included) over the whole run.
    pub bytes: u64,
    /// RTP packets received in the window.
    pub window_packets: u64,
    /// Sum over readers, in the window, Mbit/s.
    pub egress_mbit_s: f64,
    /// Per connected reader, in the window: mean Mbit/s.
    pub mbit_s_per_reader: f64,
    /// Per connected reader, in the window: lowest Mbit/s.
    pub mbit_s_per_reader_min: f64,
    /// Lost packets (expected − received, per track, summed).
    pub lost: u64,
    /// lost / expected, %.
    pub loss_pct: f64,
    /// Readers with any loss.
    pub readers_with_loss: usize,
    /// Send PLAY → its reply.
    pub play_reply_ms: Percentiles,
    /// TCP connect start (after waiting for the concurrency semaphore) → PLAY reply.
    pub handshake_ms: Percentiles,
    /// Send PLAY → first RTP packet.
    pub first_packet_ms: Percentiles,
    /// Send PLAY → first packet starting a keyframe on the first video track.
    pub first_keyframe_ms: Percentiles,
    /// Connected readers that saw no keyframe.
    pub no_keyframe: usize,
    /// The load client's own utime+stime over the window, % of one core.
    pub client_cpu_pct: f64,
    /// The load client's VmRSS at the end of the window.
    pub client_rss_mib: f64,
    /// System-wide UDP RcvbufErrors (/proc/net/snmp) during the window: datagrams the
    /// kernel dropped because a receiving socket's buffer was full — loss on the client side.
    pub udp_rcvbuf_errors: u64,
    /// Server process sample, with --server-pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSample>,
    /// The server's ingest → egress latency over the window. Always null for now: the
    /// field stays in the schema (bench/fanout.sh reads it) and is filled again once the
    /// server's metrics endpoint exports its histogram.
    pub egress_latency_us: Option<EgressLatency>,
    /// Window start, Unix seconds.
    pub window_start_unix: f64,
    /// Every reader's samples, with `samples`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Samples>,
}

/// A server's ingest → egress latency histogram summary, microseconds (bucket upper
/// bounds: within a fifth).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct EgressLatency {
    /// Packets measured (per reader sent).
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Raw per-reader samples (connected readers), for merging several processes' reports.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Samples {
    /// Send PLAY → reply, ms.
    pub play_reply_ms: Vec<f64>,
    /// Connect → PLAY reply, ms.
    pub handshake_ms: Vec<f64>,
    /// Send PLAY → first packet, ms.
    pub first_packet_ms: Vec<f64>,
    /// Send PLAY → first keyframe packet, ms.
    pub first_keyframe_ms: Vec<f64>,
    /// Per reader, Mbit/s over the window.
    pub mbit_s: Vec<f64>,
    /// Expected packets (for loss %), all readers.
    pub expected: u64,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The URL is not `rtsp://host[:port]/...`.
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// Name resolution failed.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, io::Error),
    /// The media thread (its poll, waker or thread) could not be created.
    #[error("cannot start the media thread: {0}")]
    Media(io::Error),
}

/// Shared by the readers and the coordinator.
struct Ctx {
    url: String,
    addr: SocketAddr,
    udp: bool,
    handshake_timeout: Duration,
    udp_rcvbuf: usize,
    udp_port_base: u16,
    next_port: AtomicU32,
    permits: Arc<Semaphore>,
    /// Handshakes ended (PLAY answered or failed).
    done: AtomicUsize,
    /// Packets count toward the window.
    window: AtomicBool,
    stopping: AtomicBool,
    stop: Notify,
    /// Pause after each media read, once the first keyframe is timed.
    rest: Duration,
    /// Where playing readers go.
    media: media::Handoff,
}

#[derive(Debug, Default, Clone, Copy)]
struct SeqTrack {
    started: bool,
    base: u32,
    /// Extended highest sequence number.
    max: u32,
    received: u64,
}

impl SeqTrack {
    fn on(&mut self, seq: u16) {
        self.received += 1;
        if !self.started {
            self.started = true;
            self.base = u32::from(seq);
            self.max = u32::from(seq);
            return;
        }
        let d = seq.wrapping_sub(self.max as u16);
        if d != 0 && d < 0x8000 {
            self.max += u32::from(d);
        }
    }

    fn lost(&self) -> u64 {
        if !self.started {
            return 0;
        }
        let expected = u64::from(self.max - self.base) + 1;
        expected.saturating_sub(self.received)
    }

    fn expected(&self) -> u64 {
        if self.started {
            u64::from(self.max - self.base) + 1
        } else {
            0
        }
    }
}

/// One reader's results.
#[derive(Debug, Default)]
struct ReaderStats {
    /// Handshake failure.
    error: Option<String>,
    /// Session ended before the window closed.
    ended: Option<String>,
    handshake_ms: Option<f64>,
    play_reply_ms: Option<f64>,
    first_packet_ms: Option<f64>,
    first_keyframe_ms: Option<f64>,
    packets: u64,
    bytes: u64,
    window_packets: u64,
    window_bytes: u64,
    /// Per track, inline: a reader's counters are read on every packet, and a separate
    /// allocation was a cache miss of its own (perf).
    tracks: SmallVec<[SeqTrack; 4]>,
}

/// Per-reader receive state.
struct Rx {
    stats: ReaderStats,
    play_sent: Option<Instant>,
    /// Track whose keyframes are looked for, and its codec.
    key: Option<(usize, Codec)>,
    /// When the bytes being handled arrived (kernel stamp), while the handshake task reads.
    at: Option<Instant>,
    /// Interleaved channel → (track, is_rtcp).
    /// Inline, for the same reason as [`ReaderStats::tracks`].
    channels: SmallVec<[(u8, u8, bool); 8]>,
}

impl Rx {
    /// Bytes to copy of each datagram: whole ones until the first keyframe has been found
    /// (it may sit deep in a STAP), then headers only.
    fn udp_take(&self) -> usize {
        if self.stats.first_keyframe_ms.is_some() {
            HEAD_ONLY
        } else {
            SLOT
        }
    }

    /// Counts the datagrams of one [`recv_batch`] of track `track`'s RTP socket (`lens`: their
    /// full lengths, of which `take` bytes each were copied into `buf`), timing them from
    /// `stamps` when given.
    fn on_datagrams(
        &mut self,
        track: usize,
        buf: &[u8],
        lens: &[usize],
        take: usize,
        stamps: Option<&[Option<Instant>; BATCH]>,
        window: bool,
    ) {
        for (k, &len) in lens.iter().enumerate() {
            if let Some(at) = stamps {
                self.at = at[k];
            }
            let got = len.min(take);
            self.on_rtp(track, &buf[k * SLOT..k * SLOT + got], len, window);
        }
    }

    #[inline]
    /// `pkt` is the packet or (UDP, after the first keyframe) its first bytes; `len` its
    /// full length.
    fn on_rtp(&mut self, track: usize, pkt: &[u8], len: usize, window: bool) {
        let Some(sent) = self.play_sent else {
            return; // stray datagram before PLAY
        };
        if pkt.len() < 12 || pkt[0] >> 6 != 2 {
            return;
        }
        let s = &mut self.stats;
        s.packets += 1;
        s.bytes += len as u64;
        if window {
            s.window_packets += 1;
            s.window_bytes += len as u64;
        }
        if let Some(t) = s.tracks.get_mut(track) {
            t.on(u16::from_be_bytes([pkt[2], pkt[3]]));
        }
        if s.first_packet_ms.is_none() {
            s.first_packet_ms = Some(ms(self.at.unwrap_or_else(Instant::now) - sent));
            if self.key.is_none() {
                s.first_keyframe_ms = s.first_packet_ms;
            }
        }
        if s.first_keyframe_ms.is_none() {
            if let Some((kt, codec)) = self.key {
                if kt == track && rtp_payload(pkt).is_some_and(|p| starts_random_access(codec, p)) {
                    s.first_keyframe_ms = Some(ms(self.at.unwrap_or_else(Instant::now) - sent));
                }
            }
        }
    }

    fn on_frame(&mut self, channel: u8, pkt: &[u8], window: bool) {
        if let Some(&(_, track, rtcp)) = self.channels.iter().find(|c| c.0 == channel) {
            if !rtcp {
                self.on_rtp(usize::from(track), pkt, pkt.len(), window);
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The payload of an RTP packet (after CSRCs and header extension, before padding).
fn rtp_payload(pkt: &[u8]) -> Option<&[u8]> {
    let mut off = 12 + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(off + 2..off + 4)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*pkt.last()?))?;
    }
    pkt.get(off..end)
}

/// Codec per SDP media section (track order), from each section's first `a=rtpmap`.
fn sdp_codecs(sdp: &[u8]) -> Vec<Option<Codec>> {
    let text = String::from_utf8_lossy(sdp);
    let mut out: Vec<Option<Codec>> = Vec::new();
    let mut have = false;
    for line in text.lines() {
        if line.starts_with("m=") {
            out.push(None);
            have = false;
        } else if let (Some(rest), false, Some(last)) =
            (line.strip_prefix("a=rtpmap:"), have, out.last_mut())
        {
            have = true;
            let name = rest
                .split_whitespace()
                .nth(1)
                .and_then(|e| e.split('/').next())
                .unwrap_or("");
            *last = codec_from_encoding(name);
        }
    }
    out
}

fn is_video(c: Codec) -> bool {
    matches!(
        c,
        Codec::H264 | Codec::H265 | Codec::Vp8 | Codec::Vp9 | Codec::Av1
    )
}

// ----- per-thread scratch buffers -----

/// recvmmsg batch size and slot size.
pub(crate) const BATCH: usize = 64;
const SLOT: usize = 2048;
/// TCP read size (plus room for a carried partial frame in front).
pub(crate) const TCP_READ: usize = 128 * 1024;
const MAX_FRAME: usize = 4 + 65535;
/// Largest RTSP message head accepted from the server.
const MAX_HEAD: usize = 64 * 1024;
/// A UDP read buffer: BATCH slots of SLOT bytes.
pub(crate) const UDP_BUF: usize = BATCH * SLOT;
/// A TCP read buffer: a read, with room for a carried partial frame or message in front.
const TCP_BUF: usize = MAX_FRAME + MAX_HEAD + TCP_READ;

/// A thread's read buffers: one `recvmmsg` batch of datagrams and their lengths, and a
/// TCP read with its carry in front.
struct ReadBufs {
    udp: Vec<u8>,
    lens: [usize; BATCH],
    tcp: Vec<u8>,
}

impl ReadBufs {
    fn new() -> ReadBufs {
        ReadBufs {
            udp: vec![0; UDP_BUF],
            lens: [0; BATCH],
            tcp: vec![0; TCP_BUF],
        }
    }
}

/// The handshake tasks' read buffers, and the stamps their reads ask for (the media
/// thread has buffers of its own and takes no stamps).
struct Scratch {
    bufs: ReadBufs,
    stamps: Box<stamp::Batch>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        bufs: ReadBufs::new(),
        stamps: Box::new(stamp::Batch::new()),
    });
}

/// Bytes of each datagram copied once the reader's first keyframe has been seen: the
/// RTP header and then some. With MSG_TRUNC the kernel still reports each datagram's
/// full length, so counting stays exact while the payload copy — the largest part of
/// the receive cost — is skipped.
pub(crate) const HEAD_ONLY: usize = 64;

/// One `recvmmsg` into `buf` (BATCH slots of SLOT bytes, of which the first `take` are
/// filled); full datagram lengths into `lens`, and with `stamps` each datagram's arrival.
pub(crate) fn recv_batch(
    fd: i32,
    buf: &mut [u8],
    take: usize,
    lens: &mut [usize; BATCH],
    mut stamps: Option<&mut stamp::Batch>,
) -> io::Result<usize> {
    // SAFETY: zeroed iovec/mmsghdr are valid; every pointer handed to the kernel points
    // into `buf` (BATCH * SLOT bytes) or the local arrays, all alive for the call.
    unsafe {
        let mut iov: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut hdr: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        for i in 0..BATCH {
            iov[i].iov_base = buf.as_mut_ptr().add(i * SLOT).cast();
            iov[i].iov_len = take.min(SLOT);
            hdr[i].msg_hdr.msg_iov = &mut iov[i];
            hdr[i].msg_hdr.msg_iovlen = 1;
            if let Some(st) = stamps.as_deref_mut() {
                stamp::attach(&mut hdr[i].msg_hdr, &mut st.ctl[i]);
            }
        }
        let n = libc::recvmmsg(
            fd,
            hdr.as_mut_ptr(),
            BATCH as _,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            lens[i] = hdr[i].msg_len as usize;
            if let Some(st) = stamps.as_deref_mut() {
                st.at[i] = stamp::arrival(&hdr[i].msg_hdr);
            }
        }
        Ok(n)
    }
}

// ----- one reader -----

enum Wake {
    Tcp,
    Udp(usize),
    Write,
    Timer,
    Stop,
}

/// What ended a reader's loop.
enum End {
    /// Handshake failed or the session ended.
    Failed(String),
    /// TEARDOWN answered (or the session closed) after stop.
    Closed,
    /// PLAY answered: the reader goes to the media thread with this session.
    Playing(Box<ClientSession>),
}

struct Reader {
    ctx: Arc<Ctx>,
    rx: Rx,
    tcp: Option<AsyncFd<std::net::TcpStream>>,
    /// RTP sockets, per track: read here until the first keyframe, then by the media thread.
    rtp: Vec<AsyncFd<std::net::UdpSocket>>,
    /// RTCP sockets, per track: bound, never read.
    rtcp: Vec<std::net::UdpSocket>,
    /// Partial frame/message carried to the next read.
    carry: Vec<u8>,
    /// Bytes to write to the RTSP connection.
    out: Vec<u8>,
    playing: bool,
    stopping: bool,
    /// The handshake has ended (PLAY answered or failed): counted in `Ctx::done`.
    handshake_ended: bool,
    /// Held from connect until the handshake ends.
    permit: Option<OwnedSemaphorePermit>,
}

/// Binds RTP/RTCP pairs for `tracks` tracks at consecutive ports from the shared counter.
fn bind_udp(
    ctx: &Ctx,
    tracks: usize,
) -> io::Result<(u16, Vec<std::net::UdpSocket>, Vec<std::net::UdpSocket>)> {
    let ip: IpAddr = if ctx.addr.is_ipv4() {
        if ctx.addr.ip().is_loopback() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        }
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let span = 2 * tracks.max(1) as u32;
    let mut last_err = io::Error::other("no port");
    for _ in 0..64 {
        let mut base = ctx.next_port.fetch_add(span, Ordering::Relaxed);
        if base + span > 65_534 {
            // Wrap around (ports of readers that ended may be free again).
            let start = u32::from(ctx.udp_port_base);
            ctx.next_port.store(start + span, Ordering::Relaxed);
            base = start;
        }
        let mut rtp = Vec::new();
        let mut rtcp = Vec::new();
        let mut ok = true;
        for t in 0..tracks {
            let p = (base + 2 * t as u32) as u16;
            let pair = std::net::UdpSocket::bind(SocketAddr::new(ip, p)).and_then(|a| {
                std::net::UdpSocket::bind(SocketAddr::new(ip, p + 1)).map(|b| (a, b))
            });
            match pair {
                Ok((a, b)) => {
                    a.set_nonblocking(true)?;
                    let _ = stamp::set_stamps(a.as_raw_fd(), true);
                    let _ = socket2::SockRef::from(&a).set_recv_buffer_size(ctx.udp_rcvbuf);
                    rtp.push(a);
                    rtcp.push(b);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last_err = e;
                    ok = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if ok {
            return Ok((base as u16, rtp, rtcp));
        }
    }
    Err(last_err)
}

impl Reader {
    /// Runs the reader until its session ends or, after stop, TEARDOWN is answered.
    async fn run(&mut self) -> End {
        let ctx = self.ctx.clone();
        let mut stop = pin!(ctx.stop.notified());
        self.permit = tokio::select! {
            p = ctx.permits.clone().acquire_owned() => p.ok(),
            _ = stop.as_mut() => {
                self.end_handshake();
                return End::Failed("stopped before connecting".into());
            }
        };
        let started = Instant::now();
        let r = self.handshake_and_stream(started, stop.as_mut()).await;
        self.end_handshake();
        r
    }

    /// Hands the playing reader to the media thread and waits for its counters, which
    /// come back when it ends (TEARDOWN answered after stop, or the session failed).
    async fn hand_off(self, session: ClientSession) -> ReaderStats {
        let Reader {
            ctx,
            rx,
            tcp,
            rtp,
            rtcp,
            carry,
            out,
            ..
        } = self;
        let Some(tcp) = tcp else {
            return ReaderStats {
                error: Some("handed over without a connection".into()),
                ..rx.stats
            };
        };
        // The media thread times nothing: no more stamps.
        let _ = stamp::set_stamps(tcp.get_ref().as_raw_fd(), false);
        for s in &rtp {
            let _ = stamp::set_stamps(s.get_ref().as_raw_fd(), false);
        }
        let (done, stats) = tokio::sync::oneshot::channel();
        let playing = media::Playing {
            session,
            rx,
            // Leaves tokio's reactor: the media thread registers it with its own poll.
            tcp: tcp.into_inner(),
            rtp: rtp.into_iter().map(AsyncFd::into_inner).collect(),
            rtcp,
            carry,
            out,
            done,
        };
        match ctx.media.send(playing) {
            Ok(()) => stats.await.unwrap_or_else(|_| ReaderStats {
                error: Some("media thread ended without the reader's counters".into()),
                ..ReaderStats::default()
            }),
            // The thread has ended (every reader was collected): nothing more to count.
            Err(p) => p.rx.stats,
        }
    }

    /// Releases the connect-storm permit and counts the handshake as ended (once).
    fn end_handshake(&mut self) {
        self.permit = None;
        if !self.handshake_ended {
            self.handshake_ended = true;
            self.ctx.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn handshake_and_stream(
        &mut self,
        started: Instant,
        mut stop: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> End {
        let ctx = self.ctx.clone();
        let tcp = match tokio::time::timeout(
            ctx.handshake_timeout,
            tokio::net::TcpStream::connect(ctx.addr),
        )
        .await
        {
            Err(_) => return End::Failed("connect: timed out".into()),
            Ok(Err(e)) => return End::Failed(format!("connect: {e}")),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        // Without stamps (an old kernel) the times fall back to when the bytes are read.
        let _ = stamp::set_stamps(tcp.as_raw_fd(), true);
        let tcp = match tcp.into_std().and_then(register) {
            Ok(t) => t,
            Err(e) => return End::Failed(format!("register socket: {e}")),
        };
        self.tcp = Some(tcp);
        // UDP: the track count comes from the coordinator's DESCRIBE.
        let transport = if ctx.udp {
            let tracks = self.rx.stats.tracks.len();
            match bind_udp(&ctx, tracks) {
                Ok((base, rtp, rtcp)) => {
                    for s in rtp {
                        match register(s) {
                            Ok(a) => self.rtp.push(a),
                            Err(e) => return End::Failed(format!("udp register: {e}")),
                        }
                    }
                    self.rtcp = rtcp;
                    ClientTransport::Udp { rtp_port: base }
                }
                Err(e) => return End::Failed(format!("udp bind: {e}")),
            }
        } else {
            ClientTransport::Tcp
        };
        let mut session = match ClientSession::new(
            ClientConfig {
                url: ctx.url.clone(),
                credentials: None,
                transport,
                user_agent: concat!("Sluice-bench/", env!("CARGO_PKG_VERSION")).to_owned(),
                mode: ClientMode::Play,
            },
            Instant::now(),
        ) {
            Ok(s) => s,
            Err(e) => return End::Failed(e.to_string()),
        };
        session.set_request_timeout(ctx.handshake_timeout);

        let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(86_400)));
        let mut timer_at: Option<Instant> = None;
        let mut write_blocked = false;
        loop {
            // Requests the session wants sent.
            while let Some(b) = session.poll_transmit() {
                if b.starts_with(b"PLAY ") {
                    self.rx.play_sent = Some(Instant::now());
                }
                self.out.extend_from_slice(&b);
            }
            if !self.out.is_empty() && !write_blocked {
                let tcp = self.tcp.as_ref().expect("connected");
                match tcp.get_ref().write(&self.out) {
                    Ok(n) => {
                        self.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_blocked = true,
                    Err(e) => return End::Failed(format!("write: {e}")),
                }
                if !self.out.is_empty() {
                    write_blocked = true;
                }
            }
            // Session events.
            while let Some(ev) = session.poll_event() {
                match ev {
                    ClientEvent::Described { sdp, .. } => {
                        let codecs = sdp_codecs(&sdp);
                        if !ctx.udp {
                            self.rx.stats.tracks = smallvec![SeqTrack::default(); codecs.len()];
                        }
                        self.rx.key = codecs
                            .iter()
                            .enumerate()
                            .find_map(|(i, c)| c.filter(|&c| is_video(c)).map(|c| (i, c)));
                    }
                    ClientEvent::TrackSetup {
                        track, transport, ..
                    } => {
                        // Tracks past 255 are not counted (no stream has them).
                        if let (Some((a, b)), Ok(track)) =
                            (transport.interleaved, u8::try_from(track))
                        {
                            self.rx.channels.push((a, track, false));
                            self.rx.channels.push((b, track, true));
                        }
                    }
                    ClientEvent::Playing { .. } => {
                        let now = self.rx.at.unwrap_or_else(Instant::now);
                        if let Some(sent) = self.rx.play_sent {
                            self.rx.stats.play_reply_ms = Some(ms(now - sent));
                        }
                        self.rx.stats.handshake_ms = Some(ms(now - started));
                        self.playing = true;
                        self.end_handshake();
                    }
                    ClientEvent::Rtp { track, data } => {
                        // Not expected (frames are parsed here), but count it if it comes.
                        let w = ctx.window.load(Ordering::Relaxed);
                        self.rx.on_rtp(track, &data, data.len(), w);
                    }
                    ClientEvent::Rtcp { .. } => {}
                    ClientEvent::Failed(e) => {
                        return End::Failed(e.to_string());
                    }
                    ClientEvent::Closed => {
                        return if self.stopping {
                            End::Closed
                        } else {
                            End::Failed("session closed".into())
                        };
                    }
                }
            }
            // Playing, and the first keyframe timed: the rest of the reader's media goes to
            // the media thread. Until then this task reads it, as it read the PLAY reply, so
            // that both times are taken alike (a keyframe usually comes with the reply).
            if self.playing && !self.stopping && self.rx.stats.first_keyframe_ms.is_some() {
                return End::Playing(Box::new(session));
            }
            // Timer.
            let want = session.poll_timeout();
            if want != timer_at {
                if let Some(t) = want {
                    sleep.as_mut().reset(t.into());
                }
                timer_at = want;
            }
            // Wait for something to do.
            let wake = {
                let tcp = self.tcp.as_ref().expect("connected");
                let rtp = &self.rtp;
                let stopping = self.stopping;
                let mut sleep = sleep.as_mut();
                let mut stop = stop.as_mut();
                std::future::poll_fn(move |cx| {
                    if !stopping && stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Stop);
                    }
                    if let Poll::Ready(r) = tcp.poll_read_ready(cx) {
                        drop(r);
                        return Poll::Ready(Wake::Tcp);
                    }
                    for (i, s) in rtp.iter().enumerate() {
                        if let Poll::Ready(r) = s.poll_read_ready(cx) {
                            drop(r);
                            return Poll::Ready(Wake::Udp(i));
                        }
                    }
                    if write_blocked {
                        if let Poll::Ready(Ok(mut g)) = tcp.poll_write_ready(cx) {
                            g.clear_ready();
                            return Poll::Ready(Wake::Write);
                        }
                    }
                    if timer_at.is_some() && sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                    Poll::Pending
                })
                .await
            };
            match wake {
                Wake::Stop => {
                    self.stopping = true;
                    if !self.playing && self.rx.play_sent.is_none() {
                        return End::Failed("stopped during handshake".into());
                    }
                    // The TEARDOWN answer (or its 2 s timeout) ends the loop with Closed.
                    session.set_request_timeout(Duration::from_secs(2));
                    session.handle_timeout(Instant::now()); // refreshes the session's clock
                    session.close();
                }
                Wake::Write => write_blocked = false,
                Wake::Udp(i) => {
                    if let Err(e) = self.drain_udp(i) {
                        return End::Failed(format!("udp recv: {e}"));
                    }
                }
                Wake::Timer => {
                    timer_at = None;
                    session.handle_timeout(Instant::now());
                }
                Wake::Tcp => match self.drain_tcp(&mut session) {
                    Ok(true) => {}
                    Ok(false) => {
                        return if self.stopping {
                            End::Closed
                        } else {
                            End::Failed("connection closed by server".into())
                        }
                    }
                    Err(e) => return End::Failed(e),
                },
            }
        }
    }

    /// Reads every queued datagram of track `i`'s RTP socket, BATCH per syscall.
    fn drain_udp(&mut self, i: usize) -> io::Result<()> {
        let window = self.ctx.window.load(Ordering::Relaxed);
        let sock = &self.rtp[i];
        let fd = sock.get_ref().as_raw_fd();
        let rx = &mut self.rx;
        let take = rx.udp_take();
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            // Bounded: at most 16 batches per wake-up, then back to the poll loop.
            for _ in 0..16 {
                let Some(mut guard) = ready_now(sock) else {
                    return Ok(());
                };
                let (b, stamps) = (&mut s.bufs, Some(&mut *s.stamps));
                match guard.try_io(|_| recv_batch(fd, &mut b.udp, take, &mut b.lens, stamps)) {
                    Ok(Ok(n)) => {
                        let stamps = Some(&s.stamps.at);
                        rx.on_datagrams(i, &b.udp, &b.lens[..n], take, stamps, window);
                        if n < BATCH {
                            // Drained: no need for one more call to learn EAGAIN.
                            guard.clear_ready();
                            return Ok(());
                        }
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => return Ok(()),
                }
            }
            Ok(())
        })
    }

    /// Reads the RTSP connection: `$` frames are counted here, RTSP messages go to the
    /// session. Ok(false) at EOF.
    fn drain_tcp(&mut self, session: &mut ClientSession) -> Result<bool, String> {
        let window = self.ctx.window.load(Ordering::Relaxed);
        let tcp = self.tcp.as_ref().expect("connected");
        let rx = &mut self.rx;
        let carry = &mut self.carry;
        SCRATCH.with(|s| {
            let buf = &mut s.borrow_mut().bufs.tcp;
            for _ in 0..16 {
                let Some(mut guard) = ready_now(tcp) else {
                    return Ok(true);
                };
                let r = read_tcp_once(buf, carry, rx, session, window, |b| {
                    let r =
                        guard.try_io(|inner| stamp::recv_stamped(inner.get_ref().as_raw_fd(), b));
                    r.unwrap_or_else(|_would_block| Err(io::ErrorKind::WouldBlock.into()))
                });
                match r {
                    Ok(TcpRead::Eof) => return Ok(false),
                    Ok(TcpRead::Read { more: true, .. }) => {}
                    Ok(TcpRead::Read { more: false, .. }) => {
                        guard.clear_ready();
                        return Ok(true);
                    }
                    Err(TcpReadError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(true)
                    }
                    Err(TcpReadError::Io(e)) => return Err(format!("read: {e}")),
                    Err(TcpReadError::Framing(e)) => return Err(e),
                }
            }
            Ok(true)
        })
    }
}

/// Registers a std socket with the reactor.
fn register<T: AsRawFd>(sock: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `sock` is a std socket that owns its fd; the fd stays open and the same until
    // the AsyncFd (which owns `sock`) is dropped.
    unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)
}

/// The socket's read-readiness guard if it is ready now (no waiting).
fn ready_now<T: AsRawFd>(fd: &AsyncFd<T>) -> Option<tokio::io::unix::AsyncFdReadyGuard<'_, T>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match fd.poll_read_ready(&mut cx) {
        Poll::Ready(Ok(g)) => Some(g),
        _ => None,
    }
}

/// What one [`read_tcp_once`] did.
enum TcpRead {
    /// The server closed the connection.
    Eof,
    /// Bytes were read and parsed.
    Read {
        /// The read filled its room: more may be queued.
        more: bool,
        /// An RTSP message went to the session: its events and requests are due.
        messages: bool,
    },
}

/// Why a [`read_tcp_once`] failed.
enum TcpReadError {
    /// The read's own error (`WouldBlock` included).
    Io(io::Error),
    /// The byte stream is not RTSP framing.
    Framing(String),
}

/// One read of a reader's RTSP connection into `buf`, behind the partial frame or message
/// carried from the read before (only that is copied, never the whole read), then the
/// parse: `$` frames are counted, whole RTSP messages go to the session, and what is left
/// becomes the new carry. `recv` reads into the slice it is given and returns the byte
/// count and the bytes' kernel stamp, if any.
fn read_tcp_once(
    buf: &mut [u8],
    carry: &mut Vec<u8>,
    rx: &mut Rx,
    session: &mut ClientSession,
    window: bool,
    recv: impl FnOnce(&mut [u8]) -> io::Result<(usize, Option<Instant>)>,
) -> Result<TcpRead, TcpReadError> {
    let c = carry.len();
    buf[..c].copy_from_slice(carry);
    let room = TCP_READ.min(buf.len() - c);
    let (n, at) = recv(&mut buf[c..c + room]).map_err(TcpReadError::Io)?;
    if n == 0 {
        return Ok(TcpRead::Eof);
    }
    rx.at = at;
    let data = &buf[..c + n];
    let (used, messages) =
        parse_stream(data, rx, session, window).map_err(TcpReadError::Framing)?;
    carry.clear();
    carry.extend_from_slice(&data[used..]);
    Ok(TcpRead::Read {
        more: n == room,
        messages,
    })
}

/// Parses `$` frames and RTSP messages from `data`; returns the bytes consumed (the rest
/// is an incomplete frame or message) and whether a message went to the session.
fn parse_stream(
    data: &[u8],
    rx: &mut Rx,
    session: &mut ClientSession,
    window: bool,
) -> Result<(usize, bool), String> {
    let mut pos = 0;
    let mut messages = false;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest[0] == b'$' {
            if rest.len() < 4 {
                break;
            }
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            if rest.len() < 4 + len {
                break;
            }
            rx.on_frame(rest[1], &rest[4..4 + len], window);
            pos += 4 + len;
        } else {
            let Some(head) = find_head_end(rest) else {
                if rest.len() > MAX_HEAD {
                    return Err("RTSP framing lost (no message head in 64 KiB)".into());
                }
                break;
            };
            let total = head + content_length(&rest[..head]);
            if rest.len() < total {
                if total > MAX_HEAD {
                    return Err("RTSP message too large".into());
                }
                break;
            }
            if let Err(e) = session.handle_input(&rest[..total], Instant::now()) {
                return Err(e.to_string());
            }
            messages = true;
            pos += total;
        }
    }
    Ok((pos, messages))
}

/// Length of the message head including the blank line.
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

// ----- process sampling (/proc) -----

/// utime+stime (seconds) and VmRSS (MiB) of a process.
pub(crate) fn proc_sample(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Some((ticks as f64 / hz, rss_kib / 1024.0))
}

fn udp_rcvbuf_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    if udp.len() < 2 {
        return 0;
    }
    let names = udp[0].split_whitespace();
    let values = udp[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

// ----- the run -----

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// DESCRIBE once (one short session) to learn the track count.
async fn describe(url: &str, addr: SocketAddr, timeout: Duration) -> Result<usize, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut session = ClientSession::new(
            ClientConfig {
                url: url.to_owned(),
                credentials: None,
                transport: ClientTransport::Tcp,
                user_agent: concat!("Sluice-bench/", env!("CARGO_PKG_VERSION")).to_owned(),
                mode: ClientMode::Play,
            },
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(b) = session.poll_transmit() {
                tcp.write_all(&b).await.map_err(|e| e.to_string())?;
            }
            while let Some(ev) = session.poll_event() {
                match ev {
                    ClientEvent::Described { controls, .. } => return Ok(controls.len()),
                    ClientEvent::Failed(e) => return Err(e.to_string()),
                    ClientEvent::Closed => return Err("closed".into()),
                    _ => {}
                }
            }
            let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed by server".into());
            }
            session
                .handle_input(&buf[..n], Instant::now())
                .map_err(|e| e.to_string())?;
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| "DESCRIBE timed out".to_string())?
}

/// Runs the load and returns its report. `progress` gets human-readable lines (stderr).
pub(crate) async fn run(
    opts: LoadOptions,
    progress: impl Fn(&str),
) -> Result<LoadReport, LoadError> {
    let auth = authority(&opts.url).ok_or_else(|| LoadError::InvalidUrl(opts.url.clone()))?;
    let addr = tokio::net::lookup_host(&auth)
        .await
        .map_err(|e| LoadError::Resolve(auth.clone(), e))?
        .next()
        .ok_or_else(|| LoadError::Resolve(auth.clone(), io::Error::other("no address")))?;
    let tracks = match describe(&opts.url, addr, opts.handshake_timeout).await {
        Ok(n) => n,
        Err(e) => {
            progress(&format!("DESCRIBE probe failed: {e}"));
            0
        }
    };
    let (media, media_thread) = media::create().map_err(LoadError::Media)?;
    let ctx = Arc::new(Ctx {
        url: opts.url.clone(),
        addr,
        udp: opts.udp,
        handshake_timeout: opts.handshake_timeout,
        udp_rcvbuf: opts.udp_rcvbuf,
        udp_port_base: opts.udp_port_base,
        next_port: AtomicU32::new(u32::from(opts.udp_port_base)),
        permits: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        done: AtomicUsize::new(0),
        window: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        stop: Notify::new(),
        rest: opts.rest,
        media,
    });
    let media_thread = media_thread.spawn(ctx.clone()).map_err(LoadError::Media)?;
    let server_pid = opts.server_pid.map(|p| p.to_string());
    let server_before = server_pid.as_deref().and_then(proc_sample);

    // Until the handshakes are over (see `stamp`). Without it, times are taken at the read.
    let mut stamps_on = match stamp::Keeper::new(Duration::from_millis(500)) {
        Ok(k) => Some(k),
        Err(e) => {
            progress(&format!(
                "no kernel receive stamps ({e}): times are taken at the read"
            ));
            None
        }
    };

    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(opts.readers);
    for _ in 0..opts.readers {
        let ctx = ctx.clone();
        handles.push(tokio::spawn(async move {
            let mut r = Reader {
                ctx: ctx.clone(),
                rx: Rx {
                    stats: ReaderStats {
                        tracks: smallvec![SeqTrack::default(); tracks],
                        ..ReaderStats::default()
                    },
                    play_sent: None,
                    key: None,
                    at: None,
                    channels: SmallVec::new(),
                },
                tcp: None,
                rtp: Vec::new(),
                rtcp: Vec::new(),
                carry: Vec::new(),
                out: Vec::new(),
                playing: false,
                stopping: false,
                handshake_ended: false,
                permit: None,
            };
            // After stop, TEARDOWN gets 3 s; the reader is then dropped (sockets closed).
            let end = {
                let fut = r.run();
                let stopped = async {
                    let n = ctx.stop.notified();
                    if !ctx.stopping.load(Ordering::Relaxed) {
                        n.await;
                    }
                    tokio::time::sleep(Duration::from_secs(3)).await;
                };
                tokio::select! {
                    e = fut => Some(e),
                    _ = stopped => None,
                }
            };
            r.permit = None;
            if let Some(End::Playing(session)) = end {
                return r.hand_off(*session).await;
            }
            let mut stats = std::mem::take(&mut r.rx.stats);
            match end {
                Some(End::Failed(reason)) if !r.playing => stats.error = Some(reason),
                Some(End::Failed(reason)) if !r.stopping => stats.ended = Some(reason),
                _ => {}
            }
            stats
        }));
    }

    // Ramp: until every handshake has ended (bounded by the handshake timeout).
    let ramp_limit =
        opts.handshake_timeout * 2 + Duration::from_secs(opts.readers as u64 / 100 + 5);
    let mut last_report = Instant::now();
    while ctx.done.load(Ordering::Relaxed) < opts.readers && t0.elapsed() < ramp_limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "ramp: {}/{} handshakes ended after {:.1} s",
                ctx.done.load(Ordering::Relaxed),
                opts.readers,
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    let ramp = t0.elapsed();
    stamps_on.take();
    match opts.window_start_unix {
        Some(at) => {
            let now = unix_now();
            if at > now {
                tokio::time::sleep(Duration::from_secs_f64(at - now)).await;
            } else {
                progress(&format!(
                    "window start was {:.1} s before the ramp ended",
                    now - at
                ));
            }
        }
        None => tokio::time::sleep(opts.settle).await,
    }

    // The window.
    let rcvbuf0 = udp_rcvbuf_errors();
    let server0 = server_pid.as_deref().and_then(proc_sample);
    let client0 = proc_sample("self");
    let w0 = Instant::now();
    let w0_unix = unix_now();
    ctx.window.store(true, Ordering::Relaxed);
    progress(&format!(
        "window: {} s with {}/{} handshakes ended (ramp {:.1} s)",
        opts.duration.as_secs_f64(),
        ctx.done.load(Ordering::Relaxed),
        opts.readers,
        ramp.as_secs_f64()
    ));
    tokio::time::sleep(opts.duration).await;
    ctx.window.store(false, Ordering::Relaxed);
    let window = w0.elapsed().as_secs_f64();
    let server1 = server_pid.as_deref().and_then(proc_sample);
    let client1 = proc_sample("self");
    let rcvbuf1 = udp_rcvbuf_errors();

    // Stop: TEARDOWN everywhere, collect.
    ctx.stopping.store(true, Ordering::Relaxed);
    ctx.stop.notify_waiters();
    ctx.media.wake();
    let mut all = Vec::with_capacity(handles.len());
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(s)) => all.push(s),
            Ok(Err(e)) => all.push(ReaderStats {
                error: Some(format!("task: {e}")),
                ..ReaderStats::default()
            }),
            Err(_) => all.push(ReaderStats {
                error: Some("did not stop".into()),
                ..ReaderStats::default()
            }),
        }
    }

    ctx.media.shut_down();
    if media_thread.join().is_err() {
        tracing::error!("bench media thread panicked");
    }

    // Report.
    let mut failures = BTreeMap::new();
    let mut ended_early = BTreeMap::new();
    let (mut packets, mut bytes, mut wpackets, mut wbytes, mut lost, mut expected) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut rates = Vec::new();
    let (mut play, mut hs, mut first, mut key) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut no_keyframe = 0;
    let mut readers_with_loss = 0;
    for s in &all {
        packets += s.packets;
        bytes += s.bytes;
        wpackets += s.window_packets;
        wbytes += s.window_bytes;
        let l: u64 = s.tracks.iter().map(SeqTrack::lost).sum();
        lost += l;
        expected += s.tracks.iter().map(SeqTrack::expected).sum::<u64>();
        if l > 0 {
            readers_with_loss += 1;
        }
        if let Some(e) = &s.error {
            *failures.entry(e.clone()).or_insert(0) += 1;
            continue;
        }
        if let Some(e) = &s.ended {
            *ended_early.entry(e.clone()).or_insert(0) += 1;
        }
        rates.push(s.window_bytes as f64 * 8.0 / window / 1e6);
        play.extend(s.play_reply_ms);
        hs.extend(s.handshake_ms);
        first.extend(s.first_packet_ms);
        match s.first_keyframe_ms {
            Some(k) => key.push(k),
            None => no_keyframe += 1,
        }
    }
    let connected = rates.len();
    let samples = opts.samples.then(|| Samples {
        play_reply_ms: play.clone(),
        handshake_ms: hs.clone(),
        first_packet_ms: first.clone(),
        first_keyframe_ms: key.clone(),
        mbit_s: rates.clone(),
        expected,
    });
    let egress = wbytes as f64 * 8.0 / window / 1e6;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let server = match (&server_pid, server_before, server0, server1) {
        (Some(pid), Some(b), Some(a0), Some(a1)) => {
            let cpu_s = a1.0 - a0.0;
            let cpu_pct = cpu_s / window * 100.0;
            Some(ServerSample {
                pid: pid.parse().unwrap_or(0),
                cpu_pct: r2(cpu_pct),
                rss_mib_before: r2(b.1),
                rss_mib_after: r2(a1.1),
                rss_kib_per_reader: r2((a1.1 - b.1) * 1024.0 / connected.max(1) as f64),
                cpu_pct_per_gbit: if egress > 0.0 {
                    r2(cpu_pct / (egress / 1000.0))
                } else {
                    0.0
                },
                us_per_packet: if wpackets > 0 {
                    r2(cpu_s * 1e6 / wpackets as f64)
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let (client_cpu_pct, client_rss_mib) = match (client0, client1) {
        (Some(a), Some(b)) => (r2((b.0 - a.0) / window * 100.0), r2(b.1)),
        _ => (0.0, 0.0),
    };
    Ok(LoadReport {
        label: opts.label,
        url: opts.url,
        transport: if opts.udp { "udp" } else { "tcp" },
        readers_requested: opts.readers,
        readers_connected: connected,
        readers_failed: opts.readers - connected,
        failures,
        ended_early,
        ramp_s: r2(ramp.as_secs_f64()),
        window_s: r2(window),
        packets,
        bytes,
        window_packets: wpackets,
        egress_mbit_s: r2(egress),
        mbit_s_per_reader: r2(if connected > 0 {
            rates.iter().sum::<f64>() / connected as f64
        } else {
            0.0
        }),
        mbit_s_per_reader_min: r2(rates.iter().copied().reduce(f64::min).unwrap_or(0.0)),
        lost,
        loss_pct: if expected > 0 {
            (lost as f64 / expected as f64 * 100.0 * 1000.0).round() / 1000.0
        } else {
            0.0
        },
        readers_with_loss,
        play_reply_ms: Percentiles::of(play),
        handshake_ms: Percentiles::of(hs),
        first_packet_ms: Percentiles::of(first),
        first_keyframe_ms: Percentiles::of(key),
        no_keyframe,
        client_cpu_pct,
        client_rss_mib,
        udp_rcvbuf_errors: rcvbuf1.saturating_sub(rcvbuf0),
        server,
        egress_latency_us: None,
        window_start_unix: w0_unix,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_loss_and_wrap() {
        let mut t = SeqTrack::default();
        for s in [65_533u16, 65_534, 65_535, 0, 2, 3, 1] {
            t.on(s);
        }
        assert_eq!(t.expected(), 7);
        assert_eq!(t.lost(), 0);
        let mut t = SeqTrack::default();
        for s in [10u16, 11, 15, 16] {
            t.on(s);
        }
        assert_eq!(t.lost(), 3);
    }

    #[test]
    fn keyframe_needs_the_idr_not_just_parameter_sets() {
        assert!(!starts_random_access(Codec::H264, &[0x67, 0x42])); // SPS
        assert!(starts_random_access(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(!starts_random_access(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
        assert!(starts_random_access(Codec::H264, &[0x7c, 0x85])); // FU-A start of IDR
                                                                   // STAP-A: SPS + PPS only, then SPS + PPS + IDR.
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(!starts_random_access(Codec::H264, &stap));
        let mut with_idr = stap.to_vec();
        with_idr.extend([0, 2, 0x65, 0x88]);
        assert!(starts_random_access(Codec::H264, &with_idr));
        assert!(!starts_random_access(Codec::H265, &[0x42, 0x01])); // SPS
        assert!(starts_random_access(Codec::H265, &[0x26, 0x01])); // IDR_W_RADL (19)
    }

    #[test]
    fn percentiles_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(vec![]).n, 0);
    }

    #[test]
    fn sdp_codec_order() {
        let sdp = b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";
        assert_eq!(sdp_codecs(sdp), vec![Some(Codec::H264), Some(Codec::Aac)]);
    }

    #[test]
    fn payload_skips_csrc_ext_padding() {
        // V=2 P=1 X=1 CC=1, 1 CSRC, ext of 1 word, payload [0x65], padding 2.
        let mut p = vec![0xb1, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        p.extend([0; 4]); // CSRC
        p.extend([0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension
        p.push(0x65);
        p.extend([0, 2]);
        assert_eq!(rtp_payload(&p), Some(&[0x65u8][..]));
    }

    #[test]
    fn head_and_content_length() {
        let m = b"RTSP/1.0 200 OK\r\nCSeq: 5\r\ncontent-length: 3\r\n\r\nabc$";
        let h = find_head_end(m).unwrap();
        assert_eq!(content_length(&m[..h]), 3);
        assert_eq!(h + 3, m.len() - 1);
    }
}
