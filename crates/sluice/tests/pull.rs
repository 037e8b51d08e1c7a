//! Pull sources against real upstreams: gst-rtsp-server (Digest auth, UDP/TCP/auto
//! transport, TCP-only upstreams, on-demand connections) and another Sluice (reconnect
//! with continuity, media changes, regex relay paths).

mod common;

use std::time::{Duration, Instant};

use common::rtsp_client::{describe, Incoming};
use common::upstream::{h264_aac_mp4, unquoted, GstUpstream, UpstreamOpts};
use common::*;

/// Waits for the `pull source playing` log line of `path`; returns it with quotes removed.
fn wait_playing(server: &Server, path: &str, timeout: Duration) -> String {
    let needle = format!("path={path} ");
    server
        .wait_log_line(timeout, |l| {
            l.contains("pull source playing") && unquoted(l).contains(&needle)
        })
        .map(|l| unquoted(&l))
        .unwrap_or_else(|| {
            panic!(
                "no `pull source playing` for path {path} within {timeout:?}; log:\n{}",
                tail(&server.log(), 40)
            )
        })
}

fn digest_upstream(dir: &std::path::Path) -> GstUpstream {
    GstUpstream::start(
        UpstreamOpts {
            digest: Some(("admin".into(), "s3cret".into())),
            audio: true,
            ..Default::default()
        },
        dir,
    )
}

#[test]
fn digest_auth_with_credentials_in_the_url() {
    let dir = test_dir("pull-digest-url");
    let up = digest_upstream(&dir);
    let server = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\n",
        up.url_with("admin", "s3cret")
    ));
    wait_playing(&server, "cam", Duration::from_secs(15));
    let r = ffmpeg_read(&server.url("cam"), "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of a Digest-authenticated pull (URL credentials)",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    assert!(
        !server.log().contains("s3cret"),
        "the source password appears in Sluice's log:\n{}",
        tail(&server.log(), 20)
    );
}

#[test]
fn digest_auth_with_source_user_and_pass() {
    let dir = test_dir("pull-digest-keys");
    let up = digest_upstream(&dir);
    let server = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\nsource_user = \"admin\"\nsource_pass = \"s3cret\"\n",
        up.url()
    ));
    wait_playing(&server, "cam", Duration::from_secs(15));
    let r = ffmpeg_read(&server.url("cam"), "udp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of a Digest-authenticated pull (source_user/source_pass)",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

#[test]
fn digest_auth_wrong_password_is_logged_and_readers_get_404_after_start_timeout() {
    let dir = test_dir("pull-digest-wrong");
    let up = digest_upstream(&dir);
    let server = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\nsource_user = \"admin\"\nsource_pass = \"wrong\"\n\
         source_on_demand = true\nsource_on_demand_start_timeout = \"3s\"\n",
        up.url()
    ));
    let url = server.url("cam");
    let mut c = RtspClient::connect(server.addr()).expect("connect");
    let t0 = Instant::now();
    let r = c
        .request("DESCRIBE", &url, &[("Accept", "application/sdp")], b"")
        .expect("DESCRIBE answered");
    let waited = t0.elapsed();
    assert_eq!(
        r.status, 404,
        "DESCRIBE of a path whose upstream refuses our credentials: {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(2700) && waited <= Duration::from_secs(8),
        "404 came after {waited:?}; want after the 3 s start timeout"
    );
    let line = server
        .wait_log_line(Duration::from_secs(5), |l| {
            let l = l.to_ascii_lowercase();
            l.contains("pull source")
                && (l.contains("401") || l.contains("authenticat") || l.contains("unauthorized"))
        })
        .unwrap_or_else(|| {
            panic!(
                "Sluice did not log the upstream's authentication failure; log:\n{}",
                tail(&server.log(), 30)
            )
        });
    eprintln!("auth failure logged as: {line}");
    assert!(up.connections() >= 1, "Sluice never tried the upstream");
    assert!(!server.log().contains("pull source playing"));
}

#[test]
fn source_transport_udp_tcp_and_auto_each_work() {
    let dir = test_dir("pull-transports");
    let up = GstUpstream::start(
        UpstreamOpts {
            audio: true,
            ..Default::default()
        },
        &dir,
    );
    let src = up.url();
    let server = Server::start(&format!(
        "[paths.u]\nsource = \"{src}\"\nsource_transport = \"udp\"\n\
         [paths.t]\nsource = \"{src}\"\nsource_transport = \"tcp\"\n\
         [paths.a]\nsource = \"{src}\"\nsource_transport = \"auto\"\n"
    ));
    for (path, want) in [("u", "udp"), ("t", "tcp"), ("a", "udp")] {
        let line = wait_playing(&server, path, Duration::from_secs(15));
        assert!(
            line.contains(&format!("transport={want}")),
            "path {path}: want transport={want} in {line:?}"
        );
    }
    let readers: Vec<_> = ["u", "t", "a"]
        .iter()
        .map(|p| {
            (
                *p,
                FfmpegReader::spawn(
                    &server.url(p),
                    "tcp",
                    READ_SECS.as_secs_f64() + 1.0,
                    &dir,
                    None,
                ),
            )
        })
        .collect();
    for (p, reader) in readers {
        let r = reader.finish(READ_SECS + Duration::from_secs(12));
        assert_ffmpeg_read(
            &format!("reader of path {p}"),
            &r,
            READ_SECS,
            MIN_RATIO,
            "h264",
            Some("aac"),
        );
    }
}

#[test]
fn auto_transport_falls_back_to_tcp_when_the_upstream_refuses_udp() {
    let dir = test_dir("pull-auto-tcp");
    let up = GstUpstream::start(
        UpstreamOpts {
            tcp_only: true,
            audio: true,
            ..Default::default()
        },
        &dir,
    );
    let server = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\nsource_transport = \"auto\"\n",
        up.url()
    ));
    let line = wait_playing(&server, "cam", Duration::from_secs(15));
    assert!(line.contains("transport=tcp"), "{line}");
    assert!(
        server.log().contains("switching the pull to TCP"),
        "no fallback logged:\n{}",
        tail(&server.log(), 20)
    );
    let r = ffmpeg_read(&server.url("cam"), "udp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of an auto pull from a TCP-only upstream",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
}

/// Origin Sluice with an ffmpeg publisher on `cam`, and an edge pulling it (always on,
/// backoff capped at 2 s).
fn origin_and_edge(dir: &std::path::Path) -> (Server, FfmpegPublisher, Server) {
    let origin = Server::start("");
    let publisher = FfmpegPublisher::start(&media().h264_aac, &origin.url("cam"), "tcp", dir);
    let edge = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\nsource_reconnect_max = \"2s\"\n",
        origin.url("cam")
    ));
    wait_playing(&edge, "cam", Duration::from_secs(15));
    (origin, publisher, edge)
}

#[test]
fn edge_reader_survives_upstream_publisher_restart_with_continuity() {
    let dir = test_dir("pull-reconnect");
    let (origin, mut publisher, edge) = origin_and_edge(&dir);
    let read_for = Duration::from_secs(16);
    let url = edge.url("cam");
    let reader =
        std::thread::spawn(move || retina_read_blocking(&url, RetinaTransport::Tcp, read_for));
    std::thread::sleep(Duration::from_secs(3));
    let t_kill = Instant::now();
    publisher.kill();
    std::thread::sleep(Duration::from_secs(3));
    let mut publisher2 =
        FfmpegPublisher::spawn(&media().h264_aac, &origin.url("cam"), "tcp", &dir, None);
    publisher2
        .wait_publishing(Duration::from_secs(10))
        .expect("restarted publisher");
    let t_back = Instant::now();
    let rep = reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|e| panic!("retina reader on the edge failed to start: {e}"));
    let edge_log = edge.log();
    let ctx = format!(
        "report: frames={} loss={} error={:?} ended_early={}\nedge log:\n{}",
        rep.video_frames,
        rep.loss,
        rep.error,
        rep.ended_early,
        tail(&edge_log, 25)
    );
    assert!(
        rep.error.is_none() && !rep.ended_early,
        "the edge reader's session did not survive the upstream outage\n{ctx}"
    );
    let start = rep.play_started.expect("play instant");
    let abs: Vec<Instant> = rep.video_frame_times.iter().map(|d| start + *d).collect();
    let before = abs.iter().filter(|t| **t <= t_kill).count() as u64;
    assert!(
        before >= min_frames(t_kill.duration_since(start), 0.7),
        "only {before} frames before the publisher was killed\n{ctx}"
    );
    let resumed = abs
        .iter()
        .find(|t| **t > t_back)
        .copied()
        .unwrap_or_else(|| panic!("no frame after the publisher came back\n{ctx}"));
    let delay = resumed.duration_since(t_back);
    assert!(
        delay <= Duration::from_secs(5),
        "frames resumed {delay:?} after the publisher was back (want <= 5 s)\n{ctx}"
    );
    eprintln!(
        "frames before kill {before}, resumed {delay:?} after the publisher was back, loss {}, total {}",
        rep.loss, rep.video_frames
    );
    let end = start + read_for;
    let after = abs.iter().filter(|t| **t >= resumed).count() as u64;
    let want = min_frames(end.saturating_duration_since(resumed), 0.8);
    assert!(
        after >= want,
        "{after} frames after resuming at +{:?}, want >= {want}\n{ctx}",
        resumed.duration_since(start)
    );
    assert!(
        rep.loss <= 10,
        "retina saw {} lost RTP packets across the reconnect (sequence discontinuity)\n{ctx}",
        rep.loss
    );
    assert!(
        edge_log.contains("reconnecting"),
        "edge never logged the reconnect:\n{}",
        tail(&edge_log, 25)
    );
}

/// Reads interleaved data until the connection closes or `deadline`; returns
/// (closed, RTCP BYE seen, RTP packets seen).
fn read_until_closed(c: &mut RtspClient, deadline: Instant) -> (bool, bool, u64) {
    let (mut bye, mut rtp) = (false, 0u64);
    while Instant::now() < deadline {
        match c.next_incoming(Duration::from_millis(300)) {
            Ok(Some(Incoming::Data(d))) => {
                if d.channel % 2 == 1 {
                    // compound RTCP: walk the packets for BYE (203)
                    let mut off = 0;
                    while off + 4 <= d.data.len() {
                        if d.data[off + 1] == 203 {
                            bye = true;
                        }
                        let words = u16::from_be_bytes([d.data[off + 2], d.data[off + 3]]) as usize;
                        off += 4 * (words + 1);
                    }
                } else {
                    rtp += 1;
                }
            }
            Ok(Some(Incoming::Response(_))) | Ok(None) => {}
            Err(_) => return (true, bye, rtp),
        }
    }
    (false, bye, rtp)
}

#[test]
fn edge_ends_readers_when_the_restarted_upstream_has_different_media() {
    let dir = test_dir("pull-media-change");
    let (origin, mut publisher, edge) = origin_and_edge(&dir);
    let url = edge.url("cam");
    let mut c = RtspClient::connect(edge.addr()).expect("connect");
    let (d, controls) = describe(&mut c, &url);
    let sdp_before = d.body_str();
    let mut session = String::new();
    for (i, ctl) in controls.iter().enumerate() {
        let transport = format!("RTP/AVP/TCP;unicast;interleaved={}-{}", 2 * i, 2 * i + 1);
        let mut h = vec![("Transport", transport.as_str())];
        if !session.is_empty() {
            h.push(("Session", session.as_str()));
        }
        let r = c.request("SETUP", ctl, &h, b"").expect("SETUP");
        assert_eq!(r.status, 200, "SETUP {ctl}: {r:?}");
        session = r.session_id().expect("Session");
    }
    let r = c
        .request(
            "PLAY",
            &url,
            &[("Session", &session), ("Range", "npt=0.000-")],
            b"",
        )
        .expect("PLAY");
    assert_eq!(r.status, 200, "PLAY: {r:?}");
    let (closed, _, rtp) = read_until_closed(&mut c, Instant::now() + Duration::from_secs(2));
    assert!(
        !closed && rtp > 20,
        "edge reader not receiving before the change (closed={closed}, rtp={rtp})"
    );

    publisher.kill();
    // While the upstream is away the reader stays.
    let (closed, _, _) = read_until_closed(&mut c, Instant::now() + Duration::from_secs(3));
    assert!(
        !closed,
        "the edge closed the reader while the upstream was merely away:\n{}",
        tail(&edge.log(), 20)
    );
    let small = h264_aac_mp4(10, "320x240");
    let mut publisher2 = FfmpegPublisher::spawn(&small, &origin.url("cam"), "tcp", &dir, None);
    publisher2
        .wait_publishing(Duration::from_secs(10))
        .expect("restarted publisher");
    let t_back = Instant::now();
    let (closed, bye, _) = read_until_closed(&mut c, t_back + Duration::from_secs(10));
    assert!(
        closed,
        "the edge kept the reader's session although the upstream's media changed:\n{}",
        tail(&edge.log(), 25)
    );
    assert!(
        bye,
        "the edge closed the reader without an RTCP BYE (not a clean end)"
    );
    assert!(
        edge.log().contains("media changed"),
        "no media-change log line:\n{}",
        tail(&edge.log(), 25)
    );
    // A new DESCRIBE gets the new media.
    let mut c2 = RtspClient::connect(edge.addr()).expect("connect");
    let (d2, _) = describe(&mut c2, &url);
    assert_ne!(
        d2.body_str(),
        sdp_before,
        "the edge still describes the old media"
    );
    let p = ffprobe(&url).expect("ffprobe the edge after the change");
    let v = p.video().expect("video stream");
    assert_eq!((v.width, v.height), (320, 240), "{p:?}");
}

#[test]
fn on_demand_pull_connects_with_the_first_reader_and_closes_after_the_last() {
    let dir = test_dir("pull-on-demand");
    let up = GstUpstream::start(UpstreamOpts::default(), &dir);
    let server = Server::start(&format!(
        "[paths.cam]\nsource = \"{}\"\nsource_on_demand = true\nsource_on_demand_close_after = \"2s\"\n",
        up.url()
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        up.connections(),
        0,
        "the upstream got a connection before any reader:\n{}",
        up.log()
    );
    assert!(!server.log().contains("pull source starting"));

    let secs = Duration::from_secs(4);
    let r = ffmpeg_read(&server.url("cam"), "tcp", secs, &dir);
    let left = Instant::now();
    assert_ffmpeg_read("on-demand reader", &r, secs, MIN_RATIO, "h264", None);
    assert!(
        up.connections() >= 1,
        "reader played without an upstream connection?"
    );
    let line = server
        .wait_log_line(Duration::from_secs(10), |l| {
            l.contains("pull source stopped")
        })
        .unwrap_or_else(|| {
            panic!(
                "the on-demand pull was not stopped after its last reader left:\n{}",
                tail(&server.log(), 25)
            )
        });
    let stopped_after = left.elapsed();
    eprintln!("stopped {stopped_after:?} after the reader left: {line}");
    assert!(
        stopped_after >= Duration::from_millis(900) && stopped_after <= Duration::from_secs(6),
        "pull stopped {stopped_after:?} after the last reader left (close_after = 2s)"
    );
    assert!(
        wait_for(Duration::from_secs(5), || (up.connected_now() == 0)
            .then_some(()))
        .is_some(),
        "the upstream still has a client after the pull stopped:\n{}",
        up.log()
    );
    // A new reader starts it again.
    let n = up.connections();
    assert_eq!(
        common::rtsp_client::describe_status(&server.url("cam")),
        Some(200)
    );
    assert!(
        up.connections() > n,
        "no new upstream connection for the new reader"
    );
}

#[test]
fn regex_relay_path_chains_origin_to_edge() {
    let dir = test_dir("pull-regex");
    let origin = Server::start("");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &origin.url("cam"), "tcp", &dir);
    let edge = Server::start(&format!(
        "[paths.\"~^relay/(.+)$\"]\nsource = \"rtsp://127.0.0.1:{}/$1\"\nsource_on_demand_start_timeout = \"3s\"\n",
        origin.rtsp_port()
    ));
    let r = ffmpeg_read(&edge.url("relay/cam"), "tcp", READ_SECS, &dir);
    assert_ffmpeg_read(
        "reader of rtsp://edge/relay/cam",
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    // A relay of a path the origin does not have: 404 after the start timeout.
    let t0 = Instant::now();
    assert_eq!(
        common::rtsp_client::describe_status(&edge.url("relay/nothing")),
        Some(404)
    );
    assert!(t0.elapsed() <= Duration::from_secs(9));
}

/// A hung upstream (SIGSTOPped: its TCP connection stays open, it sends nothing) is
/// noticed within `source_timeout`, over TCP and UDP, and reconnected once it runs again;
/// readers keep their sessions and see continuous RTP sequence numbers.
#[test]
fn silent_upstream_is_noticed_and_reconnected_with_continuity() {
    use common::vod_client::{seq_diff, VodSession};
    let dir = test_dir("pull-silent");
    let mut up = GstUpstream::start(UpstreamOpts::default(), &dir);
    let src = up.url();
    let server = Server::start(&format!(
        "[paths.t]\nsource = \"{src}\"\nsource_transport = \"tcp\"\nsource_timeout = \"1s\"\n\
         [paths.u]\nsource = \"{src}\"\nsource_transport = \"udp\"\nsource_timeout = \"1s\"\n"
    ));
    let paths = ["t", "u"];
    for p in paths {
        wait_playing(&server, p, Duration::from_secs(15));
    }
    let read_for = Duration::from_secs(13);
    let readers: Vec<_> = paths
        .iter()
        .map(|p| {
            let url = server.url(p);
            std::thread::spawn(move || {
                let mut s = VodSession::open(&url).unwrap_or_else(|e| panic!("open {url}: {e}"));
                let v = s.video();
                let r = s.play(&[]);
                assert_eq!(r.status, 200, "PLAY {url}: {r:?}");
                (s.collect(read_for, true), v)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let connections_before = up.connections();
    let t_stop = Instant::now();
    up.proc.signal(libc::SIGSTOP);
    for p in paths {
        let needle = format!("path={p} ");
        let line = server.wait_log_line(Duration::from_secs(4), |l| {
            l.contains("sent no media within source_timeout") && unquoted(l).contains(&needle)
        });
        let noticed = t_stop.elapsed();
        assert!(
            line.is_some(),
            "path {p}: the silent upstream was not noticed within {noticed:?}; log:\n{}",
            tail(&server.log(), 30)
        );
        assert!(
            noticed <= Duration::from_secs(3),
            "path {p}: silence noticed after {noticed:?} with source_timeout 1s"
        );
    }
    std::thread::sleep(Duration::from_secs(4).saturating_sub(t_stop.elapsed()));
    up.proc.signal(libc::SIGCONT);
    let t_back = Instant::now();
    let reconnected = wait_for(Duration::from_secs(10), || {
        (up.connections() >= connections_before + paths.len()).then_some(())
    });
    assert!(
        reconnected.is_some(),
        "the pulls did not reconnect after the upstream ran again ({} connections, {} before)\n{}\n{}",
        up.connections(),
        connections_before,
        up.log(),
        tail(&server.log(), 30)
    );
    for (p, reader) in paths.iter().zip(readers) {
        let (c, v) = reader.join().expect("reader thread");
        let ctx = format!("path {p}; server log:\n{}", tail(&server.log(), 25));
        assert!(
            c.bye_at.is_none(),
            "path {p}: the reader's session ended\n{ctx}"
        );
        let video: Vec<_> = c.track(v).collect();
        let before = video.iter().filter(|x| x.at <= t_stop).count();
        assert!(
            before >= 50,
            "path {p}: {before} video packets before the stop\n{ctx}"
        );
        let resumed = video
            .iter()
            .find(|x| x.at > t_back)
            .map(|x| x.at.duration_since(t_back))
            .unwrap_or_else(|| panic!("path {p}: no media after the upstream ran again\n{ctx}"));
        assert!(
            resumed <= Duration::from_secs(5),
            "path {p}: media resumed {resumed:?} after the upstream ran again\n{ctx}"
        );
        let after = video.iter().filter(|x| x.at > t_back).count();
        assert!(
            after >= 50,
            "path {p}: {after} video packets after resuming\n{ctx}"
        );
        let jumps: Vec<String> = video
            .windows(2)
            .filter(|w| seq_diff(w[1].seq, w[0].seq) != 1)
            .map(|w| format!("{} → {}", w[0].seq, w[1].seq))
            .collect();
        assert!(
            jumps.is_empty(),
            "path {p}: RTP sequence numbers jump across the reconnect: {jumps:?}\n{ctx}"
        );
        eprintln!(
            "path {p}: {before} packets before the stop, resumed {resumed:?} after SIGCONT, {after} after"
        );
    }
}
