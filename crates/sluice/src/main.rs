//! `sluice`: the RTSP media server's command-line entry point.

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
    /// Run the server (built-in defaults when no --config is given).
    Serve {
        /// TOML configuration file; unknown keys are rejected.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
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
        let server = Server::bind(config).await?;
        match &config_path {
            Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
            None => tracing::info!("no --config given: running on built-in defaults"),
        }
        let host = display_host(server.local_addr());
        for path in server.configured_paths() {
            tracing::info!("stream ready: rtsp://{host}/{path}   (try: ffplay rtsp://{host}/{path})");
        }
        if let (true, Some(dir)) = (server.config().vod.enabled, &server.config().vod.dir) {
            tracing::info!("files in {} are served at rtsp://{host}/vod/<file>", dir.display());
        }
        tracing::info!(
            "publish with: ffmpeg -re -i FILE -c copy -f rtsp rtsp://{host}/mystream  — then read rtsp://{host}/mystream"
        );
        let run = tokio::spawn(server.run());
        tokio::select! {
            r = run => r.context("server task failed")?,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("shutting down");
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
