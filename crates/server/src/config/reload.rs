//! Reloading the configuration while the server runs: what a reload reports, and the
//! handle other modules (the HTTP API) use to ask for one without naming the server.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::{check_toml, Config};

/// The outcome of the last reload (and the counts of all of them).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ReloadStatus {
    /// Whether the last reload applied (true before any reload).
    pub ok: bool,
    /// When it was tried, in seconds since the Unix epoch (0: never).
    pub at_unix: u64,
    /// What started it: `start`, `file`, `sighup` or `api`.
    pub trigger: String,
    /// Why it failed: the running configuration stays in force.
    pub error: Option<String>,
    /// The failing line in the file (1-based), when the error has one.
    pub line: Option<usize>,
    /// The failing column (1-based), when the error has one.
    pub column: Option<usize>,
    /// Sections whose change applies only after a restart (listeners, TLS, the HTTP
    /// settings): what the last reload found changed there.
    pub restart_required: Vec<String>,
    /// Reloads that applied, since start.
    pub succeeded: u64,
    /// Reloads refused (a bad file, a source that cannot start), since start.
    pub failed: u64,
}

/// Reads and reloads the running configuration; the composition root implements it.
pub trait ConfigControl: Send + Sync {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;

    /// Re-reads the configuration (file, environment, flags) and applies what changed;
    /// a bad file leaves the running configuration in force. `trigger` names the cause.
    fn reload(&self, trigger: &str) -> ReloadStatus;

    /// The outcome of the last reload.
    fn status(&self) -> ReloadStatus;

    /// Whether `text`, as the file's new content, would load and apply: layered as a
    /// reload would, and through every module's check. Changes nothing.
    fn check_text(&self, text: &str) -> Result<(), String>;

    /// Applies `text` as the file's content without reading the file (an API change,
    /// `written` into the file or held in memory only); recorded as a reload by `trigger`.
    fn apply_text(&self, text: &str, trigger: &str, written: bool) -> ReloadStatus;

    /// The [`content_tag`] of the file content the running configuration was last read
    /// from or written as (None without a file): a file whose content has another tag
    /// was changed behind the server.
    fn file_tag(&self) -> Option<String>;
}

/// A strong ETag of a configuration file's content: `"<sha256 hex>"`.
pub fn content_tag(text: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(text.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The `SLUICE_…` environment and the `--set` flags a configuration was layered with
/// (see [`Config::load_layered`]): what a reload layers over the file again.
pub type Layers = (Vec<(String, String)>, Vec<String>);

/// Told a reload's outcome and the file it read.
pub type Notify = Box<dyn Fn(&ReloadStatus, Option<&std::path::Path>) + Send + Sync>;

/// A step of a reload: checks or applies the new configuration; an error (for the log and
/// the status) refuses the reload (a check) or stops it there (an apply).
pub type Step = Box<dyn Fn(&Arc<Config>) -> Result<(), String> + Send + Sync>;

/// How often the file is looked at for changes. Two looks in a row must agree before a
/// change is taken (an editor's write in progress is not), so an edit applies within
/// about twice this.
const WATCH_EVERY: Duration = Duration::from_millis(400);

/// The running configuration and how to reload it: re-read the file (and the same
/// environment and flags as at start), check it, and hand it to each module's step. The
/// composition root builds one with the modules' steps; it names no module itself.
pub struct Reloader {
    config: RwLock<Arc<Config>>,
    /// The `SLUICE_…` environment and `--set` flags the configuration was layered with;
    /// None when it was not read by layering (a test's `Config::from_toml`): no reloads.
    layers: Option<Layers>,
    checks: Vec<Step>,
    applies: Vec<Step>,
    status: Mutex<ReloadStatus>,
    /// One reload at a time.
    serial: Mutex<()>,
    /// See [`ConfigControl::file_tag`].
    file_tag: Mutex<Option<String>>,
    /// Told each reload's outcome (the composition root puts it on the event bus).
    notify: Option<Notify>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.config().source.file)
            .finish()
    }
}

/// Keys a reload cannot apply: their sockets, threads or hooks were set up at start.
const RESTART_ONLY: &[&str] = &[
    "rtsp.rtp_port",
    "rtsp.transports",
    "rtsp.multicast_range",
    "rtsp.multicast_rtp_port",
    "rtsp.multicast_ttl",
    "rtsp.gop_cache",
    "rtsps",
    "webrtc",
    "http.enabled",
    "http.tls_cert",
    "http.tls_key",
    "http.tls_from_rtsps",
    "http.cors_origins",
    "http.max_body_bytes",
    "http.request_timeout",
    "http.tokens",
    "http.session_metrics",
    "hooks",
    "hls",
    "record",
    "log",
];

/// The value at dotted `key` of a layered configuration's tables.
fn value_at<'a>(values: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = values.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Reloader {
    /// The reloader of `config`, layered at start from its file, `env` and `flags` (pass
    /// `None` for a configuration not read that way: reloads are then refused).
    pub fn new(config: Arc<Config>, layers: Option<Layers>) -> Reloader {
        let file_tag = config
            .source
            .file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| content_tag(&t));
        Reloader {
            notify: None,
            file_tag: Mutex::new(file_tag),
            config: RwLock::new(config),
            layers,
            checks: Vec::new(),
            applies: Vec::new(),
            status: Mutex::new(ReloadStatus {
                ok: true,
                trigger: "start".into(),
                at_unix: unix_now(),
                ..ReloadStatus::default()
            }),
            serial: Mutex::new(()),
        }
    }

    /// Calls `notify` with every reload's outcome and the file.
    pub fn notify_with(&mut self, notify: Notify) -> &mut Self {
        self.notify = Some(notify);
        self
    }

    /// Adds a check every new configuration must pass before anything changes.
    pub fn check_with(&mut self, step: Step) -> &mut Self {
        self.checks.push(step);
        self
    }

    /// Adds a step that applies a new configuration (in the order added).
    pub fn apply_with(&mut self, step: Step) -> &mut Self {
        self.applies.push(step);
        self
    }

    /// Loads (the file, or `text` in its place), checks and applies; the outcome without
    /// recording it. `apply: false` stops after the checks.
    fn try_reload(
        &self,
        text: Option<&str>,
        apply: bool,
        written: bool,
    ) -> Result<(Arc<Config>, Vec<String>), Box<ReloadStatus>> {
        let from_file = text.is_none();
        let fail = |error: String, line: Option<usize>, column: Option<usize>| {
            Box::new(ReloadStatus {
                ok: false,
                error: Some(error),
                line,
                column,
                ..ReloadStatus::default()
            })
        };
        let Some((env, flags)) = &self.layers else {
            return Err(fail(
                "the running configuration was not read from a file and the environment".into(),
                None,
                None,
            ));
        };
        let old = self.config();
        let file = old.source.file.clone();
        let text = match (text, &file) {
            (Some(t), _) => t.to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| fail(format!("cannot read {}: {e}", f.display()), None, None))?,
            (None, None) => String::new(),
        };
        let name = file
            .as_ref()
            .map_or_else(|| "(no file)".to_owned(), |f| f.display().to_string());
        if let Err(d) = check_toml(&text) {
            return Err(fail(
                format!("{name}: {}", d.message),
                Some(d.line),
                Some(d.column),
            ));
        }
        let new = Config::load_layered_text(&text, file.as_deref(), env.iter().cloned(), flags)
            .map_err(|e| fail(e.to_string(), None, None))?;
        let new = Arc::new(new);
        for check in &self.checks {
            check(&new).map_err(|e| fail(e, None, None))?;
        }
        let restart: Vec<String> = RESTART_ONLY
            .iter()
            .filter(|k| value_at(&old.source.values, k) != value_at(&new.source.values, k))
            .map(|k| (*k).to_owned())
            .collect();
        if !apply {
            return Ok((new, restart));
        }
        for apply in &self.applies {
            apply(&new).map_err(|e| fail(e, None, None))?;
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        if file.is_some() && (from_file || written) {
            *self.file_tag.lock().unwrap_or_else(|e| e.into_inner()) = Some(content_tag(&text));
        }
        Ok((new, restart))
    }

    /// Runs a reload and records its outcome.
    fn record(&self, trigger: &str, text: Option<&str>, written: bool) -> ReloadStatus {
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.try_reload(text, true, written);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let (succeeded, failed) = (status.succeeded, status.failed);
        *status = match outcome {
            Ok((_, restart)) => {
                if restart.is_empty() {
                    info!(trigger, "configuration reloaded");
                } else {
                    warn!(trigger, restart_required = ?restart, "configuration reloaded; these changes apply after a restart");
                }
                ReloadStatus {
                    ok: true,
                    restart_required: restart,
                    succeeded: succeeded + 1,
                    failed,
                    ..ReloadStatus::default()
                }
            }
            Err(s) => {
                error!(
                    trigger,
                    error = s.error.as_deref().unwrap_or(""),
                    line = s.line,
                    column = s.column,
                    "configuration reload refused; the running configuration stays"
                );
                ReloadStatus {
                    succeeded,
                    failed: failed + 1,
                    ..*s
                }
            }
        };
        status.trigger = trigger.to_owned();
        status.at_unix = unix_now();
        let outcome = status.clone();
        drop(status);
        if let Some(notify) = &self.notify {
            notify(&outcome, self.config().source.file.as_deref());
        }
        outcome
    }

    /// Watches for the reasons to reload: SIGHUP, and changes of the file's content
    /// (read through symlinks each time, so a Kubernetes ConfigMap's symlink swap and an
    /// editor's rename over the file count as edits). Must run inside a tokio runtime.
    pub fn watch(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let me = Arc::downgrade(self);
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            let Some(r) = me.upgrade() else { return };
                            let _ = tokio::task::spawn_blocking(move || r.reload("sighup")).await;
                        }
                    });
                }
                Err(e) => warn!(error = %e, "cannot watch for SIGHUP; reload with the API"),
            }
        }
        let Some(file) = self.config().source.file.clone() else {
            return;
        };
        if self.layers.is_none() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            // The content last seen, and the last one loaded or tried (at first, the one
            // the server started on; a bad file is tried once, not on every look).
            let mut seen: Option<String> = None;
            let mut tried = me.upgrade().and_then(|r| r.file_tag());
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let Some(r) = me.upgrade() else { return };
                let path = file.clone();
                let now = tokio::task::spawn_blocking(move || std::fs::read_to_string(path).ok())
                    .await
                    .ok()
                    .flatten()
                    .map(|t| content_tag(&t));
                // A change, the same on two looks in a row, not tried yet.
                if now.is_some() && now == seen && now != tried {
                    tried = now.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("file")).await;
                }
                seen = now;
            }
        });
    }
}

impl ConfigControl for Reloader {
    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reload(&self, trigger: &str) -> ReloadStatus {
        self.record(trigger, None, false)
    }

    fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check_text(&self, text: &str) -> Result<(), String> {
        let _one = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        self.try_reload(Some(text), false, false)
            .map(|_| ())
            .map_err(|s| {
                let at = match (s.line, s.column) {
                    (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                    _ => String::new(),
                };
                format!("{}{at}", s.error.unwrap_or_default())
            })
    }

    fn apply_text(&self, text: &str, trigger: &str, written: bool) -> ReloadStatus {
        self.record(trigger, Some(text), written)
    }

    fn file_tag(&self) -> Option<String> {
        self.file_tag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
