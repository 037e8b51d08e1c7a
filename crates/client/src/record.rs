//! `sluice record`: pulls a stream and writes it to a fragmented MP4, playable after every
//! fragment (so an interruption loses at most the last second), finished cleanly on a
//! duration limit or Ctrl-C.
//!
//! Timing: each track's RTP timestamps are unwrapped relative to its RTP-Info `rtptime`
//! (all tracks' rtptimes name the same instant, so tracks stay in sync), and the file
//! starts at the first video keyframe (or first audio frame when there is no video).

use std::fs::File;
use std::future::Future;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_codec::depacketizer::{AccessUnit, Depacketizer};
use sluice_media::mux::Mp4Writer;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::stats::ReceiverStats;
use tracing::warn;

use crate::probe::{media_descs, redact};
use crate::{ClientEvent, ClientMode, Connection, ConnectionError, Options};

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The RTSP side failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// No track can be recorded.
    #[error("no recordable track (supported: H.264, H.265, AAC, Opus); offered: {0}")]
    NoTracks(String),
    /// Codec parameters never became known.
    #[error("no codec parameters (SPS/PPS) received for track {0}")]
    NoParams(usize),
    /// Writing the file failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output file.
        path: String,
        /// Why.
        reason: String,
    },
}

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

struct Track {
    dep: Depacketizer,
    clock: u32,
    video: bool,
    stats: ReceiverStats,
    origin: Option<u32>,
    last_ts: u32,
    last_rel: i64,
    last_dts: Option<u64>,
    started: bool,
}

impl Track {
    /// Ticks of `ts` since the track's origin, unwrapped.
    fn rel(&mut self, ts: u32) -> i64 {
        if !self.started {
            self.started = true;
            self.last_ts = *self.origin.get_or_insert(ts);
            self.last_rel = 0;
        }
        self.last_rel += i64::from(ts.wrapping_sub(self.last_ts) as i32);
        self.last_ts = ts;
        self.last_rel
    }
}

/// Records until the duration is reached, the stream ends, or `stop` completes; `progress`
/// is called about once a second.
pub async fn record(
    opts: RecordOptions,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&RecordStats),
) -> Result<RecordStats, RecordError> {
    let mut conn = Connection::open(Options {
        url: opts.url.clone(),
        credentials: None,
        udp: opts.udp,
        mode: ClientMode::Play,
        connect_timeout: Duration::from_secs(10),
    })
    .await?;
    let started = Instant::now();
    let out_path = opts.output.display().to_string();
    let mut tracks: Vec<Option<Track>> = Vec::new();
    // Access units waiting for the writer: (track, seconds since origin, AU).
    let mut pending: Vec<(usize, f64, AccessUnit)> = Vec::new();
    let mut writer: Option<Mp4Writer<BufWriter<File>>> = None;
    let mut writer_index: Vec<Option<usize>> = Vec::new();
    let mut origin_secs = 0.0f64;
    let mut stats = RecordStats::default();
    let mut last_progress = Instant::now();
    tokio::pin!(stop);
    loop {
        let ev = tokio::select! {
            ev = conn.next_event() => ev,
            _ = &mut stop => break,
        };
        match ev {
            Ok(ClientEvent::Described { sdp, .. }) => {
                let descs = media_descs(&sdp).map_err(|e| RecordError::NoTracks(e.to_string()))?;
                for (i, d) in descs.iter().enumerate() {
                    match Depacketizer::new(
                        &d.encoding,
                        d.clock_rate,
                        d.channels,
                        d.fmtp.as_deref(),
                    ) {
                        Ok(dep) => tracks.push(Some(Track {
                            clock: d.clock_rate.max(1),
                            video: d.media == "video",
                            stats: ReceiverStats::new(d.clock_rate.max(1)),
                            dep,
                            origin: None,
                            last_ts: 0,
                            last_rel: 0,
                            last_dts: None,
                            started: false,
                        })),
                        Err(e) => {
                            warn!(track = i, encoding = %d.encoding, error = %e, "track not recorded");
                            tracks.push(None);
                        }
                    }
                }
                if tracks.iter().all(Option::is_none) {
                    let offered: Vec<&str> = descs.iter().map(|d| d.encoding.as_str()).collect();
                    return Err(RecordError::NoTracks(offered.join(", ")));
                }
            }
            Ok(ClientEvent::Playing { rtp_info, .. }) => {
                for (t, info) in tracks.iter_mut().zip(rtp_info) {
                    if let (Some(t), Some(ts)) = (t, info.and_then(|i| i.rtptime)) {
                        t.origin = Some(ts);
                    }
                }
            }
            Ok(ClientEvent::Rtp { track, data }) => {
                stats.packets += 1;
                let Some(Some(t)) = tracks.get_mut(track) else {
                    continue;
                };
                if let Ok(h) = parse_rtp(&data) {
                    t.stats.handle_packet(&h, Instant::now());
                }
                let aus = match t.dep.push(&data) {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(track, error = %e, "undecodable RTP packet skipped");
                        continue;
                    }
                };
                for au in aus {
                    let rel = t.rel(au.rtp_timestamp);
                    let secs = rel as f64 / f64::from(t.clock);
                    match &mut writer {
                        Some(w) => {
                            let Some(Some(wi)) = writer_index.get(track) else {
                                continue;
                            };
                            write_au(w, *wi, t, secs - origin_secs, &au).map_err(|reason| {
                                RecordError::Write {
                                    path: out_path.clone(),
                                    reason,
                                }
                            })?;
                            stats.duration = stats
                                .duration
                                .max(Duration::from_secs_f64((secs - origin_secs).max(0.0)));
                        }
                        None => pending.push((track, secs, au)),
                    }
                }
                if writer.is_none() {
                    if let Some((w, idx, origin)) = try_start(&opts, &mut tracks, &mut pending)? {
                        writer = Some(w);
                        writer_index = idx;
                        origin_secs = origin;
                    } else if pending.len() > 20_000 {
                        let missing = tracks
                            .iter()
                            .position(|t| t.as_ref().is_some_and(|t| t.dep.params().is_none()))
                            .unwrap_or(0);
                        return Err(RecordError::NoParams(missing));
                    }
                }
                if let Some(limit) = opts.duration {
                    if stats.duration >= limit {
                        break;
                    }
                }
            }
            Ok(ClientEvent::Closed) | Err(ConnectionError::Closed) => break,
            Ok(_) => {}
            Err(e) => {
                if writer.is_none() {
                    return Err(e.into());
                }
                warn!(url = %redact(&opts.url), error = %e, "stream ended with an error; finishing the file");
                break;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            stats.elapsed = started.elapsed();
            stats.bytes = writer.as_ref().map_or(0, |w| w.bytes_written());
            stats.lost = tracks
                .iter()
                .flatten()
                .map(|t| t.stats.cumulative_lost())
                .sum();
            progress(&stats);
        }
    }
    conn.close(Duration::from_secs(2)).await;
    stats.elapsed = started.elapsed();
    stats.lost = tracks
        .iter()
        .flatten()
        .map(|t| t.stats.cumulative_lost())
        .sum();
    match writer {
        Some(w) => {
            stats.bytes = w.bytes_written();
            let inner = w.finish().map_err(|e| RecordError::Write {
                path: out_path.clone(),
                reason: e.to_string(),
            })?;
            inner.into_inner().map_err(|e| RecordError::Write {
                path: out_path.clone(),
                reason: e.to_string(),
            })?;
        }
        None => {
            let missing = tracks
                .iter()
                .position(|t| t.as_ref().is_some_and(|t| t.dep.params().is_none()))
                .unwrap_or(0);
            return Err(RecordError::NoParams(missing));
        }
    }
    progress(&stats);
    Ok(stats)
}

/// Creates the writer once every recorded track's parameters are known and (with video)
/// a keyframe arrived; writes the pending access units from that keyframe on.
#[allow(clippy::type_complexity)]
fn try_start(
    opts: &RecordOptions,
    tracks: &mut [Option<Track>],
    pending: &mut Vec<(usize, f64, AccessUnit)>,
) -> Result<Option<(Mp4Writer<BufWriter<File>>, Vec<Option<usize>>, f64)>, RecordError> {
    if tracks.iter().flatten().any(|t| t.dep.params().is_none()) {
        return Ok(None);
    }
    let has_video = tracks.iter().flatten().any(|t| t.video);
    let origin = if has_video {
        match pending.iter().find(|(i, _, au)| {
            au.keyframe
                && tracks
                    .get(*i)
                    .and_then(|t| t.as_ref())
                    .is_some_and(|t| t.video)
        }) {
            Some((_, secs, _)) => *secs,
            None => return Ok(None),
        }
    } else {
        match pending.first() {
            Some((_, secs, _)) => *secs,
            None => return Ok(None),
        }
    };
    let mut index = Vec::with_capacity(tracks.len());
    let mut params = Vec::new();
    for t in tracks.iter() {
        match t {
            Some(t) => {
                index.push(Some(params.len()));
                params.push(
                    t.dep
                        .params()
                        .unwrap_or_else(|| unreachable!("checked above")),
                );
            }
            None => index.push(None),
        }
    }
    let path = opts.output.display().to_string();
    let file = File::create(&opts.output).map_err(|e| RecordError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut w = Mp4Writer::new(BufWriter::new(file), &params).map_err(|e| RecordError::Write {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    for (i, secs, au) in pending.drain(..) {
        if secs < origin - 1e-6 {
            continue;
        }
        let (Some(Some(t)), Some(Some(wi))) = (tracks.get_mut(i), index.get(i)) else {
            continue;
        };
        write_au(&mut w, *wi, t, secs - origin, &au).map_err(|reason| RecordError::Write {
            path: path.clone(),
            reason,
        })?;
    }
    Ok(Some((w, index, origin)))
}

fn write_au(
    w: &mut Mp4Writer<BufWriter<File>>,
    index: usize,
    t: &mut Track,
    secs: f64,
    au: &AccessUnit,
) -> Result<(), String> {
    if secs < 0.0 {
        return Ok(()); // before the file's start
    }
    // RTP gives presentation times; keep decode times strictly increasing.
    let pts = (secs * f64::from(t.clock)).round() as u64;
    let dts = match t.last_dts {
        Some(prev) if pts <= prev => prev + 1,
        _ => pts,
    };
    let offset = i32::try_from(pts as i64 - dts as i64).unwrap_or(0);
    t.last_dts = Some(dts);
    w.write_sample(index, dts, offset, au.keyframe, &au.data)
        .map_err(|e| e.to_string())
}
