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
pub struct Media {
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
pub fn run_with_timeout(
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
pub fn media() -> &'static Media {
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
