//! The HTTP listener as an operator meets it: the `/v1` basics, problem details, access
//! with users, Basic and Bearer, the default for loopback and other addresses, metrics
//! that `promtool` accepts, HTTPS with ALPN h2, `sluice check-config`, configuration
//! layering, and schemathesis against the served OpenAPI document.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::Digest;

use common::{free_tcp_port, test_dir, wait_for, Proc, Server};

/// An answer as a client sees it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asserts an RFC 9457 problem with `status`.
    fn assert_problem(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{self:?}"
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{self:?}");
        assert!(p["title"].is_string() && p["type"].is_string(), "{self:?}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One HTTP/1.1 request on a fresh connection.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    runtime().block_on(async {
        let stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await
                .expect("connect timeout")
                .expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            send.send_request(req.body(Full::new(Bytes::from(body))).expect("request")),
        )
        .await
        .expect("answer timeout")
        .expect("answer");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    })
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], Vec::new())
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A server with its HTTP listener on a free loopback port, `http_extra` added to `[http]`.
fn start(http_extra: &str, more: &str) -> (Server, SocketAddr) {
    let port = free_tcp_port();
    let server = Server::start(&format!(
        "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{port}\"\n{http_extra}\n{more}"
    ));
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn api_basics_and_problem_details_on_loopback() {
    let (server, http) = start("max_body_bytes = 2048\nrequest_timeout = \"1s\"", "");
    let info = get(http, "/v1/info");
    assert_eq!(info.status, 200, "{info:?}");
    assert_eq!(info.header("content-type"), "application/json");
    let v = info.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["uptime_seconds"].as_f64().is_some_and(|u| u >= 0.0),
        "{v}"
    );
    let listeners = v["listeners"].to_string();
    assert!(
        listeners.contains(&format!("\"rtsp\",\"address\":\"{}\"", server.addr()))
            || listeners.contains(&server.addr().to_string()),
        "{listeners}"
    );
    assert!(listeners.contains(&http.to_string()), "{listeners}");
    for path in ["/v1/health", "/v1/ready"] {
        let r = get(http, path);
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (200, "ok".into()),
            "{path}"
        );
    }
    get(http, "/v1/nothing-here").assert_problem(404);
    get(http, "/v1").assert_problem(404);
    let r = request(http, "DELETE", "/v1/info", &[], Vec::new());
    r.assert_problem(405);
    assert!(r.header("allow").contains("GET"), "{r:?}");
    let r = request(
        http,
        "POST",
        "/v1/info",
        &[("content-type", "application/json")],
        vec![b'x'; 4096],
    );
    r.assert_problem(413);
    // A client that never finishes its request head is dropped after request_timeout.
    {
        use std::io::{Read, Write};
        let mut slow = std::net::TcpStream::connect(http).unwrap();
        slow.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t = std::time::Instant::now();
        let mut buf = [0u8; 512];
        let n = slow.read(&mut buf).unwrap_or(0);
        let said = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            t.elapsed() < Duration::from_secs(4) && (n == 0 || said.contains(" 408 ")),
            "slow client kept for {:?}: {said:?}",
            t.elapsed()
        );
    }
    let doc = get(http, "/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/v1/info",
        "/v1/health",
        "/v1/ready",
        "/v1/config",
        "/metrics",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} undocumented");
    }
    // Anonymous access is declared, next to Basic and Bearer.
    let security = doc["paths"]["/v1/info"]["get"]["security"].to_string();
    assert!(
        security.contains("{}") && security.contains("basic") && security.contains("bearer"),
        "{security}"
    );
}

#[test]
fn users_basic_bearer_401_and_403() {
    let token = "tok-0123456789";
    let hash = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let (_server, http) = start(
        "",
        &format!(
            r#"
[[users]]
user = "ops"
pass = "ops-pw"
permissions = [{{ action = "api_write" }}, {{ action = "metrics" }}]

[[users]]
user = "viewer"
pass = "viewer-pw"
permissions = [{{ action = "api" }}, {{ action = "read" }}]

[[http.tokens]]
user = "viewer"
hash = "sha256:{hash}"
"#
        ),
    );
    // Probes and the document stay public; the document no longer offers anonymous access
    // where there is none.
    assert_eq!(get(http, "/v1/health").status, 200);
    let doc = get(http, "/openapi.json");
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    let info_security = doc["paths"]["/v1/info"]["get"]["security"].to_string();
    assert!(!info_security.contains("{}"), "{info_security}");
    let health_security = doc["paths"]["/v1/health"]["get"]["security"].to_string();
    assert!(health_security.contains("{}"), "{health_security}");
    // No credentials: 401 with both challenges, even from loopback once users exist.
    let r = get(http, "/v1/info");
    r.assert_problem(401);
    let challenges = r.header("www-authenticate");
    assert!(
        challenges.contains("Basic realm=") && challenges.contains("Bearer realm="),
        "{challenges}"
    );
    get(http, "/metrics").assert_problem(401);
    let with = |method: &str, path: &str, auth: &str| {
        request(http, method, path, &[("authorization", auth)], Vec::new())
    };
    assert_eq!(
        with("GET", "/v1/info", &basic("viewer", "viewer-pw")).status,
        200
    );
    assert_eq!(with("GET", "/v1/info", &basic("ops", "ops-pw")).status, 200);
    with("GET", "/v1/info", &basic("viewer", "wrong")).assert_problem(401);
    assert_eq!(
        with("GET", "/v1/info", &format!("Bearer {token}")).status,
        200
    );
    with("GET", "/v1/info", "Bearer not-the-token").assert_problem(401);
    // Read-only API rights: 403 on writes; no metrics right: 403 on /metrics.
    with("POST", "/v1/info", &basic("viewer", "viewer-pw")).assert_problem(403);
    with("DELETE", "/v1/config", &format!("Bearer {token}")).assert_problem(403);
    with(
        "DELETE",
        "/v1/config/paths/cam",
        &basic("viewer", "viewer-pw"),
    )
    .assert_problem(403);
    with("POST", "/v1/config/reload", &format!("Bearer {token}")).assert_problem(403);
    with("GET", "/metrics", &basic("viewer", "viewer-pw")).assert_problem(403);
    // api_write gets past access (and meets the method check: no write routes yet).
    with("POST", "/v1/info", &basic("ops", "ops-pw")).assert_problem(405);
    let m = with("GET", "/metrics", &basic("ops", "ops-pw"));
    assert_eq!(m.status, 200, "{m:?}");
}

#[test]
fn metrics_pass_promtool_and_speak_openmetrics_when_asked() {
    let (server, http) = start("", "");
    // A real reader of the built-in demo stream, so the egress latency has samples.
    let read = common::ffmpeg_read(
        &server.url("demo"),
        "tcp",
        Duration::from_secs(2),
        &server.dir,
    );
    assert!(read.video_frames > 0, "{}", read.tail());
    // Some traffic first, so the request counter has series.
    get(http, "/v1/info");
    get(http, "/v1/nope");
    let m = get(http, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .starts_with("text/plain; version=0.0.4"),
        "{m:?}"
    );
    for want in [
        "# TYPE sluice_build_info gauge",
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE sluice_egress_latency_seconds histogram",
        "sluice_http_requests_total{route=\"/v1/info\",method=\"GET\",status=\"200\"} 1",
        "sluice_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
    ] {
        assert!(m.body.contains(want), "missing {want:?}:\n{}", m.body);
    }
    let latency_count: u64 = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("sluice_egress_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(latency_count > 0, "no egress latency recorded:\n{}", m.body);
    let file = server.dir.join("metrics.txt");
    std::fs::write(&file, &m.body).unwrap();
    let out = Command::new("promtool")
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
    let om = request(
        http,
        "GET",
        "/metrics",
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        Vec::new(),
    );
    assert!(
        om.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{om:?}"
    );
    assert!(om.body.trim_end().ends_with("# EOF"), "{}", om.body);
}

#[test]
fn https_negotiates_h2_with_alpn() {
    let dir = test_dir("https");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let (_server, http) = start(
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            dir.join("c.pem").display().to_string(),
            dir.join("k.pem").display().to_string()
        ),
        "",
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |alpn: &[&[u8]]| {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(c))
    };
    let h2 = tls(&[b"h2", b"http/1.1"]);
    let (alpn, status, body) = runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = h2.connect(name, tcp).await.expect("TLS handshake");
        let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .uri(format!("https://localhost:{}/v1/health", http.port()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = send.send_request(req).await.expect("h2 request");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (alpn, status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((status, body.contains("\"ok\"")), (200, true), "{body}");
    // A client that only speaks HTTP/1.1 gets it.
    let h1 = tls(&[b"http/1.1"]);
    let alpn = runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let stream = h1.connect(name, tcp).await.expect("TLS handshake");
        stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
    });
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice")
}

#[test]
fn check_config_reports_file_line_and_column() {
    let dir = test_dir("check-config");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "# a commented file\n[rtsp]\nlisten = \"0.0.0.0:8554\"\n\n[http]\nlisten = \"127.0.0.1:8080\"\ncors_origins = [\"https://dash.example.com\"]\n",
    )
    .unwrap();
    let out = sluice(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let cases = [
        // A value that fails validation: the key's position.
        (
            "bad-value.toml",
            "[rtsp]\nlisten = \"0.0.0.0:8554\"\nrtp_port = 8001\n",
            "3:1",
            "rtsp.rtp_port",
        ),
        // An unknown key, indented.
        ("unknown.toml", "[http]\n  listn = \"x\"\n", "2:3", "listn"),
        // A reserved path name.
        (
            "reserved.toml",
            "[paths.metrics]\nsource = \"rtsp://cam/x\"\n",
            "1:8",
            "reserved",
        ),
        // Broken TOML.
        ("syntax.toml", "[rtsp]\nlisten = \"0.0.0.0:8554\n", "2:", ""),
    ];
    for (name, text, at, says) in cases {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        let out = sluice(&["check-config", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        let prefix = format!("{}:{at}", f.display());
        assert!(
            err.starts_with(&prefix),
            "{name}: want {prefix}…, got {err}"
        );
        assert!(err.contains(says), "{name}: {err}");
    }
}

#[test]
fn environment_and_flags_override_the_file_and_are_reported() {
    let dir = test_dir("layers");
    let rtsp = free_tcp_port();
    let http = free_tcp_port();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rtsp]\nlisten = \"127.0.0.1:{rtsp}\"\ntransports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 4096\n[log]\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["serve", "--config", cfg.to_str().unwrap()])
        .args(["--set", "http.max_body_bytes=2048"])
        .env("SLUICE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("SLUICE_LOG__LEVEL", "debug");
    let mut proc = Proc::spawn("sluice-layers", cmd, &dir);
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    });
    assert!(up.is_some(), "not listening on {addr}: {}", proc.stderr());
    let c = get(addr, "/v1/config").json();
    assert_eq!(c["values"]["http"]["listen"], format!("127.0.0.1:{http}"));
    assert_eq!(c["values"]["http"]["max_body_bytes"], 2048);
    assert_eq!(c["values"]["log"]["level"], "debug");
    assert_eq!(
        c["overridden_by_env"],
        serde_json::json!(["http.listen", "log.level"])
    );
    assert_eq!(
        c["overridden_by_flag"],
        serde_json::json!(["http.max_body_bytes"])
    );
    // The flag took effect: 3000 bytes is now too large.
    request(addr, "POST", "/v1/info", &[], vec![0; 3000]).assert_problem(413);
    proc.kill();
}

#[test]
fn without_users_other_addresses_read_but_get_401_on_writes() {
    let Some(ns) = common::Netns::new() else {
        return;
    };
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // An address of the namespace's own that is not loopback.
    run(&["-n", ns.name(), "addr", "add", "10.77.0.1/32", "dev", "lo"]);
    let http = free_tcp_port();
    let _server = Server::start_with(
        Some(&ns),
        &format!("transports = [\"tcp\"]\n[http]\nlisten = \"0.0.0.0:{http}\"\n"),
    );
    // A raw HTTP/1.1 exchange from inside the namespace, to `host`; the status code.
    let status = |host: &str, method: &str, path: &str| -> u16 {
        let script = format!(
            "exec 3<>/dev/tcp/{host}/{http}; printf '{method} {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3; head -n 1 <&3"
        );
        let out = ns
            .command("bash")
            .args(["-c", &script])
            .output()
            .expect("bash");
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line from {host}: {line:?} {out:?}"))
    };
    assert_eq!(
        status("10.77.0.1", "GET", "/v1/info"),
        200,
        "reads are open"
    );
    for (method, path) in [
        ("POST", "/v1/config/reload"),
        ("DELETE", "/v1/config/paths/cam"),
        ("POST", "/v1/info"),
    ] {
        assert_eq!(
            status("10.77.0.1", method, path),
            401,
            "{method} {path} needs credentials"
        );
    }
    // Loopback passes access: the reload runs (and /v1/info takes no POST).
    assert_eq!(status("127.0.0.1", "POST", "/v1/config/reload"), 200);
    assert_eq!(status("127.0.0.1", "POST", "/v1/info"), 405);
}

/// Where scripts/install-test-deps.sh puts schemathesis.
fn schemathesis() -> String {
    let venv =
        std::env::var("SCHEMATHESIS_VENV").unwrap_or_else(|_| "/opt/sluice-test-venv".into());
    format!("{venv}/bin/schemathesis")
}

/// How schemathesis is told what the schema cannot say: a schema-valid change of a
/// path's configuration may still be refused for what only the server knows (a source
/// file that does not exist, a source URL it cannot use: 422; an `If-Match` naming
/// another version: 412). Every other check stays as it is.
const SCHEMATHESIS_TOML: &str = r#"
[[operations]]
include-path-regex = "^/v1/config/paths/"
checks = { positive_data_acceptance = { expected-statuses = ["2xx", "401", "403", "404", "409", "412", "422"] } }
"#;

/// Runs schemathesis with all checks and phases against `http`'s document, inside `ns`
/// with the server (fuzzed path sources must reach nothing beyond that namespace's
/// loopback); `extra` arguments (credentials) added.
fn run_schemathesis(ns: &common::Netns, http: SocketAddr, dir: &std::path::Path, extra: &[&str]) {
    std::fs::write(dir.join("schemathesis.toml"), SCHEMATHESIS_TOML).expect("schemathesis.toml");
    let mut cmd = ns.command(schemathesis());
    cmd.args([
        "run",
        &format!("http://{http}/openapi.json"),
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        "42",
        "--max-examples",
        "100",
        "--no-color",
        // Every warning but missing test data: ids of sessions that do not exist answer
        // 404, as they should (kicking is tested with real sessions in http_paths.rs).
        "--warnings",
        "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,\
         unused_openapi_auth,unsupported_regex,method_not_allowed,constants_extraction,\
         unmatched_filter,unresolvable_reference,low_valid_rate,rate_limited,\
         dictionary_mismatch,timeout_units",
    ])
    .args(extra)
    .env("SCHEMATHESIS_TELEMETRY", "false")
    .current_dir(dir)
    .stdin(Stdio::null());
    let out = cmd
        .output()
        .expect("schemathesis (scripts/install-test-deps.sh installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    // Every generated case passed (warnings, such as test data schemathesis could not
    // find, are not failures); a failure makes the exit status non-zero.
    let cases = said
        .lines()
        .skip_while(|l| !l.contains("Test cases:"))
        .nth(1)
        .unwrap_or("");
    assert!(
        out.status.success()
            && (said.contains("No issues found")
                || (cases.contains("passed") && !cases.contains("failed"))),
        "schemathesis {extra:?}:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Open API 3.1"), "{said}");
}

#[test]
fn schemathesis_finds_nothing_in_the_served_document() {
    let Some(ns) = common::Netns::new() else {
        return;
    };
    let start_in_ns = |more: &str| {
        let port = free_tcp_port();
        let server = Server::start_with(
            Some(&ns),
            // With recording on, so that its /v1/recordings routes are in the document.
            &format!(
                "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{port}\"\n{more}\n[record]\ndir = \"{}\"\n",
                common::test_dir("schemathesis-rec").display()
            ),
        );
        (server, SocketAddr::from(([127, 0, 0, 1], port)))
    };
    // The default: anonymous loopback access.
    let (server, http) = start_in_ns("");
    run_schemathesis(&ns, http, &server.dir, &[]);
    // With users: the document asks for credentials, and schemathesis checks that
    // requests without them (or with wrong ones) are refused.
    let (server, http) = start_in_ns(
        // Its auth checks send wrong credentials on purpose: more than the default five
        // a minute would get the loopback address refused (403) for the rest of the run.
        "[auth]\nmax_failures = 100000\n\
         [[users]]\nuser = \"ops\"\npass = \"ops-pw\"\npermissions = [{ action = \"api_write\" }, { action = \"metrics\" }]\n",
    );
    run_schemathesis(&ns, http, &server.dir, &["--auth", "ops:ops-pw"]);
}

#[test]
fn a_busy_http_port_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = test_dir("http-busy");
    let cfg = dir.join("busy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rtsp]\nlisten = \"127.0.0.1:{}\"\ntransports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            free_tcp_port()
        ),
    )
    .unwrap();
    let out = sluice(&["serve", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot bind the HTTP listener") && err.contains(&port.to_string()),
        "{err}"
    );
}
