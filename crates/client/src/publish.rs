//! `sluice publish`: plays a file into an RTSP server with ANNOUNCE/RECORD at real-time
//! pace, optionally looping with continuous timestamps.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_codec::packetizer::Packetizer;
use sluice_media::Demuxer;

use crate::{ClientEvent, ClientMode, Connection, ConnectionError, Options};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The file cannot be read or has nothing to send.
    #[error("cannot publish {path}: {reason}")]
    Media {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The RTSP side failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The file (MP4, MKV, …).
    pub file: PathBuf,
    /// Where: `rtsp://host:port/path`.
    pub url: String,
    /// Start again at the end.
    pub looping: bool,
    /// RTP over UDP instead of TCP.
    pub udp: bool,
}

/// Progress of a publication.
#[derive(Debug, Clone, Default)]
pub struct PublishStats {
    /// Media sent.
    pub duration: Duration,
    /// RTP packets sent.
    pub packets: u64,
    /// RTP bytes sent.
    pub bytes: u64,
    /// Completed loops.
    pub loops: u32,
}

struct Out {
    packetizer: Packetizer,
    timescale: u32,
    rtp_offset: u32,
}

/// The SDP announced for a file: its packetizers' media sections with `trackID=N` controls.
pub fn announce_sdp(packetizers: &[Packetizer]) -> String {
    let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Sluice publish\r\nt=0 0\r\n");
    for (i, p) in packetizers.iter().enumerate() {
        sdp.push_str(&p.sdp_media());
        sdp.push_str(&format!("a=control:trackID={i}\r\n"));
    }
    sdp
}

/// Publishes until the file ends (or forever with `looping`) or `stop` completes;
/// `progress` is called about once a second.
pub async fn publish(
    opts: PublishOptions,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&PublishStats),
) -> Result<PublishStats, PublishError> {
    let path = opts.file.display().to_string();
    let media_err = |reason: String| PublishError::Media {
        path: path.clone(),
        reason,
    };
    let mut demuxer: Box<dyn Demuxer> =
        sluice_media::open(&opts.file).map_err(|e| media_err(e.to_string()))?;
    let info = demuxer.info().clone();
    let mut outs = Vec::new();
    for (i, t) in info.tracks.iter().enumerate() {
        let p = Packetizer::new(
            &t.params,
            96 + i as u8,
            rand::random(),
            rand::random(),
            1400,
        )
        .map_err(|e| media_err(format!("track {i}: {e}")))?;
        outs.push(Out {
            packetizer: p,
            timescale: t.timescale.max(1),
            rtp_offset: rand::random(),
        });
    }
    if outs.is_empty() {
        return Err(media_err("no tracks".into()));
    }
    let sdp = announce_sdp(
        &outs
            .iter()
            .map(|o| o.packetizer.clone())
            .collect::<Vec<_>>(),
    );
    let mut conn = Connection::open(Options {
        url: opts.url.clone(),
        credentials: None,
        udp: opts.udp,
        mode: ClientMode::Record { sdp },
        connect_timeout: Duration::from_secs(10),
    })
    .await?;
    // Wait for RECORD's answer.
    loop {
        if let ClientEvent::Playing { .. } = conn.next_event().await? {
            break;
        }
    }
    tokio::pin!(stop);
    let duration = info.duration.as_secs_f64();
    let start = Instant::now();
    let mut stats = PublishStats::default();
    let mut last_progress = Instant::now();
    let mut packets = Vec::new();
    loop {
        let sample = match demuxer.next_sample() {
            Ok(Some(s)) => s,
            Ok(None) if opts.looping && duration > 0.0 => {
                demuxer
                    .seek(Duration::ZERO)
                    .map_err(|e| media_err(e.to_string()))?;
                stats.loops += 1;
                continue;
            }
            Ok(None) => break,
            Err(e) => return Err(media_err(e.to_string())),
        };
        let Some(out) = outs.get_mut(sample.track) else {
            continue;
        };
        // Samples ending before presentation time 0 (AAC priming cut by the edit list) are
        // not presented; sending them again at a loop would step timestamps back.
        if sample.pts.saturating_add(i64::from(sample.duration)) <= 0 {
            continue;
        }
        let loop_secs = f64::from(stats.loops) * duration;
        let media = sample.dts as f64 / f64::from(out.timescale) + loop_secs;
        let due = start + Duration::from_secs_f64(media.max(0.0));
        // Wait for the sample's time while serving the connection (keep-alives, RRs).
        loop {
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => break,
                ev = conn.next_event() => match ev {
                    Ok(ClientEvent::Closed) => return Ok(stats),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                },
                _ = &mut stop => {
                    conn.close(Duration::from_secs(2)).await;
                    return Ok(stats);
                }
            }
        }
        let clock = out.packetizer.clock_rate();
        let pts_ticks = (i128::from(sample.pts) * i128::from(clock) / i128::from(out.timescale))
            as i64
            + (loop_secs * f64::from(clock)).round() as i64;
        let ts = out.rtp_offset.wrapping_add(pts_ticks as u32);
        packets.clear();
        if out
            .packetizer
            .packetize(&sample.data, ts, sample.keyframe, &mut packets)
            .is_err()
        {
            continue;
        }
        for p in &packets {
            conn.send_rtp(sample.track, p).await?;
            stats.packets += 1;
            stats.bytes += p.len() as u64;
        }
        stats.duration = Duration::from_secs_f64(media.max(0.0));
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&stats);
        }
    }
    conn.close(Duration::from_secs(2)).await;
    progress(&stats);
    Ok(stats)
}
