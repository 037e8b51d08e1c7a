//! Peers for the pull-source and client-CLI tests: a gst-rtsp-server upstream
//! (`tests/scripts/gst_rtsp_upstream.py`, optionally with Digest auth or TCP only),
//! extra generated media, the `sluice probe|record|publish` subcommands, and
//! ffprobe of a local file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::media::{media, run_with_timeout};
use super::ports::free_tcp_port;
use super::proc::Proc;

static N: AtomicU32 = AtomicU32::new(0);

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// How to start a [`GstUpstream`].
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamOpts {
    /// Require RTSP Digest authentication with these credentials.
    pub digest: Option<(String, String)>,
    /// Refuse UDP transports (SETUP with UDP gets 461).
    pub tcp_only: bool,
    /// Serve audio (AAC) too (default: video only when false).
    pub audio: bool,
    /// Loop this Annex-B H.264 file instead of the test media's (e.g. [`h264_high_annexb`]).
    pub h264: Option<PathBuf>,
    /// Pace the video at this frame rate (default 25, the test media's).
    pub fps: Option<u32>,
}

/// gst-rtsp-server serving the test media's raw H.264 (+ AAC) at
/// `rtsp://127.0.0.1:PORT/live`, looped and paced at 25 fps.
pub(crate) struct GstUpstream {
    /// Declared first: it disconnects before the upstream is killed.
    _keeper: Option<AudioKeeper>,
    pub proc: Proc,
    pub port: u16,
}

/// A reader that holds the upstream's shared media open once it has seen audio flow.
///
/// Under CPU load gst-rtsp-server 1.22 sometimes starts a shared media whose audio
/// branch (`identity sync=true` pacing) never sends a packet, while video flows, for the
/// media's whole life. Such a media would fail any test that expects audio, through no
/// fault of Sluice's. So an upstream with audio is only handed out once a reader has seen
/// an audio frame; that reader stays connected, so every later client (Sluice's pulls)
/// shares that same, healthy media.
struct AudioKeeper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AudioKeeper {
    /// Connects (TCP) and waits up to `within` for the first audio frame; `Err` if none came.
    fn start(url: &str, creds: Option<(String, String)>, within: Duration) -> Result<Self, String> {
        use futures::StreamExt;
        use retina::client::{PlayOptions, Session, SessionOptions, SetupOptions, Transport};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let url = url.to_string();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let run = async {
                    let url = url::Url::parse(&url).map_err(|e| e.to_string())?;
                    let mut options = SessionOptions::default();
                    if let Some((username, password)) = creds {
                        options =
                            options.creds(Some(retina::client::Credentials { username, password }));
                    }
                    let mut session = Session::describe(url, options)
                        .await
                        .map_err(|e| format!("DESCRIBE: {e}"))?;
                    for i in 0..session.streams().len() {
                        session
                            .setup(
                                i,
                                SetupOptions::default()
                                    .transport(Transport::Tcp(Default::default())),
                            )
                            .await
                            .map_err(|e| format!("SETUP {i}: {e}"))?;
                    }
                    let playing = session
                        .play(PlayOptions::default())
                        .await
                        .map_err(|e| format!("PLAY: {e}"))?;
                    playing.demuxed().map_err(|e| format!("demuxed: {e}"))
                };
                let mut demuxed = match tokio::time::timeout(within, run).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => return drop(tx.send(Err(e))),
                    Err(_) => return drop(tx.send(Err("handshake timed out".into()))),
                };
                let deadline = tokio::time::Instant::now() + within;
                let mut told = false;
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    let step = tokio::time::Instant::now() + Duration::from_millis(200);
                    match tokio::time::timeout_at(step, demuxed.next()).await {
                        Ok(Some(Ok(retina::codec::CodecItem::AudioFrame(_)))) if !told => {
                            told = true;
                            let _ = tx.send(Ok(()));
                        }
                        Ok(None) | Ok(Some(Err(_))) => break,
                        _ => {}
                    }
                    if !told && tokio::time::Instant::now() >= deadline {
                        let _ = tx.send(Err(format!("no audio frame within {within:?}")));
                        return;
                    }
                }
            });
        });
        let keeper = AudioKeeper {
            stop,
            thread: Some(thread),
        };
        match rx.recv_timeout(within * 2 + Duration::from_secs(1)) {
            Ok(Ok(())) => Ok(keeper),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("keeper gave no answer".into()),
        }
    }
}

impl Drop for AudioKeeper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GstUpstream {
    /// Starts it on a free port and waits until it listens.
    pub(crate) fn start(opts: UpstreamOpts, dir: &Path) -> GstUpstream {
        let m = media();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("scripts")
            .join("gst_rtsp_upstream.py");
        for attempt in 0..3 {
            let port = free_tcp_port();
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg("-u")
                .arg(&script)
                .args(["--port", &port.to_string()])
                .args(["--fps", &opts.fps.unwrap_or(25).to_string()])
                .arg("--h264")
                .arg(opts.h264.as_ref().unwrap_or(&m.h264_annexb));
            if opts.audio {
                cmd.arg("--aac").arg(&m.aac_adts);
            }
            if let Some((u, p)) = &opts.digest {
                cmd.args(["--user", u, "--password", p]);
            }
            if opts.tcp_only {
                cmd.arg("--tcp-only");
            }
            let mut proc = Proc::spawn(&uniq("gst-upstream"), cmd, dir);
            let ok = super::wait_for(Duration::from_secs(10), || {
                if proc.stdout().contains("ready rtsp://") {
                    return Some(true);
                }
                if !proc.is_running() {
                    return Some(false);
                }
                None
            });
            let mut out = String::new();
            if ok == Some(true) {
                if !opts.audio {
                    return GstUpstream {
                        _keeper: None,
                        proc,
                        port,
                    };
                }
                let url = format!("rtsp://127.0.0.1:{port}/live");
                match AudioKeeper::start(&url, opts.digest.clone(), Duration::from_secs(5)) {
                    Ok(keeper) => {
                        return GstUpstream {
                            _keeper: Some(keeper),
                            proc,
                            port,
                        }
                    }
                    Err(e) => {
                        eprintln!("gst upstream attempt {attempt}: audio did not start ({e}); restarting it");
                        out = format!("audio did not start: {e}\n");
                    }
                }
            }
            let out = format!("{out}{}\n{}", proc.stdout(), proc.stderr());
            proc.kill();
            if attempt == 2 {
                panic!("gst-rtsp-server upstream did not start: {out}");
            }
        }
        unreachable!()
    }

    /// `rtsp://127.0.0.1:PORT/live`.
    pub(crate) fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/live", self.port)
    }

    /// `rtsp://USER:PASS@127.0.0.1:PORT/live`.
    pub(crate) fn url_with(&self, user: &str, pass: &str) -> String {
        format!("rtsp://{user}:{pass}@127.0.0.1:{}/live", self.port)
    }

    /// Its event log (stdout): `client connected N` / `client closed N` lines.
    pub(crate) fn log(&self) -> String {
        self.proc.stdout()
    }

    /// How many RTSP clients ever connected.
    pub(crate) fn connections(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("client connected"))
            .count()
    }

    /// Clients connected now (the last event's count).
    pub(crate) fn connected_now(&self) -> usize {
        self.log()
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("client connected ")
                    .or_else(|| l.strip_prefix("client closed "))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A media file generated once into the shared media cache with
/// `ffmpeg -y <args> <cache>/<name>` (lavfi inputs only), e.g. a 320x240 variant.
pub(crate) fn extra_media(name: &str, args: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("v1");
    std::fs::create_dir_all(&dir).expect("media dir");
    let dest = dir.join(name);
    if dest.exists() {
        return dest;
    }
    let ext = Path::new(name).extension().unwrap().to_str().unwrap();
    let tmp = dir.join(format!(".{name}.tmp-{}.{ext}", std::process::id()));
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&tmp);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("generating {name}: {e}"));
    assert!(status.success(), "generating {name} failed: {err}");
    std::fs::rename(&tmp, &dest).expect("rename media");
    dest
}

/// The x264 settings of the standard test media (baseline, 1 s GOP, no B-frames).
pub(crate) const X264: &[&str] = &[
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-profile:v",
    "baseline",
    "-pix_fmt",
    "yuv420p",
    "-g",
    "25",
    "-keyint_min",
    "25",
    "-sc_threshold",
    "0",
    "-bf",
    "0",
];

/// 640x360 30 fps H.264 High profile, Annex B (a camera's elementary stream), `secs` long,
/// a keyframe every `gop` frames, with or without B-frames; generated once.
pub(crate) fn h264_high_annexb(secs: u32, gop: u32, bframes: bool) -> PathBuf {
    let name = format!(
        "h264_high_640x360_30fps_{secs}s_g{gop}{}.h264",
        if bframes { "_bf" } else { "" }
    );
    let t = secs.to_string();
    let g = gop.to_string();
    extra_media(
        &name,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
            "-t",
            &t,
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-pix_fmt",
            "yuv420p",
            "-g",
            &g,
            "-keyint_min",
            &g,
            "-sc_threshold",
            "0",
            "-bf",
            if bframes { "2" } else { "0" },
            "-bsf:v",
            "h264_mp4toannexb",
        ],
    )
}

/// `size` (e.g. `640x360`) 25 fps H.264 + AAC 48 kHz mono MP4 of `secs` seconds, generated once.
pub(crate) fn h264_aac_mp4(secs: u32, size: &str) -> PathBuf {
    let name = format!("h264_aac_{size}_{secs}s.mp4");
    let video = format!("testsrc2=size={size}:rate=25");
    let t = secs.to_string();
    let mut args: Vec<&str> = vec![
        "-f",
        "lavfi",
        "-i",
        &video,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
        "-map",
        "0:v",
        "-map",
        "1:a",
    ];
    args.extend_from_slice(X264);
    args.extend_from_slice(&[
        "-c:a",
        "aac",
        "-ar",
        "48000",
        "-ac",
        "1",
        "-b:a",
        "64k",
        "-movflags",
        "+faststart",
    ]);
    extra_media(&name, &args)
}

/// Output of a finished `sluice` client command.
#[derive(Debug, Clone)]
pub(crate) struct CliOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A `sluice <args>` command with client logging at its defaults (RUST_LOG unset).
pub(crate) fn sluice_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

/// Runs `sluice <args>` to completion (killed after `timeout`: then `Err`).
pub(crate) fn sluice_run(args: &[&str], timeout: Duration) -> Result<CliOutput, String> {
    let start = Instant::now();
    let mut child = sluice_cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn sluice: {e}"))?;
    // Drain pipes on threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut so, &mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut se, &mut s);
        s
    });
    let deadline = start + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = to.join().unwrap_or_default();
    let stderr = te.join().unwrap_or_default();
    match status {
        Some(s) => Ok(CliOutput {
            success: s.success(),
            code: s.code(),
            stdout,
            stderr,
            elapsed: start.elapsed(),
        }),
        None => Err(format!(
            "sluice {args:?} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )),
    }
}

/// Spawns `sluice <args>` as a managed process (output in `dir`).
pub(crate) fn sluice_spawn(name: &str, args: &[&str], dir: &Path) -> Proc {
    Proc::spawn(&uniq(name), sluice_cmd(args), dir)
}

/// One stream of a local media file, per ffprobe.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileStream {
    pub codec_type: String,
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub duration: f64,
    /// H.264/H.265 profile as ffprobe names it (`High`, `Main` …).
    pub profile: String,
}

/// ffprobe's view of a local media file.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileProbe {
    pub format_duration: f64,
    pub streams: Vec<FileStream>,
    pub raw: String,
}

impl FileProbe {
    pub(crate) fn video(&self) -> Option<&FileStream> {
        self.streams.iter().find(|s| s.codec_type == "video")
    }
    pub(crate) fn audio(&self) -> Option<&FileStream> {
        self.streams.iter().find(|s| s.codec_type == "audio")
    }
}

/// `ffprobe -show_format -show_streams -of json FILE`.
pub(crate) fn probe_file(path: &Path) -> Result<FileProbe, String> {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
    ])
    .arg(path);
    let out = cmd.output().map_err(|e| format!("run ffprobe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&raw).map_err(|e| e.to_string())?;
    let num = |x: &serde_json::Value| -> f64 {
        x.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| x.as_f64())
            .unwrap_or(0.0)
    };
    let streams = v["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| FileStream {
                    codec_type: s["codec_type"].as_str().unwrap_or("").into(),
                    codec_name: s["codec_name"].as_str().unwrap_or("").into(),
                    width: num(&s["width"]) as u32,
                    height: num(&s["height"]) as u32,
                    sample_rate: num(&s["sample_rate"]) as u32,
                    duration: num(&s["duration"]),
                    profile: s["profile"].as_str().unwrap_or("").into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(FileProbe {
        format_duration: num(&v["format"]["duration"]),
        streams,
        raw,
    })
}

/// A log line with `key="value"` / `key=value` normalised to `key=value`.
pub(crate) fn unquoted(line: &str) -> String {
    line.replace('"', "")
}
