//! Publisher/reader/session lifecycle.

mod common;

use common::rtsp_client::{describe, Incoming, RtspClient};
use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

#[test]
fn publisher_gone_ends_readers_and_path_is_reusable() {
    let dir = test_dir("pub-gone");
    let server = Server::start("");
    let url = server.url("live/cam");
    let mut publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    // -t far beyond the test: the readers must end because the server ends
    // their sessions, not because of -t.
    let tcp = FfmpegReader::spawn(&url, "tcp", 60.0, &dir, None);
    let udp = FfmpegReader::spawn(&url, "udp", 60.0, &dir, None);
    std::thread::sleep(Duration::from_secs(4));
    publisher.kill();
    let killed = Instant::now();
    let grace = Duration::from_secs(8);
    let tcp = tcp.finish_at(killed + grace);
    let udp = udp.finish_at(killed + grace);
    for (what, r) in [("tcp reader", &tcp), ("udp reader", &udp)] {
        assert!(
            r.video_frames > 0,
            "{what} decoded nothing before the kill\n{}",
            r.tail()
        );
        assert!(
            r.exited_by_itself,
            "{what} still running {grace:?} after the publisher died\n{}",
            r.tail()
        );
    }
    // The path is free again: a new publisher works.
    let _publisher2 = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let r = ffmpeg_read(&url, "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of the second publisher",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn second_publisher_on_busy_path_is_refused() {
    let dir = test_dir("busy");
    let server = Server::start("");
    let url = server.url("live/busy");
    let _first = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let mut second = FfmpegPublisher::spawn(&media().h265_opus, &url, "tcp", &dir, None);
    let res = second.wait_publishing(Duration::from_secs(10));
    assert!(res.is_err(), "second publisher was accepted on a busy path");
    let status = second.proc.wait_timeout(Duration::from_secs(5));
    assert!(
        matches!(status, Some(s) if !s.success()),
        "second publisher: {status:?}"
    );
    // The first one is still what readers get.
    let r = ffmpeg_read(&url, "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader after refused publisher",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn override_publisher_replaces_the_old_one() {
    let dir = test_dir("override");
    let server = Server::start("override_publisher = true");
    let url = server.url("live/ovr");
    let mut first = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let _second = FfmpegPublisher::start(&media().h265_opus, &url, "tcp", &dir);
    // The old publisher's session is ended: ffmpeg notices and exits.
    assert!(
        first.proc.wait_timeout(Duration::from_secs(10)).is_some(),
        "replaced publisher still connected"
    );
    let probe = ffprobe(&url).expect("ffprobe");
    assert_eq!(
        probe.video().map(|v| v.codec_name.as_str()),
        Some("hevc"),
        "{probe:?}"
    );
    let r = ffmpeg_read(&url, "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of the replacing publisher",
        &r,
        READ_SECS,
        MIN_RATIO,
        "hevc",
        Some("opus"),
    );
}

/// The value of `key=` in a log line (up to the next space).
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line.get(at..)?.split(' ').next()
}

#[test]
fn path_lifecycle_events_are_logged_ready_replaced_ended_in_order() {
    let dir = test_dir("path-events");
    let server = Server::start("override_publisher = true");
    let url = server.url("cams/a");
    let mut first = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let mut second = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    assert!(
        first.proc.wait_timeout(Duration::from_secs(10)).is_some(),
        "replaced publisher still connected"
    );
    second.kill();
    let ended = server.wait_log_line(Duration::from_secs(10), |l| {
        l.contains("path ended") && l.contains(" path=cams/a ")
    });
    let log = server.log();
    assert!(ended.is_some(), "no end event for cams/a\n{log}");
    // The path's events, in the order logged, with the ids they carry.
    let events: Vec<(&str, &str)> = log
        .lines()
        .filter(|l| l.contains(" path=cams/a "))
        .filter_map(|l| {
            ["path ready", "path replaced", "path ended"]
                .into_iter()
                .find(|e| l.contains(e))
                .map(|e| (e, l))
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        kinds,
        ["path ready", "path replaced", "path ready", "path ended"],
        "{log}"
    );
    let (first_id, second_id) = (
        log_field(events[0].1, "source"),
        log_field(events[2].1, "source"),
    );
    assert!(first_id.is_some() && first_id != second_id, "{log}");
    assert_eq!(log_field(events[1].1, "old"), first_id, "{log}");
    assert_eq!(log_field(events[1].1, "new"), second_id, "{log}");
    assert_eq!(log_field(events[3].1, "source"), second_id, "{log}");
    assert!(events[3].1.contains("reason=source gone"), "{log}");
}

#[test]
fn silent_udp_session_is_reaped_after_timeout() {
    let dir = test_dir("reap");
    let server = Server::start("session_timeout = \"3s\"");
    let url = server.url("live/reap");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);

    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rtp.local_addr().unwrap().port();
    // RTCP port: best effort (the kernel picked an arbitrary RTP port).
    let _rtcp = UdpSocket::bind(("127.0.0.1", port + 1)).ok();
    rtp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let mut c = RtspClient::connect(server.addr()).unwrap();
    let (_, controls) = describe(&mut c, &url);
    let transport = format!("RTP/AVP;unicast;client_port={}-{}", port, port + 1);
    let r = c
        .request("SETUP", &controls[0], &[("Transport", &transport)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "SETUP: {r:?}");
    let session = r.session_id().expect("Session");
    let r = c
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "PLAY: {r:?}");
    let mut buf = [0u8; 2048];
    let got = wait_for(Duration::from_secs(5), || rtp.recv(&mut buf).ok());
    assert!(got.is_some(), "no RTP on udp port {port} after PLAY");

    // Go silent: close the control connection, send no RTCP.
    drop(c);
    let line = server.wait_log_line(Duration::from_secs(10), |l| {
        l.contains(&session) && l.to_ascii_lowercase().contains("timeout")
    });
    assert!(
        line.is_some(),
        "no log line with session {session} and 'timeout' within 10 s\n{}",
        tail(&server.log(), 40)
    );
    // And the server stopped sending to us.
    std::thread::sleep(Duration::from_millis(300));
    while rtp.recv(&mut buf).is_ok() {}
    let start = Instant::now();
    let mut late = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if rtp.recv(&mut buf).is_ok() {
            late += 1;
        }
    }
    assert_eq!(
        late, 0,
        "RTP still flowing after session {session} timed out"
    );
}

#[test]
fn active_readers_survive_short_session_timeout() {
    // Readers that keep their session alive (RTCP / keepalive requests, as
    // ffmpeg and retina do per the Session timeout) are not reaped.
    let dir = test_dir("keepalive");
    let server = Server::start("session_timeout = \"3s\"");
    let url = server.url("live/ka");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let secs = Duration::from_secs(8);
    let ff = FfmpegReader::spawn(&url, "udp", secs.as_secs_f64() + 1.0, &dir, None);
    let rt = retina_read_blocking(&url, RetinaTransport::Udp, secs + Duration::from_secs(1));
    let ff = ff.finish(secs + Duration::from_secs(12));
    assert_ffmpeg_read(
        "ffmpeg udp reader (3s timeout)",
        &ff,
        secs,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    let rt = rt.expect("retina");
    assert!(!rt.ended_early, "retina session ended: {:?}", rt.error);
    assert!(
        rt.video_frames >= min_frames(secs, MIN_RATIO),
        "retina frames {}",
        rt.video_frames
    );
}

fn count_rtp(c: &mut RtspClient, channel: u8, dur: Duration) -> usize {
    let deadline = Instant::now() + dur;
    let mut n = 0;
    while Instant::now() < deadline {
        match c.next_incoming(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(Incoming::Data(d))) if d.channel == channel => n += 1,
            Ok(_) => {}
            Err(e) => panic!("connection error while counting RTP: {e}"),
        }
    }
    n
}

#[test]
fn pause_stops_and_play_resumes_packets() {
    let dir = test_dir("pause");
    let server = Server::start("");
    let url = server.url("live/pause");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let (_, controls) = describe(&mut c, &url);
    let r = c
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "SETUP: {r:?}");
    let session = r.session_id().expect("Session");
    let r = c
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "PLAY: {r:?}");
    let playing = count_rtp(&mut c, 0, Duration::from_secs(2));
    assert!(playing > 20, "only {playing} RTP packets in 2 s of PLAY");

    let r = c
        .request("PAUSE", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "PAUSE: {r:?}");
    // Packets already in flight may still arrive briefly.
    count_rtp(&mut c, 0, Duration::from_millis(300));
    let paused = count_rtp(&mut c, 0, Duration::from_secs(2));
    assert_eq!(paused, 0, "{paused} RTP packets arrived while paused");

    let r = c
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "PLAY after PAUSE: {r:?}");
    let resumed = count_rtp(&mut c, 0, Duration::from_secs(2));
    assert!(
        resumed > 20,
        "only {resumed} RTP packets in 2 s after resuming"
    );
    let r = c
        .request("TEARDOWN", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "TEARDOWN: {r:?}");
}
