//! Real-peer integration test harness for Sluice.
//!
//! Every integration test file does `mod common;` and uses a subset of this
//! module, hence the blanket `dead_code` allowance.
//!
//! External peers (ffmpeg, ffprobe, GStreamer, `ip netns`) are installed by
//! `scripts/install-test-deps.sh`. Every child process runs with a hard
//! deadline and is killed on drop, so a misbehaving server cannot hang a test.
#![allow(dead_code, unused_imports)]

pub(crate) mod ffmpeg;
pub(crate) mod gst;
pub(crate) mod media;
pub(crate) mod netns;
pub(crate) mod ports;
pub(crate) mod proc;
pub(crate) mod retina_reader;
pub(crate) mod rtsp_client;
pub(crate) mod server;
pub(crate) mod upstream;
pub(crate) mod vod_client;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) use ffmpeg::{
    ffmpeg_read, ffprobe, FfmpegPublisher, FfmpegReader, FfmpegReport, ProbeReport,
};
pub(crate) use gst::{gst_read, GstPublisher, GstReport};
pub(crate) use media::{file_facts, media, vod_media, FileFacts, Media, VodMedia, VOD_CLIP_SECS};
pub(crate) use netns::Netns;
pub(crate) use ports::{free_tcp_port, free_udp_block, free_udp_pair};
pub(crate) use proc::Proc;
pub(crate) use retina_reader::{retina_read, retina_read_blocking, RetinaReport, RetinaTransport};
pub(crate) use rtsp_client::{RtspClient, RtspResponse};
pub(crate) use server::Server;

/// Nominal frame rate of all generated test media.
pub(crate) const FPS: f64 = 25.0;

/// Frames a reader should get for `d` of playback at [`FPS`].
pub(crate) fn expected_frames(d: Duration) -> u64 {
    (d.as_secs_f64() * FPS).round() as u64
}

/// The minimum acceptable decoded-frame count: `ratio` of the nominal count.
pub(crate) fn min_frames(d: Duration, ratio: f64) -> u64 {
    (expected_frames(d) as f64 * ratio).floor() as u64
}

/// A fresh, unique directory for one test's configs and logs:
/// `$CARGO_TARGET_TMPDIR/sluice-it/<name>-<pid>-<n>`. Kept after the run so
/// logs can be inspected.
pub(crate) fn test_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("sluice-it")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Whether the test process runs as root (needed for `ip netns`).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub(crate) fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Read duration used by most tests.
pub(crate) const READ_SECS: Duration = Duration::from_secs(5);

/// The share of nominal frames a reader must decode.
pub(crate) const MIN_RATIO: f64 = 0.85;

/// Asserts an ffmpeg read decoded ≥ `ratio` of the nominal video frames
/// for `secs`, with the expected video codec / size, an audio stream of
/// `audio_codec` (if `Some`), and zero RTP loss.
pub(crate) fn assert_ffmpeg_read(
    what: &str,
    r: &FfmpegReport,
    secs: Duration,
    ratio: f64,
    video_codec: &str,
    audio_codec: Option<&str>,
) {
    let min = min_frames(secs, ratio);
    assert!(
        r.video_frames >= min,
        "{what}: decoded {} video frames, want >= {min} ({:.0}% of {secs:?} at {FPS} fps)\n{}",
        r.video_frames,
        ratio * 100.0,
        r.tail()
    );
    assert_eq!(
        r.video_codec.as_deref(),
        Some(video_codec),
        "{what}: video codec\n{}",
        r.tail()
    );
    assert_eq!(
        (r.width, r.height),
        (640, 360),
        "{what}: resolution\n{}",
        r.tail()
    );
    if let Some(a) = audio_codec {
        assert_eq!(
            r.audio_codec.as_deref(),
            Some(a),
            "{what}: audio codec\n{}",
            r.tail()
        );
        assert!(
            r.audio_frames > 0,
            "{what}: no audio frames decoded\n{}",
            r.tail()
        );
    }
    assert_eq!(
        r.lost_packets,
        0,
        "{what}: ffmpeg reported lost RTP packets\n{}",
        r.tail()
    );
}
