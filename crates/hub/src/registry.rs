//! The path registry: which source publishes each path, look-ups for readers, and the
//! lifecycle events other modules watch.
//!
//! A source claims a path with [`Registry::publish`] under a [`Claim`] policy, the same
//! rules the RTSP server applies today:
//! - a configured source (file, demo, pull) claims with [`Claim::Override`]: it takes the
//!   path from a publisher, and no one but its own owner takes the path from it;
//! - a publisher claims with [`Claim::Exclusive`] (`rtsp.override_publisher = false`): the
//!   path must be free, or held by the same owner (a connection announcing again);
//! - or with [`Claim::Replace`] (`rtsp.override_publisher = true`): it also takes the path
//!   from another publisher.
//!
//! Whatever the policy, a path has at most one source; the one displaced is handed back
//! to be ended, and watchers see it [`Event::Replaced`].
//!
//! The registry is generic over what a path holds (`T`, the server's stream): it knows
//! claims, owners and readiness, not fan-out. It is plain data behind the caller's lock;
//! events are queued per watcher (see [`Registry::watch`]) rather than delivered by
//! callbacks, so that a watcher never runs under that lock and cannot call back into it.

use std::collections::{HashMap, VecDeque};

use crate::packet::EndReason;

/// Identifies one source's claim on a path; a later claim on the same path gets a larger
/// id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(u64);

impl SourceId {
    /// The id as a number (for logs).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Who claims: the same owner may claim its path again (a connection that announces
/// twice, a pull that reconnects with new media). The server uses connection ids for
/// publishers and ids of its own for configured sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub u64);

/// How a source claims a path held by another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Only a free path (or one this owner holds).
    Exclusive,
    /// Also a path another publisher holds, which is replaced; never a configured
    /// source's.
    Replace,
    /// A configured source: takes the path from a publisher too, and holds it against
    /// everyone but its own owner.
    Override,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// A configured source holds the path.
    #[error("path {path:?} has a configured source")]
    Configured {
        /// The path.
        path: String,
    },
    /// Another publisher holds the path and the claim may not replace it.
    #[error("path {path:?} already has a publisher")]
    Published {
        /// The path.
        path: String,
    },
}

/// A source's hold on a path: what it passes to [`Registry::set_ready`] and
/// [`Registry::end`]. Once another claim replaced it, both do nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathClaim {
    path: String,
    source: SourceId,
}

impl PathClaim {
    /// The path claimed.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The claim's id.
    pub fn source(&self) -> SourceId {
        self.source
    }
}

/// A granted claim.
#[derive(Debug)]
#[must_use = "a replaced source must be ended"]
pub struct Published<T> {
    /// The new source's claim.
    pub claim: PathClaim,
    /// What the path held before, now displaced: the caller ends it (with
    /// [`EndReason::Replaced`]).
    pub replaced: Option<T>,
}

/// A lifecycle event of a path, as queued for watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The source started sending: readers may subscribe.
    Ready {
        /// The path.
        path: String,
        /// The source.
        source: SourceId,
    },
    /// A ready source ended.
    Ended {
        /// The path.
        path: String,
        /// The source.
        source: SourceId,
        /// Why.
        reason: EndReason,
    },
    /// A ready source was displaced by a new claim (which sends its own `Ready` once it
    /// starts sending).
    Replaced {
        /// The path.
        path: String,
        /// The displaced source.
        old: SourceId,
        /// The claim that displaced it.
        new: SourceId,
    },
    /// The watcher's queue was full: this many events were dropped here. Look the paths
    /// up again ([`Registry::ready_paths`]) to catch up.
    Lagged {
        /// Events dropped.
        missed: u64,
    },
}

impl Event {
    /// The path the event is about (None for [`Event::Lagged`]).
    pub fn path(&self) -> Option<&str> {
        match self {
            Event::Ready { path, .. }
            | Event::Ended { path, .. }
            | Event::Replaced { path, .. } => Some(path),
            Event::Lagged { .. } => None,
        }
    }
}

/// Identifies a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatcherId(u64);

/// A path pattern: `*` matches within one path segment (no `/`), `**` across segments,
/// every other character itself. `cams/*` matches `cams/door`, not `cams/a/b`;
/// `**` matches every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    Star,
    AnyStar,
}

impl Pattern {
    /// Parses a pattern; every string is one.
    pub fn new(pattern: &str) -> Pattern {
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut bytes = pattern.bytes().peekable();
        while let Some(b) = bytes.next() {
            tokens.push(match b {
                b'*' if bytes.peek() == Some(&b'*') => {
                    bytes.next();
                    Token::AnyStar
                }
                b'*' => Token::Star,
                b => Token::Byte(b),
            });
        }
        Pattern { tokens }
    }

    /// Whether `path` matches: in time proportional to the pattern's length times the
    /// path's, whatever either holds (paths come from the network).
    pub fn matches(&self, path: &str) -> bool {
        let s = path.as_bytes();
        // next[j]: whether the tokens after the current one match s[j..].
        let mut next = vec![false; s.len() + 1];
        next[s.len()] = true;
        let mut cur = vec![false; s.len() + 1];
        for token in self.tokens.iter().rev() {
            for j in (0..=s.len()).rev() {
                let here = s.get(j).copied();
                cur[j] = match *token {
                    Token::Byte(b) => here == Some(b) && next[j + 1],
                    Token::Star => next[j] || (here.is_some_and(|c| c != b'/') && cur[j + 1]),
                    Token::AnyStar => next[j] || (here.is_some() && cur[j + 1]),
                };
            }
            std::mem::swap(&mut cur, &mut next);
        }
        next[0]
    }
}

/// One watcher's pattern and queue.
#[derive(Debug)]
struct Watcher {
    id: WatcherId,
    pattern: Pattern,
    queue: VecDeque<Event>,
    capacity: usize,
    /// Events dropped since the queue filled, reported as [`Event::Lagged`] once the
    /// queue is drained.
    missed: u64,
}

impl Watcher {
    fn offer(&mut self, event: &Event) {
        if self.missed > 0 || self.queue.len() >= self.capacity {
            // Keeps dropping until the watcher has seen the gap, so that what it gets is
            // its queue, the gap, then later events: never events out of order.
            self.missed += 1;
        } else {
            self.queue.push_back(event.clone());
        }
    }

    fn poll(&mut self) -> Option<Event> {
        self.queue.pop_front().or_else(|| {
            (self.missed > 0).then(|| Event::Lagged {
                missed: std::mem::take(&mut self.missed),
            })
        })
    }
}

/// A path's current source.
#[derive(Debug)]
struct Entry<T> {
    value: T,
    source: SourceId,
    owner: Owner,
    /// Claimed with [`Claim::Override`]: only `owner` may take the path.
    configured: bool,
    ready: bool,
}

/// The published paths and their watchers.
#[derive(Debug)]
pub struct Registry<T> {
    paths: HashMap<String, Entry<T>>,
    watchers: Vec<Watcher>,
    next_source: u64,
    next_watcher: u64,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Registry {
            paths: HashMap::new(),
            watchers: Vec::new(),
            next_source: 1,
            next_watcher: 1,
        }
    }
}

/// What a path holds that a reader can subscribe a sink to (the server's stream).
pub trait Subscribe<S> {
    /// What a subscription returns (the server: the sink's id and its RTP-Info starts).
    type Subscription;
    /// Subscribes `sink`.
    fn subscribe(&self, sink: S) -> Self::Subscription;
}

impl<T> Registry<T> {
    /// An empty registry.
    pub fn new() -> Registry<T> {
        Registry::default()
    }

    /// Claims `path` for a source of `owner` holding `value`, under `claim`'s policy (see
    /// the module doc). Granted, the source is not ready yet ([`Registry::set_ready`]);
    /// what it displaced is handed back.
    pub fn publish(
        &mut self,
        path: &str,
        owner: Owner,
        claim: Claim,
        value: T,
    ) -> Result<Published<T>, Busy> {
        if let Some(old) = self.paths.get(path) {
            if old.owner != owner {
                if old.configured {
                    return Err(Busy::Configured { path: path.into() });
                }
                if claim == Claim::Exclusive {
                    return Err(Busy::Published { path: path.into() });
                }
            }
        }
        let source = SourceId(self.next_source);
        self.next_source += 1;
        let entry = Entry {
            value,
            source,
            owner,
            configured: claim == Claim::Override,
            ready: false,
        };
        let replaced = self.paths.insert(path.to_owned(), entry).map(|old| {
            if old.ready {
                self.emit(Event::Replaced {
                    path: path.to_owned(),
                    old: old.source,
                    new: source,
                });
            }
            old.value
        });
        Ok(Published {
            claim: PathClaim {
                path: path.to_owned(),
                source,
            },
            replaced,
        })
    }

    /// Marks the claim's source as sending: readers may subscribe, watchers get
    /// [`Event::Ready`] (once). False if the claim no longer holds its path.
    pub fn set_ready(&mut self, claim: &PathClaim) -> bool {
        let Some(entry) = self.paths.get_mut(&claim.path) else {
            return false;
        };
        if entry.source != claim.source {
            return false;
        }
        if !entry.ready {
            entry.ready = true;
            self.emit(Event::Ready {
                path: claim.path.clone(),
                source: claim.source,
            });
        }
        true
    }

    /// Ends the claim's source: the path is free again and, if the source was ready,
    /// watchers get [`Event::Ended`]. Returns what the path held, or None if the claim
    /// no longer holds it (a later claim replaced it: that one stays).
    pub fn end(&mut self, claim: &PathClaim, reason: EndReason) -> Option<T> {
        if self.paths.get(&claim.path)?.source != claim.source {
            return None;
        }
        let entry = self.paths.remove(&claim.path)?;
        if entry.ready {
            self.emit(Event::Ended {
                path: claim.path.clone(),
                source: claim.source,
                reason,
            });
        }
        Some(entry.value)
    }

    /// What `path` holds, ready or not.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        self.paths.get(path).map(|e| &e.value)
    }

    /// What `path` holds if its source is ready (what a reader may play).
    pub fn lookup_ready(&self, path: &str) -> Option<&T> {
        self.paths.get(path).filter(|e| e.ready).map(|e| &e.value)
    }

    /// The claim currently holding `path`, and whether its source is ready.
    pub fn holder(&self, path: &str) -> Option<(PathClaim, Owner, bool)> {
        self.paths.get(path).map(|e| {
            (
                PathClaim {
                    path: path.to_owned(),
                    source: e.source,
                },
                e.owner,
                e.ready,
            )
        })
    }

    /// Subscribes `sink` to `path`'s source if it is ready; None (and `sink` dropped)
    /// otherwise. Runs under the caller's registry lock: for a subscription that takes
    /// long (a large GOP hand-over), [`Registry::lookup_ready`] and subscribe outside.
    pub fn subscribe<S>(&self, path: &str, sink: S) -> Option<T::Subscription>
    where
        T: Subscribe<S>,
    {
        self.lookup_ready(path).map(|v| v.subscribe(sink))
    }

    /// The paths whose source is ready and that match `pattern`, with their sources: a
    /// new or lagging watcher's starting point.
    pub fn ready_paths(&self, pattern: &Pattern) -> Vec<(String, SourceId)> {
        let mut v: Vec<(String, SourceId)> = self
            .paths
            .iter()
            .filter(|(p, e)| e.ready && pattern.matches(p))
            .map(|(p, e)| (p.clone(), e.source))
            .collect();
        v.sort();
        v
    }

    /// Every path with its claim, owner and readiness (e.g. to end the unready claims of
    /// a connection that closed).
    pub fn claims(&self) -> impl Iterator<Item = (PathClaim, Owner, bool)> + '_ {
        self.paths.iter().map(|(p, e)| {
            (
                PathClaim {
                    path: p.clone(),
                    source: e.source,
                },
                e.owner,
                e.ready,
            )
        })
    }

    /// Number of paths held.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no path is held.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Registers a watcher of the paths matching `pattern` (e.g. `cams/*` for a recorder
    /// of every camera). Its events queue up to `capacity` (at least 1) until
    /// [`Registry::poll_event`] takes them; past that they are dropped and it gets one
    /// [`Event::Lagged`] in their place. Events of one path come in the order they
    /// happened.
    pub fn watch(&mut self, pattern: Pattern, capacity: usize) -> WatcherId {
        let id = WatcherId(self.next_watcher);
        self.next_watcher += 1;
        self.watchers.push(Watcher {
            id,
            pattern,
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            missed: 0,
        });
        id
    }

    /// Removes a watcher and its queue; unknown ids are ignored.
    pub fn unwatch(&mut self, id: WatcherId) {
        self.watchers.retain(|w| w.id != id);
    }

    /// The watcher's next event, oldest first.
    pub fn poll_event(&mut self, id: WatcherId) -> Option<Event> {
        self.watchers.iter_mut().find(|w| w.id == id)?.poll()
    }

    fn emit(&mut self, event: Event) {
        let Some(path) = event.path() else {
            return;
        };
        for w in &mut self.watchers {
            if w.pattern.matches(path) {
                w.offer(&event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_within_and_across_segments() {
        let m = |p: &str, s: &str| Pattern::new(p).matches(s);
        assert!(m("cams/*", "cams/door"));
        assert!(m("cams/*", "cams/"));
        assert!(!m("cams/*", "cams/a/b"));
        assert!(!m("cams/*", "cam/door"));
        assert!(m("cams/**", "cams/a/b"));
        assert!(m("**", "anything/at/all"));
        assert!(m("*", ""));
        assert!(m("live", "live"));
        assert!(!m("live", "live2"));
        assert!(m("*/hd", "door/hd"));
        assert!(!m("*/hd", "a/door/hd"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        // Quadratic at worst, whatever the input.
        let long = "a".repeat(5000);
        assert!(!m("*a*a*a*a*a*a*a*a*b", &long));
    }

    /// The obvious backtracking matcher, exponential at worst: the reference for
    /// [`Pattern::matches`].
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match p {
            [] => s.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| naive(rest, &s[i..])),
            [b'*', rest @ ..] => {
                let segment = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
                (0..=segment).any(|i| naive(rest, &s[i..]))
            }
            [c, rest @ ..] => s.first() == Some(c) && naive(rest, &s[1..]),
        }
    }

    proptest::proptest! {
        /// The quadratic matcher agrees with the backtracking one.
        #[test]
        fn patterns_match_as_the_backtracking_reference(
            pattern in "[ab/*]{0,8}",
            path in "[ab/]{0,10}",
        ) {
            proptest::prop_assert_eq!(
                Pattern::new(&pattern).matches(&path),
                naive(pattern.as_bytes(), path.as_bytes())
            );
        }
    }

    fn reg() -> (Registry<&'static str>, WatcherId) {
        let mut r = Registry::new();
        let w = r.watch(Pattern::new("**"), 64);
        (r, w)
    }

    fn events(r: &mut Registry<&'static str>, w: WatcherId) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event(w)).collect()
    }

    #[test]
    fn an_exclusive_publisher_is_refused_a_held_path_but_may_announce_again() {
        let (mut r, _) = reg();
        let a = r.publish("live", Owner(1), Claim::Exclusive, "a").unwrap();
        assert!(a.replaced.is_none());
        assert_eq!(
            r.publish("live", Owner(2), Claim::Exclusive, "b")
                .unwrap_err(),
            Busy::Published {
                path: "live".into()
            }
        );
        let again = r.publish("live", Owner(1), Claim::Exclusive, "a2").unwrap();
        assert_eq!(again.replaced, Some("a"));
        assert_eq!(r.lookup("live"), Some(&"a2"));
        // The first claim no longer holds the path: ending it leaves the new one.
        assert_eq!(r.end(&a.claim, EndReason::SourceGone), None);
        assert_eq!(r.lookup("live"), Some(&"a2"));
    }

    #[test]
    fn replace_takes_a_publishers_path_and_ends_it_with_a_replaced_event() {
        let (mut r, w) = reg();
        let a = r.publish("live", Owner(1), Claim::Exclusive, "a").unwrap();
        assert!(r.set_ready(&a.claim));
        assert!(r.lookup_ready("live").is_some());
        let b = r.publish("live", Owner(2), Claim::Replace, "b").unwrap();
        assert_eq!(b.replaced, Some("a"));
        assert_eq!(
            r.lookup_ready("live"),
            None,
            "the new source is not ready yet"
        );
        assert!(!r.set_ready(&a.claim), "a replaced claim is over");
        assert!(r.set_ready(&b.claim));
        assert_eq!(
            r.end(&b.claim, EndReason::SourceGone),
            Some("b"),
            "the holder's end frees the path"
        );
        assert!(r.is_empty());
        let (sa, sb) = (a.claim.source(), b.claim.source());
        assert_eq!(
            events(&mut r, w),
            vec![
                Event::Ready {
                    path: "live".into(),
                    source: sa
                },
                Event::Replaced {
                    path: "live".into(),
                    old: sa,
                    new: sb
                },
                Event::Ready {
                    path: "live".into(),
                    source: sb
                },
                Event::Ended {
                    path: "live".into(),
                    source: sb,
                    reason: EndReason::SourceGone
                },
            ]
        );
    }

    #[test]
    fn a_configured_source_is_overridden_only_by_its_owner() {
        let (mut r, _) = reg();
        let publisher = r.publish("cam", Owner(7), Claim::Exclusive, "pub").unwrap();
        // The configured source takes the path from a publisher...
        let pull = r
            .publish("cam", Owner(100), Claim::Override, "pull")
            .unwrap();
        assert_eq!(pull.replaced, Some("pub"));
        assert_eq!(r.end(&publisher.claim, EndReason::SourceGone), None);
        // ... and nobody else takes it back, whatever the policy.
        for claim in [Claim::Exclusive, Claim::Replace, Claim::Override] {
            assert_eq!(
                r.publish("cam", Owner(7), claim, "x").unwrap_err(),
                Busy::Configured { path: "cam".into() }
            );
        }
        // Its owner may (a pull reconnecting with new media).
        let again = r
            .publish("cam", Owner(100), Claim::Override, "pull2")
            .unwrap();
        assert_eq!(again.replaced, Some("pull"));
    }

    #[test]
    fn unready_sources_are_invisible_to_watchers_and_readers() {
        let (mut r, w) = reg();
        let a = r.publish("x", Owner(1), Claim::Exclusive, "a").unwrap();
        assert_eq!(r.lookup("x"), Some(&"a"));
        assert_eq!(r.lookup_ready("x"), None);
        let _ = r.publish("x", Owner(1), Claim::Exclusive, "b").unwrap();
        assert_eq!(r.end(&a.claim, EndReason::SourceGone), None);
        let (claim, owner, ready) = r.holder("x").unwrap();
        assert_eq!((owner, ready), (Owner(1), false));
        r.end(&claim, EndReason::SourceGone);
        assert!(events(&mut r, w).is_empty());
    }

    #[test]
    fn watchers_see_only_their_paths_and_a_full_queue_reports_the_gap() {
        let mut r = Registry::new();
        let cams = r.watch(Pattern::new("cams/*"), 2);
        let other = r.watch(Pattern::new("live"), 8);
        let mut claims = Vec::new();
        for (i, path) in ["cams/a", "live", "cams/b", "cams/c", "cams/d/e"]
            .into_iter()
            .enumerate()
        {
            let p = r
                .publish(path, Owner(i as u64), Claim::Exclusive, i)
                .unwrap();
            r.set_ready(&p.claim);
            claims.push(p.claim);
        }
        let got: Vec<Event> = std::iter::from_fn(|| r.poll_event(cams)).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].path(), Some("cams/a"));
        assert_eq!(got[1].path(), Some("cams/b"));
        assert_eq!(got[2], Event::Lagged { missed: 1 });
        // After the gap, events flow again, and the watcher can catch up.
        r.end(&claims[0], EndReason::SourceGone);
        assert_eq!(
            r.poll_event(cams),
            Some(Event::Ended {
                path: "cams/a".into(),
                source: claims[0].source(),
                reason: EndReason::SourceGone
            })
        );
        let ready: Vec<String> = r
            .ready_paths(&Pattern::new("cams/*"))
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(ready, vec!["cams/b", "cams/c"]);
        let live: Vec<Event> = std::iter::from_fn(|| r.poll_event(other)).collect();
        assert_eq!(live.len(), 1);
        r.unwatch(other);
        assert_eq!(r.poll_event(other), None);
    }

    #[test]
    fn subscribe_reaches_only_a_ready_source() {
        struct Stream;
        impl Subscribe<u32> for Stream {
            type Subscription = u32;
            fn subscribe(&self, sink: u32) -> u32 {
                sink + 1
            }
        }
        let mut r = Registry::new();
        let p = r.publish("s", Owner(1), Claim::Exclusive, Stream).unwrap();
        assert_eq!(r.subscribe("s", 1), None);
        r.set_ready(&p.claim);
        assert_eq!(r.subscribe("s", 1), Some(2));
        assert_eq!(r.subscribe("t", 1), None);
    }

    /// What sources may do to a registry, for the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        Publish { path: u8, owner: u8, claim: u8 },
        Ready(u8),
        End(u8, bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0u8..3, 0u8..4, 0u8..3).prop_map(|(path, owner, claim)| Op::Publish { path, owner, claim }),
            2 => any::<u8>().prop_map(Op::Ready),
            2 => (any::<u8>(), any::<bool>()).prop_map(|(c, r)| Op::End(c, r)),
        ]
    }

    proptest::proptest! {
        /// Whatever sources claim, ready and end: a path has at most one source, the one
        /// the model says; a claim is refused exactly when an exclusive one meets another
        /// owner's source or anyone meets another owner's configured source; a displaced
        /// source is handed back; watchers get exactly the events the model expects (a
        /// ready source displaced is Replaced); and per path, each source's Ready comes at
        /// most once, then at most one end, with sources in claim order.
        #[test]
        fn one_source_per_path_and_events_in_order(ops in proptest::collection::vec(op(), 1..120)) {
            const PATHS: [&str; 3] = ["cams/a", "cams/b", "live"];
            let mut r: Registry<u64> = Registry::new();
            let w = r.watch(Pattern::new("**"), 10_000);
            // The model: path -> (value, owner, configured, ready, claim).
            let mut model: HashMap<&str, (u64, u8, bool, bool, PathClaim)> = HashMap::new();
            let mut claims: Vec<PathClaim> = Vec::new();
            // The events the model says watchers get, in order.
            let mut expected: Vec<Event> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let value = n as u64;
                match op {
                    Op::Publish { path, owner, claim } => {
                        let path = PATHS[usize::from(path)];
                        let claim = [Claim::Exclusive, Claim::Replace, Claim::Override][usize::from(claim)];
                        let refused = model.get(path).is_some_and(|(_, o, configured, _, _)| {
                            *o != owner && (*configured || claim == Claim::Exclusive)
                        });
                        match r.publish(path, Owner(u64::from(owner)), claim, value) {
                            Ok(p) => {
                                proptest::prop_assert!(!refused);
                                let old = model.insert(path, (value, owner, claim == Claim::Override, false, p.claim.clone()));
                                if let Some(old) = old.as_ref().filter(|o| o.3) {
                                    expected.push(Event::Replaced {
                                        path: path.into(),
                                        old: old.4.source(),
                                        new: p.claim.source(),
                                    });
                                }
                                proptest::prop_assert_eq!(p.replaced, old.map(|o| o.0));
                                claims.push(p.claim);
                            }
                            Err(_) => proptest::prop_assert!(refused),
                        }
                    }
                    Op::Ready(i) => {
                        if let Some(c) = claims.get(usize::from(i) % claims.len().max(1)) {
                            let holds = model.get(c.path()).is_some_and(|m| m.4 == *c);
                            proptest::prop_assert_eq!(r.set_ready(c), holds);
                            if let Some(m) = model.get_mut(c.path()).filter(|m| m.4 == *c && !m.3) {
                                m.3 = true;
                                expected.push(Event::Ready { path: c.path().into(), source: c.source() });
                            }
                        }
                    }
                    Op::End(i, replaced) => {
                        if let Some(c) = claims.get(usize::from(i) % claims.len().max(1)) {
                            let reason = if replaced { EndReason::Replaced } else { EndReason::SourceGone };
                            let holds = model.get(c.path()).is_some_and(|m| m.4 == *c);
                            let got = r.end(c, reason);
                            if holds {
                                let m = model.remove(c.path());
                                if m.as_ref().is_some_and(|m| m.3) {
                                    expected.push(Event::Ended { path: c.path().into(), source: c.source(), reason });
                                }
                                proptest::prop_assert_eq!(got, m.map(|m| m.0));
                            } else {
                                proptest::prop_assert_eq!(got, None);
                            }
                        }
                    }
                }
                for path in PATHS {
                    proptest::prop_assert_eq!(r.lookup(path), model.get(path).map(|m| &m.0));
                    proptest::prop_assert_eq!(
                        r.lookup_ready(path),
                        model.get(path).filter(|m| m.3).map(|m| &m.0)
                    );
                }
                proptest::prop_assert_eq!(r.len(), model.len());
            }
            // Exactly the events the model expects, in order...
            let events: Vec<Event> = std::iter::from_fn(|| r.poll_event(w)).collect();
            proptest::prop_assert_eq!(&events, &expected);
            // ... which per path are Ready(s), then Ended(s) or Replaced(s → t), then
            // Ready of a later source...
            let mut state: HashMap<String, (Option<SourceId>, bool)> = HashMap::new();
            for e in events {
                let path = e.path().map(str::to_owned);
                proptest::prop_assert!(path.is_some(), "no event was dropped");
                let (last, live) = state.entry(path.unwrap_or_default()).or_insert((None, false));
                match e {
                    Event::Ready { source, .. } => {
                        proptest::prop_assert!(!*live, "a source ready while another is");
                        proptest::prop_assert!(last.is_none_or(|l| source > l), "sources out of order");
                        *last = Some(source);
                        *live = true;
                    }
                    Event::Ended { source, .. } => {
                        proptest::prop_assert!(*live && *last == Some(source));
                        *live = false;
                    }
                    Event::Replaced { old, new, .. } => {
                        proptest::prop_assert!(*live && *last == Some(old) && new > old);
                        *live = false;
                    }
                    Event::Lagged { .. } => {}
                }
            }
            // ... and what is still live is what the model holds ready.
            for path in PATHS {
                let live = state.get(path).is_some_and(|s| s.1);
                proptest::prop_assert_eq!(live, model.get(path).is_some_and(|m| m.3));
            }
        }
    }
}
