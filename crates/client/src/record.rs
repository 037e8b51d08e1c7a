//! `sluice record`: pulls a stream and writes it to a fragmented MP4 in time-based parts
//! (`--part-duration`, default 1 s), each synced to disk as it is written (`--fsync part`),
//! so that a kill or a power cut loses at most the last part; finished cleanly on a duration
//! limit or Ctrl-C.
//!
//! This is a thin tokio driver of two sans-IO cores of `sluice-media`: the [`Recorder`],
//! which holds all the timing (RTP timestamps unwrapped against RTP-Info, arrival timing of
//! a frozen RTP clock on a frame grid, B-frames in picture order), run in frames mode, and
//! the server recorder's [`SegmentWriter`], which cuts the parts (`prft` + `moof` + `mdat` +
//! checksum, the archive's self-describing format, which `sluice_media::archive::recover`
//! repairs after a crash). It reads the connection, feeds them, appends the parts to the
//! file (on a thread of its own, so that a slow `fdatasync` never delays reading the
//! stream, whose arrival times time some cameras), syncs and prints progress.
//!
//! Bounds: the file must be able to start (every recorded track's parameter sets and, with
//! video, a keyframe) within [`START_TIMEOUT`], or recording fails naming the track and
//! what it lacks; a `duration` ends the run in wall time too, so a stream whose media time
//! stalls cannot keep it open.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_media::archive::{ArchiveConfig, ArchiveOutput, SegmentWriter};
use sluice_media::recorder::{Event, Recorder, RecorderError, TrackSpec};
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::stats::ReceiverStats;
use tracing::{info, warn};

use crate::probe::{media_descs, redact};
use crate::{ClientEvent, ClientMode, Connection, ConnectionError, Options};

/// How long recording may take to start: from connecting until every recorded track's
/// parameter sets and (with video) a keyframe are known. Long enough for a camera with a
/// several-second GOP, short enough that a stream that can never be recorded is reported
/// instead of waited on forever.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Once the file started, a `duration` run ends at the latest this long after the duration
/// has passed in wall time, even if the stream's media time lags (or stalls).
const DURATION_SLACK: Duration = Duration::from_secs(5);

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The RTSP side failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// No track can be recorded.
    #[error("no recordable track (supported: H.264, H.265, AAC, Opus); offered: {0}")]
    NoTracks(String),
    /// The stream never started playing.
    #[error("the stream did not start playing within {0:.1?}; nothing was written")]
    NotPlaying(Duration),
    /// The file could not start: a recorded track lacked what the file needs first.
    #[error(
        "cannot record track {track} ({encoding}): {missing} within {waited:.1?}; nothing was written"
    )]
    NotStarted {
        /// Index of the track in the SDP.
        track: usize,
        /// Its SDP encoding name (e.g. `H264`).
        encoding: String,
        /// What it lacked.
        missing: Missing,
        /// How long recording waited.
        waited: Duration,
    },
    /// Writing the file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output file.
        path: String,
        /// Why.
        reason: String,
    },
}

pub use sluice_media::recorder::Missing;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// The stream.
    pub url: String,
    /// The MP4 file to write.
    pub output: PathBuf,
    /// Stop after this much media (None: until the stream ends or Ctrl-C).
    pub duration: Option<Duration>,
    /// RTP over UDP instead of TCP.
    pub udp: bool,
    /// Media time per part (what a kill can lose); 10 ms to 60 s.
    pub part_duration: Duration,
    /// When the file is synced to disk.
    pub fsync: Fsync,
}

/// When `sluice record` syncs its file to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// fdatasync after each part (and the directory after creating the file): a power cut
    /// loses at most the part being written.
    #[default]
    Part,
    /// Once, when the file is complete (and the directory after creating it).
    Segment,
    /// Never: the OS writes back when it likes.
    Off,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "part" => Ok(Fsync::Part),
            "segment" => Ok(Fsync::Segment),
            "off" => Ok(Fsync::Off),
            other => Err(format!(
                "unknown fsync mode {other:?} (part, segment or off)"
            )),
        }
    }
}

/// Progress of a recording.
#[derive(Debug, Clone, Default)]
pub struct RecordStats {
    /// Media recorded.
    pub duration: Duration,
    /// Bytes written to the file.
    pub bytes: u64,
    /// RTP packets received.
    pub packets: u64,
    /// RTP packets lost (sequence gaps).
    pub lost: i64,
    /// Wall time since recording started.
    pub elapsed: Duration,
}

/// The file being written, once the recorder started it.
struct Out {
    /// The part writer, made once the recorder knows the file's tracks.
    writer: SegmentWriter,
    /// The thread that writes and syncs the files.
    files: FileWriter,
    /// When it started.
    at: Instant,
    /// When the recorder last handed out an access unit.
    last_frame: Instant,
    /// Whether the writer was told the stream is idle since then.
    idled: bool,
}

/// Records until the duration is reached, the stream ends, or `stop` completes; `progress`
/// is called about once a second.
///
/// Fails with [`RecordError::NotStarted`] (nothing written) when the file cannot start
/// within [`START_TIMEOUT`] or before the stream ends; with a `duration`, returns at the
/// latest a few seconds after the duration in wall time, even if less media arrived.
pub async fn record(
    opts: RecordOptions,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&RecordStats),
) -> Result<RecordStats, RecordError> {
    let started = Instant::now();
    let mut conn = Connection::open(Options {
        url: opts.url.clone(),
        credentials: None,
        udp: opts.udp,
        mode: ClientMode::Play,
        connect_timeout: Duration::from_secs(10),
    })
    .await?;
    let out_path = opts.output.display().to_string();
    let write_err = |e: std::io::Error| RecordError::Write {
        path: out_path.clone(),
        reason: e.to_string(),
    };
    if let Err(e) = config(&opts) {
        return Err(RecordError::Write {
            path: out_path,
            reason: e.to_string(),
        });
    }
    let mut rec: Option<Recorder> = None;
    // Per SDP track: its receiver statistics, for the tracks that are recorded.
    let mut rtp_stats: Vec<Option<ReceiverStats>> = Vec::new();
    let mut out: Option<Out> = None;
    let mut playing = false;
    let mut stats = RecordStats::default();
    let mut last_progress = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let timeout = rec.as_ref().and_then(Recorder::poll_timeout);
        let ev = tokio::select! {
            ev = conn.next_event() => Some(ev),
            _ = tick.tick() => None,
            _ = sleep_until(timeout) => None,
            _ = &mut stop => break,
        };
        let now = Instant::now();
        let fail = |e: RecorderError| record_error(e, &out_path, now.duration_since(started));
        match ev {
            None => {
                if let Some(r) = &mut rec {
                    r.handle_timeout(now).map_err(fail)?;
                }
            }
            Some(Ok(ClientEvent::Described { sdp, .. })) if rec.is_none() => {
                let descs = media_descs(&sdp).map_err(|e| RecordError::NoTracks(e.to_string()))?;
                let specs: Vec<TrackSpec> = descs
                    .into_iter()
                    .map(|d| TrackSpec {
                        video: d.media == "video",
                        encoding: d.encoding,
                        clock_rate: d.clock_rate,
                        channels: d.channels,
                        fmtp: d.fmtp,
                        framerate: d.framerate,
                    })
                    .collect();
                let r = Recorder::new(&specs, started).map_err(fail)?.frames_mode();
                rtp_stats = specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        r.is_recorded(i)
                            .then(|| ReceiverStats::new(s.clock_rate.max(1)))
                    })
                    .collect();
                rec = Some(r);
            }
            Some(Ok(ClientEvent::Playing { rtp_info, .. })) => {
                playing = true;
                if let Some(r) = &mut rec {
                    let rtptimes: Vec<Option<u32>> = rtp_info
                        .iter()
                        .map(|i| i.as_ref().and_then(|i| i.rtptime))
                        .collect();
                    r.playing(now, &rtptimes);
                    r.handle_timeout(now).map_err(fail)?;
                }
            }
            Some(Ok(ClientEvent::Rtp { track, data })) => {
                stats.packets += 1;
                if let (Some(Some(s)), Ok(h)) = (rtp_stats.get_mut(track), parse_rtp(&data)) {
                    s.handle_packet(&h, now);
                }
                if let Some(r) = &mut rec {
                    r.push_rtp(track, &data, now).map_err(fail)?;
                }
            }
            Some(Ok(ClientEvent::Closed)) | Some(Err(ConnectionError::Closed)) => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if out.is_none() {
                    return Err(e.into());
                }
                warn!(url = %redact(&opts.url), error = %e, "stream ended with an error; finishing the file");
                break;
            }
        }
        if let Some(r) = &mut rec {
            drain(r, &opts, &mut out, now, started).map_err(write_err)?;
            stats.duration = r.status().duration;
        }
        if out.is_none() && now.duration_since(started) >= START_TIMEOUT {
            let lack = rec
                .as_ref()
                .filter(|_| playing)
                .and_then(Recorder::start_lack);
            return Err(match lack {
                Some(l) => fail(RecorderError::NotStarted(l)),
                None => RecordError::NotPlaying(now.duration_since(started)),
            });
        }
        if let (Some(limit), Some(o)) = (opts.duration, &out) {
            if stats.duration >= limit {
                break;
            }
            if now.duration_since(o.at) >= limit + DURATION_SLACK {
                warn!(
                    recorded_ms = stats.duration.as_millis() as u64,
                    "the stream delivered less media than wall time passed; finishing the file"
                );
                break;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            stats.elapsed = started.elapsed();
            stats.bytes = out.as_ref().map_or(0, |o| o.files.bytes());
            stats.lost = lost(&rtp_stats);
            progress(&stats);
        }
    }
    conn.close(Duration::from_secs(2)).await;
    stats.elapsed = started.elapsed();
    stats.lost = lost(&rtp_stats);
    let now = Instant::now();
    let Some(mut r) = rec.filter(|_| playing) else {
        return Err(RecordError::NotPlaying(started.elapsed()));
    };
    drain(&mut r, &opts, &mut out, now, started).map_err(write_err)?;
    stats.duration = r.status().duration;
    let rest = r
        .finish_frames()
        .map_err(|e| record_error(e, &out_path, started.elapsed()))?;
    let Some(mut o) = out else {
        // finish_frames() fails when the file never started, so the writer exists here.
        return Err(RecordError::NotPlaying(started.elapsed()));
    };
    let wall = std::time::SystemTime::now();
    for f in rest {
        o.writer.push(f, wall);
    }
    o.writer.finish();
    write_parts(&mut o).map_err(write_err)?;
    stats.bytes = o.files.finish().map_err(write_err)?;
    let dropped = o.writer.stats().dropped();
    if dropped > 0 {
        warn!(dropped, "access units dropped (decode times out of order)");
    }
    progress(&stats);
    Ok(stats)
}

/// The part writer's configuration for `opts`: one segment for the whole run (no time cut,
/// clock steps ignored), parts of the asked duration.
fn config(opts: &RecordOptions) -> Result<ArchiveConfig, sluice_media::archive::ArchiveError> {
    let c = ArchiveConfig {
        part_duration: opts.part_duration,
        segment_duration: Duration::from_secs(100 * 365 * 86_400),
        clock_step: Duration::from_secs(3600),
        ..ArchiveConfig::default()
    };
    c.validate()?;
    Ok(c)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs the recorder's events and appends its bytes to the file, creating the file with the
/// init segment (so nothing is written when recording cannot start).
fn drain(
    r: &mut Recorder,
    opts: &RecordOptions,
    out: &mut Option<Out>,
    now: Instant,
    started: Instant,
) -> std::io::Result<()> {
    while let Some(ev) = r.poll_event() {
        match ev {
            Event::NotRecorded {
                track,
                encoding,
                error,
            } => warn!(track, encoding = %encoding, error = %error, "track not recorded"),
            Event::Started => {
                info!(output = %opts.output.display(), waited_ms = now.duration_since(started).as_millis() as u64, "recording started")
            }
            Event::ArrivalTiming {
                track,
                encoding,
                fps,
            } => {
                warn!(track, encoding = %encoding, fps, "the sender's RTP timestamps do not advance; timing the track by arrival")
            }
            Event::Undecodable { track, error } => {
                warn!(track, error = %error, "undecodable RTP packet skipped")
            }
        }
    }
    // Frames mode: the recorder's own output is only its init, which the part writer
    // makes again.
    while r.poll_output().is_some() {}
    if out.is_none() {
        let Some(params) = r.file_params() else {
            return Ok(());
        };
        let writer = SegmentWriter::new(
            params.to_vec(),
            config(opts).map_err(std::io::Error::other)?,
        )
        .map_err(std::io::Error::other)?;
        *out = Some(Out {
            writer,
            files: FileWriter::start(opts.output.clone(), opts.fsync),
            at: now,
            last_frame: now,
            idled: false,
        });
    }
    let Some(o) = out else {
        return Ok(());
    };
    let wall = std::time::SystemTime::now();
    let mut pushed = false;
    while let Some(f) = r.poll_frame() {
        o.writer.push(f, wall);
        pushed = true;
    }
    if pushed {
        (o.last_frame, o.idled) = (now, false);
    } else if !o.idled && now.duration_since(o.last_frame) >= opts.part_duration {
        // The stream stalled: its last media goes to disk now, not when it resumes.
        o.writer.idle();
        o.idled = true;
    }
    write_parts(o)
}

/// Hands what the part writer produced to the file thread; fails with the thread's error
/// once it failed.
fn write_parts(o: &mut Out) -> std::io::Result<()> {
    while let Some(output) = o.writer.poll_output() {
        o.files.send(output)?;
    }
    Ok(())
}

/// The thread that writes the files and syncs them, so that a slow `fdatasync` never delays
/// reading the stream (the recorder times arrival-timed cameras by when packets are read).
struct FileWriter {
    tx: Option<std::sync::mpsc::Sender<ArchiveOutput>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FileWriter {
    fn start(output: PathBuf, fsync: Fsync) -> FileWriter {
        let (tx, rx) = std::sync::mpsc::channel();
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = bytes.clone();
        let thread = std::thread::Builder::new()
            .name("record-files".into())
            .spawn(move || write_files(&rx, &output, fsync, &counter))
            .ok();
        FileWriter {
            tx: Some(tx),
            thread,
            bytes,
        }
    }

    /// Bytes written so far.
    fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues an output; fails with the thread's error once it stopped.
    fn send(&mut self, output: ArchiveOutput) -> std::io::Result<()> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(output).is_ok());
        if sent {
            return Ok(());
        }
        self.finish()?;
        Err(std::io::Error::other("the file writer stopped"))
    }

    /// Waits until everything queued is written and synced; the bytes written.
    fn finish(&mut self) -> std::io::Result<u64> {
        self.tx = None;
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(std::io::Error::other("the file writer panicked")),
            None => return Err(std::io::Error::other("the file writer did not start")),
        }
        Ok(self.bytes())
    }
}

/// The file thread: creates each segment's file with its init (syncing the directory so that
/// it survives a power cut), appends each part (and syncs it with `--fsync part`), syncs a
/// completed file (unless `--fsync off`).
fn write_files(
    rx: &std::sync::mpsc::Receiver<ArchiveOutput>,
    output: &std::path::Path,
    fsync: Fsync,
    bytes: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut file: Option<File> = None;
    let count = |n: usize| bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    while let Ok(out) = rx.recv() {
        match out {
            ArchiveOutput::SegmentStarted { segment, init, .. } => {
                let path = segment_path(output, segment);
                let mut f = File::create(&path)?;
                f.write_all(&init)?;
                if fsync != Fsync::Off {
                    f.sync_all()?;
                    sync_dir(&path)?;
                }
                count(init.len());
                file = Some(f);
            }
            ArchiveOutput::Part { bytes, .. } => {
                let Some(f) = file.as_mut() else {
                    continue;
                };
                f.write_all(&bytes)?;
                if fsync == Fsync::Part {
                    f.sync_data()?;
                }
                count(bytes.len());
            }
            ArchiveOutput::SegmentEnded {
                segment, reason, ..
            } => {
                if let Some(f) = file.take() {
                    if fsync != Fsync::Off {
                        f.sync_all()?;
                    }
                }
                if reason != sluice_media::archive::CutReason::Stop {
                    warn!(
                        segment,
                        reason = reason.as_str(),
                        next = %segment_path(output, segment + 1).display(),
                        "the stream forced a new file"
                    );
                }
            }
        }
    }
    Ok(())
}

/// The file of segment `n`: the output for the first, `<stem>-<n>.<ext>` for the next.
fn segment_path(output: &std::path::Path, n: u64) -> PathBuf {
    if n <= 1 {
        return output.to_path_buf();
    }
    let stem = output
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match output.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    output.with_file_name(name)
}

/// Syncs the directory holding `path`, so that a new file's entry is durable.
fn sync_dir(path: &std::path::Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Packets lost on the recorded tracks.
fn lost(stats: &[Option<ReceiverStats>]) -> i64 {
    stats.iter().flatten().map(|s| s.cumulative_lost()).sum()
}

/// The recording's error for the recorder's, `waited` after connecting.
fn record_error(e: RecorderError, path: &str, waited: Duration) -> RecordError {
    match e {
        RecorderError::NoTracks { offered } => RecordError::NoTracks(offered),
        RecorderError::NotStarted(lack) => RecordError::NotStarted {
            track: lack.track,
            encoding: lack.encoding,
            missing: lack.missing,
            waited,
        },
        e @ RecorderError::Mux { .. } => RecordError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_track_and_what_it_lacks() {
        let e = RecordError::NotStarted {
            track: 0,
            encoding: "H264".into(),
            missing: Missing::Keyframe,
            waited: Duration::from_secs(10),
        };
        assert_eq!(
            e.to_string(),
            "cannot record track 0 (H264): no keyframe arrived within 10.0s; nothing was written"
        );
    }
}
