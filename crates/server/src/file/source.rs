//! The file source: plays a demuxed file into a [`Stream`] at media pace, with seeking,
//! pause/resume and Scale (keyframes only for fast forward and reverse).
//!
//! One instance serves either one on-demand reader (a private stream per VOD session) or
//! all readers of a `file://` path / the built-in demo (a shared, looping live stream).
//! Each instance is one tokio task that sleeps until its next sample is due: no thread
//! and no busy loop per reader. Samples are read on demand from the demuxer (file reads
//! are short and served from the page cache; a thread-pool hop per sample would cost
//! more than the read), so memory does not grow with the file.
//!
//! The timing, seeking, Scale and loop arithmetic is the sans-IO
//! [`Player`] shared with `sluice publish`; this module only
//! sleeps until it says a sample is due and pushes the packets into the stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_codec::packetizer::Packetizer;
use sluice_media::player::{EndReason, Player, PlayerOptions, Poll, Skip, TrackOutput};
use sluice_media::Demuxer;
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::rtcp::SenderInfo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use sluice_hub::Stream;

pub use sluice_media::player::{PlayError, PlayStart, TrackStart};

/// How far ahead of their due time samples are sent (smooths scheduling jitter).
const LEAD: Duration = Duration::from_millis(50);
/// Largest RTP payload produced.
pub const MAX_PAYLOAD: usize = 1400;

struct Shared {
    player: Mutex<Player>,
    wake: Notify,
    stream: Arc<Stream>,
    label: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Player> {
        self.player.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A file playing into a stream.
pub struct FileSource {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("label", &self.shared.label)
            .finish()
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Packetizers for a demuxer's tracks: payload types 96, 97, … and random SSRCs and
/// initial sequence numbers/timestamps, as RFC 3550 recommends.
pub fn packetizers(
    demuxer: &dyn Demuxer,
) -> Result<Vec<Packetizer>, sluice_codec::packetizer::PacketizeError> {
    demuxer
        .info()
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Packetizer::new(
                &t.params,
                96 + i as u8,
                rand::random(),
                rand::random(),
                MAX_PAYLOAD,
            )
        })
        .collect()
}

impl FileSource {
    /// A paused source playing `demuxer` into `stream` with these packetizers (one per
    /// demuxer track, as from [`packetizers`]; tracks without one are not sent). `looping`
    /// restarts at the end with continuous timestamps (live file paths); otherwise the end
    /// sends an end-of-stream (RTCP BYE) to the stream's sinks and the source waits for a
    /// new PLAY.
    pub fn new(
        demuxer: Box<dyn Demuxer>,
        packetizers: Vec<Packetizer>,
        stream: Arc<Stream>,
        looping: bool,
        label: String,
    ) -> FileSource {
        let outputs = packetizers
            .into_iter()
            .map(|packetizer| TrackOutput {
                packetizer,
                rtp_offset: rand::random(),
            })
            .collect();
        let options = PlayerOptions {
            looping,
            lead: LEAD,
        };
        let player = Player::new(demuxer, outputs, options);
        let shared = Arc::new(Shared {
            player: Mutex::new(player),
            wake: Notify::new(),
            stream,
            label,
        });
        let task = tokio::spawn(run(shared.clone()));
        FileSource { shared, task }
    }
}

/// The controls the RTSP module drives (through the hub) and the file module starts with.
impl sluice_hub::Playback for FileSource {
    /// The file's duration in seconds.
    fn duration(&self) -> f64 {
        self.shared.lock().duration()
    }

    /// Starts or seeks playback; see [`Player::play`]. At Scale 1 the stream's sender
    /// timing is re-anchored so RTCP Sender Reports map the new start to the wall clock.
    /// Stored files have no wall clock: clock positions are refused; `Speed` multiplies
    /// the Scale (a file has no timestamps to keep); `Frames` and `Rate-Control` do not
    /// apply.
    fn play(
        &self,
        request: &sluice_hub::PlayRequest,
        now: Instant,
    ) -> Result<PlayStart, PlayError> {
        let npt = |p: Option<sluice_hub::Position>| match p {
            None => Ok(None),
            Some(sluice_hub::Position::Npt(s)) => Ok(Some(s)),
            Some(sluice_hub::Position::Clock(_)) => Err(PlayError::InvalidRange(
                "a stored file has no clock times; use npt".into(),
            )),
        };
        let (start, end) = (npt(request.start)?, npt(request.end)?);
        let scale = request.scale * request.speed;
        let started = self.shared.lock().play(start, end, scale, now)?;
        // Sender Reports follow media time only at normal speed.
        if scale == 1.0 {
            let ntp = NtpTime::from_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            for (i, t) in started.tracks.iter().enumerate() {
                let info = SenderInfo {
                    ssrc: 0,
                    ntp,
                    rtp_timestamp: t.rtptime,
                    packet_count: 0,
                    octet_count: 0,
                };
                self.shared.stream.handle_sender_report(i, &info, now);
            }
        }
        self.shared.wake.notify_one();
        Ok(started)
    }

    /// Pauses; returns the position (seconds) a PLAY without Range resumes at.
    fn pause(&self) -> f64 {
        self.shared.lock().pause()
    }

    /// The current media position in seconds.
    fn position(&self) -> f64 {
        self.shared.lock().position()
    }
}

enum Step {
    Wait,
    SleepUntil(Instant),
    Continue,
}

async fn run(shared: Arc<Shared>) {
    let mut sent_since_yield = 0u32;
    loop {
        let step = {
            let mut player = shared.lock();
            step(&mut player, &shared, Instant::now())
        };
        match step {
            Step::Wait => shared.wake.notified().await,
            Step::SleepUntil(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t.into()) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            Step::Continue => {
                sent_since_yield += 1;
                if sent_since_yield >= 64 {
                    sent_since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Does what the player says: pushes one due sample's packets, or says how long to wait.
fn step(player: &mut Player, shared: &Shared, now: Instant) -> Step {
    match player.poll(now) {
        Poll::Send(burst) => {
            shared.stream.push_frame(burst.track, burst.packets, now);
            Step::Continue
        }
        Poll::Skipped(skip) => {
            match skip {
                Skip::Packetize { track, error } => {
                    debug!(source = %shared.label, track, error = %error, "sample not packetizable; skipped");
                }
                Skip::NoTrack(track) => {
                    debug!(source = %shared.label, track, "sample of an unsent track; skipped");
                }
                Skip::Keyframe(error) => {
                    debug!(source = %shared.label, error = %error, "keyframe read failed");
                }
            }
            Step::Continue
        }
        Poll::Ended(reason) => {
            match reason {
                EndReason::Failed(error) => {
                    warn!(source = %shared.label, error = %error, "file read failed; stopping playback");
                }
                EndReason::EndOfFile | EndReason::RangeEnd => {
                    debug!(source = %shared.label, position = player.position(), "end of file");
                }
            }
            shared.stream.push_end_of_media();
            Step::Wait
        }
        Poll::WaitUntil(t) => Step::SleepUntil(t),
        Poll::Idle => Step::Wait,
    }
}
