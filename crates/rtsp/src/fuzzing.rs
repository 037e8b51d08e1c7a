//! Invariant checks shared by the fuzz targets (`/fuzz`) and the corpus
//! test. Each function panics when an invariant is violated and otherwise
//! accepts any input.

use bytes::BytesMut;

use crate::headers::parse_cseq;
use crate::interleaved;
use crate::{
    format_rtp_info, format_transport, parse_rtp_info, parse_transport, DecodeError, Decoder,
    Frame, Limits, Message, Method, NptTime, Range, Request, Response, SessionHeader, StatusCode,
    TransportSpec,
};

/// Small limits so that every limit error is reachable by a fuzzer.
pub fn fuzz_limits() -> Limits {
    Limits {
        max_head_bytes: 2048,
        max_headers: 32,
        max_body_bytes: 8192,
    }
}

/// Everything observable from decoding a stream to its end.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Frames decoded, in order.
    pub frames: Vec<Frame>,
    /// The error that stopped decoding, if any.
    pub error: Option<DecodeError>,
    /// Bytes left undecoded when no error occurred.
    pub rest: Option<Vec<u8>>,
}

/// Largest buffer the decoder may leave pending while asking for more.
pub fn max_pending(limits: &Limits) -> usize {
    limits
        .max_head_bytes
        .max(limits.max_body_bytes)
        .max(4 + interleaved::MAX_PAYLOAD)
}

/// Feeds `chunks` one after another, decoding as much as possible after
/// each, and checks that pending data never exceeds [`max_pending`].
pub fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limits: Limits) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(
                        buf.len() <= max_pending(&limits),
                        "decoder waits with {} bytes buffered",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(decoder.decode(&mut buf), Err(e.clone()), "error not sticky");
                    return Outcome {
                        frames,
                        error: Some(e),
                        rest: None,
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        rest: Some(buf.to_vec()),
    }
}

/// Encodes a frame back to wire format.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Message(m) => m.encode(out),
        Frame::Interleaved { channel, payload } => {
            // Decoded payloads are at most 65535 bytes.
            let res = interleaved::encode(*channel, payload, out);
            assert!(res.is_ok(), "decoded payload too large");
        }
    }
}

/// Removes `Content-Length` headers, which encoding rewrites.
fn without_content_length(frame: &Frame) -> Frame {
    let mut frame = frame.clone();
    if let Frame::Message(m) = &mut frame {
        match m {
            Message::Request(r) => r.headers.remove("Content-Length"),
            Message::Response(r) => r.headers.remove("Content-Length"),
        }
    }
    frame
}

/// Decoder target: the stream after the first byte must decode identically
/// in one piece and split at a point chosen by the first byte; decoded frames
/// must survive re-encoding.
pub fn decoder_roundtrip(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let limits = fuzz_limits();
    let whole = decode_chunks([stream], limits);
    let split = (usize::from(first) * stream.len() / 255).min(stream.len());
    let (a, b) = stream.split_at(split);
    let parts = decode_chunks([a, b], limits);
    if whole.error.is_some() {
        // The error may strike before the second chunk is appended.
        assert_eq!(whole.frames, parts.frames);
        assert_eq!(whole.error, parts.error);
    } else {
        assert_eq!(whole, parts);
    }
    let mut wire = BytesMut::new();
    for frame in &whole.frames {
        encode_frame(frame, &mut wire);
    }
    let again = decode_chunks([&wire[..]], Limits::default());
    assert_eq!(again.error, None);
    assert_eq!(again.rest.as_deref(), Some(&[][..]));
    let norm = |v: &[Frame]| v.iter().map(without_content_length).collect::<Vec<_>>();
    assert_eq!(norm(&again.frames), norm(&whole.frames));
}

/// Header target: every parser accepts or rejects without panicking, and
/// accepted values survive writing and re-parsing.
pub fn headers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(specs) = parse_transport(&s) {
        for spec in &specs {
            assert_eq!(TransportSpec::parse(&spec.to_string()).as_ref(), Ok(spec));
        }
        assert_eq!(parse_transport(&format_transport(&specs)), Ok(specs));
    }
    let _ = TransportSpec::parse(&s);
    if let Ok(range) = Range::parse(&s) {
        let text = range.to_string();
        let again = Range::parse(&text);
        assert_eq!(again.as_ref().map(ToString::to_string), Ok(text));
        if let Range::Other(_) = range {
            assert_eq!(again, Ok(range));
        }
    }
    if let Ok(t) = NptTime::parse(&s) {
        assert_eq!(
            NptTime::parse(&t.to_string()).map(|t| t.to_string()),
            Ok(t.to_string())
        );
    }
    if let Ok(session) = SessionHeader::parse(&s) {
        assert_eq!(SessionHeader::parse(&session.to_string()), Ok(session));
    }
    if let Ok(entries) = parse_rtp_info(&s) {
        assert_eq!(parse_rtp_info(&format_rtp_info(&entries)), Ok(entries));
    }
    if let Ok(n) = parse_cseq(&s) {
        assert_eq!(parse_cseq(&n.to_string()), Ok(n));
    }
}

/// Reads bytes from the front of a slice, yielding zeros when exhausted.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

const METHODS: [&str; 12] = [
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
    "REDIRECT",
    "X-CUSTOM",
];

/// The frame a decoder yields for an encoded message: the message itself
/// plus the `Content-Length` header the encoder adds for a non-empty body.
fn expected_message(mut message: Message) -> Frame {
    let (headers, len) = match &mut message {
        Message::Request(r) => (&mut r.headers, r.body.len()),
        Message::Response(r) => (&mut r.headers, r.body.len()),
    };
    if len > 0 {
        headers.append("Content-Length", len.to_string());
    }
    Frame::Message(message)
}

/// Interleaved target: builds a stream of interleaved frames mixed with
/// requests and responses from `data`, encodes it, and checks that decoding
/// it in `data`-driven chunks yields exactly those frames.
pub fn interleaved(data: &[u8]) {
    let mut r = Reader(data);
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    while let Some(op) = r.byte() {
        if op & 0x80 != 0 {
            wire.extend_from_slice(b"\r\n");
        }
        let a = r.byte().unwrap_or(0);
        let b = r.byte().unwrap_or(0);
        match op % 4 {
            0 | 1 => {
                let len = usize::from(b) * (usize::from(op >> 2 & 7) + 1);
                let payload = r.take(len).to_vec();
                let res = interleaved::encode(a, &payload, &mut wire);
                assert!(res.is_ok(), "small payload rejected");
                expected.push(Frame::Interleaved {
                    channel: a,
                    payload: payload.into(),
                });
            }
            2 => {
                let method = METHODS.get(usize::from(a) % METHODS.len()).copied();
                let mut req = Request::new(
                    Method::parse(method.unwrap_or("OPTIONS")),
                    format!("rtsp://example.com/media/{b}"),
                );
                req.headers.append("CSeq", b.to_string());
                if a & 1 == 1 {
                    req.headers
                        .append("Session", format!("{a:02X}{b:02X};timeout=60"));
                }
                req.body = r.take(usize::from(b % 64)).to_vec().into();
                req.encode(&mut wire);
                expected.push(expected_message(Message::Request(req)));
            }
            _ => {
                let status = StatusCode(200 + u16::from(a));
                let mut resp = Response::new(status).with_header("CSeq", b.to_string());
                if b & 1 == 1 {
                    resp = resp.with_body("text/parameters", r.take(usize::from(a % 64)).to_vec());
                }
                resp.encode(&mut wire);
                expected.push(expected_message(Message::Response(resp)));
            }
        }
    }
    // Chunk sizes cycle through the input bytes.
    let mut chunks = Vec::new();
    let mut rest = &wire[..];
    let mut sizes = data.iter().cycle();
    while !rest.is_empty() {
        let size = sizes
            .next()
            .map_or(rest.len(), |s| usize::from(*s % 32) + 1);
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    let outcome = decode_chunks(chunks, Limits::default());
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.rest.as_deref(), Some(&[][..]));
    assert_eq!(outcome.frames, expected);
}

/// Response target: `data` (typically one or more responses) must decode
/// identically in one piece and split in two at every point (every 64th
/// point past the first 256 bytes) and fed byte by byte; decoded frames
/// must survive re-encoding as in [`decoder_roundtrip`].
pub fn responses(data: &[u8]) {
    let limits = fuzz_limits();
    let whole = decode_chunks([data], limits);
    let step = |i: usize| if i < 256 { 1 } else { 64 };
    let mut split = 0;
    while split <= data.len() {
        let (a, b) = data.split_at(split);
        let parts = decode_chunks([a, b], limits);
        if whole.error.is_some() {
            assert_eq!(whole.frames, parts.frames, "split at {split}");
            assert_eq!(whole.error, parts.error, "split at {split}");
        } else {
            assert_eq!(whole, parts, "split at {split}");
        }
        split += step(split);
    }
    // One byte at a time.
    let bytes = decode_chunks(data.chunks(1), limits);
    assert_eq!(whole.frames, bytes.frames);
    assert_eq!(whole.error, bytes.error);
    let mut wire = BytesMut::new();
    for frame in &whole.frames {
        encode_frame(frame, &mut wire);
    }
    let again = decode_chunks([&wire[..]], Limits::default());
    assert_eq!(again.error, None);
    assert_eq!(again.rest.as_deref(), Some(&[][..]));
    let norm = |v: &[Frame]| v.iter().map(without_content_length).collect::<Vec<_>>();
    assert_eq!(norm(&again.frames), norm(&whole.frames));
}

/// Authentication target. `data` is split at `\n` into: a header value,
/// user name, password, method and URI (missing parts are empty).
///
/// * `parse_www_authenticate` / `parse_authorization` accept or reject the
///   header without panicking; parsed challenges survive
///   `format_challenge` and re-parsing.
/// * For every parsed challenge, the client's `Authorization` answer parses
///   on the server side and verifies with the same password (and, for the
///   non-`-sess` algorithms, with the stored HA1), and not with another one.
/// * An arbitrary `Authorization` is verified against the password without
///   panicking.
pub fn auth(data: &[u8]) {
    use crate::auth::{
        digest_ha1, format_challenge, parse_authorization, parse_www_authenticate, verify_basic,
        verify_digest, Authorization, Challenge, ClientAuth, Credentials, Secret,
    };
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\n');
    let header = parts.next().unwrap_or_default();
    let username = parts.next().unwrap_or_default();
    let password = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();

    if let Ok(a) = parse_authorization(header) {
        let _ = verify_digest(&a, method, Secret::Password(password));
        let _ = verify_digest(&a, method, Secret::Ha1(password));
        let _ = verify_basic(&a, username, password);
        let _ = format!("{a:?}");
    }

    let Ok(challenges) = parse_www_authenticate(header) else {
        return;
    };
    for c in &challenges {
        let text = format_challenge(c);
        assert_eq!(
            parse_www_authenticate(&text).as_deref(),
            Ok(std::slice::from_ref(c)),
            "{text:?}"
        );
    }
    let creds = Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    };
    for c in &challenges {
        let Ok(client) = ClientAuth::new(creds.clone(), std::slice::from_ref(c)) else {
            panic!("a parsed challenge was refused: {c:?}");
        };
        let mut client = client.with_cnonce_source(|| "0a4f113b".to_owned());
        for _ in 0..2 {
            let value = client.authorization(method, uri);
            let parsed = match parse_authorization(&value) {
                Ok(p) => p,
                Err(e) => panic!("own Authorization {value:?} does not parse: {e}"),
            };
            match (c, &parsed) {
                (Challenge::Basic { .. }, Authorization::Basic { .. }) => {
                    // `user:pass` is ambiguous when the user name has a colon.
                    if !username.contains(':') {
                        assert!(verify_basic(&parsed, username, password), "{value:?}");
                        assert!(!verify_basic(&parsed, username, &format!("{password}x")));
                    }
                }
                (
                    Challenge::Digest {
                        realm, algorithm, ..
                    },
                    Authorization::Digest { .. },
                ) => {
                    assert!(
                        verify_digest(&parsed, method, Secret::Password(password)),
                        "{value:?}"
                    );
                    assert!(!verify_digest(
                        &parsed,
                        method,
                        Secret::Password(&format!("{password}x"))
                    ));
                    let ha1 = digest_ha1(*algorithm, username, realm, password);
                    assert!(
                        verify_digest(&parsed, method, Secret::Ha1(&ha1)),
                        "{value:?}"
                    );
                }
                _ => panic!("challenge {c:?} answered with {value:?}"),
            }
        }
    }
    // The strongest of all challenges is chosen without panicking.
    if let Ok(mut client) = ClientAuth::new(creds, &challenges) {
        let _ = client.authorization(method, uri);
        let _ = client.update(&challenges);
    }
}

/// Client session target: a [`crate::client::ClientSession`] fed the
/// server's bytes `data[2..]` in one piece and split in two at a point
/// chosen by `data[0]` must emit the same events; `data[1]` picks the
/// configuration (play/record, TCP/UDP, credentials). Afterwards timers,
/// media sending and `close` run without panicking.
pub fn client_session(data: &[u8]) {
    use crate::client::{ClientConfig, ClientMode, ClientSession, ClientTransport};
    use std::time::{Duration, Instant};

    let [first, config, stream @ ..] = data else {
        return;
    };
    let split = (usize::from(*first) * stream.len() / 255).min(stream.len());
    let (a, b) = stream.split_at(split);
    let now = Instant::now();
    let make = || {
        let mode = if config & 1 == 0 {
            ClientMode::Play
        } else {
            ClientMode::Record {
                sdp: "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
                      m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n\
                      m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\na=control:streamid=1\r\n"
                    .into(),
            }
        };
        let transport = if config & 2 == 0 {
            ClientTransport::Tcp
        } else {
            ClientTransport::Udp { rtp_port: 5000 }
        };
        let url = if config & 4 == 0 {
            "rtsp://127.0.0.1:8554/live/cam"
        } else {
            "rtsp://user:p%40ss@127.0.0.1:8554/live/cam"
        };
        let session = ClientSession::new(
            ClientConfig {
                url: url.into(),
                credentials: None,
                transport,
                user_agent: "fuzz".into(),
                mode,
            },
            now,
        );
        match session {
            Ok(s) => s,
            Err(e) => panic!("valid config refused: {e}"),
        }
    };
    let drain = |s: &mut ClientSession| {
        let mut events = Vec::new();
        let mut sent = 0usize;
        while let Some(e) = s.poll_event() {
            events.push(e);
        }
        while s.poll_transmit().is_some() {
            sent += 1;
        }
        while s.poll_datagram().is_some() {
            sent += 1;
        }
        (events, sent)
    };
    let mut whole = make();
    let r_whole = whole.handle_input(stream, now);
    let out_whole = drain(&mut whole);
    let mut parts = make();
    let r_a = parts.handle_input(a, now);
    let r_parts = if r_a.is_err() {
        r_a
    } else {
        parts.handle_input(b, now)
    };
    let out_parts = drain(&mut parts);
    assert_eq!(r_whole, r_parts);
    assert_eq!(out_whole, out_parts);
    assert_eq!(whole.session_id(), parts.session_id());

    // Media, timers and close on one of them.
    let s = &mut whole;
    for track in 0..3 {
        s.send_rtp(track, &[0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        s.send_rtcp(track, &[0x81, 201, 0, 1, 0, 0, 0, 1]);
    }
    let _ = s.url();
    let _ = s.session_timeout();
    let _ = s.ssrc(0);
    let mut t = now;
    for _ in 0..4 {
        if let Some(deadline) = s.poll_timeout() {
            assert!(deadline >= now, "deadline before the session's start");
            t = t.max(deadline);
        }
        t += Duration::from_secs(1);
        s.handle_timeout(t);
        drain(s);
    }
    s.close();
    drain(s);
    let _ = s.handle_input(b"RTSP/1.0 200 OK\r\nCSeq: 9\r\n\r\n", t);
    s.close();
    drain(s);
}

/// A [`crate::server::ServerConnection`] fed an arbitrary request stream.
///
/// Layout: byte 0 picks the configuration (bit 0: questions are refused rather than
/// granted; bit 1: TLS required; bit 2: UDP and multicast on; bits 3–7: how many
/// seconds pass between requests), byte 1 splits the stream for a second run fed in
/// two parts. Invariants: no panic; every output decodes as one response per
/// request (and one for an undecodable tail), in request order, echoing its CSeq;
/// feeding in parts changes nothing;
/// interleaved channels only belong to live sessions; a timer exists exactly while
/// sessions do; after close and the last timeout, nothing is left.
pub fn server_connection(data: &[u8]) {
    use crate::server::{
        Action, AllowAll, PlayGrant, Question, Refusal, ServerConfig, ServerConnection, SetupGrant,
        StreamInfo, TransportPolicy,
    };
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    let [config, split, stream @ ..] = data else {
        return;
    };
    let refuse = config & 1 != 0;
    let step = Duration::from_secs(u64::from(config >> 3));
    let t0 = Instant::now();
    let make = || {
        let mut c = ServerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST));
        if config & 2 != 0 {
            c.require_tls = Some(8322);
        }
        if config & 4 != 0 {
            c.transport = TransportPolicy {
                tcp: true,
                udp: true,
                multicast: true,
                server_port: Some(8000),
                multicast_port: Some(9000),
                multicast_ttl: 4,
            };
        }
        c.parameters = vec!["p".into()];
        let mut n = 0u64;
        ServerConnection::new(
            c,
            Box::new(AllowAll),
            Box::new(move || {
                n += 1;
                n % 3 // repeats: exercises id collisions
            }),
            t0,
        )
    };
    let answer = |conn: &mut ServerConnection| {
        while let Some(a) = conn.poll_action() {
            let Action::Ask { token, question } = a else {
                continue;
            };
            let no = || Refusal::new(StatusCode::NOT_FOUND, "fuzz");
            let r = match question {
                Question::Describe { .. } => conn.answer_describe(
                    token,
                    if refuse {
                        Err(no())
                    } else {
                        Ok("v=0\r\n".into())
                    },
                ),
                Question::Announce { .. } => {
                    conn.answer_announce(token, if refuse { Err(no()) } else { Ok(()) })
                }
                Question::Stream { .. } => conn.answer_stream(
                    token,
                    if refuse {
                        Err(no())
                    } else {
                        Ok(StreamInfo {
                            tracks: 2,
                            ssrc: vec![Some(1)],
                            seekable: config & 8 != 0,
                        })
                    },
                ),
                Question::Setup { .. } => conn.answer_setup(
                    token,
                    if refuse {
                        Err(no())
                    } else {
                        Ok(SetupGrant {
                            multicast_group: Some(IpAddr::V4(Ipv4Addr::new(239, 0, 0, 1))),
                        })
                    },
                ),
                Question::Play { range, scale, .. } => conn.answer_play(
                    token,
                    if refuse {
                        Err(no())
                    } else {
                        Ok(PlayGrant {
                            range,
                            scale,
                            starts: Vec::new(),
                        })
                    },
                ),
                Question::Parameters { names, .. } => conn.answer_parameters(
                    token,
                    Ok(names.into_iter().map(|n| (n, "1".into())).collect()),
                ),
            };
            assert!(r.is_ok(), "answer to the current question refused: {r:?}");
        }
    };
    // Runs the connection over `parts`; returns (responses bytes, request CSeqs).
    let run = |parts: &[&[u8]]| {
        let mut conn = make();
        let mut decoder = Decoder::new(fuzz_limits());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut cseqs = Vec::new();
        let mut now = t0;
        'feed: for part in parts {
            buf.extend_from_slice(part);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Frame::Message(Message::Request(r)))) => {
                        cseqs.push(r.cseq());
                        now += step;
                        conn.handle_timeout(now);
                        conn.handle_request(now, r);
                        answer(&mut conn);
                        while let Some(b) = conn.poll_transmit() {
                            out.extend_from_slice(&b);
                        }
                    }
                    Ok(Some(Frame::Interleaved { channel, .. })) => {
                        if let Some(u) = conn.channel(channel) {
                            assert!(
                                conn.session(&u.session).is_some(),
                                "channel of a dead session"
                            );
                        }
                    }
                    Ok(Some(Frame::Message(Message::Response(_)))) => {}
                    Ok(None) => break,
                    Err(e) => {
                        cseqs.push(e.cseq());
                        conn.handle_decode_error(now, &e);
                        answer(&mut conn);
                        while let Some(b) = conn.poll_transmit() {
                            out.extend_from_slice(&b);
                        }
                        break 'feed;
                    }
                }
            }
        }
        assert_eq!(conn.poll_timeout().is_some(), conn.has_sessions());
        let sessions = conn.sessions();
        for s in &sessions {
            assert!(!s.transports.is_empty(), "session without a track");
        }
        for ch in 0..=255u8 {
            if let Some(u) = conn.channel(ch) {
                assert!(
                    sessions.iter().any(|s| s.id == u.session),
                    "stray channel {ch}"
                );
            }
        }
        conn.handle_close(now);
        answer(&mut conn);
        assert!(conn.poll_transmit().is_none(), "output after close");
        if let Some(t) = conn.poll_timeout() {
            conn.handle_timeout(t + Duration::from_secs(3600));
        }
        assert!(!conn.has_sessions(), "sessions outlive their timeout");
        (out, cseqs)
    };
    let (out, cseqs) = run(&[stream]);
    let cut = (usize::from(*split) * stream.len() / 255).min(stream.len());
    let (a, b) = stream.split_at(cut);
    assert_eq!(run(&[a, b]).0, out, "feeding in parts changed the output");

    let mut obuf = BytesMut::from(&out[..]);
    let mut d = Decoder::default();
    let mut got = Vec::new();
    while let Ok(Some(Frame::Message(Message::Response(r)))) = d.decode(&mut obuf) {
        got.push(r.cseq());
    }
    assert!(obuf.is_empty(), "undecodable server output");
    // One response per request, in order (the queue bound never triggers here: every
    // question is answered at once).
    assert_eq!(got.len(), cseqs.len());
    for (g, c) in got.iter().zip(&cseqs) {
        assert_eq!(g, c, "CSeq not echoed in order");
    }
}
