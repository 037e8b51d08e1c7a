//! `sluice publish`: plays a file into an RTSP server with ANNOUNCE/RECORD at real-time
//! pace, optionally looping with continuous timestamps.
//!
//! The pacing and timestamp arithmetic is the sans-IO
//! [`Player`] the server's file sources use; this module
//! sleeps until it says a sample is due (serving the connection meanwhile) and sends.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sluice_codec::packetizer::Packetizer;
use sluice_media::player::{EndReason, Player, PlayerOptions, Poll, TrackOutput};
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
    let demuxer: Box<dyn Demuxer> =
        sluice_media::open(&opts.file).map_err(|e| media_err(e.to_string()))?;
    let info = demuxer.info().clone();
    let mut packetizers = Vec::new();
    for (i, t) in info.tracks.iter().enumerate() {
        let p = Packetizer::new(
            &t.params,
            96 + i as u8,
            rand::random(),
            rand::random(),
            1400,
        )
        .map_err(|e| media_err(format!("track {i}: {e}")))?;
        packetizers.push(p);
    }
    if packetizers.is_empty() {
        return Err(media_err("no tracks".into()));
    }
    let sdp = announce_sdp(&packetizers);
    let outputs = packetizers
        .into_iter()
        .map(|packetizer| TrackOutput {
            packetizer,
            rtp_offset: rand::random(),
        })
        .collect();
    let mut player = Player::new(
        demuxer,
        outputs,
        PlayerOptions {
            looping: opts.looping,
            lead: Duration::ZERO,
        },
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
    let duration = player.duration();
    player
        .play(None, None, 1.0, Instant::now())
        .map_err(|e| media_err(e.to_string()))?;
    let mut stats = PublishStats::default();
    let mut last_progress = Instant::now();
    loop {
        let burst = match player.poll(Instant::now()) {
            Poll::Send(burst) => burst,
            Poll::Skipped(_) => continue,
            Poll::Ended(EndReason::Failed(e)) => return Err(media_err(e.to_string())),
            Poll::Ended(_) | Poll::Idle => break,
            Poll::WaitUntil(due) => {
                // Wait for the sample's time while serving the connection (keep-alives, RRs).
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
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
                continue;
            }
        };
        for p in &burst.packets {
            conn.send_rtp(burst.track, p).await?;
            stats.packets += 1;
            stats.bytes += p.len() as u64;
        }
        stats.loops = burst.loops;
        let media = f64::from(burst.loops) * duration + burst.position;
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
