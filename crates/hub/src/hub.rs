//! The hub every module shares: the path registry of live streams, the hooks that attach
//! each module's per-stream sink to a new stream, the on-demand media providers, and the
//! modules' session directories (listed and kicked by the HTTP API).
//!
//! Modules never call each other: a source module creates and publishes streams here, a
//! sink module attaches to them here (a hook at creation, or a watcher of the registry's
//! events), and a module serving on-demand media (the RTSP module's VOD sessions) asks the
//! providers here. The composition root builds one hub and hands it to every module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::{EventBus, ServerEvent};
use crate::on_demand::{OnDemand, OnDemandMedia, OpenError};
use crate::packet::EndReason;
use crate::presentation::Presentation;
use crate::registry::{Busy, Claim, Event, Owner, Pattern, Published, Registry, WatcherId};
use crate::source::SourceHandle;
use crate::stats::{SessionInfo, Sessions};
use crate::stream::Stream;

/// What a module runs on every stream the hub creates, before any packet: attach its
/// per-stream sink (see [`Stream::attach`]).
pub type StreamHook = Box<dyn Fn(&Arc<Stream>) + Send + Sync>;

/// Called after every registry change, so that the composition root's event pump polls
/// the watchers (the hub has no runtime of its own to wake).
pub type ChangeNotifier = Box<dyn Fn() + Send + Sync>;

/// The shared hub: paths, stream hooks, on-demand providers.
pub struct Hub {
    paths: Mutex<Registry<Arc<Stream>>>,
    hooks: Mutex<Vec<StreamHook>>,
    on_demand: Mutex<Vec<Arc<dyn OnDemand>>>,
    sessions: Mutex<Vec<Arc<dyn Sessions>>>,
    next_version: AtomicU64,
    next_owner: AtomicU64,
    changed: ChangeNotifier,
    /// The server's event bus; path readiness is fed from `bus_watcher`.
    events: EventBus,
    /// The registry watcher whose lifecycle events the hub turns into bus events, right
    /// after the change (so they are on the bus before whatever the caller does next).
    bus_watcher: WatcherId,
}

/// Registry events the bus watcher may queue between two drains (each change drains it).
const BUS_WATCHER_QUEUE: usize = 1024;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("paths", &self.registry().len())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new(Box::new(|| {}))
    }
}

impl Hub {
    /// An empty hub; `changed` is called after every registry change. Its event bus
    /// stamps events with time 0: see [`Hub::with_events`].
    pub fn new(changed: ChangeNotifier) -> Hub {
        Hub::with_events(changed, EventBus::default())
    }

    /// An empty hub publishing to `events` (the composition root's bus, with its clock).
    pub fn with_events(changed: ChangeNotifier, events: EventBus) -> Hub {
        let mut paths = Registry::new();
        let bus_watcher = paths.watch(Pattern::new("**"), BUS_WATCHER_QUEUE);
        Hub {
            paths: Mutex::new(paths),
            hooks: Mutex::new(Vec::new()),
            on_demand: Mutex::new(Vec::new()),
            sessions: Mutex::new(Vec::new()),
            next_version: AtomicU64::new(1),
            next_owner: AtomicU64::new(1),
            changed,
            events,
            bus_watcher,
        }
    }

    /// The server's event bus: modules publish their session events here, consumers
    /// (SSE, hooks) read it. Path ready / not ready are published by the hub itself.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Publishes the registry's pending lifecycle events on the bus, then wakes the event
    /// pump: run after every registry change.
    fn after_change(&self) {
        let pending: Vec<Event> = {
            let mut paths = self.registry();
            std::iter::from_fn(|| paths.poll_event(self.bus_watcher)).collect()
        };
        for event in pending {
            let e = match event {
                Event::Ready { path, source } => ServerEvent::PathReady {
                    path,
                    source: source.get(),
                },
                Event::Ended {
                    path,
                    source,
                    reason,
                } => ServerEvent::PathNotReady {
                    path,
                    source: source.get(),
                    reason: reason.to_string(),
                },
                // The new stream's readiness follows as its own event.
                Event::Replaced { .. } | Event::Lagged { .. } => continue,
            };
            self.events.publish(e);
        }
        (self.changed)();
    }

    /// The registry, locked: look-ups, claims and watchers. Changes that readers must see
    /// go through [`Hub::publish`], [`Hub::set_ready`] and [`Hub::end`] instead, which
    /// also wake the event pump.
    pub fn registry(&self) -> MutexGuard<'_, Registry<Arc<Stream>>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a hook run on every stream created from now on (a module's start-up).
    pub fn on_stream(&self, hook: StreamHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Adds a provider of on-demand media, asked in the order added.
    pub fn add_on_demand(&self, provider: Arc<dyn OnDemand>) {
        self.on_demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(provider);
    }

    /// Adds a module's session directory (a module's start-up): its sessions are listed
    /// by [`Hub::sessions`] and ended by [`Hub::kick`].
    pub fn add_sessions(&self, directory: Arc<dyn Sessions>) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(directory);
    }

    fn directories(&self) -> Vec<Arc<dyn Sessions>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every live session of every module, in the order the directories were added.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.directories().iter().flat_map(|d| d.list()).collect()
    }

    /// The live session `id`, if a module has it.
    pub fn session(&self, id: &str) -> Option<SessionInfo> {
        self.sessions().into_iter().find(|s| s.id == id)
    }

    /// Ends session `id` and closes its client's connection: true if a module had it.
    pub fn kick(&self, id: &str) -> bool {
        self.directories().iter().any(|d| d.kick(id))
    }

    /// Opens `path`'s on-demand media for one session: the first provider that serves the
    /// path answers; `Ok(None)` when none does.
    pub fn open_on_demand(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError> {
        let providers: Vec<_> = self
            .on_demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in providers {
            if let Some(media) = p.open(path)? {
                return Ok(Some(media));
            }
        }
        Ok(None)
    }

    /// The path serving `path` through a URL `query` (see [`OnDemand::view`]), from the
    /// first provider that gives one.
    pub fn on_demand_view(&self, path: &str, query: &str) -> Result<Option<String>, OpenError> {
        let providers: Vec<_> = self
            .on_demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in providers {
            if let Some(v) = p.view(path, query)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Whether some provider serves `path` on demand (without opening it).
    pub fn serves_on_demand(&self, path: &str) -> bool {
        self.on_demand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| p.serves(path))
    }

    /// A new stream for `path` with a fresh SDP version, every module's hook run on it.
    /// Not yet published: see [`Hub::publish`] (a private on-demand stream never is).
    pub fn create_stream(&self, path: &str, presentation: Presentation) -> Arc<Stream> {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let stream = Stream::new(path.to_owned(), presentation, version);
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(&stream);
        }
        stream
    }

    /// A fresh owner for a source's claims (a connection, a configured source): unique in
    /// this hub.
    pub fn new_owner(&self) -> Owner {
        Owner(self.next_owner.fetch_add(1, Ordering::Relaxed))
    }

    /// Claims `stream`'s path for `owner` under `claim`'s policy (see
    /// [`crate::registry`]). The stream it displaced, if any, is ended
    /// ([`EndReason::Replaced`]) and comes back so the caller can end its own sessions.
    pub fn publish(
        &self,
        owner: Owner,
        claim: Claim,
        stream: &Arc<Stream>,
    ) -> Result<Option<Arc<Stream>>, Busy> {
        let published = self
            .registry()
            .publish(stream.path(), owner, claim, stream.clone());
        self.after_change();
        let Published { replaced, .. } = published?;
        if let Some(old) = &replaced {
            old.end(EndReason::Replaced);
        }
        Ok(replaced)
    }

    /// Creates a stream for `path` (every module's hook run on it) and publishes it under
    /// a new owner's `claim`: the source's handle, which ends the stream when dropped. A
    /// stream it displaced is ended as [`Hub::publish`] says.
    pub fn publish_source(
        self: &Arc<Self>,
        path: &str,
        presentation: Presentation,
        claim: Claim,
    ) -> Result<SourceHandle, Busy> {
        let stream = self.create_stream(path, presentation);
        self.publish(self.new_owner(), claim, &stream)?;
        Ok(SourceHandle::new(self.clone(), stream))
    }

    /// Marks `stream` ready for readers, in the registry too if it still holds its path
    /// (watchers then see it ready).
    pub fn set_ready(&self, stream: &Arc<Stream>) {
        stream.set_ready();
        let mut paths = self.registry();
        if let Some(claim) = holding_claim(&paths, stream) {
            paths.set_ready(&claim);
        }
        drop(paths);
        self.after_change();
    }

    /// Ends `stream` for `reason` and frees its path if it still holds it.
    pub fn end(&self, stream: &Arc<Stream>, reason: EndReason) {
        let mut paths = self.registry();
        if let Some(claim) = holding_claim(&paths, stream) {
            paths.end(&claim, reason);
        }
        drop(paths);
        // Out of the registry first, then ended: a reader told the stream ended (BYE, its
        // connection closed) that asks again must not still find the path.
        stream.end(reason);
        self.after_change();
    }

    /// Ends the streams `owner` claimed but never made ready (a publisher's connection
    /// closed between ANNOUNCE and RECORD).
    pub fn end_unready_of(&self, owner: Owner) {
        let stale: Vec<Arc<Stream>> = {
            let paths = self.registry();
            paths
                .claims()
                .filter(|(_, o, ready)| *o == owner && !ready)
                .filter_map(|(claim, _, _)| paths.lookup(claim.path()).cloned())
                .collect()
        };
        for stream in stale {
            self.end(&stream, EndReason::SourceGone);
        }
    }

    /// Every published stream.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        let paths = self.registry();
        paths
            .claims()
            .filter_map(|(claim, _, _)| paths.lookup(claim.path()).cloned())
            .collect()
    }

    /// Relays every published stream's batch older than `max_age` at `now`: the backstop
    /// for a stream whose source's timer no one runs.
    pub fn flush_stale(&self, now: Instant, max_age: Duration) {
        for stream in self.streams() {
            stream.flush_stale(now, max_age);
        }
    }

    /// Watches lifecycle events of paths matching `pattern`, queuing up to `capacity`.
    pub fn watch(&self, pattern: Pattern, capacity: usize) -> WatcherId {
        self.registry().watch(pattern, capacity)
    }

    /// The next event for watcher `id`, if any.
    pub fn poll_event(&self, id: WatcherId) -> Option<Event> {
        self.registry().poll_event(id)
    }
}

/// The claim `stream` holds on its path, if the path still carries this very stream.
fn holding_claim(
    paths: &Registry<Arc<Stream>>,
    stream: &Arc<Stream>,
) -> Option<crate::registry::PathClaim> {
    let (claim, _, _) = paths.holder(stream.path())?;
    paths
        .lookup(stream.path())
        .is_some_and(|s| Arc::ptr_eq(s, stream))
        .then_some(claim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    fn presentation() -> Presentation {
        Presentation::from_sdp(SDP.as_bytes()).unwrap()
    }

    #[test]
    fn hooks_run_on_every_created_stream_and_versions_differ() {
        let hub = Hub::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        hub.on_stream(Box::new(move |_| {
            s2.fetch_add(1, Ordering::SeqCst);
        }));
        let a = hub.create_stream("a", presentation());
        let b = hub.create_stream("a", presentation());
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn replacing_ends_the_old_stream_and_end_frees_the_path() {
        let changes = Arc::new(AtomicUsize::new(0));
        let c2 = changes.clone();
        let hub = Hub::new(Box::new(move || {
            c2.fetch_add(1, Ordering::SeqCst);
        }));
        let watcher = hub.watch(Pattern::new("**"), 16);
        let old = hub.create_stream("cams/a", presentation());
        assert!(hub
            .publish(hub.new_owner(), Claim::Exclusive, &old)
            .unwrap()
            .is_none());
        hub.set_ready(&old);
        let new = hub.create_stream("cams/a", presentation());
        let busy = hub.publish(hub.new_owner(), Claim::Exclusive, &new);
        assert!(busy.is_err(), "exclusive refuses a second publisher");
        let replaced = hub
            .publish(hub.new_owner(), Claim::Replace, &new)
            .unwrap()
            .expect("the old stream comes back");
        assert!(Arc::ptr_eq(&replaced, &old));
        assert!(old.is_ended());
        hub.set_ready(&new);
        assert!(hub.registry().lookup_ready("cams/a").is_some());
        hub.end(&new, EndReason::SourceGone);
        assert!(hub.registry().lookup("cams/a").is_none());
        assert!(new.is_ended());
        let events: Vec<Event> = std::iter::from_fn(|| hub.poll_event(watcher)).collect();
        assert!(matches!(events.first(), Some(Event::Ready { .. })));
        assert!(matches!(events.last(), Some(Event::Ended { .. })));
        assert!(changes.load(Ordering::SeqCst) >= 5);
        // The bus got readiness as it happened, in order (a replacement is no gap).
        let names: Vec<&str> = hub
            .events()
            .since(0)
            .records
            .iter()
            .map(|r| r.event.name())
            .collect();
        assert_eq!(names, ["path_ready", "path_ready", "path_not_ready"]);
    }

    /// A directory of fixed sessions that forgets the ones kicked.
    struct Fixed(Mutex<Vec<SessionInfo>>);

    impl Sessions for Fixed {
        fn list(&self) -> Vec<SessionInfo> {
            self.0.lock().unwrap().clone()
        }
        fn kick(&self, id: &str) -> bool {
            let mut all = self.0.lock().unwrap();
            let before = all.len();
            all.retain(|s| s.id != id);
            all.len() != before
        }
    }

    fn info(id: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            path: "cams/a".into(),
            protocol: "rtsp",
            transport: "tcp",
            role: crate::stats::SessionRole::Reader,
            peer: "127.0.0.1:5000".parse().unwrap(),
            user: None,
            created_unix: 1,
            packets: 0,
            bytes: 0,
        }
    }

    #[test]
    fn sessions_of_every_directory_are_listed_and_kicked_by_id() {
        let hub = Hub::default();
        assert!(hub.sessions().is_empty());
        assert!(!hub.kick("x"));
        hub.add_sessions(Arc::new(Fixed(Mutex::new(vec![info("a"), info("b")]))));
        hub.add_sessions(Arc::new(Fixed(Mutex::new(vec![info("c")]))));
        let ids: Vec<String> = hub.sessions().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(hub.session("c").map(|s| s.path), Some("cams/a".into()));
        assert!(hub.kick("c"));
        assert!(!hub.kick("c"), "gone once kicked");
        assert!(hub.session("c").is_none());
        assert_eq!(hub.sessions().len(), 2);
    }

    /// Reports fixed figures.
    struct Figures;

    impl crate::Sink for Figures {
        fn on_batch(&self, _: &crate::Batch) {}
        fn on_end(&self, _: EndReason) {}
        fn stats(&self) -> crate::SinkStats {
            crate::SinkStats {
                readers: vec![crate::ReaderCount {
                    protocol: "rtsp",
                    transport: "udp",
                    count: 3,
                }],
                packets_out: 7,
                bytes_out: 70,
                dropped: Vec::new(),
            }
        }
    }

    impl crate::SourceFigures for Figures {
        fn source_stats(&self) -> crate::SourceStats {
            crate::SourceStats {
                packets_lost: 2,
                jitter_seconds: 0.5,
            }
        }
    }

    #[test]
    fn stream_stats_count_input_and_ask_sinks_and_the_living_source() {
        let hub = Hub::default();
        let s = hub.create_stream("p", presentation());
        assert_eq!(s.source_kind(), crate::SourceKind::Unknown);
        s.set_source_kind(crate::SourceKind::Pull);
        assert_eq!(s.source_kind().as_str(), "pull");
        s.add_sink(Arc::new(Figures));
        s.add_sink(Arc::new(Figures));
        let data = bytes::Bytes::from(vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3]);
        s.push_rtp(crate::MediaPacket {
            track: 0,
            header: sluice_rtp::packet::parse_rtp(&data).unwrap(),
            data,
            received_at: Instant::now(),
        });
        let source: Arc<dyn crate::SourceFigures> = Arc::new(Figures);
        s.set_source_stats(Arc::downgrade(&source));
        let st = s.stats();
        assert_eq!((st.packets_in, st.bytes_in), (1, 3));
        assert_eq!(st.sinks.readers_of("rtsp"), 6);
        assert_eq!(st.sinks.packets_out, 14);
        assert_eq!(st.source.map(|f| f.packets_lost), Some(2));
        drop(source);
        assert!(s.stats().source.is_none(), "a gone source reports nothing");
    }

    #[test]
    fn a_source_handle_dropped_ends_its_stream_and_frees_the_path() {
        let hub = Arc::new(Hub::default());
        let source = hub
            .publish_source("cam", presentation(), Claim::Exclusive)
            .unwrap();
        source.set_ready();
        let stream = source.stream().clone();
        assert!(hub.registry().lookup_ready("cam").is_some());
        let second = hub.publish_source("cam", presentation(), Claim::Exclusive);
        assert!(second.is_err(), "the path is taken");
        drop(source);
        assert!(stream.is_ended());
        assert!(hub.registry().lookup("cam").is_none());
        let again = hub
            .publish_source("cam", presentation(), Claim::Exclusive)
            .unwrap();
        again.end(EndReason::Replaced);
        assert!(hub.registry().lookup("cam").is_none());
    }

    #[test]
    fn an_owner_that_goes_away_frees_only_its_unready_paths() {
        let hub = Hub::default();
        let owner = hub.new_owner();
        let ready = hub.create_stream("r", presentation());
        let unready = hub.create_stream("u", presentation());
        hub.publish(owner, Claim::Exclusive, &ready).unwrap();
        hub.publish(owner, Claim::Exclusive, &unready).unwrap();
        hub.set_ready(&ready);
        hub.end_unready_of(owner);
        assert!(unready.is_ended());
        assert!(!ready.is_ended());
        assert_eq!(hub.streams().len(), 1);
    }
}
