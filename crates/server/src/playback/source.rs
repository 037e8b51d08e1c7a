//! The replay driver: one tokio task per playback session that sleeps until the engine
//! says a frame is due and pushes its packets into the session's private stream. The
//! RTSP module controls it through [`sluice_hub::Playback`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sluice_hub::on_demand::{PlayError, PlayStart};
use sluice_hub::{PlayRequest, Stream};
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::rtcp::SenderInfo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::playback::engine::{Burst, EndReason, Poll, Replay};
use crate::playback::Catalog;

struct Shared {
    replay: Mutex<Replay>,
    wake: Notify,
    /// PLAYs so far: a frame held for room is dropped when another PLAY (a seek) came.
    plays: AtomicU64,
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
            plays: AtomicU64::new(0),
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
        self.shared.plays.fetch_add(1, Ordering::AcqRel);
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
    /// A frame the reader's queue has no room for yet: sent once it has.
    Hold(Burst),
}

/// How often a held frame looks for room in the reader's queue.
const ROOM_POLL: Duration = Duration::from_millis(10);

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
            Step::Hold(burst) => {
                // Backpressure: the reader's queue (its TCP connection) is full, as with
                // `Rate-Control: no` and a reader slower than the disk. Wait for room
                // rather than overrun it (which drops, then disconnects a slow reader);
                // a PLAY or seek meanwhile drops the held frame.
                let plays = shared.plays.load(Ordering::Acquire);
                loop {
                    tokio::time::sleep(ROOM_POLL).await;
                    if shared.plays.load(Ordering::Acquire) != plays {
                        break;
                    }
                    if has_room(&shared.stream, burst.packets.len()) {
                        push(&shared, burst, Instant::now());
                        break;
                    }
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

/// Whether the session's queue can take `packets` now (a frame larger than the whole
/// queue waits for it to be empty, then goes alone).
fn has_room(stream: &Stream, packets: usize) -> bool {
    stream
        .room()
        .is_none_or(|r| r.free >= packets.min(r.capacity))
}

/// Pushes one frame's packets into the session's stream.
fn push(shared: &Shared, burst: Burst, now: Instant) {
    shared.stream.push_frame(burst.track, burst.packets, now);
}

/// Does what the engine says: pushes one due frame's packets, or says how long to wait.
fn step(replay: &mut Replay, shared: &Shared, now: Instant) -> Step {
    match replay.poll(now) {
        Poll::Send(burst) => {
            if !has_room(&shared.stream, burst.packets.len()) {
                return Step::Hold(burst);
            }
            push(shared, burst, now);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use sluice_hub::{Batch, MediaPacket, Position, Presentation, Room, Sink};

    use super::*;
    use crate::playback::engine::tests::{replay_shared, segment};

    /// A reader's queue that takes packets only while the test gives it room.
    struct Queue {
        free: AtomicUsize,
        got: Mutex<Vec<MediaPacket>>,
    }

    impl Sink for Queue {
        fn on_batch(&self, batch: &Batch) {
            let n = batch.packets().len();
            let free = self.free.load(Ordering::Acquire);
            assert!(n <= free.max(1), "{n} packets pushed into room for {free}");
            self.free.fetch_sub(n.min(free), Ordering::AcqRel);
            self.got
                .lock()
                .unwrap()
                .extend(batch.packets().iter().cloned());
        }

        fn on_end(&self, _: sluice_hub::EndReason) {}

        fn room(&self) -> Option<Room> {
            Some(Room {
                free: self.free.load(Ordering::Acquire),
                capacity: 64,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_control_no_waits_for_room_in_the_readers_queue() {
        let (replay, _files) = replay_shared(vec![segment("a", 0.0, 4, 0)], None, None);
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                   m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                   m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n";
        let stream = Stream::new(
            "rec/x".into(),
            Presentation::from_sdp(sdp.as_bytes()).unwrap(),
            1,
        );
        let queue = Arc::new(Queue {
            free: AtomicUsize::new(40),
            got: Mutex::new(Vec::new()),
        });
        stream.attach(queue.clone());
        let source = ReplaySource::new(replay, stream.clone(), "rec/x".into(), Box::new(()), None);
        let request = PlayRequest {
            rate_control: false,
            ..PlayRequest::npt(Some(0.0), None, 1.0)
        };
        assert!(matches!(request.start, Some(Position::Npt(_))));
        sluice_hub::Playback::play(&source, &request, Instant::now()).unwrap();
        // As fast as the queue takes it: 40 packets, then nothing while it is full.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = queue.got.lock().unwrap().len();
        assert!(first > 0 && first <= 40, "{first} packets into room for 40");
        // The reader drains its queue: the rest comes, all of it.
        queue.free.store(1 << 20, Ordering::Release);
        let frames = |q: &Queue| {
            let got = q.got.lock().unwrap();
            let video = got.iter().filter(|p| p.track == 0 && p.header.marker);
            (video.count(), got.len())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (video, total) = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (video, total) = frames(&queue);
            if video >= 100 || Instant::now() > deadline {
                break (video, total);
            }
        };
        assert_eq!(video, 100, "every frame of 4 s at 25 fps ({total} packets)");
    }
}
