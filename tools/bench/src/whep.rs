//! `sluice-bench whep`: N WHEP viewers from one process, each a str0m peer with its own
//! UDP socket (real ICE, DTLS and SRTP), against one path; samples the server process
//! over the window and prints one JSON line: server CPU (total and per viewer), memory
//! per viewer, frames received against those expected, and start-up times.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Options of one run.
#[derive(Debug, Clone)]
pub(crate) struct WhepOptions {
    /// `http://host:port/<path>/whep`.
    pub url: String,
    /// Viewers.
    pub viewers: usize,
    /// Measured window, once every viewer had its chance to connect.
    pub duration: Duration,
    /// Server process to sample.
    pub server_pid: Option<u32>,
    /// The stream's video frame rate (for the frames expected).
    pub fps: f64,
    /// Sessions set up at once.
    pub concurrency: usize,
}

/// One viewer's figures.
#[derive(Debug, Default)]
struct Counts {
    connected: AtomicU64,
    video_frames: AtomicU64,
    audio_frames: AtomicU64,
    /// Video frames after a gap (lost packets str0m could not recover in time).
    discontinuities: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds from POST to the first video frame, per viewer (0: none yet).
    first_frame_ms: std::sync::Mutex<Vec<u64>>,
}

fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("the URL must be http://host:port/<path>/whep"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host.parse().context("host:port")?;
    Ok((addr, format!("/{path}")))
}

async fn post_offer(addr: SocketAddr, path: &str, offer: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 201") {
        return Err(anyhow!("{}", head.lines().next().unwrap_or("no status")));
    }
    Ok(body.to_owned())
}

async fn viewer(
    addr: SocketAddr,
    path: String,
    counts: Arc<Counts>,
    until: Instant,
    crypto: Arc<str0m::crypto::CryptoProvider>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .set_crypto_provider(crypto)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut api = rtc.sdp_api();
    let video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().ok_or_else(|| anyhow!("no offer"))?;
    let started = Instant::now();
    let answer = post_offer(addr, &path, &offer.to_sdp_string()).await?;
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
    let mut buf = vec![0u8; 2048];
    let mut first = true;
    loop {
        let timeout = loop {
            match rtc.poll_output()? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(Event::Connected) => {
                    counts.connected.fetch_add(1, Ordering::Relaxed);
                }
                Output::Event(Event::IceConnectionStateChange(
                    IceConnectionState::Disconnected,
                )) => {
                    return Ok(());
                }
                Output::Event(Event::MediaData(d)) => {
                    counts
                        .bytes
                        .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    if d.mid == video {
                        counts.video_frames.fetch_add(1, Ordering::Relaxed);
                        if !d.contiguous {
                            counts.discontinuities.fetch_add(1, Ordering::Relaxed);
                        }
                        if first {
                            first = false;
                            if let Ok(mut v) = counts.first_frame_ms.lock() {
                                v.push(started.elapsed().as_millis() as u64);
                            }
                        }
                    } else {
                        counts.audio_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Event(_) => {}
            }
        };
        if Instant::now() >= until {
            return Ok(());
        }
        let wait = timeout.min(until);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                if let Some(data) = buf.get(..n) {
                    if let Ok(r) = Receive::new(Protocol::Udp, from, local, data) {
                        rtc.handle_input(Input::Receive(Instant::now(), r))?;
                    }
                }
            }
            _ = tokio::time::sleep_until(wait.into()) => {
                rtc.handle_input(Input::Timeout(Instant::now()))?;
            }
        }
    }
}

fn percentile(v: &mut [u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v.get(i).copied()
}

/// Runs the viewers and prints the report.
pub(crate) fn run(opts: WhepOptions) -> anyhow::Result<serde_json::Value> {
    let (addr, path) = split_url(&opts.url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let crypto = Arc::new(str0m::crypto::from_feature_flags());
    let pid = opts.server_pid.map(|p| p.to_string());
    let before = pid.as_deref().and_then(crate::load::proc_sample);
    let counts = Arc::new(Counts::default());
    // Set-up ramp: `concurrency` POSTs at a time, 50 ms apart, then 3 s to settle.
    let batches = (opts.viewers / opts.concurrency.max(1)) as u64;
    let window_start =
        Instant::now() + Duration::from_millis(50 * batches) + Duration::from_secs(3);
    let until = window_start + opts.duration;
    let errors = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..opts.viewers {
            if i > 0 && i % opts.concurrency.max(1) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (counts, path, crypto, errors) =
                (counts.clone(), path.clone(), crypto.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = viewer(addr, path, counts, until, crypto).await {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("viewer: {e:#}");
                    }
                }
            }));
        }
        // The window: after the ramp, every viewer playing.
        tokio::time::sleep_until(window_start.into()).await;
        let start_frames = counts.video_frames.load(Ordering::Relaxed);
        let start_disc = counts.discontinuities.load(Ordering::Relaxed);
        let start_bytes = counts.bytes.load(Ordering::Relaxed);
        let s0 = pid.as_deref().and_then(crate::load::proc_sample);
        let t0 = Instant::now();
        tokio::time::sleep_until(until.into()).await;
        let secs = t0.elapsed().as_secs_f64();
        let s1 = pid.as_deref().and_then(crate::load::proc_sample);
        let frames = counts.video_frames.load(Ordering::Relaxed) - start_frames;
        let disc = counts.discontinuities.load(Ordering::Relaxed) - start_disc;
        let bytes = counts.bytes.load(Ordering::Relaxed) - start_bytes;
        for t in tasks {
            let _ = t.await;
        }
        let connected = counts.connected.load(Ordering::Relaxed);
        let expected = opts.fps * secs * connected as f64;
        let mut firsts = counts
            .first_frame_ms
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let cpu = match (s0, s1) {
            (Some((c0, _)), Some((c1, _))) => Some((c1 - c0) / secs * 100.0),
            _ => None,
        };
        let rss_per_viewer_kib = match (before, s1) {
            (Some((_, r0)), Some((_, r1))) if connected > 0 => Some((r1 - r0) * 1024.0 / connected as f64),
            _ => None,
        };
        Ok(serde_json::json!({
            "viewers": opts.viewers,
            "connected": connected,
            "errors": errors.load(Ordering::Relaxed),
            "window_s": secs,
            "video_frames": frames,
            "video_frames_expected": expected.round(),
            "frames_received_pct": if expected > 0.0 { frames as f64 / expected * 100.0 } else { 0.0 },
            "discontinuities": disc,
            "mbit_per_s_received": bytes as f64 * 8.0 / secs / 1e6,
            "server_cpu_pct_of_core": cpu,
            "server_cpu_pct_per_viewer": cpu.map(|c| c / connected.max(1) as f64),
            "server_rss_mib": s1.map(|s| s.1),
            "server_rss_kib_per_viewer": rss_per_viewer_kib,
            "first_frame_ms_p50": percentile(&mut firsts, 0.5),
            "first_frame_ms_p95": percentile(&mut firsts, 0.95),
        }))
    })
}
