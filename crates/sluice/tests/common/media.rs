//! Test media generated with ffmpeg's lavfi sources (never downloaded).
//!
//! Files are generated once and cached under
//! `$CARGO_TARGET_TMPDIR/test-media/v1/`. Within a process a `OnceLock`
//! serialises generation; across concurrently running test binaries each
//! file is written to a unique temporary name and atomically renamed into
//! place, so a reader never sees a partial file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The generated media set.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    /// 640x360 25 fps H.264 (baseline, 1 s GOP, no B-frames) + AAC 48 kHz mono, 10 s.
    pub h264_aac: PathBuf,
    /// Same as `h264_aac` but 30 s long, for publishers that cannot loop
    /// (GStreamer `filesrc`).
    pub h264_aac_long: PathBuf,
    /// 640x360 25 fps H.265 (1 s GOP, no B-frames) + Opus 48 kHz mono, 10 s.
    pub h265_opus: PathBuf,
    /// 640x360 25 fps H.264 + G.711 µ-law 8 kHz mono, 10 s.
    pub h264_pcmu: PathBuf,
    /// Raw Annex-B H.264 and ADTS AAC elementary streams (from `h264_aac`),
    /// for `gst_rtsp_server.py`-style pull sources.
    pub h264_annexb: PathBuf,
    pub aac_adts: PathBuf,
}

const VIDEO_SRC: &str = "testsrc2=size=640x360:rate=25";

fn x264_args() -> Vec<&'static str> {
    vec![
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
    ]
}

fn lavfi_inputs(secs: u32, audio_rate: u32) -> Vec<String> {
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        VIDEO_SRC.into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:sample_rate={audio_rate}"),
        "-t".into(),
        secs.to_string(),
        "-map".into(),
        "0:v".into(),
        "-map".into(),
        "1:a".into(),
    ]
}

fn generate(dir: &Path, name: &str, args: Vec<String>) -> PathBuf {
    let dest = dir.join(name);
    if dest.exists() {
        return dest;
    }
    let ext = Path::new(name).extension().unwrap().to_str().unwrap();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:?}.{ext}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(&args)
        .arg(&tmp)
        .stdin(Stdio::null());
    let out = run_with_timeout(cmd, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("generating {name}: {e}"));
    assert!(
        out.0.success(),
        "generating {name} failed ({}):\n{}",
        out.0,
        out.1
    );
    std::fs::rename(&tmp, &dest).expect("rename generated media into place");
    dest
}

/// Runs a command to completion with a timeout; returns (status, stderr).
pub(crate) fn run_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String), String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} timed out after {timeout:?}"));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn args(parts: &[&[&str]], lead: Vec<String>) -> Vec<String> {
    let mut v = lead;
    for p in parts {
        v.extend(p.iter().map(|s| s.to_string()));
    }
    v
}

/// Returns the test media, generating it on first use.
pub(crate) fn media() -> &'static Media {
    static MEDIA: OnceLock<Media> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("test-media")
            .join("v1");
        std::fs::create_dir_all(&dir).expect("create media dir");
        let aac: &[&str] = &["-c:a", "aac", "-ar", "48000", "-ac", "1", "-b:a", "64k"];
        let h264_aac = generate(
            &dir,
            "h264_aac.mp4",
            args(
                &[&x264_args(), aac, &["-movflags", "+faststart"]],
                lavfi_inputs(10, 48000),
            ),
        );
        let h264_aac_long = generate(
            &dir,
            "h264_aac_30s.mp4",
            args(
                &[&x264_args(), aac, &["-movflags", "+faststart"]],
                lavfi_inputs(30, 48000),
            ),
        );
        let h265_opus = generate(
            &dir,
            "h265_opus.mkv",
            args(
                &[
                    &[
                        "-c:v",
                        "libx265",
                        "-preset",
                        "ultrafast",
                        "-pix_fmt",
                        "yuv420p",
                        "-g",
                        "25",
                        "-x265-params",
                        "bframes=0:keyint=25:min-keyint=25:scenecut=0:log-level=error",
                    ],
                    &["-c:a", "libopus", "-ar", "48000", "-ac", "1", "-b:a", "64k"],
                ],
                lavfi_inputs(10, 48000),
            ),
        );
        let h264_pcmu = generate(
            &dir,
            "h264_pcmu.mkv",
            args(
                &[
                    &x264_args(),
                    &["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"],
                ],
                lavfi_inputs(10, 8000),
            ),
        );
        let src = h264_aac.to_str().unwrap().to_string();
        let h264_annexb = generate(
            &dir,
            "h264_aac.h264",
            vec![
                "-i".into(),
                src.clone(),
                "-map".into(),
                "0:v".into(),
                "-c".into(),
                "copy".into(),
                "-bsf:v".into(),
                "h264_mp4toannexb".into(),
                "-f".into(),
                "h264".into(),
            ],
        );
        let aac_adts = generate(
            &dir,
            "h264_aac.aac",
            vec![
                "-i".into(),
                src,
                "-map".into(),
                "0:a".into(),
                "-c".into(),
                "copy".into(),
                "-f".into(),
                "adts".into(),
            ],
        );
        Media {
            h264_aac,
            h264_aac_long,
            h265_opus,
            h264_pcmu,
            h264_annexb,
            aac_adts,
        }
    })
}

/// Stored media for the on-demand (`[vod]`) tests, all inside one directory that the
/// tests serve with `[vod] dir = ...`. Generated once, like [`media`].
#[derive(Debug, Clone)]
pub(crate) struct VodMedia {
    /// The directory to serve; every file below is reachable at `vod/<name>`.
    pub dir: PathBuf,
    /// `clip.mp4`: 640x360 25 fps H.264 (1 s GOP: keyframes at every whole second)
    /// + AAC 48 kHz mono, 20 s, `+faststart`.
    pub clip_mp4: PathBuf,
    /// `clip.mkv`: `clip.mp4` remuxed into Matroska.
    pub clip_mkv: PathBuf,
    /// `clip_frag.mp4`: `clip.mp4` remuxed into fragmented MP4 (one fragment per GOP).
    pub clip_frag: PathBuf,
    /// `hevc_opus.mkv`: 640x360 25 fps H.265 (1 s GOP) + Opus, 10 s.
    pub hevc_opus_mkv: PathBuf,
    /// `vp9_opus.webm`: 640x360 25 fps VP9 (1 s GOP) + Opus, 10 s.
    pub vp9_opus_webm: PathBuf,
    /// `short.mp4`: like `clip.mp4` but 10 s (250 frames).
    pub short_mp4: PathBuf,
    /// `loop4.mp4`: like `clip.mp4` but 4 s (100 frames).
    pub loop4_mp4: PathBuf,
}

/// Duration of `VodMedia::clip_*` in seconds.
pub(crate) const VOD_CLIP_SECS: f64 = 20.0;

/// Returns the on-demand media set, generating it on first use (a few seconds).
pub(crate) fn vod_media() -> &'static VodMedia {
    static MEDIA: OnceLock<VodMedia> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("test-media")
            .join("v1")
            .join("vod");
        std::fs::create_dir_all(&dir).expect("create vod media dir");
        let aac: &[&str] = &["-c:a", "aac", "-ar", "48000", "-ac", "1", "-b:a", "64k"];
        let opus: &[&str] = &["-c:a", "libopus", "-ar", "48000", "-ac", "1", "-b:a", "64k"];
        let h264_mp4 = |name: &str, secs: u32| {
            generate(
                &dir,
                name,
                args(
                    &[&x264_args(), aac, &["-movflags", "+faststart"]],
                    lavfi_inputs(secs, 48000),
                ),
            )
        };
        let clip_mp4 = h264_mp4("clip.mp4", VOD_CLIP_SECS as u32);
        let short_mp4 = h264_mp4("short.mp4", 10);
        let loop4_mp4 = h264_mp4("loop4.mp4", 4);
        let src = clip_mp4.to_str().unwrap().to_string();
        let remux = |extra: &[&str]| {
            let mut v: Vec<String> = vec!["-i".into(), src.clone(), "-map".into(), "0".into()];
            v.extend(["-c".into(), "copy".into()]);
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let clip_mkv = generate(&dir, "clip.mkv", remux(&[]));
        let clip_frag = generate(
            &dir,
            "clip_frag.mp4",
            remux(&["-movflags", "frag_keyframe+empty_moov+default_base_moof"]),
        );
        let hevc_opus_mkv = generate(
            &dir,
            "hevc_opus.mkv",
            args(
                &[
                    &[
                        "-c:v",
                        "libx265",
                        "-preset",
                        "ultrafast",
                        "-pix_fmt",
                        "yuv420p",
                        "-g",
                        "25",
                        "-x265-params",
                        "bframes=0:keyint=25:min-keyint=25:scenecut=0:log-level=error",
                    ],
                    opus,
                ],
                lavfi_inputs(10, 48000),
            ),
        );
        let vp9_opus_webm = generate(
            &dir,
            "vp9_opus.webm",
            args(
                &[
                    &[
                        "-c:v",
                        "libvpx-vp9",
                        "-deadline",
                        "realtime",
                        "-cpu-used",
                        "8",
                        "-b:v",
                        "1M",
                        "-g",
                        "25",
                        "-keyint_min",
                        "25",
                        "-pix_fmt",
                        "yuv420p",
                    ],
                    opus,
                ],
                lavfi_inputs(10, 48000),
            ),
        );
        VodMedia {
            dir,
            clip_mp4,
            clip_mkv,
            clip_frag,
            hevc_opus_mkv,
            vp9_opus_webm,
            short_mp4,
            loop4_mp4,
        }
    })
}

/// What ffprobe says about a local media file.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileFacts {
    /// `format.duration` in seconds.
    pub duration: f64,
    /// Number of video packets (frames).
    pub video_frames: u64,
    /// Presentation times (s) of the video keyframes.
    pub keyframes: Vec<f64>,
}

/// Runs ffprobe on a local file: duration, video frame count, keyframe times.
pub(crate) fn file_facts(path: &Path) -> FileFacts {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("format=duration:packet=pts_time,flags")
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {}", path.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let num = |x: &serde_json::Value| -> Option<f64> {
        x.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| x.as_f64())
    };
    let duration = num(&v["format"]["duration"]).unwrap_or(0.0);
    let packets = v["packets"].as_array().cloned().unwrap_or_default();
    let keyframes = packets
        .iter()
        .filter(|p| p["flags"].as_str().is_some_and(|f| f.starts_with('K')))
        .filter_map(|p| num(&p["pts_time"]))
        .collect();
    FileFacts {
        duration,
        video_frames: packets.len() as u64,
        keyframes,
    }
}

/// A `secs`-long clip of the lavfi test pattern (640x360, 25 fps) and a 440 Hz sine at
/// `audio_rate` Hz, encoded with `codec_args` (video and audio codec options) into
/// `$CARGO_TARGET_TMPDIR/test-media/v1/<name>` and cached there, like [`media`]. For
/// tests that need a codec or length the shared sets do not have (AV1, VP9, 40 s).
pub(crate) fn lavfi_clip(name: &str, secs: u32, audio_rate: u32, codec_args: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("v1");
    std::fs::create_dir_all(&dir).expect("create media dir");
    generate(
        &dir,
        name,
        args(&[codec_args], lavfi_inputs(secs, audio_rate)),
    )
}
