//! Client session tests against scripted server responses.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::auth::{digest_ha1, parse_authorization, verify_digest, DigestAlgorithm, Secret};
use crate::NptTime;

fn config(url: &str, transport: ClientTransport, mode: ClientMode) -> ClientConfig {
    ClientConfig {
        url: url.into(),
        credentials: None,
        transport,
        user_agent: "sluice-test".into(),
        mode,
    }
}

fn session(url: &str, transport: ClientTransport, now: Instant) -> ClientSession {
    ClientSession::new(config(url, transport, ClientMode::Play), now)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// All queued output as one text blob.
fn out_text(s: &mut ClientSession) -> String {
    let mut v = Vec::new();
    while let Some(b) = s.poll_transmit() {
        v.extend_from_slice(&b);
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// All queued output decoded as requests.
fn out_requests(s: &mut ClientSession) -> Vec<Request> {
    let mut buf = BytesMut::new();
    while let Some(b) = s.poll_transmit() {
        buf.extend_from_slice(&b);
    }
    let mut d = Decoder::default();
    let mut v = Vec::new();
    while let Ok(Some(Frame::Message(Message::Request(r)))) = d.decode(&mut buf) {
        v.push(r);
    }
    v
}

/// The single queued request.
fn one(s: &mut ClientSession) -> Request {
    let mut v = out_requests(s);
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

fn events(s: &mut ClientSession) -> Vec<ClientEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn feed(s: &mut ClientSession, text: &str, now: Instant) {
    s.handle_input(text.as_bytes(), now)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A response with CRLF line endings and a body (Content-Length added).
fn resp(status: &str, headers: &[&str], body: &str) -> String {
    let mut s = format!("RTSP/1.0 {status}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    if !body.is_empty() {
        s.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    s.push_str("\r\n");
    s.push_str(body);
    s
}

const SDP2: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=1\r\nm=audio 0 RTP/AVP 0\r\na=control:trackID=2\r\n";

/// Drives a 2-track TCP play session up to the PLAY request; returns the
/// session with the PLAY pending (CSeq 5).
fn until_play(now: Instant) -> ClientSession {
    let mut s = session("rtsp://cam.example/live", ClientTransport::Tcp, now);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), now);
    let sdp_resp = resp(
        "200 OK",
        &[
            "CSeq: 2",
            "Content-Base: rtsp://cam.example/live/",
            "Content-Type: application/sdp",
        ],
        SDP2,
    );
    feed(&mut s, &sdp_resp, now);
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 3",
                "Session: S1",
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
            ],
            "",
        ),
        now,
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 4",
                "Session: S1",
                "Transport: RTP/AVP/TCP;unicast;interleaved=2-3",
            ],
            "",
        ),
        now,
    );
    let reqs = out_requests(&mut s);
    assert_eq!(reqs.last().map(|r| r.method.clone()), Some(Method::Play));
    events(&mut s);
    s
}

#[test]
fn play_tcp_two_tracks_with_digest() {
    let t0 = Instant::now();
    let mut s = session(
        "rtsp://admin:s%3Acret@cam.example:554/live",
        ClientTransport::Tcp,
        t0,
    );
    assert_eq!(s.url(), "rtsp://cam.example:554/live");
    assert_eq!(
        out_text(&mut s),
        "OPTIONS rtsp://cam.example:554/live RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: sluice-test\r\n\r\n"
    );
    assert_eq!(s.poll_timeout(), Some(t0 + DEFAULT_REQUEST_TIMEOUT));
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 1",
                "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER",
            ],
            "",
        ),
        t0,
    );
    assert_eq!(
        out_text(&mut s),
        "DESCRIBE rtsp://cam.example:554/live RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\nUser-Agent: sluice-test\r\n\r\n"
    );
    feed(
        &mut s,
        &resp(
            "401 Unauthorized",
            &[
                "CSeq: 2",
                "WWW-Authenticate: Basic realm=\"cam\"",
                "WWW-Authenticate: Digest realm=\"cam\", nonce=\"abc123\"",
            ],
            "",
        ),
        t0,
    );
    let ha1 = digest_ha1(DigestAlgorithm::Md5, "admin", "cam", "s:cret");
    let digest_for = |method: &str, uri: &str| {
        let ha2 = DigestAlgorithm::Md5.hex_hash(format!("{method}:{uri}").as_bytes());
        let r = DigestAlgorithm::Md5.hex_hash(format!("{ha1}:abc123:{ha2}").as_bytes());
        format!("Digest username=\"admin\", realm=\"cam\", nonce=\"abc123\", uri=\"{uri}\", response=\"{r}\"")
    };
    assert_eq!(
        out_text(&mut s),
        format!(
            "DESCRIBE rtsp://cam.example:554/live RTSP/1.0\r\nCSeq: 3\r\nAccept: application/sdp\r\nAuthorization: {}\r\nUser-Agent: sluice-test\r\n\r\n",
            digest_for("DESCRIBE", "rtsp://cam.example:554/live")
        )
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 3",
                "Server: Test Cam/1.0",
                "Content-Base: rtsp://cam.example:554/live/",
                "Content-Type: application/sdp",
            ],
            SDP2,
        ),
        t0,
    );
    let ev = events(&mut s);
    assert_eq!(
        ev,
        vec![ClientEvent::Described {
            sdp: Bytes::from_static(SDP2.as_bytes()),
            base: "rtsp://cam.example:554/live/".into(),
            controls: vec![
                "rtsp://cam.example:554/live/trackID=1".into(),
                "rtsp://cam.example:554/live/trackID=2".into()
            ],
            server: Some("Test Cam/1.0".into()),
        }]
    );
    let u1 = "rtsp://cam.example:554/live/trackID=1";
    assert_eq!(
        out_text(&mut s),
        format!(
            "SETUP {u1} RTSP/1.0\r\nCSeq: 4\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nAuthorization: {}\r\nUser-Agent: sluice-test\r\n\r\n",
            digest_for("SETUP", u1)
        )
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 4",
                "Session: 12345678;timeout=60",
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=0000ABCD",
            ],
            "",
        ),
        t0,
    );
    let u2 = "rtsp://cam.example:554/live/trackID=2";
    assert_eq!(
        out_text(&mut s),
        format!(
            "SETUP {u2} RTSP/1.0\r\nCSeq: 5\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\nSession: 12345678\r\nAuthorization: {}\r\nUser-Agent: sluice-test\r\n\r\n",
            digest_for("SETUP", u2)
        )
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 5",
                "Session: 12345678;timeout=60",
                "Transport: RTP/AVP/TCP;unicast;interleaved=2-3",
            ],
            "",
        ),
        t0,
    );
    let agg = "rtsp://cam.example:554/live/";
    assert_eq!(
        out_text(&mut s),
        format!(
            "PLAY {agg} RTSP/1.0\r\nCSeq: 6\r\nRange: npt=0.000-\r\nSession: 12345678\r\nAuthorization: {}\r\nUser-Agent: sluice-test\r\n\r\n",
            digest_for("PLAY", agg)
        )
    );
    let ev = events(&mut s);
    assert_eq!(ev.len(), 2);
    assert!(
        matches!(&ev[0], ClientEvent::TrackSetup { track: 0, ssrc: Some(0xABCD), transport } if transport.interleaved == Some((0, 1)))
    );
    assert!(matches!(
        &ev[1],
        ClientEvent::TrackSetup {
            track: 1,
            ssrc: None,
            ..
        }
    ));
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 6",
                "Session: 12345678",
                "Range: npt=0.000-",
                &format!("RTP-Info: url={u1};seq=100;rtptime=1000,url={u2};seq=200;rtptime=2000"),
            ],
            "",
        ),
        t0,
    );
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::Playing {
            rtp_info: vec![
                Some(RtpInfo {
                    url: u1.into(),
                    seq: Some(100),
                    rtptime: Some(1000)
                }),
                Some(RtpInfo {
                    url: u2.into(),
                    seq: Some(200),
                    rtptime: Some(2000)
                }),
            ],
            range: Some(Range::Npt {
                start: Some(NptTime::Seconds(0.0)),
                end: None
            }),
        }]
    );
    // Media in both directions.
    s.handle_input(b"$\x00\x00\x02ab$\x03\x00\x01c", t0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        events(&mut s),
        vec![
            ClientEvent::Rtp {
                track: 0,
                data: Bytes::from_static(b"ab")
            },
            ClientEvent::Rtcp {
                track: 1,
                data: Bytes::from_static(b"c")
            },
        ]
    );
    s.send_rtcp(1, b"rr");
    s.send_rtcp(7, b"ignored");
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"$\x03\x00\x02rr"[..]));
    assert_eq!(s.poll_transmit(), None);
    // Keep-alive uses GET_PARAMETER (listed in Public) after 30 s.
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    s.close();
    assert_eq!(
        out_text(&mut s),
        format!(
            "TEARDOWN {agg} RTSP/1.0\r\nCSeq: 7\r\nSession: 12345678\r\nAuthorization: {}\r\nUser-Agent: sluice-test\r\n\r\n",
            digest_for("TEARDOWN", agg)
        )
    );
    feed(&mut s, &resp("200 OK", &["CSeq: 7"], ""), t0);
    assert_eq!(events(&mut s), vec![ClientEvent::Closed]);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn digest_with_qop_verifies_and_stale_nonce_refreshes() {
    let t0 = Instant::now();
    let mut cfg = config("rtsp://cam/s", ClientTransport::Tcp, ClientMode::Play);
    cfg.credentials = Some(Credentials {
        username: "u".into(),
        password: "p".into(),
    });
    let mut s = ClientSession::new(cfg, t0).unwrap_or_else(|e| panic!("{e}"));
    one(&mut s);
    let ch = "WWW-Authenticate: Digest realm=\"r\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256";
    feed(&mut s, &resp("401 Unauthorized", &["CSeq: 1", ch], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.method, Method::Options);
    let a = parse_authorization(r.headers.get("Authorization").unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(verify_digest(&a, "OPTIONS", Secret::Password("p")));
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.method, Method::Describe);
    // The nonce expired: stale=true → retry with the new nonce.
    let ch2 = "WWW-Authenticate: Digest realm=\"r\", nonce=\"n2\", qop=\"auth\", algorithm=SHA-256, stale=TRUE";
    feed(&mut s, &resp("401 Unauthorized", &["CSeq: 3", ch2], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.cseq(), Some(4));
    let a = parse_authorization(r.headers.get("Authorization").unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(&a, crate::auth::Authorization::Digest { nonce, .. } if nonce == "n2"));
    assert!(verify_digest(&a, "DESCRIBE", Secret::Password("p")));
    // Wrong credentials: a second non-stale 401 fails.
    feed(&mut s, &resp("401 Unauthorized", &["CSeq: 4", ch], ""), t0);
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Failed(ClientError::Status { status: 401, .. })]
    ));
}

#[test]
fn unauthorized_without_credentials_fails() {
    let t0 = Instant::now();
    let mut s = session("rtsp://cam/s", ClientTransport::Tcp, t0);
    feed(
        &mut s,
        &resp(
            "401 Unauthorized",
            &["CSeq: 1", "WWW-Authenticate: Basic realm=\"x\""],
            "",
        ),
        t0,
    );
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::Failed(ClientError::Status {
            method: "OPTIONS".into(),
            status: 401,
            reason: "Unauthorized".into()
        })]
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn play_udp_with_quirky_camera() {
    let t0 = Instant::now();
    let mut s = session(
        "rtsp://10.1.1.1/media",
        ClientTransport::Udp { rtp_port: 5000 },
        t0,
    );
    one(&mut s);
    // OPTIONS not implemented: carried on (quirk).
    feed(&mut s, &resp("501 Not Implemented", &["CSeq: 1"], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.method, Method::Describe);
    // Content-Base without trailing slash; one absolute control; \n endings.
    let sdp = "v=0\nm=video 0 RTP/AVP 96\na=control:video\nm=audio 0 RTP/AVP 8\na=control:rtsp://10.1.1.1/media/audio\n";
    feed(
        &mut s,
        &resp(
            "200 OK",
            &["CSeq: 2", "Content-Base: rtsp://10.1.1.1/media"],
            sdp,
        ),
        t0,
    );
    let ev = events(&mut s);
    assert!(
        matches!(&ev[0], ClientEvent::Described { controls, base, .. }
        if base == "rtsp://10.1.1.1/media" && controls == &["rtsp://10.1.1.1/media/video".to_string(), "rtsp://10.1.1.1/media/audio".to_string()])
    );
    let r = one(&mut s);
    assert_eq!(r.uri, "rtsp://10.1.1.1/media/video");
    assert_eq!(
        r.headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=5000-5001")
    );
    // Reordered params, decimal ssrc, trailing ';', Session with trailing spaces and no timeout.
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 3", "Transport: RTP/AVP;server_port=6970-6971;ssrc=3735928559;client_port=5000-5001;unicast;", "Session: 7F3A  "], ""),
        t0,
    );
    let r = one(&mut s);
    assert_eq!(
        r.headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=5002-5003")
    );
    assert_eq!(r.headers.get("Session"), Some("7F3A"));
    // A different session id in the second SETUP: the latest is used.
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 4",
                "Transport: RTP/AVP;unicast;client_port=5002-5003;server_port=6972-6973;ssrc=1a",
                "Session: 8B4C;",
            ],
            "",
        ),
        t0,
    );
    let r = one(&mut s);
    assert_eq!(r.method, Method::Play);
    assert_eq!(r.uri, "rtsp://10.1.1.1/media");
    assert_eq!(r.headers.get("Session"), Some("8B4C"));
    let ev = events(&mut s);
    assert!(
        matches!(&ev[0], ClientEvent::TrackSetup { track: 0, ssrc: Some(3_735_928_559), transport } if transport.server_port == Some((6970, 6971)))
    );
    assert!(matches!(
        &ev[1],
        ClientEvent::TrackSetup {
            track: 1,
            ssrc: Some(0x1a),
            ..
        }
    ));
    // RTP-Info with hex seq and the internal address of the camera.
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 5",
                "RTP-Info: url=rtsp://192.168.0.9/media/video;seq=0x0010;rtptime=5;ssrc=DEADBEEF",
            ],
            "",
        ),
        t0,
    );
    let ev = events(&mut s);
    assert_eq!(
        ev,
        vec![ClientEvent::Playing {
            rtp_info: vec![
                Some(RtpInfo {
                    url: "rtsp://192.168.0.9/media/video".into(),
                    seq: Some(16),
                    rtptime: Some(5)
                }),
                None
            ],
            range: None,
        }]
    );
    assert_eq!(s.ssrc(0), Some(0xDEADBEEF));
    // Missing timeout: default 60 s → keep-alive at 30 s, with OPTIONS (no Public).
    assert_eq!(s.session_timeout(), Duration::from_secs(60));
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    s.handle_timeout(t0 + Duration::from_secs(30));
    let r = one(&mut s);
    assert_eq!(
        (r.method.clone(), r.uri.as_str()),
        (Method::Options, "rtsp://10.1.1.1/media")
    );
    assert_eq!(r.headers.get("Session"), Some("8B4C"));
    // UDP: RTCP is the caller's job; RTP from a publisher would be datagrams.
    s.send_rtcp(0, b"x");
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn record_tcp_and_udp() {
    let t0 = Instant::now();
    let sdp = "v=0\r\ns=pub\r\nm=video 0 RTP/AVP 96\r\na=control:streamid=0\r\n".to_string();
    let mut s = ClientSession::new(
        config(
            "rtsp://server:8554/pub",
            ClientTransport::Tcp,
            ClientMode::Record { sdp: sdp.clone() },
        ),
        t0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    one(&mut s);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.method, Method::Announce);
    assert_eq!(r.headers.get("Content-Type"), Some("application/sdp"));
    assert_eq!(&r.body[..], sdp.as_bytes());
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], ""), t0);
    let r = one(&mut s);
    assert_eq!(r.uri, "rtsp://server:8554/pub/streamid=0");
    assert_eq!(
        r.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
    // The server picks other channels: they are used.
    s.send_rtp(0, b"early"); // not set up yet: dropped
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 3",
                "Session: pub1;timeout=20",
                "Transport: RTP/AVP/TCP;unicast;interleaved=6-7;mode=record",
            ],
            "",
        ),
        t0,
    );
    let r = one(&mut s);
    assert_eq!(
        (r.method.clone(), r.uri.as_str()),
        (Method::Record, "rtsp://server:8554/pub")
    );
    assert_eq!(r.headers.get("Range"), None);
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 4", "Session: pub1"], ""),
        t0,
    );
    let ev = events(&mut s);
    assert!(
        matches!(ev.last(), Some(ClientEvent::Playing { rtp_info, range: None }) if rtp_info == &vec![None])
    );
    s.send_rtp(0, b"pkt");
    assert_eq!(s.poll_transmit().as_deref(), Some(&b"$\x06\x00\x03pkt"[..]));
    s.send_rtp(0, &vec![0u8; 70_000]); // too large: dropped
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(10)));

    // UDP publishing: RTP comes out as datagrams towards server_port.
    let mut s = ClientSession::new(
        config(
            "rtsp://server/pub",
            ClientTransport::Udp { rtp_port: 7000 },
            ClientMode::Record { sdp },
        ),
        t0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], ""), t0);
    let reqs = out_requests(&mut s);
    assert_eq!(
        reqs[2].headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=7000-7001;mode=record")
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 3",
                "Session: x",
                "Transport: RTP/AVP;unicast;client_port=7000-7001;server_port=9000-9001",
            ],
            "",
        ),
        t0,
    );
    feed(&mut s, &resp("200 OK", &["CSeq: 4"], ""), t0);
    s.send_rtp(0, b"u");
    assert_eq!(
        s.poll_datagram(),
        Some(Datagram {
            track: 0,
            kind: PacketKind::Rtp,
            destination_port: Some(9000),
            data: Bytes::from_static(b"u")
        })
    );
}

#[test]
fn keepalive_timing_with_virtual_time() {
    let t0 = Instant::now();
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    one(&mut s);
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 1",
                "Public: DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN",
            ],
            "",
        ),
        t0,
    );
    one(&mut s);
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 2"], "v=0\r\nm=video 0 RTP/AVP 96\r\n"),
        t0,
    );
    let r = one(&mut s);
    assert_eq!(r.uri, "rtsp://h/s"); // no control: the request URL
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 3", "Session: K;timeout=20"], ""),
        t0,
    );
    one(&mut s);
    let t1 = t0 + Duration::from_secs(1);
    feed(&mut s, &resp("200 OK", &["CSeq: 4"], ""), t1);
    assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(10)));
    s.handle_timeout(t1 + Duration::from_secs(9));
    assert_eq!(s.poll_transmit(), None);
    let t2 = t1 + Duration::from_secs(10);
    s.handle_timeout(t2);
    let r = one(&mut s);
    assert_eq!(
        (r.method.clone(), r.cseq()),
        (Method::GetParameter, Some(5))
    );
    assert_eq!(r.headers.get("Session"), Some("K"));
    // Pending request deadline (t2+10) coincides with the next keep-alive.
    assert_eq!(s.poll_timeout(), Some(t2 + Duration::from_secs(10)));
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 5"], ""),
        t2 + Duration::from_millis(50),
    );
    assert_eq!(s.poll_timeout(), Some(t2 + Duration::from_secs(10)));
    // GET_PARAMETER refused: falls back to OPTIONS.
    let t3 = t2 + Duration::from_secs(10);
    s.handle_timeout(t3);
    assert_eq!(one(&mut s).method, Method::GetParameter);
    feed(
        &mut s,
        &resp("405 Method Not Allowed", &["CSeq: 6"], ""),
        t3,
    );
    s.handle_timeout(t3 + Duration::from_secs(10));
    assert_eq!(one(&mut s).method, Method::Options);
    assert!(events(&mut s)
        .iter()
        .all(|e| !matches!(e, ClientEvent::Failed(_))));
    // 454 on a keep-alive ends the session.
    feed(
        &mut s,
        &resp("454 Session Not Found", &["CSeq: 7"], ""),
        t3 + Duration::from_secs(11),
    );
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Failed(ClientError::Status { status: 454, .. })]
    ));
}

#[test]
fn request_timeout_fails() {
    let t0 = Instant::now();
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    s.set_request_timeout(Duration::from_secs(5));
    one(&mut s);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    one(&mut s);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    s.handle_timeout(t0 + Duration::from_secs(4));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(
        events(&mut s),
        vec![ClientEvent::Failed(ClientError::Timeout {
            method: "DESCRIBE".into()
        })]
    );
    assert_eq!(s.poll_timeout(), None);
    // Later input is ignored.
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], ""), t0);
    assert!(events(&mut s).is_empty());
    // TEARDOWN timing out still closes.
    let mut s = until_play(t0);
    s.close();
    one(&mut s);
    s.handle_timeout(t0 + DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(events(&mut s), vec![ClientEvent::Closed]);
}

#[test]
fn close_before_setup_is_immediate() {
    let t0 = Instant::now();
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    one(&mut s);
    s.close();
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(events(&mut s), vec![ClientEvent::Closed]);
}

#[test]
fn quirk_missing_cseq_with_single_outstanding_request() {
    let t0 = Instant::now();
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    one(&mut s);
    feed(&mut s, &resp("200 OK", &[], ""), t0);
    assert_eq!(one(&mut s).method, Method::Describe);
    // Unknown CSeq: ignored.
    feed(
        &mut s,
        &resp("200 OK", &["CSeq: 99"], "v=0\r\nm=video 0 RTP/AVP 96\r\n"),
        t0,
    );
    assert!(events(&mut s).is_empty());
}

#[test]
fn quirk_server_changes_interleaved_channels_and_absolute_controls() {
    let t0 = Instant::now();
    let mut s = session("rtsp://cam/h264", ClientTransport::Tcp, t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    let sdp = "v=0\r\na=control:rtsp://cam/h264/\r\nm=video 0 RTP/AVP 96\r\na=control:rtsp://cam/h264/trackID=0?profile=1\r\nm=audio 0 RTP/AVP 0\r\na=control:rtsp://cam/h264/trackID=1?profile=1\r\n";
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], sdp), t0);
    // The server answers both SETUPs with channels of its own.
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 3",
                "Session: A",
                "Transport: RTP/AVP/TCP;unicast;interleaved=4-5",
            ],
            "",
        ),
        t0,
    );
    feed(
        &mut s,
        &resp(
            "200 OK",
            &[
                "CSeq: 4",
                "Session: A",
                "Transport: RTP/AVP/TCP;unicast;interleaved=8-9",
            ],
            "",
        ),
        t0,
    );
    let reqs = out_requests(&mut s);
    let uris: Vec<&str> = reqs.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris,
        vec![
            "rtsp://cam/h264",
            "rtsp://cam/h264",
            "rtsp://cam/h264/trackID=0?profile=1",
            "rtsp://cam/h264/trackID=1?profile=1",
            "rtsp://cam/h264/"
        ]
    );
    events(&mut s);
    s.handle_input(b"$\x04\x00\x01a$\x09\x00\x01b$\x00\x00\x01c", t0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        events(&mut s),
        vec![
            ClientEvent::Rtp {
                track: 0,
                data: Bytes::from_static(b"a")
            },
            ClientEvent::Rtcp {
                track: 1,
                data: Bytes::from_static(b"b")
            },
        ]
    );
}

#[test]
fn quirk_content_location_and_request_url_bases() {
    let t0 = Instant::now();
    let mut s = session("rtsp://cam/x", ClientTransport::Tcp, t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    feed(
        &mut s,
        &resp(
            "200 OK",
            &["CSeq: 2", "Content-Location: rtsp://cam/loc/"],
            "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:t0\r\n",
        ),
        t0,
    );
    assert!(
        matches!(events(&mut s).as_slice(), [ClientEvent::Described { base, controls, .. }] if base == "rtsp://cam/loc/" && controls == &["rtsp://cam/loc/t0".to_string()])
    );
    let mut s = session("rtsp://cam/x", ClientTransport::Tcp, t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    feed(
        &mut s,
        &resp(
            "200 OK",
            &["CSeq: 2"],
            "v=0\r\nm=video 0 RTP/AVP 96\r\na=control:t0\r\n",
        ),
        t0,
    );
    assert!(
        matches!(events(&mut s).as_slice(), [ClientEvent::Described { controls, .. }] if controls == &["rtsp://cam/x/t0".to_string()])
    );
}

#[test]
fn failures_are_reported() {
    let t0 = Instant::now();
    // DESCRIBE 404.
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    feed(&mut s, &resp("404 Not Found", &["CSeq: 2"], ""), t0);
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Failed(ClientError::Status { status: 404, .. })]
    ));
    // SDP without media.
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
    feed(&mut s, &resp("200 OK", &["CSeq: 2"], "v=0\r\n"), t0);
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Failed(ClientError::BadResponse { .. })]
    ));
    // Undecodable input.
    let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
    assert!(s.handle_input(b"HTTP/1.1 200 OK\r\n\r\n", t0).is_err());
    assert!(matches!(
        events(&mut s).as_slice(),
        [ClientEvent::Failed(ClientError::Decode(_))]
    ));
    assert!(s.handle_input(b"more", t0).is_ok());
    // Bad URLs.
    for bad in ["http://h/s", "rtsp://", "rtsp:///x", "rtsp://h/a b", "h/s"] {
        assert!(
            matches!(
                ClientSession::new(config(bad, ClientTransport::Tcp, ClientMode::Play), t0),
                Err(ClientError::InvalidUrl(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn server_requests_are_answered() {
    let t0 = Instant::now();
    let mut s = until_play(t0);
    feed(
        &mut s,
        "OPTIONS * RTSP/1.0\r\nCSeq: 9\r\n\r\nANNOUNCE rtsp://h RTSP/1.0\r\nCSeq: 10\r\n\r\n",
        t0,
    );
    assert_eq!(
        out_text(&mut s),
        "RTSP/1.0 200 OK\r\nCSeq: 9\r\n\r\nRTSP/1.0 501 Not Implemented\r\nCSeq: 10\r\n\r\n"
    );
}

/// Interleaved frames (some before the PLAY response, as several cameras
/// send) mixed with responses, split at every byte boundary and fed one byte
/// at a time, give the same events.
#[test]
fn split_input_at_every_boundary() {
    let t0 = Instant::now();
    let mut stream = Vec::new();
    stream.extend_from_slice(b"$\x00\x00\x03abc");
    stream.extend_from_slice(
        resp(
            "200 OK",
            &[
                "CSeq: 5",
                "Session: S1",
                "RTP-Info: url=rtsp://cam.example/live/trackID=1;seq=7;rtptime=9",
            ],
            "",
        )
        .as_bytes(),
    );
    stream.extend_from_slice(b"$\x01\x00\x02rr$\x02\x00\x00$\x03\x00\x01z");
    let reference = {
        let mut s = until_play(t0);
        s.handle_input(&stream, t0)
            .unwrap_or_else(|e| panic!("{e}"));
        events(&mut s)
    };
    assert_eq!(reference.len(), 5, "{reference:?}");
    assert!(
        matches!(&reference[1], ClientEvent::Playing { rtp_info, .. } if rtp_info[0].as_ref().and_then(|i| i.seq) == Some(7))
    );
    for k in 0..=stream.len() {
        let mut s = until_play(t0);
        s.handle_input(&stream[..k], t0)
            .unwrap_or_else(|e| panic!("{e}"));
        s.handle_input(&stream[k..], t0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events(&mut s), reference, "split at {k}");
    }
    let mut s = until_play(t0);
    for b in &stream {
        s.handle_input(std::slice::from_ref(b), t0)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(events(&mut s), reference);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes at any stage never panic.
        #[test]
        fn handle_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6), stage in 0u8..3) {
            let t0 = Instant::now();
            let mut s = match stage {
                0 => session("rtsp://h/s", ClientTransport::Tcp, t0),
                1 => until_play(t0),
                _ => {
                    let mut s = until_play(t0);
                    feed(&mut s, &resp("200 OK", &["CSeq: 5"], ""), t0);
                    s
                }
            };
            for c in &chunks {
                let _ = s.handle_input(c, t0);
                s.handle_timeout(t0 + Duration::from_secs(1));
            }
            while s.poll_event().is_some() {}
            while s.poll_transmit().is_some() {}
        }

        /// Responses with arbitrary header values never panic.
        #[test]
        fn arbitrary_header_values_never_panic(transport in "[ -~]{0,60}", session_v in "[ -~]{0,30}", rtp_info in "[ -~]{0,80}", base in "[ -~]{0,40}") {
            let t0 = Instant::now();
            let mut s = session("rtsp://h/s", ClientTransport::Tcp, t0);
            feed(&mut s, &resp("200 OK", &["CSeq: 1"], ""), t0);
            let _ = s.handle_input(resp("200 OK", &["CSeq: 2", &format!("Content-Base: {base}")], SDP2).as_bytes(), t0);
            let _ = s.handle_input(resp("200 OK", &["CSeq: 3", &format!("Transport: {transport}"), &format!("Session: {session_v}")], "").as_bytes(), t0);
            let _ = s.handle_input(resp("200 OK", &["CSeq: 4"], "").as_bytes(), t0);
            let _ = s.handle_input(resp("200 OK", &["CSeq: 5", &format!("RTP-Info: {rtp_info}")], "").as_bytes(), t0);
            while s.poll_event().is_some() {}
        }
    }
}
