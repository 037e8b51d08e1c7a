//! LL-HLS delivery: `GET /<path>/index.m3u8` (with `_HLS_msn`, `_HLS_part`, `_HLS_skip`),
//! `init.mp4`, `part<n>.m4s` and `seg<msn>.m4s` for every live path, packaged by the sans-IO
//! [`sluice_media::hls::HlsMuxer`]; `main.m3u8` is a multivariant playlist naming that one
//! rendition with its RFC 6381 CODECS, RESOLUTION and BANDWIDTH.
//!
//! Every stream gets a [`HlsTap`] when it is created: a GOP cache of its own (shared
//! packet buffers, bounded) and, while a packager runs, a bounded queue to it. A packager
//! starts at the first request for a live path, is fed the cached GOP first (so a path that
//! has been live answers its first playlist at once), then the live batches through the
//! queue (full: the batch is dropped and counted; the stream's other readers never wait),
//! and stops [`crate::config::HlsConfig::idle_timeout`] after the last request or when the
//! stream ends. Blocking requests wait for each new part (a `watch` channel woken per part),
//! are refused with 400 when too far ahead, and get 503 with `Retry-After` after three
//! target durations instead of hanging; a path that is not live is a 404 problem.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use sluice_hub::delivery::codec_label;
use sluice_hub::{
    Batch, DeliveryNote, EndReason, Hub, MediaPacket, ReaderCount, Sink, SinkStats, Stream,
};
use sluice_media::hls::{Blocking, HlsError, HlsMuxer, Lookup};
use sluice_media::recorder::TrackSpec;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

mod cache;

use crate::auth::Action;
use crate::config::{Config, HlsConfig};
use crate::http::problem::Problem;
use crate::http::{HttpContext, Marker, StreamTarget};
use cache::TwoGops;

/// Batches queued between a stream and its packager (about 10 s of 30 fps video with
/// audio); more are dropped and counted.
pub const QUEUE_BATCHES: usize = 1024;
/// How often a packager checks whether it is idle.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Locks a mutex, recovering from a panic elsewhere (every critical section here leaves
/// the data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stream side of HLS: what a packager starts from and is fed through.
struct TapState {
    gop: TwoGops,
    /// The running packager's number and queue.
    to_muxer: Option<(u64, mpsc::Sender<Batch>)>,
    /// The number the next packager gets.
    next_id: u64,
}

/// Attached to every stream ([`Stream::attached`]): keeps its GOP and, while a packager
/// runs, hands it each batch through a bounded queue without ever waiting.
pub struct HlsTap {
    state: Mutex<TapState>,
    /// Batches dropped because the packager's queue was full.
    drops: AtomicU64,
    /// HLS clients by address, with their last request: the path's HLS readers.
    viewers: Mutex<HashMap<IpAddr, Instant>>,
}

/// An HLS client counts as a reader this long after its last request (players reload the
/// playlist at least every target duration).
pub const VIEWER_WINDOW: Duration = Duration::from_secs(10);
/// Most client addresses remembered per path.
const MAX_VIEWERS: usize = 100_000;

impl HlsTap {
    fn new(stream: &Stream) -> HlsTap {
        HlsTap {
            state: Mutex::new(TapState {
                gop: TwoGops::new(stream.presentation().keyframe_track()),
                to_muxer: None,
                next_id: 0,
            }),
            drops: AtomicU64::new(0),
            viewers: Mutex::new(HashMap::new()),
        }
    }

    /// A request from `ip` at `now`.
    fn seen(&self, ip: IpAddr, now: Instant) {
        let mut v = lock(&self.viewers);
        if v.len() >= MAX_VIEWERS {
            v.retain(|_, at| now.saturating_duration_since(*at) < VIEWER_WINDOW);
        }
        if v.len() < MAX_VIEWERS {
            v.insert(ip, now);
        }
    }

    /// Connects a packager (replacing any other): returns its number and the cached GOP,
    /// after which every batch goes to `tx` (atomically: nothing is lost or repeated
    /// between the two).
    fn connect(&self, tx: mpsc::Sender<Batch>) -> (u64, Vec<MediaPacket>) {
        let mut s = lock(&self.state);
        let id = s.next_id;
        s.next_id += 1;
        s.to_muxer = Some((id, tx));
        (id, s.gop.packets())
    }

    /// Disconnects packager `id`, if it is still the connected one.
    fn disconnect(&self, id: u64) {
        let mut s = lock(&self.state);
        if s.to_muxer.as_ref().is_some_and(|(i, _)| *i == id) {
            s.to_muxer = None;
        }
    }

    /// Batches dropped because the packager fell behind.
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }
}

impl Sink for HlsTap {
    fn on_batch(&self, batch: &Batch) {
        let mut s = lock(&self.state);
        for p in batch.packets() {
            s.gop.push(p);
        }
        if let Some((_, tx)) = &s.to_muxer {
            match tx.try_send(batch.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.drops.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => s.to_muxer = None,
            }
        }
    }

    fn on_end(&self, _reason: EndReason) {
        // Dropping the sender ends the packager once it has read the queue.
        lock(&self.state).to_muxer = None;
    }

    /// HLS readers: client addresses with a request in the last [`VIEWER_WINDOW`].
    fn stats(&self) -> SinkStats {
        let now = Instant::now();
        let mut v = lock(&self.viewers);
        v.retain(|_, at| now.saturating_duration_since(*at) < VIEWER_WINDOW);
        if v.is_empty() {
            return SinkStats::default();
        }
        SinkStats {
            readers: vec![ReaderCount {
                protocol: "hls",
                transport: "",
                count: v.len() as u64,
            }],
            ..SinkStats::default()
        }
    }
}

/// A running packager of one stream.
struct Live {
    stream: Weak<Stream>,
    /// The stream's tap (counts the path's HLS readers).
    tap: Arc<HlsTap>,
    muxer: Mutex<HlsMuxer>,
    /// Parts made so far; waiters wake on each change, and when the packager stops.
    parts: watch::Sender<u64>,
    /// The packager stopped (its stream ended, it idled out or failed).
    stopped: AtomicBool,
    /// Milliseconds since `epoch` of the last request.
    last_request: AtomicI64,
    epoch: Instant,
}

impl Live {
    fn touch(&self) {
        let ms = i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last_request.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let ms = i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX);
        Duration::from_millis(
            u64::try_from(ms - self.last_request.load(Ordering::Relaxed)).unwrap_or(0),
        )
    }

    fn is_for(&self, stream: &Arc<Stream>) -> bool {
        self.stream
            .upgrade()
            .is_some_and(|s| Arc::ptr_eq(&s, stream))
    }
}

/// Figures for `/metrics`.
#[derive(Default, Clone)]
struct Figures {
    muxers: Gauge,
    started: Counter,
    bytes_out: Counter,
    drops: Counter,
}

struct Inner {
    hub: Arc<Hub>,
    config: HlsConfig,
    muxers: Mutex<HashMap<String, Arc<Live>>>,
    figures: Figures,
}

/// The HLS module.
#[derive(Clone)]
pub struct Hls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hls")
            .field("muxers", &lock(&self.inner.muxers).len())
            .finish()
    }
}

/// The packager's view of a stream's tracks.
fn track_specs(stream: &Stream) -> Vec<TrackSpec> {
    stream
        .presentation()
        .tracks()
        .iter()
        .map(|t| TrackSpec {
            encoding: t.encoding.clone(),
            clock_rate: t.clock_rate,
            channels: None,
            fmtp: t.fmtp.clone(),
            video: t.media == "video",
            framerate: None,
        })
        .collect()
}

/// The packager's settings from `[hls]`.
fn muxer_config(c: &crate::config::HlsConfig) -> sluice_media::hls::HlsConfig {
    sluice_media::hls::HlsConfig {
        part_target: c.part_duration,
        segment_duration: c.segment_duration,
        segment_count: c.segment_count,
        mpegts: c.mpegts,
    }
}

/// What HLS makes of a stream with these tracks, for the API and the page: the packager's
/// own decision (a muxer is built and dropped, no media needed), so the note can never
/// disagree with what a request would get.
pub fn delivery_note(specs: &[TrackSpec], config: sluice_media::hls::HlsConfig) -> DeliveryNote {
    let label = |enc: &str| {
        let media = specs.iter().find(|t| t.encoding == enc).map_or("", |t| {
            if t.video {
                "video"
            } else {
                "audio"
            }
        });
        codec_label(media, enc)
    };
    match HlsMuxer::new(specs, config, (Instant::now(), SystemTime::now())) {
        Ok(m) => DeliveryNote {
            protocol: "hls",
            playable: true,
            notes: m
                .left_out()
                .iter()
                .map(|enc| format!("{} cannot be carried (left out)", label(enc)))
                .collect(),
        },
        Err(HlsError::NotCarried { codecs }) => DeliveryNote {
            protocol: "hls",
            playable: false,
            notes: codecs
                .split(", ")
                .map(|enc| format!("{} cannot be carried", label(enc)))
                .collect(),
        },
        Err(e) => DeliveryNote {
            protocol: "hls",
            playable: false,
            notes: vec![e.to_string()],
        },
    }
}

/// What an HLS request needs: read on the path, whatever the method (others get 405).
fn need(_: &Method, _: &str) -> Option<Action> {
    Some(Action::Read)
}

impl Hls {
    /// Starts the module: a tap on every stream created from now on (so call it before the
    /// sources start). None when `[hls]` is disabled.
    pub fn start(config: &Config, hub: &Arc<Hub>) -> Option<Hls> {
        if !config.hls.enabled {
            return None;
        }
        let muxing = muxer_config(&config.hls);
        hub.on_stream(Box::new(move |stream| {
            stream.set_delivery(delivery_note(&track_specs(stream), muxing));
            stream.attach(Arc::new(HlsTap::new(stream)));
        }));
        Some(Hls {
            inner: Arc::new(Inner {
                hub: hub.clone(),
                config: config.hls.clone(),
                muxers: Mutex::new(HashMap::new()),
                figures: Figures::default(),
            }),
        })
    }

    /// Adds the routes (`/<path>/index.m3u8`, `init.mp4`, `*.m4s`, read permission) and the
    /// metrics (`sluice_hls_*`) to the HTTP listener.
    pub fn mount(&self, http: &mut HttpContext) {
        let figures = &self.inner.figures;
        let registry = http.metrics().registry_mut();
        registry.register(
            "sluice_hls_muxers",
            "Running HLS packagers",
            figures.muxers.clone(),
        );
        registry.register(
            "sluice_hls_muxers_started",
            "HLS packagers started",
            figures.started.clone(),
        );
        registry.register(
            "sluice_hls_bytes_out",
            "Bytes of HLS parts, segments and init segments served",
            figures.bytes_out.clone(),
        );
        registry.register(
            "sluice_hls_batches_dropped",
            "Batches a packager fell too far behind to take",
            figures.drops.clone(),
        );
        let state = self.clone();
        let router = Router::new().fallback(
            move |Extension(target): Extension<StreamTarget>, req: Request| {
                let hls = state.clone();
                async move { hls.serve(target, req).await }
            },
        );
        http.routes().per_stream(
            Marker::Extension(&["m3u8", "mp4", "m4s", "ts"]),
            need,
            router,
        );
    }

    /// The packager of `path`, started if none runs for its current stream.
    fn live(&self, path: &str) -> Result<Arc<Live>, Response> {
        let stream = self.inner.hub.registry().lookup_ready(path).cloned();
        let Some(stream) = stream else {
            return Err(
                Problem::new(StatusCode::NOT_FOUND, format!("{path} is not live")).into_response(),
            );
        };
        let mut muxers = lock(&self.inner.muxers);
        if let Some(l) = muxers.get(path) {
            if l.is_for(&stream) && !l.stopped.load(Ordering::Acquire) {
                return Ok(l.clone());
            }
        }
        let specs = track_specs(&stream);
        let config = muxer_config(&self.inner.config);
        let muxer =
            HlsMuxer::new(&specs, config, (Instant::now(), SystemTime::now())).map_err(|e| {
                let status = match e {
                    HlsError::NotCarried { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    HlsError::Mux(_) => StatusCode::UNPROCESSABLE_ENTITY,
                };
                Problem::new(status, format!("{path}: {e}")).into_response()
            })?;
        let tap = stream.attach_once(|| Arc::new(HlsTap::new(&stream)));
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let (parts, _) = watch::channel(0);
        let live = Arc::new(Live {
            stream: Arc::downgrade(&stream),
            tap: tap.clone(),
            muxer: Mutex::new(muxer),
            parts,
            stopped: AtomicBool::new(false),
            last_request: AtomicI64::new(0),
            epoch: Instant::now(),
        });
        let (id, gop) = tap.connect(tx);
        info!(
            path,
            cached_packets = gop.len(),
            left_out = ?lock(&live.muxer).left_out(),
            "HLS packager started"
        );
        self.inner.figures.started.inc();
        self.inner.figures.muxers.inc();
        muxers.insert(path.to_owned(), live.clone());
        tokio::spawn(
            self.clone()
                .run(path.to_owned(), live.clone(), (tap, id), gop, rx),
        );
        Ok(live)
    }

    /// Feeds a packager until its stream ends or it idles out.
    async fn run(
        self,
        path: String,
        live: Arc<Live>,
        (tap, id): (Arc<HlsTap>, u64),
        gop: Vec<MediaPacket>,
        mut rx: mpsc::Receiver<Batch>,
    ) {
        let mut why = "stream ended";
        if !self.feed(&live, &gop) {
            why = "packaging failed";
        } else {
            // One timer for the whole life: a sleep made afresh in each loop would never
            // fire while batches keep coming.
            let mut idle_check = tokio::time::interval(IDLE_CHECK);
            idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(b) => {
                            if !self.feed(&live, b.packets()) {
                                why = "packaging failed";
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = idle_check.tick() => {
                        if live.idle_for() >= self.inner.config.idle_timeout {
                            why = "idle";
                            break;
                        }
                    }
                }
            }
        }
        tap.disconnect(id);
        live.stopped.store(true, Ordering::Release);
        live.parts.send_modify(|_| {});
        let drops = tap.drops();
        self.inner.figures.drops.inc_by(drops);
        {
            let mut muxers = lock(&self.inner.muxers);
            if muxers.get(&path).is_some_and(|l| Arc::ptr_eq(l, &live)) {
                muxers.remove(&path);
            }
        }
        self.inner.figures.muxers.dec();
        let next_part = lock(&live.muxer).parts_made();
        info!(
            path,
            reason = why,
            next_part,
            batches_dropped = drops,
            "HLS packager stopped"
        );
    }

    /// Pushes packets; false when the packager failed.
    fn feed(&self, live: &Live, packets: &[MediaPacket]) -> bool {
        let mut made = 0;
        let mut muxer = lock(&live.muxer);
        for p in packets {
            match muxer.push_rtp(p.track, &p.data, p.received_at) {
                Ok(n) => made += n,
                Err(e) => {
                    warn!(error = %e, "HLS packaging failed");
                    return false;
                }
            }
        }
        if made > 0 {
            let n = muxer.parts_made();
            drop(muxer);
            live.parts.send_replace(n);
        }
        true
    }

    async fn serve(&self, target: StreamTarget, req: Request) -> Response {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
                "HLS resources are read with GET",
            )
                .into_response();
        }
        let file = req.uri().path().trim_start_matches('/').to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let what = match parse_file(&file) {
            Some(File::TsPlaylist | File::TsSegment(_)) if !self.inner.config.mpegts => {
                return Problem::new(
                    StatusCode::NOT_FOUND,
                    "the MPEG-TS variant is off ([hls] mpegts)",
                )
                .into_response()
            }
            Some(w) => w,
            None => {
                return Problem::new(StatusCode::NOT_FOUND, format!("no HLS resource {file}"))
                    .into_response()
            }
        };
        let live = match self.live(&target.path) {
            Ok(l) => l,
            Err(res) => return res,
        };
        live.touch();
        live.tap.seen(target.peer.addr.ip(), Instant::now());
        if matches!(what, File::TsPlaylist | File::TsSegment(_)) && !lock(&live.muxer).has_ts() {
            return Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{}: the MPEG-TS variant carries H.264 and AAC only; use index.m3u8",
                    target.path
                ),
            )
            .into_response();
        }
        let res = match what {
            File::Playlist => self.playlist(&live, &query).await,
            File::TsPlaylist => self.playlist_ts(&live).await,
            File::Multivariant => self.multivariant(&live).await,
            other => self.media(&live, other).await,
        };
        if let Some(len) = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.inner.figures.bytes_out.inc_by(len);
        }
        res
    }

    /// Waits for the next part, at most until `deadline`: the answer to give instead
    /// when the deadline passed (503) or the packager stopped (404).
    async fn next_part(
        live: &Live,
        rx: &mut watch::Receiver<u64>,
        deadline: tokio::time::Instant,
        target: u32,
    ) -> Result<(), Response> {
        let woke = matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        );
        if live.stopped.load(Ordering::Acquire) {
            return Err(Problem::new(StatusCode::NOT_FOUND, "the stream ended").into_response());
        }
        if !woke {
            return Err(unavailable(target, "the awaited part did not come in time"));
        }
        Ok(())
    }

    /// How long a blocking request may wait: three target durations.
    fn hold(&self, live: &Live) -> (Duration, u32) {
        let target = lock(&live.muxer).target_duration();
        (Duration::from_secs(3 * u64::from(target)), target)
    }

    async fn playlist(&self, live: &Live, query: &str) -> Response {
        let q = match BlockingQuery::parse(query) {
            Ok(q) => q,
            Err(why) => return Problem::new(StatusCode::BAD_REQUEST, why).into_response(),
        };
        let (hold, target) = self.hold(live);
        let deadline = tokio::time::Instant::now() + hold;
        let mut rx = live.parts.subscribe();
        loop {
            rx.borrow_and_update();
            let answer = {
                let m = lock(&live.muxer);
                let state = match q.msn {
                    Some(msn) => m.blocking(msn, q.part),
                    None if m.has_parts() => Blocking::Ready,
                    None => Blocking::Wait,
                };
                match state {
                    Blocking::Ready => Ok(m.playlist(q.skip)),
                    Blocking::TooFar => Err(()),
                    Blocking::Wait => Ok(None),
                }
            };
            match answer {
                Ok(Some(text)) => {
                    return (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/vnd.apple.mpegurl"),
                            ),
                            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                        ],
                        text,
                    )
                        .into_response()
                }
                Err(()) => {
                    return Problem::new(
                        StatusCode::BAD_REQUEST,
                        "_HLS_msn/_HLS_part is further ahead than a client may wait for",
                    )
                    .into_response()
                }
                Ok(None) => {
                    if let Err(res) = Self::next_part(live, &mut rx, deadline, target).await {
                        return res;
                    }
                }
            }
        }
    }

    /// The multivariant playlist, once a part exists (waiting up to three target
    /// durations for it).
    async fn multivariant(&self, live: &Live) -> Response {
        let (hold, target) = self.hold(live);
        let deadline = tokio::time::Instant::now() + hold;
        let mut rx = live.parts.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(text) = lock(&live.muxer).multivariant() {
                return (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/vnd.apple.mpegurl"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    text,
                )
                    .into_response();
            }
            if let Err(res) = Self::next_part(live, &mut rx, deadline, target).await {
                return res;
            }
        }
    }

    /// The classic MPEG-TS playlist, once a segment is complete (waiting up to three
    /// target durations for it).
    async fn playlist_ts(&self, live: &Live) -> Response {
        let (hold, target) = self.hold(live);
        let deadline = tokio::time::Instant::now() + hold;
        let mut rx = live.parts.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(text) = lock(&live.muxer).playlist_ts() {
                return (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/vnd.apple.mpegurl"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    text,
                )
                    .into_response();
            }
            if let Err(res) = Self::next_part(live, &mut rx, deadline, target).await {
                return res;
            }
        }
    }

    async fn media(&self, live: &Live, what: File) -> Response {
        let (hold, target) = self.hold(live);
        let deadline = tokio::time::Instant::now() + hold;
        let mut rx = live.parts.subscribe();
        loop {
            rx.borrow_and_update();
            let found = {
                let m = lock(&live.muxer);
                match what {
                    File::Init => m.init().map_or(Lookup::Soon, Lookup::Ready),
                    File::Part(n) => m.part(n),
                    File::Segment(n) => m.segment(n),
                    File::TsSegment(n) => m.segment_ts(n),
                    File::Playlist | File::TsPlaylist | File::Multivariant => Lookup::Missing,
                }
            };
            match found {
                Lookup::Ready(bytes) => return media_response(what, bytes),
                Lookup::Missing => {
                    return Problem::new(
                        StatusCode::NOT_FOUND,
                        "no such part or segment (any more)",
                    )
                    .into_response()
                }
                Lookup::Soon => {
                    if let Err(res) = Self::next_part(live, &mut rx, deadline, target).await {
                        return res;
                    }
                }
            }
        }
    }
}

/// 503 with Retry-After: a blocking request waited three target durations.
fn unavailable(target: u32, why: &str) -> Response {
    let mut res = Problem::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(target.max(1)));
    res
}

fn media_response(what: File, bytes: Bytes) -> Response {
    // Part and segment names are never reused (numbers start from the wall clock), so
    // they may be cached; the init segment keeps its name across packager restarts.
    let (cache, kind) = match what {
        File::Init => ("no-cache", "video/mp4"),
        File::TsSegment(_) => ("public, max-age=60", "video/mp2t"),
        _ => ("public, max-age=60", "video/mp4"),
    };
    let len = bytes.len();
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        Body::from(bytes),
    )
        .into_response()
}

/// An HLS resource of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Playlist,
    Init,
    Part(u64),
    Segment(u64),
    TsPlaylist,
    TsSegment(u64),
    Multivariant,
}

fn parse_file(name: &str) -> Option<File> {
    match name {
        "index.m3u8" => return Some(File::Playlist),
        "init.mp4" => return Some(File::Init),
        "mpegts.m3u8" => return Some(File::TsPlaylist),
        "main.m3u8" => return Some(File::Multivariant),
        _ => {}
    }
    if let Some(n) = name.strip_prefix("seg").and_then(|n| n.strip_suffix(".ts")) {
        return n.parse().ok().map(File::TsSegment);
    }
    let stem = name.strip_suffix(".m4s")?;
    if let Some(n) = stem.strip_prefix("part") {
        return n.parse().ok().map(File::Part);
    }
    stem.strip_prefix("seg")?.parse().ok().map(File::Segment)
}

/// `_HLS_msn`, `_HLS_part`, `_HLS_skip` of a playlist request.
#[derive(Debug, Default, PartialEq, Eq)]
struct BlockingQuery {
    msn: Option<u64>,
    part: Option<u64>,
    skip: bool,
}

impl BlockingQuery {
    fn parse(query: &str) -> Result<BlockingQuery, &'static str> {
        let mut q = BlockingQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "_HLS_msn" => q.msn = Some(v.parse().map_err(|_| "_HLS_msn is not a number")?),
                "_HLS_part" => q.part = Some(v.parse().map_err(|_| "_HLS_part is not a number")?),
                "_HLS_skip" => q.skip = v == "YES" || v == "v2",
                _ => {}
            }
        }
        if q.part.is_some() && q.msn.is_none() {
            return Err("_HLS_part needs _HLS_msn");
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_hub::Presentation;

    #[test]
    fn delivery_notes_name_what_hls_cannot_carry() {
        let note = |sdp: &str| {
            let stream = Stream::new(
                "p".into(),
                Presentation::from_sdp(sdp.as_bytes()).unwrap(),
                1,
            );
            delivery_note(&track_specs(&stream), muxer_config(&Config::default().hls))
        };
        let head = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nt=0 0\r\n";
        let h264 = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
        let g711 = "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let with_video = note(&format!("{head}{h264}{g711}"));
        assert!(with_video.playable);
        assert_eq!(
            with_video.summary(),
            "HLS: G.711 µ-law (PCMU) audio cannot be carried (left out)"
        );
        let audio_only = note(&format!("{head}{g711}"));
        assert!(!audio_only.playable);
        assert_eq!(
            audio_only.summary(),
            "HLS: G.711 µ-law (PCMU) audio cannot be carried"
        );
        let fine = note(&format!(
            "{head}{h264}m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n"
        ));
        assert_eq!(fine.summary(), "HLS: ok");
    }

    #[test]
    fn a_full_queue_drops_batches_and_never_waits() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                   m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=0\r\n";
        let stream = Stream::new(
            "p".into(),
            Presentation::from_sdp(sdp.as_bytes()).unwrap(),
            1,
        );
        let tap = HlsTap::new(&stream);
        let (tx, mut rx) = mpsc::channel(1);
        let (id, gop) = tap.connect(tx);
        assert!(gop.is_empty());
        let batch = Batch::default();
        tap.on_batch(&batch);
        tap.on_batch(&batch);
        tap.on_batch(&batch);
        assert_eq!(tap.drops(), 2);
        assert!(rx.try_recv().is_ok());
        // Another packager's disconnect leaves this one connected; its own ends it.
        tap.disconnect(id + 1);
        tap.on_batch(&batch);
        assert!(rx.try_recv().is_ok());
        tap.disconnect(id);
        tap.on_batch(&batch);
        assert!(rx.try_recv().is_err());
        // Readers by address, within the window.
        let now = Instant::now();
        tap.seen("127.0.0.1".parse().unwrap(), now);
        tap.seen("127.0.0.2".parse().unwrap(), now);
        tap.seen("127.0.0.1".parse().unwrap(), now);
        assert_eq!(tap.stats().readers_of("hls"), 2);
    }

    #[test]
    fn file_names_and_queries_parse() {
        assert_eq!(parse_file("index.m3u8"), Some(File::Playlist));
        assert_eq!(parse_file("init.mp4"), Some(File::Init));
        assert_eq!(parse_file("part12.m4s"), Some(File::Part(12)));
        assert_eq!(parse_file("seg3.m4s"), Some(File::Segment(3)));
        assert_eq!(parse_file("seg.m4s"), None);
        assert_eq!(parse_file("mpegts.m3u8"), Some(File::TsPlaylist));
        assert_eq!(parse_file("main.m3u8"), Some(File::Multivariant));
        assert_eq!(parse_file("seg9.ts"), Some(File::TsSegment(9)));
        assert_eq!(parse_file("x.m3u8"), None);
        assert_eq!(
            BlockingQuery::parse("_HLS_msn=4&_HLS_part=2&_HLS_skip=YES"),
            Ok(BlockingQuery {
                msn: Some(4),
                part: Some(2),
                skip: true
            })
        );
        assert!(BlockingQuery::parse("_HLS_part=2").is_err());
        assert!(BlockingQuery::parse("_HLS_msn=x").is_err());
    }
}
