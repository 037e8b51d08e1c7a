//! The replay driver: one tokio task per playback session that sleeps until the engine
//! says a frame is due and pushes its packets into the session's private stream. The
//! RTSP module controls it through [`sluice_hub::Playback`].

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use sluice_hub::on_demand::{PlayError, PlayStart};
use sluice_hub::{MediaPacket, PlayRequest, Stream};
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::rtcp::SenderInfo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::playback::engine::{EndReason, Poll, Replay};

struct Shared {
    replay: Mutex<Replay>,
    wake: Notify,
    stream: Arc<Stream>,
    label: String,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A recording playing into a session's stream.
pub struct ReplaySource {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    /// Keeps retention away from the segments while the session lives.
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for ReplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplaySource")
            .field("label", &self.shared.label)
            .finish()
    }
}

impl Drop for ReplaySource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplaySource {
    /// A paused replay into `stream`; must run inside a tokio runtime.
    pub fn new(
        replay: Replay,
        stream: Arc<Stream>,
        label: String,
        guard: Box<dyn Send + Sync>,
    ) -> ReplaySource {
        let shared = Arc::new(Shared {
            replay: Mutex::new(replay),
            wake: Notify::new(),
            stream,
            label,
        });
        let task = tokio::spawn(run(shared.clone()));
        ReplaySource {
            shared,
            task,
            _guard: guard,
        }
    }
}

impl sluice_hub::Playback for ReplaySource {
    fn duration(&self) -> f64 {
        self.shared.lock().timeline().span()
    }

    /// Starts or seeks; see [`Replay::play`]. Sender Reports map the start's RTP time to
    /// its recorded wall clock time when playing forward at normal pace.
    fn play(&self, request: &PlayRequest, now: Instant) -> Result<PlayStart, PlayError> {
        let (started, wall) = {
            let mut r = self.shared.lock();
            let s = r.play(request, now)?;
            let wall = r.timeline().wall(s.start);
            (s, wall)
        };
        if request.scale * request.speed == 1.0 && request.rate_control {
            let ntp = NtpTime::from_unix(
                wall.duration_since(SystemTime::UNIX_EPOCH)
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
        info!(
            recording = %self.shared.label,
            start = started.start,
            scale = request.scale,
            speed = request.speed,
            rate_control = request.rate_control,
            frames = ?request.frames,
            "replay"
        );
        self.shared.wake.notify_one();
        Ok(started)
    }

    fn pause(&self) -> f64 {
        self.shared.lock().pause()
    }

    fn position(&self) -> f64 {
        self.shared.lock().position()
    }

    fn wall_clock(&self, npt: f64) -> Option<SystemTime> {
        Some(self.shared.lock().timeline().wall(npt))
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
            let mut replay = shared.lock();
            step(&mut replay, &shared, Instant::now())
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
                if sent_since_yield >= 16 {
                    sent_since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Does what the engine says: pushes one due frame's packets, or says how long to wait.
fn step(replay: &mut Replay, shared: &Shared, now: Instant) -> Step {
    match replay.poll(now) {
        Poll::Send(burst) => {
            for data in burst.packets {
                let Ok(header) = parse_rtp(&data) else {
                    continue;
                };
                shared.stream.push_rtp(MediaPacket {
                    track: burst.track,
                    data,
                    header,
                    received_at: now,
                });
            }
            shared.stream.flush();
            Step::Continue
        }
        Poll::Skipped(why) => {
            debug!(recording = %shared.label, %why, "frame skipped");
            Step::Continue
        }
        Poll::Ended(reason) => {
            match reason {
                EndReason::Failed(error) => {
                    warn!(recording = %shared.label, %error, "recording read failed; replay stopped");
                }
                EndReason::End => {
                    debug!(recording = %shared.label, position = replay.position(), "end of recording");
                }
            }
            shared.stream.push_end_of_media();
            Step::Wait
        }
        Poll::WaitUntil(t) => Step::SleepUntil(t),
        Poll::Idle => Step::Wait,
    }
}
