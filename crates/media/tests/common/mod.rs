//! Test media generated with ffmpeg (Debian's), cached in the target temp dir, and ffprobe helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A test file: its name and the ffmpeg output arguments that make it.
pub(crate) struct Spec {
    pub name: &'static str,
    pub args: &'static [&'static str],
}

const X264: &[&str] = &[
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-bf",
    "2",
    "-g",
    "25",
    "-keyint_min",
    "25",
    "-sc_threshold",
    "0",
    "-pix_fmt",
    "yuv420p",
];

/// H.264 + AAC, moov at the end.
pub(crate) const MP4: Spec = Spec {
    name: "h264_aac.mp4",
    args: &["-c:a", "aac", "-b:a", "64k"],
};
/// H.264 + AAC, moov first.
pub(crate) const MP4_FASTSTART: Spec = Spec {
    name: "h264_aac_faststart.mp4",
    args: &["-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart"],
};
/// H.264 + AAC, fragmented.
pub(crate) const FMP4: Spec = Spec {
    name: "h264_aac_frag.mp4",
    args: &[
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
    ],
};
/// H.265 + Opus in Matroska.
pub(crate) const MKV_HEVC: Spec = Spec {
    name: "h265_opus.mkv",
    args: &["-c:a", "libopus", "-b:a", "48k"],
};
/// VP9 + Opus in WebM.
pub(crate) const WEBM: Spec = Spec {
    name: "vp9_opus.webm",
    args: &["-c:a", "libopus", "-b:a", "48k"],
};
/// H.264 + AAC in Matroska.
pub(crate) const MKV_H264: Spec = Spec {
    name: "h264_aac.mkv",
    args: &["-c:a", "aac", "-b:a", "64k"],
};

static LOCK: Mutex<()> = Mutex::new(());

/// Directory for generated media.
pub(crate) fn media_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sluice-media-tests");
    std::fs::create_dir_all(&d).expect("create media dir");
    d
}

/// A test clip made once and then reused: `secs` seconds of ffmpeg's `testsrc` at `size`
/// and 25 fps with a 440 Hz sine at `sample_rate`, encoded with `encode` (codecs, GOP,
/// channels). Tests of one process may make the same clip at once: each writes its own
/// file and renames it into place.
pub(crate) fn lavfi_clip(
    name: &str,
    size: &str,
    secs: u32,
    sample_rate: u32,
    encode: &[&str],
) -> PathBuf {
    let path = media_dir().join(name);
    if path.exists() {
        return path;
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = media_dir().join(format!("tmp-{}-{n}-{name}", std::process::id()));
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc=size={size}:rate=25:duration={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate={sample_rate}:duration={secs}"
        ))
        .args(["-pix_fmt", "yuv420p"])
        .args(encode)
        .arg(&tmp)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed for {name}");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

/// Path of the file for `spec`, generating it with ffmpeg if missing.
pub(crate) fn media(spec: &Spec) -> PathBuf {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = media_dir().join(spec.name);
    if path.exists() {
        return path;
    }
    let video: Vec<&str> = match spec.name {
        n if n.starts_with("h264") => X264.to_vec(),
        n if n.starts_with("h265") => vec![
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "keyint=25:min-keyint=25:scenecut=0:log-level=error",
            "-pix_fmt",
            "yuv420p",
        ],
        _ => vec![
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-b:v",
            "300k",
            "-pix_fmt",
            "yuv420p",
        ],
    };
    let tmp = media_dir().join(format!("tmp-{}-{}", std::process::id(), spec.name));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=25:duration=4",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=4",
        ])
        .args(&video)
        .args(spec.args)
        .arg(&tmp)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed for {}", spec.name);
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

fn ffprobe(path: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed");
    String::from_utf8(out.stdout).expect("utf8")
}

/// Container duration in seconds per ffprobe.
pub(crate) fn probe_duration(path: &Path) -> f64 {
    ffprobe(
        path,
        &["-show_entries", "format=duration", "-of", "csv=p=0"],
    )
    .trim()
    .parse()
    .expect("duration")
}

/// Packet count of each stream per ffprobe `-count_packets`.
pub(crate) fn probe_packet_counts(path: &Path) -> Vec<usize> {
    ffprobe(
        path,
        &[
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| l.trim().trim_end_matches(',').parse().expect("count"))
    .collect()
}

/// Sizes of the first `n` packets of stream `stream` per ffprobe.
pub(crate) fn probe_packet_sizes(path: &Path, stream: usize, n: usize) -> Vec<usize> {
    let sel = format!("{stream}");
    let interval = format!("%+#{n}");
    ffprobe(
        path,
        &[
            "-select_streams",
            &sel,
            "-read_intervals",
            &interval,
            "-show_entries",
            "packet=size",
            "-of",
            "csv=p=0",
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .take(n)
    .map(|l| l.trim().trim_end_matches(',').parse().expect("size"))
    .collect()
}

/// A tiny file (64x64, 10 fps, 0.5 s, 8 kHz audio) for mutation tests and fuzz seeds.
pub(crate) fn tiny(name: &str) -> PathBuf {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = media_dir().join(name);
    if path.exists() {
        return path;
    }
    let codecs: &[&str] = match name.rsplit('.').next() {
        Some("webm") => &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "50k",
            "-c:a",
            "libopus",
            "-b:a",
            "16k",
        ],
        Some("mkv") => &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-b:a",
            "16k",
        ],
        _ if name.contains("frag") => &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-b:a",
            "16k",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
        ],
        _ => &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-b:a",
            "16k",
        ],
    };
    let tmp = media_dir().join(format!("tmp-{}-{}", std::process::id(), name));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10:duration=0.5",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=0.5",
        ])
        .args(["-g", "3", "-pix_fmt", "yuv420p", "-ar", "48000"])
        .args(codecs)
        .arg(&tmp)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed for {name}");
    std::fs::rename(&tmp, &path).expect("rename");
    path
}

/// Opens `data` and exercises everything with bounds; returns whether it opened. Must not panic.
pub(crate) fn exercise(data: Vec<u8>) -> bool {
    let len = data.len();
    let Ok(mut d) = sluice_media::open_reader(std::io::Cursor::new(data)) else {
        return false;
    };
    let _ = d.info().duration;
    let _ = d.keyframe_times().len();
    for _ in 0..2 {
        let mut n = 0usize;
        while let Ok(Some(s)) = d.next_sample() {
            n += 1;
            assert!(s.data.len() <= len, "sample larger than the file");
            if n > 100_000 {
                break;
            }
        }
        let _ = d.seek(std::time::Duration::from_millis(250));
    }
    true
}
