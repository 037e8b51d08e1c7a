//! One recorded path's writer thread: RTP packets in (from the sink's bounded queue),
//! depacketized once by `sluice-media`'s [`Recorder`] (frames mode), cut into segments and
//! parts by the [`SegmentWriter`], appended to files, synced, and indexed.
//!
//! Blocking I/O only, on a thread of its own: a slow disk delays this path's recording,
//! never a live reader (the sink drops and counts what the queue cannot take).

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use sluice_archive::{sync_dir, SegmentRecord};
use sluice_hub::{MediaPacket, ServerEvent, Stream};
use sluice_media::archive::{ArchiveConfig, ArchiveOutput, CutReason, SegmentWriter};
use sluice_media::recorder::{Event, Recorder, TrackSpec};
use tracing::{info, warn};

use super::align::{Aligner, How};
use super::{rfc3339, Inner, PathFigures};
use crate::config::{Fsync, PathRecordSettings};

/// What the sink sends the writer.
pub(super) enum Msg {
    /// A packet of the stream (the GOP cache's first, then live ones).
    Packet(MediaPacket),
}

/// How often the writer does its periodic work (see [`Writer::tick`]), even while packets
/// keep coming.
const TICK: Duration = Duration::from_millis(100);
/// Packets taken from the queue at most between two ticks.
const BURST: usize = 512;
/// A recording that received packets for this long without a segment says why, once.
const NO_SEGMENT_WARN: Duration = Duration::from_secs(5);
/// How often a paused writer (disk full, write error) looks for space again.
const RETRY: Duration = Duration::from_millis(250);
/// Stats (drops) are logged at most this often per path.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The segment file being written.
struct Open {
    file: File,
    rel: String,
    full: PathBuf,
    /// The index key: wall clock of its first sample, rounded to µs.
    start: SystemTime,
    record: SegmentRecord,
    /// Bytes known complete (init + whole parts).
    committed: u64,
}

/// A writer's state.
pub(super) struct Writer {
    path: String,
    /// For the source's Sender Reports (track alignment).
    stream: Weak<Stream>,
    inner: Arc<Inner>,
    figures: Arc<PathFigures>,
    settings: PathRecordSettings,
    specs: Vec<TrackSpec>,
    /// Packets held until the tracks are aligned (all kept: the file starts at the first
    /// keyframe among them).
    pending: Vec<MediaPacket>,
    align: Aligner,
    /// Why this path cannot be recorded (its tracks or codecs), once found: packets are
    /// then ignored until recording restarts (logged once).
    refused: Option<String>,
    /// When the first packet came, until the first segment is created or the warning
    /// that it takes longer than [`NO_SEGMENT_WARN`] went out (once).
    waiting: Option<Instant>,
    /// Whether `waiting` was set (it is set once).
    waited: bool,
    rec: Option<Recorder>,
    seg: Option<SegmentWriter>,
    open: Option<Open>,
    /// Paused after a write failure (disk full): since when, and whether for lack of space.
    paused: Option<(Instant, bool)>,
    last_frame: Instant,
    idled: bool,
    last_log: Instant,
    logged_drops: u64,
    /// Write errors counted when the last stats line was logged.
    logged_errors: u64,
    /// The segment writer's drops (late, invalid) already counted in the figures.
    seg_drops: u64,
}

impl Writer {
    pub(super) fn new(
        path: String,
        stream: Weak<Stream>,
        inner: Arc<Inner>,
        figures: Arc<PathFigures>,
        settings: PathRecordSettings,
        specs: Vec<TrackSpec>,
    ) -> Writer {
        let now = Instant::now();
        let align = Aligner::new(specs.iter().map(|s| s.clock_rate).collect());
        Writer {
            path,
            stream,
            inner,
            figures,
            settings,
            specs,
            pending: Vec::new(),
            align,
            refused: None,
            waiting: None,
            waited: false,
            rec: None,
            seg: None,
            open: None,
            paused: None,
            last_frame: now,
            idled: false,
            last_log: now,
            logged_drops: 0,
            logged_errors: 0,
            seg_drops: 0,
        }
    }

    /// Runs until the sink drops its sender (recording stopped, stream ended).
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Msg::Packet(p)) => {
                    self.packet(p);
                    // Take what queued up meanwhile, but not so much that the periodic
                    // work (alignment deadline, idle parts, resuming) waits on a busy
                    // stream.
                    for _ in 0..BURST {
                        match rx.try_recv() {
                            Ok(Msg::Packet(p)) => self.packet(p),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.tick();
        }
        self.finish();
    }

    fn packet(&mut self, p: MediaPacket) {
        if self.refused.is_some() {
            return;
        }
        let now = Instant::now();
        if !self.waited {
            self.waited = true;
            self.waiting = Some(now);
        }
        if self.rec.is_none() {
            self.align
                .packet(p.track, p.header.timestamp, p.received_at, now);
            self.pending.push(p);
            self.try_align(now);
            return;
        }
        self.push(p);
    }

    /// Starts the depacketizing recorder once the tracks are aligned (see
    /// [`super::align`]): by the source's Sender Reports when every track has one, else,
    /// [`super::align::SR_WAIT`] after the first packet, by the arrival of each track's
    /// first packet. The pending packets then go through it, from the first.
    fn try_align(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let srs: Vec<_> = match self.stream.upgrade() {
            Some(stream) => (0..self.specs.len())
                .map(|t| stream.sr_mapping(t))
                .collect(),
            None => vec![None; self.specs.len()],
        };
        let Some(aligned) = self.align.decide(now, &srs) else {
            return;
        };
        let waited_ms = self.align.waited(now).as_millis() as u64;
        match &aligned.how {
            How::Arrival(_) => {
                info!(path = %self.path, how = %aligned.how, silent_tracks = ?aligned.silent, waited_ms, "recording tracks aligned by arrival")
            }
            How::SenderReports | How::SingleTrack => {
                info!(path = %self.path, how = %aligned.how, silent_tracks = ?aligned.silent, waited_ms, "recording tracks aligned")
            }
        }
        let mut rec = match Recorder::new(&self.specs, aligned.base) {
            Ok(r) => r.frames_mode(),
            Err(e) => {
                self.refuse(e.to_string());
                return;
            }
        };
        rec.playing(aligned.base, &aligned.rtptimes);
        self.rec = Some(rec);
        for p in std::mem::take(&mut self.pending) {
            self.push(p);
        }
    }

    /// This path's tracks cannot be recorded: one warning, and packets are ignored until
    /// recording restarts (a new publisher, the API).
    fn refuse(&mut self, why: String) {
        warn!(path = %self.path, error = %why, "cannot record this path");
        self.pending.clear();
        self.rec = None;
        self.seg = None;
        self.refused = Some(why);
    }

    fn push(&mut self, p: MediaPacket) {
        let Some(rec) = self.rec.as_mut() else {
            return;
        };
        if let Err(e) = rec.push_rtp(p.track, &p.data, p.received_at) {
            self.figures.write_errors.fetch_add(1, Ordering::Relaxed);
            warn!(path = %self.path, error = %e, "recording failed; starting over at the next keyframe");
            self.rec = None;
            self.seg = None;
            self.align = Aligner::new(self.specs.iter().map(|s| s.clock_rate).collect());
            self.close_open("error");
            return;
        }
        // The wall clock of this packet's arrival: now, minus how long ago it arrived (the
        // GOP cache's packets are older).
        let wall = SystemTime::now() - Instant::now().saturating_duration_since(p.received_at);
        self.frames(wall);
    }

    /// Moves the recorder's frames into the segment writer, and its output to disk.
    fn frames(&mut self, wall: SystemTime) {
        let Some(rec) = self.rec.as_mut() else {
            return;
        };
        while let Some(ev) = rec.poll_event() {
            match ev {
                Event::NotRecorded {
                    track,
                    encoding,
                    error,
                } => warn!(path = %self.path, track, %encoding, %error, "track not recorded"),
                Event::ArrivalTiming { track, fps, .. } => {
                    warn!(path = %self.path, track, fps, "RTP timestamps do not advance; timing the track by arrival")
                }
                Event::Started | Event::Undecodable { .. } => {}
            }
        }
        while rec.poll_output().is_some() {}
        if self.seg.is_none() && self.paused.is_none() {
            if let Some(params) = rec.file_params() {
                let config = ArchiveConfig {
                    part_duration: self.settings.part_duration,
                    segment_duration: self.settings.segment_duration,
                    ..ArchiveConfig::default()
                };
                match SegmentWriter::new(params.to_vec(), config) {
                    Ok(w) => {
                        self.seg = Some(w);
                        self.seg_drops = 0;
                    }
                    Err(e) => {
                        self.refuse(format!("its tracks cannot be written: {e}"));
                        return;
                    }
                }
            }
        }
        let mut pushed = false;
        while let Some(f) = rec.poll_frame() {
            pushed = true;
            match self.seg.as_mut() {
                Some(seg) => {
                    // New parameters (a new resolution) take effect at a keyframe, in a
                    // new segment with a new init; looked at per keyframe, not per frame.
                    let video = rec
                        .file_params()
                        .and_then(|p| p.get(f.track))
                        .is_some_and(|p| p.codec.is_video());
                    if f.keyframe && video {
                        if let Some(p) = rec.current_params(f.track) {
                            seg.set_params(f.track, p);
                        }
                    }
                    seg.push(f, wall)
                }
                None => {
                    self.figures.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if pushed {
            self.last_frame = Instant::now();
            self.idled = false;
        }
        self.drain();
    }

    /// Periodic work: a stalled stream's last part goes to disk, a paused writer looks
    /// for space, drops and write errors are logged (one line at most once a minute).
    fn tick(&mut self) {
        let now = Instant::now();
        if self.rec.is_none() && self.refused.is_none() {
            // The alignment deadline passes without packets too.
            self.try_align(now);
        }
        if let Some(since) = self.waiting {
            if self.open.is_some() || self.paused.is_some() || self.refused.is_some() {
                self.waiting = None;
            } else if now.saturating_duration_since(since) >= NO_SEGMENT_WARN {
                self.waiting = None;
                warn!(path = %self.path, waited_ms = now.saturating_duration_since(since).as_millis() as u64, why = %self.no_segment_why(), "recording receives packets but has started no segment");
            }
        }
        if let Some(rec) = self.rec.as_mut() {
            if rec.poll_timeout().is_some_and(|t| t <= now) {
                let _ = rec.handle_timeout(now);
                self.frames(SystemTime::now());
            }
        }
        if !self.idled && now.duration_since(self.last_frame) >= self.settings.part_duration {
            if let Some(seg) = self.seg.as_mut() {
                seg.idle();
                self.idled = true;
                self.drain();
            }
        }
        if let Some((since, full)) = self.paused {
            if now >= since + RETRY && self.space_returned() {
                info!(path = %self.path, paused_ms = now.saturating_duration_since(since).as_millis() as u64, "recording resumed");
                let _ = full;
                self.paused = None;
            } else if now >= since + RETRY {
                self.paused = Some((now, full));
            }
        }
        if now.duration_since(self.last_log) >= LOG_EVERY {
            self.last_log = now;
            let dropped = self.figures.dropped.load(Ordering::Relaxed);
            let errors = self.figures.write_errors.load(Ordering::Relaxed);
            // One line a minute at most, only when something went wrong in it.
            if dropped > self.logged_drops || errors > self.logged_errors {
                warn!(
                    path = %self.path,
                    dropped = dropped - self.logged_drops,
                    write_errors = errors - self.logged_errors,
                    dropped_total = dropped,
                    write_errors_total = errors,
                    "recording lost frames or writes in the last minute"
                );
                self.logged_drops = dropped;
                self.logged_errors = errors;
            }
        }
    }

    /// Why no segment started yet (for the one warning).
    fn no_segment_why(&self) -> String {
        match (&self.rec, &self.seg) {
            (None, _) => format!(
                "tracks not aligned yet ({} packets held)",
                self.pending.len()
            ),
            (Some(rec), None) => match rec.start_lack() {
                Some(lack) => format!("the recorder cannot start: {lack}"),
                None => "the segment writer is not created".into(),
            },
            (Some(_), Some(seg)) => format!(
                "no keyframe reached the segment writer ({} frames skipped before one)",
                seg.stats().skipped_before_keyframe
            ),
        }
    }

    fn space_returned(&self) -> bool {
        match sluice_archive::free_space(&self.inner.dir) {
            Ok(s) => {
                let floor = self
                    .inner
                    .config
                    .min_free
                    .map_or(0, |m| m.bytes(s.total) / 2);
                s.available > floor.max(4 << 20)
            }
            Err(_) => false,
        }
    }

    /// Writes what the segment writer produced.
    fn drain(&mut self) {
        // The segment writer's own drops (late beyond the window, refused) go into the
        // path's figures too, so that the metric counts every frame not recorded.
        if let Some(seg) = &self.seg {
            let dropped = seg.stats().dropped();
            if dropped > self.seg_drops {
                self.figures
                    .dropped
                    .fetch_add(dropped - self.seg_drops, Ordering::Relaxed);
                self.seg_drops = dropped;
            }
        }
        while let Some(out) = self.seg.as_mut().and_then(SegmentWriter::poll_output) {
            if self.paused.is_some() {
                continue;
            }
            if let Err(e) = self.write(out) {
                self.failed(e);
            }
        }
    }

    fn write(&mut self, out: ArchiveOutput) -> std::io::Result<()> {
        let fsync = self.settings.fsync;
        match out {
            ArchiveOutput::SegmentStarted {
                wall,
                init,
                init_id,
                ..
            } => {
                self.close_open("error");
                let start = round_micros(wall);
                let rel = self.inner.template.render(&self.path, start);
                let full = self.inner.dir.join(&rel);
                let record = SegmentRecord {
                    path: rel.clone(),
                    init_id,
                    start_wall: start,
                    end_wall: start,
                    media_end: Duration::ZERO,
                    media_base: Duration::ZERO,
                    bytes: init.len() as u64,
                    recovered: false,
                    parts: Vec::new(),
                };
                // Indexed as open before the file exists: a crash in between leaves an
                // open entry without a file, which recovery drops.
                if let Err(e) = self.inner.index.put_open(&self.path, &record) {
                    warn!(path = %self.path, error = %e, "recordings index");
                }
                let parent = full.parent().map(ToOwned::to_owned).unwrap_or_default();
                // Directories this segment creates (a new path, a new day) are synced into
                // their parents too, up to the record directory.
                let mut created = Vec::new();
                let mut d = parent.as_path();
                while d != self.inner.dir && !d.exists() {
                    created.push(d.to_owned());
                    d = d.parent().unwrap_or(&self.inner.dir);
                }
                std::fs::create_dir_all(&parent)?;
                if fsync != Fsync::Off {
                    for c in &created {
                        if let Some(up) = c.parent() {
                            sync_dir(up)?;
                        }
                    }
                }
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&full)?;
                file.write_all(&init)?;
                if fsync != Fsync::Off {
                    file.sync_data()?;
                    sync_dir(&parent)?;
                }
                self.figures
                    .bytes
                    .fetch_add(init.len() as u64, Ordering::Relaxed);
                self.figures.segments.fetch_add(1, Ordering::Relaxed);
                self.inner.publish(ServerEvent::SegmentCreated {
                    path: self.path.clone(),
                    file: rel.clone(),
                    start: rfc3339(start),
                });
                info!(path = %self.path, file = %rel, "segment created");
                self.open = Some(Open {
                    file,
                    rel,
                    full,
                    start,
                    committed: init.len() as u64,
                    record,
                });
            }
            ArchiveOutput::Part {
                bytes,
                record,
                media_base,
                ..
            } => {
                let Some(o) = self.open.as_mut() else {
                    return Ok(());
                };
                o.file.write_all(&bytes)?;
                if fsync == Fsync::Part {
                    let t = Instant::now();
                    o.file.sync_data()?;
                    self.inner.fsync_seconds.observe(t.elapsed().as_secs_f64());
                }
                o.committed += bytes.len() as u64;
                o.record.bytes = o.committed;
                o.record.end_wall = record.wall_end().max(o.record.end_wall);
                o.record.media_end = record.media_end;
                o.record.media_base = media_base;
                o.record.parts.push(record);
                self.figures
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.figures.parts.fetch_add(1, Ordering::Relaxed);
                self.figures
                    .last_write_ms
                    .store(super::unix_ms(SystemTime::now()), Ordering::Relaxed);
                if let Err(e) = self.inner.index.put_open(&self.path, &o.record) {
                    warn!(path = %self.path, error = %e, "recordings index");
                }
            }
            ArchiveOutput::SegmentEnded { reason, record, .. } => {
                let Some(mut o) = self.open.take() else {
                    return Ok(());
                };
                if fsync == Fsync::Segment {
                    o.file.sync_all()?;
                }
                let mut rec = record;
                rec.path = o.rel.clone();
                rec.start_wall = o.start;
                rec.bytes = o.committed;
                o.record = rec;
                self.complete(o, reason_name(reason));
            }
        }
        Ok(())
    }

    /// Indexes a finished segment (durably) and announces it.
    fn complete(&mut self, o: Open, reason: &str) {
        let rec = o.record;
        if let Err(e) = self.inner.index.put(&self.path, &rec) {
            warn!(path = %self.path, error = %e, "recordings index");
        }
        info!(path = %self.path, file = %o.rel, reason, bytes = rec.bytes, parts = rec.parts.len(), "segment completed");
        self.inner.publish(ServerEvent::SegmentCompleted {
            path: self.path.clone(),
            file: o.rel,
            reason: reason.to_owned(),
            start: rfc3339(rec.start_wall),
            end: rfc3339(rec.end_wall),
            bytes: rec.bytes,
        });
        self.inner.retention_due();
    }

    /// Ends the open segment after a failure: the file is cut after its last complete
    /// part, and indexed as it is.
    fn close_open(&mut self, reason: &str) {
        let Some(o) = self.open.take() else {
            return;
        };
        let _ = o.file.set_len(o.committed);
        let _ = o.file.sync_all();
        let _ = &o.full;
        self.complete(o, reason);
    }

    /// A write failed: the open segment is closed at its last complete part and recording
    /// pauses (one log line) until space returns; the next segment then starts at a
    /// keyframe.
    fn failed(&mut self, e: std::io::Error) {
        let full = e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull;
        self.figures.write_errors.fetch_add(1, Ordering::Relaxed);
        if full {
            warn!(path = %self.path, error = %e, "disk full: recording paused until space returns");
            let available = sluice_archive::free_space(&self.inner.dir).map_or(0, |s| s.available);
            self.inner.publish(ServerEvent::DiskLow {
                dir: self.inner.dir.display().to_string(),
                available,
                full: true,
            });
        } else {
            warn!(path = %self.path, error = %e, "recording write failed: paused, retrying");
        }
        self.close_open(if full { "disk_full" } else { "error" });
        self.seg = None;
        self.paused = Some((Instant::now(), full));
        self.inner.retention_due();
    }

    /// Recording stops: the segment ends with what the writer still holds.
    fn finish(&mut self) {
        if let Some(rec) = self.rec.take() {
            if let Ok(rest) = rec.finish_frames() {
                if let Some(seg) = self.seg.as_mut() {
                    let wall = SystemTime::now();
                    for f in rest {
                        seg.push(f, wall);
                    }
                }
            }
        }
        if let Some(seg) = self.seg.as_mut() {
            seg.finish();
        }
        self.drain();
        self.close_open("stop");
    }
}

fn reason_name(r: CutReason) -> &'static str {
    r.as_str()
}

/// A wall time rounded down to whole microseconds (the index's unit, so a record's key
/// and its `start_wall` agree).
pub(super) fn round_micros(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64)
}
