//! `sluice-bench`: the fan-out load client and the kernel floor that `bench/fanout.sh` runs
//! (see bench/README.md). A tool of the repository, not part of the product: the `sluice`
//! binary and the server crates do not depend on it.

// The doc comments on the argument types are clap's `--help` text, shown verbatim: URL
// patterns such as `rtsp://host[:port]/path` are not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

mod floor;
mod hls;
mod load;
mod whep;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Sluice's benchmark tools: a fan-out load client and the kernel's floor for the same fan-out.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fan-out load: N reader sessions from one process; prints one JSON line of totals and percentiles.
    Load(LoadArgs),
    /// Kernel floor: the CPU per Gbit/s a sender pays on loopback for nothing but the send
    /// calls of a fan-out (sendmmsg + GSO, or a writev per reader per frame) to N local
    /// receivers; prints one JSON line.
    Floor(FloorArgs),
    /// WHEP load: N WebRTC viewers (str0m peers: real ICE, DTLS, SRTP) of one path;
    /// prints one JSON line: server CPU and memory per viewer, frames received.
    Whep(WhepArgs),
    /// LL-HLS load: N clients doing hls.js's live-edge loop (blocking playlist reloads,
    /// part GETs) on one path; prints one JSON line: server CPU and memory per client,
    /// parts fetched, misses.
    Hls(HlsArgs),
}

/// Options of `sluice-bench hls`.
#[derive(Debug, clap::Args)]
struct HlsArgs {
    /// `http://host:port/<path>/index.m3u8`
    url: String,
    /// Clients.
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// Measured window once every client has started: seconds or e.g. 60s.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    duration: std::time::Duration,
    /// Server process to sample (utime+stime, VmRSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Clients started at once (then 50 ms apart).
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
}

/// Options of `sluice-bench whep`.
#[derive(Debug, clap::Args)]
struct WhepArgs {
    /// `http://host:port/<path>/whep`
    url: String,
    /// Viewers.
    #[arg(long, default_value_t = 200)]
    viewers: usize,
    /// Measured window once every viewer is up: seconds or e.g. 20s.
    #[arg(long, default_value = "20", value_parser = parse_secs)]
    duration: std::time::Duration,
    /// Server process to sample (utime+stime, VmRSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The stream's video frame rate.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Sessions set up at once.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
}

/// Options of `sluice-bench load`.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// rtsp://host[:port]/path
    url: String,
    /// Reader sessions.
    #[arg(long, default_value_t = 100)]
    readers: usize,
    /// RTP transport.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// Measurement window once all readers are playing: seconds or e.g. 20s, 1m.
    #[arg(long, default_value = "20", value_parser = parse_secs)]
    duration: std::time::Duration,
    /// Handshakes in flight at once (connect storm).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Worker threads of the handshakes' runtime (1: current-thread runtime); playing
    /// readers are read on one media thread of their own.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server process to sample (utime+stime, VmRSS) over the window.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Label copied into the JSON.
    #[arg(long)]
    label: Option<String>,
    /// Time for one reader's handshake (and each request).
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    handshake_timeout: std::time::Duration,
    /// First local UDP port (each reader takes 2 per track).
    #[arg(long, default_value_t = 10_000)]
    udp_port_base: u16,
    /// Start the window at this Unix time (seconds) instead of after the ramp (to align processes).
    #[arg(long)]
    window_start_unix: Option<f64>,
    /// Add every reader's samples to the JSON (to merge several processes' reports).
    #[arg(long)]
    samples: bool,
    /// After reading media, wait this many ms before reading again (0: read at once; fewer
    /// wake-ups per reader, but on loopback the fan-out already batches readers per wake-up).
    #[arg(long, default_value_t = 0)]
    rest_ms: u64,
    /// Do not ask the server for its ingest → egress latency (for all but one of several
    /// load processes measuring one window). No server answers the question today:
    /// `egress_latency_us` is null until the metrics endpoint exports the histogram.
    #[arg(long)]
    no_egress_latency: bool,
}

/// Options of `sluice-bench floor`.
#[derive(Debug, clap::Args)]
struct FloorArgs {
    /// Receivers.
    #[arg(long, default_value_t = 100)]
    readers: usize,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// Stream shape, as bench/fanout.sh's streams reach readers.
    #[arg(long, value_enum, default_value_t = FloorStream::Hi)]
    stream: FloorStream,
    /// Measured window (after a 2 s warm-up): seconds or e.g. 10s.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: std::time::Duration,
    /// Sender threads, each serving its share of the readers (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// TCP only: make the writes through io_uring (sockets registered, 64 writes per
    /// submission) instead of one `send` call each, to see what batching them saves.
    #[arg(long)]
    io_uring: bool,
    /// Label copied into the JSON.
    #[arg(long)]
    label: Option<String>,
}

/// The stream shapes of `sluice-bench floor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FloorStream {
    /// 4 Mb/s: 30 frames/s of 12 × 1,400-byte packets + 17 audio packets/s.
    Hi,
    /// 200 kb/s: 30 one-packet frames/s of 700 bytes + 4 audio packets/s.
    Lo,
}

/// RTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tcp,
    Udp,
}

/// "20" (seconds) or a humantime duration ("20s", "1m").
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(std::time::Duration::from_secs_f64(v)),
        _ => humantime::parse_duration(s).map_err(|e| e.to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => run_load(args),
        Command::Floor(args) => run_floor(args),
        Command::Whep(a) => {
            let report = whep::run(whep::WhepOptions {
                url: a.url,
                viewers: a.viewers,
                duration: a.duration,
                server_pid: a.server_pid,
                fps: a.fps,
                concurrency: a.concurrency,
            })?;
            println!("{report}");
            Ok(())
        }
        Command::Hls(a) => {
            let report = hls::run(hls::HlsOptions {
                url: a.url,
                clients: a.clients,
                duration: a.duration,
                server_pid: a.server_pid,
                concurrency: a.concurrency,
            })?;
            println!("{report}");
            Ok(())
        }
    }
}

/// `sluice-bench floor`.
fn run_floor(args: FloorArgs) -> anyhow::Result<()> {
    let FloorArgs {
        readers,
        transport,
        stream,
        duration,
        threads,
        io_uring,
        label,
    } = args;
    let report = floor::run(floor::FloorOptions {
        readers,
        udp: transport == Transport::Udp,
        shape: match stream {
            FloorStream::Hi => floor::Shape::Hi,
            FloorStream::Lo => floor::Shape::Lo,
        },
        duration,
        threads: threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        io_uring,
        label,
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `sluice-bench load`.
fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let LoadArgs {
        url,
        readers,
        transport,
        duration,
        concurrency,
        threads,
        server_pid,
        label,
        handshake_timeout,
        udp_port_base,
        window_start_unix,
        samples,
        rest_ms,
        // Nothing is asked of the server any more (see the flag's help).
        no_egress_latency: _,
    } = args;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("warn"))
        .context("invalid RUST_LOG")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Small on purpose: the load client must cost far less than the server it measures.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    let opts = load::LoadOptions {
        readers,
        udp: transport == Transport::Udp,
        duration,
        concurrency,
        handshake_timeout,
        udp_port_base,
        server_pid,
        label,
        window_start_unix,
        samples,
        rest: std::time::Duration::from_millis(rest_ms),
        ..load::LoadOptions::new(url)
    };
    let report = runtime.block_on(load::run(opts, |line| eprintln!("{line}")))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
