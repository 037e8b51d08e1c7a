//! The replay driver: one tokio task per playback session that sleeps until the engine
//! says a frame is due and pushes its packets into the session's private stream. The
//! RTSP module controls it through [`sluice_hub::Playback`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sluice_hub::on_demand::{PlayError, PlayStart};
use sluice_hub::{MediaPacket, PlayRequest, Stream};
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::rtcp::SenderInfo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::playback::engine::{EndReason, Poll, Replay};
use crate::playback::Catalog;

struct Shared {
    replay: Mutex<Replay>,
    wake: Notify,
    stream: Arc<Stream>,
    label: String,
    follow: Option<Follow>,
}

/// How playback that caught up with the recording follows it as it grows.
pub struct Follow {
    /// Where the recording's new parts and segments are listed.
    pub catalog: Arc<dyn Catalog>,
    /// The recorded path.
    pub stream: String,
    /// State of the search for more.
    state: Mutex<FollowState>,
}

struct FollowState {
    /// When the recording last grew.
    grew_at: Option<Instant>,
    /// Keeps retention away from the segments found since the session started.
    guard: Option<Box<dyn Send + Sync>>,
}

impl Follow {
    /// Follows `stream`'s recording in `catalog`.
    pub fn new(catalog: Arc<dyn Catalog>, stream: String) -> Follow {
        Follow {
            catalog,
            stream,
            state: Mutex::new(FollowState {
                grew_at: None,
                guard: None,
            }),
        }
    }
}

/// How often a session that caught up looks for more of the recording.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// A recording that did not grow for this long has stopped: playback ends (parts are
/// about a second long, so a recording in progress grows every second or so).
const FOLLOW_IDLE: Duration = Duration::from_secs(3);

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
    /// A paused replay into `stream`; must run inside a tokio runtime. With `follow`,
    /// open-ended playback that reaches the end of what is recorded goes on with what the
    /// recorder adds (live, one part behind).
    pub fn new(
        replay: Replay,
        stream: Arc<Stream>,
        label: String,
        guard: Box<dyn Send + Sync>,
        follow: Option<Follow>,
    ) -> ReplaySource {
        let shared = Arc::new(Shared {
            replay: Mutex::new(replay),
            wake: Notify::new(),
            stream,
            label,
            follow,
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
    /// Caught up: list what the recorder added since `from` (off the runtime: an index
    /// read), then go on.
    List {
        from: SystemTime,
    },
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
            Step::List { from } => {
                let Some(follow) = &shared.follow else {
                    continue;
                };
                let (catalog, stream) = (follow.catalog.clone(), follow.stream.clone());
                let far = from + Duration::from_secs(1 << 30);
                let listed =
                    tokio::task::spawn_blocking(move || catalog.segments(&stream, from, far))
                        .await
                        .unwrap_or_else(|e| Err(format!("listing task: {e}")));
                let now = Instant::now();
                let next = {
                    let mut replay = shared.lock();
                    follow_up(&mut replay, &shared, follow, listed, now)
                };
                if let Some(t) = next {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = shared.wake.notified() => {}
                    }
                }
            }
        }
    }
}

/// Takes what a listing found while following: the recording grew (go on), or did not
/// for [`FOLLOW_IDLE`] (playback ends). Returns when to look again (None: at once).
fn follow_up(
    replay: &mut Replay,
    shared: &Shared,
    follow: &Follow,
    listed: Result<crate::playback::Listing, String>,
    now: Instant,
) -> Option<Instant> {
    let mut state = follow.state.lock().unwrap_or_else(|e| e.into_inner());
    let grew_at = *state.grew_at.get_or_insert(now);
    let known = replay.timeline().end;
    match listed {
        Ok(listing) => {
            replay.extend(listing.segments);
            state.guard = Some(listing.guard);
        }
        Err(error) => {
            warn!(recording = %shared.label, %error, "listing the recording failed");
        }
    }
    if replay.timeline().end > known {
        state.grew_at = Some(now);
        None
    } else if now.duration_since(grew_at) > FOLLOW_IDLE {
        info!(recording = %shared.label, "the recording stopped growing; replay ends");
        replay.stop_following();
        None
    } else {
        Some(now + FOLLOW_POLL)
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
        Poll::CaughtUp => {
            if shared.follow.is_none() {
                replay.stop_following();
                return Step::Continue;
            }
            let known = replay.timeline().end;
            let from = replay.timeline().segments.last().map_or(known, |s| s.start);
            Step::List { from }
        }
        Poll::Idle => Step::Wait,
    }
}
