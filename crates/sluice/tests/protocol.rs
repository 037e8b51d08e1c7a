//! RTSP protocol conformance and robustness with a raw TCP client (no
//! external tools).

mod common;

use common::rtsp_client::{describe, raw_publish, RtspClient};
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect(server: &Server) -> RtspClient {
    RtspClient::connect(server.addr()).expect("connect")
}

/// Sends raw bytes and reads the response (None if the server closed
/// without answering).
fn raw_exchange(server: &Server, bytes: &[u8]) -> Option<RtspResponse> {
    let mut c = connect(server);
    let _ = c.send_raw(bytes);
    c.read_response(Duration::from_secs(5)).ok()
}

fn assert_serves(server: &mut Server, what: &str) {
    assert!(
        server.is_running(),
        "server died after {what}\n{}",
        tail(&server.log(), 40)
    );
    let mut c = connect(server);
    let r = c
        .request("OPTIONS", &server.url("live/x"), &[], b"")
        .unwrap_or_else(|e| panic!("OPTIONS after {what}: {e}"));
    assert_eq!(r.status, 200, "OPTIONS after {what}: {r:?}");
}

#[test]
fn options_lists_public_methods_and_echoes_cseq() {
    let server = Server::start("");
    let mut c = connect(&server);
    let r = c
        .request("OPTIONS", &server.url("live/x"), &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.version, "RTSP/1.0");
    assert_eq!(r.header("CSeq"), Some("1"));
    let public = r.header("Public").expect("Public header");
    let methods: Vec<String> = public
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .collect();
    for m in [
        "OPTIONS",
        "DESCRIBE",
        "ANNOUNCE",
        "SETUP",
        "PLAY",
        "PAUSE",
        "RECORD",
        "TEARDOWN",
        "GET_PARAMETER",
        "SET_PARAMETER",
    ] {
        assert!(methods.iter().any(|x| x == m), "Public lacks {m}: {public}");
    }
    // OPTIONS * and an arbitrary CSeq value.
    let resp =
        raw_exchange(&server, b"OPTIONS * RTSP/1.0\r\nCSeq: 4242\r\n\r\n").expect("response");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("CSeq"), Some("4242"));
}

#[test]
fn unknown_method_is_501() {
    let server = Server::start("");
    let req = format!(
        "FROBNICATE {} RTSP/1.0\r\nCSeq: 7\r\n\r\n",
        server.url("live/x")
    );
    let r = raw_exchange(&server, req.as_bytes()).expect("response");
    assert_eq!(r.status, 501, "{r:?}");
    assert_eq!(r.header("CSeq"), Some("7"));
}

#[test]
fn rtsp_2_0_is_505() {
    let server = Server::start("");
    let req = format!(
        "OPTIONS {} RTSP/2.0\r\nCSeq: 3\r\n\r\n",
        server.url("live/x")
    );
    let r = raw_exchange(&server, req.as_bytes()).expect("response");
    assert_eq!(r.status, 505, "{r:?}");
}

#[test]
fn describe_unpublished_path_is_404() {
    let server = Server::start("");
    let mut c = connect(&server);
    let r = c
        .request(
            "DESCRIBE",
            &server.url("nobody/here"),
            &[("Accept", "application/sdp")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn raw_publish_is_describable() {
    let server = Server::start("");
    let url = server.url("raw/pub");
    let (_pub, _session) = raw_publish(&url);
    let mut c = connect(&server);
    let (r, controls) = describe(&mut c, &url);
    assert_eq!(r.header("Content-Type"), Some("application/sdp"));
    assert!(r.body_str().contains("H264/90000"), "{}", r.body_str());
    assert_eq!(controls.len(), 1, "{}", r.body_str());
}

#[test]
fn setup_with_garbage_transport_is_461() {
    let server = Server::start("");
    let url = server.url("raw/pub");
    let (_pub, _session) = raw_publish(&url);
    let mut c = connect(&server);
    let (_, controls) = describe(&mut c, &url);
    let r = c
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "%%garbage;;==,,")],
            b"",
        )
        .unwrap();
    assert!(r.status == 461 || r.status == 400, "{r:?}");
    // Missing Transport entirely is also an error, not a crash.
    let r = c.request("SETUP", &controls[0], &[], b"").unwrap();
    assert!((400..500).contains(&r.status), "{r:?}");
}

#[test]
fn play_with_unknown_session_is_454() {
    let server = Server::start("");
    let url = server.url("raw/pub");
    let (_pub, _session) = raw_publish(&url);
    let mut c = connect(&server);
    let r = c
        .request("PLAY", &url, &[("Session", "DEADBEEF00")], b"")
        .unwrap();
    assert_eq!(r.status, 454, "{r:?}");
}

#[test]
fn second_announce_on_busy_path_is_refused() {
    let server = Server::start("");
    let url = server.url("raw/busy");
    let (_pub, _session) = raw_publish(&url);
    let mut c = connect(&server);
    let r = c
        .request(
            "ANNOUNCE",
            &url,
            &[("Content-Type", "application/sdp")],
            rtsp_client::h264_sdp().as_bytes(),
        )
        .unwrap();
    assert!(
        !(200..300).contains(&r.status),
        "second ANNOUNCE accepted: {r:?}"
    );
}

#[test]
fn malformed_request_line_is_400_and_server_survives() {
    let mut server = Server::start("");
    let r = raw_exchange(&server, b"THIS IS NOT RTSP\r\n\r\n").expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    let r = raw_exchange(&server, b"\x00\x01\x02garbage\xff\xfe\r\n\r\n").expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    // A request without CSeq.
    let r =
        raw_exchange(&server, b"OPTIONS rtsp://127.0.0.1/x RTSP/1.0\r\n\r\n").expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    // A bad CSeq value.
    let r = raw_exchange(
        &server,
        b"OPTIONS rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: one\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    // A body over the limit is refused before it is read.
    let r = raw_exchange(
        &server,
        b"ANNOUNCE rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: 7\r\nContent-Type: application/sdp\r\nContent-Length: 99999999\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("CSeq"), Some("7"), "{r:?}");
    assert_serves(&mut server, "malformed request lines");
}

#[test]
fn oversized_head_is_rejected_and_server_survives() {
    let mut server = Server::start("");
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("OPTIONS {} RTSP/1.0\r\nCSeq: 1\r\n", server.url("live/x")).into_bytes();
    for i in 0..1200 {
        req.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert!(req.len() > 64 * 1024);
    // The server may close mid-write: ignore write errors.
    let _ = s.write_all(&req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    if !text.is_empty() {
        assert!(
            text.starts_with("RTSP/1.0 4"),
            "oversized head answered with {text:.200}"
        );
    }
    assert_serves(&mut server, "a > 64 KiB request head");
}

#[test]
fn garbage_interleaved_frames_do_not_crash() {
    let mut server = Server::start("");
    // On a fresh connection.
    let mut c = connect(&server);
    let _ = c.send_raw(b"$\x00\x00\x08garbage!$\x05\xff\xff");
    let _ = c.send_raw(&[0x24, 0x01, 0x00, 0x03, 0xde, 0xad, 0xbe]);
    drop(c);
    // On a publisher's connection after RECORD: truncated/invalid RTP,
    // unknown channels, zero-length frames.
    let url = server.url("raw/garbage");
    let (mut p, _session) = raw_publish(&url);
    let mut junk = Vec::new();
    junk.extend_from_slice(&[b'$', 0, 0, 2, 0x80, 0x60]); // RTP header cut short
    junk.extend_from_slice(&[b'$', 0, 0, 0]); // empty frame
    junk.extend_from_slice(&[b'$', 9, 0, 4, 1, 2, 3, 4]); // unassigned channel
    junk.extend_from_slice(&[b'$', 1, 0, 4, 0xff, 0xff, 0xff, 0xff]); // bogus RTCP
    let mut rtp = vec![0x80, 0x60, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    rtp.extend_from_slice(&[0x7c, 0x85, 0xff, 0xff, 0xff]); // FU-A start with junk
    junk.extend_from_slice(&[b'$', 0, 0, rtp.len() as u8]);
    junk.extend_from_slice(&rtp);
    for _ in 0..50 {
        let _ = p.send_raw(&junk);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_serves(&mut server, "garbage interleaved frames");
    drop(p);
    assert_serves(&mut server, "garbage publisher disconnect");
}

/// Paths whose first segment the HTTP listener serves (`v1`, `metrics`, ...) cannot be
/// published: the same name must not mean a stream over RTSP and the API over HTTP.
#[test]
fn publishing_to_a_name_the_http_listener_reserves_is_refused() {
    let server = Server::start("");
    for path in ["v1/cam", "metrics", "openapi.json", "static/x"] {
        let url = server.url(path);
        let mut c = RtspClient::connect(common::rtsp_client::addr_of(&url).expect("addr"))
            .expect("connect");
        let r = c
            .request(
                "ANNOUNCE",
                &url,
                &[("Content-Type", "application/sdp")],
                common::rtsp_client::h264_sdp().as_bytes(),
            )
            .expect("ANNOUNCE");
        assert_eq!(r.status, 403, "ANNOUNCE {path}: {r:?}");
    }
    // A name that merely contains one is fine.
    let (_publisher, _) = raw_publish(&server.url("cams/metrics"));
}
