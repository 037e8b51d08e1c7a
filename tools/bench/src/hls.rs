//! `sluice-bench hls`: N LL-HLS clients from one process against one path, each doing what
//! hls.js does at the live edge: the playlist once, `init.mp4` once, then in a loop a
//! blocking playlist reload for the next part (`_HLS_msn`, `_HLS_part`) and a GET of every
//! part it lists that the client has not fetched yet. One keep-alive HTTP/1.1 connection per
//! client (reopened on error). Samples the server process over the window and prints one
//! JSON line: server CPU (total and per client), memory per client, parts fetched against
//! those expected, misses (a part or playlist answered with anything but 200, or not at
//! all), blocking-reload and part times.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Options of one run.
#[derive(Debug, Clone)]
pub(crate) struct HlsOptions {
    /// `http://host:port/<path>/index.m3u8`.
    pub url: String,
    /// Clients.
    pub clients: usize,
    /// Measured window, once every client had its chance to start.
    pub duration: Duration,
    /// Server process to sample.
    pub server_pid: Option<u32>,
    /// Clients started at once (then 50 ms apart).
    pub concurrency: usize,
}

/// Every client's figures, summed.
#[derive(Debug, Default)]
struct Counts {
    started: AtomicU64,
    playlists: AtomicU64,
    parts: AtomicU64,
    part_bytes: AtomicU64,
    /// Answers other than 200, by kind.
    playlist_misses: AtomicU64,
    part_misses: AtomicU64,
    /// Connections that failed (refused, reset, timed out) and were reopened.
    reconnects: AtomicU64,
    /// Part duration announced (seconds × 1000), for the parts expected.
    part_target_ms: AtomicU64,
    /// Milliseconds a blocking reload was held, and a part GET took (sampled).
    held_ms: Mutex<Vec<u32>>,
    part_ms: Mutex<Vec<u32>>,
}

/// An HTTP/1.1 answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(64 << 10),
        }
    }

    /// GET `path`, reconnecting once if the kept connection was closed.
    async fn get(&mut self, path: &str, counts: &Counts) -> anyhow::Result<Answer> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.addr))
                    .await
                    .context("connect timeout")??;
                s.set_nodelay(true)?;
                self.stream = Some(s);
                self.buf.clear();
            }
            match tokio::time::timeout(Duration::from_secs(15), self.exchange(path)).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) if attempt == 0 => {
                    counts.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.stream = None;
                    let _ = e;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.stream = None;
                    return Err(anyhow!("no answer within 15 s to {path}"));
                }
            }
        }
        Err(anyhow!("unreachable"))
    }

    async fn exchange(&mut self, path: &str) -> anyhow::Result<Answer> {
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        s.write_all(req.as_bytes()).await?;
        // Head.
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(anyhow!("connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .ok_or_else(|| anyhow!("no Content-Length in {head:?}"))?;
        while self.buf.len() < head_end + len {
            let mut chunk = [0u8; 64 << 10];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(anyhow!("connection closed in a body"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        if head.to_ascii_lowercase().contains("connection: close") {
            self.stream = None;
        }
        Ok(Answer { status, body })
    }
}

/// What a client needs of a playlist: the next part to block for, the parts listed, the
/// part target.
#[derive(Debug, Default, PartialEq)]
struct Listing {
    /// Media sequence number of the segment being built.
    msn: u64,
    /// Parts of that segment listed so far.
    parts_in_current: u64,
    /// Every part URI listed, oldest first.
    parts: Vec<String>,
    part_target: f64,
}

fn parse_playlist(text: &str) -> Listing {
    let mut l = Listing::default();
    let mut msn = 0u64;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS=") {
            msn += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART-INF:PART-TARGET=") {
            l.part_target = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            if let Some(uri) = v.split("URI=\"").nth(1).and_then(|r| r.split('"').next()) {
                l.parts.push(uri.to_owned());
                l.parts_in_current += 1;
            }
        } else if line.starts_with("#EXTINF:") {
            msn += 1;
            l.parts_in_current = 0;
        }
    }
    l.msn = msn;
    l
}

fn sample(v: &Mutex<Vec<u32>>, ms: u128) {
    if let Ok(mut v) = v.lock() {
        if v.len() < 200_000 {
            v.push(ms.min(u128::from(u32::MAX)) as u32);
        }
    }
}

async fn client(
    addr: SocketAddr,
    base: String,
    counts: Arc<Counts>,
    measuring: Arc<AtomicU64>,
    until: Instant,
) -> anyhow::Result<()> {
    let mut conn = Conn::new(addr);
    let playlist = format!("{base}index.m3u8");
    let first = conn.get(&playlist, &counts).await?;
    if first.status != 200 {
        return Err(anyhow!("first playlist: {}", first.status));
    }
    let init = conn.get(&format!("{base}init.mp4"), &counts).await?;
    if init.status != 200 {
        return Err(anyhow!("init.mp4: {}", init.status));
    }
    counts.started.fetch_add(1, Ordering::Relaxed);
    let mut listing = parse_playlist(&String::from_utf8_lossy(&first.body));
    counts
        .part_target_ms
        .store((listing.part_target * 1000.0) as u64, Ordering::Relaxed);
    // Start at the live edge: the parts listed now count as fetched.
    let mut fetched: VecDeque<String> = listing.parts.iter().cloned().collect();
    while Instant::now() < until {
        let on = measuring.load(Ordering::Relaxed) == 1;
        // Blocking reload for the next part.
        let q = format!(
            "{playlist}?_HLS_msn={}&_HLS_part={}",
            listing.msn, listing.parts_in_current
        );
        let t = Instant::now();
        let a = match conn.get(&q, &counts).await {
            Ok(a) => a,
            Err(_) => {
                if on {
                    counts.playlist_misses.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if on {
            counts.playlists.fetch_add(1, Ordering::Relaxed);
            sample(&counts.held_ms, t.elapsed().as_millis());
        }
        if a.status != 200 {
            if on {
                counts.playlist_misses.fetch_add(1, Ordering::Relaxed);
            }
            // 400 (too far ahead) or 503: start again from a plain reload.
            let plain = conn.get(&playlist, &counts).await?;
            listing = parse_playlist(&String::from_utf8_lossy(&plain.body));
            continue;
        }
        listing = parse_playlist(&String::from_utf8_lossy(&a.body));
        let new: Vec<String> = listing
            .parts
            .iter()
            .filter(|p| !fetched.contains(p))
            .cloned()
            .collect();
        for p in new {
            let t = Instant::now();
            let r = conn.get(&format!("{base}{p}"), &counts).await;
            let on = measuring.load(Ordering::Relaxed) == 1;
            match r {
                Ok(a) if a.status == 200 => {
                    if on {
                        counts.parts.fetch_add(1, Ordering::Relaxed);
                        counts
                            .part_bytes
                            .fetch_add(a.body.len() as u64, Ordering::Relaxed);
                        sample(&counts.part_ms, t.elapsed().as_millis());
                    }
                }
                _ => {
                    if on {
                        counts.part_misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            fetched.push_back(p);
            if fetched.len() > 256 {
                fetched.pop_front();
            }
        }
    }
    Ok(())
}

fn percentile(v: &Mutex<Vec<u32>>, p: f64) -> Option<u32> {
    let mut v = v.lock().ok()?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v.get(i).copied()
}

fn split_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("the URL must be http://host:port/<path>/index.m3u8"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host.parse().context("host:port")?;
    let base = path
        .strip_suffix("index.m3u8")
        .ok_or_else(|| anyhow!("the URL must end in index.m3u8"))?;
    Ok((addr, format!("/{base}")))
}

/// Runs the clients and returns the report.
pub(crate) fn run(opts: HlsOptions) -> anyhow::Result<serde_json::Value> {
    let (addr, base) = split_url(&opts.url)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pid = opts.server_pid.map(|p| p.to_string());
    let before = pid.as_deref().and_then(crate::load::proc_sample);
    let counts = Arc::new(Counts::default());
    let measuring = Arc::new(AtomicU64::new(0));
    let batches = (opts.clients / opts.concurrency.max(1)) as u64;
    let window_start =
        Instant::now() + Duration::from_millis(50 * batches) + Duration::from_secs(3);
    let until = window_start + opts.duration;
    let errors = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..opts.clients {
            if i > 0 && i % opts.concurrency.max(1) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (counts, base, errors, measuring) =
                (counts.clone(), base.clone(), errors.clone(), measuring.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = client(addr, base, counts, measuring, until).await {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("hls client: {e:#}");
                    }
                }
            }));
        }
        tokio::time::sleep_until(window_start.into()).await;
        measuring.store(1, Ordering::Relaxed);
        let s0 = pid.as_deref().and_then(crate::load::proc_sample);
        let t0 = Instant::now();
        tokio::time::sleep_until(until.into()).await;
        measuring.store(0, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let s1 = pid.as_deref().and_then(crate::load::proc_sample);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        let started = counts.started.load(Ordering::Relaxed);
        let part_target = counts.part_target_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let expected = if part_target > 0.0 {
            secs / part_target * started as f64
        } else {
            0.0
        };
        let parts = counts.parts.load(Ordering::Relaxed);
        let cpu = match (s0, s1) {
            (Some((c0, _)), Some((c1, _))) => Some((c1 - c0) / secs * 100.0),
            _ => None,
        };
        let rss_per_client_kib = match (before, s1) {
            (Some((_, r0)), Some((_, r1))) if started > 0 => {
                Some((r1 - r0) * 1024.0 / started as f64)
            }
            _ => None,
        };
        Ok(serde_json::json!({
            "clients": opts.clients,
            "started": started,
            "errors": errors.load(Ordering::Relaxed),
            "window_s": secs,
            "part_target_s": part_target,
            "parts": parts,
            "parts_expected": expected.round(),
            "parts_received_pct": if expected > 0.0 { parts as f64 / expected * 100.0 } else { 0.0 },
            "playlists": counts.playlists.load(Ordering::Relaxed),
            "playlist_misses": counts.playlist_misses.load(Ordering::Relaxed),
            "part_misses": counts.part_misses.load(Ordering::Relaxed),
            "reconnects": counts.reconnects.load(Ordering::Relaxed),
            "mbit_per_s_received": counts.part_bytes.load(Ordering::Relaxed) as f64 * 8.0 / secs / 1e6,
            "held_ms_p50": percentile(&counts.held_ms, 0.5),
            "held_ms_p99": percentile(&counts.held_ms, 0.99),
            "part_ms_p50": percentile(&counts.part_ms, 0.5),
            "part_ms_p99": percentile(&counts.part_ms, 0.99),
            "server_cpu_pct_of_core": cpu,
            "server_cpu_pct_per_client": cpu.map(|c| c / started.max(1) as f64),
            "server_rss_mib": s1.map(|s| s.1),
            "server_rss_kib_per_client": rss_per_client_kib,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_part_to_block_for_follows_the_playlist() {
        let text = "#EXTM3U\n#EXT-X-PART-INF:PART-TARGET=0.20000\n#EXT-X-MEDIA-SEQUENCE:4\n\
            #EXTINF:1.0,\nseg4.m4s\n#EXT-X-PART:DURATION=0.2,URI=\"part20.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.2,URI=\"part21.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part22.m4s\"\n";
        let l = parse_playlist(text);
        assert_eq!((l.msn, l.parts_in_current), (5, 2));
        assert_eq!(l.parts, ["part20.m4s", "part21.m4s"]);
        assert!((l.part_target - 0.2).abs() < 1e-9);
        assert_eq!(
            split_url("http://127.0.0.1:1/a/b/index.m3u8").unwrap().1,
            "/a/b/"
        );
    }
}
