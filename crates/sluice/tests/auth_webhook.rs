//! The authorization webhook, as a deployment that keeps its users elsewhere uses it: an
//! HTTP endpoint (a small server in the test) decides who may read what; real clients
//! (ffprobe) authenticate with Basic; no answer fails closed, or open when configured.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::rtsp_client::describe_status;
use common::*;

/// An authorizer on a free loopback port: allows `alice`/`pw` to read, refuses the rest;
/// records every question's JSON.
fn authorizer() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let q: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let ok = q["user"] == "alice" && q["password"] == "pw" && q["action"] == "read";
            log.lock().unwrap().push(q);
            let status = if ok { "200 OK" } else { "403 Forbidden" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

#[test]
fn the_webhook_decides_who_reads_and_real_clients_authenticate() {
    let (hook, seen) = authorizer();
    let server = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n\
         [auth]\nallow_basic_without_tls = true\n\
         [auth.webhook]\nurl = \"http://127.0.0.1:{hook}/auth\"\n"
    ));
    let port = server.rtsp_port();
    // Anonymous: refused by the webhook, so asked for (Basic) credentials.
    assert_eq!(describe_status(&server.url("demo")), Some(401));
    // alice: allowed; ffprobe answers the Basic challenge and reads the stream.
    let report =
        ffprobe(&format!("rtsp://alice:pw@127.0.0.1:{port}/demo")).expect("ffprobe as alice");
    assert!(report.video().is_some(), "alice sees the video");
    // bob: refused for good.
    assert!(
        ffprobe(&format!("rtsp://bob:pw@127.0.0.1:{port}/demo")).is_err(),
        "bob was let in"
    );
    let questions = seen.lock().unwrap().clone();
    assert!(
        questions.iter().any(|q| q["user"] == "alice"
            && q["path"] == "demo"
            && q["action"] == "read"
            && q["ip"] == "127.0.0.1"
            && q["protocol"] == "rtsp"),
        "{questions:#?}"
    );
    // Cached: alice's DESCRIBE, SETUP and PLAY cost one question.
    let alice = questions.iter().filter(|q| q["user"] == "alice").count();
    assert_eq!(alice, 1, "{questions:#?}");
}

#[test]
fn no_answer_fails_closed_by_default_and_open_when_asked() {
    // Nothing listens there.
    let dead = free_tcp_port();
    let closed = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n\
         [auth.webhook]\nurl = \"http://127.0.0.1:{dead}/auth\"\ntimeout = \"500ms\"\n"
    ));
    assert_eq!(
        describe_status(&closed.url("demo")),
        Some(403),
        "no answer must refuse (and, without TLS, no Basic challenge)"
    );
    let open = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n\
         [auth.webhook]\nurl = \"http://127.0.0.1:{dead}/auth\"\ntimeout = \"500ms\"\nfail = \"open\"\n"
    ));
    assert_eq!(describe_status(&open.url("demo")), Some(200));
}
