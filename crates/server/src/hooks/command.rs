//! `[[hooks.command]]`: a program run for each matching event, for users coming from
//! MediaMTX's `runOnReady`/`runOnRead`. The argv is executed directly (no shell, so no
//! quoting pitfalls and no injection through path names); the event's JSON comes on
//! standard input, and `SLUICE_EVENT`, `SLUICE_EVENT_ID`, `SLUICE_PATH` and
//! `SLUICE_SESSION` are set. At most `hooks.max_concurrent_commands` runs at once, all
//! hooks together; a run still going after its timeout is killed. Its exit status is
//! logged; its standard output and error go to the server's.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sluice_hub::Record;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use super::Outcomes;
use crate::config::CommandConfig;

/// One command hook.
#[derive(Debug)]
pub(crate) struct CommandHook {
    label: String,
    argv: Vec<String>,
    timeout: Duration,
    outcomes: Arc<Outcomes>,
}

impl CommandHook {
    pub(crate) fn new(label: String, c: &CommandConfig, outcomes: Arc<Outcomes>) -> CommandHook {
        CommandHook {
            label,
            argv: c.argv.clone(),
            timeout: c.timeout,
            outcomes,
        }
    }

    /// The command for `record`, ready to spawn (`None` if argv is empty).
    fn command(&self, record: &Record) -> Option<Command> {
        let (program, args) = self.argv.split_first()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("SLUICE_EVENT", record.event.name())
            .env("SLUICE_EVENT_ID", record.id.to_string())
            .env("SLUICE_PATH", record.event.path().unwrap_or(""))
            .env(
                "SLUICE_SESSION",
                record.event.session().map_or("", |s| s.session.as_str()),
            )
            .stdin(Stdio::piped())
            .kill_on_drop(true);
        Some(cmd)
    }

    /// Runs the hook for `record` and waits for it (or kills it at the timeout).
    pub(crate) async fn run(&self, record: &Record) {
        let name = record.event.name();
        let Some(mut cmd) = self.command(record) else {
            return;
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                Outcomes::add(&self.outcomes.failed);
                warn!(hook = %self.label, event = name, id = record.id, error = %e, "command hook could not start");
                return;
            }
        };
        let json = record.to_json();
        let stdin = child.stdin.take();
        let waited = tokio::time::timeout(self.timeout, async {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input may close it: not an error.
                let _ = stdin.write_all(json.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
                drop(stdin);
            }
            child.wait().await
        })
        .await;
        match waited {
            Ok(Ok(status)) if status.success() => {
                Outcomes::add(&self.outcomes.delivered);
                info!(hook = %self.label, event = name, id = record.id, %status, "command hook ran");
            }
            Ok(Ok(status)) => {
                Outcomes::add(&self.outcomes.failed);
                warn!(hook = %self.label, event = name, id = record.id, %status, "command hook failed");
            }
            Ok(Err(e)) => {
                Outcomes::add(&self.outcomes.failed);
                warn!(hook = %self.label, event = name, id = record.id, error = %e, "command hook: waiting failed");
            }
            Err(_) => {
                let _ = child.kill().await;
                Outcomes::add(&self.outcomes.failed);
                warn!(hook = %self.label, event = name, id = record.id, timeout = ?self.timeout, "command hook killed after its timeout");
            }
        }
    }
}

/// The hook's worker: each queued event waits for a free slot (shared by every command
/// hook), then runs in a task of its own.
pub(crate) async fn run_queue(
    hook: Arc<CommandHook>,
    mut queue: mpsc::Receiver<Arc<Record>>,
    slots: Arc<Semaphore>,
) {
    while let Some(record) = queue.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let hook = hook.clone();
        tokio::spawn(async move {
            hook.run(&record).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_hub::{ServerEvent, SessionRef};
    use std::sync::atomic::Ordering;

    fn record() -> Record {
        Record {
            id: 9,
            time_ms: 1,
            event: ServerEvent::ReaderStarted {
                session: SessionRef {
                    path: "cams/one".into(),
                    session: "s1".into(),
                    protocol: "rtsp".into(),
                    transport: Some("tcp".into()),
                    peer: "127.0.0.1:1".into(),
                },
            },
        }
    }

    fn hook(argv: &[&str], timeout: Duration) -> CommandHook {
        CommandHook {
            label: "t".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
            outcomes: Arc::new(Outcomes::default()),
        }
    }

    #[tokio::test]
    async fn the_event_comes_on_stdin_with_its_env_and_no_shell() {
        let dir = std::env::temp_dir().join(format!("sluice-cmd-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        // sh is the program here only to redirect; the hook itself runs argv as is.
        let script = format!(
            "cat > {0}; echo \"$SLUICE_EVENT $SLUICE_EVENT_ID $SLUICE_PATH $SLUICE_SESSION $1\" >> {0}",
            out.display()
        );
        let h = hook(
            &["/bin/sh", "-c", &script, "sh", "$(not expanded)"],
            Duration::from_secs(5),
        );
        h.run(&record()).await;
        let got = std::fs::read_to_string(&out).unwrap();
        let mut lines = got.lines();
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(json["type"], "reader_started");
        assert_eq!(json["path"], "cams/one");
        assert_eq!(
            lines.next().unwrap(),
            "reader_started 9 cams/one s1 $(not expanded)"
        );
        assert_eq!(h.outcomes.delivered.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_and_failures_are_counted() {
        let h = hook(&["/bin/sleep", "30"], Duration::from_millis(200));
        let t = std::time::Instant::now();
        h.run(&record()).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(h.outcomes.failed.load(Ordering::Relaxed), 1);
        hook(&["/bin/false"], Duration::from_secs(5))
            .run(&record())
            .await;
        let missing = hook(&["/nonexistent/program"], Duration::from_secs(5));
        missing.run(&record()).await;
        assert_eq!(missing.outcomes.failed.load(Ordering::Relaxed), 1);
    }
}
