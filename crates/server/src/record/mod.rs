//! The server recorder: any path (published, pulled, file source) recorded to crash-safe
//! fMP4 segments below `[record] dir`, indexed in `index.redb` (crate `sluice-archive`).
//!
//! - A sink on every stream (`sink::RecSink`, attached by a stream hook) keeps the
//!   stream's GOP cache; while the path is recorded it hands packets to the path's writer
//!   thread through a bounded queue (a full queue drops and counts: live readers never
//!   wait on the disk).
//! - The writer (`writer`) depacketizes once (`sluice_media::recorder::Recorder`, frames
//!   mode) and feeds `sluice_media::archive::SegmentWriter`, which cuts time-based parts
//!   and segments; it appends, syncs (`fsync`), indexes each part (a cheap commit) and each
//!   finished segment (a durable one), and publishes `segment_created` /
//!   `segment_completed` on the event bus. A write that fails for lack of space closes the
//!   segment at its last complete part and pauses the path (one log line) until space
//!   returns; the next segment then starts at a keyframe.
//! - At start, every segment the index still marks open (a crash, a kill) is validated with
//!   `sluice_media::archive::recover`, truncated after its last complete part, indexed as
//!   recovered and announced (`segment_completed`, reason `recovered`).
//! - A retention thread deletes the oldest segments by age and bytes per path and to keep
//!   `min_free` free, skipping open, held and locked ones (`recording_deleted`).
//! - Runtime control and locks: [`RecordingRoutes`] (`/v1/recordings…`).
//!
//! Configuration reloads do not change recording settings (they apply at start).

mod align;
mod routes;
mod sink;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use sluice_archive::{Index, IndexError, PathTemplate};
use sluice_hub::{Hub, ServerEvent};
use tracing::{info, warn};

use crate::config::{Config, PathRecordSettings, RecordConfig, RecordOverrides};
pub use routes::RecordingRoutes;
use sink::RecSink;

/// Why recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The index could not be opened (or recovery could not read it).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The configuration is unusable (validated at load, so rare).
    #[error("record: {0}")]
    Config(String),
}

/// Figures of one recorded path (Prometheus, at scrape time).
#[derive(Debug, Default)]
pub(crate) struct PathFigures {
    pub(crate) bytes: AtomicU64,
    pub(crate) parts: AtomicU64,
    pub(crate) segments: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) last_write_ms: AtomicU64,
}

/// Shared by the hook, the sinks, the writers, the retention thread and the routes.
pub(crate) struct Inner {
    hub: Weak<Hub>,
    config: RecordConfig,
    overrides: BTreeMap<String, RecordOverrides>,
    dir: PathBuf,
    template: PathTemplate,
    index: Arc<Index>,
    /// API start (true) / stop (false) per path, over the configuration.
    runtime: Mutex<HashMap<String, bool>>,
    figures: Mutex<BTreeMap<String, Arc<PathFigures>>>,
    fsync_seconds: Histogram,
    retention: (Mutex<bool>, Condvar),
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("dir", &self.dir).finish()
    }
}

impl Inner {
    fn publish(&self, event: ServerEvent) {
        if let Some(hub) = self.hub.upgrade() {
            hub.events().publish(event);
        }
    }

    fn settings(&self, path: &str) -> PathRecordSettings {
        self.config.settings(self.overrides.get(path))
    }

    fn figures(&self, path: &str) -> Arc<PathFigures> {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_owned())
            .or_default()
            .clone()
    }

    /// Whether `path` should be recorded: the API's word, else the configuration's.
    fn wants(&self, path: &str) -> bool {
        if let Some(&r) = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return r;
        }
        self.config.wants(path, self.overrides.get(path))
    }

    /// Asks the retention thread for a pass now (a segment ended, the disk filled).
    fn retention_due(&self) {
        *self.retention.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.retention.1.notify_one();
    }
}

/// The recorder module.
#[derive(Debug, Clone)]
pub struct Recording {
    inner: Arc<Inner>,
}

impl Recording {
    /// Starts the module when `[record] dir` is set: opens the index, recovers segments a
    /// crash left open, attaches a sink to every stream created from now on (so call it
    /// before the sources start) and starts the retention thread. Blocking (start-up).
    pub fn start(config: &Config, hub: &Arc<Hub>) -> Result<Option<Recording>, RecordError> {
        let Some(dir) = config.record.dir.clone() else {
            return Ok(None);
        };
        let template = config
            .record
            .template()
            .map_err(|e| RecordError::Config(e.to_string()))?;
        let index = Arc::new(Index::open(&dir)?);
        let inner = Arc::new(Inner {
            hub: Arc::downgrade(hub),
            config: config.record.clone(),
            overrides: config
                .paths
                .iter()
                .map(|(n, p)| (n.clone(), p.recording()))
                .collect(),
            dir,
            template,
            index,
            runtime: Mutex::new(HashMap::new()),
            figures: Mutex::new(BTreeMap::new()),
            fsync_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
            ]),
            retention: (Mutex::new(true), Condvar::new()),
        });
        recover(&inner)?;
        let hooked = Arc::downgrade(&inner);
        hub.on_stream(Box::new(move |stream| {
            let Some(inner) = hooked.upgrade() else {
                return;
            };
            let sink = RecSink::new(stream, &inner);
            stream.attach(sink.clone());
            if inner.wants(stream.path()) {
                sink.start();
            }
        }));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("rec retention".into())
            .spawn(move || retention_loop(weak))
            .map_err(|e| RecordError::Config(format!("cannot start the retention thread: {e}")))?;
        info!(dir = %inner.dir.display(), "recording to {}", inner.dir.display());
        Ok(Some(Recording { inner }))
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The recordings index (the playback modules read it).
    pub fn index(&self) -> &Arc<Index> {
        &self.inner.index
    }

    /// Starts (true) or stops (false) recording `path` from now on, over the
    /// configuration, until the next call or restart. Takes effect at once on a live path.
    pub fn set_active(&self, path: &str, on: bool) {
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), on);
        let Some(hub) = self.inner.hub.upgrade() else {
            return;
        };
        let stream = hub.registry().lookup(path).cloned();
        if let Some(sink) = stream.and_then(|s| s.attached::<RecSink>()) {
            if on {
                sink.start();
            } else {
                sink.stop();
            }
        }
    }

    /// Whether `path` is being recorded now (live and recording).
    pub fn is_active(&self, path: &str) -> bool {
        let Some(hub) = self.inner.hub.upgrade() else {
            return false;
        };
        let stream = hub.registry().lookup(path).cloned();
        stream
            .and_then(|s| s.attached::<RecSink>())
            .is_some_and(|s| s.active())
    }

    /// Whether `path` is recorded when live (API or configuration).
    pub fn wants(&self, path: &str) -> bool {
        self.inner.wants(path)
    }

    /// Shutdown: every recording path ends its segment (reason `stop`), and this waits up
    /// to `grace` for the writers to finish and sync. Blocking. A segment still open after
    /// that is recovered at the next start.
    pub fn shutdown(&self, grace: Duration) {
        let Some(hub) = self.inner.hub.upgrade() else {
            return;
        };
        let threads: Vec<_> = hub
            .streams()
            .iter()
            .filter_map(|s| s.attached::<RecSink>())
            .filter_map(|s| s.stop_for_shutdown())
            .collect();
        let deadline = std::time::Instant::now() + grace;
        for t in threads {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The `sluice_record_*` metrics collector.
    pub fn collector(&self) -> RecordCollector {
        RecordCollector {
            inner: self.inner.clone(),
        }
    }

    /// The fsync latency histogram (`sluice_record_fsync_seconds`), to register once.
    pub fn fsync_histogram(&self) -> Histogram {
        self.inner.fsync_seconds.clone()
    }
}

/// Validates, truncates and indexes every segment the index marks open: a crash or a kill
/// left them so. Each is announced as completed with reason `recovered`.
fn recover(inner: &Arc<Inner>) -> Result<(), RecordError> {
    for (stream, rec) in inner.index.open_segments()? {
        let full = inner.dir.join(&rec.path);
        let rebuilt = sluice_archive_reindex(&full, &rec.path);
        match rebuilt {
            Ok(mut found) if !found.parts.is_empty() => {
                found.start_wall = rec.start_wall;
                found.recovered = true;
                inner.index.put(&stream, &found)?;
                info!(path = %stream, file = %rec.path, bytes = found.bytes, parts = found.parts.len(), "segment recovered");
                inner.publish(ServerEvent::SegmentCompleted {
                    path: stream.clone(),
                    file: rec.path.clone(),
                    reason: "recovered".into(),
                    start: rfc3339(found.start_wall),
                    end: rfc3339(found.end_wall),
                    bytes: found.bytes,
                });
            }
            other => {
                // No file, or nothing playable in it: nothing to keep.
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "no complete part".into(),
                };
                warn!(path = %stream, file = %rec.path, reason = %why, "open segment dropped at recovery");
                let _ = std::fs::remove_file(&full);
                inner.index.remove(&stream, rec.start_wall)?;
            }
        }
    }
    Ok(())
}

/// Rebuilds one file's record from its bytes, truncating a damaged tail.
fn sluice_archive_reindex(full: &Path, rel: &str) -> Result<sluice_archive::SegmentRecord, String> {
    // Read part by part (bounded memory: a segment may be gigabytes).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(full)
        .map_err(|e| format!("opening: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("reading metadata: {e}"))?
        .len();
    let rec = sluice_media::archive::reindex_from(rel, &mut f)
        .map_err(|d| format!("{} at byte {}", d.reason, d.offset))?;
    if rec.bytes < len {
        f.set_len(rec.bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("truncating: {e}"))?;
    }
    Ok(rec)
}

/// Retention: a pass every 5 s, or at once when a segment ends or the disk filled.
fn retention_loop(inner: Weak<Inner>) {
    let mut low = false;
    loop {
        let Some(i) = inner.upgrade() else {
            return;
        };
        if let Err(e) = retention_pass(&i, &mut low) {
            warn!(error = %e, "retention pass failed");
        }
        let (m, cv) = &i.retention;
        let mut due = m.lock().unwrap_or_else(|e| e.into_inner());
        if !*due {
            due = cv
                .wait_timeout(due, Duration::from_secs(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *due = false;
    }
}

/// A segment retention may delete.
struct Candidate {
    stream: String,
    start: SystemTime,
    end: SystemTime,
    bytes: u64,
}

fn retention_pass(inner: &Inner, low: &mut bool) -> Result<(), IndexError> {
    let index = &inner.index;
    let open: Vec<(String, SystemTime)> = index
        .open_segments()?
        .into_iter()
        .map(|(s, r)| (s, r.start_wall))
        .collect();
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
    let now = SystemTime::now();
    let deletable =
        |stream: &str, start: SystemTime, end: SystemTime| -> Result<bool, IndexError> {
            Ok(!open.iter().any(|(s, t)| s == stream && *t == start)
                && !index.is_held(stream, start)
                && !index.locked(stream, start, end)?)
        };
    let mut all: Vec<Candidate> = Vec::new();
    for stream in index.streams()? {
        let settings = inner.settings(&stream);
        let spans = index.spans(&stream, SystemTime::UNIX_EPOCH, far)?;
        let mut total: u64 = spans.iter().map(|s| s.2).sum();
        for (start, end, bytes) in spans {
            let old = settings
                .retain_age
                .is_some_and(|age| now.duration_since(end).unwrap_or_default() > age);
            let big = settings.retain_bytes.is_some_and(|max| total > max);
            if (old || big) && deletable(&stream, start, end)? {
                delete(
                    inner,
                    &stream,
                    start,
                    bytes,
                    if old { "age" } else { "bytes" },
                )?;
                total = total.saturating_sub(bytes);
                continue;
            }
            all.push(Candidate {
                stream: stream.clone(),
                start,
                end,
                bytes,
            });
        }
    }
    let Some(min_free) = inner.config.min_free else {
        return Ok(());
    };
    let Ok(space) = sluice_archive::free_space(&inner.dir) else {
        return Ok(());
    };
    let floor = min_free.bytes(space.total);
    let mut available = space.available;
    if available >= floor {
        *low = false;
        return Ok(());
    }
    if !*low {
        *low = true;
        warn!(dir = %inner.dir.display(), available, floor, "free space below min_free: deleting the oldest recordings");
        inner.publish(ServerEvent::DiskLow {
            dir: inner.dir.display().to_string(),
            available,
            full: false,
        });
    }
    all.sort_by_key(|c| c.start);
    for c in all {
        if available >= floor {
            break;
        }
        if deletable(&c.stream, c.start, c.end)? {
            delete(inner, &c.stream, c.start, c.bytes, "min_free")?;
            available += c.bytes;
        }
    }
    Ok(())
}

fn delete(
    inner: &Inner,
    stream: &str,
    start: SystemTime,
    bytes: u64,
    reason: &str,
) -> Result<(), IndexError> {
    let Some(rec) = inner.index.get(stream, start)? else {
        return Ok(());
    };
    let full = inner.dir.join(&rec.path);
    match std::fs::remove_file(&full) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %stream, file = %rec.path, error = %e, "retention cannot delete a segment");
            return Ok(());
        }
    }
    inner.index.remove(stream, start)?;
    if let Some(parent) = full.parent() {
        let _ = sluice_archive::sync_dir(parent);
        // An emptied directory (a day, a path) goes too; a non-empty one stays.
        if parent != inner.dir {
            let _ = std::fs::remove_dir(parent);
        }
    }
    info!(path = %stream, file = %rec.path, reason, bytes, "recording deleted");
    inner.publish(ServerEvent::RecordingDeleted {
        path: stream.to_owned(),
        file: rec.path,
        reason: reason.to_owned(),
        start: rfc3339(start),
        bytes,
    });
    Ok(())
}

/// RFC 3339 with microseconds, UTC; times outside 1970–9999 are clamped (the formatter
/// cannot write them).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let last = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_micros(t.clamp(SystemTime::UNIX_EPOCH, last)).to_string()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `sluice_record_*`: per recorded path (bytes, parts, segments, drops, write errors, last
/// write time, stored bytes, oldest recording) and the record directory's free space.
/// Stored bytes and the oldest recording are read from the index at scrape time.
#[derive(Debug)]
pub struct RecordCollector {
    inner: Arc<Inner>,
}

impl Collector for RecordCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures: Vec<(String, Arc<PathFigures>)> = self
            .inner
            .figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        type Get = fn(&PathFigures) -> u64;
        let counters: [(&str, &str, Get); 5] = [
            (
                "sluice_record_bytes",
                "Bytes recorded (inits and parts)",
                |f| f.bytes.load(Ordering::Relaxed),
            ),
            ("sluice_record_parts", "Parts written", |f| {
                f.parts.load(Ordering::Relaxed)
            }),
            ("sluice_record_segments", "Segments started", |f| {
                f.segments.load(Ordering::Relaxed)
            }),
            (
                "sluice_record_dropped",
                "Packets or frames not recorded (queue full, late, unwritable)",
                |f| f.dropped.load(Ordering::Relaxed),
            ),
            (
                "sluice_record_write_errors",
                "Failed writes (disk full, I/O errors)",
                |f| f.write_errors.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (path, f) in &figures {
                ConstCounter::new(get(f))
                    .encode(family.encode_family(&[("path", path.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sluice_record_last_write_timestamp_seconds",
            "Unix time of the last part written",
            None,
            MetricType::Gauge,
        )?;
        for (path, f) in &figures {
            let ms = f.last_write_ms.load(Ordering::Relaxed);
            ConstGauge::new(ms as f64 / 1000.0)
                .encode(family.encode_family(&[("path", path.as_str())])?)?;
        }
        let index = &self.inner.index;
        let streams = index.streams().unwrap_or_default();
        let mut stored = Vec::new();
        for s in &streams {
            let bytes = index.stored(s).map_or(0, |b| b.0);
            let oldest = index.first_last(s).ok().flatten().map(|f| f.0);
            stored.push((s, bytes, oldest));
        }
        let mut family = encoder.encode_descriptor(
            "sluice_record_stored_bytes",
            "Bytes of recordings on disk, per path (from the index)",
            None,
            MetricType::Gauge,
        )?;
        for (s, bytes, _) in &stored {
            ConstGauge::new(*bytes as i64)
                .encode(family.encode_family(&[("path", s.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sluice_record_oldest_timestamp_seconds",
            "Unix time of the oldest recording kept, per path",
            None,
            MetricType::Gauge,
        )?;
        for (s, _, oldest) in &stored {
            if let Some(t) = oldest {
                ConstGauge::new(unix_ms(*t) as f64 / 1000.0)
                    .encode(family.encode_family(&[("path", s.as_str())])?)?;
            }
        }
        if let Ok(space) = sluice_archive::free_space(&self.inner.dir) {
            let family = encoder.encode_descriptor(
                "sluice_record_free_bytes",
                "Bytes available on the record directory's file system",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(space.available as i64).encode(family)?;
        }
        Ok(())
    }
}
