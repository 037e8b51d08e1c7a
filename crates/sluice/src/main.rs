//! `sluice`: the RTSP media server's command-line entry point.

// The doc comments on the argument types are clap's `--help` text, shown verbatim: URL
// patterns such as `rtsp://[user:pass@]host[:port]/path` are not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_server::{Config, Server};
use tracing_subscriber::EnvFilter;

/// Sluice: an RTSP media server that relays live streams from publishers to many readers.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (built-in defaults when no --config is given). Values layer as
    /// defaults < file < SLUICE_… environment variables (nested with __, e.g.
    /// SLUICE_RTSP__LISTEN=127.0.0.1:9554) < --set flags.
    Serve {
        /// TOML configuration file; unknown keys are rejected.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override one key, e.g. --set rtsp.listen=127.0.0.1:9554 (repeatable; TOML
        /// dotted keys, TOML values or plain text).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Check a configuration file: exit 0 when valid, 1 with FILE:LINE:COLUMN: MESSAGE.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Show what a stream offers: tracks, codecs, resolution or sample rate, SDP.
    Probe {
        /// rtsp://[user:pass@]host[:port]/path
        url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Record a stream to an MP4 file (fragmented; playable even if interrupted).
    Record {
        /// rtsp://[user:pass@]host[:port]/path
        url: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Stop after this much media, e.g. 30s or 5m (default: until the stream ends or Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// RTP transport.
        #[arg(long, value_enum, default_value_t = Transport::Tcp)]
        transport: Transport,
        /// Media time per part, e.g. 1s or 500ms: parts are written (and synced) on time,
        /// so an interruption loses at most about this much.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        part_duration: std::time::Duration,
        /// When to sync the file to disk: after each part, once at the end, or never.
        #[arg(long, value_enum, default_value_t = FsyncMode::Part)]
        fsync: FsyncMode,
    },
    /// Publish a file to an RTSP server (ANNOUNCE/RECORD) at real-time pace.
    Publish {
        /// MP4/MOV/MKV/WebM file.
        file: PathBuf,
        /// rtsp://host[:port]/path to publish to.
        url: String,
        /// Start again at the end, forever.
        #[arg(long = "loop")]
        looping: bool,
        /// RTP transport.
        #[arg(long, value_enum, default_value_t = Transport::Tcp)]
        transport: Transport,
    },
    /// Manage a server's recordings directory.
    Recordings {
        #[command(subcommand)]
        action: RecordingsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RecordingsCommand {
    /// Rebuild DIR's index (index.redb) from its segment files alone (run it while no
    /// server records into DIR): damaged tails are truncated, locks are kept.
    Reindex {
        /// The record directory ([record] dir).
        dir: PathBuf,
        /// The [record] path_template that named the files.
        #[arg(long, default_value = sluice_archive::DEFAULT_TEMPLATE)]
        template: String,
    },
}

/// RTP transport for client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Tcp,
    Udp,
}

/// When `sluice record` syncs its file to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FsyncMode {
    /// After each part (a power cut loses at most the part being written).
    Part,
    /// Once, when the file is complete.
    Segment,
    /// Never.
    Off,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, set } => serve(config, set),
        Command::CheckConfig { file } => check_config(&file),
        Command::Probe { url, json } => client_runtime()?.block_on(probe(url, json)),
        Command::Record {
            url,
            output,
            duration,
            transport,
            part_duration,
            fsync,
        } => {
            let fsync = match fsync {
                FsyncMode::Part => sluice_client::record::Fsync::Part,
                FsyncMode::Segment => sluice_client::record::Fsync::Segment,
                FsyncMode::Off => sluice_client::record::Fsync::Off,
            };
            client_runtime()?.block_on(record(
                url,
                output,
                duration,
                transport,
                part_duration,
                fsync,
            ))
        }
        Command::Publish {
            file,
            url,
            looping,
            transport,
        } => client_runtime()?.block_on(publish(file, url, looping, transport)),
        Command::Recordings {
            action: RecordingsCommand::Reindex { dir, template },
        } => reindex(&dir, &template),
    }
}

/// `sluice recordings reindex DIR`.
fn reindex(dir: &std::path::Path, template: &str) -> anyhow::Result<()> {
    let template = sluice_archive::PathTemplate::parse(template)?;
    let started = std::time::Instant::now();
    let report = sluice_archive::reindex_dir(dir, &template)
        .with_context(|| format!("reindexing {}", dir.display()))?;
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.path, s.reason);
    }
    println!(
        "{}: {} segments of {} paths indexed ({} truncated after a damaged tail, {} skipped, {} other files) in {:.1?}",
        dir.display(),
        report.segments,
        report.streams,
        report.recovered,
        report.skipped.len(),
        report.ignored,
        started.elapsed()
    );
    Ok(())
}

/// Runtime and logging (warnings to stderr) for the client commands.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("warn,mp4_atom=error"))
        .context("invalid RUST_LOG")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn probe(url: String, json: bool) -> anyhow::Result<()> {
    let report = sluice_client::probe::probe(&url, false, std::time::Duration::from_secs(10))
        .await
        .with_context(|| format!("probing {}", sluice_client::probe::redact(&url)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// Writes a progress line: rewritten in place on a terminal, one line each 5 s otherwise.
fn progress_line(line: &str, last_plain: &mut std::time::Instant) {
    use std::io::Write;
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{line}\x1b[K");
    } else if last_plain.elapsed() >= std::time::Duration::from_secs(5) {
        *last_plain = std::time::Instant::now();
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn record(
    url: String,
    output: PathBuf,
    duration: Option<std::time::Duration>,
    transport: Transport,
    part_duration: std::time::Duration,
    fsync: sluice_client::record::Fsync,
) -> anyhow::Result<()> {
    let opts = sluice_client::record::RecordOptions {
        url: url.clone(),
        output: output.clone(),
        duration,
        udp: transport == Transport::Udp,
        part_duration,
        fsync,
    };
    let mut last = std::time::Instant::now();
    let stats = sluice_client::record::record(opts, ctrl_c(), |s| {
        let secs = s.duration.as_secs_f64();
        let mbit = if s.elapsed.as_secs_f64() > 0.0 {
            s.bytes as f64 * 8.0 / s.elapsed.as_secs_f64() / 1e6
        } else {
            0.0
        };
        progress_line(
            &format!(
                "recording {}: {secs:.1} s, {:.2} MB, {mbit:.2} Mbit/s, {} packets, {} lost",
                output.display(),
                s.bytes as f64 / 1e6,
                s.packets,
                s.lost
            ),
            &mut last,
        );
    })
    .await
    .with_context(|| format!("recording {}", sluice_client::probe::redact(&url)))?;
    eprintln!(
        "\nwrote {}: {:.1} s, {} bytes, {} packets lost",
        output.display(),
        stats.duration.as_secs_f64(),
        stats.bytes,
        stats.lost
    );
    Ok(())
}

async fn publish(
    file: PathBuf,
    url: String,
    looping: bool,
    transport: Transport,
) -> anyhow::Result<()> {
    let opts = sluice_client::publish::PublishOptions {
        file: file.clone(),
        url: url.clone(),
        looping,
        udp: transport == Transport::Udp,
    };
    let mut last = std::time::Instant::now();
    let stats = sluice_client::publish::publish(opts, ctrl_c(), |s| {
        progress_line(
            &format!(
                "publishing {}: {:.1} s, {} packets, {:.2} MB, {} loops",
                file.display(),
                s.duration.as_secs_f64(),
                s.packets,
                s.bytes as f64 / 1e6,
                s.loops
            ),
            &mut last,
        );
    })
    .await
    .with_context(|| format!("publishing to {}", sluice_client::probe::redact(&url)))?;
    eprintln!(
        "\npublished {:.1} s of {} ({} packets)",
        stats.duration.as_secs_f64(),
        file.display(),
        stats.packets
    );
    Ok(())
}

/// `sluice check-config FILE`: the exit code says whether `FILE` is valid; a problem is
/// printed as `FILE:LINE:COLUMN: MESSAGE` (the format editors and CI annotate).
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}:1:1: cannot read: {e}", file.display());
            std::process::exit(1);
        }
    };
    match sluice_server::config::check_toml(&text) {
        Ok(_) => {
            println!("{}: ok", file.display());
            Ok(())
        }
        Err(d) => {
            eprintln!("{}:{}:{}: {}", file.display(), d.line, d.column, d.message);
            std::process::exit(1);
        }
    }
}

fn serve(config_path: Option<PathBuf>, set: Vec<String>) -> anyhow::Result<()> {
    let config = Config::load_layered(config_path.as_deref(), std::env::vars(), &set)
        .with_context(|| match &config_path {
            Some(p) => format!("loading {}", p.display()),
            None => "loading the configuration".to_owned(),
        })?;
    let filter = EnvFilter::try_from_default_env()
        // mp4-atom warns about every unknown metadata box (e.g. a title tag): keep it quiet.
        .or_else(|_| EnvFilter::try_new(format!("{},mp4_atom=error", config.log.level)))
        .context("invalid log level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let server = Server::bind_reloadable(config, env, set).await?;
        match &config_path {
            Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
            None => tracing::info!("no --config given: running on built-in defaults"),
        }
        let host = display_host(server.local_addr());
        if let Some(a) = server.http_addr() {
            let c = server.config();
            let scheme = if c.http.tls_pair(&c.rtsps).is_some() { "https" } else { "http" };
            let h = display_host(a);
            tracing::info!("HTTP API at {scheme}://{h}/v1/info, metrics at {scheme}://{h}/metrics");
        }
        for key in &server.config().source.overridden_by_env {
            tracing::info!(key, "set by an environment variable");
        }
        for path in server.configured_paths() {
            tracing::info!("stream ready: rtsp://{host}/{path}   (try: ffplay rtsp://{host}/{path})");
        }
        if let (true, Some(dir)) = (server.config().vod.enabled, &server.config().vod.dir) {
            tracing::info!("files in {} are served at rtsp://{host}/vod/<file>", dir.display());
        }
        tracing::info!(
            "publish with: ffmpeg -re -i FILE -c copy -f rtsp rtsp://{host}/mystream  — then read rtsp://{host}/mystream"
        );
        let run = tokio::spawn(server.clone().run());
        tokio::select! {
            r = run => r.context("server task failed")?,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("shutting down");
                // SSE clients and hooks hear of it; a moment for the webhooks to send it.
                server.stopping("signal", std::time::Duration::from_millis(500)).await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `0.0.0.0:8554` is printed as `localhost:8554`, which a user can paste.
fn display_host(addr: std::net::SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}
