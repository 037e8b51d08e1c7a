//! Changing paths through the API, as an operator's tooling does: the change is written
//! into the commented TOML file in place (only the changed lines differ), applied at once,
//! kept across a restart; a stale `If-Match` gets 412, a file edited behind the server
//! 409, a source that cannot start 422 with nothing written, and `?persist=false` changes
//! only the running server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::rtsp_client::describe_status;
use common::*;

/// One HTTP/1.1 request to 127.0.0.1:`port`; status, headers and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// The `ETag` header of a response head.
fn etag(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag in {head}"))
}

#[test]
fn api_changes_edit_the_commented_file_in_place_and_survive_a_restart() {
    let port = free_tcp_port();
    let clip = media().h264_aac.display().to_string();
    let mut server = Server::start(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
         # The front door camera (operator's note).\n\
         [paths.door]\n\
         source = \"file://{clip}\"  # the test clip\n\
         loop = true\n"
    ));
    let before = std::fs::read_to_string(&server.config_path).unwrap();

    let (status, head, body) = http(port, "GET", "/v1/config/paths/door", &[], "");
    assert_eq!(status, 200, "{body}");
    let tag = etag(&head);

    // Add a path: live at once, written as new lines only.
    let put = format!("{{\"source\": \"file://{clip}\"}}");
    let (status, head, body) = http(
        port,
        "PUT",
        "/v1/config/paths/yard",
        &[("If-Match", &tag)],
        &put,
    );
    assert_eq!(status, 200, "{body}");
    let new_tag = etag(&head);
    assert_ne!(new_tag, tag);
    assert_eq!(
        describe_status(&server.url("yard")),
        Some(200),
        "applied at once"
    );
    let after = std::fs::read_to_string(&server.config_path).unwrap();
    assert!(
        after.starts_with(&before),
        "the old lines are untouched:\n{after}"
    );
    assert!(after.contains("# The front door camera (operator's note)."));
    assert!(after.contains("[paths.yard]"), "{after}");

    // Patch one key: only that line changes, its comment kept.
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/config/paths/door",
        &[("If-Match", &new_tag)],
        "{\"loop\": false}",
    );
    assert_eq!(status, 200, "{body}");
    let patched = std::fs::read_to_string(&server.config_path).unwrap();
    let changed: Vec<(&str, &str)> = after
        .lines()
        .zip(patched.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed, vec![("loop = true", "loop = false")]);
    assert_eq!(after.lines().count(), patched.lines().count());

    // A stale tag: 412, nothing written.
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/config/paths/door",
        &[("If-Match", &tag)],
        "{\"loop\": true}",
    );
    assert_eq!(status, 412, "{body}");
    assert!(
        body.contains("problem") || body.contains("\"status\":412"),
        "{body}"
    );

    // A source that cannot start: 422 naming the path, nothing written.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/config/paths/broken",
        &[],
        "{\"source\": \"file:///nonexistent/clip.mp4\"}",
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("paths.broken"), "{body}");
    assert_eq!(
        std::fs::read_to_string(&server.config_path).unwrap(),
        patched
    );

    // Memory only: live, not written.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/config/paths/temp?persist=false",
        &[],
        &put,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(describe_status(&server.url("temp")), Some(200));
    assert!(!std::fs::read_to_string(&server.config_path)
        .unwrap()
        .contains("temp"));

    // The file edited behind the server, and a change before the server saw it: 409.
    std::fs::write(&server.config_path, format!("{patched}# edited by hand\n")).unwrap();
    let (status, _, body) = http(port, "DELETE", "/v1/config/paths/yard", &[], "");
    assert_eq!(status, 409, "{body}");

    // After a restart, the written changes are there and the memory-only one is not.
    server.restart();
    assert_eq!(describe_status(&server.url("yard")), Some(200));
    assert_eq!(describe_status(&server.url("temp")), Some(404));
    let (status, _, body) = http(port, "GET", "/v1/config/paths/door", &[], "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"loop\":false"), "{body}");
    // Deleting: the path's stream ends.
    let (status, _, body) = http(port, "DELETE", "/v1/config/paths/yard", &[], "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(describe_status(&server.url("yard")), Some(404));
}
