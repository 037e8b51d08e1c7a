//! Session-level behaviour that needs a real stream: TEARDOWN of one track, and a slow
//! TCP reader that must be cut off without disturbing the publisher or other readers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::rtsp_client::{describe, raw_publish, Incoming, RtspClient};
use common::*;

#[test]
fn teardown_of_one_track_keeps_the_other_playing() {
    let dir = test_dir("teardown-track");
    let server = Server::start("");
    let url = server.url("live/two");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let mut c = RtspClient::connect(server.addr()).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let (_, controls) = describe(&mut c, &url);
    assert_eq!(controls.len(), 2, "expected video + audio");
    let r = c
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    let session = r.session_id().unwrap();
    let r = c
        .request(
            "SETUP",
            &controls[1],
            &[
                ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3"),
                ("Session", &session),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    // PLAY of one track of an aggregate session is refused.
    let r = c
        .request("PLAY", &controls[1], &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 460, "{r:?}");
    let r = c
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let count = |c: &mut RtspClient, d: Duration| {
        let (mut video, mut audio) = (0, 0);
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Ok(Some(Incoming::Data(f))) = c.next_incoming(Duration::from_millis(20)) {
                match f.channel {
                    0 => video += 1,
                    2 => audio += 1,
                    _ => {}
                }
            }
        }
        (video, audio)
    };
    let (v, a) = count(&mut c, Duration::from_secs(2));
    // ffmpeg packs several AAC frames per RTP packet: a few audio packets per second.
    assert!(v > 20 && a > 5, "before: video {v}, audio {a}");
    let r = c
        .request("TEARDOWN", &controls[1], &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    count(&mut c, Duration::from_millis(300));
    let (v, a) = count(&mut c, Duration::from_secs(2));
    assert!(v > 20, "video stopped after audio teardown: {v}");
    assert_eq!(a, 0, "audio still flowing after its TEARDOWN");
    // The aggregate TEARDOWN ends the session.
    let r = c
        .request("TEARDOWN", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = c
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 454, "{r:?}");
}

#[test]
fn slow_tcp_reader_is_disconnected_and_others_lose_nothing() {
    let server = Server::start("[rtsp]\nreader_queue = 64\nslow_reader_timeout = \"1s\"\n");
    let url = server.url("raw/flood");
    let (mut publisher, _) = raw_publish(&url);

    // A reader that never reads its socket.
    let mut slow = RtspClient::connect(server.addr()).unwrap();
    let (_, controls) = describe(&mut slow, &url);
    let r = slow
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    let s = r.session_id().unwrap();
    assert_eq!(
        slow.request("PLAY", &url, &[("Session", &s)], b"")
            .unwrap()
            .status,
        200
    );

    // A healthy reader that drains everything.
    let mut good = RtspClient::connect(server.addr()).unwrap();
    let (_, controls) = describe(&mut good, &url);
    let r = good
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    let s = r.session_id().unwrap();
    assert_eq!(
        good.request("PLAY", &url, &[("Session", &s)], b"")
            .unwrap()
            .status,
        200
    );
    good.stream
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();

    // Flood: 1400-byte packets as fast as the publisher's socket takes them, in bursts,
    // while the good reader drains. Paced so the good reader's own queue never overflows.
    let total: u16 = 30_000;
    let mut received = 0u32;
    let mut next: u16 = 0;
    let start = Instant::now();
    while (next < total || received < u32::from(total)) && start.elapsed() < Duration::from_secs(30)
    {
        if next < total {
            let mut burst = Vec::new();
            for _ in 0..32 {
                if next == total {
                    break;
                }
                let mut p = vec![0x80, 0x60];
                p.extend_from_slice(&next.to_be_bytes());
                p.extend_from_slice(&(u32::from(next) * 3000).to_be_bytes());
                p.extend_from_slice(&0xabcd_u32.to_be_bytes());
                p.push(0x41);
                p.resize(1400, 0x55);
                burst.extend_from_slice(&[b'$', 0]);
                burst.extend_from_slice(&(p.len() as u16).to_be_bytes());
                burst.extend_from_slice(&p);
                next += 1;
            }
            publisher.stream.write_all(&burst).unwrap();
        }
        for _ in 0..64 {
            match good.next_incoming(Duration::from_millis(1)) {
                Ok(Some(Incoming::Data(f))) if f.channel == 0 => received += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    assert_eq!(
        received,
        u32::from(total),
        "the healthy reader lost packets"
    );
    let line = server
        .wait_log_line(Duration::from_secs(5), |l| l.contains("slow TCP reader"))
        .unwrap_or_else(|| panic!("no slow-reader log line\n{}", tail(&server.log(), 30)));
    assert!(line.contains("disconnecting"), "{line}");
    // The slow reader's connection is closed: reading drains its buffer, then EOF.
    let mut stream: TcpStream = slow.stream.try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let res = std::io::Read::read_to_end(&mut stream, &mut sink);
    assert!(res.is_ok(), "slow reader's connection not closed: {res:?}");
}
