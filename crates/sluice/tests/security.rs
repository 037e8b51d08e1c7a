//! Security features against real peers: open access by default, Digest/Basic
//! authentication with ffmpeg, GStreamer and retina, per-connection nonces, the failed
//! login rate limit, hashed passwords, session theft, RTSPS with a test CA, and the
//! resource limits (connections, sessions, readers, timeouts, message sizes, spoofed UDP).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::gst::{gst_read_props, GstVideo};
use common::retina_reader::retina_read_blocking_opts;
use common::rtsp_client::{media_control_urls, Incoming, RtspClient, RtspResponse};
use common::*;
use sluice_rtsp::auth::{parse_www_authenticate, Challenge, ClientAuth, Credentials};

// Distinctive passwords, so that a grep of the server log finds any leak.
const VIEW_PW: &str = "Vw-pass-5150x";
const PUB_PW: &str = "Pb-pass-8086y";
const OTHER_PW: &str = "Ot-pass-6502z";

/// `viewer` reads `view_path`, `pub` publishes `~^live/.*$`, `other` reads `view_path`.
fn users_toml(view_path: &str) -> String {
    format!(
        r#"
[[users]]
user = "viewer"
pass = "{VIEW_PW}"
permissions = [ {{ action = "read", path = "{view_path}" }} ]

[[users]]
user = "pub"
pass = "{PUB_PW}"
permissions = [ {{ action = "publish", path = "~^live/.*$" }} ]

[[users]]
user = "other"
pass = "{OTHER_PW}"
permissions = [ {{ action = "read", path = "{view_path}" }} ]
"#
    )
}

/// `rtsp://user:pass@127.0.0.1:PORT/path`.
fn url_with(server: &Server, user: &str, pass: &str, path: &str) -> String {
    server
        .url(path)
        .replacen("rtsp://", &format!("rtsp://{user}:{pass}@"), 1)
}

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: pass.into(),
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Every `WWW-Authenticate` value of a response.
fn www_authenticate(r: &RtspResponse) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("WWW-Authenticate"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// Every challenge of a 401.
fn challenges(r: &RtspResponse) -> Vec<Challenge> {
    www_authenticate(r)
        .iter()
        .flat_map(|v| {
            parse_www_authenticate(v)
                .unwrap_or_else(|e| panic!("unparsable WWW-Authenticate {v:?}: {e:?}"))
        })
        .collect()
}

/// A raw RTSP client that answers 401 challenges with Digest when it has credentials.
struct Authed {
    c: RtspClient,
    creds: Option<Credentials>,
    auth: Option<ClientAuth>,
}

impl Authed {
    fn connect(addr: SocketAddr, user_pass: Option<(&str, &str)>) -> Authed {
        Authed {
            c: RtspClient::connect(addr).expect("connect"),
            creds: user_pass.map(|(u, p)| creds(u, p)),
            auth: None,
        }
    }

    fn req(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> RtspResponse {
        for attempt in 0..2 {
            let authz;
            let mut hs = headers.to_vec();
            if let Some(a) = &mut self.auth {
                authz = a.authorization(method, url);
                hs.push(("Authorization", &authz));
            }
            let r = self
                .c
                .request(method, url, &hs, b"")
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            match (&self.creds, r.status) {
                (Some(c), 401) if attempt == 0 => {
                    self.auth = Some(
                        ClientAuth::new(c.clone(), &challenges(&r))
                            .unwrap_or_else(|e| panic!("no usable challenge in {r:?}: {e:?}")),
                    );
                }
                _ => return r,
            }
        }
        unreachable!()
    }

    /// DESCRIBE, then SETUP of the first track over TCP interleaved 0-1.
    /// Returns (SETUP response, control URL of the first track).
    fn setup_first_track(&mut self, url: &str) -> (RtspResponse, String) {
        let r = self.req("DESCRIBE", url, &[("Accept", "application/sdp")]);
        assert_eq!(r.status, 200, "DESCRIBE {url}: {r:?}");
        let base = r.header("Content-Base").unwrap_or(url).to_string();
        let track = media_control_urls(&r.body_str(), &base)[0].clone();
        let r = self.req(
            "SETUP",
            &track,
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
        );
        (r, track)
    }
}

/// Interleaved RTP payloads (whole RTP packets) received on `channel` during `d`.
fn collect_rtp(c: &mut RtspClient, channel: u8, d: Duration) -> Vec<Vec<u8>> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    while Instant::now() < until {
        match c.next_incoming(Duration::from_millis(50)) {
            Ok(Some(Incoming::Data(f))) if f.channel == channel => out.push(f.data),
            Ok(_) => {}
            Err(e) => panic!("reader connection failed: {e}"),
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// RTSPS: a test CA and a leaf certificate for 127.0.0.1, and a raw client over rustls.

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A CA that did not sign the server's certificate.
    other_ca: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        (p, key, cert)
    };
    let (ca_params, ca_key, ca_cert) = ca("Sluice test CA");
    let (_, _, other_cert) = ca("Some other CA");
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        other_ca: dir.join("other-ca.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, leaf_cert.pem()).unwrap();
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&pki.other_ca, other_cert.pem()).unwrap();
    pki
}

/// A server with RTSPS on a free port; returns it and the RTSPS port.
fn tls_server(pki: &Pki, extra: &str, require_tls: bool) -> (Server, u16) {
    let port = free_tcp_port();
    let toml = format!(
        "{extra}\n[rtsps]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\nrequire_tls = {require_tls}\n",
        pki.cert.display(),
        pki.key.display()
    );
    let server = Server::start(&toml);
    let ok = wait_for(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(ok.is_some(), "RTSPS port {port} not listening");
    (server, port)
}

fn rtsps_url(port: u16, path: &str) -> String {
    format!("rtsps://127.0.0.1:{port}/{path}")
}

/// A raw RTSP client over TLS (rustls), verifying the server against `ca`.
struct TlsRtsp {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
    cseq: u32,
}

impl TlsRtsp {
    fn connect(port: u16, ca: &Path) -> TlsRtsp {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        TlsRtsp {
            s: rustls::StreamOwned::new(conn, tcp),
            buf: Vec::new(),
            cseq: 0,
        }
    }

    fn request(&mut self, method: &str, url: &str, headers: &[(&str, &str)]) -> RtspResponse {
        self.cseq += 1;
        let mut req = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.s
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("TLS write: {e}"));
        loop {
            if let Some(r) = parse_response(&mut self.buf) {
                return r;
            }
            let mut tmp = [0u8; 16384];
            match self.s.read(&mut tmp) {
                Ok(0) => panic!("RTSPS server closed the connection during {method}"),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) => panic!("RTSPS read during {method}: {e}"),
            }
        }
    }
}

/// Takes one response off `buf` (skipping interleaved frames) when complete.
fn parse_response(buf: &mut Vec<u8>) -> Option<RtspResponse> {
    loop {
        if buf.first() == Some(&b'$') {
            if buf.len() < 4 {
                return None;
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                return None;
            }
            buf.drain(..4 + len);
            continue;
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or("").splitn(3, ' ');
        let version = status_line.next().unwrap_or("").to_string();
        let status = status_line.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let reason = status_line.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            return None;
        }
        let body = buf[end + 4..end + 4 + len].to_vec();
        buf.drain(..end + 4 + len);
        return Some(RtspResponse {
            version,
            status,
            reason,
            headers,
            body,
        });
    }
}

/// Runs `tests/scripts/gst_rtsps_read.py` (rtspsrc validating against `ca`).
/// Returns (decoded frames, output).
fn gst_py_read(
    url: &str,
    protocols: &str,
    secs: f64,
    ca: &Path,
    user_pass: Option<(&str, &str)>,
    dir: &Path,
) -> (u64, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/gst_rtsps_read.py");
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(url)
        .arg(protocols)
        .arg(secs.to_string())
        .arg(ca);
    if let Some((u, p)) = user_pass {
        cmd.arg(u).arg(p);
    }
    let mut p = Proc::spawn(&format!("gst-py-{protocols}"), cmd, dir);
    p.wait_timeout(Duration::from_secs_f64(secs + 15.0));
    p.kill();
    let out = format!("{}{}", p.stdout(), p.stderr());
    let frames = out
        .lines()
        .find_map(|l| l.strip_prefix("frames="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (frames, out)
}

/// An ffmpeg reader of an `rtsps://` URL verifying the server against `ca` where this
/// ffmpeg can (its rtsp demuxer does not forward TLS options in older versions: then it
/// reads without verification, and verification is covered by GStreamer and rustls).
fn ffmpeg_rtsps_read(
    url: &str,
    transport: &str,
    secs: Duration,
    ca: &Path,
    dir: &Path,
) -> FfmpegReport {
    let ca = ca.display().to_string();
    let extra = ["-tls_verify", "1", "-ca_file", ca.as_str()];
    let run = |extra: &[&str]| {
        common::ffmpeg::FfmpegReader::spawn_args(
            url,
            transport,
            secs.as_secs_f64() + 1.0,
            dir,
            None,
            extra,
        )
        .finish(secs + Duration::from_secs(12))
    };
    let r = run(&extra);
    if r.stderr.contains("Option tls_verify not found")
        || r.stderr.contains("Option ca_file not found")
    {
        eprintln!("note: this ffmpeg cannot verify rtsps:// certificates (no -tls_verify for the rtsp demuxer); reading unverified");
        return run(&[]);
    }
    r
}

// ---------------------------------------------------------------------------------
// 1. Open by default.

#[test]
fn open_by_default_and_logged_once() {
    let server = Server::start("");
    let url = server.url("live/open");
    let (_pubc, _) = common::rtsp_client::raw_publish(&url);
    assert_eq!(
        common::rtsp_client::describe_status(&url),
        Some(200),
        "anonymous DESCRIBE of a published path"
    );
    assert_eq!(
        common::rtsp_client::describe_status(&server.url("demo")),
        Some(200)
    );
    let log = server.log();
    let n = log
        .lines()
        .filter(|l| l.contains("no [[users]] configured") && l.contains("anyone"))
        .count();
    assert_eq!(
        n,
        1,
        "the open-access notice must be logged exactly once:\n{}",
        tail(&log, 30)
    );
}

// ---------------------------------------------------------------------------------
// 2. Digest authentication with real clients.

#[test]
fn digest_auth_with_ffmpeg_and_gstreamer_readers() {
    let dir = test_dir("sec-digest-readers");
    let server = Server::start(&users_toml("live/x"));
    let _publisher = FfmpegPublisher::start(
        &media().h264_aac,
        &url_with(&server, "pub", PUB_PW, "live/x"),
        "tcp",
        &dir,
    );
    let secs = Duration::from_secs(3);

    // ffmpeg with credentials in the URL.
    let r = ffmpeg_read(
        &url_with(&server, "viewer", VIEW_PW, "live/x"),
        "tcp",
        secs,
        &dir,
    );
    assert_ffmpeg_read(
        "ffmpeg viewer (Digest)",
        &r,
        secs,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );

    // ffmpeg without credentials: refused with 401, nothing decoded.
    let r = ffmpeg_read(&server.url("live/x"), "tcp", Duration::from_secs(1), &dir);
    assert_eq!(
        r.video_frames,
        0,
        "anonymous ffmpeg decoded frames:\n{}",
        r.tail()
    );
    assert!(
        r.stderr.contains("401"),
        "anonymous ffmpeg: expected a 401:\n{}",
        r.tail()
    );

    // GStreamer rtspsrc user-id / user-pw (UDP).
    let g = gst_read_props(
        &server.url("live/x"),
        "udp",
        GstVideo::H264,
        Duration::from_secs(5),
        &dir,
        None,
        &["user-id=viewer".to_string(), format!("user-pw={VIEW_PW}")],
    );
    assert!(
        g.video_frames >= 50,
        "GStreamer viewer decoded {} frames (want >= 50), errors {:?}:\n{}",
        g.video_frames,
        g.errors,
        g.output
    );

    let log = server.log();
    for pw in [VIEW_PW, PUB_PW] {
        assert!(
            !log.contains(pw),
            "password {pw:?} appears in the server log"
        );
    }
}

/// retina (http-auth) takes the first challenge (Digest SHA-256). The challenge carries
/// no `qop`, so retina answers in RFC 2069 style, which has no `algorithm` parameter;
/// the server then assumes MD5 and the login fails.
#[test]
fn digest_auth_with_retina_reader() {
    let dir = test_dir("sec-digest-retina");
    let server = Server::start(&users_toml("live/x"));
    let _publisher = FfmpegPublisher::start(
        &media().h264_aac,
        &url_with(&server, "pub", PUB_PW, "live/x"),
        "tcp",
        &dir,
    );
    let secs = Duration::from_secs(3);
    // retina with SessionOptions::creds (TCP).
    let opts = retina::client::SessionOptions::default().creds(Some(retina::client::Credentials {
        username: "viewer".into(),
        password: VIEW_PW.into(),
    }));
    let rr = retina_read_blocking_opts(&server.url("live/x"), RetinaTransport::Tcp, secs, opts)
        .unwrap_or_else(|e| panic!("retina viewer: {e}"));
    assert!(
        rr.video_frames >= min_frames(secs, 0.8) && rr.error.is_none(),
        "retina viewer: {rr:?}"
    );
    assert_eq!(rr.loss, 0, "retina viewer lost packets");

    assert!(
        !server.log().contains("failed login"),
        "a correct password was counted as a failed login:\n{}",
        tail(&server.log(), 20)
    );
}

#[test]
fn challenges_offer_digest_sha256_and_md5_and_no_basic_over_plain_rtsp() {
    let server = Server::start(&users_toml("demo"));
    let url = server.url("demo");
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let r = c.request("DESCRIBE", &url, &[], b"").unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let values = www_authenticate(&r);
    let digest_with = |alg: &str| {
        values.iter().any(|v| {
            v.trim_start().to_ascii_lowercase().starts_with("digest")
                && v.to_ascii_uppercase().contains(&format!("ALGORITHM={alg}"))
                || v.to_ascii_uppercase()
                    .contains(&format!("ALGORITHM=\"{alg}\""))
        })
    };
    assert!(
        digest_with("SHA-256"),
        "no Digest SHA-256 challenge: {values:?}"
    );
    assert!(digest_with("MD5"), "no Digest MD5 challenge: {values:?}");
    assert!(
        !values
            .iter()
            .any(|v| v.trim_start().to_ascii_lowercase().starts_with("basic")),
        "Basic offered over plain RTSP: {values:?}"
    );
    // Each algorithm alone logs in.
    for alg in ["SHA-256", "MD5"] {
        let mut c = RtspClient::connect(server.addr()).unwrap();
        let r = c.request("DESCRIBE", &url, &[], b"").unwrap();
        let only: Vec<Challenge> = challenges(&r)
            .into_iter()
            .filter(
                |ch| matches!(ch, Challenge::Digest { algorithm, .. } if algorithm.as_str() == alg),
            )
            .collect();
        assert_eq!(only.len(), 1, "{alg}: {r:?}");
        let mut a = ClientAuth::new(creds("viewer", VIEW_PW), &only).unwrap();
        let h = a.authorization("DESCRIBE", &url);
        let r = c
            .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
            .unwrap();
        assert_eq!(r.status, 200, "Digest {alg} login: {r:?}");
    }
    // Basic over plain RTSP is refused although the password is right.
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let r = c
        .request(
            "DESCRIBE",
            &url,
            &[("Authorization", &basic("viewer", VIEW_PW))],
            b"",
        )
        .unwrap();
    assert_eq!(
        r.status, 401,
        "Basic over plain RTSP must be refused: {r:?}"
    );
}

#[test]
fn basic_over_plain_rtsp_when_allowed() {
    let server = Server::start(&format!(
        "{}\n[auth]\nallow_basic_without_tls = true\n",
        users_toml("demo")
    ));
    let url = server.url("demo");
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let r = c.request("DESCRIBE", &url, &[], b"").unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        www_authenticate(&r)
            .iter()
            .any(|v| v.trim_start().to_ascii_lowercase().starts_with("basic")),
        "Basic not offered although allow_basic_without_tls = true: {r:?}"
    );
    let r = c
        .request(
            "DESCRIBE",
            &url,
            &[("Authorization", &basic("viewer", VIEW_PW))],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "Basic login: {r:?}");
    let r = c
        .request(
            "DESCRIBE",
            &url,
            &[("Authorization", &basic("viewer", "nope"))],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 401, "Basic with a wrong password: {r:?}");
}

#[test]
fn publish_permissions_with_ffmpeg() {
    let dir = test_dir("sec-publish");
    let server = Server::start(&users_toml("demo"));
    // pub may publish under live/.
    let _ok = FfmpegPublisher::start(
        &media().h264_aac,
        &url_with(&server, "pub", PUB_PW, "live/x"),
        "tcp",
        &dir,
    );
    assert!(
        server
            .wait_log_line(Duration::from_secs(5), |l| l.contains("record")
                && l.contains("live/x"))
            .is_some(),
        "no record of live/x in the log:\n{}",
        tail(&server.log(), 20)
    );
    // viewer may not publish; pub may not publish outside live/.
    for (who, pw, path) in [("viewer", VIEW_PW, "live/y"), ("pub", PUB_PW, "other/z")] {
        let mut p = FfmpegPublisher::spawn(
            &media().h264_aac,
            &url_with(&server, who, pw, path),
            "tcp",
            &dir,
            None,
        );
        let exited = p.proc.wait_timeout(Duration::from_secs(10));
        let err = p.proc.stderr();
        assert!(
            exited.is_some_and(|s| !s.success()),
            "{who} publishing {path}: ffmpeg should fail:\n{}",
            tail(&err, 15)
        );
        assert!(
            err.contains("403"),
            "{who} publishing {path}: expected 403 Forbidden:\n{}",
            tail(&err, 15)
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. Nonces.

#[test]
fn nonces_are_bound_to_their_connection_and_expire_with_stale() {
    let server = Server::start(&format!(
        "{}\n[auth]\nnonce_lifetime = \"2s\"\n",
        users_toml("demo")
    ));
    let url = server.url("demo");
    let mut a = RtspClient::connect(server.addr()).unwrap();
    let r = a.request("DESCRIBE", &url, &[], b"").unwrap();
    assert_eq!(r.status, 401);
    let mut auth = ClientAuth::new(creds("viewer", VIEW_PW), &challenges(&r)).unwrap();

    // A's nonce presented on connection B: unknown there.
    let mut b = RtspClient::connect(server.addr()).unwrap();
    let h = auth.authorization("DESCRIBE", &url);
    let r = b
        .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
        .unwrap();
    assert_eq!(r.status, 401, "nonce of connection A accepted on B: {r:?}");

    // On A it works.
    let h = auth.authorization("DESCRIBE", &url);
    let r = a
        .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // After the nonce lifetime: 401 with stale=true, and the new nonce works.
    std::thread::sleep(Duration::from_millis(2500));
    let h = auth.authorization("DESCRIBE", &url);
    let r = a
        .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
        .unwrap();
    assert_eq!(r.status, 401, "expired nonce accepted: {r:?}");
    assert!(
        www_authenticate(&r).iter().any(|v| v
            .to_ascii_lowercase()
            .replace([' ', '"'], "")
            .contains("stale=true")),
        "no stale=true in the challenge for an expired nonce: {r:?}"
    );
    assert!(ClientAuth::is_stale(&challenges(&r)));
    auth.update(&challenges(&r)).unwrap();
    let h = auth.authorization("DESCRIBE", &url);
    let r = a
        .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
        .unwrap();
    assert_eq!(
        r.status, 200,
        "re-authentication with the fresh nonce: {r:?}"
    );
    // An expired nonce is not a failed login.
    assert!(
        !server.log().contains("too many failed logins"),
        "stale nonces counted as failures"
    );
}

// ---------------------------------------------------------------------------------
// 4. Failed-login rate limit; passwords never logged.

#[test]
fn failed_logins_are_rate_limited_and_passwords_never_logged() {
    let server = Server::start(&format!(
        "{}\n[auth]\nmax_failures = 3\nallow_basic_without_tls = true\n",
        users_toml("demo")
    ));
    let url = server.url("demo");
    let wrong = ["Wr0ng-guess-1111", "Wr0ng-guess-2222", "Wr0ng-guess-3333"];
    let mut a = RtspClient::connect(server.addr()).unwrap();
    let mut r = a.request("DESCRIBE", &url, &[], b"").unwrap();
    assert_eq!(r.status, 401);
    // Two wrong Digest answers and one wrong Basic.
    for (i, pw) in wrong.iter().enumerate() {
        let h = if i < 2 {
            ClientAuth::new(creds("viewer", pw), &challenges(&r))
                .unwrap()
                .authorization("DESCRIBE", &url)
        } else {
            basic("viewer", pw)
        };
        r = a
            .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
            .unwrap();
        assert_eq!(r.status, 401, "wrong password #{}: {r:?}", i + 1);
    }
    // Now even the right password is refused, with Digest (fresh nonce of this
    // connection) and with Basic, and from a new connection.
    let h = ClientAuth::new(creds("viewer", VIEW_PW), &challenges(&r))
        .unwrap()
        .authorization("DESCRIBE", &url);
    let r = a
        .request("DESCRIBE", &url, &[("Authorization", &h)], b"")
        .unwrap();
    assert_eq!(
        r.status, 403,
        "right Digest password after 3 failures: {r:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut b = RtspClient::connect(server.addr()).unwrap();
    let r = b
        .request(
            "DESCRIBE",
            &url,
            &[("Authorization", &basic("viewer", VIEW_PW))],
            b"",
        )
        .unwrap();
    assert_eq!(
        r.status, 403,
        "right Basic password, 1 s later, new connection: {r:?}"
    );
    // Credentials in the request URI are not logged either.
    let uri_with_pw = url_with(&server, "viewer", VIEW_PW, "demo");
    let _ = b.request("DESCRIBE", &uri_with_pw, &[], b"");

    assert!(
        server
            .wait_log_line(Duration::from_secs(2), |l| l
                .contains("too many failed logins"))
            .is_some(),
        "no \"too many failed logins\" line:\n{}",
        tail(&server.log(), 20)
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let b64 =
        |u: &str, p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    for pw in wrong.iter().chain([&VIEW_PW]) {
        assert!(
            !log.contains(pw),
            "password {pw:?} appears in the server log"
        );
        assert!(
            !log.contains(&b64("viewer", pw)),
            "Basic credentials for {pw:?} appear (base64) in the server log"
        );
    }
}

// ---------------------------------------------------------------------------------
// 5. Hashed passwords: Basic over RTSPS only.

#[test]
fn hashed_passwords_log_in_with_basic_over_rtsps_only() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use sha2::Digest as _;
    let dir = test_dir("sec-hashed");
    let pki = make_pki(&dir);
    let (sha_pw, argon_pw) = ("Sha-pass-2718q", "Arg-pass-3141r");
    let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(sha_pw));
    let salt = SaltString::encode_b64(b"sluice-test-salt").unwrap();
    let phc = argon2::Argon2::default()
        .hash_password(argon_pw.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let users = format!(
        r#"
[[users]]
user = "hs"
pass = "sha256:{sha}"
permissions = [ {{ action = "read", path = "demo" }} ]

[[users]]
user = "ha"
pass = "argon2:{phc}"
permissions = [ {{ action = "read", path = "demo" }} ]
"#
    );
    let (server, tls_port) = tls_server(&pki, &users, false);
    let surl = rtsps_url(tls_port, "demo");

    let mut t = TlsRtsp::connect(tls_port, &pki.ca);
    let r = t.request("DESCRIBE", &surl, &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        www_authenticate(&r)
            .iter()
            .any(|v| v.trim_start().to_ascii_lowercase().starts_with("basic")),
        "Basic not offered over RTSPS: {r:?}"
    );
    for (user, pw) in [("hs", sha_pw), ("ha", argon_pw)] {
        let r = t.request("DESCRIBE", &surl, &[("Authorization", &basic(user, pw))]);
        assert_eq!(r.status, 200, "Basic {user} over RTSPS: {r:?}");
        assert!(r.body_str().contains("m=video"), "{r:?}");
    }
    let r = t.request(
        "DESCRIBE",
        &surl,
        &[("Authorization", &basic("ha", "Wrong-pw"))],
    );
    assert_eq!(r.status, 401, "argon2 user with a wrong password: {r:?}");

    // Plain RTSP: no Basic offered, and Basic refused.
    let url = server.url("demo");
    let mut c = RtspClient::connect(server.addr()).unwrap();
    for (user, pw) in [("hs", sha_pw), ("ha", argon_pw)] {
        let r = c
            .request(
                "DESCRIBE",
                &url,
                &[("Authorization", &basic(user, pw))],
                b"",
            )
            .unwrap();
        assert_eq!(
            r.status, 401,
            "Basic {user} over plain RTSP must be refused: {r:?}"
        );
        assert!(
            !www_authenticate(&r)
                .iter()
                .any(|v| v.trim_start().to_ascii_lowercase().starts_with("basic")),
            "Basic offered over plain RTSP: {r:?}"
        );
    }

    // ffmpeg prefers Digest whenever it is offered (and only computes MD5), which a
    // server holding only a hash cannot verify: hashed users cannot log in with ffmpeg,
    // even over rtsps://. It must fail cleanly with 401, not hang or crash the server.
    let r = ffmpeg_rtsps_read(
        &surl.replacen("rtsps://", &format!("rtsps://hs:{sha_pw}@"), 1),
        "tcp",
        Duration::from_secs(1),
        &pki.ca,
        &dir,
    );
    assert_eq!(r.video_frames, 0, "{}", r.tail());
    assert!(
        r.stderr.contains("401"),
        "ffmpeg with a hashed user: {}",
        r.tail()
    );

    let log = server.log();
    for pw in [sha_pw, argon_pw] {
        assert!(
            !log.contains(pw),
            "password {pw:?} appears in the server log"
        );
    }
}

// ---------------------------------------------------------------------------------
// 6. Session theft.

#[test]
fn sessions_cannot_be_used_from_another_connection_or_user() {
    let server = Server::start(&users_toml("demo"));
    let url = server.url("demo");
    let mut a = Authed::connect(server.addr(), Some(("viewer", VIEW_PW)));
    let (r, track) = a.setup_first_track(&url);
    assert_eq!(r.status, 200, "A's SETUP: {r:?}");
    let sid = r.session_id().unwrap();

    let attempts = |c: &mut Authed| -> Vec<(String, u16)> {
        let mut out = Vec::new();
        for m in ["PLAY", "PAUSE", "TEARDOWN"] {
            let r = c.req(m, &url, &[("Session", &sid)]);
            out.push((m.to_string(), r.status));
        }
        let r = c.req(
            "SETUP",
            &track,
            &[
                ("Session", &sid),
                ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3"),
            ],
        );
        out.push(("SETUP".into(), r.status));
        out
    };
    // Unauthenticated thief: 401 (or 454).
    let mut anon = Authed::connect(server.addr(), None);
    for (m, st) in attempts(&mut anon) {
        assert!(
            st == 454 || st == 401,
            "anonymous {m} with A's session: {st}"
        );
    }
    // Authenticated as another user, and as the same user on another connection: 454.
    for (who, pw) in [("other", OTHER_PW), ("viewer", VIEW_PW)] {
        let mut thief = Authed::connect(server.addr(), Some((who, pw)));
        // Authenticate the connection first (a DESCRIBE of its own).
        let r = thief.req("DESCRIBE", &url, &[]);
        assert_eq!(r.status, 200, "{who} DESCRIBE: {r:?}");
        for (m, st) in attempts(&mut thief) {
            assert_eq!(st, 454, "{who} on another connection: {m} with A's session");
        }
    }
    // A's session still works.
    let r = a.req("PLAY", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200, "A's PLAY after the theft attempts: {r:?}");
    let got = collect_rtp(&mut a.c, 0, Duration::from_secs(2));
    assert!(
        got.len() > 10,
        "A received {} RTP packets after PLAY",
        got.len()
    );
    let r = a.req("TEARDOWN", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200, "A's TEARDOWN: {r:?}");
}

// ---------------------------------------------------------------------------------
// 7. RTSPS.

#[test]
fn rtsps_publish_and_read_with_ffmpeg() {
    let dir = test_dir("sec-rtsps-ffmpeg");
    let pki = make_pki(&dir);
    let (server, tls_port) = tls_server(&pki, "", false);
    // ffmpeg publishes over rtsps:// ...
    let _publisher = FfmpegPublisher::start(
        &media().h264_aac,
        &rtsps_url(tls_port, "live/s"),
        "tcp",
        &dir,
    );
    let secs = Duration::from_secs(3);
    // ... a plain reader reads it ...
    let r = ffmpeg_read(&server.url("live/s"), "tcp", secs, &dir);
    assert_ffmpeg_read(
        "plain reader of an RTSPS publisher",
        &r,
        secs,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    // ... and an rtsps:// reader (ffmpeg runs RTSPS media interleaved in the TLS
    // connection whatever -rtsp_transport says).
    for transport in ["tcp", "udp"] {
        let r = ffmpeg_rtsps_read(
            &rtsps_url(tls_port, "live/s"),
            transport,
            secs,
            &pki.ca,
            &dir,
        );
        assert_ffmpeg_read(
            &format!("ffmpeg rtsps:// reader (-rtsp_transport {transport})"),
            &r,
            secs,
            MIN_RATIO,
            "h264",
            Some("aac"),
        );
    }
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("connect") && l.contains("tls=true")),
        "no TLS connection in the log"
    );
}

#[test]
fn rtsps_gstreamer_validates_the_test_ca_over_tcp_and_udp() {
    let dir = test_dir("sec-rtsps-gst");
    let pki = make_pki(&dir);
    let (server, tls_port) = tls_server(&pki, "", false);
    let url = rtsps_url(tls_port, "demo");
    for protocols in ["tcp", "udp"] {
        let (frames, out) = gst_py_read(&url, protocols, 4.0, &pki.ca, None, &dir);
        assert!(
            frames >= 50,
            "GStreamer rtsps:// ({protocols}) with the test CA decoded {frames} frames:\n{}",
            tail(&out, 20)
        );
    }
    // The UDP read really used UDP media with the control connection over TLS.
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("setup (play)") && l.contains("RTP/AVP;unicast;client_port=")),
        "no UDP SETUP in the log:\n{}",
        tail(&server.log(), 30)
    );
    // A CA that did not sign the server certificate: the handshake fails.
    let (frames, out) = gst_py_read(&url, "tcp", 3.0, &pki.other_ca, None, &dir);
    assert_eq!(
        frames, 0,
        "GStreamer accepted a certificate from an unknown CA:\n{out}"
    );
    assert!(out.contains("error="), "expected a GStreamer error:\n{out}");
}

#[test]
fn require_tls_refuses_plain_rtsp_but_answers_options() {
    let dir = test_dir("sec-require-tls");
    let pki = make_pki(&dir);
    let (server, tls_port) = tls_server(&pki, "", true);
    let url = server.url("demo");
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let r = c.request("OPTIONS", &url, &[], b"").unwrap();
    assert_eq!(r.status, 200, "OPTIONS over plain RTSP: {r:?}");
    let r = c.request("DESCRIBE", &url, &[], b"").unwrap();
    assert_eq!(
        r.status, 403,
        "DESCRIBE over plain RTSP with require_tls: {r:?}"
    );
    assert!(
        server
            .wait_log_line(Duration::from_secs(2), |l| l.contains("403")
                && l.to_ascii_lowercase().contains("rtsps"))
            .is_some(),
        "the refusal log line does not mention rtsps:\n{}",
        tail(&server.log(), 10)
    );
    // Over RTSPS everything works.
    let mut t = TlsRtsp::connect(tls_port, &pki.ca);
    let r = t.request("DESCRIBE", &rtsps_url(tls_port, "demo"), &[]);
    assert_eq!(r.status, 200, "DESCRIBE over RTSPS: {r:?}");
    let r = ffmpeg_read(&url, "tcp", Duration::from_secs(1), &dir);
    assert_eq!(
        r.video_frames, 0,
        "ffmpeg read over plain RTSP with require_tls"
    );
}

#[test]
fn require_tls_refusal_tells_the_client_to_use_rtsps() {
    let dir = test_dir("sec-require-tls-msg");
    let pki = make_pki(&dir);
    let (server, _tls_port) = tls_server(&pki, "", true);
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let r = c
        .request("DESCRIBE", &server.url("demo"), &[], b"")
        .unwrap();
    assert_eq!(r.status, 403);
    let text = format!("{} {:?} {}", r.reason, r.headers, r.body_str()).to_ascii_lowercase();
    assert!(
        text.contains("rtsps"),
        "the 403 response does not mention rtsps: {r:?}"
    );
}

// ---------------------------------------------------------------------------------
// 8. Limits.

#[test]
fn connections_per_ip_are_limited() {
    let server = Server::start("[limits]\nmax_connections_per_ip = 5\n");
    let url = server.url("demo");
    // Let the harness's readiness probe connection be released.
    std::thread::sleep(Duration::from_millis(300));
    let mut open: Vec<RtspClient> = (0..5)
        .map(|i| {
            let mut c = RtspClient::connect(server.addr()).unwrap();
            let r = c.request("OPTIONS", &url, &[], b"").unwrap();
            assert_eq!(r.status, 200, "connection {i}: {r:?}");
            c
        })
        .collect();
    let mut sixth = RtspClient::connect(server.addr()).unwrap();
    let _ = sixth.send_raw(format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes());
    let t0 = Instant::now();
    assert!(
        sixth.wait_closed(Duration::from_secs(2)),
        "the 6th connection was not closed"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "6th connection closed only after {:?}",
        t0.elapsed()
    );
    assert!(
        server
            .wait_log_line(Duration::from_secs(2), |l| l
                .contains("connection limit reached"))
            .is_some(),
        "no log line for the refused connection:\n{}",
        tail(&server.log(), 10)
    );
    // The open ones are unaffected; closing one frees a slot.
    let r = open[0].request("OPTIONS", &url, &[], b"").unwrap();
    assert_eq!(r.status, 200);
    drop(open.pop());
    let ok = wait_for(Duration::from_secs(3), || {
        let mut c = RtspClient::connect(server.addr()).ok()?;
        c.request("OPTIONS", &url, &[], b"")
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| c)
    });
    assert!(ok.is_some(), "no new connection admitted after closing one");
}

#[test]
fn readers_per_path_are_limited_with_453() {
    let server = Server::start("[limits]\nmax_readers_per_path = 2\n");
    let url = server.url("demo");
    let mut readers: Vec<(Authed, String)> = Vec::new();
    for i in 0..3 {
        let mut c = Authed::connect(server.addr(), None);
        let (r, _) = c.setup_first_track(&url);
        if i < 2 {
            assert_eq!(r.status, 200, "reader {i}: {r:?}");
            readers.push((c, r.session_id().unwrap()));
        } else {
            assert_eq!(r.status, 453, "third reader's SETUP: {r:?}");
        }
    }
    // A reader leaving frees its place.
    let (mut first, sid) = readers.remove(0);
    let r = first.req("TEARDOWN", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200);
    let mut c = Authed::connect(server.addr(), None);
    let (r, _) = c.setup_first_track(&url);
    assert_eq!(r.status, 200, "reader after a TEARDOWN: {r:?}");
}

#[test]
fn sessions_are_limited_with_503() {
    let server = Server::start("[limits]\nmax_sessions = 2\n");
    let url = server.url("demo");
    let mut keep = Vec::new();
    for i in 0..3 {
        let mut c = Authed::connect(server.addr(), None);
        let (r, _) = c.setup_first_track(&url);
        if i < 2 {
            assert_eq!(r.status, 200, "session {i}: {r:?}");
            keep.push(c);
        } else {
            assert_eq!(r.status, 503, "third session's SETUP: {r:?}");
        }
    }
}

#[test]
fn slowloris_gets_408_while_readers_keep_reading() {
    let server = Server::start("[limits]\nrequest_timeout = \"2s\"\n");
    let url = server.url("demo");
    let mut reader = Authed::connect(server.addr(), None);
    let (r, _) = reader.setup_first_track(&url);
    let sid = r.session_id().unwrap();
    let r = reader.req("PLAY", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200);
    assert!(!collect_rtp(&mut reader.c, 0, Duration::from_millis(500)).is_empty());

    // Half a request line, then one byte every 400 ms (so it is never idle).
    let mut slow = TcpStream::connect(server.addr()).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    slow.write_all(format!("DESCRIBE {url} RTS").as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut closed_at = None;
    let mut last_trickle = Instant::now();
    let mut reader_packets = 0usize;
    while t0.elapsed() < Duration::from_secs(5) {
        if last_trickle.elapsed() >= Duration::from_millis(400) {
            let _ = slow.write_all(b"P");
            last_trickle = Instant::now();
        }
        let mut tmp = [0u8; 4096];
        match slow.read(&mut tmp) {
            Ok(0) => {
                closed_at = Some(t0.elapsed());
                break;
            }
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed_at = Some(t0.elapsed());
                break;
            }
        }
        reader_packets += collect_rtp(&mut reader.c, 0, Duration::from_millis(20)).len();
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("RTSP/1.0 408"), "slowloris got {text:?}");
    let closed_at = closed_at.expect("slowloris connection not closed within 5 s");
    assert!(
        closed_at <= Duration::from_millis(3200),
        "closed after {closed_at:?}"
    );
    assert!(
        closed_at >= Duration::from_millis(1500),
        "closed too early ({closed_at:?})"
    );
    // The reader kept receiving meanwhile and still does.
    assert!(
        reader_packets > 20,
        "reader got {reader_packets} RTP packets during the slowloris"
    );
    assert!(collect_rtp(&mut reader.c, 0, Duration::from_secs(1)).len() > 5);
    assert!(server
        .wait_log_line(Duration::from_secs(1), |l| l
            .contains("request not completed in time"))
        .is_some());
}

#[test]
fn idle_connections_are_closed_but_playing_ones_are_not() {
    let server = Server::start("[limits]\nidle_timeout = \"2s\"\n");
    let url = server.url("demo");
    let mut player = Authed::connect(server.addr(), None);
    let (r, _) = player.setup_first_track(&url);
    let sid = r.session_id().unwrap();
    let r = player.req("PLAY", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200);
    let mut idle = RtspClient::connect(server.addr()).unwrap();
    let mut talked = RtspClient::connect(server.addr()).unwrap();
    assert_eq!(
        talked.request("OPTIONS", &url, &[], b"").unwrap().status,
        200
    );
    let t0 = Instant::now();
    assert!(
        idle.wait_closed(Duration::from_millis(3500)),
        "idle connection still open after 3.5 s"
    );
    let idle_closed = t0.elapsed();
    assert!(
        idle_closed >= Duration::from_millis(1500),
        "idle connection closed after only {idle_closed:?}"
    );
    assert!(
        talked.wait_closed(Duration::from_secs(1)),
        "connection idle after OPTIONS still open"
    );
    // The player has sent nothing since PLAY for as long: it keeps receiving.
    let got = collect_rtp(&mut player.c, 0, Duration::from_secs(3));
    assert!(
        got.len() > 20,
        "playing connection got {} packets after the idle timeout",
        got.len()
    );
    let r = player.req("GET_PARAMETER", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn oversized_heads_get_400_and_bodies_413() {
    let server = Server::start("[limits]\nmax_head_bytes = 4096\nmax_body_bytes = 2048\n");
    let url = server.url("demo");
    // Below the limit: fine.
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let pad = "a".repeat(3000);
    let r = c.request("OPTIONS", &url, &[("X-Pad", &pad)], b"").unwrap();
    assert_eq!(r.status, 200, "3 KB head: {r:?}");
    // A 5 KB head: 400 and a close.
    let mut c = RtspClient::connect(server.addr()).unwrap();
    let pad = "a".repeat(5000);
    let r = c.request("OPTIONS", &url, &[("X-Pad", &pad)], b"").unwrap();
    assert_eq!(r.status, 400, "5 KB head: {r:?}");
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "not closed after 400"
    );
    // A body over max_body_bytes: 413 (announced by Content-Length; the server need
    // not wait for the body).
    let mut c = RtspClient::connect(server.addr()).unwrap();
    c.send_raw(
        format!(
            "ANNOUNCE {} RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: 4096\r\n\r\n",
            server.url("live/big")
        )
        .as_bytes(),
    )
    .unwrap();
    let r = c.read_response(Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 413, "4 KB body: {r:?}");
}

#[test]
fn udp_packets_from_unexpected_sources_are_ignored() {
    let dir = test_dir("sec-udp-spoof");
    let server = Server::start("");
    let url = server.url("live/u");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "udp", &dir);
    let mut reader = Authed::connect(server.addr(), None);
    let (r, _) = reader.setup_first_track(&url);
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.session_id().unwrap();
    let r = reader.req("PLAY", &url, &[("Session", &sid)]);
    assert_eq!(r.status, 200);
    let first = collect_rtp(&mut reader.c, 0, Duration::from_millis(800));
    let sample = first
        .iter()
        .find(|p| p.len() >= 12)
        .expect("no RTP from the publisher");
    let (pt, ssrc) = (
        sample[1] & 0x7f,
        [sample[8], sample[9], sample[10], sample[11]],
    );
    let seq0 = u16::from_be_bytes([sample[2], sample[3]]);

    // Inject well-formed RTP (publisher's payload type and SSRC, plausible sequence
    // numbers) at the server's RTP and RTCP ports from a socket of our own.
    const PATTERN: &[u8] = b"SLUICE-INJECTED-PAYLOAD";
    let inj = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_to: SocketAddr = ([127, 0, 0, 1], server.rtp_port).into();
    let rtcp_to: SocketAddr = ([127, 0, 0, 1], server.rtp_port + 1).into();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let injector = std::thread::spawn(move || {
        let mut seq = seq0.wrapping_add(5);
        let mut n = 0u32;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let mut p = vec![0x80, 0x80 | pt];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(n * 3600).to_be_bytes());
            p.extend_from_slice(&ssrc);
            p.push(0x65); // an IDR NAL header
            for _ in 0..20 {
                p.extend_from_slice(PATTERN);
            }
            let _ = inj.send_to(&p, rtp_to);
            let _ = inj.send_to(&p, rtcp_to);
            seq = seq.wrapping_add(1);
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    });
    let got = collect_rtp(&mut reader.c, 0, Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = injector.join().unwrap();
    assert!(sent > 100, "injected only {sent} packets");
    let injected = got
        .iter()
        .filter(|p| p.windows(PATTERN.len()).any(|w| w == PATTERN))
        .count();
    assert_eq!(
        injected,
        0,
        "the reader received {injected} injected packets (of {} received)",
        got.len()
    );
    assert!(
        got.len() > 30,
        "reader got only {} publisher packets while spoofed packets arrived",
        got.len()
    );
}
