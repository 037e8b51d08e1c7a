//! Socket-level abuse: while an ffmpeg publisher publishes and an ffmpeg
//! reader reads over TCP, thousands of malformed or hostile requests arrive
//! over many connections from several threads, and 1,000 half-open
//! connections are held. The server must stay up, keep answering new
//! clients, keep the reader fed, keep its memory bounded and never panic.

mod common;

/// What each OPTIONS probe got: (status, latency) or why it failed.
type ProbeResults = Vec<Result<(u16, Duration), String>>;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rtsp_client::{describe, RtspClient};
use common::*;

/// Hostile requests to send in all (at least).
const HOSTILE_REQUESTS: u64 = 10_000;
/// Half-open connections held during the abuse.
const HALF_OPEN: usize = 1_000;
/// Hostile sender threads.
const THREADS: u64 = 4;
/// How long the normal reader reads (media seconds).
const READ_SECS: u64 = 40;
/// Server's `[limits] max_head_bytes` (the default).
const MAX_HEAD: usize = 16 * 1024;
/// Loopback source addresses the half-open connections come from
/// (127.0.0.2 ..= 127.0.0.(1 + HALF_OPEN_IPS)), so that they stay within
/// `[limits] max_connections_per_ip` (1,000 by default) and the normal
/// clients on 127.0.0.1 are not refused.
const HALF_OPEN_IPS: usize = 4;

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (the server,
/// spawned afterwards, inherits it). Returns the new soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// The pid of the `sluice` process started with `config_path`.
fn server_pid(server: &Server) -> u32 {
    let needle = server.config_path.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("serve") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no sluice process with config {needle}");
}

/// A `/proc/PID/status` field in kB (VmRSS, VmHWM, ...).
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How the (not yet reaped) child `pid` ended, if it did: peeks with
/// `waitid(WNOWAIT)` so that the harness can still reap it.
fn exit_info(pid: u32) -> String {
    // SAFETY: waitid on our own child with a zeroed siginfo_t.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r != 0 || info.si_pid() == 0 {
            return "still running (or already reaped)".into();
        }
        let how = match info.si_code {
            libc::CLD_EXITED => "exited with status",
            libc::CLD_KILLED => "killed by signal",
            libc::CLD_DUMPED => "dumped core on signal",
            _ => "ended with code",
        };
        format!("{how} {}", info.si_status())
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// Connects to `addr` from the loopback address `from` (127.0.0.x).
fn connect_from(from: std::net::Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket/bind/connect on a fresh fd that the TcpStream
    // then owns (and closes).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(from, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*to.ip(), to.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(stream)
    }
}

/// Whether the server closed `s` (EOF or reset; data, e.g. a 408, is
/// read and ignored).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Reads whatever the server sends for up to the socket's read timeout;
/// returns the number of bytes read.
fn drain(s: &mut TcpStream, limit: usize) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < limit {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}

/// One OPTIONS on a fresh connection: the status and how long it took.
fn probe_options(addr: SocketAddr, url: &str) -> Result<(u16, Duration), String> {
    let t = Instant::now();
    let mut c = RtspClient::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let r = c
        .request("OPTIONS", url, &[], b"")
        .map_err(|e| format!("OPTIONS: {e}"))?;
    Ok((r.status, t.elapsed()))
}

/// What the hostile senders did.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    connections: AtomicU64,
    connect_errors: AtomicU64,
    byte_by_byte_ok: AtomicU64,
    byte_by_byte_total: AtomicU64,
    /// A response arrived for a request that must be answered 4xx/5xx.
    error_responses: AtomicU64,
}

/// Hostile-request context shared by the senders.
struct Target {
    addr: SocketAddr,
    /// The live path's URL.
    live: String,
    /// Session id of another connection (the victim's).
    victim_session: String,
}

/// Writes `b`, counting it as one request when it was written.
fn send(s: &mut TcpStream, b: &[u8], sent: &mut u64) -> bool {
    let ok = s.write_all(b).is_ok();
    if ok {
        *sent += 1;
    }
    ok
}

/// Sends one batch of hostile requests on a fresh connection; returns how
/// many requests it counts for.
fn hostile_batch(rng: &mut Rng, t: &Target, c: &Counters) -> u64 {
    let mut s = match connect(t.addr) {
        Ok(s) => s,
        Err(_) => {
            c.connect_errors.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
    };
    c.connections.fetch_add(1, Ordering::Relaxed);
    let live = &t.live;
    let kind = rng.below(14);
    let mut sent = 0u64;
    match kind {
        // Random bytes.
        0 => {
            let n = 1 + rng.below(4000) as usize;
            send(&mut s, &rng.bytes(n), &mut sent);
        }
        // Huge head: just below, at and beyond the head limit.
        1 => {
            let size = match rng.below(3) {
                0 => MAX_HEAD - 200,
                1 => MAX_HEAD + 1,
                _ => MAX_HEAD * 2 + rng.below(MAX_HEAD as u64) as usize,
            };
            let mut req = format!("OPTIONS {live} RTSP/1.0\r\nCSeq: 1\r\n");
            while req.len() < size {
                req.push_str(&format!(
                    "X-Junk-{}: {}\r\n",
                    rng.below(1000),
                    "a".repeat(200)
                ));
            }
            // One enormous single header line too.
            if rng.below(2) == 0 {
                req.push_str(&format!("X-Long: {}\r\n", "b".repeat(size)));
            }
            req.push_str("\r\n");
            send(&mut s, req.as_bytes(), &mut sent);
        }
        // Bad, negative, huge Content-Length.
        2 => {
            let cl = rng.pick(&[
                "-1",
                "-99999",
                "18446744073709551616",
                "99999999999999999999999",
                "abc",
                "",
                "1e6",
                "0x10",
                "4294967296",
                "2000000",
                "5, 6",
            ]);
            let req = format!(
                "ANNOUNCE {live}x RTSP/1.0\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: {cl}\r\n\r\nv=0\r\n"
            );
            if send(&mut s, req.as_bytes(), &mut sent) && drain(&mut s, 4096) > 0 {
                c.error_responses.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Body shorter than Content-Length, then close.
        3 => {
            let req = format!(
                "ANNOUNCE {live}/short RTSP/1.0\r\nCSeq: 3\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\nv=0\r\no=- 0",
                100 + rng.below(1_000_000)
            );
            send(&mut s, req.as_bytes(), &mut sent);
        }
        // Out-of-state methods (no SETUP), pipelined.
        4 => {
            for (i, m) in [
                "PLAY",
                "RECORD",
                "PAUSE",
                "TEARDOWN",
                "GET_PARAMETER",
                "PLAY",
            ]
            .iter()
            .enumerate()
            {
                let session = if i % 2 == 0 {
                    String::new()
                } else {
                    format!("Session: {:X}\r\n", rng.next())
                };
                let req = format!("{m} {live} RTSP/1.0\r\nCSeq: {i}\r\n{session}\r\n");
                send(&mut s, req.as_bytes(), &mut sent);
            }
            drain(&mut s, 16384);
        }
        // Another connection's session id (the victim's) and forged ones.
        5 => {
            let forged = [
                t.victim_session.clone(),
                format!("{};timeout=1", t.victim_session),
                format!("{:016X}", rng.next()),
                "0".into(),
                "../../etc/passwd".into(),
                "a".repeat(5000),
            ];
            for (i, id) in forged.iter().enumerate() {
                let m = rng.pick(&[
                    "PLAY",
                    "RECORD",
                    "PAUSE",
                    "TEARDOWN",
                    "GET_PARAMETER",
                    "SETUP",
                ]);
                let uri = if m == "SETUP" {
                    format!("{live}/trackID=0")
                } else {
                    live.clone()
                };
                let req = format!(
                    "{m} {uri} RTSP/1.0\r\nCSeq: {i}\r\nSession: {id}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
                );
                send(&mut s, req.as_bytes(), &mut sent);
            }
            drain(&mut s, 16384);
        }
        // Unknown methods, other protocols and versions.
        6 => {
            let line = rng.pick(&[
                "FOO rtsp://127.0.0.1/ RTSP/1.0",
                "GET / HTTP/1.1",
                "OPTIONS * RTSP/2.0",
                "OPTIONS * RTSP/1.0 extra",
                "DESCRIBE",
                "OPTIONS\t*\tRTSP/1.0",
                " OPTIONS * RTSP/1.0",
                "PLAY rtsp://[::1 RTSP/1.0",
                "SETUP rtsp://127.0.0.1:99999/live RTSP/1.0",
                "\u{0}\u{0}\u{0}",
            ]);
            let req = format!("{line}\r\nCSeq: 6\r\n\r\n");
            send(&mut s, req.as_bytes(), &mut sent);
            drain(&mut s, 4096);
        }
        // Bad Transport headers on SETUP of the live path.
        7 => {
            let tr = rng.pick(&[
                "",
                ";;;;",
                "RTP/AVP",
                "RTP/AVP/TCP;interleaved=255-256",
                "RTP/AVP/TCP;interleaved=-1--2",
                "RTP/AVP;unicast;client_port=0-0",
                "RTP/AVP;unicast;client_port=65535-65536",
                "RTP/AVP;multicast;destination=8.8.8.8;ttl=255",
                "RTP/AVP;unicast;destination=8.8.8.8;client_port=5000-5001",
                "RTP/SAVP;unicast;client_port=5000-5001",
                "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
                "RTP/AVP;unicast;client_port=5000-5001;mode=\"PLAY,RECORD\"",
                "x-foo/bar,RTP/AVP/TCP;unicast;interleaved=2-3",
            ]);
            let track = rng.pick(&["trackID=0", "trackID=1", "trackID=99", "trackID=-1", ""]);
            let req =
                format!("SETUP {live}/{track} RTSP/1.0\r\nCSeq: 7\r\nTransport: {tr}\r\n\r\n");
            send(&mut s, req.as_bytes(), &mut sent);
            drain(&mut s, 4096);
        }
        // Garbage interleaved frames, then a request.
        8 => {
            let mut b = Vec::new();
            for _ in 0..1 + rng.below(20) {
                let len = rng.below(3000) as usize;
                b.push(b'$');
                b.push(rng.next() as u8);
                b.extend_from_slice(&(len as u16).to_be_bytes());
                b.extend(rng.bytes(len));
                sent += 1;
            }
            // A frame claiming more than is sent.
            b.extend_from_slice(&[b'$', 0, 0xff, 0xff, 1, 2, 3]);
            send(&mut s, &b, &mut sent);
        }
        // A valid request split into 1-byte writes: must be answered.
        9 => {
            let req = format!("OPTIONS {live} RTSP/1.0\r\nCSeq: 9\r\nUser-Agent: slow\r\n\r\n");
            c.byte_by_byte_total.fetch_add(1, Ordering::Relaxed);
            let mut ok = true;
            for b in req.as_bytes() {
                if s.write_all(std::slice::from_ref(b)).is_err() {
                    ok = false;
                    break;
                }
            }
            if ok {
                sent += 1;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                let mut buf = [0u8; 512];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"RTSP/1.0 200") {
                    c.byte_by_byte_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Hostile request headers: bad CSeq, Range, Authorization, header
        // without colon, NUL bytes, many tiny headers.
        10 => {
            let h = rng.pick(&[
                "CSeq: -1",
                "CSeq: 99999999999999999999",
                "CSeq: 1\r\nCSeq: 2",
                "Range: npt=now-now",
                "Range: npt=-5-1e309",
                "Range: clock=19700101T000000Z-",
                "Authorization: Digest username=\"",
                "Authorization: Basic !!!!",
                "Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"x\", algorithm=SHA-1",
                "NoColonHeader",
                "X: \u{0}\u{0}",
                "Accept: application/sdp\r\n Folded: yes",
            ]);
            let m = rng.pick(&["OPTIONS", "DESCRIBE", "PLAY", "SETUP", "GET_PARAMETER"]);
            let mut req = format!("{m} {live} RTSP/1.0\r\n{h}\r\n");
            if rng.below(4) == 0 {
                for i in 0..500 {
                    req.push_str(&format!("H{i}: v\r\n"));
                }
            }
            req.push_str("\r\n");
            send(&mut s, req.as_bytes(), &mut sent);
            drain(&mut s, 4096);
        }
        // A bogus ANNOUNCE over the live path (busy) and of broken SDPs.
        11 => {
            let sdp = rng.pick(&[
                "v=0\r\n",
                "garbage",
                "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/0\r\n",
                "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP\r\n",
                "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
            ]);
            let path = if rng.below(2) == 0 {
                live.clone()
            } else {
                format!("{live}-{}", rng.below(50))
            };
            let req = format!(
                "ANNOUNCE {path} RTSP/1.0\r\nCSeq: 11\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
                sdp.len()
            );
            send(&mut s, req.as_bytes(), &mut sent);
            drain(&mut s, 4096);
        }
        // Many small pipelined requests of mixed validity in one write.
        12 => {
            let mut b = Vec::new();
            for i in 0..20 {
                let m = rng.pick(&["OPTIONS", "DESCRIBE", "BOGUS", "PAUSE", "TEARDOWN"]);
                b.extend(format!("{m} {live} RTSP/1.0\r\nCSeq: {i}\r\n\r\n").into_bytes());
                sent += 1;
            }
            let _ = s.write_all(&b);
            drain(&mut s, 1 << 20);
        }
        // Request line of random bytes around valid framing.
        _ => {
            let n = 1 + rng.below(200) as usize;
            let mut b = rng.bytes(n);
            b.retain(|c| *c != b'\n');
            b.extend_from_slice(b" RTSP/1.0\r\nCSeq: 13\r\n\r\n");
            send(&mut s, &b, &mut sent);
            drain(&mut s, 4096);
        }
    }
    // Close in different ways: FIN, RST-ish (drop with unread data), or
    // half-close writing.
    match rng.below(3) {
        0 => {
            let _ = s.shutdown(Shutdown::Write);
            drain(&mut s, 1 << 16);
        }
        1 => {
            let _ = s.shutdown(Shutdown::Both);
        }
        _ => {}
    }
    c.requests.fetch_add(sent, Ordering::Relaxed);
    sent
}

#[test]
fn hostile_requests_and_half_open_connections() {
    let nofile = raise_nofile();
    let dir = test_dir("abuse");
    let mut server = Server::start("");
    let pid = server_pid(&server);
    let fd_limit = max_open_files(pid);
    eprintln!("test process RLIMIT_NOFILE soft={nofile}; server pid {pid} Max open files (soft/hard) = {fd_limit}");
    let addr = server.addr();
    let live = server.url("abuse/cam");

    let _publisher = FfmpegPublisher::start(&media().h264_aac, &live, "tcp", &dir);
    let reader = FfmpegReader::spawn(&live, "tcp", READ_SECS as f64, &dir, None);
    let read_started = Instant::now();

    // The victim: another connection's session (SETUP without PLAY).
    let mut victim = RtspClient::connect(addr).expect("victim connect");
    let (_, controls) = describe(&mut victim, &live);
    let r = victim
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP;unicast;client_port=40000-40001")],
            b"",
        )
        .expect("victim SETUP");
    assert_eq!(r.status, 200, "victim SETUP: {r:?}");
    let victim_session = r.session_id().expect("victim Session");

    std::thread::sleep(Duration::from_secs(2));
    let rss_start = status_kb(pid, "VmRSS");
    let fds_start = open_fds(pid);
    eprintln!("start: VmRSS {rss_start} kB, {fds_start} fds");

    // Probes: a fresh OPTIONS every 500 ms for the whole abuse.
    let stop = Arc::new(AtomicBool::new(false));
    let probe_results: Arc<Mutex<ProbeResults>> = Arc::default();
    let prober = {
        let stop = stop.clone();
        let results = probe_results.clone();
        let url = live.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = probe_options(addr, &url);
                results.lock().unwrap().push(r);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // 1,000 half-open connections: a partial request line each, held open.
    let t = Instant::now();
    let half_open_at = t;
    let mut half_open = Vec::with_capacity(HALF_OPEN);
    let mut half_open_errors = 0;
    for i in 0..HALF_OPEN {
        let from = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % HALF_OPEN_IPS) as u8);
        match connect_from(from, addr) {
            Ok(mut s) => {
                let partial: &[u8] = match i % 4 {
                    0 => b"DESCRIBE rtsp://127.0.0.1/abuse/cam RTS",
                    1 => b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n",
                    2 => b"$\x00\xff\xff\x80",
                    _ => b"",
                };
                if s.write_all(partial).is_err() {
                    half_open_errors += 1;
                }
                half_open.push(s);
            }
            Err(_) => half_open_errors += 1,
        }
    }
    eprintln!(
        "{} half-open connections in {:?} ({half_open_errors} errors); server fds {}",
        half_open.len(),
        t.elapsed(),
        open_fds(pid)
    );
    assert_eq!(
        half_open_errors, 0,
        "could not open {HALF_OPEN} half-open connections"
    );
    // A new client is still served while they are held.
    let r = probe_options(addr, &live);
    assert!(
        matches!(r, Ok((200, d)) if d < Duration::from_secs(2)),
        "OPTIONS while {HALF_OPEN} half-open connections are held: {r:?}"
    );

    // Hostile senders.
    let counters = Arc::new(Counters::default());
    let target = Arc::new(Target {
        addr,
        live: live.clone(),
        victim_session: victim_session.clone(),
    });
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    let senders: Vec<_> = (0..THREADS)
        .map(|i| {
            let c = counters.clone();
            let target = target.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i + 1) * 0x1234_5678_9ABC_DEF1));
                let quota = HOSTILE_REQUESTS / THREADS + 1;
                let mut sent = 0;
                while sent < quota && Instant::now() < deadline {
                    sent += hostile_batch(&mut rng, &target, &c);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread panicked");
    }
    let abuse_time = t.elapsed();
    let requests = counters.requests.load(Ordering::Relaxed);
    eprintln!(
        "{requests} hostile requests over {} connections in {abuse_time:?} ({} connect errors); \
         1-byte-write requests answered {}/{}; error responses to bad Content-Length {}",
        counters.connections.load(Ordering::Relaxed),
        counters.connect_errors.load(Ordering::Relaxed),
        counters.byte_by_byte_ok.load(Ordering::Relaxed),
        counters.byte_by_byte_total.load(Ordering::Relaxed),
        counters.error_responses.load(Ordering::Relaxed),
    );

    // Still serving, with the half-open connections still held.
    let how = exit_info(pid);
    assert!(
        server.is_running(),
        "server died during the abuse ({how})\n{}",
        tail(&server.log(), 40)
    );
    let r = probe_options(addr, &live);
    assert!(matches!(r, Ok((200, _))), "OPTIONS after the abuse: {r:?}");
    let rss_end = status_kb(pid, "VmRSS");
    let hwm = status_kb(pid, "VmHWM");
    let fds_end = open_fds(pid);
    eprintln!(
        "after abuse (half-open still held): VmRSS {rss_end} kB (peak {hwm} kB), {fds_end} fds"
    );
    // Half-open connections with a partial request are closed by the
    // server after `[limits] request_timeout` (10 s, with a 408), silent
    // ones after `idle_timeout` (60 s); either way is fine here.
    let closed = half_open
        .iter_mut()
        .map(closed_by_server)
        .filter(|c| *c)
        .count();
    eprintln!(
        "{closed} of {} half-open connections closed by the server after {:?}",
        half_open.len(),
        half_open_at.elapsed()
    );
    drop(half_open);

    // Let the reader finish.
    let report = reader.finish_at(read_started + Duration::from_secs(READ_SECS + 15));
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober");
    let probes = probe_results.lock().unwrap();
    let probe_failures: Vec<_> = probes
        .iter()
        .filter(|r| !matches!(r, Ok((200, d)) if *d < Duration::from_secs(2)))
        .collect();
    let slowest = probes
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(_, d)| *d))
        .max()
        .unwrap_or_default();
    eprintln!(
        "probes: {} ok of {}, slowest {slowest:?}; reader decoded {} video frames",
        probes.len() - probe_failures.len(),
        probes.len(),
        report.video_frames
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss_final = status_kb(pid, "VmRSS");
    eprintln!("final: VmRSS {rss_final} kB, {} fds", open_fds(pid));

    let how = exit_info(pid);
    assert!(
        server.is_running(),
        "server died ({how})\n{}",
        tail(&server.log(), 40)
    );
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "server panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        requests >= HOSTILE_REQUESTS,
        "only {requests} hostile requests sent in {abuse_time:?}"
    );
    assert_eq!(
        counters.connect_errors.load(Ordering::Relaxed),
        0,
        "connections refused during the abuse"
    );
    let bb_total = counters.byte_by_byte_total.load(Ordering::Relaxed);
    let bb_ok = counters.byte_by_byte_ok.load(Ordering::Relaxed);
    assert!(
        bb_ok * 100 >= bb_total * 95,
        "requests written byte by byte answered {bb_ok}/{bb_total}"
    );
    assert!(
        probe_failures.is_empty(),
        "{} of {} OPTIONS probes failed or took ≥ 2 s: {:?}",
        probe_failures.len(),
        probes.len(),
        probe_failures.iter().take(5).collect::<Vec<_>>()
    );
    let min = min_frames(Duration::from_secs(READ_SECS), 0.8);
    assert!(
        report.video_frames >= min,
        "reader decoded {} video frames during the abuse, want >= {min}\n{}",
        report.video_frames,
        report.tail()
    );
    assert!(
        rss_end < 200 * 1024 && rss_final < 200 * 1024,
        "server RSS {rss_end} kB / {rss_final} kB, want < 200 MB"
    );
    assert!(
        rss_end.saturating_sub(rss_start) < 100 * 1024,
        "server RSS grew from {rss_start} kB to {rss_end} kB"
    );
    // Held connections are released once the clients are gone.
    let fds_after = wait_for(Duration::from_secs(5), || {
        let n = open_fds(pid);
        (n <= fds_start + 20).then_some(n)
    });
    assert!(
        fds_after.is_some(),
        "server still has {} fds open after the clients left (started with {fds_start})",
        open_fds(pid)
    );
    drop(victim);
}
