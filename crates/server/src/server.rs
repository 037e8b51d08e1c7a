//! The composition root: the one file that names more than one module. It builds the
//! [`Hub`] every module shares, starts each module on it (RTSP first: its hook attaches a
//! reader group to every stream created after), and runs the event pump that logs the
//! hub's path lifecycle events. It gives the hub's event bus its clock and publishes the
//! server's start and stop there; the hooks module and the HTTP module's `/v1/events`
//! read it.
//!
//! Adding a module is a folder of its own plus a line here (see docs/ARCHITECTURE.md,
//! "Adding a module").

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_hub::registry::{Event, Pattern, WatcherId};
use sluice_hub::{EventBus, Hub, ServerEvent};
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::config::{Config, ConfigControl, Reloader};
use crate::file::{FileError, Files};
use crate::hls::Hls;
use crate::hooks::{Hooks, HooksError};
use crate::http::{
    HttpContext, HttpError, HttpHandle, HttpServer, LatencyCollector, Marker, StreamTarget,
};
use crate::playback::catalog::IndexCatalog;
use crate::playback::Replay;
use crate::record::{RecordError, Recording, RecordingRoutes};
use crate::recordings::Recordings;
use crate::rtsp::readers::latency::LatencyHistogram;
use crate::rtsp::{Rtsp, RtspError};
use crate::web::Web;
use crate::webrtc::{WebRtc, WebrtcError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The RTSP module could not bind its listeners or sockets.
    #[error(transparent)]
    Rtsp(#[from] RtspError),
    /// A configured file source could not be started.
    #[error(transparent)]
    File(#[from] FileError),
    /// The HTTP listener could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The HTTPS certificate or key is unusable.
    #[error(transparent)]
    Tls(crate::config::tls::TlsError),
    /// The hooks could not start.
    #[error(transparent)]
    Hooks(#[from] HooksError),
    /// The WebRTC module could not bind its UDP port.
    #[error(transparent)]
    Webrtc(#[from] WebrtcError),
    /// The recorder could not open its index.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The users configuration is unusable.
    #[error("invalid users: {0}")]
    Users(String),
    /// The recordings to play back cannot be opened.
    #[error("cannot serve recordings: {0}")]
    Playback(String),
}

/// Path events the event pump's watcher queues before it drops some (and logs the gap).
const PATH_EVENT_QUEUE: usize = 4096;

/// A bound, not yet running server: the hub and its modules.
#[derive(Debug)]
pub struct Server {
    /// The running configuration, and how each module takes a reload.
    reloader: Arc<Reloader>,
    hub: Arc<Hub>,
    rtsp: Arc<Rtsp>,
    files: Arc<Files>,
    /// The recorder, when `[record] dir` is set (its segments end at shutdown).
    recording: Option<Recording>,
    /// Recordings played back over RTSP (`rec/…`).
    replay: Arc<Replay>,
    /// The HTTP module, bound in `bind` and served from `run` (None: `[http]` disabled).
    http: std::sync::Mutex<Option<HttpServer>>,
    /// Where the HTTP listener is, and how a reload moves it.
    http_handle: Arc<std::sync::OnceLock<HttpHandle>>,
    /// The event pump's watcher of every path.
    path_watcher: WatcherId,
    /// Wakes the event pump after a registry change.
    path_events: Arc<tokio::sync::Notify>,
}

impl Server {
    /// Builds the hub and starts every module on it: binds the RTSP listeners and media
    /// sockets, starts the configured file sources. Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Arc<Server>, ServerError> {
        Server::bind_layered(config, None).await
    }

    /// As [`Server::bind`], for a configuration layered from its file (in
    /// [`Config::source`]), `env` and `flags` ([`Config::load_layered`]): a reload (SIGHUP,
    /// an edit of the file, the API) layers them again.
    pub async fn bind_reloadable(
        config: Config,
        env: Vec<(String, String)>,
        flags: Vec<String>,
    ) -> Result<Arc<Server>, ServerError> {
        Server::bind_layered(config, Some((env, flags))).await
    }

    async fn bind_layered(
        config: Config,
        layers: Option<crate::config::reload::Layers>,
    ) -> Result<Arc<Server>, ServerError> {
        let config = Arc::new(config);
        let path_events = Arc::new(tokio::sync::Notify::new());
        let wake = path_events.clone();
        let bus = EventBus::new(sluice_hub::events::DEFAULT_CAPACITY, Box::new(unix_time_ms));
        let hub = Arc::new(Hub::with_events(Box::new(move || wake.notify_one()), bus));
        let path_watcher = hub.watch(Pattern::new("**"), PATH_EVENT_QUEUE);
        let auth = Arc::new(
            Authenticator::new(&config.users, config.auth.clone()).map_err(ServerError::Users)?,
        );
        // The modules, RTSP first: its hook must see every stream the others create.
        let rtsp = Rtsp::bind(config.clone(), hub.clone(), auth.clone()).await?;
        let hls = Hls::start(&config, &hub);
        // Before the sources: its hook attaches a WebRTC feed to every stream.
        let webrtc = WebRtc::start(&config, hub.clone()).await?;
        // Before the sources too: its hook attaches a recorder sink to every stream. Opening
        // the index and recovering crashed segments is blocking start-up work.
        let recording = {
            let (c, h) = (config.clone(), hub.clone());
            tokio::task::spawn_blocking(move || Recording::start(&c, &h))
                .await
                .map_err(|e| RecordError::Config(e.to_string()))??
        };
        let files = Arc::new(Files::start(&config, &hub)?);
        let replay = Replay::start(&config, &hub).map_err(ServerError::Playback)?;
        // Recordings are played back from the recorder's own index (one open per process).
        if let Some(r) = &recording {
            if config.playback.dir.as_deref().is_none_or(|d| d == r.dir()) {
                replay.set_catalog(Some(Arc::new(IndexCatalog::new(
                    r.index().clone(),
                    r.dir().to_owned(),
                ))));
            }
        }
        // A reload: every check before any change, then RTSP (which may refuse a listener
        // address it cannot bind, before anything else changed), users, files, in order.
        let mut reloader = Reloader::new(config.clone(), layers);
        let f = files.clone();
        reloader.check_with(Box::new(move |c| f.check(c).map_err(|e| e.to_string())));
        let r = rtsp.clone();
        reloader.apply_with(Box::new(move |c| r.apply(c.clone())));
        // The HTTP listener moves too (bound below, so its handle is filled in then).
        let http_handle: Arc<std::sync::OnceLock<HttpHandle>> = Arc::default();
        let h = http_handle.clone();
        reloader.apply_with(Box::new(move |c| match h.get() {
            Some(handle) if c.http.enabled && c.http.listen != handle.configured() => {
                handle.rebind(c.http.listen).map(|_| ())
            }
            _ => Ok(()),
        }));
        let a = auth.clone();
        reloader.apply_with(Box::new(move |c| {
            a.replace(&c.users, c.auth.clone())
                .map_err(|e| format!("invalid users: {e}"))
        }));
        let f = files.clone();
        reloader.apply_with(Box::new(move |c| f.apply(c).map_err(|e| e.to_string())));
        let r = replay.clone();
        reloader.apply_with(Box::new(move |c| r.apply(c)));
        let events = hub.clone();
        reloader.notify_with(Box::new(move |status, file| {
            let file = file.map(|f| f.display().to_string());
            events.events().publish(match &status.error {
                None => ServerEvent::ConfigReloaded { file },
                Some(error) => ServerEvent::ConfigFailed {
                    file,
                    error: error.clone(),
                },
            });
        }));
        let reloader = Arc::new(reloader);
        let hooks = Hooks::start(&config, hub.clone())?;
        let modules = HttpModules {
            rtsp: &rtsp,
            hooks: &hooks,
            hls: hls.as_ref(),
            webrtc: webrtc.as_ref(),
            recording: recording.as_ref(),
        };
        let http = bind_http(&config, &auth, &hub, modules, reloader.clone()).await?;
        if let Some(h) = &http {
            let _ = http_handle.set(h.handle());
        }
        Ok(Arc::new(Server {
            reloader,
            hub,
            rtsp,
            files,
            recording,
            replay,
            http: std::sync::Mutex::new(http),
            http_handle,
            path_watcher,
            path_events,
        }))
    }

    /// The configuration in force (a reload swaps it).
    pub fn config(&self) -> Arc<Config> {
        self.reloader.config()
    }

    /// Reloads the configuration now (as SIGHUP does); see [`ConfigControl::reload`].
    pub fn reload(&self) -> crate::config::ReloadStatus {
        self.reloader.reload("api")
    }

    /// The RTSP listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.rtsp.local_addr()
    }

    /// The playback module's provider of recordings (`rec/…`), for handing it a catalog.
    pub fn replay(&self) -> &Arc<Replay> {
        &self.replay
    }

    /// Paths with a configured source, for the start-up banner.
    pub fn configured_paths(&self) -> Vec<String> {
        self.files.paths()
    }

    /// How long packets spent in this server, from their source to the send that carried
    /// them to a reader (see [`Rtsp::egress_latency`]).
    pub fn egress_latency(&self) -> &Arc<LatencyHistogram> {
        self.rtsp.egress_latency()
    }

    /// The HTTP listener's address, when `[http]` is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_handle.get().map(HttpHandle::local_addr)
    }

    /// The hub's event bus (what `/v1/events` and the hooks read).
    pub fn events(&self) -> &EventBus {
        self.hub.events()
    }

    /// Tells the event bus (and so SSE clients and hooks) that the server is stopping
    /// for `reason`, then gives the hooks up to `grace` to send it.
    pub async fn stopping(&self, reason: &str, grace: std::time::Duration) {
        self.hub.events().publish(ServerEvent::ServerStopping {
            reason: reason.to_owned(),
        });
        let started = tokio::time::Instant::now();
        if let Some(r) = self.recording.clone() {
            // Recorded paths end their segments (reason `stop`) and sync them.
            let wait = grace.max(std::time::Duration::from_secs(2));
            let _ = tokio::task::spawn_blocking(move || r.shutdown(wait)).await;
        }
        tokio::time::sleep_until(started + grace).await;
    }

    /// Runs every module and the event pump until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        self.hub.events().publish(ServerEvent::ServerStarted {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        tokio::spawn(self.clone().run_event_pump());
        self.reloader.watch();
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(http), Some(handle)) = (http, self.http_handle.get()) {
            http.spawn(handle);
        }
        self.rtsp.clone().run().await;
    }

    /// Logs every path lifecycle event, one line each, in the order they happened: the
    /// hub's events made visible in the log (the event bus gets them from the hub itself).
    async fn run_event_pump(self: Arc<Self>) {
        loop {
            let events: Vec<Event> =
                std::iter::from_fn(|| self.hub.poll_event(self.path_watcher)).collect();
            for event in events {
                match event {
                    Event::Ready { path, source } => {
                        info!(%path, source = source.get(), "path ready");
                    }
                    Event::Ended {
                        path,
                        source,
                        reason,
                    } => {
                        info!(%path, source = source.get(), %reason, "path ended");
                    }
                    Event::Replaced { path, old, new } => {
                        info!(%path, old = old.get(), new = new.get(), "path replaced");
                    }
                    Event::Lagged { missed } => {
                        warn!(missed, "path events dropped; the event log has a gap");
                    }
                }
            }
            self.path_events.notified().await;
        }
    }
}

/// The modules whose listeners, metrics or routes the HTTP listener carries.
struct HttpModules<'a> {
    rtsp: &'a Rtsp,
    hooks: &'a Hooks,
    hls: Option<&'a Hls>,
    webrtc: Option<&'a Arc<WebRtc>>,
    recording: Option<&'a Recording>,
}

/// Binds the HTTP module (`None` when `[http]` is disabled): it reports the RTSP
/// listeners, exports the RTSP readers' egress latency as a histogram, and sees paths
/// and sessions through the hub.
async fn bind_http(
    config: &Config,
    auth: &Arc<Authenticator>,
    hub: &Arc<Hub>,
    modules: HttpModules<'_>,
    control: Arc<dyn ConfigControl>,
) -> Result<Option<HttpServer>, ServerError> {
    let HttpModules {
        rtsp,
        hooks,
        hls,
        webrtc,
        recording,
    } = modules;
    let mut ctx = HttpContext::new(config, auth.clone());
    if let Some(hls) = hls {
        hls.mount(&mut ctx);
    }
    ctx.hub(hub.clone());
    ctx.control(control);
    ctx.event_source(hub.clone());
    ctx.metrics().collector(Box::new(hooks.collector()));
    if let Some(r) = recording {
        ctx.metrics().collector(Box::new(r.collector()));
        ctx.metrics().registry_mut().register(
            "sluice_record_fsync_seconds",
            "Time an fdatasync of a recorded part took",
            r.fsync_histogram(),
        );
        ctx.routes().documented(RecordingRoutes::new(r).router());
        // Playback over HTTP reads the recorder's index (one open store per directory).
        ctx.routes()
            .documented(Recordings::new(r.index().clone(), r.dir().to_owned()).router());
    }
    ctx.listener("rtsp", rtsp.local_addr());
    if let Some(a) = rtsp.rtsps_addr() {
        ctx.listener("rtsps", a);
    }
    let egress = rtsp.egress_latency().clone();
    ctx.metrics().collector(Box::new(LatencyCollector::new(
        "sluice_egress_latency",
        "Time packets spent in the server, from their source to the send that carried them to a reader (sum estimated from bucket midpoints)",
        Box::new(move || egress.take_buckets()),
    )));
    if let Some(w) = webrtc {
        let (whep, whip) = w.routers(|ext| {
            ext.get::<StreamTarget>().map(|t| crate::webrtc::Target {
                path: t.path.clone(),
                user: t.user.clone(),
                peer: t.peer.addr,
            })
        });
        ctx.routes()
            .per_stream(Marker::Segment("whep"), crate::webrtc::whep_need, whep)
            .per_stream(Marker::Segment("whip"), crate::webrtc::whip_need, whip);
    }
    // The player page: `/` lists the live paths, `/<path>/` plays one, `/assets/`.
    Web::new(hub.clone(), rtsp.local_addr().port()).add_routes(ctx.routes())?;
    if let Some((cert, key)) = config.http.tls_pair(&config.rtsps) {
        ctx.tls(crate::config::tls::server_config(&cert, &key).map_err(ServerError::Tls)?);
    }
    Ok(HttpServer::bind(ctx).await?)
}

/// Now in milliseconds since the Unix epoch: the event bus's clock.
fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use sluice_client::{ClientEvent, ClientMode, Connection, Options};

    /// One PCMU track: every packet a frame of its own.
    const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                       m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=0\r\n";

    /// A server on a free loopback port, TCP transport only (no fixed UDP ports to share).
    async fn running_server() -> Arc<Server> {
        let config = Config::from_toml(
            "[rtsp]\nlisten = \"127.0.0.1:0\"\ntransports = [\"tcp\"]\n[demo]\nenabled = false\n[http]\nenabled = false\n",
        )
        .expect("config");
        let server = Server::bind(config).await.expect("bind");
        tokio::spawn(server.clone().run());
        server
    }

    /// A client session on `server`'s path `live`, once PLAY or RECORD is answered.
    async fn open(server: &Server, mode: ClientMode) -> Connection {
        let mut c = Connection::open(Options {
            url: format!("rtsp://{}/live", server.local_addr()),
            credentials: None,
            udp: false,
            mode,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connect");
        loop {
            if let ClientEvent::Playing { .. } = c.next_event().await.expect("handshake") {
                return c;
            }
        }
    }

    /// Relays `n` packets from a publisher to a TCP reader of `server`; returns once the
    /// reader has them all.
    async fn relay(server: &Server, n: u16) {
        let mut publisher = open(server, ClientMode::Record { sdp: SDP.into() }).await;
        let mut reader = open(server, ClientMode::Play).await;
        for seq in 0..n {
            // V=2, marker, PT 0; sequence, timestamp, SSRC 1; 20 ms of silence.
            let mut p = vec![0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            p.extend([0xff; 160]);
            publisher.send_rtp(0, &p).await.expect("publish");
        }
        let mut got = 0;
        while got < n {
            if let ClientEvent::Rtp { .. } = reader.next_event().await.expect("read") {
                got += 1;
            }
        }
    }

    /// Packets `h` counts once `want` are in (a write is recorded just after it returned,
    /// possibly after the reader read it) and a little longer, to see any extra.
    async fn recorded(h: &LatencyHistogram, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut total = 0;
        while total < want && Instant::now() < deadline {
            total += h.take().count;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        total + h.take().count
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_in_one_process_measure_their_egress_latency_apart() {
        let (a, b) = (running_server().await, running_server().await);
        assert!(!Arc::ptr_eq(a.egress_latency(), b.egress_latency()));
        relay(&a, 5).await;
        relay(&b, 3).await;
        assert_eq!(recorded(a.egress_latency(), 5).await, 5, "a's own packets");
        assert_eq!(recorded(b.egress_latency(), 3).await, 3, "b's own packets");
    }
}
