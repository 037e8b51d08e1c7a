//! Reader built on the `retina` RTSP client crate.

use std::time::{Duration, Instant};

use futures::StreamExt;
use retina::client::{
    PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
    UdpTransportOptions,
};
use retina::codec::CodecItem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetinaTransport {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RetinaReport {
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Sum of `frame.loss()` over all frames: RTP packets lost.
    pub loss: u64,
    /// Encoding names from the SDP, e.g. `h264`, `mpeg4-generic`.
    pub encodings: Vec<String>,
    /// The stream ended (or failed) before the read duration elapsed.
    pub ended_early: bool,
    /// The error that ended it, if any.
    pub error: Option<String>,
    /// Wall-clock instants (since PLAY) of each video frame.
    pub video_frame_times: Vec<Duration>,
    /// When PLAY completed (the origin of `video_frame_times`).
    pub play_started: Option<Instant>,
}

/// Connects, SETUPs every track, PLAYs and consumes the demuxed stream for
/// `dur`. Connection/setup failures are `Err`; a failure mid-stream is
/// recorded in `error` with the counts so far.
pub(crate) async fn retina_read(
    url: &str,
    transport: RetinaTransport,
    dur: Duration,
) -> Result<RetinaReport, String> {
    retina_read_opts(url, transport, dur, SessionOptions::default()).await
}

/// [`retina_read`] with explicit session options (e.g. `.creds(..)`).
pub(crate) async fn retina_read_opts(
    url: &str,
    transport: RetinaTransport,
    dur: Duration,
    options: SessionOptions,
) -> Result<RetinaReport, String> {
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    let t = match transport {
        RetinaTransport::Tcp => Transport::Tcp(TcpTransportOptions::default()),
        RetinaTransport::Udp => Transport::Udp(UdpTransportOptions::default()),
    };
    let step = Duration::from_secs(10);
    let mut session = tokio::time::timeout(step, Session::describe(url, options))
        .await
        .map_err(|_| "DESCRIBE timed out".to_string())?
        .map_err(|e| format!("DESCRIBE: {e}"))?;
    let mut rep = RetinaReport {
        encodings: session
            .streams()
            .iter()
            .map(|s| s.encoding_name().to_string())
            .collect(),
        ..Default::default()
    };
    for i in 0..session.streams().len() {
        tokio::time::timeout(
            step,
            session.setup(i, SetupOptions::default().transport(t.clone())),
        )
        .await
        .map_err(|_| format!("SETUP {i} timed out"))?
        .map_err(|e| format!("SETUP {i}: {e}"))?;
    }
    let playing = tokio::time::timeout(step, session.play(PlayOptions::default()))
        .await
        .map_err(|_| "PLAY timed out".to_string())?
        .map_err(|e| format!("PLAY: {e}"))?;
    let mut demuxed = playing.demuxed().map_err(|e| format!("demuxed: {e}"))?;
    let start = Instant::now();
    rep.play_started = Some(start);
    let deadline = tokio::time::Instant::now() + dur;
    loop {
        let item = match tokio::time::timeout_at(deadline, demuxed.next()).await {
            Err(_) => break, // read duration over
            Ok(None) => {
                rep.ended_early = true;
                break;
            }
            Ok(Some(Err(e))) => {
                rep.ended_early = true;
                rep.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(item))) => item,
        };
        match item {
            CodecItem::VideoFrame(f) => {
                rep.video_frames += 1;
                rep.loss += u64::from(f.loss());
                rep.video_frame_times.push(start.elapsed());
            }
            CodecItem::AudioFrame(f) => {
                rep.audio_frames += 1;
                rep.loss += u64::from(f.loss());
            }
            CodecItem::MessageFrame(f) => rep.loss += u64::from(f.loss()),
            _ => {}
        }
    }
    Ok(rep)
}

/// [`retina_read`] on a fresh current-thread runtime, with a hard overall
/// limit of `dur + 40 s`.
pub(crate) fn retina_read_blocking(
    url: &str,
    transport: RetinaTransport,
    dur: Duration,
) -> Result<RetinaReport, String> {
    retina_read_blocking_opts(url, transport, dur, SessionOptions::default())
}

/// [`retina_read_blocking`] with explicit session options (e.g. credentials).
pub(crate) fn retina_read_blocking_opts(
    url: &str,
    transport: RetinaTransport,
    dur: Duration,
    options: SessionOptions,
) -> Result<RetinaReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::time::timeout(
            dur + Duration::from_secs(40),
            retina_read_opts(url, transport, dur, options),
        )
        .await
        .unwrap_or_else(|_| Err("retina reader hit its hard timeout".into()))
    })
}
