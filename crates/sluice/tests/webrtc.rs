//! WebRTC as a WHEP/WHIP client meets it, without a browser: str0m clients (real ICE,
//! DTLS and SRTP over loopback) against the real binary, fed by ffmpeg over RTSP.
//!
//! - WHEP, H.264 + Opus 640x480: the first keyframe within a bound after DTLS, its SPS
//!   640x480, audio too; three viewers at once on the server's one UDP port; DELETE ends.
//! - A source with B-frames is refused with 406 and a reason; an H.264 + AAC source plays
//!   its video and says the audio is AAC in a header.
//! - WHIP: a str0m client publishes H.264; ffprobe sees it over RTSP and ffmpeg decodes it.
//! - VP9, AV1 and H.265 file sources reach viewers offering that codec, keyframe first;
//!   an offer without the source's codec gets 406 naming it.
//! - WHIP VP9 (GStreamer decodes it over RTSP) and AV1 (a WHEP viewer plays it).
//! - A PLI from a viewer of an RTSP source with a 10 s GOP gets the cached keyframe (with
//!   its parameter sets) again at once, at most once per 500 ms.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use common::{ffmpeg_read, ffprobe, free_tcp_port, test_dir, wait_for, Proc, Server};

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http(addr: SocketAddr, method: &str, path: &str, ctype: Option<&str>, body: &str) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        req.push_str(&format!("Content-Type: {c}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = body.to_owned();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A server with HTTP on a free loopback port and WebRTC on an OS-chosen UDP port; the
/// WebRTC port it logged.
fn start(extra: &str) -> (Server, SocketAddr, u16) {
    let port = free_tcp_port();
    let server = Server::start(&format!(
        "transports = [\"tcp\"]\n[demo]\nenabled = false\n[http]\nlisten = \"127.0.0.1:{port}\"\n[webrtc]\nudp_port = 0\n{extra}"
    ));
    let line = server
        .wait_log_line(Duration::from_secs(5), |l| {
            l.contains("WebRTC listening on UDP 127.0.0.1:")
        })
        .unwrap_or_else(|| panic!("no WebRTC listening line:\n{}", server.log()));
    let udp: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().trim_end_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (server, SocketAddr::from(([127, 0, 0, 1], port)), udp)
}

/// ffmpeg publishing a live 640x480 30 fps test pattern over RTSP/TCP: H.264 with
/// `video` args (x264), audio with `audio` args.
fn publish(server: &Server, path: &str, video: &[&str], audio: &[&str], dir: &Path) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "warning", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x480:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-g", "30", "-keyint_min", "30", "-sc_threshold", "0"])
        .args(video)
        .args(audio)
        .args(["-f", "rtsp", "-rtsp_transport", "tcp"])
        .arg(server.url(path));
    Proc::spawn(&format!("ffmpeg-{}", path.replace('/', "-")), cmd, dir)
}

/// Waits until `path` is live for WHEP (a POST no longer answers 404).
fn wait_live(server: &Server, path: &str) {
    let ok = server.wait_log_line(Duration::from_secs(15), |l| {
        l.contains("path ready") && l.contains(&format!("path={path}"))
    });
    assert!(ok.is_some(), "{path} never became ready:\n{}", server.log());
    // Let a keyframe into the GOP cache.
    std::thread::sleep(Duration::from_millis(1500));
}

fn crypto() -> Arc<str0m::crypto::CryptoProvider> {
    Arc::new(str0m::crypto::from_feature_flags())
}

/// A str0m peer on its own loopback UDP socket.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
}

impl Peer {
    fn new() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(crypto())
            .enable_pcmu(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        Peer { rtc, socket, local }
    }

    /// Offers `media` (kind and direction), POSTs the offer to `url`: the reply, and the
    /// mids in order once the answer is accepted (on 201).
    fn negotiate(
        &mut self,
        http_addr: SocketAddr,
        url: &str,
        media: &[(MediaKind, Direction)],
    ) -> (Reply, Vec<Mid>) {
        let mut api = self.rtc.sdp_api();
        let mids: Vec<Mid> = media
            .iter()
            .map(|(k, d)| api.add_media(*k, *d, None, None, None))
            .collect();
        let (offer, pending) = api.apply().expect("an offer");
        let reply = http(
            http_addr,
            "POST",
            url,
            Some("application/sdp"),
            &offer.to_sdp_string(),
        );
        if reply.status == 201 {
            let answer = SdpAnswer::from_sdp_string(&reply.body).expect("answer SDP");
            self.rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .expect("accept answer");
        }
        (reply, mids)
    }

    /// Drives the peer: sends what it must, feeds it datagrams and timeouts, hands each
    /// event to `on_event` until it returns true or `limit` passes (false then).
    fn drive(&mut self, limit: Duration, on_event: impl FnMut(&mut Rtc, Event) -> bool) -> bool {
        self.drive_with(limit, on_event, None::<fn(&mut Rtc) -> bool>)
    }

    /// As [`Peer::drive`], calling `tick` at least every 5 ms as well (true from it stops).
    fn drive_with(
        &mut self,
        limit: Duration,
        mut on_event: impl FnMut(&mut Rtc, Event) -> bool,
        mut tick: Option<impl FnMut(&mut Rtc) -> bool>,
    ) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        loop {
            if let Some(t) = tick.as_mut() {
                if t(&mut self.rtc) {
                    return true;
                }
            }
            let timeout = loop {
                match self.rtc.poll_output().expect("poll") {
                    Output::Timeout(t) => break t,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(e) => {
                        if on_event(&mut self.rtc, e) {
                            return true;
                        }
                    }
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let mut wait = timeout
                .min(deadline)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            if tick.is_some() {
                wait = wait.min(Duration::from_millis(5));
            }
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let r =
                        Receive::new(Protocol::Udp, from, self.local, &buf[..n]).expect("datagram");
                    self.rtc
                        .handle_input(Input::Receive(Instant::now(), r))
                        .expect("input");
                }
                Err(_) => {
                    self.rtc
                        .handle_input(Input::Timeout(Instant::now()))
                        .expect("timeout");
                }
            }
        }
    }
}

/// Reads ue(v) / u(n) from an RBSP.
struct Bits<'a>(&'a [u8], usize);

impl Bits<'_> {
    fn u(&mut self, n: u32) -> u32 {
        let mut v = 0;
        for _ in 0..n {
            let byte = self.0.get(self.1 / 8).copied().unwrap_or(0);
            v = (v << 1) | u32::from((byte >> (7 - self.1 % 8)) & 1);
            self.1 += 1;
        }
        v
    }
    fn ue(&mut self) -> u32 {
        let mut zeros = 0;
        while self.u(1) == 0 && zeros < 32 {
            zeros += 1;
        }
        (1u32 << zeros) - 1 + self.u(zeros)
    }
}

/// Width and height an H.264 SPS NAL unit (with its header byte) codes.
fn sps_size(nal: &[u8]) -> (u32, u32) {
    let mut rbsp = Vec::new();
    let mut zeros = 0;
    for &b in &nal[1..] {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = Bits(&rbsp, 0);
    let profile = r.u(8);
    r.u(16);
    r.ue();
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile) {
        let chroma = r.ue();
        if chroma == 3 {
            r.u(1);
        }
        r.ue();
        r.ue();
        r.u(1);
        assert_eq!(r.u(1), 0, "scaling matrices are not expected here");
    }
    r.ue();
    let poc_type = r.ue();
    if poc_type == 0 {
        r.ue();
    } else if poc_type == 1 {
        r.u(1);
        r.ue();
        r.ue();
        let n = r.ue();
        for _ in 0..n {
            r.ue();
        }
    }
    r.ue();
    r.u(1);
    let w_mbs = r.ue() + 1;
    let h_units = r.ue() + 1;
    let frame_mbs_only = r.u(1);
    if frame_mbs_only == 0 {
        r.u(1);
    }
    r.u(1);
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.u(1) == 1 {
        cl = r.ue();
        cr = r.ue();
        ct = r.ue();
        cb = r.ue();
    }
    let w = w_mbs * 16 - 2 * (cl + cr);
    let h = (2 - frame_mbs_only) * h_units * 16 - 2 * (ct + cb);
    (w, h)
}

/// Annex B NAL units.
fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut e = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        while e > s && data[e - 1] == 0 {
            e -= 1;
        }
        out.push(&data[s..e]);
    }
    out
}

/// What one WHEP viewer saw.
#[derive(Debug, Default)]
struct Viewed {
    status: u16,
    location: String,
    etag: String,
    audio_header: Option<String>,
    candidate_ports: Vec<u16>,
    /// From DTLS up to the first complete keyframe.
    first_keyframe_ms: Option<u128>,
    size: Option<(u32, u32)>,
    video_frames: u32,
    audio_frames: u32,
    /// Video frames whose first slice is a B slice.
    b_frames: u32,
}

/// Whether an Annex B access unit's first slice is a B slice.
fn is_b_frame(nals: &[&[u8]]) -> bool {
    nals.iter()
        .find(|n| n.first().is_some_and(|b| matches!(b & 0x1f, 1 | 5)))
        .is_some_and(|n| {
            let mut r = Bits(&n[1..], 0);
            r.ue();
            r.ue() % 5 == 1
        })
}

/// A WHEP viewer of `path` for `watch`: what it saw, and its DELETE's status.
fn view(http_addr: SocketAddr, path: &str, watch: Duration) -> (Viewed, u16) {
    let mut peer = Peer::new();
    let (reply, mids) = peer.negotiate(
        http_addr,
        &format!("/{path}/whep"),
        &[
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ],
    );
    let mut v = Viewed {
        status: reply.status,
        ..Viewed::default()
    };
    if reply.status != 201 {
        return (v, 0);
    }
    v.location = reply.header("location").unwrap_or_default().to_owned();
    v.etag = reply.header("etag").unwrap_or_default().to_owned();
    v.audio_header = reply.header("x-sluice-audio").map(str::to_owned);
    v.candidate_ports = reply
        .body
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter_map(|l| l.split_whitespace().nth(5).and_then(|p| p.parse().ok()))
        .collect();
    let video_mid = mids[0];
    let mut dtls_at: Option<Instant> = None;
    let end = Instant::now() + watch;
    peer.drive(watch, |_, e| {
        match e {
            Event::Connected => dtls_at = Some(Instant::now()),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => return true,
            Event::MediaData(d) if d.mid == video_mid => {
                v.video_frames += 1;
                let nals = nal_units(&d.data);
                if is_b_frame(&nals) {
                    v.b_frames += 1;
                }
                if v.first_keyframe_ms.is_none()
                    && nals
                        .iter()
                        .any(|n| n.first().is_some_and(|b| b & 0x1f == 5))
                {
                    v.first_keyframe_ms = dtls_at.map(|t| t.elapsed().as_millis());
                    if let Some(sps) = nals
                        .iter()
                        .find(|n| n.first().is_some_and(|b| b & 0x1f == 7))
                    {
                        v.size = Some(sps_size(sps));
                    }
                }
            }
            Event::MediaData(_) => v.audio_frames += 1,
            _ => {}
        }
        Instant::now() >= end
    });
    let del = http(http_addr, "DELETE", &v.location, None, "").status;
    (v, del)
}

#[test]
fn whep_starts_at_a_keyframe_for_three_viewers_on_one_port() {
    let (server, http_addr, udp) = start("");
    let dir = test_dir("webrtc-whep");
    let _ffmpeg = publish(
        &server,
        "cams/front",
        &["-profile:v", "baseline", "-bf", "0", "-tune", "zerolatency"],
        &["-c:a", "libopus", "-b:a", "64k"],
        &dir,
    );
    wait_live(&server, "cams/front");
    // OPTIONS preflight and a 404 for a path that is not live.
    let pre = http(http_addr, "OPTIONS", "/cams/front/whep", None, "");
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(
        pre.header("accept-post"),
        Some("application/sdp"),
        "{pre:?}"
    );
    let none = http(
        http_addr,
        "POST",
        "/nothing/whep",
        Some("application/sdp"),
        "v=0\r\n",
    );
    assert_eq!(none.status, 404, "{none:?}");
    // The session resource: trickled candidates are accepted, other bodies are not; a
    // WHIP offer for a path that is already published is refused with 409.
    {
        let mut idle = Peer::new();
        let (reply, _) = idle.negotiate(
            http_addr,
            "/cams/front/whep",
            &[(MediaKind::Video, Direction::RecvOnly)],
        );
        assert_eq!(reply.status, 201, "{reply:?}");
        let loc = reply.header("location").unwrap_or_default().to_owned();
        let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
        let patch = http(
            http_addr,
            "PATCH",
            &loc,
            Some("application/trickle-ice-sdpfrag"),
            frag,
        );
        assert_eq!(patch.status, 204, "{patch:?}");
        let wrong = http(http_addr, "PATCH", &loc, Some("text/plain"), "x");
        assert_eq!(wrong.status, 415, "{wrong:?}");
        let unknown = http(
            http_addr,
            "PATCH",
            "/cams/front/whep/nope",
            Some("application/trickle-ice-sdpfrag"),
            frag,
        );
        assert_eq!(unknown.status, 404, "{unknown:?}");
        assert_eq!(http(http_addr, "DELETE", &loc, None, "").status, 200);
        let not_sdp = http(
            http_addr,
            "POST",
            "/cams/front/whep",
            Some("text/plain"),
            "v=0",
        );
        assert_eq!(not_sdp.status, 415, "{not_sdp:?}");
        let mut publisher = Peer::new();
        let (busy, _) = publisher.negotiate(
            http_addr,
            "/cams/front/whip",
            &[(MediaKind::Video, Direction::SendOnly)],
        );
        println!(
            "WHIP to a published path: {} {:?}",
            busy.status,
            busy.header("x-sluice-reason")
        );
        assert_eq!(busy.status, 409, "{busy:?}");
    }
    let viewers: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || view(http_addr, "cams/front", Duration::from_secs(4))))
        .collect();
    // While they watch, the API lists them as sessions and as the path's readers.
    std::thread::sleep(Duration::from_millis(2500));
    let sessions = http(http_addr, "GET", "/v1/sessions", None, "");
    let listed = sessions.body.matches("\"webrtc\"").count();
    let paths = http(http_addr, "GET", "/v1/paths", None, "");
    println!(
        "/v1/sessions lists {listed} WebRTC sessions; /v1/paths: {}",
        paths.body
    );
    assert_eq!(listed, 3, "{sessions:?}");
    assert!(paths.body.contains("webrtc"), "{paths:?}");
    let results: Vec<(Viewed, u16)> = viewers
        .into_iter()
        .map(|h| h.join().expect("viewer"))
        .collect();
    for (i, (v, del)) in results.iter().enumerate() {
        println!(
            "viewer {i}: first keyframe {:?} ms after DTLS, size {:?}, {} video / {} audio frames, candidates on ports {:?}",
            v.first_keyframe_ms, v.size, v.video_frames, v.audio_frames, v.candidate_ports
        );
        assert_eq!(
            v.status,
            201,
            "viewer {i}: {v:?}\n{}",
            common::tail(&server.log(), 40)
        );
        assert!(v.location.starts_with("/cams/front/whep/"), "{v:?}");
        assert!(v.etag.starts_with('"'), "{v:?}");
        assert!(
            !v.candidate_ports.is_empty() && v.candidate_ports.iter().all(|p| *p == udp),
            "one UDP port {udp}: {v:?}"
        );
        let ms = v.first_keyframe_ms.unwrap_or_else(|| {
            panic!(
                "viewer {i} got no keyframe: {v:?}\n{}",
                common::tail(&server.log(), 40)
            )
        });
        assert!(
            ms <= 300,
            "first keyframe {ms} ms after DTLS (bound 300 ms)"
        );
        assert_eq!(v.size, Some((640, 480)), "{v:?}");
        assert!(v.video_frames >= 60, "video flows: {v:?}");
        assert!(v.audio_frames >= 50, "audio flows: {v:?}");
        assert_eq!(*del, 200, "DELETE ends the session");
    }
    // Each DELETE ended its session; a second one finds nothing.
    let ended = wait_for(Duration::from_secs(5), || {
        (server.log().matches("WHEP session ended").count() >= 3).then_some(())
    });
    assert!(ended.is_some(), "{}", common::tail(&server.log(), 30));
    assert!(
        server.log().contains("reason=deleted"),
        "{}",
        common::tail(&server.log(), 30)
    );
    let again = http(http_addr, "DELETE", &results[0].0.location, None, "");
    assert_eq!(again.status, 404, "{again:?}");
}

#[test]
fn whep_refuses_b_frames_and_names_aac_audio() {
    let (server, http_addr, _) = start("b_frames_paths = { \"bdrop\" = \"drop\" }");
    let dir = test_dir("webrtc-406");
    // G.711 audio goes as it comes.
    let _pcmu = publish(
        &server,
        "pcmu",
        &["-profile:v", "baseline", "-bf", "0"],
        &["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"],
        &dir,
    );
    // Non-reference B-frames (no B-pyramid) under the drop policy.
    let _bdrop = publish(
        &server,
        "bdrop",
        &[
            "-profile:v",
            "high",
            "-bf",
            "2",
            "-x264-params",
            "b-pyramid=0",
        ],
        &["-c:a", "libopus"],
        &dir,
    );
    let _bf = publish(
        &server,
        "bframes",
        &["-profile:v", "high", "-bf", "2"],
        &["-c:a", "libopus"],
        &dir,
    );
    let _aac = publish(
        &server,
        "aac",
        &["-profile:v", "main", "-bf", "0"],
        &["-c:a", "aac", "-b:a", "64k"],
        &dir,
    );
    wait_live(&server, "bframes");
    wait_live(&server, "aac");
    wait_live(&server, "bdrop");
    wait_live(&server, "pcmu");
    let mut peer = Peer::new();
    let (reply, _) = peer.negotiate(
        http_addr,
        "/bframes/whep",
        &[
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ],
    );
    println!(
        "B-frame source: {} {:?} {}",
        reply.status,
        reply.header("x-sluice-reason"),
        reply.body
    );
    assert_eq!(reply.status, 406, "{reply:?}");
    assert!(
        reply
            .header("x-sluice-reason")
            .is_some_and(|r| r.contains("B-frames")),
        "{reply:?}"
    );
    let (v, del) = view(http_addr, "aac", Duration::from_secs(3));
    println!(
        "AAC source: {} audio header {:?}, first keyframe {:?} ms after DTLS, {} video frames",
        v.status, v.audio_header, v.first_keyframe_ms, v.video_frames
    );
    assert_eq!(v.status, 201, "{v:?}");
    assert!(
        v.audio_header
            .as_deref()
            .is_some_and(|h| h.starts_with("aac")),
        "{v:?}"
    );
    assert!(
        v.first_keyframe_ms.is_some() && v.video_frames > 30,
        "video plays: {v:?}"
    );
    assert_eq!(v.size, Some((640, 480)));
    assert_eq!(del, 200);
    let (v, _) = view(http_addr, "bdrop", Duration::from_secs(3));
    println!(
        "B-frames under the drop policy: {} , {} video frames, {} B-frames, first keyframe {:?} ms after DTLS",
        v.status, v.video_frames, v.b_frames, v.first_keyframe_ms
    );
    assert_eq!(v.status, 201, "{v:?}");
    assert!(
        v.video_frames >= 20 && v.b_frames == 0,
        "B-frames dropped: {v:?}"
    );
    let (v, _) = view(http_addr, "pcmu", Duration::from_secs(3));
    println!(
        "H.264 + PCMU: {}, {} video / {} audio frames",
        v.status, v.video_frames, v.audio_frames
    );
    assert_eq!(v.status, 201, "{v:?}");
    assert!(v.video_frames >= 60 && v.audio_frames >= 50, "{v:?}");
}

/// Splits an Annex B H.264 stream into access units (one slice per picture).
fn access_units(data: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut key = false;
    for n in nal_units(data) {
        let t = n.first().map_or(0, |b| b & 0x1f);
        cur.extend_from_slice(&[0, 0, 0, 1]);
        cur.extend_from_slice(n);
        key |= t == 5;
        if t == 1 || t == 5 {
            out.push((std::mem::take(&mut cur), key));
            key = false;
        }
    }
    out
}

#[test]
fn whip_publishes_h264_that_rtsp_readers_play() {
    let (server, http_addr, _) = start("");
    let dir = test_dir("webrtc-whip");
    let file = dir.join("clip.h264");
    let st = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x480:rate=30",
            "-t",
            "2",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-profile:v",
            "baseline",
            "-bf",
            "0",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
        ])
        .arg(&file)
        .status()
        .expect("ffmpeg");
    assert!(st.success());
    let units = access_units(&std::fs::read(&file).expect("clip"));
    assert!(
        units.len() >= 60 && units[0].1,
        "{} access units",
        units.len()
    );
    let mut peer = Peer::new();
    let (reply, mids) = peer.negotiate(
        http_addr,
        "/whip/cam/whip",
        &[
            (MediaKind::Video, Direction::SendOnly),
            (MediaKind::Audio, Direction::SendOnly),
        ],
    );
    assert_eq!(
        reply.status,
        201,
        "{reply:?}\n{}",
        common::tail(&server.log(), 20)
    );
    let location = reply.header("location").unwrap_or_default().to_owned();
    assert!(location.starts_with("/whip/cam/whip/"), "{reply:?}");
    let (mid, audio_mid) = (mids[0], mids[1]);
    // Publish for 8 s at 30 fps, looping the clip, while an ffprobe and a reader look.
    let probe = std::thread::spawn({
        let url = server.url("whip/cam");
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            ffprobe(&url)
        }
    });
    let reader = std::thread::spawn({
        let url = server.url("whip/cam");
        let dir = dir.clone();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            ffmpeg_read(&url, "tcp", Duration::from_secs(4), &dir)
        }
    });
    // A WHEP viewer of the WHIP path asks for a keyframe once it has video.
    let viewer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2000));
        let mut v = Peer::new();
        let (reply, mids) = v.negotiate(
            http_addr,
            "/whip/cam/whep",
            &[
                (MediaKind::Video, Direction::RecvOnly),
                (MediaKind::Audio, Direction::RecvOnly),
            ],
        );
        if reply.status != 201 {
            return (reply.status, 0u32, false);
        }
        let mut frames = 0u32;
        let mut asked = false;
        v.drive(Duration::from_secs(3), |rtc, e| {
            if let Event::MediaData(d) = e {
                if d.mid == mids[0] {
                    frames += 1;
                    if !asked && frames == 5 {
                        if let Some(mut w) = rtc.writer(mids[0]) {
                            asked = w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok();
                        }
                    }
                }
            }
            false
        });
        (201, frames, asked)
    });
    let start = Instant::now();
    let connected = std::cell::Cell::new(false);
    let keyframe_requests = std::cell::Cell::new(0u32);
    let mut sent = 0u64;
    let mut audio_sent = 0u64;
    let mut pt = None;
    // Publish until the prober, the reader and the viewer are done (at most 40 s).
    let _ = peer.drive_with(
        Duration::from_secs(40),
        |_, e| {
            if let Event::Connected = e {
                connected.set(true);
            }
            if let Event::KeyframeRequest(_) = e {
                keyframe_requests.set(keyframe_requests.get() + 1);
            }
            matches!(
                e,
                Event::IceConnectionStateChange(IceConnectionState::Disconnected)
            )
        },
        Some(|rtc: &mut Rtc| {
            if probe.is_finished() && reader.is_finished() && viewer.is_finished() {
                return true;
            }
            if !connected.get() {
                return false;
            }
            if pt.is_none() {
                pt = rtc.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == str0m::format::Codec::H264)
                        .map(|p| p.pt())
                });
            }
            let Some(pt) = pt else {
                return false;
            };
            // Keep to the 30 fps schedule.
            let due = (start.elapsed().as_secs_f64() * 30.0) as u64;
            while sent < due {
                let (au, _) = &units[(sent as usize) % units.len()];
                let Some(w) = rtc.writer(mid) else { break };
                w.write(
                    pt,
                    Instant::now(),
                    MediaTime::new(sent * 3000, Frequency::NINETY_KHZ),
                    au.clone(),
                )
                .expect("write");
                sent += 1;
            }
            // Opus: a 20 ms silence frame (TOC 0xf8, CELT fullband) every 20 ms.
            let due_audio = (start.elapsed().as_secs_f64() * 50.0) as u64;
            while audio_sent < due_audio {
                let Some(w) = rtc.writer(audio_mid) else {
                    break;
                };
                let Some(apt) = w
                    .payload_params()
                    .find(|p| p.spec().codec == str0m::format::Codec::Opus)
                    .map(|p| p.pt())
                else {
                    break;
                };
                w.write(
                    apt,
                    Instant::now(),
                    MediaTime::new(audio_sent * 960, Frequency::FORTY_EIGHT_KHZ),
                    vec![0xf8, 0xff, 0xfe],
                )
                .expect("write audio");
                audio_sent += 1;
            }
            false
        }),
    );
    let connected = connected.get();
    println!("WHIP publisher sent {sent} frames");
    assert!(
        connected,
        "WHIP never connected:\n{}",
        common::tail(&server.log(), 30)
    );
    let probe = probe
        .join()
        .expect("probe")
        .unwrap_or_else(|e| panic!("ffprobe: {e}\n{}", common::tail(&server.log(), 30)));
    let v = probe.video().expect("a video stream");
    let a = probe.audio().map(|a| a.codec_name.clone());
    println!(
        "ffprobe: {} {}x{}, audio {a:?}",
        v.codec_name, v.width, v.height
    );
    assert_eq!(a.as_deref(), Some("opus"));
    let (status, frames, asked) = viewer.join().expect("viewer");
    println!(
        "WHEP viewer of the WHIP path: {status}, {frames} video frames, PLI sent {asked}; publisher saw {} keyframe requests",
        keyframe_requests.get()
    );
    assert_eq!(status, 201);
    assert!(frames >= 30, "the WHIP stream plays over WHEP");
    assert!(
        asked && keyframe_requests.get() >= 1,
        "a viewer's PLI reaches the WHIP publisher"
    );
    assert_eq!(
        (v.codec_name.as_str(), v.width, v.height),
        ("h264", 640, 480)
    );
    let report = reader.join().expect("reader");
    println!("RTSP reader decoded {} frames", report.video_frames);
    assert!(
        report.video_frames >= 60,
        "the RTSP reader decodes: {}",
        report.tail()
    );
    let del = http(http_addr, "DELETE", &location, None, "");
    assert_eq!(del.status, 200, "{del:?}");
    let gone = server.wait_log_line(Duration::from_secs(5), |l| {
        l.contains("path ended") && l.contains("whip/cam")
    });
    assert!(
        gone.is_some(),
        "DELETE ends the stream:\n{}",
        common::tail(&server.log(), 20)
    );
}

#[test]
fn a_viewer_that_goes_silent_is_ended() {
    let (server, http_addr, _) = start("");
    let dir = test_dir("webrtc-silent");
    let _ffmpeg = publish(
        &server,
        "quiet",
        &["-profile:v", "baseline", "-bf", "0"],
        &["-c:a", "libopus"],
        &dir,
    );
    wait_live(&server, "quiet");
    let mut peer = Peer::new();
    let (reply, _) = peer.negotiate(
        http_addr,
        "/quiet/whep",
        &[
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ],
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let mut connected = false;
    peer.drive(Duration::from_secs(5), |_, e| {
        connected |= matches!(e, Event::Connected);
        connected
    });
    assert!(connected);
    // The viewer vanishes without a DELETE (a closed tab): the server ends the session
    // once the peer has been silent for 15 s (str0m's ICE sees it, or the module's own
    // silence bound does).
    drop(peer);
    let t = Instant::now();
    let ended = server.wait_log_line(Duration::from_secs(25), |l| {
        l.contains("WHEP session ended")
            && (l.contains("peer silent") || l.contains("peer disconnected"))
    });
    println!(
        "silent viewer ended after {:.1} s: {ended:?}",
        t.elapsed().as_secs_f64()
    );
    assert!(ended.is_some(), "{}", common::tail(&server.log(), 20));
    assert_eq!(
        server.log().matches("wallclock is in the future").count(),
        0,
        "Sender Reports map to the past"
    );
}

/// The frames of an IVF file (VP8), with whether each is a keyframe.
fn ivf_frames(data: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let header = data
        .get(6..8)
        .map_or(32, |h| usize::from(u16::from_le_bytes([h[0], h[1]])));
    let mut at = header;
    let mut out = Vec::new();
    while let Some(h) = data.get(at..at + 12) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let Some(frame) = data.get(at + 12..at + 12 + len) else {
            break;
        };
        out.push((frame.to_vec(), frame.first().is_some_and(|b| b & 1 == 0)));
        at += 12 + len;
    }
    out
}

/// A send-only WHIP publisher of one video codec: a 2 s 640x480 30 fps IVF clip that
/// ffmpeg encodes with `encoder` (1 s GOP, 500 kb/s), from a peer that offers only `codec`,
/// negotiated on `/{path}/whip` (201 checked).
struct WhipClip {
    peer: Peer,
    codec: str0m::format::Codec,
    /// The clip's frames, and whether each is a keyframe.
    frames: Vec<(Vec<u8>, bool)>,
    mid: Mid,
    /// The WHIP session's URL.
    location: String,
}

impl WhipClip {
    fn publish(
        server: &Server,
        http_addr: SocketAddr,
        dir: &Path,
        path: &str,
        codec: str0m::format::Codec,
        encoder: &[&str],
    ) -> WhipClip {
        use str0m::format::Codec;
        let file = dir.join("clip.ivf");
        let st = Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=640x480:rate=30")
            .args(["-t", "2"])
            .args(encoder)
            .args(["-g", "30", "-b:v", "500k", "-f", "ivf"])
            .arg(&file)
            .status()
            .expect("ffmpeg");
        assert!(st.success());
        let frames = ivf_frames(&std::fs::read(&file).expect("clip"));
        assert!(frames.len() >= 50, "{} frames", frames.len());
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = socket.local_addr().unwrap();
        let b = Rtc::builder().set_crypto_provider(crypto()).clear_codecs();
        let b = match codec {
            Codec::Vp8 => b.enable_vp8(true),
            Codec::Vp9 => b.enable_vp9(true),
            Codec::Av1 => b.enable_av1(true),
            other => panic!("no WHIP clip of {other:?}"),
        };
        let mut rtc = b.build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut peer = Peer { rtc, socket, local };
        let (reply, mids) = peer.negotiate(
            http_addr,
            &format!("/{path}/whip"),
            &[(MediaKind::Video, Direction::SendOnly)],
        );
        assert_eq!(
            reply.status,
            201,
            "{reply:?}\n{}",
            common::tail(&server.log(), 20)
        );
        let location = reply.header("location").unwrap_or_default().to_owned();
        WhipClip {
            peer,
            codec,
            frames,
            mid: mids[0],
            location,
        }
    }

    /// Sends the clip in a loop at 30 fps once connected, until `done` or `limit`;
    /// returns the frames sent.
    fn send(&mut self, limit: Duration, done: impl Fn() -> bool) -> u64 {
        let (frames, mid, codec) = (&self.frames, self.mid, self.codec);
        let start = Instant::now();
        let connected = std::cell::Cell::new(false);
        let mut sent = 0u64;
        let _ = self.peer.drive_with(
            limit,
            |_, e| {
                connected.set(connected.get() || matches!(e, Event::Connected));
                false
            },
            Some(|rtc: &mut Rtc| {
                if done() {
                    return true;
                }
                if !connected.get() {
                    return false;
                }
                let Some(pt) = rtc.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == codec)
                        .map(|p| p.pt())
                }) else {
                    return false;
                };
                let due = (start.elapsed().as_secs_f64() * 30.0) as u64;
                while sent < due {
                    let (f, _) = &frames[(sent as usize) % frames.len()];
                    let Some(w) = rtc.writer(mid) else { break };
                    w.write(
                        pt,
                        Instant::now(),
                        MediaTime::new(sent * 3000, Frequency::NINETY_KHZ),
                        f.clone(),
                    )
                    .expect("write");
                    sent += 1;
                }
                false
            }),
        );
        sent
    }
}

#[test]
fn whip_takes_vp8_from_a_peer_without_h264_and_whep_plays_it() {
    let (server, http_addr, _) = start("");
    let dir = test_dir("webrtc-whip-vp8");
    let mut whip = WhipClip::publish(
        &server,
        http_addr,
        &dir,
        "vp8cam",
        str0m::format::Codec::Vp8,
        &["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"],
    );
    assert!(whip.frames[0].1, "the clip starts with a keyframe");
    let location = whip.location.clone();
    let probe = std::thread::spawn({
        let url = server.url("vp8cam");
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            ffprobe(&url)
        }
    });
    // A WHEP viewer of the VP8 path, browser to browser.
    let viewer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        view(http_addr, "vp8cam", Duration::from_secs(3))
    });
    let sent = whip.send(Duration::from_secs(25), || {
        probe.is_finished() && viewer.is_finished()
    });
    let probe = probe
        .join()
        .expect("probe")
        .unwrap_or_else(|e| panic!("ffprobe: {e}\n{}", common::tail(&server.log(), 30)));
    let v = probe.video().expect("a video stream");
    println!(
        "VP8 over WHIP, {sent} frames sent; ffprobe: {} {}x{}",
        v.codec_name, v.width, v.height
    );
    assert_eq!(
        (v.codec_name.as_str(), v.width, v.height),
        ("vp8", 640, 480)
    );
    let (v, del) = viewer.join().expect("viewer");
    println!(
        "WHEP of the VP8 path: {}, {} video frames",
        v.status, v.video_frames
    );
    assert_eq!(v.status, 201, "{v:?}");
    assert!(v.video_frames >= 45, "VP8 plays over WHEP: {v:?}");
    assert_eq!(del, 200);
    assert_eq!(http(http_addr, "DELETE", &location, None, "").status, 200);
}

/// 640x480 30 fps test pattern with Opus, 1 s GOP, 6 s, video coded by `video`, in MP4
/// (generated once), for a `file://` source.
fn codec_clip(name: &str, video: &[&str]) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("v1");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join(name);
    if dest.exists() {
        return dest;
    }
    let tmp = dir.join(format!(".{name}.tmp-{}.mp4", std::process::id()));
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x480:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "6"])
        .args(video)
        .args(["-g", "30", "-keyint_min", "30", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "libopus", "-b:a", "48k"])
        .arg(&tmp)
        .status()
        .expect("ffmpeg");
    assert!(st.success(), "generating {name}");
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// What a viewer offering one video codec saw.
#[derive(Debug, Default)]
struct CodecView {
    status: u16,
    reason: Option<String>,
    frames: u32,
    /// The first frame received is a keyframe.
    key_first: Option<bool>,
    /// From DTLS up to the first frame.
    first_ms: Option<u128>,
    size: Option<(u32, u32)>,
}

/// Whether a received frame is a keyframe, and its picture size when the bitstream says
/// it cheaply (VP9's uncompressed header).
fn codec_keyframe(codec: str0m::format::Codec, data: &[u8]) -> (bool, Option<(u32, u32)>) {
    use str0m::format::Codec;
    match codec {
        Codec::Vp9 => {
            let mut r = Bits(data, 0);
            let marker = r.u(2);
            let profile = r.u(1) | (r.u(1) << 1);
            if profile == 3 {
                r.u(1);
            }
            let key = marker == 2 && r.u(1) == 0 && r.u(1) == 0;
            if !key {
                return (false, None);
            }
            r.u(2); // show_frame, error_resilient_mode
            r.u(24); // sync code
            if profile >= 2 {
                r.u(1);
            }
            if r.u(3) != 7 {
                r.u(1);
                if profile == 1 || profile == 3 {
                    r.u(3);
                }
            } else if profile == 1 || profile == 3 {
                r.u(1);
            }
            (true, Some((r.u(16) + 1, r.u(16) + 1)))
        }
        // A temporal unit led by a sequence header (a temporal delimiter may come first).
        Codec::Av1 => {
            let first = data.first().map(|h| (h >> 3) & 0x0f);
            let second = || {
                let size = *data.get(1)? as usize; // a temporal delimiter's size is 0
                data.get(2 + size).map(|h| (h >> 3) & 0x0f)
            };
            (
                first == Some(1) || (first == Some(2) && second() == Some(1)),
                None,
            )
        }
        // Annex B with a VPS or an IRAP picture.
        _ => {
            let key = nal_units(data).iter().any(|n| {
                n.first()
                    .is_some_and(|b| matches!((b >> 1) & 0x3f, 16..=21 | 32))
            });
            (key, None)
        }
    }
}

/// A WHEP viewer offering only `codec` (and Opus) for `watch`.
fn view_codec(
    http_addr: SocketAddr,
    path: &str,
    codec: str0m::format::Codec,
    watch: Duration,
) -> CodecView {
    use str0m::format::Codec;
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = socket.local_addr().unwrap();
    let b = Rtc::builder()
        .set_crypto_provider(crypto())
        .clear_codecs()
        .enable_opus(true, false);
    let b = match codec {
        Codec::Vp9 => b.enable_vp9(true),
        Codec::Av1 => b.enable_av1(true),
        Codec::H265 => b.enable_h265(true),
        _ => b.enable_vp8(true),
    };
    let mut rtc = b.build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
    let mut peer = Peer { rtc, socket, local };
    let (reply, mids) = peer.negotiate(
        http_addr,
        &format!("/{path}/whep"),
        &[
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ],
    );
    let mut v = CodecView {
        status: reply.status,
        reason: reply.header("x-sluice-reason").map(str::to_owned),
        ..CodecView::default()
    };
    if reply.status != 201 {
        return v;
    }
    let location = reply.header("location").unwrap_or_default().to_owned();
    let video_mid = mids[0];
    let mut dtls_at: Option<Instant> = None;
    let end = Instant::now() + watch;
    peer.drive(watch, |_, e| {
        match e {
            Event::Connected => dtls_at = Some(Instant::now()),
            Event::MediaData(d) if d.mid == video_mid => {
                v.frames += 1;
                if v.key_first.is_none() {
                    let (key, size) = codec_keyframe(codec, &d.data);
                    v.key_first = Some(key);
                    v.size = size;
                    v.first_ms = dtls_at.map(|t| t.elapsed().as_millis());
                }
            }
            _ => {}
        }
        Instant::now() >= end
    });
    http(http_addr, "DELETE", &location, None, "");
    v
}

#[test]
fn whep_sends_vp9_av1_and_h265_to_viewers_that_offer_them() {
    use str0m::format::Codec;
    let vp9 = codec_clip(
        "webrtc_vp9.mp4",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "500k",
        ],
    );
    let av1 = codec_clip(
        "webrtc_av1.mp4",
        &[
            "-c:v",
            "libaom-av1",
            "-usage",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "500k",
        ],
    );
    let h265 = codec_clip(
        "webrtc_h265.mp4",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "bframes=0:log-level=error",
        ],
    );
    let mut extra = String::new();
    for (name, file) in [("vp9", &vp9), ("av1", &av1), ("h265", &h265)] {
        extra.push_str(&format!(
            "[paths.{name}]\nsource = \"file://{}\"\nloop = true\n",
            file.display()
        ));
    }
    let (server, http_addr, _) = start(&extra);
    // Let a keyframe into each path's GOP cache.
    std::thread::sleep(Duration::from_millis(1500));
    let viewers: Vec<_> = [
        ("vp9", Codec::Vp9),
        ("av1", Codec::Av1),
        ("h265", Codec::H265),
    ]
    .into_iter()
    .map(|(path, codec)| {
        std::thread::spawn(move || {
            (
                path,
                view_codec(http_addr, path, codec, Duration::from_secs(3)),
            )
        })
    })
    .collect();
    // A viewer that offers only VP8 to the AV1 path is refused, and told why.
    let refused = view_codec(http_addr, "av1", Codec::Vp8, Duration::from_secs(1));
    println!("VP8-only offer to the AV1 path: {refused:?}");
    assert_eq!(refused.status, 406);
    assert!(
        refused.reason.as_deref().is_some_and(|r| r.contains("AV1")),
        "{refused:?}"
    );
    for t in viewers {
        let (path, v) = t.join().expect("viewer");
        println!(
            "WHEP {path}: {} frames in 3 s, first a keyframe: {:?}, {:?} ms after DTLS, size {:?}",
            v.frames, v.key_first, v.first_ms, v.size
        );
        assert_eq!(
            v.status,
            201,
            "{path}: {v:?}\n{}",
            common::tail(&server.log(), 20)
        );
        assert!(v.frames >= 60, "{path}: {v:?}");
        assert_eq!(
            v.key_first,
            Some(true),
            "{path} starts at a keyframe: {v:?}"
        );
        if path == "vp9" {
            assert_eq!(v.size, Some((640, 480)));
        }
    }
}

#[test]
fn whip_takes_vp9_that_rtsp_readers_play() {
    let (server, http_addr, _) = start("");
    let dir = test_dir("webrtc-whip-vp9");
    // A peer that offers VP9 only (and no H.264 or VP8 the server would prefer).
    let mut whip = WhipClip::publish(
        &server,
        http_addr,
        &dir,
        "vp9cam",
        str0m::format::Codec::Vp9,
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ],
    );
    let location = whip.location.clone();
    let probe = std::thread::spawn({
        let url = server.url("vp9cam");
        let dir = dir.clone();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            let probe = ffprobe(&url);
            // ffmpeg 5.1 names the codec but cannot depacketize the scalability structure;
            // GStreamer decodes the frames.
            let gst = common::gst::gst_read(
                &url,
                "tcp",
                common::gst::GstVideo::Vp9,
                Duration::from_secs(4),
                &dir,
                None,
            );
            (probe, gst)
        }
    });
    let sent = whip.send(Duration::from_secs(20), || probe.is_finished());
    let (probe, gst) = probe.join().expect("probe");
    let probe =
        probe.unwrap_or_else(|e| panic!("ffprobe: {e}\n{}", common::tail(&server.log(), 30)));
    let v = probe.video().expect("a video stream");
    println!(
        "VP9 over WHIP, {sent} frames sent; ffprobe: {}; GStreamer over RTSP: {} frames {}x{}, errors {:?}",
        v.codec_name, gst.video_frames, gst.width, gst.height, gst.errors
    );
    assert_eq!(v.codec_name, "vp9");
    assert_eq!((gst.width, gst.height), (640, 480), "{}", gst.output);
    assert!(gst.video_frames >= 60, "{}", gst.output);
    assert_eq!(http(http_addr, "DELETE", &location, None, "").status, 200);
}

/// An AV1 WHIP publication (str0m's packetizer: W-counted elements, the last without a
/// length) depacketized by the server and sent to a WHEP viewer (str0m's depacketizer):
/// two AV1 RTP implementations meet the server's. (ffmpeg 5.1 and GStreamer 1.22 read no
/// AV1 over RTP, so no RTSP reader checks it.)
#[test]
fn whip_takes_av1_and_whep_plays_it() {
    let (server, http_addr, _) = start("");
    let dir = test_dir("webrtc-whip-av1");
    let mut whip = WhipClip::publish(
        &server,
        http_addr,
        &dir,
        "av1cam",
        str0m::format::Codec::Av1,
        &["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8"],
    );
    let location = whip.location.clone();
    let viewer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        view_codec(
            http_addr,
            "av1cam",
            str0m::format::Codec::Av1,
            Duration::from_secs(3),
        )
    });
    let sent = whip.send(Duration::from_secs(15), || viewer.is_finished());
    let v = viewer.join().expect("viewer");
    println!(
        "AV1 over WHIP, {sent} frames sent; WHEP viewer: {} frames, first a keyframe: {:?}",
        v.frames, v.key_first
    );
    assert_eq!(v.status, 201, "{v:?}\n{}", common::tail(&server.log(), 20));
    assert!(v.frames >= 60, "{v:?}");
    assert_eq!(v.key_first, Some(true), "{v:?}");
    assert_eq!(http(http_addr, "DELETE", &location, None, "").status, 200);
}

#[test]
fn a_pli_is_answered_from_the_gop_cache_for_an_rtsp_source() {
    let (server, http_addr, _udp) = start("");
    let dir = test_dir("webrtc-pli");
    // A 10 s GOP: the source's next keyframe is far away.
    let _ffmpeg = publish(
        &server,
        "longgop",
        &[
            "-profile:v",
            "baseline",
            "-bf",
            "0",
            "-tune",
            "zerolatency",
            "-g",
            "300",
            "-keyint_min",
            "300",
        ],
        &["-c:a", "libopus", "-b:a", "32k"],
        &dir,
    );
    wait_live(&server, "longgop");
    let mut peer = Peer::new();
    let (reply, mids) = peer.negotiate(
        http_addr,
        "/longgop/whep",
        &[
            (MediaKind::Video, Direction::RecvOnly),
            (MediaKind::Audio, Direction::RecvOnly),
        ],
    );
    assert_eq!(reply.status, 201, "{reply:?}");
    let video_mid = mids[0];
    let started = Instant::now();
    // (when, has SPS) of every keyframe received; when the PLIs went out.
    let keyframes: std::cell::RefCell<Vec<(Instant, bool)>> = Default::default();
    let mut video_frames = 0u32;
    let mut plis: Vec<Instant> = Vec::new();
    peer.drive_with(
        Duration::from_secs(5),
        |_, e| {
            if let Event::MediaData(d) = e {
                if d.mid == video_mid {
                    video_frames += 1;
                    let nals = nal_units(&d.data);
                    if nals
                        .iter()
                        .any(|n| n.first().is_some_and(|b| b & 0x1f == 5))
                    {
                        let sps = nals
                            .iter()
                            .any(|n| n.first().is_some_and(|b| b & 0x1f == 7));
                        keyframes.borrow_mut().push((Instant::now(), sps));
                    }
                }
            }
            false
        },
        Some(|rtc: &mut Rtc| {
            // One PLI 1.5 s after the first keyframe, a second 100 ms later (inside the
            // 500 ms limit: not answered), a third 1 s after the first (answered).
            let Some(first) = keyframes.borrow().first().map(|k| k.0) else {
                return false;
            };
            let due = [1500u64, 1600, 2500]
                .get(plis.len())
                .map(|ms| first + Duration::from_millis(*ms));
            if due.is_some_and(|d| Instant::now() >= d) {
                if let Some(mut w) = rtc.writer(video_mid) {
                    if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                        plis.push(Instant::now());
                    }
                }
            }
            false
        }),
    );
    let keyframes = keyframes.into_inner();
    let del = http(
        http_addr,
        "DELETE",
        reply.header("location").unwrap_or_default(),
        None,
        "",
    );
    assert_eq!(plis.len(), 3, "three PLIs sent: {keyframes:?}");
    let after = |t: Instant| {
        keyframes
            .iter()
            .filter(|k| k.0 > t)
            .map(|k| k.0.duration_since(t).as_millis())
            .collect::<Vec<_>>()
    };
    let first_ms = keyframes
        .first()
        .map(|k| k.0.duration_since(started).as_millis());
    let (a, b) = (after(plis[0]), after(plis[2]));
    println!(
        "PLI on a 10 s GOP: first keyframe {first_ms:?} ms after the offer; keyframes after PLI 1: {a:?} ms, \
         after PLI 3: {b:?} ms; {} keyframes, {video_frames} video frames in 5 s; DELETE {}",
        keyframes.len(),
        del.status
    );
    assert!(
        keyframes.iter().all(|k| k.1),
        "every keyframe carries its SPS: {keyframes:?}"
    );
    assert!(
        a.first().is_some_and(|ms| *ms <= 500),
        "PLI 1 answered within 500 ms: {a:?}"
    );
    // PLI 2 (100 ms after PLI 1) is rate-limited: only PLI 1 and PLI 3 are answered.
    let between = keyframes
        .iter()
        .filter(|k| k.0 > plis[0] && k.0 < plis[2])
        .count();
    assert_eq!(
        between, 1,
        "one keyframe between PLI 1 and PLI 3: {keyframes:?}"
    );
    assert!(
        b.first().is_some_and(|ms| *ms <= 500),
        "PLI 3 answered within 500 ms: {b:?}"
    );
    assert_eq!(
        keyframes.len(),
        3,
        "the source made none of its own in 5 s: {keyframes:?}"
    );
}
