//! UDP multicast readers, inside a private network namespace (root only;
//! skipped with a message otherwise) so no host routing is touched.

mod common;

use common::*;
use std::time::Duration;

fn setup(ns: &Netns, dir: &std::path::Path) -> (Server, FfmpegPublisher, String) {
    let server = Server::start_in_dir(dir, Some(ns), "");
    let url = server.url("live/mcast");
    let publisher = FfmpegPublisher::start_with(&media().h264_aac, &url, "tcp", dir, Some(ns));
    (server, publisher, url)
}

#[test]
fn ffmpeg_multicast_reader() {
    let Some(ns) = Netns::new() else { return };
    let dir = test_dir("mcast-ffmpeg");
    let (_server, _publisher, url) = setup(&ns, &dir);
    let r = ffmpeg::ffmpeg_read_with(&url, "udp_multicast", READ_SECS, &dir, Some(&ns));
    assert_ffmpeg_read(
        "ffmpeg multicast reader",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn gstreamer_multicast_reader() {
    let Some(ns) = Netns::new() else { return };
    let dir = test_dir("mcast-gst");
    let (_server, _publisher, url) = setup(&ns, &dir);
    let r = gst::gst_read(
        &url,
        "udp-mcast",
        gst::GstVideo::H264,
        READ_SECS + Duration::from_secs(2),
        &dir,
        Some(&ns),
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

#[test]
fn two_multicast_readers_share_the_group() {
    let Some(ns) = Netns::new() else { return };
    let dir = test_dir("mcast-two");
    let (server, _publisher, url) = setup(&ns, &dir);
    let secs = READ_SECS.as_secs_f64() + 1.0;
    let a = FfmpegReader::spawn(&url, "udp_multicast", secs, &dir, Some(&ns));
    let b = FfmpegReader::spawn(&url, "udp_multicast", secs, &dir, Some(&ns));
    let limit = READ_SECS + Duration::from_secs(12);
    let (a, b) = (a.finish(limit), b.finish(limit));
    assert_ffmpeg_read(
        "multicast reader A",
        &a,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    assert_ffmpeg_read(
        "multicast reader B",
        &b,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    // Both readers were given the same group: the server announces it in
    // the SDP / Transport, and ffmpeg logs the group it joined.
    let groups = |r: &FfmpegReport| -> Vec<String> {
        r.stderr
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|t| t.starts_with("239.") && t.split('.').count() == 4)
            .map(str::to_string)
            .collect()
    };
    let (ga, gb) = (groups(&a), groups(&b));
    if !ga.is_empty() && !gb.is_empty() {
        assert_eq!(ga[0], gb[0], "readers joined different multicast groups");
    }
    // The server allocated one group for the path and fed it once, not once per reader.
    let log = server.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("multicast group allocated"), 1, "{log}");
    assert_eq!(count("multicast feed started"), 1, "{log}");
}
