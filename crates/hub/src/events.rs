//! The server's event bus: one bounded ring of numbered events that every module
//! publishes to (the hub itself for path readiness, the RTSP module for its sessions, the
//! composition root for start and stop) and that consumers read at their own pace (the
//! HTTP module's Server-Sent Events, the hooks module's webhooks and commands).
//!
//! Ids grow by one from 1 and are never reused within a process, so a consumer that
//! remembers the last id it saw resumes with [`EventBus::since`] and learns how many
//! events the ring dropped in between. Publishing never blocks on a consumer: the ring
//! overwrites its oldest entry, and a slow consumer only loses its own place. Waiting is
//! runtime-agnostic ([`EventBus::next_after`] is a plain [`Future`] woken by
//! [`EventBus::publish_at`]), and time comes in from outside: the publisher's argument,
//! or the clock the composition root gave the bus.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use serde::Serialize;

/// How many events the hub's bus keeps for late consumers (`Last-Event-ID` resume).
pub const DEFAULT_CAPACITY: usize = 1024;

/// Who a session event is about: enough for a receiver to act without asking back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRef {
    /// The stream path (without leading `/`).
    pub path: String,
    /// The session's id (the RTSP `Session` header value).
    pub session: String,
    /// The protocol it came in by (`rtsp`, `rtsps`).
    pub protocol: String,
    /// The media transport (`udp`, `tcp`, `multicast`), when one was set up.
    pub transport: Option<String>,
    /// The client's address (`ip:port`).
    pub peer: String,
}

/// One thing that happened in the server. Serialized with a `type` field holding
/// [`ServerEvent::name`] next to the variant's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// The server bound its listeners and serves.
    ServerStarted {
        /// The server's version.
        version: String,
    },
    /// The server is shutting down.
    ServerStopping {
        /// Why (`signal`, …).
        reason: String,
    },
    /// A path's stream is ready for readers.
    PathReady {
        /// The path.
        path: String,
        /// The registry's source id of the stream now serving it.
        source: u64,
    },
    /// A path's stream ended (or a claimed path never became ready and was freed).
    PathNotReady {
        /// The path.
        path: String,
        /// The registry's source id of the stream that ended.
        source: u64,
        /// Why it ended.
        reason: String,
    },
    /// A publisher's RECORD was accepted: it feeds the path from now on.
    PublisherStarted {
        /// The session.
        #[serde(flatten)]
        session: SessionRef,
    },
    /// A publisher's session ended.
    PublisherStopped {
        /// The session.
        #[serde(flatten)]
        session: SessionRef,
        /// Why it ended (`teardown`, `timeout`, `connection closed`, …).
        reason: String,
    },
    /// A reader's PLAY started its media.
    ReaderStarted {
        /// The session.
        #[serde(flatten)]
        session: SessionRef,
    },
    /// A reader's session ended.
    ReaderStopped {
        /// The session.
        #[serde(flatten)]
        session: SessionRef,
        /// Why it ended.
        reason: String,
    },
    /// A session was ended by an operator (the API's kick).
    SessionKicked {
        /// The session.
        #[serde(flatten)]
        session: SessionRef,
        /// Who or what asked for it.
        by: String,
    },
    /// A new configuration is in force.
    ConfigReloaded {
        /// The file it was read from, if any.
        file: Option<String>,
    },
    /// A configuration reload failed; the previous one stays in force.
    ConfigFailed {
        /// The file, if any.
        file: Option<String>,
        /// What was wrong with it.
        error: String,
    },
    /// The recorder created a segment file (its init is on disk).
    SegmentCreated {
        /// The path recorded.
        path: String,
        /// The file, relative to the record directory.
        file: String,
        /// Wall clock of its first sample, RFC 3339.
        start: String,
    },
    /// A segment file is complete: ended by the recorder, or found open after a crash and
    /// truncated after its last complete part (`reason` `recovered`).
    SegmentCompleted {
        /// The path recorded.
        path: String,
        /// The file, relative to the record directory.
        file: String,
        /// Why it ended: `duration`, `params_changed`, `clock_step`, `publisher_changed`,
        /// `stop`, `disk_full`, `error` or `recovered`.
        reason: String,
        /// Wall clock of its first sample, RFC 3339.
        start: String,
        /// Wall clock just after its last sample, RFC 3339.
        end: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// The record directory's free space fell below the `min_free` floor (retention
    /// deletes the oldest segments), or the disk filled up (`full`: recording paused).
    DiskLow {
        /// The record directory.
        dir: String,
        /// Bytes available.
        available: u64,
        /// Whether writes failed for lack of space (recording paused until space returns).
        full: bool,
    },
    /// Retention deleted a segment file.
    RecordingDeleted {
        /// The path it recorded.
        path: String,
        /// The file, relative to the record directory.
        file: String,
        /// Why: `age`, `bytes` or `min_free`.
        reason: String,
        /// Wall clock of its first sample, RFC 3339.
        start: String,
        /// Its size in bytes.
        bytes: u64,
    },
}

impl ServerEvent {
    /// Every event name, as [`ServerEvent::name`] spells them (for validating filters).
    pub const NAMES: &'static [&'static str] = &[
        "server_started",
        "server_stopping",
        "path_ready",
        "path_not_ready",
        "publisher_started",
        "publisher_stopped",
        "reader_started",
        "reader_stopped",
        "session_kicked",
        "config_reloaded",
        "config_failed",
        "segment_created",
        "segment_completed",
        "disk_low",
        "recording_deleted",
    ];

    /// The event's name: the SSE `event:` field, the webhook's `X-Sluice-Event` header,
    /// the value of the JSON `type` field and what hook filters list.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::ServerStarted { .. } => "server_started",
            ServerEvent::ServerStopping { .. } => "server_stopping",
            ServerEvent::PathReady { .. } => "path_ready",
            ServerEvent::PathNotReady { .. } => "path_not_ready",
            ServerEvent::PublisherStarted { .. } => "publisher_started",
            ServerEvent::PublisherStopped { .. } => "publisher_stopped",
            ServerEvent::ReaderStarted { .. } => "reader_started",
            ServerEvent::ReaderStopped { .. } => "reader_stopped",
            ServerEvent::SessionKicked { .. } => "session_kicked",
            ServerEvent::ConfigReloaded { .. } => "config_reloaded",
            ServerEvent::ConfigFailed { .. } => "config_failed",
            ServerEvent::SegmentCreated { .. } => "segment_created",
            ServerEvent::SegmentCompleted { .. } => "segment_completed",
            ServerEvent::DiskLow { .. } => "disk_low",
            ServerEvent::RecordingDeleted { .. } => "recording_deleted",
        }
    }

    /// The path the event is about, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            ServerEvent::PathReady { path, .. }
            | ServerEvent::PathNotReady { path, .. }
            | ServerEvent::SegmentCreated { path, .. }
            | ServerEvent::SegmentCompleted { path, .. }
            | ServerEvent::RecordingDeleted { path, .. } => Some(path),
            ServerEvent::PublisherStarted { session }
            | ServerEvent::PublisherStopped { session, .. }
            | ServerEvent::ReaderStarted { session }
            | ServerEvent::ReaderStopped { session, .. }
            | ServerEvent::SessionKicked { session, .. } => Some(&session.path),
            _ => None,
        }
    }

    /// The session the event is about, if any.
    pub fn session(&self) -> Option<&SessionRef> {
        match self {
            ServerEvent::PublisherStarted { session }
            | ServerEvent::PublisherStopped { session, .. }
            | ServerEvent::ReaderStarted { session }
            | ServerEvent::ReaderStopped { session, .. }
            | ServerEvent::SessionKicked { session, .. } => Some(session),
            _ => None,
        }
    }
}

/// A published event with its id and time: what consumers get and serialize
/// (`{"id": 7, "time_ms": …, "type": "reader_started", "path": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Its id: one more than the previous event's.
    pub id: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: ServerEvent,
}

impl Record {
    /// The record as JSON (the SSE `data:` and the webhook body).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// What [`EventBus::since`] found after a consumer's last id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Since {
    /// The events after it still in the ring, oldest first.
    pub records: Vec<Arc<Record>>,
    /// How many events after it the ring no longer holds (the consumer's gap).
    pub missed: u64,
}

/// The clock the bus stamps [`EventBus::publish`]ed events with: milliseconds since the
/// Unix epoch, supplied by the composition root (the hub reads no clock itself).
pub type UnixClock = Box<dyn Fn() -> u64 + Send + Sync>;

struct Ring {
    records: VecDeque<Arc<Record>>,
    capacity: usize,
    /// The id the next event gets.
    next_id: u64,
    waiters: BTreeMap<u64, Waker>,
    next_waiter: u64,
}

/// The bounded ring of events; see the [module](self) documentation.
pub struct EventBus {
    ring: Mutex<Ring>,
    clock: UnixClock,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.lock();
        f.debug_struct("EventBus")
            .field("held", &ring.records.len())
            .field("next_id", &ring.next_id)
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new(DEFAULT_CAPACITY, Box::new(|| 0))
    }
}

impl EventBus {
    /// A bus keeping the last `capacity` events (at least one), stamping
    /// [`EventBus::publish`]ed ones with `clock`.
    pub fn new(capacity: usize, clock: UnixClock) -> EventBus {
        let capacity = capacity.max(1);
        EventBus {
            ring: Mutex::new(Ring {
                records: VecDeque::with_capacity(capacity),
                capacity,
                next_id: 1,
                waiters: BTreeMap::new(),
                next_waiter: 0,
            }),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `event` stamped with the bus's clock; returns its id.
    pub fn publish(&self, event: ServerEvent) -> u64 {
        self.publish_at(event, (self.clock)())
    }

    /// Publishes `event` at `time_ms` (milliseconds since the Unix epoch); returns its id.
    /// The oldest event makes room when the ring is full; every waiting consumer is woken
    /// (after the lock is released).
    pub fn publish_at(&self, event: ServerEvent, time_ms: u64) -> u64 {
        let mut ring = self.lock();
        let id = ring.next_id;
        ring.next_id += 1;
        if ring.records.len() == ring.capacity {
            ring.records.pop_front();
        }
        ring.records
            .push_back(Arc::new(Record { id, time_ms, event }));
        let wakers = std::mem::take(&mut ring.waiters);
        drop(ring);
        for w in wakers.into_values() {
            w.wake();
        }
        id
    }

    /// The id of the newest event (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id - 1
    }

    /// The events after `last_id` (0: from the oldest held), and how many after it are
    /// gone. An id from the future (a client that saw a previous run of the server) is
    /// read as 0.
    pub fn since(&self, last_id: u64) -> Since {
        let ring = self.lock();
        let last_id = if last_id >= ring.next_id { 0 } else { last_id };
        let oldest = ring.records.front().map_or(ring.next_id, |r| r.id);
        let missed = oldest.saturating_sub(last_id + 1);
        let skip = (last_id + 1).saturating_sub(oldest);
        let records = ring
            .records
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Since { records, missed }
    }

    /// Completes once an event newer than `last_id` is published (at once if one is).
    /// Dropping the future forgets its waker.
    pub fn next_after(&self, last_id: u64) -> NextAfter<'_> {
        NextAfter {
            bus: self,
            last_id,
            slot: None,
        }
    }
}

/// The future of [`EventBus::next_after`].
#[derive(Debug)]
pub struct NextAfter<'a> {
    bus: &'a EventBus,
    last_id: u64,
    slot: Option<u64>,
}

impl Future for NextAfter<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut ring = self.bus.lock();
        if ring.next_id - 1 > self.last_id || self.last_id >= ring.next_id {
            return Poll::Ready(());
        }
        let slot = match self.slot {
            Some(s) => s,
            None => {
                ring.next_waiter += 1;
                ring.next_waiter
            }
        };
        ring.waiters.insert(slot, cx.waker().clone());
        drop(ring);
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for NextAfter<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.bus.lock().waiters.remove(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn ready(path: &str) -> ServerEvent {
        ServerEvent::PathReady {
            path: path.into(),
            source: 1,
        }
    }

    #[test]
    fn ids_grow_and_since_resumes_after_the_last_seen() {
        let bus = EventBus::new(8, Box::new(|| 42));
        assert_eq!(bus.last_id(), 0);
        assert_eq!(bus.since(0), Since::default());
        for p in ["a", "b", "c"] {
            bus.publish(ready(p));
        }
        assert_eq!(bus.last_id(), 3);
        let all = bus.since(0);
        assert_eq!(
            all.records.iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(all.missed, 0);
        assert_eq!(all.records[0].time_ms, 42);
        let rest = bus.since(2);
        assert_eq!(rest.records.len(), 1);
        assert_eq!(rest.records[0].event, ready("c"));
        assert!(bus.since(3).records.is_empty());
        // An id this run never gave (the client saw an earlier run): everything held.
        assert_eq!(bus.since(99).records.len(), 3);
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_reports_the_gap() {
        let bus = EventBus::new(4, Box::new(|| 0));
        for i in 0..10 {
            bus.publish_at(ready(&format!("p{i}")), i);
        }
        let s = bus.since(0);
        assert_eq!(
            s.records.iter().map(|r| r.id).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        assert_eq!(s.missed, 6, "ids 1..=6 are gone");
        let s = bus.since(5);
        assert_eq!(s.missed, 1, "id 6 is gone");
        assert_eq!(s.records.len(), 4);
        let s = bus.since(8);
        assert_eq!(s.missed, 0);
        assert_eq!(s.records.len(), 2);
    }

    #[test]
    fn json_has_the_id_the_type_and_flat_session_fields() {
        let r = Record {
            id: 3,
            time_ms: 5,
            event: ServerEvent::ReaderStopped {
                session: SessionRef {
                    path: "cam".into(),
                    session: "abc".into(),
                    protocol: "rtsp".into(),
                    transport: Some("tcp".into()),
                    peer: "127.0.0.1:5000".into(),
                },
                reason: "teardown".into(),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["type"], "reader_stopped");
        assert_eq!(v["path"], "cam");
        assert_eq!(v["session"], "abc");
        assert_eq!(v["transport"], "tcp");
        assert_eq!(v["reason"], "teardown");
        assert!(ServerEvent::NAMES.contains(&r.event.name()));
        assert_eq!(r.event.path(), Some("cam"));
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_consumer_is_woken_by_the_next_publish_only() {
        let bus = EventBus::new(4, Box::new(|| 0));
        bus.publish(ready("a"));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut behind = bus.next_after(0);
        assert!(Pin::new(&mut behind).poll(&mut cx).is_ready());
        let mut waiting = bus.next_after(1);
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        bus.publish(ready("b"));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
        let mut dropped = bus.next_after(2);
        assert!(Pin::new(&mut dropped).poll(&mut cx).is_pending());
        drop(dropped);
        assert!(
            bus.lock().waiters.is_empty(),
            "a dropped waiter is forgotten"
        );
    }
}
