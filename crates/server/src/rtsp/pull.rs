//! Pull sources: a path fed by pulling an RTSP stream from a camera or another server.
//!
//! The pull connects with the RTSP client, feeds the path's [`Stream`] through an
//! [`Ingest`] (receiver statistics, RRs back to the upstream), and reconnects with an
//! exponential backoff (1 s doubling to `source_reconnect_max`, ±20 % jitter) whenever
//! the upstream goes away. Readers stay connected meanwhile; when the upstream returns
//! with the same media, the stream's timeline keeps their sequence numbers and
//! timestamps continuous; when its media changed, their sessions end so they DESCRIBE
//! again. `auto` transport tries UDP first and falls back to TCP when the upstream
//! refuses UDP or no packet arrives within 3 s. A playing upstream that sends no RTP for
//! `source_timeout` (a hung camera keeps its TCP connection open) is dropped and
//! reconnected like one that went away. On-demand pulls start with the first
//! reader and stop `source_on_demand_close_after` after the last one leaves.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_client::{ClientEvent, ClientMode, Connection, ConnectionError, Credentials, Options};
use sluice_rtsp::client::ClientError;
use sluice_rtsp::redact_credentials;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{PathConfig, SourceTransport};
use crate::rtsp::at_hand::sleep_until;
use crate::rtsp::ingest::Ingest;
use crate::rtsp::{Rtsp, RTCP_INTERVAL};
use sluice_hub::presentation::Presentation;
use sluice_hub::registry::{Claim, Owner};
use sluice_hub::{EndReason, Stream};

/// How long `auto` transport waits for the first UDP packet before switching to TCP.
const UDP_SILENCE: Duration = Duration::from_secs(3);

/// One pulled path.
pub struct Pull {
    path: String,
    config: PathConfig,
    on_demand: bool,
    /// Whose claims on the path are this pull's: its streams replace each other.
    owner: Owner,
    /// The stream once the upstream plays (None until then).
    ready: watch::Sender<Option<Arc<Stream>>>,
    /// Last time a reader asked for the path (DESCRIBE/SETUP) or had a session on it.
    last_demand: Mutex<Instant>,
    /// Its task, to stop it when the configuration drops or changes its path.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Pull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pull").field("path", &self.path).finish()
    }
}

/// How one connection attempt ended.
enum Outcome {
    /// Idle on-demand source: stop for good.
    Stopped,
    /// UDP did not work: retry with TCP at once.
    SwitchToTcp,
    /// The upstream went away or failed; `had_media` resets the backoff.
    Lost { had_media: bool },
}

impl Pull {
    /// A pull for `path` with its (expanded) configuration, claiming the path as `owner`.
    pub(crate) fn new(
        path: String,
        config: PathConfig,
        on_demand: bool,
        owner: Owner,
    ) -> Arc<Pull> {
        Arc::new(Pull {
            path,
            config,
            on_demand,
            owner,
            ready: watch::channel(None).0,
            last_demand: Mutex::new(Instant::now()),
            task: Mutex::new(None),
        })
    }

    /// The path it feeds.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Notes that a reader wants the path (keeps an on-demand pull alive).
    pub fn touch(&self) {
        *self.last_demand.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Waits up to `timeout` for the upstream to play; returns its stream.
    pub async fn wait_ready(&self, timeout: Duration) -> Option<Arc<Stream>> {
        let mut rx = self.ready.subscribe();
        let result = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| s.as_ref().is_some_and(|s| s.is_ready()))
                .await
                .ok()
                .and_then(|s| s.clone())
        })
        .await;
        result.ok().flatten()
    }

    fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.last_demand.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn credentials(&self) -> Option<Credentials> {
        match (&self.config.source_user, &self.config.source_pass) {
            (Some(u), p) => Some(Credentials {
                username: u.clone(),
                password: p.clone().unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

/// Runs a pull until it stops (on-demand and idle) or the server goes away.
pub async fn run(server: Weak<Rtsp>, pull: Arc<Pull>) {
    let mut backoff = Duration::from_secs(1);
    let cap = pull.config.source_reconnect_max;
    let mut tcp = pull.config.source_transport == SourceTransport::Tcp;
    let url = redact_credentials(&pull.config.source);
    loop {
        let outcome = attempt(&server, &pull, tcp).await;
        match outcome {
            Outcome::Stopped => break,
            Outcome::SwitchToTcp => {
                info!(path = %pull.path, source = %url, "UDP unusable; switching the pull to TCP");
                tcp = true;
                continue;
            }
            Outcome::Lost { had_media } => {
                if had_media {
                    backoff = Duration::from_secs(1);
                }
            }
        }
        if server.upgrade().is_none() {
            return;
        }
        if pull.on_demand
            && pull.idle_for(Instant::now()) >= pull.config.source_on_demand_close_after
        {
            if let Some(s) = server.upgrade() {
                if s.sessions_on_path(&pull.path) == 0 {
                    break;
                }
            }
        }
        let jitter = 0.8 + 0.4 * rand::random::<f64>();
        let wait = backoff.mul_f64(jitter);
        info!(path = %pull.path, source = %url, retry_in_ms = wait.as_millis() as u64, "pull source down; reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(cap);
    }
    // Stopped: release the path.
    if let Some(server) = server.upgrade() {
        server.stop_pull(&pull);
    }
    info!(path = %pull.path, source = %url, "pull source stopped (no readers)");
}

async fn attempt(server: &Weak<Rtsp>, pull: &Arc<Pull>, tcp: bool) -> Outcome {
    let url = redact_credentials(&pull.config.source);
    let opts = Options {
        url: pull.config.source.clone(),
        credentials: pull.credentials(),
        udp: !tcp,
        mode: ClientMode::Play,
        connect_timeout: Duration::from_secs(5),
    };
    let mut conn = match Connection::open(opts).await {
        Ok(c) => c,
        Err(e) => {
            warn!(path = %pull.path, source = %url, error = %e, "pull source connect failed");
            return Outcome::Lost { had_media: false };
        }
    };
    let auto = pull.config.source_transport == SourceTransport::Auto;
    let mut ingest: Option<Arc<Ingest>> = None;
    let mut playing_since: Option<Instant> = None;
    let mut had_media = false;
    let mut last_media: Option<Instant> = None;
    let silence_limit = pull.config.source_timeout();
    // Often enough to notice silence within a quarter of the limit past it.
    let mut tick = tokio::time::interval(
        (silence_limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    let mut last_rr = Instant::now();
    // When the stream's collected packets go out if no more input comes.
    let mut batch_timer: Option<Instant> = None;
    loop {
        tokio::select! {
            ev = conn.next_event() => {
                // Events already at hand are handled before the frames that end in them
                // go out, together (see `Stream::hold_frames`).
                let held = ingest.as_ref().map(|i| i.stream().clone());
                if let Some(s) = &held {
                    s.hold_frames();
                }
                let mut ev = ev;
                let outcome = 'events: loop {
                let now = Instant::now();
                match ev {
                    Ok(ClientEvent::Described { sdp, .. }) => {
                        let Some(server) = server.upgrade() else { break 'events Some(Outcome::Stopped) };
                        match Presentation::from_sdp(&sdp) {
                            Ok(p) => {
                                let stream = server.attach_pull_stream(pull, p);
                                let source = Arc::new(Ingest::new(stream, rand::random(), now));
                                source.report_on_stream();
                                ingest = Some(source);
                            }
                            Err(e) => {
                                warn!(path = %pull.path, source = %url, error = %e, "pull source SDP refused");
                                break 'events Some(Outcome::Lost { had_media: false });
                            }
                        }
                    }
                    Ok(ClientEvent::Playing { .. }) => {
                        if let Some(i) = &ingest {
                            if let Some(server) = server.upgrade() {
                                server.set_path_ready(i.stream());
                            }
                            pull.ready.send_replace(Some(i.stream().clone()));
                            info!(path = %pull.path, source = %url, transport = if tcp { "tcp" } else { "udp" }, "pull source playing");
                        }
                        playing_since = Some(now);
                    }
                    Ok(ClientEvent::Rtp { track, data }) => {
                        if let Some(i) = &ingest {
                            i.handle_rtp(track, data, now);
                            had_media = true;
                            last_media = Some(now);
                        }
                    }
                    Ok(ClientEvent::Rtcp { track, data }) => {
                        if let Some(i) = &ingest {
                            i.handle_rtcp(track, &data, now);
                        }
                    }
                    Ok(ClientEvent::Closed) | Err(ConnectionError::Closed) => {
                        warn!(path = %pull.path, source = %url, "pull source closed the connection");
                        break 'events Some(Outcome::Lost { had_media });
                    }
                    Err(ConnectionError::Session(ClientError::Status { status: 461, .. })) if auto && !tcp => {
                        break 'events Some(Outcome::SwitchToTcp);
                    }
                    Err(e) => {
                        warn!(path = %pull.path, source = %url, error = %e, "pull source failed");
                        break 'events Some(Outcome::Lost { had_media });
                    }
                    Ok(_) => {}
                }
                match crate::rtsp::at_hand::ready_now(conn.next_event()).await {
                    Some(next) => ev = next,
                    None => break 'events None,
                }
                };
                // The events at hand are used up: the held frames go out, and the
                // stream's timer sends the rest of an unfinished frame if input pauses.
                if let Some(s) = &held {
                    s.release_frames();
                }
                batch_timer = ingest.as_ref().and_then(|i| i.stream().poll_timeout());
                if let Some(outcome) = outcome {
                    return outcome;
                }
            }
            _ = sleep_until(batch_timer) => {
                if let Some(i) = &ingest {
                    i.stream().handle_timeout(Instant::now());
                }
                batch_timer = ingest.as_ref().and_then(|i| i.stream().poll_timeout());
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let (true, false, Some(since)) = (auto && !tcp, had_media, playing_since) {
                    if now.duration_since(since) >= UDP_SILENCE {
                        conn.close(Duration::from_secs(1)).await;
                        return Outcome::SwitchToTcp;
                    }
                } else if let Some(since) = last_media.or(playing_since) {
                    let silent = now.duration_since(since);
                    if silent >= silence_limit {
                        warn!(path = %pull.path, source = %url, silent_ms = silent.as_millis() as u64, source_timeout = %humantime::format_duration(silence_limit), "pull source sent no media within source_timeout; dropping it to reconnect");
                        // A hung upstream will not answer the TEARDOWN: do not wait long.
                        conn.close(Duration::from_millis(200)).await;
                        return Outcome::Lost { had_media };
                    }
                }
                if now.duration_since(last_rr) >= RTCP_INTERVAL {
                    last_rr = now;
                    if let Some(i) = &ingest {
                        let n = i.stream().presentation().tracks().len();
                        for t in 0..n {
                            if let Some(rr) = i.receiver_report(t, now) {
                                let _ = conn.send_rtcp(t, &rr).await;
                            }
                        }
                    }
                }
                let Some(s) = server.upgrade() else { return Outcome::Stopped };
                if s.sessions_on_path(&pull.path) > 0 {
                    pull.touch();
                }
                if pull.on_demand && pull.idle_for(now) >= pull.config.source_on_demand_close_after {
                    conn.close(Duration::from_secs(2)).await;
                    return Outcome::Stopped;
                }
            }
        }
    }
}

impl Rtsp {
    /// Attaches a (re)connected pull's presentation to its path: the same media continues
    /// the existing stream (readers see no discontinuity); new media replaces it (readers
    /// are ended so they DESCRIBE again).
    pub(crate) fn attach_pull_stream(
        &self,
        pull: &Pull,
        presentation: Presentation,
    ) -> Arc<Stream> {
        if let Some(old) = self.pull_stream(pull) {
            if !old.is_ended() && old.presentation().same_media(&presentation) {
                old.handle_source_change();
                return old;
            }
            info!(path = %pull.path, "pull source media changed; readers must DESCRIBE again");
        }
        let stream = self.hub.create_stream(&pull.path, presentation);
        stream.set_source_kind(sluice_hub::SourceKind::Pull);
        stream.set_fanout_window(self.config().rtsp.fanout_window);
        match self.publish_path(
            pull.owner,
            Claim::Override,
            &stream,
            "replaced by a pull source",
        ) {
            Ok(_) => {}
            // Only another configured source's path, which the configuration rules out.
            Err(e) => warn!(path = %pull.path, error = %e, "pull source cannot claim its path"),
        }
        stream
    }

    /// The stream holding the pull's path if the pull's own claim holds it.
    fn pull_stream(&self, pull: &Pull) -> Option<Arc<Stream>> {
        let paths = self.hub.registry();
        let (_, owner, _) = paths.holder(&pull.path)?;
        (owner == pull.owner)
            .then(|| paths.lookup(&pull.path).cloned())
            .flatten()
    }

    /// Stops a running pull for good (its path's configuration changed or went away): its
    /// upstream connection closes, its stream ends and its path is free.
    pub(crate) fn abort_pull(&self, pull: &Pull) {
        if let Some(task) = pull.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.stop_pull(pull);
    }

    /// Removes a stopped pull and its stream.
    pub(crate) fn stop_pull(&self, pull: &Pull) {
        self.pulls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pull.path);
        if let Some(stream) = self.pull_stream(pull) {
            self.end_path(&stream, EndReason::SourceGone);
        }
        pull.ready.send_replace(None);
    }

    /// Reader sessions on `path` (any stream).
    pub(crate) fn sessions_on_path(&self, path: &str) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.stream.path() == path)
            .count()
    }

    /// Reader (player) sessions on `path`.
    pub(crate) fn readers_on_path(&self, path: &str) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| {
                s.stream.path() == path && s.role() == sluice_rtsp::server_session::Role::Player
            })
            .count()
    }

    /// The pull feeding `path`, started if the configuration has an RTSP source for it.
    pub(crate) fn ensure_pull(self: &Arc<Self>, path: &str) -> Option<Arc<Pull>> {
        let resolved = self.config().resolve_path(path)?;
        if !resolved.config.source.starts_with("rtsp://") {
            return None;
        }
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pulls.get(path) {
            p.touch();
            return Some(p.clone());
        }
        let on_demand = resolved.config.on_demand(resolved.is_regex);
        let pull = Pull::new(
            path.to_owned(),
            resolved.config,
            on_demand,
            self.new_owner(),
        );
        pulls.insert(path.to_owned(), pull.clone());
        info!(path, source = %redact_credentials(&pull.config.source), on_demand, "pull source starting");
        let task = tokio::spawn(run(Arc::downgrade(self), pull.clone()));
        *pull.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Some(pull)
    }
}
