//! `sluice-bench floor`: what the kernel alone charges a fan-out sender on loopback.
//!
//! A sender thread sends a stream's packets to N local receivers with nothing but the
//! system calls a fan-out server cannot avoid, the same ones Sluice makes: over UDP one
//! `sendmmsg` per 64 readers, each message a UDP GSO run (`UDP_SEGMENT`) of one frame's
//! packets; over TCP one `send` per reader per frame of one slice, the frame's packets
//! `$`-framed as RTSP interleaved data and back to back (framed once per frame for every
//! reader, as Sluice does). No RTSP, no parsing, no queues: payloads come from one static
//! buffer. A receiver thread
//! drains the sockets (epoll, `recvmmsg` of 64-byte heads with `MSG_TRUNC`, as
//! `sluice-bench load` does) and counts what arrived, so nothing is dropped unnoticed.
//!
//! The sender thread's utime+stime per Gbit/s of payload is then the floor for any
//! server's "CPU per Gbit/s" in `bench/fanout.sh`: on loopback it includes the receivers'
//! kernel work (UDP queueing and wake-ups, TCP input and ACKs), which the kernel runs
//! inside the sender's system calls, exactly as it does for a real server. A server
//! figure near the floor has little of its own work left to cut.
//!
//! Hand-written over `libc`, like the server's `udp_send`: no crate batches `sendmmsg`
//! with GSO control messages, and the point is to measure the bare calls.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{recv_batch, BATCH, HEAD_ONLY, TCP_READ, UDP_BUF};

/// A packet flow of the modelled stream: `per_s` sends a second per reader, each
/// `packets` packets of `size` bytes (one frame; one GSO run over UDP, one `send` over TCP),
/// except that every `key_every`-th frame, from the first, is a keyframe of `key_packets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flow {
    /// Frames per second.
    pub per_s: u32,
    /// Packets per frame.
    pub packets: usize,
    /// Payload bytes per packet.
    pub size: usize,
    /// Frames from one keyframe to the next (the GOP); 0: no keyframes.
    pub key_every: u32,
    /// Packets of a keyframe.
    pub key_packets: usize,
}

impl Flow {
    /// Packets of frame `index` (counted from 0, the first keyframe).
    pub(crate) fn packets_of(&self, index: u64) -> usize {
        if self.key_every > 0 && index % u64::from(self.key_every) == 0 {
            self.key_packets
        } else {
            self.packets
        }
    }

    /// Packets a second, on average over a GOP (what the tests check the shapes by).
    #[cfg(test)]
    pub(crate) fn packets_per_s(&self) -> f64 {
        let per_gop = match self.key_every {
            0 => self.packets as f64,
            k => (self.key_packets + (k as usize - 1) * self.packets) as f64 / f64::from(k),
        };
        f64::from(self.per_s) * per_gop
    }
}

/// The stream shapes of `bench/fanout.sh`, as ffmpeg packetizes its media into Sluice
/// (measured per reader in the load client's JSON: `hi` 377 packets/s of 1,394 bytes on
/// average, `lo` 33.8 packets/s of 757 bytes), with its GOP: `bench/media`'s video has a
/// keyframe every 60 frames, of 40.2 KB on average in `hi` (other frames 16.5 KB) and 2.6 KB
/// in `lo` (other frames 0.67 KB), as `ffprobe -show_entries packet=size,flags` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// 1080p30 H.264 at 4 Mb/s (30 frames/s of 12 packets of 1,400 bytes, every 60th a
    /// keyframe of 29) + AAC 128 kb/s (17 packets/s of 940 bytes).
    Hi,
    /// 360p30 H.264 at 168 kb/s (30 one-packet frames/s of 700 bytes, every 60th a keyframe
    /// of 4) + AAC 32 kb/s (4 packets/s of 1,000 bytes).
    Lo,
}

/// Video frames per GOP in `bench/fanout.sh`'s media (2 s at 30 frames/s).
const GOP_FRAMES: u32 = 60;

impl Shape {
    /// The flows: video first, then audio (sent to a second port per reader over UDP).
    pub(crate) fn flows(self) -> [Flow; 2] {
        match self {
            Shape::Hi => [
                Flow {
                    per_s: 30,
                    packets: 12,
                    size: 1400,
                    key_every: GOP_FRAMES,
                    key_packets: 29,
                },
                Flow {
                    per_s: 17,
                    packets: 1,
                    size: 940,
                    key_every: 0,
                    key_packets: 1,
                },
            ],
            Shape::Lo => [
                Flow {
                    per_s: 30,
                    packets: 1,
                    size: 700,
                    key_every: GOP_FRAMES,
                    key_packets: 4,
                },
                Flow {
                    per_s: 4,
                    packets: 1,
                    size: 1000,
                    key_every: 0,
                    key_packets: 1,
                },
            ],
        }
    }

    /// `hi` or `lo`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shape::Hi => "hi",
            Shape::Lo => "lo",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct FloorOptions {
    /// Receivers.
    pub readers: usize,
    /// true: UDP datagrams (GSO runs); false: TCP interleaved frames.
    pub udp: bool,
    /// The modelled stream.
    pub shape: Shape,
    /// Measured window, after a 2 s warm-up.
    pub duration: Duration,
    /// Sender threads, each sending to its share of the readers (Sluice's fan-out uses a
    /// worker per core).
    pub threads: usize,
    /// TCP only: write through io_uring, 64 writes per system call with the sockets
    /// registered, instead of one `send` call per reader, to see what batching the writes
    /// saves. UDP already batches (`sendmmsg`), so asking for it there is an error.
    pub io_uring: bool,
    /// Free-form label copied to the report.
    pub label: Option<String>,
}

/// The result, one JSON line; `server` uses the load report's key names so that
/// `bench/fanout.sh` tabulates it beside the servers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FloorReport {
    /// Copied from the options.
    pub label: Option<String>,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// How the sends are made: `sendmmsg` (UDP), `send` or `io_uring` (TCP).
    pub send_call: &'static str,
    /// `hi` or `lo`.
    pub shape: &'static str,
    /// Receivers.
    pub readers_connected: usize,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Payload sent in the window, Mbit/s (RTP bytes; over TCP plus the 4-byte `$` headers).
    pub egress_mbit_s: f64,
    /// The sender thread's figures, named as the load report's `server` object.
    pub server: FloorSender,
    /// Send system calls per second.
    pub send_calls_per_s: f64,
    /// A frame's due time → the return of the send call that carried one of its packets to
    /// a reader, per packet and reader (Sluice's ingest → egress histogram, less the
    /// ingest): how long the fan-out itself takes, with no server in the way.
    pub fanout_latency_us: LatencySummary,
    /// Sender threads (the readers are split between them).
    pub sender_threads: usize,
    /// The receiver thread's utime+stime, % of one core.
    pub receiver_cpu_pct: f64,
    /// Packets (UDP) or bytes (TCP) the sender handed to the kernel over the whole run.
    pub sent: u64,
    /// Packets (UDP) or bytes (TCP) the receivers read over the whole run; equal to
    /// `sent` unless the kernel dropped datagrams.
    pub received: u64,
    /// TCP: `send` calls that did not take the whole frame (a full send buffer).
    pub short_writes: u64,
}

/// The sender thread's cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FloorSender {
    /// utime+stime over the window, % of one core.
    pub cpu_pct: f64,
    /// `cpu_pct` per Gbit/s of egress.
    pub cpu_pct_per_gbit: f64,
    /// CPU per packet sent, µs.
    pub us_per_packet: f64,
}

/// Why the floor could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FloorError {
    /// A socket call failed while setting up.
    #[error("{what}: {source}")]
    Setup {
        /// The step that failed.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Not enough file descriptors for the receivers and their peers.
    #[error("{readers} TCP readers need {needed} file descriptors, the limit is {limit}")]
    FdLimit {
        /// Readers asked for.
        readers: usize,
        /// Descriptors needed.
        needed: u64,
        /// The soft limit.
        limit: u64,
    },
    /// A thread panicked or could not start.
    #[error("thread: {0}")]
    Thread(String),
    /// io_uring was asked for UDP, whose sends are already batched by `sendmmsg`.
    #[error("io_uring sends are for TCP: over UDP the floor already batches with sendmmsg")]
    IoUringUdp,
}

fn setup<T>(what: &'static str, r: io::Result<T>) -> Result<T, FloorError> {
    r.map_err(|source| FloorError::Setup { what, source })
}

/// The calling thread's utime+stime.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes one `rusage` into the zeroed local it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    };
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn fd_limit() -> u64 {
    // SAFETY: getrlimit writes one `rlimit` into the zeroed local it is given.
    let (r, lim) = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), lim)
    };
    if r == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Receiving ends: UDP sockets (a reader's tracks, or one socket per reader when the fd
/// limit is short) or the client ends of TCP connections.
enum Receivers {
    Udp(Vec<Vec<UdpSocket>>),
    Tcp(Vec<TcpStream>),
}

/// Runs the floor measurement (blocking: two threads for about `duration` + 2 s).
pub(crate) fn run(opts: FloorOptions) -> Result<FloorReport, FloorError> {
    if opts.io_uring && opts.udp {
        return Err(FloorError::IoUringUdp);
    }
    let flows = opts.shape.flows();
    let n = opts.readers.max(1);
    let limit = fd_limit();
    let localhost = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    let (receivers, senders, sender_udp) = if opts.udp {
        // 2 sockets per reader as a real reader binds them; 1 if the limit is short
        // (the kernel's work is per datagram, not per socket).
        let per = if (n * flows.len()) as u64 + 64 <= limit {
            flows.len()
        } else {
            1
        };
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            let mut tracks = Vec::with_capacity(per);
            for _ in 0..per {
                let s = setup("bind receiver", UdpSocket::bind(localhost))?;
                setup("nonblocking", s.set_nonblocking(true))?;
                // Room for a keyframe burst; the load client asks the same.
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(1 << 20);
                tracks.push(s);
            }
            all.push(tracks);
        }
        let tx = setup("bind sender", UdpSocket::bind(localhost))?;
        (Receivers::Udp(all), Vec::new(), Some(tx))
    } else {
        let needed = 2 * n as u64 + 64;
        if needed > limit {
            return Err(FloorError::FdLimit {
                readers: n,
                needed,
                limit,
            });
        }
        let l = setup("listen", TcpListener::bind(localhost))?;
        let addr = setup("listen", l.local_addr())?;
        let mut rx = Vec::with_capacity(n);
        let mut tx = Vec::with_capacity(n);
        for _ in 0..n {
            let c = setup("connect", TcpStream::connect(addr))?;
            let (s, _) = setup("accept", l.accept())?;
            setup("nodelay", s.set_nodelay(true))?;
            setup("nonblocking", s.set_nonblocking(true))?;
            setup("nonblocking", c.set_nonblocking(true))?;
            rx.push(c);
            tx.push(s);
        }
        (Receivers::Tcp(rx), tx, None)
    };

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let fds: Vec<RawFd> = match &receivers {
        Receivers::Udp(v) => v.iter().flatten().map(|s| s.as_raw_fd()).collect(),
        Receivers::Tcp(v) => v.iter().map(|s| s.as_raw_fd()).collect(),
    };
    let receiver = {
        let stop = stop.clone();
        let received = received.clone();
        let udp = opts.udp;
        std::thread::Builder::new()
            .name("floor-rx".into())
            .spawn(move || receive(&fds, udp, &stop, &received))
            .map_err(|e| FloorError::Thread(e.to_string()))?
    };

    // The readers are split over the sender threads (a worker per core, as Sluice's
    // fan-out); all follow one schedule from `t0`.
    let threads = opts.threads.clamp(1, n);
    // UDP: per flow, every reader's address for that flow's socket.
    let mut dests: Vec<Vec<socket2::SockAddr>> = Vec::new();
    if let Receivers::Udp(socks) = &receivers {
        dests = vec![Vec::with_capacity(n); flows.len()];
        for tracks in socks {
            for (fi, d) in dests.iter_mut().enumerate() {
                let s = &tracks[fi.min(tracks.len() - 1)];
                d.push(setup("local_addr", s.local_addr())?.into());
            }
        }
    }
    let t0 = Instant::now();
    let parts: Vec<Totals> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        match &sender_udp {
            Some(tx) => {
                let dests = &dests;
                for k in 0..threads {
                    let range = share(n, threads, k);
                    handles.push(scope.spawn(move || {
                        send_loop(&flows, t0, opts.duration, |fi, f, packets, lat| {
                            send_udp(tx, &dests[fi][range.clone()], f.size, packets, lat)
                        })
                    }));
                }
            }
            _ => {
                let senders = &senders;
                for k in 0..threads {
                    let range = share(n, threads, k);
                    let mut ring = match opts.io_uring {
                        true => Some(UringSender::new(&senders[range.clone()])?),
                        false => None,
                    };
                    handles.push(scope.spawn(move || {
                        send_loop(&flows, t0, opts.duration, |_, f, packets, lat| {
                            let framed = framed(f.size, packets);
                            match ring.as_mut() {
                                Some(ring) => ring.send(&framed, packets, lat),
                                None => send_tcp(&senders[range.clone()], &framed, packets, lat),
                            }
                        })
                    }));
                }
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| FloorError::Thread("sender panicked".into()))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let sent = Totals::merge(parts);
    // Let the receiver drain what is in flight, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (rx_cpu, rx_wall) = receiver
        .join()
        .map_err(|_| FloorError::Thread("receiver panicked".into()))?;
    drop(receivers);

    let wall = sent.wall.as_secs_f64().max(1e-9);
    let cpu_pct = sent.cpu.as_secs_f64() / wall * 100.0;
    let mbit = sent.window_bytes as f64 * 8.0 / wall / 1e6;
    let round = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    Ok(FloorReport {
        label: opts.label,
        transport: if opts.udp { "udp" } else { "tcp" },
        send_call: match (opts.udp, opts.io_uring) {
            (true, _) => "sendmmsg",
            (false, false) => "send",
            (false, true) => "io_uring",
        },
        shape: opts.shape.name(),
        readers_connected: n,
        window_s: round(wall, 2),
        egress_mbit_s: round(mbit, 2),
        server: FloorSender {
            cpu_pct: round(cpu_pct, 2),
            cpu_pct_per_gbit: if mbit > 0.0 {
                round(cpu_pct / (mbit / 1000.0), 2)
            } else {
                0.0
            },
            us_per_packet: if sent.window_packets > 0 {
                round(sent.cpu.as_secs_f64() * 1e6 / sent.window_packets as f64, 2)
            } else {
                0.0
            },
        },
        send_calls_per_s: round(sent.window_calls as f64 / wall, 0),
        receiver_cpu_pct: round(
            rx_cpu.as_secs_f64() / rx_wall.as_secs_f64().max(1e-9) * 100.0,
            2,
        ),
        fanout_latency_us: sent.latency.summary(),
        sender_threads: threads,
        sent: sent.total_units,
        received: received.load(Ordering::Relaxed),
        short_writes: sent.short_writes,
    })
}

/// What one send of a frame to every reader did.
#[derive(Default)]
struct Sent {
    /// Bytes handed to the kernel.
    bytes: u64,
    /// Packets handed to the kernel.
    packets: u64,
    /// Units the receivers will count: datagrams (UDP) or bytes (TCP).
    units: u64,
    calls: u64,
    short_writes: u64,
}

/// A sender thread's totals.
struct Totals {
    cpu: Duration,
    wall: Duration,
    window_bytes: u64,
    window_packets: u64,
    window_calls: u64,
    total_units: u64,
    short_writes: u64,
    latency: Latency,
}

impl Totals {
    /// All threads together: CPU and counts add up, the window is the longest.
    fn merge(parts: Vec<Totals>) -> Totals {
        let mut all = Totals::default();
        for p in parts {
            all.cpu += p.cpu;
            all.wall = all.wall.max(p.wall);
            all.window_bytes += p.window_bytes;
            all.window_packets += p.window_packets;
            all.window_calls += p.window_calls;
            all.total_units += p.total_units;
            all.short_writes += p.short_writes;
            all.latency.merge(&p.latency);
        }
        all
    }
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
            window_bytes: 0,
            window_packets: 0,
            window_calls: 0,
            total_units: 0,
            short_writes: 0,
            latency: Latency::new(),
        }
    }
}

/// Reader indices of thread `k` of `threads`.
fn share(n: usize, threads: usize, k: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(threads);
    (k * per).min(n)..((k + 1) * per).min(n)
}

/// Percentiles of the fan-out latency, µs (bucket upper bounds, 10 µs wide).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencySummary {
    /// Packet-reader deliveries counted.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Width of a latency bucket.
const BUCKET_US: u64 = 10;
/// Buckets up to 1 s; later deliveries count in the last.
const BUCKETS: usize = 100_000;

/// A histogram of fan-out latency, weighted by the packets each send call carried.
struct Latency {
    buckets: Vec<u64>,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            buckets: vec![0; BUCKETS],
        }
    }

    /// `packets` deliveries that took `d`.
    fn add(&mut self, d: Duration, packets: u64) {
        let i = (d.as_micros() / u128::from(BUCKET_US)).min(BUCKETS as u128 - 1) as usize;
        self.buckets[i] += packets;
    }

    fn merge(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    fn summary(&self) -> LatencySummary {
        let count: u64 = self.buckets.iter().sum();
        let at = |q: f64| {
            let rank = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &c) in self.buckets.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return (i as u64 + 1) * BUCKET_US;
                }
            }
            0
        };
        let max = self
            .buckets
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, |i| (i as u64 + 1) * BUCKET_US);
        LatencySummary {
            count,
            p50: if count > 0 { at(0.5) } else { 0 },
            p90: if count > 0 { at(0.9) } else { 0 },
            p99: if count > 0 { at(0.99) } else { 0 },
            max,
        }
    }
}

/// Paces the flows' frames from `t0` for 2 s of warm-up plus `duration`, calling `send`
/// for each (flow index, flow, the frame's packets, latency clock); measures the thread's
/// CPU, and the latency from each frame's due time, over the window.
fn send_loop(
    flows: &[Flow],
    t0: Instant,
    duration: Duration,
    mut send: impl FnMut(usize, &Flow, usize, &mut LatencyClock<'_>) -> Sent,
) -> Totals {
    let start = t0 + Duration::from_secs(2);
    let end = start + duration;
    let mut next: Vec<Instant> = flows.iter().map(|_| t0).collect();
    let mut frames: Vec<u64> = vec![0; flows.len()];
    let mut window: Option<(Duration, Instant)> = None;
    let mut t = Totals::default();
    while let Some((fi, at)) = next.iter().copied().enumerate().min_by_key(|&(_, at)| at) {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if window.is_none() && now >= start {
            window = Some((thread_cpu(), now));
        }
        let f = &flows[fi];
        next[fi] += Duration::from_secs(1) / f.per_s.max(1);
        let packets = f.packets_of(frames[fi]);
        frames[fi] += 1;
        let mut clock = LatencyClock {
            due: at,
            hist: window.is_some().then_some(&mut t.latency),
        };
        let s = send(fi, f, packets, &mut clock);
        t.total_units += s.units;
        t.short_writes += s.short_writes;
        if window.is_some() {
            t.window_bytes += s.bytes;
            t.window_packets += s.packets;
            t.window_calls += s.calls;
        }
    }
    if let Some((cpu0, at)) = window {
        t.cpu = thread_cpu().saturating_sub(cpu0);
        t.wall = at.elapsed();
    }
    t
}

/// Records deliveries of one frame against its due time (only inside the window).
struct LatencyClock<'a> {
    due: Instant,
    hist: Option<&'a mut Latency>,
}

impl LatencyClock<'_> {
    /// A send call just returned, having carried `packets` packet-reader deliveries.
    fn sent(&mut self, packets: u64) {
        if let Some(hist) = self.hist.as_deref_mut() {
            hist.add(Instant::now().saturating_duration_since(self.due), packets);
        }
    }
}

/// Most messages per `sendmmsg`, as the server's `udp_send::MAX_BATCH`.
const SEND_BATCH: usize = 64;
/// Room for one `UDP_SEGMENT` control message.
const CMSG_BYTES: usize = 32;
/// The static payload: the largest frame of the shapes (a `hi` keyframe, 29 × 1,400) and
/// then some; also the most a UDP GSO run carries.
static PAYLOAD: [u8; 60 * 1024] = [0x80; 60 * 1024];

/// One frame of `packets` packets of `size` bytes to every reader (`addrs`): `sendmmsg` of
/// up to 64 messages, each a GSO run.
fn send_udp(
    tx: &UdpSocket,
    addrs: &[socket2::SockAddr],
    size: usize,
    packets: usize,
    lat: &mut LatencyClock<'_>,
) -> Sent {
    let mut out = Sent::default();
    let len = (packets * size).min(PAYLOAD.len());
    let mut cmsg = [[0u8; CMSG_BYTES]; SEND_BATCH];
    for chunk in addrs.chunks(SEND_BATCH) {
        // SAFETY: the headers point at `addrs`, `iov` and `cmsg` entries, all alive and
        // unmoved until sendmmsg returns; the payload is a static buffer of ≥ `len` bytes
        // that the kernel only reads; CMSG_* are used within CMSG_BYTES (CMSG_SPACE(2) is 24).
        unsafe {
            let iov = libc::iovec {
                iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
                iov_len: len,
            };
            let mut iovs = [iov; SEND_BATCH];
            let mut hdrs: [libc::mmsghdr; SEND_BATCH] = std::mem::zeroed();
            for (j, a) in chunk.iter().enumerate() {
                let h = &mut hdrs[j].msg_hdr;
                h.msg_name = a.as_ptr() as *mut libc::c_void;
                h.msg_namelen = a.len();
                h.msg_iov = &mut iovs[j];
                h.msg_iovlen = 1;
                if packets > 1 {
                    h.msg_control = cmsg[j].as_mut_ptr().cast();
                    h.msg_controllen = libc::CMSG_SPACE(2) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
                }
            }
            let mut off = 0;
            while off < chunk.len() {
                let r = libc::sendmmsg(
                    tx.as_raw_fd(),
                    hdrs.as_mut_ptr().add(off),
                    (chunk.len() - off) as _,
                    0,
                );
                out.calls += 1;
                if r <= 0 {
                    off += 1; // the kernel refused this message: skip it, not counted
                } else {
                    let r = r as usize;
                    lat.sent((r * packets) as u64);
                    out.bytes += (r * len) as u64;
                    out.packets += (r * packets) as u64;
                    out.units += (r * packets) as u64;
                    off += r;
                }
            }
        }
    }
    out
}

/// One frame of `packets` packets of `size` bytes to every reader: the frame is framed
/// once (a `$`-header + payload per packet, back to back), then one `send` per reader
/// (std's `TcpStream::write`; `writev`, as before session 11, adds the file layer's
/// per-call work, as in Sluice). (A header slice and a payload slice per packet, as Sluice
/// wrote before session 10, cost ~10 % more at 400 readers of the 4 Mb/s stream.)
fn send_tcp(
    senders: &[TcpStream],
    framed: &[u8],
    packets: usize,
    lat: &mut LatencyClock<'_>,
) -> Sent {
    let mut out = Sent::default();
    let frame = framed.len() as u64;
    for s in senders {
        out.calls += 1;
        match io::Write::write(&mut &*s, framed) {
            Ok(n) => out.wrote(n as u64, frame, packets, lat),
            Err(_) => out.short_writes += 1,
        }
    }
    out
}

/// A frame of `packets` packets of `size` payload bytes, `$`-framed and back to back (one
/// slice, as Sluice frames a flush once for all its TCP readers).
fn framed(size: usize, packets: usize) -> Vec<u8> {
    let header = [b'$', 0, (size >> 8) as u8, size as u8];
    let payload = &PAYLOAD[..size.min(PAYLOAD.len())];
    let mut framed = Vec::with_capacity(packets * (4 + payload.len()));
    for _ in 0..packets {
        framed.extend_from_slice(&header);
        framed.extend_from_slice(payload);
    }
    framed
}

impl Sent {
    /// A TCP write of a `frame`-byte frame of `packets` packets took `n` bytes.
    fn wrote(&mut self, n: u64, frame: u64, packets: usize, lat: &mut LatencyClock<'_>) {
        self.bytes += n;
        self.units += n;
        if n == frame {
            lat.sent(packets as u64);
            self.packets += packets as u64;
        } else {
            self.short_writes += 1;
        }
    }
}

/// Sends per io_uring submission: as many as the UDP floor's `sendmmsg` carries.
const URING_BATCH: usize = SEND_BATCH;

/// A sender thread's TCP writes through io_uring (`--io-uring`): its sockets registered
/// with the ring (so no per-write file lookup), one `IORING_OP_SEND` per reader per frame,
/// [`URING_BATCH`] of them per `io_uring_enter`. The sends are non-blocking
/// (`MSG_DONTWAIT`), so each completes inside the submitting call, in this thread's time,
/// like a `send`. This is the one way a server could cut the per-write system call and
/// file lookup that [`send_tcp`] pays; the floor's figure with it says what that is worth.
struct UringSender {
    ring: io_uring::IoUring,
    readers: u32,
}

impl UringSender {
    /// A ring with `senders` registered as its fixed files 0..n.
    fn new(senders: &[TcpStream]) -> Result<UringSender, FloorError> {
        let ring = setup("io_uring", io_uring::IoUring::new(2 * URING_BATCH as u32))?;
        let fds: Vec<RawFd> = senders.iter().map(|s| s.as_raw_fd()).collect();
        setup(
            "io_uring register_files",
            ring.submitter().register_files(&fds),
        )?;
        Ok(UringSender {
            ring,
            readers: u32::try_from(fds.len()).unwrap_or(u32::MAX),
        })
    }

    /// Sends `framed` to every registered reader.
    fn send(&mut self, framed: &[u8], packets: usize, lat: &mut LatencyClock<'_>) -> Sent {
        let mut out = Sent::default();
        let frame = framed.len() as u64;
        let len = u32::try_from(framed.len()).unwrap_or(u32::MAX);
        let mut next = 0;
        while next < self.readers {
            let end = next.saturating_add(URING_BATCH as u32).min(self.readers);
            let mut pending = 0;
            for i in next..end {
                let sqe =
                    io_uring::opcode::Send::new(io_uring::types::Fixed(i), framed.as_ptr(), len)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build();
                // SAFETY: `framed` outlives the operation: this function does not return
                // before every entry pushed here has completed (below).
                match unsafe { self.ring.submission().push(&sqe) } {
                    Ok(()) => pending += 1,
                    Err(_) => out.short_writes += 1,
                }
            }
            while pending > 0 {
                out.calls += 1;
                if let Err(e) = self.ring.submit_and_wait(pending) {
                    // Until every entry has completed the kernel may still read `framed`:
                    // wait again after a passing failure, give up the thread otherwise
                    // (its join reports it as `FloorError::Thread`).
                    match e.raw_os_error() {
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => continue,
                        _ => panic!("io_uring submission failed: {e}"),
                    }
                }
                for cqe in self.ring.completion() {
                    pending = pending.saturating_sub(1);
                    match u64::try_from(cqe.result()) {
                        Ok(n) => out.wrote(n, frame, packets, lat),
                        Err(_) => out.short_writes += 1,
                    }
                }
            }
            next = end;
        }
        out
    }
}

/// The receiver thread: epoll (edge-triggered) over every socket, each drained on
/// readiness; counts datagrams (UDP) or bytes (TCP). Returns its CPU and wall time.
fn receive(
    fds: &[RawFd],
    udp: bool,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> (Duration, Duration) {
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    // SAFETY: epoll_create1 takes no pointers; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return (Duration::ZERO, t0.elapsed());
    }
    for (i, &fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` is a valid local the kernel copies; `fd` stays open (owned by
        // the caller) until this thread has been joined.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; UDP_BUF];
    let mut lens = [0usize; BATCH];
    let mut tcp_buf = vec![0u8; TCP_READ];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let k = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for e in events.iter().take(k.max(0) as usize) {
            let Some(&fd) = fds.get(e.u64 as usize) else {
                continue;
            };
            if udp {
                // The load client's own read: 64 datagrams per call, 64 bytes of each.
                while let Ok(m) = recv_batch(fd, &mut buf, HEAD_ONLY, &mut lens, None) {
                    received.fetch_add(m as u64, Ordering::Relaxed);
                    if m < BATCH {
                        break;
                    }
                }
            } else {
                loop {
                    // SAFETY: read writes at most `tcp_buf.len()` bytes into it.
                    let r = unsafe { libc::read(fd, tcp_buf.as_mut_ptr().cast(), tcp_buf.len()) };
                    if r <= 0 {
                        break;
                    }
                    received.fetch_add(r as u64, Ordering::Relaxed);
                    if (r as usize) < tcp_buf.len() {
                        break;
                    }
                }
            }
        }
    }
    // SAFETY: `ep` is our epoll fd, closed once.
    unsafe { libc::close(ep) };
    (thread_cpu().saturating_sub(cpu0), t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both transports deliver everything they send and report a cost per Gbit/s.
    #[test]
    fn the_floor_delivers_every_packet_and_measures_the_sender() {
        for (udp, io_uring) in [(true, false), (false, false), (false, true)] {
            let r = run(FloorOptions {
                readers: 20,
                udp,
                shape: Shape::Hi,
                duration: Duration::from_secs(1),
                threads: 2,
                io_uring,
                label: None,
            });
            let r = match r {
                // A system may switch io_uring off (kernel.io_uring_disabled, seccomp).
                Err(FloorError::Setup { what, source })
                    if io_uring
                        && matches!(source.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) =>
                {
                    eprintln!("io_uring unavailable here ({what}: {source}); not measured");
                    continue;
                }
                r => r.expect("floor runs"),
            };
            assert!(r.sent > 0, "{r:?}");
            assert_eq!(r.received, r.sent, "every packet/byte arrives: {r:?}");
            assert_eq!(r.short_writes, 0, "{r:?}");
            // 20 readers × ~4.1 Mb/s.
            assert!(
                (60.0..100.0).contains(&r.egress_mbit_s),
                "egress {} Mbit/s: {r:?}",
                r.egress_mbit_s
            );
            assert!(
                r.server.cpu_pct > 0.0 && r.server.cpu_pct_per_gbit > 0.0,
                "{r:?}"
            );
            assert_eq!(r.sender_threads, 2);
            // Every packet-reader delivery of the window is timed: ~1 s × 377 packets × 20.
            let l = &r.fanout_latency_us;
            assert!((5_000..10_000).contains(&l.count), "{l:?}");
            assert!(l.p50 > 0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
            // Calls a second: UDP one sendmmsg per frame for 20 readers (47 frames/s);
            // TCP a send per reader per frame (940/s); io_uring one submission per frame.
            let calls = r.send_calls_per_s;
            let expected = match (udp, io_uring) {
                (true, _) => ("sendmmsg", 47.0 * 2.0),
                (false, false) => ("send", 940.0),
                (false, true) => ("io_uring", 47.0 * 2.0),
            };
            assert_eq!(r.send_call, expected.0);
            assert!(
                calls > expected.1 * 0.7 && calls < expected.1 * 1.3,
                "{} calls/s, expected about {}: {r:?}",
                calls,
                expected.1
            );
        }
    }

    #[test]
    fn io_uring_is_refused_for_udp() {
        let r = run(FloorOptions {
            readers: 1,
            udp: true,
            shape: Shape::Lo,
            duration: Duration::from_secs(1),
            threads: 1,
            io_uring: true,
            label: None,
        });
        assert!(matches!(r, Err(FloorError::IoUringUdp)), "{r:?}");
    }

    #[test]
    fn shapes_match_the_measured_streams() {
        // Packets and bits a second, on average over a GOP.
        let rate = |s: Shape| {
            s.flows().iter().fold((0.0, 0.0), |(pps, bps), f| {
                let p = f.packets_per_s();
                (pps + p, bps + p * f.size as f64 * 8.0)
            })
        };
        // The load client measured 377 packets/s of `hi` and 33.8 of `lo`; a whole number
        // of packets per frame rounds `hi`'s 11.7 packets per other frame up to 12.
        let (pps, bps) = rate(Shape::Hi);
        assert!((377.0..390.0).contains(&pps), "{pps}");
        assert!((4.1e6..4.3e6).contains(&bps), "{bps}");
        let (pps, bps) = rate(Shape::Lo);
        assert!((33.0..36.0).contains(&pps), "{pps}");
        assert!((195e3..210e3).contains(&bps), "{bps}");
        // One keyframe per 2 s, 2.4× (hi) and 4× (lo) an other frame, as in the media.
        for s in [Shape::Hi, Shape::Lo] {
            let video = s.flows()[0];
            assert_eq!(video.key_every, 60);
            assert_eq!(video.packets_of(0), video.key_packets);
            assert_eq!(video.packets_of(1), video.packets);
            assert_eq!(video.packets_of(60), video.key_packets);
            assert!(video.key_packets * video.size <= PAYLOAD.len());
        }
        assert_eq!(Shape::Hi.flows()[0].key_packets, 29);
    }

    /// The pacing sends the GOP: a keyframe first and every 60th video frame after.
    #[test]
    fn the_send_loop_sends_keyframes_at_the_gop() {
        let flows = Shape::Hi.flows();
        let mut sent: Vec<(usize, usize)> = Vec::new();
        // 2 s of warm-up (61 video frames, the first and the 61st keyframes) + 10 ms.
        send_loop(
            &flows,
            Instant::now(),
            Duration::from_millis(10),
            |fi, _, packets, _| {
                sent.push((fi, packets));
                Sent::default()
            },
        );
        let video: Vec<usize> = sent.iter().filter(|s| s.0 == 0).map(|s| s.1).collect();
        assert!(video.len() >= 61, "{}", video.len());
        for (i, &p) in video.iter().enumerate() {
            assert_eq!(p, if i % 60 == 0 { 29 } else { 12 }, "frame {i}");
        }
        assert!(sent.iter().filter(|s| s.0 == 1).all(|s| s.1 == 1));
    }
}
