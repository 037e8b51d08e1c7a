//! The recorder's per-stream sink: it keeps the stream's GOP cache (so that recording
//! starts decodable, from the last keyframe) and, while the path is recorded, hands each
//! packet (a shared buffer, no copy) to the path's writer thread through a bounded queue.
//! A full queue drops and counts; the live relay never waits on the disk.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sluice_hub::gop::GopCache;
use sluice_hub::{Batch, EndReason, Sink, Stream};
use sluice_media::recorder::TrackSpec;
use tracing::info;

use super::writer::{Msg, Writer};
use super::Inner;

/// Packets the queue to the writer holds (several seconds of a 4 Mb/s stream).
const QUEUE: usize = 16_384;

struct State {
    gop: GopCache,
    tx: Option<SyncSender<Msg>>,
    ended: bool,
}

/// The recorder's sink on one stream.
pub(super) struct RecSink {
    path: String,
    stream: Weak<Stream>,
    inner: Weak<Inner>,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RecSink {
    pub(super) fn new(stream: &Arc<Stream>, inner: &Arc<Inner>) -> Arc<RecSink> {
        Arc::new(RecSink {
            path: stream.path().to_owned(),
            stream: Arc::downgrade(stream),
            inner: Arc::downgrade(inner),
            state: Mutex::new(State {
                gop: GopCache::new(stream.presentation().keyframe_track()),
                tx: None,
                ended: false,
            }),
        })
    }

    /// Whether the path is being recorded now.
    pub(super) fn active(&self) -> bool {
        lock(&self.state).tx.is_some()
    }

    /// Starts recording (no-op when already recording or ended): a writer thread, fed the
    /// cached GOP first when it is within `pre_roll`.
    pub(super) fn start(&self) {
        let (Some(inner), Some(stream)) = (self.inner.upgrade(), self.stream.upgrade()) else {
            return;
        };
        let mut s = lock(&self.state);
        if s.tx.is_some() || s.ended {
            return;
        }
        let specs: Vec<TrackSpec> = stream
            .presentation()
            .tracks()
            .iter()
            .map(|t| TrackSpec {
                encoding: t.encoding.clone(),
                clock_rate: t.clock_rate,
                channels: t.encoding.eq_ignore_ascii_case("opus").then_some(2),
                fmtp: t.fmtp.clone(),
                video: t.media == "video",
                framerate: None,
            })
            .collect();
        let settings = inner.settings(&self.path);
        let figures = inner.figures(&self.path);
        let (tx, rx) = sync_channel(QUEUE);
        let now = Instant::now();
        let fresh = |at: Instant| now.saturating_duration_since(at) <= settings.pre_roll;
        let gop_ok = settings.pre_roll > Duration::ZERO
            && s.gop.packets().next().is_some_and(|p| fresh(p.received_at));
        if gop_ok {
            for p in s.gop.packets() {
                if tx.try_send(Msg::Packet(p.clone())).is_err() {
                    figures.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let writer = Writer::new(self.path.clone(), inner.clone(), figures, settings, specs);
        let spawned = std::thread::Builder::new()
            .name(format!("rec {}", self.path))
            .spawn(move || writer.run(rx));
        match spawned {
            Ok(_) => {
                info!(path = %self.path, from_gop = gop_ok, "recording started");
                s.tx = Some(tx);
            }
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "cannot start the recording thread")
            }
        }
    }

    /// Stops recording: the writer ends its segment and exits.
    pub(super) fn stop(&self) {
        if lock(&self.state).tx.take().is_some() {
            info!(path = %self.path, "recording stopped");
        }
    }
}

impl Sink for RecSink {
    fn on_batch(&self, batch: &Batch) {
        let mut s = lock(&self.state);
        for p in batch.packets() {
            s.gop.handle_packet(p);
        }
        let Some(tx) = s.tx.as_ref() else {
            return;
        };
        let mut dropped = 0u64;
        let mut gone = false;
        for p in batch.packets() {
            match tx.try_send(Msg::Packet(p.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => dropped += 1,
                Err(TrySendError::Disconnected(_)) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone {
            s.tx = None;
        }
        if dropped > 0 {
            if let Some(inner) = self.inner.upgrade() {
                inner
                    .figures(&self.path)
                    .dropped
                    .fetch_add(dropped, Ordering::Relaxed);
            }
        }
    }

    fn on_end(&self, _reason: EndReason) {
        let mut s = lock(&self.state);
        s.ended = true;
        s.tx = None;
        s.gop = GopCache::new(None);
    }
}
