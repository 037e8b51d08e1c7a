//! Events and hooks as an operator meets them: a webhook receiver gets a publisher's and
//! a reader's events in order, each signed; a receiver answering 503, 503, 200 gets one
//! event three times under one id and it is counted delivered once; a stuck receiver
//! leaves other clients' DESCRIBE latency alone; `/v1/events` streams the same events
//! and resumes with `Last-Event-ID`; a command hook gets the event JSON on stdin; a
//! server stopped with SIGINT tells its hooks first.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{
    ffmpeg_read, free_tcp_port, media, test_dir, wait_for, FfmpegPublisher, RtspClient, Server,
};

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
}

impl Hit {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A webhook receiver on 127.0.0.1: answers the n-th request (from 0) with
/// `answer(n)` = (status, delay before answering).
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    fn start(answer: impl Fn(usize) -> (u16, Duration) + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (h, answer) = (h.clone(), answer.clone());
                std::thread::spawn(move || serve(conn, &h, &*answer));
            }
        });
        Receiver { addr, hits }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
fn serve(conn: TcpStream, hits: &Mutex<Vec<Hit>>, answer: &dyn Fn(usize) -> (u16, Duration)) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                return;
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = {
            let mut hits = hits.lock().unwrap();
            hits.push(Hit {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            hits.len() - 1
        };
        let (status, delay) = answer(n);
        std::thread::sleep(delay);
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// HMAC-SHA256, written out from RFC 2104 (an independent check of the server's).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    let mac = Sha256::digest(&outer);
    format!(
        "sha256={}",
        mac.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A server with its HTTP listener on a free loopback port and `more` appended.
fn start(more: &str) -> (Server, SocketAddr) {
    let port = free_tcp_port();
    let server = Server::start(&format!(
        "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{port}\"\n{more}"
    ));
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A plain GET's body (HTTP/1.0: the answer ends with the connection).
fn get(http: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// A raw `/v1/events` client: a thread collects the events as they come.
struct SseClient {
    events: Arc<Mutex<Vec<Sse>>>,
    head: Arc<Mutex<String>>,
}

impl SseClient {
    fn connect(http: SocketAddr, last_event_id: Option<u64>) -> SseClient {
        let mut s = TcpStream::connect(http).expect("connect");
        let extra = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        // HTTP/1.0: the body is not chunked, the lines come as they are.
        write!(
            s,
            "GET /v1/events HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n"
        )
        .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let head = Arc::new(Mutex::new(String::new()));
        let (e, h) = (events.clone(), head.clone());
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                h.lock().unwrap().push_str(&l);
                if l.trim_end().is_empty() {
                    break;
                }
            }
            let mut cur = Sse::default();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                let l = l.trim_end_matches(['\r', '\n']);
                if l.is_empty() {
                    if !cur.event.is_empty() {
                        e.lock().unwrap().push(std::mem::take(&mut cur));
                    }
                    continue;
                }
                if let Some(v) = l.strip_prefix("id:") {
                    cur.id = v.trim().parse().ok();
                } else if let Some(v) = l.strip_prefix("event:") {
                    cur.event = v.trim().to_owned();
                } else if let Some(v) = l.strip_prefix("data:") {
                    cur.data.push_str(v.trim_start());
                }
            }
        });
        SseClient { events, head }
    }

    fn events(&self) -> Vec<Sse> {
        self.events.lock().unwrap().clone()
    }

    fn wait(&self, what: &str, pred: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
        wait_for(Duration::from_secs(20), || {
            let e = self.events();
            pred(&e).then_some(e)
        })
        .unwrap_or_else(|| {
            panic!(
                "SSE: {what}; head {:?}, got {:?}",
                self.head.lock().unwrap(),
                self.events()
            )
        })
    }
}

/// The events of `path` in `hits`, by type.
fn types_for(hits: &[Hit], path: &str) -> Vec<String> {
    hits.iter()
        .map(Hit::json)
        .filter(|v| v["path"] == path)
        .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn a_publisher_and_a_reader_reach_webhooks_sse_and_command_hooks_in_order() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO));
    let dir = test_dir("hooks-order");
    let stdin_file = dir.join("command-stdin.jsonl");
    // A short request timeout: it must not cut the event stream (only slow answers).
    let (server, http) = start(&format!(
        "request_timeout = \"1s\"\n[[hooks.webhook]]\nname = \"order\"\nurl = \"{}\"\nsecret = \"s3cret\"\n\
         events = [\"path_ready\", \"publisher_started\", \"reader_started\", \"reader_stopped\"]\n\
         [[hooks.command]]\nargv = [\"/bin/sh\", \"-c\", \"cat >> \\\"$1\\\"\", \"sh\", \"{}\"]\n\
         events = [\"reader_started\"]\n",
        receiver.url(),
        stdin_file.display()
    ));
    let sse = SseClient::connect(http, None);
    wait_for(Duration::from_secs(10), || {
        sse.head.lock().unwrap().ends_with("\r\n\r\n").then_some(())
    })
    .unwrap_or_else(|| panic!("no SSE answer: {:?}", sse.head.lock().unwrap()));
    let head = sse.head.lock().unwrap().clone();
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    let url = server.url("hooked");
    let publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    let report = ffmpeg_read(&url, "tcp", Duration::from_secs(2), &dir);
    assert!(report.video_frames > 0, "{report:?}");

    let want = [
        "path_ready",
        "publisher_started",
        "reader_started",
        "reader_stopped",
    ];
    let hits = wait_for(Duration::from_secs(20), || {
        let h = receiver.hits();
        (types_for(&h, "hooked").len() >= 4).then_some(h)
    })
    .unwrap_or_else(|| panic!("webhook got {:?}\nlog:\n{}", receiver.hits(), server.log()));
    assert_eq!(types_for(&hits, "hooked"), want);
    let mut ids = Vec::new();
    for hit in hits.iter().filter(|h| h.json()["path"] == "hooked") {
        let v = hit.json();
        assert_eq!(
            hit.headers["x-sluice-signature"],
            hmac_sha256(b"s3cret", hit.body.as_bytes())
        );
        assert_eq!(hit.headers["x-sluice-event"], v["type"].as_str().unwrap());
        assert_eq!(hit.headers["x-sluice-event-id"], v["id"].to_string());
        assert_eq!(hit.headers["content-type"], "application/json");
        ids.push(v["id"].as_u64().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let reader = hits
        .iter()
        .map(Hit::json)
        .find(|v| v["type"] == "reader_started")
        .unwrap();
    assert_eq!(reader["transport"], "tcp");
    assert_eq!(reader["protocol"], "rtsp");
    assert!(reader["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(reader["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));

    // SSE saw the same events under the same ids (and the others too).
    let seen = sse.wait("the reader's end", |e| {
        e.iter().any(|s| s.event == "reader_stopped")
    });
    let sse_ids: Vec<u64> = seen
        .iter()
        .filter(|s| want.contains(&s.event.as_str()))
        .filter(|s| serde_json::from_str::<serde_json::Value>(&s.data).unwrap()["path"] == "hooked")
        .map(|s| s.id.expect("every event has an id"))
        .collect();
    assert_eq!(sse_ids, ids);
    for s in &seen {
        let v: serde_json::Value = serde_json::from_str(&s.data).unwrap();
        assert_eq!(v["type"], s.event.as_str());
        assert_eq!(Some(v["id"].as_u64().unwrap()), s.id);
    }

    // Resuming after the publisher's start gives what followed it, nothing before.
    let again = SseClient::connect(http, Some(ids[1]));
    let resumed = again.wait("the replay", |e| {
        e.iter().any(|s| s.event == "reader_stopped")
    });
    assert_eq!(
        resumed.first().and_then(|s| s.id),
        Some(ids[1] + 1),
        "{resumed:?}"
    );
    assert!(resumed.iter().all(|s| s.id.is_some_and(|id| id > ids[1])));
    // From 0: everything the ring holds, from the first event on (the server's start,
    // and the demo path's readiness during start-up).
    let all = SseClient::connect(http, Some(0));
    let all = all.wait("the whole ring", |e| {
        e.iter().any(|s| s.event == "reader_stopped")
    });
    assert_eq!(all.first().and_then(|s| s.id), Some(1), "{all:?}");
    assert!(all.iter().any(|s| s.event == "server_started"), "{all:?}");

    // The command hook got the reader's start on its stdin.
    let line = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&stdin_file)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .unwrap_or_else(|| panic!("no command output\n{}", server.log()));
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["type"], "reader_started");
    assert_eq!(v["path"], "hooked");
    assert_eq!(v["id"].as_u64(), Some(ids[2]));

    // The publisher goes (killed: no TEARDOWN): its stop, then its path's end.
    let mut publisher = publisher;
    publisher.kill();
    let seen = sse.wait("the publisher's end", |e| {
        e.iter().any(|s| s.event == "path_not_ready")
    });
    let tail: Vec<&str> = seen
        .iter()
        .skip_while(|s| s.event != "reader_stopped")
        .skip(1)
        .map(|s| s.event.as_str())
        .collect();
    assert_eq!(tail, ["publisher_stopped", "path_not_ready"], "{seen:?}");
}

#[test]
fn a_receiver_answering_503_503_200_gets_one_event_under_one_id() {
    let receiver = Receiver::start(|n| (if n < 2 { 503 } else { 200 }, Duration::ZERO));
    let (server, http) = start(&format!(
        "[[hooks.webhook]]\nname = \"flaky\"\nurl = \"{}\"\nevents = [\"server_started\"]\n",
        receiver.url()
    ));
    let hits = wait_for(Duration::from_secs(15), || {
        let h = receiver.hits();
        (h.len() >= 3).then_some(h)
    })
    .unwrap_or_else(|| panic!("got {:?}\n{}", receiver.hits(), server.log()));
    std::thread::sleep(Duration::from_millis(500));
    let hits_after = receiver.hits();
    assert_eq!(hits_after.len(), 3, "no fourth attempt: {hits_after:?}");
    let ids: Vec<&str> = hits
        .iter()
        .map(|h| h.headers["x-sluice-event-id"].as_str())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert!(
        hits.iter().all(|h| h.body == hits[0].body),
        "the same body each time"
    );
    assert!(
        hits.iter()
            .all(|h| !h.headers.contains_key("x-sluice-signature")),
        "no secret: unsigned"
    );
    let metrics = get(http, "/metrics");
    // Without Accept: text/event-stream, /v1/events is a poll of the ring.
    let polled = get(http, "/v1/events");
    let body = polled.split("\r\n\r\n").nth(1).unwrap_or("");
    let list: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {polled}"));
    assert!(
        list["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v["type"] == "server_started")),
        "{list}"
    );
    assert_eq!(list["missed"], 0);
    for want in [
        "sluice_hook_deliveries_total{target=\"flaky\",outcome=\"delivered\"} 1",
        "sluice_hook_deliveries_total{target=\"flaky\",outcome=\"retried\"} 2",
        "sluice_hook_deliveries_total{target=\"flaky\",outcome=\"failed\"} 0",
        "sluice_hook_deliveries_total{target=\"flaky\",outcome=\"dropped\"} 0",
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }
    // The family passes promtool like the rest.
    let body = metrics.split("\r\n\r\n").nth(1).unwrap_or("");
    let file = server.dir.join("metrics.txt");
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (scripts/install-test-deps.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// A reader session on `url` (its first track over TCP): SETUP, PLAY, TEARDOWN.
fn short_session(server: &Server, url: &str) {
    let mut c = RtspClient::connect(server.addr()).expect("connect");
    let d = c
        .request("DESCRIBE", url, &[("Accept", "application/sdp")], b"")
        .expect("describe");
    let sdp = d.body_str();
    let control = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=control:"))
        .find(|c| *c != "*")
        .expect("a track control")
        .to_owned();
    let track = if control.starts_with("rtsp://") {
        control
    } else {
        format!("{url}/{control}")
    };
    let s = c
        .request(
            "SETUP",
            &track,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .expect("setup");
    let id = s.session_id().expect("session");
    c.request("PLAY", url, &[("Session", &id)], b"")
        .expect("play");
    c.request("TEARDOWN", url, &[("Session", &id)], b"")
        .expect("teardown");
}

#[test]
fn a_stuck_receiver_leaves_describe_latency_alone() {
    let receiver = Receiver::start(|_| (200, Duration::from_secs(10)));
    let (server, http) = start(&format!(
        "[[hooks.webhook]]\nname = \"stuck\"\nurl = \"{}\"\nqueue = 4\ntimeout = \"30s\"\n",
        receiver.url()
    ));
    let url = server.url("demo");
    // The receiver holds the first event; sessions fill (and overflow) its queue.
    wait_for(Duration::from_secs(10), || {
        (!receiver.hits().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("the receiver got nothing\n{}", server.log()));
    for _ in 0..10 {
        short_session(&server, &url);
    }
    let mut c = RtspClient::connect(server.addr()).expect("connect");
    let mut took: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let r = c
                .request("DESCRIBE", &url, &[("Accept", "application/sdp")], b"")
                .expect("describe");
            assert!(r.body_str().contains("m="), "{r:?}");
            t.elapsed()
        })
        .collect();
    took.sort();
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}: {took:?}");
    assert_eq!(receiver.hits().len(), 1, "still stuck on the first event");
    let metrics = get(http, "/metrics");
    let dropped = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_hook_deliveries_total{target=\"stuck\",outcome=\"dropped\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no dropped series in\n{metrics}"));
    assert!(dropped > 0, "a full queue drops: {metrics}");
}

#[test]
fn a_stopping_server_says_so_before_it_exits() {
    let receiver = Receiver::start(|_| (200, Duration::ZERO));
    let dir = test_dir("hooks-stopping");
    let (port, http) = (free_tcp_port(), free_tcp_port());
    let config = common::server::build_config(
        port,
        common::free_udp_pair(),
        common::free_udp_block(4),
        &format!(
            "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [[hooks.webhook]]\nurl = \"{}\"\nevents = [\"server_started\", \"server_stopping\"]\n",
            receiver.url()
        ),
    );
    let file = dir.join("sluice.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("serve").arg("--config").arg(&file);
    let mut proc = common::Proc::spawn("sluice-stopping", cmd, &dir);
    wait_for(Duration::from_secs(15), || {
        (!receiver.hits().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no server_started\n{}", proc.stderr()));
    proc.signal(libc::SIGINT);
    assert!(
        proc.wait_timeout(Duration::from_secs(10)).is_some(),
        "still running"
    );
    let types: Vec<String> = receiver
        .hits()
        .iter()
        .map(|h| h.json()["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        types,
        ["server_started", "server_stopping"],
        "{}",
        proc.stderr()
    );
    assert_eq!(receiver.hits()[1].json()["reason"], "signal");
}
