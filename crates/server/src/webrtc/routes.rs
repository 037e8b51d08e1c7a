//! The HTTP side of WHEP and WHIP: the offer/answer exchange that creates a session, and
//! the session resource (`DELETE` ends it, `PATCH` takes trickled candidates, `OPTIONS`
//! answers preflights).
//!
//! The HTTP module hands these routers requests for the tail of the URL (`/whep`,
//! `/whep/<id>`) after checking the permission [`whep_need`] / [`whip_need`] name on the
//! stream's path; the composition root tells them which path and user through a
//! [`TargetFn`], so that this module never names the HTTP module's types.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use sluice_hub::Claim;
use str0m::change::SdpOffer;
use str0m::{Candidate, IceCreds, Rtc};
use tracing::info;

use super::feed::{AudioCodec, Feed, PeerQueue, Unplayable, VideoCodec};
use super::session::{self, Publisher, Viewer};
use super::{lock, unix_now, Counters, SessionEntry, WebRtc};
use crate::auth::Action;
use crate::config::BFramePolicy;
use sluice_hub::SessionRole;

/// Video packets kept per viewer for retransmission (NACK/RTX).
const SEND_BUFFER_VIDEO: usize = 400;
/// Longest a WHEP request waits for the H.264 frames that show whether the source has
/// B-frames ([`super::feed::BFrames::known`]): [`super::feed::BFrames::ENOUGH`] frames at
/// 10 fps.
const B_FRAMES_WAIT: std::time::Duration = std::time::Duration::from_millis(800);

/// Largest SDP offer read.
const MAX_OFFER: usize = 64 * 1024;

/// The header that says why a session plays without the source's audio.
pub const AUDIO_HEADER: &str = "x-sluice-audio";
/// The header that says why an offer was refused (406), for players to fall back on.
pub const REASON_HEADER: &str = "x-sluice-reason";

/// The stream a request is for and who asked, as the HTTP module checked them.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path name.
    pub path: String,
    /// The user granted the permission (`any` when none was needed).
    pub user: String,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

/// Reads the [`Target`] the HTTP module put in a request's extensions.
pub type TargetFn = fn(&axum::http::Extensions) -> Option<Target>;

/// WHEP's permissions: `read` to create a session; the session resource's unguessable
/// URL is its own capability (and preflights carry no credentials).
pub fn whep_need(method: &Method, tail: &str) -> Option<Action> {
    (method == Method::POST && tail == "/whep").then_some(Action::Read)
}

/// WHIP's permissions: `publish` to create a session, as WHEP otherwise.
pub fn whip_need(method: &Method, tail: &str) -> Option<Action> {
    (method == Method::POST && tail == "/whip").then_some(Action::Publish)
}

#[derive(Clone)]
struct App {
    module: Arc<WebRtc>,
    target: TargetFn,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    let mut res = (status, reason.clone()).into_response();
    if let Ok(v) = HeaderValue::from_str(&reason) {
        res.headers_mut().insert(REASON_HEADER, v);
    }
    res
}

fn preflight(post: bool) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    if post {
        h.insert("accept-post", HeaderValue::from_static("application/sdp"));
        h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
    } else {
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
        );
        h.insert(
            "accept-patch",
            HeaderValue::from_static("application/trickle-ice-sdpfrag"),
        );
    }
    res
}

impl WebRtc {
    /// The WHEP and WHIP routers (for `Marker::Segment("whep")` and `("whip")`).
    pub fn routers(self: &Arc<Self>, target: TargetFn) -> (Router, Router) {
        let app = App {
            module: self.clone(),
            target,
        };
        let whep = Router::new()
            .route(
                "/whep",
                post(whep_post).options(|| async { preflight(true) }),
            )
            .route(
                "/whep/{id}",
                delete(session_delete)
                    .patch(session_patch)
                    .options(|| async { preflight(false) }),
            )
            .with_state(app.clone());
        let whip = Router::new()
            .route(
                "/whip",
                post(whip_post).options(|| async { preflight(true) }),
            )
            .route(
                "/whip/{id}",
                delete(session_delete)
                    .patch(session_patch)
                    .options(|| async { preflight(false) }),
            )
            .with_state(app);
        (whep, whip)
    }

    /// A new `Rtc` for one peer: ICE-lite on the module's candidates, its certificate.
    fn new_rtc(
        &self,
        configure: impl FnOnce(str0m::RtcConfig) -> str0m::RtcConfig,
    ) -> (Rtc, String) {
        let ufrag = format!("{:016x}", rand::random::<u64>());
        let pass = format!("{:032x}", rand::random::<u128>());
        let builder = Rtc::builder()
            .set_ice_lite(true)
            .set_crypto_provider(self.crypto.clone())
            .set_dtls_cert(self.cert.clone())
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            })
            // About a second of video packets at 4 Mb/s for NACK/RTX (str0m's default,
            // 1,000, costs a viewer ~1 MiB).
            .set_send_buffer_video(SEND_BUFFER_VIDEO)
            .clear_codecs();
        let mut rtc = configure(builder).build(Instant::now());
        for e in self.endpoints.iter() {
            if let Ok(c) = Candidate::host(e.candidate, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        (rtc, ufrag)
    }
}

fn is_sdp(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/sdp"))
}

async fn read_offer(req: Request<Body>) -> Result<(SdpOffer, String), Response> {
    if !is_sdp(req.headers()) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be Content-Type: application/sdp",
        ));
    }
    let body = to_bytes(req.into_body(), MAX_OFFER)
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "the SDP offer is too large"))?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8"))?;
    let offer = SdpOffer::from_sdp_string(&text)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad SDP offer: {e}")))?;
    Ok((offer, text))
}

fn created(location: String, id: &str, answer: String) -> Response {
    let mut res = (StatusCode::CREATED, answer).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{id}\"")) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("location, etag, x-sluice-audio, x-sluice-reason"),
    );
    res
}

async fn whep_post(State(app): State<App>, req: Request<Body>) -> Response {
    let Some(target) = (app.target)(req.extensions()) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no stream target");
    };
    let m = &app.module;
    if m.session_count() >= m.config.max_sessions {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many WebRTC sessions");
    }
    let stream = m.hub.registry().lookup_ready(&target.path).cloned();
    let Some(stream) = stream else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no live stream at {}", target.path),
        );
    };
    let Some(feed) = stream.attached::<Feed>() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} started before WebRTC delivery did", target.path),
        );
    };
    match feed.playable() {
        Ok(()) => {}
        Err(Unplayable::VideoCodec(enc)) => {
            return refuse(
                StatusCode::NOT_ACCEPTABLE,
                format!("video codec {enc} is not delivered over WebRTC; use HLS"),
            )
        }
        Err(Unplayable::NoMedia) => {
            return refuse(
                StatusCode::NOT_ACCEPTABLE,
                "the stream has no video or audio deliverable over WebRTC; use HLS",
            )
        }
    }
    let policy = m.config.b_frames_for(&target.path);
    // A request just after a keyframe finds only that keyframe cached: wait (bounded) for
    // the frames that show whether B-frames follow, rather than answer a B-frame stream
    // with WebRTC that then plays out of order.
    let mut b = feed.b_frames();
    let waited = tokio::time::Instant::now();
    let h264 = feed.video() == Some(VideoCodec::H264);
    while h264 && !b.known() && waited.elapsed() < B_FRAMES_WAIT {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b = feed.b_frames();
    }
    if b.seen && (policy == BFramePolicy::Refuse || b.referenced) {
        let why = if policy == BFramePolicy::Refuse {
            "the source's H.264 has B-frames (b_frames policy: refuse); use HLS"
        } else {
            "the source's H.264 has reference B-frames (B-pyramid) that cannot be dropped; use HLS"
        };
        return refuse(StatusCode::NOT_ACCEPTABLE, why);
    }
    let (offer, text) = match read_offer(req).await {
        Ok(o) => o,
        Err(res) => return res,
    };
    let video = feed.video();
    let audio = feed.audio();
    let offered = |name: &str| {
        text.to_ascii_lowercase()
            .contains(&format!(" {}/", name.to_ascii_lowercase()))
    };
    if let Some(v) = video {
        let name = match v {
            VideoCodec::H264 => "H264",
            VideoCodec::H265 => "H265",
            VideoCodec::Vp8 => "VP8",
            VideoCodec::Vp9 => "VP9",
            VideoCodec::Av1 => "AV1",
        };
        if !offered(name) {
            return refuse(
                StatusCode::NOT_ACCEPTABLE,
                format!("the stream's video is {name}, which the offer does not include"),
            );
        }
    }
    // The source's audio codec, when the peer did not offer it, is not sent: answered with
    // Opus (never an m-line without formats) and said in the audio header.
    let audio_name = match audio {
        Some(AudioCodec::Opus) => Some("opus"),
        Some(AudioCodec::Pcmu) => Some("PCMU"),
        Some(AudioCodec::Pcma) => Some("PCMA"),
        None => None,
    };
    let audio_refused = audio_name.filter(|n| !offered(n));
    let audio = if audio_refused.is_some() { None } else { audio };
    let (mut rtc, ufrag) = m.new_rtc(|mut c| {
        c = match video {
            Some(VideoCodec::H264) => c.enable_h264(true),
            Some(VideoCodec::H265) => c.enable_h265(true),
            Some(VideoCodec::Vp8) => c.enable_vp8(true),
            Some(VideoCodec::Vp9) => c.enable_vp9(true),
            Some(VideoCodec::Av1) => c.enable_av1(true),
            None => c,
        };
        c = match audio {
            Some(AudioCodec::Opus) => c.enable_opus(true, false),
            Some(AudioCodec::Pcmu) => c.enable_pcmu(true, false),
            Some(AudioCodec::Pcma) => c.enable_pcma(true, false),
            // No audio to send (none, or AAC): still answer the offer's audio with Opus,
            // so that the peer's answer handling never meets an m-line without formats.
            None => c.enable_opus(true, false),
        };
        // Chrome's header extensions but transport-wide congestion control: a viewer's
        // TWCC feedback would only feed bandwidth estimation, which a relay that cannot
        // change the source's bitrate does not run (it was the largest CPU cost per viewer).
        use str0m::rtp::Extension;
        c.clear_extension_map()
            .set_extension(1, Extension::AudioLevel)
            .set_extension(2, Extension::AbsoluteSendTime)
            .set_extension(4, Extension::RtpMid)
            .set_extension(13, Extension::VideoOrientation)
    });
    let answer = match rtc.sdp_api().accept_offer(offer) {
        Ok(a) => a.to_sdp_string(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot answer the offer: {e}"),
            )
        }
    };
    let id = format!("{:032x}", rand::random::<u128>());
    let (key, inbox) = m.register(ufrag);
    let stop = Arc::new(tokio::sync::Notify::new());
    let counters = Arc::new(Counters::default());
    lock(&m.sessions).insert(
        id.clone(),
        SessionEntry {
            path: target.path.clone(),
            stop: stop.clone(),
            role: SessionRole::Reader,
            peer: target.peer,
            user: (target.user != "any").then(|| target.user.clone()),
            created_unix: unix_now(),
            counters: counters.clone(),
        },
    );
    let drop_b = policy == BFramePolicy::Drop;
    let queue = PeerQueue::new(m.config.peer_queue, drop_b);
    info!(session = %id, path = %target.path, user = %target.user, "WHEP session created");
    let viewer = Viewer {
        module: m.clone(),
        id: id.clone(),
        key,
        path: target.path.clone(),
        feed: feed.clone(),
        queue,
        stop,
        counters,
    };
    tokio::spawn(session::run_viewer(viewer, rtc, inbox));
    let mut res = created(format!("/{}/whep/{id}", target.path), &id, answer);
    if feed.audio_is_aac() {
        res.headers_mut().insert(
            AUDIO_HEADER,
            HeaderValue::from_static("aac; not carried over WebRTC, use HLS for audio"),
        );
    } else if let Some(name) = audio_refused {
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}; not in the offer, not sent, use HLS for audio",
            name.to_ascii_lowercase()
        )) {
            res.headers_mut().insert(AUDIO_HEADER, v);
        }
    }
    res
}

async fn whip_post(State(app): State<App>, req: Request<Body>) -> Response {
    let Some(target) = (app.target)(req.extensions()) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "no stream target");
    };
    let m = &app.module;
    if m.session_count() >= m.config.max_sessions {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many WebRTC sessions");
    }
    let (offer, text) = match read_offer(req).await {
        Ok(o) => o,
        Err(res) => return res,
    };
    let lower = text.to_ascii_lowercase();
    let h264 = lower.contains(" h264/90000");
    let vp8 = lower.contains(" vp8/90000");
    let vp9 = lower.contains(" vp9/90000");
    let av1 = lower.contains(" av1/90000");
    // One video codec is answered: H.264 first (every RTSP reader plays it), then VP8, VP9,
    // AV1; their RTP is relayed as it comes.
    let (mut rtc, ufrag) = m.new_rtc(|c| {
        let c = c.set_rtp_mode(true).enable_opus(true, false);
        if h264 {
            c.enable_h264(true)
        } else if vp8 {
            c.enable_vp8(true)
        } else if vp9 {
            c.enable_vp9(true)
        } else {
            c.enable_av1(av1)
        }
    });
    let answer = match rtc.sdp_api().accept_offer(offer) {
        Ok(a) => a.to_sdp_string(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot answer the offer: {e}"),
            )
        }
    };
    let plan = match session::IngestPlan::from_answer(&answer) {
        Ok(p) => p,
        Err(why) => return refuse(StatusCode::NOT_ACCEPTABLE, why),
    };
    let presentation = match plan.presentation() {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let handle = match m
        .hub
        .publish_source(&target.path, presentation, Claim::Exclusive)
    {
        Ok(h) => h,
        Err(busy) => {
            return refuse(
                StatusCode::CONFLICT,
                format!("{} is already published: {busy}", target.path),
            )
        }
    };
    let id = format!("{:032x}", rand::random::<u128>());
    let (key, inbox) = m.register(ufrag);
    let stop = Arc::new(tokio::sync::Notify::new());
    let counters = Arc::new(Counters::default());
    lock(&m.sessions).insert(
        id.clone(),
        SessionEntry {
            path: target.path.clone(),
            stop: stop.clone(),
            role: SessionRole::Publisher,
            peer: target.peer,
            user: (target.user != "any").then(|| target.user.clone()),
            created_unix: unix_now(),
            counters: counters.clone(),
        },
    );
    info!(session = %id, path = %target.path, user = %target.user, codecs = %plan.describe(), "WHIP session created");
    let publisher = Publisher {
        module: m.clone(),
        id: id.clone(),
        key,
        path: target.path.clone(),
        handle,
        plan,
        stop,
        counters,
    };
    tokio::spawn(session::run_publisher(publisher, rtc, inbox));
    created(format!("/{}/whip/{id}", target.path), &id, answer)
}

/// Finds session `id` on `path` (the session's own URL names both).
fn find(app: &App, req: &Request<Body>, id: &str) -> Option<Arc<tokio::sync::Notify>> {
    let target = (app.target)(req.extensions())?;
    let sessions = lock(&app.module.sessions);
    let s = sessions.get(id)?;
    (s.path == target.path).then(|| s.stop.clone())
}

async fn session_delete(
    State(app): State<App>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    match find(&app, &req, &id) {
        Some(stop) => {
            stop.notify_one();
            StatusCode::OK.into_response()
        }
        None => refuse(StatusCode::NOT_FOUND, "no such WebRTC session"),
    }
}

async fn session_patch(
    State(app): State<App>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    if find(&app, &req, &id).is_none() {
        return refuse(StatusCode::NOT_FOUND, "no such WebRTC session");
    }
    let trickle = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/trickle-ice-sdpfrag"));
    if !trickle {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/trickle-ice-sdpfrag",
        );
    }
    // ICE-lite: the server learns the peer's addresses from its checks, so trickled
    // candidates are accepted and need nothing more.
    StatusCode::NO_CONTENT.into_response()
}
