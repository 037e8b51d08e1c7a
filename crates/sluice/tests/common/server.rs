//! Spawning the `sluice` binary with a generated config.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::ports::{free_tcp_port, free_udp_block, free_udp_pair};
use super::proc::Proc;

pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    proc: Proc,
    port: u16,
    pub rtp_port: u16,
    pub multicast_rtp_port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: String,
}

/// Builds the `[rtsp]` config: defaults with free ports, overridden or
/// extended by `extra_toml`. Lines of `extra_toml` outside any table or in
/// `[rtsp]` replace the default with the same key (or are added); other
/// tables are appended verbatim.
pub(crate) fn build_config(port: u16, rtp: u16, mrtp: u16, extra_toml: &str) -> String {
    let mut rtsp: Vec<(String, String)> = vec![
        ("listen".into(), format!("\"127.0.0.1:{port}\"")),
        ("rtp_port".into(), rtp.to_string()),
        ("multicast_range".into(), "\"239.255.0.0/16\"".into()),
        ("multicast_rtp_port".into(), mrtp.to_string()),
        ("multicast_ttl".into(), "1".into()),
        (
            "transports".into(),
            "[\"udp\", \"multicast\", \"tcp\"]".into(),
        ),
        ("session_timeout".into(), "\"60s\"".into()),
        ("override_publisher".into(), "false".into()),
    ];
    let mut tail = String::new();
    let mut in_rtsp = true;
    for line in extra_toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_rtsp = t == "[rtsp]";
            if !in_rtsp {
                tail.push_str(line);
                tail.push('\n');
            }
            continue;
        }
        if !in_rtsp {
            tail.push_str(line);
            tail.push('\n');
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .expect("extra_toml lines must be `key = value`");
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        match rtsp.iter_mut().find(|(dk, _)| *dk == k) {
            Some(e) => e.1 = v,
            None => rtsp.push((k, v)),
        }
    }
    // The HTTP listener's default port (8080) would be shared by every test server:
    // off unless the test configures `[http]`.
    if !extra_toml.lines().any(|l| l.trim() == "[http]") {
        tail.push_str("[http]\nenabled = false\n");
    }
    // Likewise WebRTC's default UDP port (8189): an OS-chosen one unless configured.
    if !extra_toml.lines().any(|l| l.trim() == "[webrtc]") {
        tail.push_str("[webrtc]\nudp_port = 0\n");
    }
    let mut out = String::from("[rtsp]\n");
    for (k, v) in rtsp {
        out.push_str(&format!("{k} = {v}\n"));
    }
    if !tail.is_empty() {
        out.push('\n');
        out.push_str(&tail);
    }
    out
}

impl Server {
    /// Starts the server on free loopback ports and waits until its RTSP
    /// port accepts TCP connections.
    pub(crate) fn start(extra_toml: &str) -> Server {
        Self::start_with(None, extra_toml)
    }

    /// Like [`Server::start`], but inside `netns` (if given).
    pub(crate) fn start_with(netns: Option<&Netns>, extra_toml: &str) -> Server {
        let dir = super::test_dir("server");
        Self::start_in_dir(&dir, netns, extra_toml)
    }

    pub(crate) fn start_in_dir(dir: &Path, netns: Option<&Netns>, extra_toml: &str) -> Server {
        let port = free_tcp_port();
        let rtp_port = free_udp_pair();
        let multicast_rtp_port = free_udp_block(4);
        let config = build_config(port, rtp_port, multicast_rtp_port, extra_toml);
        let config_path = dir.join(format!("sluice-{port}.toml"));
        std::fs::write(&config_path, &config).expect("write config");
        let bin = env!("CARGO_BIN_EXE_sluice");
        let mut cmd = match netns {
            Some(ns) => ns.command(bin),
            None => Command::new(bin),
        };
        cmd.arg("serve").arg("--config").arg(&config_path);
        cmd.env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
        );
        let proc = Proc::spawn(&format!("sluice-{port}"), cmd, dir);
        let mut server = Server {
            proc,
            port,
            rtp_port,
            multicast_rtp_port,
            dir: dir.to_path_buf(),
            config_path,
            config,
        };
        server.wait_ready(netns);
        server
    }

    fn wait_ready(&mut self, netns: Option<&Netns>) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut up_since: Option<Instant> = None;
        loop {
            if let Some(status) = self.proc.try_wait() {
                panic!(
                    "sluice exited during startup ({status}); config:\n{}\nlog:\n{}",
                    self.config,
                    self.log()
                );
            }
            let up = match netns {
                Some(ns) => ns.tcp_connects(self.port),
                None => TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            };
            // Listening is not running: the sockets are bound before the server runs, and
            // its HTTP listener after its RTSP one. Ready is once `run` logged both (or,
            // with a log level that hides them, two seconds after the port answered).
            if up {
                let log = self.log();
                let http = self.config.contains("[http]")
                    && !self.config.contains("[http]\nenabled = false");
                let running = log.contains("RTSP server listening")
                    && (!http || log.contains("HTTP server listening"));
                let since = *up_since.get_or_insert_with(Instant::now);
                if running || since.elapsed() > Duration::from_secs(2) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "sluice not ready on {addr} after {READY_TIMEOUT:?}; config:\n{}\nlog:\n{}",
                    self.config,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn rtsp_port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `rtsp://127.0.0.1:PORT/<path>` (leading `/` optional).
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "rtsp://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The server's captured stderr (tracing logs) so far.
    /// Stops the server and starts it again on the same configuration file (as it is on
    /// disk now) and ports; waits until it accepts connections.
    pub(crate) fn restart(&mut self) {
        self.proc.stop(Duration::from_secs(5));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve").arg("--config").arg(&self.config_path);
        cmd.env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "debug".into()),
        );
        self.proc = Proc::spawn(&format!("sluice-{}-again", self.port), cmd, &self.dir);
        self.wait_ready(None);
    }

    /// Sends the server process a signal (e.g. `libc::SIGHUP`).
    pub(crate) fn signal(&mut self, sig: i32) {
        self.proc.signal(sig);
    }

    pub(crate) fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Whether the server process is still alive.
    pub(crate) fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Waits until the log contains a line matching `pred`.
    pub(crate) fn wait_log_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        super::wait_for(timeout, || {
            self.log().lines().find(|l| pred(l)).map(str::to_string)
        })
    }
}
