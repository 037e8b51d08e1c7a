//! ffmpeg / ffprobe peers: publisher, reader, prober.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::proc::Proc;

static N: AtomicU32 = AtomicU32::new(0);

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn cmd_in(netns: Option<&Netns>, program: &str) -> Command {
    match netns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    }
}

/// `ffmpeg -re -stream_loop -1 -i FILE -c copy -f rtsp -rtsp_transport T URL`.
pub(crate) struct FfmpegPublisher {
    pub proc: Proc,
    pub url: String,
}

impl FfmpegPublisher {
    /// Spawns the publisher (does not wait; see [`FfmpegPublisher::wait_publishing`]).
    pub(crate) fn spawn(
        file: &Path,
        url: &str,
        transport: &str,
        dir: &Path,
        netns: Option<&Netns>,
    ) -> Self {
        let mut cmd = cmd_in(netns, "ffmpeg");
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "info",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ])
        .arg(file)
        .args([
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "rtsp",
            "-rtsp_transport",
            transport,
        ])
        .arg(url);
        FfmpegPublisher {
            proc: Proc::spawn(&uniq("ffmpeg-pub"), cmd, dir),
            url: url.to_string(),
        }
    }

    /// Spawns the publisher and waits until it is recording, panicking otherwise.
    pub(crate) fn start(file: &Path, url: &str, transport: &str, dir: &Path) -> Self {
        Self::start_with(file, url, transport, dir, None)
    }

    pub(crate) fn start_with(
        file: &Path,
        url: &str,
        transport: &str,
        dir: &Path,
        netns: Option<&Netns>,
    ) -> Self {
        let mut p = Self::spawn(file, url, transport, dir, netns);
        if let Err(e) = p.wait_publishing(Duration::from_secs(10)) {
            panic!("ffmpeg publisher to {url} ({transport}) failed: {e}");
        }
        // Let the first keyframe reach the server before readers connect.
        std::thread::sleep(Duration::from_millis(500));
        p
    }

    /// Waits until ffmpeg has completed ANNOUNCE/SETUP/RECORD (it prints the
    /// `Output #0, rtsp` header only after `avformat_write_header`
    /// succeeded) and is sending. `Err` carries its stderr if it exited.
    pub(crate) fn wait_publishing(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let err = self.proc.stderr();
            if err.contains("Output #0, rtsp") {
                return Ok(());
            }
            if let Some(s) = self.proc.try_wait() {
                return Err(format!(
                    "exited with {s}:\n{}",
                    super::tail(&self.proc.stderr(), 15)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not publishing after {timeout:?}:\n{}",
                    super::tail(&err, 15)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the publisher abruptly (SIGKILL: no TEARDOWN is sent).
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }
}

/// What an ffmpeg reader saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct FfmpegReport {
    pub video_codec: Option<String>,
    pub width: u32,
    pub height: u32,
    pub audio_codec: Option<String>,
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Sum of `RTP: missed N packets`.
    pub lost_packets: u64,
    /// Count of `max delay reached. need to consume packet`.
    pub max_delay_events: u64,
    /// The process exited before the harness interrupted it.
    pub exited_by_itself: bool,
    pub success: bool,
    pub elapsed: Duration,
    pub stderr: String,
}

impl FfmpegReport {
    /// Parses ffmpeg `-v verbose` stderr.
    pub(crate) fn parse(stderr: &str) -> FfmpegReport {
        let mut r = FfmpegReport::default();
        let mut in_input = false;
        for raw in stderr.split(['\n', '\r']) {
            let line = raw.trim();
            if line.starts_with("Input #0") {
                in_input = true;
            } else if line.starts_with("Output #0") || line.starts_with("Stream mapping") {
                in_input = false;
            }
            if in_input && line.starts_with("Stream #0:") {
                if let Some(rest) = line.split_once(": Video: ").map(|x| x.1) {
                    if r.video_codec.is_none() {
                        r.video_codec = Some(first_word(rest));
                        if let Some((w, h)) = find_dims(rest) {
                            r.width = w;
                            r.height = h;
                        }
                    }
                } else if let Some(rest) = line.split_once(": Audio: ").map(|x| x.1) {
                    if r.audio_codec.is_none() {
                        r.audio_codec = Some(first_word(rest));
                    }
                }
            }
            // "Input stream #0:0 (video): 497 packets read (...); 496 frames decoded; "
            if line.starts_with("Input stream #0:") {
                let n = number_before(line, " frames decoded").unwrap_or(0);
                if line.contains("(video)") {
                    r.video_frames += n;
                } else if line.contains("(audio)") {
                    r.audio_frames += n;
                }
            }
            if let Some(i) = line.find("RTP: missed ") {
                let n = line[i + "RTP: missed ".len()..]
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(1);
                r.lost_packets += n;
            }
            if line.contains("max delay reached") {
                r.max_delay_events += 1;
            }
        }
        r.stderr = stderr.to_string();
        r
    }

    /// Last lines of ffmpeg's stderr, for assertion messages.
    pub(crate) fn tail(&self) -> String {
        super::tail(&self.stderr.replace('\r', "\n"), 25)
    }
}

fn first_word(s: &str) -> String {
    s.split([' ', ',']).next().unwrap_or("").to_string()
}

fn find_dims(s: &str) -> Option<(u32, u32)> {
    s.split([' ', ','])
        .filter_map(|tok| {
            let (w, h) = tok.split_once('x')?;
            Some((w.parse().ok()?, h.parse().ok()?))
        })
        .find(|&(w, h): &(u32, u32)| w > 0 && h > 0)
}

fn number_before(line: &str, marker: &str) -> Option<u64> {
    let end = line.find(marker)?;
    line[..end]
        .rsplit([' ', ';'])
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// A running ffmpeg reader: `ffmpeg -rtsp_transport T -i URL -t SECS -f null -`.
pub(crate) struct FfmpegReader {
    pub proc: Proc,
    pub url: String,
}

impl FfmpegReader {
    /// `transport`: `udp`, `tcp` or `udp_multicast`. `-t` is `media_secs`
    /// of stream time; the harness still enforces a wall-clock deadline.
    pub(crate) fn spawn(
        url: &str,
        transport: &str,
        media_secs: f64,
        dir: &Path,
        netns: Option<&Netns>,
    ) -> Self {
        Self::spawn_args(url, transport, media_secs, dir, netns, &[])
    }

    /// Like [`FfmpegReader::spawn`], with `extra` input options placed before `-i`
    /// (e.g. TLS options for `rtsps://`; credentials go in the URL).
    pub(crate) fn spawn_args(
        url: &str,
        transport: &str,
        media_secs: f64,
        dir: &Path,
        netns: Option<&Netns>,
        extra: &[&str],
    ) -> Self {
        let mut cmd = cmd_in(netns, "ffmpeg");
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-v",
            "verbose",
            "-rtsp_transport",
            transport,
        ])
        .args(extra)
        // socket I/O timeout (µs) so a dead server cannot stall ffmpeg forever
        .args(["-timeout", "10000000"])
        // a large receive buffer: zero loss must not depend on scheduling
        .args(["-buffer_size", "4194304"])
        .args(["-i", url])
        .args(["-t", &format!("{media_secs:.3}")])
        .args(["-map", "0", "-f", "null", "-"]);
        FfmpegReader {
            proc: Proc::spawn(&uniq(&format!("ffmpeg-read-{transport}")), cmd, dir),
            url: url.to_string(),
        }
    }

    /// Waits until ffmpeg exits by itself or `deadline_after_start` passes
    /// since spawn (then SIGINT, so it still prints its statistics).
    pub(crate) fn finish(self, deadline_after_start: Duration) -> FfmpegReport {
        let at = self.proc.started + deadline_after_start;
        self.finish_at(at)
    }

    /// Like [`FfmpegReader::finish`] with an absolute deadline.
    pub(crate) fn finish_at(mut self, deadline: Instant) -> FfmpegReport {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let by_itself = self.proc.wait_timeout(remaining).is_some();
        let status = self.proc.stop(Duration::from_secs(5));
        let mut r = FfmpegReport::parse(&self.proc.stderr());
        r.exited_by_itself = by_itself;
        r.success = status.success();
        r.elapsed = self.proc.started.elapsed();
        r
    }
}

/// Reads `url` for `secs` seconds of media (`-t secs+1` to cover the wait
/// for the first keyframe: no GOP cache) with a wall-clock limit of
/// `secs + 12` s. Compare `video_frames` against `min_frames(secs, ..)`.
pub(crate) fn ffmpeg_read(url: &str, transport: &str, secs: Duration, dir: &Path) -> FfmpegReport {
    ffmpeg_read_with(url, transport, secs, dir, None)
}

pub(crate) fn ffmpeg_read_with(
    url: &str,
    transport: &str,
    secs: Duration,
    dir: &Path,
    netns: Option<&Netns>,
) -> FfmpegReport {
    let reader = FfmpegReader::spawn(url, transport, secs.as_secs_f64() + 1.0, dir, netns);
    reader.finish(secs + Duration::from_secs(12))
}

/// ffprobe's view of one stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeStream {
    pub codec_type: String,
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub channels: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeReport {
    pub streams: Vec<ProbeStream>,
}

impl ProbeReport {
    pub(crate) fn video(&self) -> Option<&ProbeStream> {
        self.streams.iter().find(|s| s.codec_type == "video")
    }
    pub(crate) fn audio(&self) -> Option<&ProbeStream> {
        self.streams.iter().find(|s| s.codec_type == "audio")
    }
}

/// `ffprobe -rtsp_transport tcp -show_streams -of json URL` (20 s limit).
pub(crate) fn ffprobe(url: &str) -> Result<ProbeReport, String> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-rtsp_transport",
        "tcp",
        "-timeout",
        "10000000",
    ])
    .args(["-show_streams", "-of", "json", url])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn ffprobe: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("ffprobe timed out".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let num = |s: &serde_json::Value, k: &str| -> u32 {
        match &s[k] {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0) as u32,
            serde_json::Value::String(t) => t.parse().unwrap_or(0),
            _ => 0,
        }
    };
    let streams = v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| ProbeStream {
                    codec_type: s["codec_type"].as_str().unwrap_or("").to_string(),
                    codec_name: s["codec_name"].as_str().unwrap_or("").to_string(),
                    width: num(s, "width"),
                    height: num(s, "height"),
                    sample_rate: num(s, "sample_rate"),
                    channels: num(s, "channels"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ProbeReport { streams })
}
