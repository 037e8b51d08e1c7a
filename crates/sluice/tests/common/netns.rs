//! Private network namespaces for multicast tests.
//!
//! Multicast on the host's loopback would need host routing changes; instead
//! each test creates its own namespace (root only) whose `lo` is up, has
//! MULTICAST enabled and carries `224.0.0.0/4`. The server and its peers run
//! inside via `ip netns exec NAME ...`, which execs the program in place (same
//! pid), so signals and kill-on-drop work as for any other child.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdin(Stdio::null());
    let (status, err) = super::media::run_with_timeout(cmd, Duration::from_secs(10))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {status}: {err}", args.join(" ")))
    }
}

impl Netns {
    /// Creates the namespace. Returns `None` when not running as root (the
    /// caller then skips the test with a message); panics if root but the
    /// namespace cannot be set up.
    pub(crate) fn new() -> Option<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        if !super::is_root() {
            // In CI (root) a skip would hide a broken multicast path: fail instead.
            assert!(
                std::env::var_os("CI").is_none(),
                "multicast tests need root for `ip netns`, and CI is set"
            );
            eprintln!("SKIP: multicast tests need root for `ip netns`");
            return None;
        }
        let name = format!(
            "sluice-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&["netns", "add", n]).expect("ip netns add");
        ip(&["-n", n, "link", "set", "lo", "up"]).expect("lo up");
        ip(&["-n", n, "link", "set", "lo", "multicast", "on"]).expect("lo multicast on");
        // `src 127.0.0.1` so multicast datagrams carry a real source address.
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "lo",
            "src",
            "127.0.0.1",
        ])
        .expect("multicast route");
        Some(ns)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Whether a TCP connect to 127.0.0.1:`port` inside the namespace works.
    pub(crate) fn tcp_connects(&self, port: u16) -> bool {
        let mut c = self.command("bash");
        c.arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
            .stderr(Stdio::null());
        matches!(super::media::run_with_timeout(c, Duration::from_secs(5)), Ok((s, _)) if s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}
