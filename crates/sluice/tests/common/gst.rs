//! GStreamer peers: `rtspclientsink` publisher and `rtspsrc` reader.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::netns::Netns;
use super::proc::Proc;

static N: AtomicU32 = AtomicU32::new(0);

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn cmd_in(netns: Option<&Netns>) -> Command {
    match netns {
        Some(ns) => ns.command("gst-launch-1.0"),
        None => Command::new("gst-launch-1.0"),
    }
}

/// `filesrc ! qtdemux ! {h264parse, aacparse} ! rtspclientsink`: publishes an
/// H.264+AAC MP4 once, paced in real time (`filesrc` does not loop: use
/// `media().h264_aac_long`, 30 s).
pub(crate) struct GstPublisher {
    pub proc: Proc,
    pub url: String,
}

impl GstPublisher {
    /// `protocols`: `tcp` or `udp`.
    pub(crate) fn spawn(
        mp4: &Path,
        url: &str,
        protocols: &str,
        dir: &Path,
        netns: Option<&Netns>,
    ) -> Self {
        let mut cmd = cmd_in(netns);
        cmd.arg("filesrc")
            .arg(format!("location={}", mp4.display()))
            .args(["!", "qtdemux", "name=d"])
            .args(["d.video_0", "!", "queue", "!", "h264parse", "!", "s.sink_0"])
            .args(["d.audio_0", "!", "queue", "!", "aacparse", "!", "s.sink_1"])
            .args(["rtspclientsink", "name=s", "latency=0"])
            .arg(format!("location={url}"))
            .arg(format!("protocols={protocols}"));
        GstPublisher {
            proc: Proc::spawn(&uniq("gst-pub"), cmd, dir),
            url: url.to_string(),
        }
    }

    /// Spawns and waits until the server describes the path (the publisher
    /// has announced and recorded), panicking otherwise.
    pub(crate) fn start(mp4: &Path, url: &str, protocols: &str, dir: &Path) -> Self {
        let mut p = Self::spawn(mp4, url, protocols, dir, None);
        let ok = super::wait_for(Duration::from_secs(10), || {
            if !p.proc.is_running() {
                return Some(false);
            }
            match super::rtsp_client::describe_status(url) {
                Some(200) => Some(true),
                _ => None,
            }
        });
        if ok != Some(true) {
            panic!(
                "GStreamer publisher to {url} not published (running: {}):\n{}",
                p.proc.is_running(),
                super::tail(&p.proc.stderr(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(1000));
        p
    }
}

/// Video codec of the stream a GStreamer reader depayloads/decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GstVideo {
    H264,
    H265,
    /// `rtpvp9depay ! vp9parse ! vp9dec` (ffmpeg 5.1's RTP VP9 reader cannot take the
    /// scalability structure browsers and str0m send).
    #[allow(dead_code)]
    Vp9,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct GstReport {
    /// Decoded video frames that reached the sink.
    pub video_frames: u64,
    pub width: u32,
    pub height: u32,
    /// `ERROR:` lines gst-launch printed while reading.
    pub errors: Vec<String>,
    /// `ERROR:` lines it printed only after it was asked to stop (SIGINT). rtspsrc 1.22
    /// races itself there: its state change sends PAUSE while its close sends TEARDOWN
    /// and closes the connection, and the PAUSE then fails with "Received end-of-file".
    /// Kept for the log, not counted as a reading error.
    pub shutdown_errors: Vec<String>,
    pub exited_by_itself: bool,
    pub output: String,
}

impl GstReport {
    pub(crate) fn parse(output: &str) -> GstReport {
        let mut r = GstReport::default();
        for line in output.lines() {
            if line.contains("last-message = chain") {
                r.video_frames += 1;
            }
            if r.width == 0 && line.contains("fakesink") && line.contains("caps = video/x-raw") {
                r.width = int_field(line, "width=(int)").unwrap_or(0);
                r.height = int_field(line, "height=(int)").unwrap_or(0);
            }
            if line.starts_with("ERROR:") {
                r.errors.push(line.to_string());
            }
        }
        r.output = super::tail(output, 25);
        r
    }
}

fn int_field(line: &str, key: &str) -> Option<u32> {
    let i = line.find(key)? + key.len();
    line[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `gst-launch-1.0 -v rtspsrc location=URL protocols=P ! depay ! parse !
/// avdec ! fakesink silent=false` for `wall` of wall-clock time; decoded
/// frames are counted from fakesink's `last-message = chain` notifications.
/// `protocols`: `udp`, `tcp` or `udp-mcast`.
pub(crate) fn gst_read(
    url: &str,
    protocols: &str,
    codec: GstVideo,
    wall: Duration,
    dir: &Path,
    netns: Option<&Netns>,
) -> GstReport {
    gst_read_props(url, protocols, codec, wall, dir, netns, &[])
}

/// Like [`gst_read`], with extra `rtspsrc` properties (`user-id=…`, `user-pw=…`,
/// `tls-validation-flags=0`, …).
pub(crate) fn gst_read_props(
    url: &str,
    protocols: &str,
    codec: GstVideo,
    wall: Duration,
    dir: &Path,
    netns: Option<&Netns>,
    props: &[String],
) -> GstReport {
    let (depay, parse, dec) = match codec {
        GstVideo::H264 => ("rtph264depay", "h264parse", "avdec_h264"),
        GstVideo::H265 => ("rtph265depay", "h265parse", "avdec_h265"),
        GstVideo::Vp9 => ("rtpvp9depay", "vp9parse", "vp9dec"),
    };
    let mut cmd = cmd_in(netns);
    cmd.arg("-v")
        .arg("rtspsrc")
        .arg(format!("location={url}"))
        .arg(format!("protocols={protocols}"))
        .args(props)
        .args([
            "latency=200",
            "tcp-timeout=10000000",
            "!",
            depay,
            "!",
            parse,
            "!",
            dec,
            "!",
        ])
        .args(["fakesink", "silent=false", "sync=false"]);
    let mut p = Proc::spawn(&uniq(&format!("gst-read-{protocols}")), cmd, dir);
    let by_itself = p.wait_timeout(wall).is_some();
    let errors_while_reading = GstReport::parse(&p.stderr()).errors.len();
    p.stop(Duration::from_secs(5));
    let mut out = p.stdout();
    out.push_str(&p.stderr());
    let mut r = GstReport::parse(&out);
    r.shutdown_errors = r.errors.split_off(errors_while_reading.min(r.errors.len()));
    r.exited_by_itself = by_itself;
    r
}
