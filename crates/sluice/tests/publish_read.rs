//! Publish with real peers (ffmpeg, GStreamer) and read back with real peers
//! (ffmpeg, GStreamer, retina) over every unicast transport.

mod common;

use common::*;
use std::time::Duration;

/// ffmpeg publisher over `pub_transport` → ffmpeg readers over UDP and TCP
/// at the same time, plus an ffprobe of the relayed stream.
fn ffmpeg_pub_ffmpeg_readers(pub_transport: &str) {
    let dir = test_dir(&format!("ffmpeg-pub-{pub_transport}"));
    let server = Server::start("");
    let url = server.url("live/cam");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, pub_transport, &dir);

    let probe = ffprobe(&url).expect("ffprobe");
    let v = probe.video().expect("video stream in DESCRIBE");
    assert_eq!(
        (v.codec_name.as_str(), v.width, v.height),
        ("h264", 640, 360)
    );
    let a = probe.audio().expect("audio stream in DESCRIBE");
    assert_eq!((a.codec_name.as_str(), a.sample_rate), ("aac", 48000));

    let udp = FfmpegReader::spawn(&url, "udp", READ_SECS.as_secs_f64() + 1.0, &dir, None);
    let tcp = FfmpegReader::spawn(&url, "tcp", READ_SECS.as_secs_f64() + 1.0, &dir, None);
    let limit = READ_SECS + Duration::from_secs(12);
    let (udp, tcp) = (udp.finish(limit), tcp.finish(limit));
    assert_ffmpeg_read(
        "ffmpeg udp reader",
        &udp,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    assert_ffmpeg_read(
        "ffmpeg tcp reader",
        &tcp,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn ffmpeg_tcp_publisher_to_ffmpeg_udp_and_tcp_readers() {
    ffmpeg_pub_ffmpeg_readers("tcp");
}

#[test]
fn ffmpeg_udp_publisher_to_ffmpeg_udp_and_tcp_readers() {
    ffmpeg_pub_ffmpeg_readers("udp");
}

#[test]
fn gstreamer_publisher_to_ffmpeg_reader() {
    let dir = test_dir("gst-pub");
    let server = Server::start("");
    let url = server.url("live/gst");
    let _publisher = GstPublisher::start(&media().h264_aac_long, &url, "tcp", &dir);
    let r = ffmpeg_read(&url, "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "ffmpeg tcp reader of gst publisher",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn gstreamer_udp_publisher_to_ffmpeg_reader() {
    let dir = test_dir("gst-pub-udp");
    let server = Server::start("");
    let url = server.url("live/gstudp");
    let _publisher = GstPublisher::start(&media().h264_aac_long, &url, "udp", &dir);
    let r = ffmpeg_read(&url, "udp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "ffmpeg udp reader of gst udp publisher",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn gstreamer_readers_udp_and_tcp() {
    let dir = test_dir("gst-read");
    let server = Server::start("");
    let url = server.url("live/cam");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    // Wall clock: read time + connect + first keyframe (no GOP cache).
    let wall = READ_SECS + Duration::from_secs(2);
    let (u, t) = std::thread::scope(|s| {
        let u = s.spawn(|| gst::gst_read(&url, "udp", gst::GstVideo::H264, wall, &dir, None));
        let t = s.spawn(|| gst::gst_read(&url, "tcp", gst::GstVideo::H264, wall, &dir, None));
        (u.join().unwrap(), t.join().unwrap())
    });
    for (what, r) in [("gst udp reader", u), ("gst tcp reader", t)] {
        let min = min_frames(READ_SECS, MIN_RATIO);
        assert!(
            r.errors.is_empty(),
            "{what}: errors {:?}\n{}",
            r.errors,
            r.output
        );
        assert!(
            r.video_frames >= min,
            "{what}: {} frames < {min}\n{}",
            r.video_frames,
            r.output
        );
        assert_eq!((r.width, r.height), (640, 360), "{what}\n{}", r.output);
    }
}

/// Also covers `fanout_window`: the stream is handed to readers 40 ms of media at a time
/// (several frames and both tracks per batch) instead of a frame at a time, and retina
/// must still get every frame, whole and in order, over TCP and UDP. The default,
/// per-frame path is read by the ffmpeg and GStreamer tests above.
#[test]
fn retina_readers_tcp_and_udp_with_a_fanout_window() {
    let dir = test_dir("retina-read");
    let server = Server::start("[rtsp]\nfanout_window = \"40ms\"\n");
    let url = server.url("live/cam");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let dur = READ_SECS + Duration::from_secs(1);
    let (t, u) = std::thread::scope(|s| {
        let t = s.spawn(|| retina_read_blocking(&url, RetinaTransport::Tcp, dur));
        let u = s.spawn(|| retina_read_blocking(&url, RetinaTransport::Udp, dur));
        (t.join().unwrap(), u.join().unwrap())
    });
    for (what, r) in [("retina tcp", t), ("retina udp", u)] {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let min = min_frames(READ_SECS, MIN_RATIO);
        assert!(!r.ended_early, "{what}: stream ended early: {:?}", r.error);
        assert!(
            r.video_frames >= min,
            "{what}: {} video frames < {min}",
            r.video_frames
        );
        assert!(r.audio_frames > 0, "{what}: no audio frames");
        assert_eq!(r.loss, 0, "{what}: lost packets");
        assert_eq!(
            r.encodings.first().map(String::as_str),
            Some("h264"),
            "{what}: {:?}",
            r.encodings
        );
    }
}
