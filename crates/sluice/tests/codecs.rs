//! Codecs other than H.264+AAC are relayed untouched.

mod common;

use common::*;

#[test]
fn h265_opus_relayed() {
    let dir = test_dir("h265-opus");
    let server = Server::start("");
    let url = server.url("live/hevc");
    let _publisher = FfmpegPublisher::start(&media().h265_opus, &url, "tcp", &dir);
    let probe = ffprobe(&url).expect("ffprobe");
    let v = probe.video().expect("video stream");
    assert_eq!(
        (v.codec_name.as_str(), v.width, v.height),
        ("hevc", 640, 360)
    );
    assert_eq!(probe.audio().expect("audio stream").codec_name, "opus");
    let r = ffmpeg_read(&url, "udp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "ffmpeg udp reader (H.265+Opus)",
        &r,
        READ_SECS,
        MIN_RATIO,
        "hevc",
        Some("opus"),
    );
}

#[test]
fn h264_pcmu_relayed() {
    let dir = test_dir("h264-pcmu");
    let server = Server::start("");
    let url = server.url("live/pcmu");
    let _publisher = FfmpegPublisher::start(&media().h264_pcmu, &url, "tcp", &dir);
    let probe = ffprobe(&url).expect("ffprobe");
    let v = probe.video().expect("video stream");
    assert_eq!(
        (v.codec_name.as_str(), v.width, v.height),
        ("h264", 640, 360)
    );
    let a = probe.audio().expect("audio stream");
    assert_eq!((a.codec_name.as_str(), a.sample_rate), ("pcm_mulaw", 8000));
    let r = ffmpeg_read(&url, "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "ffmpeg tcp reader (H.264+PCMU)",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("pcm_mulaw"),
    );
}

#[test]
fn h265_gstreamer_reader() {
    let dir = test_dir("h265-gst");
    let server = Server::start("");
    let url = server.url("live/hevc");
    let _publisher = FfmpegPublisher::start(&media().h265_opus, &url, "tcp", &dir);
    let r = gst::gst_read(
        &url,
        "tcp",
        gst::GstVideo::H265,
        READ_SECS + std::time::Duration::from_secs(2),
        &dir,
        None,
    );
    let min = min_frames(READ_SECS, MIN_RATIO);
    assert!(r.errors.is_empty(), "errors {:?}\n{}", r.errors, r.output);
    assert!(
        r.video_frames >= min,
        "{} frames < {min}\n{}",
        r.video_frames,
        r.output
    );
    assert_eq!((r.width, r.height), (640, 360), "{}", r.output);
}
