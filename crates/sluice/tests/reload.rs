//! Configuration reloads, as an operator does them: edit the file (in place, or as an
//! editor's atomic rename), send SIGHUP, or break the file. Added paths go live within
//! 2 s, readers of unchanged paths keep their RTP sequence, a broken file keeps the server
//! serving and the status names the line and column.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::rtsp_client::describe_status;
use common::vod_client::{seq_diff, VodSession};
use common::*;

/// `GET path` on the HTTP listener at `port`: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Waits up to `limit` for DESCRIBE of `url` to answer `want`; how long it took.
fn describe_becomes(url: &str, want: u16, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if describe_status(url) == Some(want) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The server's config with `extra` appended (a new `[paths.X]` table, say).
fn config_with(server: &Server, extra: &str) -> String {
    format!("{}\n{extra}\n", server.config)
}

#[test]
fn a_path_added_to_the_file_goes_live_while_other_readers_keep_their_sequence() {
    let http = free_tcp_port();
    let server = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n"
    ));
    let file = media().h264_aac.display().to_string();
    let mut reader = VodSession::open(&server.url("demo")).expect("open demo");
    let video = reader.video();
    assert_eq!(reader.play(&[]).status, 200);
    let added = server.url("added");
    assert_eq!(describe_status(&added), Some(404), "not configured yet");

    let path = server.config_path.clone();
    let new = config_with(
        &server,
        &format!("[paths.added]\nsource = \"file://{file}\"\n"),
    );
    let editor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::write(&path, new).expect("edit config");
        describe_becomes(&added, 200, Duration::from_secs(5))
    });
    let got = reader.collect(Duration::from_secs(5), false);
    let took = editor
        .join()
        .unwrap()
        .expect("the added path never went live");
    assert!(took < Duration::from_secs(2), "live after {took:?}");

    let seqs: Vec<u16> = got.track(video).map(|p| p.seq).collect();
    assert!(
        seqs.len() > 50,
        "demo reader got {} video packets",
        seqs.len()
    );
    let gaps: Vec<(u16, u16)> = seqs
        .windows(2)
        .filter(|w| seq_diff(w[1], w[0]) != 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.is_empty(),
        "the demo reader's sequence jumped: {gaps:?}"
    );
    let (status, body) = http_get(http, "/v1/config/reload");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true, "{body}");
    assert_eq!(v["trigger"], "file", "{body}");
}

#[test]
fn a_broken_file_keeps_the_server_serving_and_names_line_and_column() {
    let http = free_tcp_port();
    let server = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n"
    ));
    // Line 3 of the file is broken.
    let good = server.config.clone();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(2, "session_timeout = = 5");
    std::fs::write(&server.config_path, lines.join("\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let (_, body) = http_get(http, "/v1/config/reload");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["ok"] == false || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["ok"], false, "{status}");
    assert_eq!(status["line"], 3, "{status}");
    assert!(status["column"].as_u64().is_some(), "{status}");
    assert_eq!(status["failed"], 1, "{status}");
    // Still serving, on the old configuration.
    assert_eq!(describe_status(&server.url("demo")), Some(200));
    // The API's reload says so too, as a problem naming the place.
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/config/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 422"), "{out}");
    assert!(out.contains("line 3"), "{out}");
    // The metrics say the last reload failed.
    let (_, metrics) = http_get(http, "/metrics");
    assert!(
        metrics.contains("sluice_config_last_reload_successful 0"),
        "{metrics}"
    );
    // Fixed: applies again.
    std::fs::write(&server.config_path, &good).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, body) = http_get(http, "/v1/config/reload");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if v["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_and_an_editors_atomic_rename_reload_the_same_way() {
    let mut server = Server::start("[demo]\nenabled = true\npath = \"demo\"\n");
    let file = media().h264_aac.display().to_string();
    // An editor writes a new file beside the old one and renames it over it.
    let tmp = server.config_path.with_extension("toml.swp");
    std::fs::write(
        &tmp,
        config_with(
            &server,
            &format!("[paths.renamed]\nsource = \"file://{file}\"\n"),
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &server.config_path).unwrap();
    let took = describe_becomes(&server.url("renamed"), 200, Duration::from_secs(5))
        .expect("the renamed file was never applied");
    assert!(took < Duration::from_secs(2), "live after {took:?}");

    // SIGHUP: the same file re-read; a path removed from it goes away.
    std::fs::write(&server.config_path, &server.config).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        describe_becomes(&server.url("renamed"), 404, Duration::from_secs(2)).is_some(),
        "the removed path is still served"
    );
    assert!(
        server
            .wait_log_line(Duration::from_secs(2), |l| l
                .contains("configuration reloaded")
                && l.contains("sighup"))
            .is_some(),
        "no SIGHUP reload in the log"
    );
    assert_eq!(describe_status(&server.url("demo")), Some(200));
}

#[test]
fn moved_listeners_accept_on_the_new_ports_and_open_readers_go_on() {
    let http = free_tcp_port();
    let server = Server::start(&format!(
        "[demo]\nenabled = true\npath = \"demo\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n"
    ));
    let old_port = server.rtsp_port();
    let mut reader = VodSession::open(&server.url("demo")).expect("open demo");
    let video = reader.video();
    assert_eq!(reader.play(&[]).status, 200);
    let new_port = free_tcp_port();
    let new_http = free_tcp_port();
    let moved = server
        .config
        .replace(
            &format!("listen = \"127.0.0.1:{old_port}\""),
            &format!("listen = \"127.0.0.1:{new_port}\""),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{http}\""),
            &format!("listen = \"127.0.0.1:{new_http}\""),
        );
    assert_ne!(moved, server.config, "the listen line was found");
    let path = server.config_path.clone();
    let new_url = format!("rtsp://127.0.0.1:{new_port}/demo");
    let editor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        std::fs::write(&path, moved).expect("edit config");
        describe_becomes(&new_url, 200, Duration::from_secs(5))
    });
    let got = reader.collect(Duration::from_secs(4), false);
    let took = editor.join().unwrap().expect("the new port never answered");
    assert!(took < Duration::from_secs(2), "moved after {took:?}");
    // The old port takes no new connections; the reader on it went on without a gap.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old listener still accepts"
    );
    let seqs: Vec<u16> = got.track(video).map(|p| p.seq).collect();
    assert!(
        seqs.len() > 40,
        "the open reader got {} video packets",
        seqs.len()
    );
    assert!(
        seqs.windows(2).all(|w| seq_diff(w[1], w[0]) == 1),
        "the open reader's sequence jumped"
    );
    // The HTTP listener moved with it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", http)).is_err(),
        "the old HTTP listener still accepts"
    );
    let (_, body) = http_get(new_http, "/v1/config/reload");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ok"], true, "{body}");
    assert_eq!(v["restart_required"], serde_json::json!([]), "{body}");
}

/// Kubernetes mounts a ConfigMap as a symlink into a directory it swaps atomically
/// (`..data` → a new timestamped directory): the file's path never changes, what it
/// points to does. Each swap is a reload.
#[test]
fn a_configmap_style_symlink_swap_reloads() {
    let server = Server::start("[demo]\nenabled = true\npath = \"demo\"\n");
    let file = media().h264_aac.display().to_string();
    let root = server.dir.join("configmap");
    let version = |n: u32, path: &str| {
        let dir = root.join(format!("..2026_12_06_{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("sluice.toml"),
            config_with(
                &server,
                &format!("[paths.{path}]\nsource = \"file://{file}\"\n"),
            ),
        )
        .unwrap();
        // `..data` points at this version, swapped in by a rename of a new symlink.
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(dir.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    version(1, "first");
    // The server's file becomes `..data/sluice.toml`, through a symlink, atomically.
    let link = server.config_path.with_extension("link");
    std::os::unix::fs::symlink(root.join("..data").join("sluice.toml"), &link).unwrap();
    std::fs::rename(&link, &server.config_path).unwrap();
    assert!(
        describe_becomes(&server.url("first"), 200, Duration::from_secs(3)).is_some(),
        "the first version never applied"
    );
    version(2, "second");
    let took = describe_becomes(&server.url("second"), 200, Duration::from_secs(3))
        .expect("the swapped version never applied");
    assert!(took < Duration::from_secs(2), "applied after {took:?}");
    assert_eq!(
        describe_status(&server.url("first")),
        Some(404),
        "the old version's path was not removed"
    );
}
