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

use super::{rfc3339, Inner, PathFigures};
use crate::config::{Fsync, PathRecordSettings};

/// What the sink sends the writer.
pub(super) enum Msg {
    /// A packet of the stream (the GOP cache's first, then live ones).
    Packet(MediaPacket),
}

/// How long the writer waits for every track's first packet before aligning the tracks
/// with what it has.
const ALIGN_WAIT: Duration = Duration::from_secs(1);
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
    pending: Vec<MediaPacket>,
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
        Writer {
            path,
            stream,
            inner,
            figures,
            settings,
            specs,
            pending: Vec::new(),
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
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Msg::Packet(p)) => {
                    self.packet(p);
                    // Take what queued up meanwhile before writing out.
                    while let Ok(Msg::Packet(p)) = rx.try_recv() {
                        self.packet(p);
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
        if self.rec.is_none() {
            self.pending.push(p);
            self.try_align();
            return;
        }
        self.push(p);
    }

    /// Starts the depacketizing recorder once every track has a packet (or after
    /// [`ALIGN_WAIT`]): each track's RTP time is mapped to the instant of the first packet
    /// through its arrival, so that tracks start in sync without RTP-Info.
    fn try_align(&mut self) {
        let (Some(first), Some(last)) = (self.pending.first(), self.pending.last()) else {
            return;
        };
        let base = first.received_at;
        let all = (0..self.specs.len()).all(|t| self.pending.iter().any(|p| p.track == t));
        if !all && last.received_at.duration_since(base) < ALIGN_WAIT {
            return;
        }
        let by_arrival: Vec<Option<u32>> = (0..self.specs.len())
            .map(|t| {
                let p = self.pending.iter().find(|p| p.track == t)?;
                let clock = f64::from(self.specs[t].clock_rate.max(1));
                let behind = p.received_at.duration_since(base).as_secs_f64() * clock;
                Some(p.header.timestamp.wrapping_sub(behind as u32))
            })
            .collect();
        let rtptimes = self.by_sender_reports(first).unwrap_or(by_arrival);
        let mut rec = match Recorder::new(&self.specs, base) {
            Ok(r) => r.frames_mode(),
            Err(e) => {
                warn!(path = %self.path, error = %e, "cannot record this path");
                self.pending.clear();
                self.paused = Some((Instant::now() + Duration::from_secs(3600), false));
                return;
            }
        };
        rec.playing(base, &rtptimes);
        self.rec = Some(rec);
        for p in std::mem::take(&mut self.pending) {
            self.push(p);
        }
    }

    /// The tracks' RTP times at the instant of packet `first`, from the source's Sender
    /// Reports (one NTP clock for all tracks: exact even when a track's packets arrive
    /// ahead of their presentation, as video with B-frames does); None unless every track
    /// has one and they agree with arrival within 5 s.
    fn by_sender_reports(&self, first: &MediaPacket) -> Option<Vec<Option<u32>>> {
        let stream = self.stream.upgrade()?;
        let n = self.specs.len();
        let srs: Vec<_> = (0..n)
            .map(|t| stream.sr_mapping(t))
            .collect::<Option<_>>()?;
        let ntp = |m: &sluice_rtp::clock::SrMapping| m.ntp.0 as f64 / 4_294_967_296.0;
        let clock = |t: usize| f64::from(self.specs.get(t).map_or(1, |s| s.clock_rate.max(1)));
        let m0 = srs.get(first.track)?;
        let since = first.header.timestamp.wrapping_sub(m0.rtp_timestamp) as i32;
        let at = ntp(m0) + f64::from(since) / clock(first.track);
        let out: Vec<Option<u32>> = srs
            .iter()
            .enumerate()
            .map(|(t, m)| {
                let ticks = ((at - ntp(m)) * clock(t)).round() as i64;
                Some(m.rtp_timestamp.wrapping_add(ticks as u32))
            })
            .collect();
        // A sender whose reports disagree with its packets (a clock that jumped) is
        // aligned by arrival instead.
        let sane = (0..n).all(|t| {
            let Some(p) = self.pending.iter().find(|p| p.track == t) else {
                return true;
            };
            let Some(Some(rt)) = out.get(t) else {
                return false;
            };
            let ahead = f64::from(p.header.timestamp.wrapping_sub(*rt) as i32) / clock(t);
            let arrived = p
                .received_at
                .duration_since(first.received_at)
                .as_secs_f64();
            (ahead - arrived).abs() < 5.0
        });
        sane.then_some(out)
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
                        warn!(path = %self.path, error = %e, "cannot record this path's tracks");
                        self.paused = Some((Instant::now() + Duration::from_secs(3600), false));
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
