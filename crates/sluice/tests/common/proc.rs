//! Child processes with captured output, hard deadlines and kill-on-drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A spawned external process. stdout and stderr go to files in the test
/// directory. Dropping it kills the process; if the test is panicking, the
/// tail of its stderr is printed.
pub(crate) struct Proc {
    pub name: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
    interrupted: bool,
    quiet_on_panic: bool,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output captured to
    /// `dir/<name>.stdout` / `dir/<name>.stderr`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout_path).expect("create stdout file");
        let err = std::fs::File::create(&stderr_path).expect("create stderr file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn {name} ({cmd:?}): {e} — run scripts/install-test-deps.sh")
        });
        Proc {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            status: None,
            interrupted: false,
            quiet_on_panic: false,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Don't dump this process's stderr when the test fails (for noisy peers).
    pub(crate) fn quiet_on_panic(&mut self) {
        self.quiet_on_panic = true;
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Exit status if the process has exited.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGINT`) if still running.
    pub(crate) fn signal(&mut self, sig: i32) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// Whether [`Proc::stop`] had to interrupt the process.
    pub(crate) fn was_interrupted(&self) -> bool {
        self.interrupted
    }

    /// Stops the process gracefully: SIGINT (ffmpeg and gst-launch then
    /// print their final statistics), then SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        self.interrupted = true;
        self.signal(libc::SIGINT);
        if let Some(s) = self.wait_timeout(grace) {
            return s;
        }
        self.kill()
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        let _ = self.child.kill();
        let s = self.child.wait().expect("wait for killed child");
        self.status = Some(s);
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() && !self.quiet_on_panic {
            eprintln!(
                "----- {} stderr (tail, full log: {}) -----\n{}\n-----",
                self.name,
                self.stderr_path.display(),
                crate::common::tail(&self.stderr(), 30)
            );
        }
    }
}
