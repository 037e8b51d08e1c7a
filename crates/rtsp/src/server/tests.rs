//! Socket-free tests: the crate's own [`ClientSession`] (or hand-written requests, for
//! what a well-behaved client never sends) against a [`ServerConnection`], bytes passed
//! between them by hand, on a virtual clock. A small in-memory "world" answers the
//! connection's questions the way the server does.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Bytes, BytesMut};

use super::*;
use crate::auth::{
    format_challenge, parse_authorization, verify_basic, verify_digest, Challenge, Credentials,
    DigestAlgorithm, Secret,
};
use crate::client::{ClientConfig, ClientEvent, ClientMode, ClientSession, ClientTransport};
use crate::{parse_rtp_info, Decoder, Frame, Message, NptTime, TransportSpec};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BASE: &str = "rtsp://127.0.0.1:8554";

const SDP2: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n\
m=audio 0 RTP/AVP 0\r\na=control:trackID=1\r\n";
const SDP1: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=one\r\nt=0 0\r\na=control:*\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n";
const PUB_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n\
m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\na=control:streamid=1\r\n";

/// The server side of the test: what paths exist and what its limits are.
#[derive(Default)]
struct World {
    /// path → (sdp, seekable)
    paths: HashMap<String, (String, bool)>,
    /// Paths another connection publishes on.
    busy: HashSet<String>,
    /// Refuse new sessions with 503 (the session limit).
    full: bool,
    /// Refuse new reader sessions with 453 (the per-path reader limit).
    readers_full: bool,
    /// No multicast group left.
    no_groups: bool,
    /// Every UDP client port pair is already routed to another session (461).
    udp_taken: bool,
    /// Hold questions instead of answering them at once.
    hold: bool,
    /// The replay options of the last PLAY asked.
    last_replay: Option<ReplayOptions>,
}

impl World {
    fn live() -> World {
        let mut w = World::default();
        w.paths.insert("live/cam".into(), (SDP2.into(), false));
        w.paths.insert("live/one".into(), (SDP1.into(), false));
        w.paths.insert("vod/movie".into(), (SDP2.into(), true));
        w
    }

    fn tracks(sdp: &str) -> usize {
        sdp.matches("m=").count()
    }

    fn answer(&mut self, conn: &mut ServerConnection, token: Token, q: Question) {
        let nf = |p: &str| Refusal::new(StatusCode::NOT_FOUND, format!("no stream on path {p:?}"));
        let r = match q {
            Question::Describe { path, .. } => conn.answer_describe(
                token,
                self.paths
                    .get(&path)
                    .map(|(sdp, _)| Bytes::from(sdp.clone()))
                    .ok_or_else(|| nf(&path)),
            ),
            Question::Announce { path, sdp, .. } => {
                let r = if self.busy.contains(&path) {
                    Err(Refusal::new(
                        StatusCode::METHOD_NOT_VALID_IN_THIS_STATE,
                        "already has a publisher",
                    ))
                } else if path.starts_with("vod/") {
                    Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "vod/ serves stored files",
                    ))
                } else if !sdp.starts_with(b"v=0") {
                    Err(Refusal::new(StatusCode::BAD_REQUEST, "bad SDP"))
                } else {
                    let text = String::from_utf8_lossy(&sdp).into_owned();
                    self.paths.insert(path, (text, false));
                    Ok(())
                };
                conn.answer_announce(token, r)
            }
            Question::Stream { path, .. } => conn.answer_stream(
                token,
                self.paths
                    .get(&path)
                    .map(|(sdp, seekable)| StreamInfo {
                        tracks: World::tracks(sdp),
                        ssrc: vec![Some(0xDEAD_BEEF), None],
                        seekable: *seekable,
                    })
                    .ok_or_else(|| nf(&path)),
            ),
            Question::Setup {
                new_session,
                role,
                transport,
                ..
            } => {
                let r = if new_session && self.full {
                    Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "session limit (1) reached",
                    ))
                } else if new_session && role == Role::Player && self.readers_full {
                    Err(Refusal::new(
                        StatusCode::NOT_ENOUGH_BANDWIDTH,
                        "reader limit reached",
                    ))
                } else {
                    match transport {
                        TrackTransport::Multicast { group: None, .. } if self.no_groups => {
                            Err(Refusal::new(
                                StatusCode::NOT_ENOUGH_BANDWIDTH,
                                "no multicast group left",
                            ))
                        }
                        TrackTransport::Udp { .. } if self.udp_taken => Err(Refusal::new(
                            StatusCode::UNSUPPORTED_TRANSPORT,
                            "client ports already in use",
                        )),
                        TrackTransport::Multicast { group: None, .. } => Ok(SetupGrant {
                            multicast_group: Some(IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3))),
                        }),
                        _ => Ok(SetupGrant::default()),
                    }
                };
                conn.answer_setup(token, r)
            }
            Question::Play {
                path,
                range,
                scale,
                tracks,
                replay,
                ..
            } => {
                self.last_replay = Some(replay);
                let seekable = self.paths.get(&path).is_some_and(|p| p.1);
                let grant = if seekable {
                    let start = match range {
                        Some(Range::Npt {
                            start: Some(NptTime::Seconds(s)),
                            ..
                        }) => s,
                        _ => 0.0,
                    };
                    if start > 20.0 {
                        Err(Refusal::new(StatusCode::INVALID_RANGE, "beyond the end"))
                    } else if scale.is_some_and(|s| s.0 == 0.0) {
                        Err(Refusal::new(StatusCode::HEADER_FIELD_NOT_VALID, "Scale 0"))
                    } else {
                        Ok(PlayGrant {
                            range: Some(Range::Npt {
                                start: Some(NptTime::Seconds(start)),
                                end: Some(NptTime::Seconds(20.0)),
                            }),
                            scale: Some(scale.unwrap_or(Scale(1.0))),
                            starts: tracks
                                .iter()
                                .map(|t| {
                                    Some(TrackStart {
                                        seq: 100 + *t as u16,
                                        rtptime: 9000,
                                    })
                                })
                                .collect(),
                        })
                    }
                } else {
                    Ok(PlayGrant {
                        range: Some(Range::Npt {
                            start: Some(NptTime::Now),
                            end: None,
                        }),
                        scale: None,
                        starts: vec![
                            Some(TrackStart {
                                seq: 7,
                                rtptime: 1234,
                            }),
                            None,
                        ],
                    })
                };
                conn.answer_play(token, grant)
            }
            Question::Parameters { names, .. } => conn.answer_parameters(
                token,
                Ok(names
                    .into_iter()
                    .map(|n| (n, "p50=1ms".to_owned()))
                    .collect()),
            ),
        };
        r.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Digest (MD5, fixed nonce) and Basic, with users and per-path permissions.
/// A user: name, password, and what they may do where ("" = every path).
type User = (&'static str, &'static str, Vec<(Access, &'static str)>);

struct TestAuth {
    users: Vec<User>,
}

const NONCE: &str = "0123456789abcdef";

impl TestAuth {
    fn new() -> TestAuth {
        TestAuth {
            users: vec![
                (
                    "alice",
                    "secret",
                    vec![(Access::Read, ""), (Access::Publish, "")],
                ),
                ("bob", "hunter2", vec![(Access::Read, "")]),
                ("carol", "pw", vec![(Access::Read, "live/one")]),
            ],
        }
    }
}

impl Authenticator for TestAuth {
    fn check(&mut self, q: &AuthQuery<'_>, _now: Instant) -> AuthVerdict {
        let challenge = || {
            AuthVerdict::Challenge(vec![
                format_challenge(&Challenge::Digest {
                    realm: "Sluice".into(),
                    nonce: NONCE.into(),
                    opaque: None,
                    algorithm: DigestAlgorithm::Md5,
                    qop: vec!["auth".into()],
                    stale: false,
                }),
                format_challenge(&Challenge::Basic {
                    realm: "Sluice".into(),
                }),
            ])
        };
        let Some(a) = q.authorization.and_then(|h| parse_authorization(h).ok()) else {
            return challenge();
        };
        let user = self.users.iter().find(|(name, pass, _)| match &a {
            Authorization::Basic { .. } => verify_basic(&a, name, pass),
            Authorization::Digest {
                username, nonce, ..
            } => {
                username == name
                    && nonce == NONCE
                    && verify_digest(&a, q.method.as_str(), Secret::Password(pass))
            }
        });
        let Some((name, _, perms)) = user else {
            return challenge();
        };
        if perms
            .iter()
            .any(|(acc, p)| *acc == q.access && (p.is_empty() || *p == q.path))
        {
            AuthVerdict::Allowed((*name).to_owned())
        } else {
            AuthVerdict::Forbidden(format!("{name} may not {} {:?}", q.access, q.path))
        }
    }
}

use crate::auth::Authorization;

/// Counter ids: 1, 2, 3, …
fn ids() -> Box<dyn IdSource> {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        n
    })
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(PEER);
    c.transport = TransportPolicy {
        tcp: true,
        udp: true,
        multicast: true,
        server_port: Some(8000),
        multicast_port: Some(9000),
        multicast_ttl: 16,
    };
    c.parameters = vec!["sluice.egress_latency".into()];
    c
}

/// One server connection, its world and its virtual clock.
struct Harness {
    conn: ServerConnection,
    world: World,
    now: Instant,
    decoder: Decoder,
    inbuf: BytesMut,
    /// Actions other than `Ask`, in order.
    actions: Vec<Action>,
    /// Held questions (when `world.hold`).
    held: Vec<(Token, Question)>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(config(), Box::new(AllowAll), World::live())
    }

    fn with(config: ServerConfig, auth: Box<dyn Authenticator>, world: World) -> Harness {
        let now = Instant::now();
        Harness {
            conn: ServerConnection::new(config, auth, ids(), now),
            world,
            now,
            decoder: Decoder::default(),
            inbuf: BytesMut::new(),
            actions: Vec::new(),
            held: Vec::new(),
        }
    }

    fn authed() -> Harness {
        Harness::with(config(), Box::new(TestAuth::new()), World::live())
    }

    /// Executes actions: answers questions (unless held), records the others.
    fn run_actions(&mut self) {
        while let Some(a) = self.conn.poll_action() {
            match a {
                Action::Ask { token, question } => {
                    if self.world.hold {
                        self.held.push((token, question));
                    } else {
                        self.world.answer(&mut self.conn, token, question);
                    }
                }
                other => self.actions.push(other),
            }
        }
    }

    /// Feeds client bytes; returns the server's bytes.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.inbuf.extend_from_slice(bytes);
        self.conn.handle_activity(self.now);
        while let Ok(Some(frame)) = self.decoder.decode(&mut self.inbuf) {
            if let Frame::Message(Message::Request(r)) = frame {
                self.conn.handle_request(self.now, r);
                self.run_actions();
            }
        }
        self.run_actions();
        self.output()
    }

    fn output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.conn.poll_transmit() {
            out.extend_from_slice(&b);
        }
        out
    }

    /// Sends hand-written requests; returns the decoded responses.
    fn raw(&mut self, text: &str) -> Vec<Response> {
        let out = self.feed(text.as_bytes());
        responses(&out)
    }

    /// One hand-written request (CSeq added); its single response.
    fn req(&mut self, method: &str, uri: &str, headers: &[&str]) -> Response {
        self.req_body(method, uri, headers, "")
    }

    fn req_body(&mut self, method: &str, uri: &str, headers: &[&str], body: &str) -> Response {
        let mut text = format!("{method} {uri} RTSP/1.0\r\nCSeq: 9\r\n");
        for h in headers {
            text.push_str(h);
            text.push_str("\r\n");
        }
        if !body.is_empty() {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        text.push_str(body);
        let mut v = self.raw(&text);
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.conn.handle_timeout(self.now);
        self.run_actions();
    }

    fn ended(&self) -> Vec<(String, EndReason)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::EndSession {
                    session, reason, ..
                } => Some((session.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    fn refused(&self) -> Vec<u16> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Refused { status, .. } => Some(status.0),
                _ => None,
            })
            .collect()
    }
}

fn responses(bytes: &[u8]) -> Vec<Response> {
    let mut buf = BytesMut::from(bytes);
    let mut d = Decoder::default();
    let mut v = Vec::new();
    while let Ok(Some(Frame::Message(Message::Response(r)))) = d.decode(&mut buf) {
        v.push(r);
    }
    assert!(buf.is_empty(), "undecoded output: {buf:?}");
    v
}

fn client_config(url: &str, transport: ClientTransport, mode: ClientMode) -> ClientConfig {
    ClientConfig {
        url: url.into(),
        credentials: None,
        transport,
        user_agent: "test".into(),
        mode,
    }
}

fn client(h: &Harness, url: &str, transport: ClientTransport) -> ClientSession {
    ClientSession::new(client_config(url, transport, ClientMode::Play), h.now)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn publisher(h: &Harness, url: &str, transport: ClientTransport) -> ClientSession {
    let mode = ClientMode::Record {
        sdp: PUB_SDP.into(),
    };
    ClientSession::new(client_config(url, transport, mode), h.now).unwrap_or_else(|e| panic!("{e}"))
}

/// Passes bytes both ways until neither side has anything to say; returns the client's
/// events.
fn pump(c: &mut ClientSession, h: &mut Harness) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    loop {
        let mut moved = false;
        while let Some(b) = c.poll_transmit() {
            moved = true;
            let out = h.feed(&b);
            if !out.is_empty() {
                c.handle_input(&out, h.now).ok();
            }
        }
        let out = h.output();
        if !out.is_empty() {
            moved = true;
            c.handle_input(&out, h.now).ok();
        }
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        if !moved {
            return events;
        }
    }
}

fn playing(events: &[ClientEvent]) -> Option<(&Vec<Option<RtpInfo>>, &Option<Range>)> {
    events.iter().find_map(|e| match e {
        ClientEvent::Playing { rtp_info, range } => Some((rtp_info, range)),
        _ => None,
    })
}

fn failed_status(events: &[ClientEvent]) -> Option<u16> {
    events.iter().find_map(|e| match e {
        ClientEvent::Failed(crate::client::ClientError::Status { status, .. }) => Some(*status),
        _ => None,
    })
}

fn setups(events: &[ClientEvent]) -> Vec<TransportSpec> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::TrackSetup { transport, .. } => Some(transport.clone()),
            _ => None,
        })
        .collect()
}

fn transport_of(r: &Response) -> TransportSpec {
    TransportSpec::parse(r.headers.get("Transport").unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// Plays `live/cam` (2 tracks) with a client; returns it and its session id.
fn play_live(h: &mut Harness, transport: ClientTransport) -> (ClientSession, String) {
    let mut c = client(h, &format!("{BASE}/live/cam"), transport);
    let ev = pump(&mut c, h);
    assert!(playing(&ev).is_some(), "{ev:?}");
    let id = c.session_id().unwrap_or_default().to_owned();
    (c, id)
}

/// A hand-written SETUP of `live/one` over TCP; the session id.
fn setup_one(h: &mut Harness) -> String {
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one/trackID=0"),
        &["Transport: RTP/AVP/TCP;unicast;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let id = r.headers.get("Session").unwrap_or_default();
    SessionHeader::parse(id).map(|s| s.id).unwrap_or_default()
}

// ----- happy paths -----

#[test]
fn play_tcp_two_tracks_end_to_end() {
    let mut h = Harness::new();
    let mut c = client(&h, &format!("{BASE}/live/cam"), ClientTransport::Tcp);
    let ev = pump(&mut c, &mut h);
    let described = ev
        .iter()
        .any(|e| matches!(e, ClientEvent::Described { server: Some(s), .. } if s == SERVER_NAME));
    assert!(described, "{ev:?}");
    let t = setups(&ev);
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].interleaved, Some((0, 1)));
    assert_eq!(t[1].interleaved, Some((2, 3)));
    assert_eq!(t[0].ssrc, Some(0xDEAD_BEEF));
    assert_eq!(t[0].mode, Some(TransportMode::Play));
    let (info, range) = playing(&ev).unwrap();
    assert_eq!(
        range,
        &Some(Range::Npt {
            start: Some(NptTime::Now),
            end: None
        })
    );
    let first = info[0].clone().unwrap();
    assert_eq!(first.url, format!("{BASE}/live/cam/trackID=0"));
    assert_eq!((first.seq, first.rtptime), (Some(7), Some(1234)));
    // The second track has no start yet: named without seq/rtptime.
    let second = info[1].clone().unwrap();
    assert_eq!((second.seq, second.rtptime), (None, None));
    let id = c.session_id().unwrap().to_owned();
    assert_eq!(id, "0000000000000001");
    let s = h.conn.session(&id).unwrap();
    assert_eq!(s.state, State::Playing);
    assert_eq!(s.role, Role::Player);
    assert_eq!(
        h.conn.channel(2).map(|u| (u.track, u.rtcp)),
        Some((1, false))
    );
    assert_eq!(
        h.conn.channel(3).map(|u| (u.track, u.rtcp)),
        Some((1, true))
    );
    assert_eq!(h.conn.channel(4), None);
}

#[test]
fn play_udp_reply_names_client_and_server_ports() {
    let mut h = Harness::new();
    let mut c = client(
        &h,
        &format!("{BASE}/live/cam"),
        ClientTransport::Udp { rtp_port: 5000 },
    );
    let ev = pump(&mut c, &mut h);
    let t = setups(&ev);
    assert_eq!(t[0].client_port, Some((5000, 5001)));
    assert_eq!(t[0].server_port, Some((8000, 8001)));
    assert_eq!(t[1].client_port, Some((5002, 5003)));
    assert!(t[0].unicast && t[0].lower.is_none());
    let s = h.conn.sessions().remove(0);
    assert_eq!(
        s.transports[0].1,
        TrackTransport::Udp {
            rtp: (PEER, 5000).into(),
            rtcp: (PEER, 5001).into(),
            server_port: 8000
        }
    );
}

#[test]
fn setup_reply_carries_session_timeout() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;unicast;client_port=6000-6001"],
    );
    assert_eq!(r.status, StatusCode::OK);
    let s = SessionHeader::parse(r.headers.get("Session").unwrap()).unwrap();
    assert_eq!(s.timeout, Some(60));
    assert_eq!(
        r.headers.get("Transport"),
        Some("RTP/AVP;unicast;client_port=6000-6001;server_port=8000-8001;ssrc=DEADBEEF;mode=play")
    );
}

#[test]
fn multicast_setup_gets_group_port_and_ttl() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=1"),
        &["Transport: RTP/AVP;multicast"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let t = transport_of(&r);
    assert!(t.multicast);
    assert_eq!(t.destination.as_deref(), Some("239.1.2.3"));
    assert_eq!(t.port, Some((9002, 9003)));
    assert_eq!(t.ttl, Some(16));
    // The second track reuses the session's group without asking for one.
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    h.world.no_groups = true;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP;multicast", &format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(transport_of(&r).destination.as_deref(), Some("239.1.2.3"));
    assert_eq!(transport_of(&r).port, Some((9000, 9001)));
}

#[test]
fn multicast_without_group_is_453() {
    let mut h = Harness::new();
    h.world.no_groups = true;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;multicast"],
    );
    assert_eq!(r.status, StatusCode::NOT_ENOUGH_BANDWIDTH);
    assert!(!h.conn.has_sessions());
}

#[test]
fn first_acceptable_offer_wins() {
    let mut h = Harness::new();
    h.conn.config.transport.multicast = false;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;multicast, RTP/AVP;unicast;client_port=7000-7001, RTP/AVP/TCP;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(transport_of(&r).client_port, Some((7000, 7001)));
}

#[test]
fn record_tcp_end_to_end() {
    let mut h = Harness::new();
    let mut p = publisher(&h, &format!("{BASE}/pub/cam"), ClientTransport::Tcp);
    let ev = pump(&mut p, &mut h);
    assert!(playing(&ev).is_some(), "{ev:?}");
    let t = setups(&ev);
    assert_eq!(t[0].mode, Some(TransportMode::Record));
    assert_eq!(t[1].interleaved, Some((2, 3)));
    let s = h.conn.sessions().remove(0);
    assert_eq!((s.role, s.state), (Role::Recorder, State::Recording));
    assert_eq!(s.path, "pub/cam");
    assert_eq!(h.conn.announced_path(), Some("pub/cam"));
    assert!(h.actions.contains(&Action::Record {
        session: s.id.clone(),
        started: true
    }));
    let u = h.conn.channel(0).unwrap();
    assert_eq!((u.role, u.track, u.rtcp), (Role::Recorder, 0, false));
}

#[test]
fn record_udp_and_receiver_reports_on_the_clock() {
    let mut h = Harness::new();
    let mut p = publisher(
        &h,
        &format!("{BASE}/pub/cam"),
        ClientTransport::Udp { rtp_port: 5000 },
    );
    let ev = pump(&mut p, &mut h);
    let t = setups(&ev);
    assert_eq!(t[0].server_port, Some((8000, 8001)));
    assert_eq!(t[0].mode, Some(TransportMode::Record));
    let id = p.session_id().unwrap().to_owned();
    // First report 1 s after RECORD, then every 5 s.
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1));
    h.advance(Duration::from_secs(5));
    h.advance(Duration::from_secs(5));
    let reports = h
        .actions
        .iter()
        .filter(|a| {
            **a == Action::SendReceiverReports {
                session: id.clone(),
            }
        })
        .count();
    assert_eq!(reports, 3);
    // PAUSE stops them.
    let r = h.req(
        "PAUSE",
        &format!("{BASE}/pub/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    h.advance(Duration::from_secs(6));
    let after = h
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SendReceiverReports { .. }))
        .count();
    assert_eq!(after, 3);
}

#[test]
fn vod_play_range_scale_and_rtp_info() {
    let mut h = Harness::new();
    let id = {
        let r = h.req(
            "SETUP",
            &format!("{BASE}/vod/movie/trackID=0"),
            &["Transport: RTP/AVP/TCP;unicast;interleaved=0-1"],
        );
        SessionHeader::parse(r.headers.get("Session").unwrap())
            .unwrap()
            .id
    };
    let r = h.req(
        "PLAY",
        &format!("{BASE}/vod/movie"),
        &[&format!("Session: {id}"), "Range: npt=5-", "Scale: 2"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.headers.get("Range"), Some("npt=5.000-20.000"));
    assert_eq!(r.headers.get("Scale"), Some("2"));
    let info = parse_rtp_info(r.headers.get("RTP-Info").unwrap()).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].url, format!("{BASE}/vod/movie/trackID=0"));
    assert_eq!((info[0].seq, info[0].rtptime), (Some(100), Some(9000)));
    // Without Scale in the request, no Scale in the answer.
    let r = h.req(
        "PLAY",
        &format!("{BASE}/vod/movie"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.headers.get("Scale"), None);
}

#[test]
fn require_tags_other_than_onvif_replay_are_551() {
    let mut h = Harness::new();
    let r = h.req(
        "OPTIONS",
        &format!("{BASE}/vod/movie"),
        &["Require: onvif-replay"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = h.req(
        "DESCRIBE",
        &format!("{BASE}/vod/movie"),
        &["Require: onvif-replay, funky-feature"],
    );
    assert_eq!(r.status, StatusCode::OPTION_NOT_SUPPORTED, "{r:?}");
    assert_eq!(r.headers.get("Unsupported"), Some("funky-feature"));
}

#[test]
fn vod_play_passes_onvif_replay_options() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/vod/movie/trackID=0"),
        &["Transport: RTP/AVP/TCP;unicast;interleaved=0-1"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    let r = h.req(
        "PLAY",
        &format!("{BASE}/vod/movie"),
        &[
            &format!("Session: {id}"),
            "Require: onvif-replay",
            "Range: clock=20261207T031530Z-20261207T031500Z",
            "Rate-Control: no",
            "Frames: intra/500",
            "Immediate: yes",
            "Speed: 4",
            "Scale: -1",
        ],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let replay = h.world.last_replay.expect("play asked");
    let clock = replay.clock.expect("clock range");
    assert!(clock.start > clock.end);
    assert!(!replay.rate_control);
    assert!(replay.immediate);
    assert_eq!(replay.frames, Frames::Intra(Some(500)));
    assert_eq!(replay.speed, Some(4.0));
    assert!(replay.cseq > 0);
    for bad in ["Frames: some", "Rate-Control: maybe", "Speed: -2"] {
        let r = h.req(
            "PLAY",
            &format!("{BASE}/vod/movie"),
            &[&format!("Session: {id}"), bad],
        );
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {r:?}");
    }
    let r = h.req(
        "PLAY",
        &format!("{BASE}/vod/movie"),
        &[&format!("Session: {id}"), "Range: clock=2026-"],
    );
    assert_eq!(r.status, StatusCode::INVALID_RANGE, "{r:?}");
}

#[test]
fn vod_play_refused_range_keeps_session_ready() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/vod/movie/trackID=0"),
        &["Transport: RTP/AVP/TCP;unicast;interleaved=0-1"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    for (headers, status) in [
        (vec!["Range: npt=30-"], 457),
        (vec!["Range: smpte=0:00:00-"], 457),
        (vec!["Range: bogus"], 457),
        (vec!["Scale: 0"], 456),
        (vec!["Scale: fast"], 456),
    ] {
        let sess = format!("Session: {id}");
        let mut all = headers.clone();
        all.push(&sess);
        let r = h.req("PLAY", &format!("{BASE}/vod/movie"), &all);
        assert_eq!(r.status.0, status, "{headers:?}");
        assert_eq!(h.conn.session(&id).unwrap().state, State::Ready);
    }
}

#[test]
fn pause_and_resume() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "PAUSE",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("Session"), Some(id.as_str()));
    assert_eq!(h.conn.session(&id).unwrap().state, State::Ready);
    assert!(h.actions.contains(&Action::Pause {
        session: id.clone(),
        stopped: true
    }));
    // PAUSE in Ready changes nothing but is fine.
    let r = h.req(
        "PAUSE",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.conn.session(&id).unwrap().state, State::Playing);
}

#[test]
fn teardown_ends_session_and_frees_channels() {
    let mut h = Harness::new();
    let (mut c, id) = play_live(&mut h, ClientTransport::Tcp);
    c.close();
    let ev = pump(&mut c, &mut h);
    assert!(ev.contains(&ClientEvent::Closed), "{ev:?}");
    assert!(!h.conn.has_sessions());
    assert_eq!(h.conn.channel(0), None);
    assert_eq!(h.ended(), vec![(id.clone(), EndReason::Teardown)]);
    assert_eq!(h.conn.poll_timeout(), None);
    // The id is dead now.
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
}

#[test]
fn teardown_of_one_track_keeps_the_other() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "TEARDOWN",
        &format!("{BASE}/live/cam/trackID=1"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("Session"), Some(id.as_str()));
    assert!(h.actions.contains(&Action::TeardownTrack {
        session: id.clone(),
        track: 1
    }));
    assert_eq!(h.conn.channel(2), None);
    assert!(h.conn.channel(0).is_some());
    let s = h.conn.session(&id).unwrap();
    assert_eq!(s.transports.len(), 1);
    // Tearing down the last track ends the session.
    let r = h.req(
        "TEARDOWN",
        &format!("{BASE}/live/cam/trackID=0"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("Session"), None);
    assert!(!h.conn.has_sessions());
}

#[test]
fn options_lists_methods_and_echoes_cseq() {
    let mut h = Harness::new();
    let v = h.raw("OPTIONS * RTSP/1.0\r\nCSeq: 42\r\n\r\n");
    assert_eq!(v[0].status, StatusCode::OK);
    assert_eq!(v[0].cseq(), Some(42));
    assert_eq!(v[0].headers.get("Server"), Some(SERVER_NAME));
    assert_eq!(
        v[0].headers.get("Public"),
        Some("OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER")
    );
}

#[test]
fn pipelined_requests_answer_in_order() {
    let mut h = Harness::new();
    let text = format!(
        "OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n\
         DESCRIBE {BASE}/live/cam RTSP/1.0\r\nCSeq: 2\r\n\r\n\
         SETUP {BASE}/live/cam/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;interleaved=0-1\r\n\r\n\
         DESCRIBE {BASE}/nope RTSP/1.0\r\nCSeq: 4\r\n\r\n\
         OPTIONS * RTSP/1.0\r\nCSeq: 5\r\n\r\n"
    );
    let v = h.raw(&text);
    let got: Vec<(Option<u32>, u16)> = v.iter().map(|r| (r.cseq(), r.status.0)).collect();
    assert_eq!(
        got,
        vec![
            (Some(1), 200),
            (Some(2), 200),
            (Some(3), 200),
            (Some(4), 404),
            (Some(5), 200)
        ]
    );
}

#[test]
fn requests_wait_behind_an_unanswered_question() {
    let mut h = Harness::new();
    h.world.hold = true;
    let text = format!(
        "DESCRIBE {BASE}/live/cam RTSP/1.0\r\nCSeq: 1\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n"
    );
    assert!(h.raw(&text).is_empty());
    assert!(h.conn.is_waiting());
    let (token, q) = h.held.remove(0);
    assert_eq!(
        q,
        Question::Describe {
            path: "live/cam".into(),
            query: None,
        }
    );
    // A wrong answer kind or token is refused and changes nothing.
    assert!(matches!(
        h.conn.answer_play(token, Ok(PlayGrant::default())),
        Err(AnswerError::WrongKind { .. })
    ));
    assert!(matches!(
        h.conn.answer_describe(Token(99), Ok(Bytes::new())),
        Err(AnswerError::UnknownToken(_))
    ));
    h.conn
        .answer_describe(token, Ok(Bytes::from_static(SDP1.as_bytes())))
        .unwrap();
    let v = responses(&h.output());
    let got: Vec<_> = v.iter().map(|r| (r.cseq(), r.status.0)).collect();
    assert_eq!(got, vec![(Some(1), 200), (Some(2), 200)]);
    assert_eq!(
        v[0].headers.get("Content-Base"),
        Some(&*format!("{BASE}/live/cam/"))
    );
    assert_eq!(v[0].headers.get("Content-Type"), Some("application/sdp"));
    assert!(!h.conn.is_waiting());
}

#[test]
fn pipelining_is_bounded() {
    let mut h = Harness::new();
    h.world.hold = true;
    let mut text = format!("DESCRIBE {BASE}/live/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n");
    for i in 0..MAX_QUEUED_REQUESTS + 2 {
        text.push_str(&format!("OPTIONS * RTSP/1.0\r\nCSeq: {}\r\n\r\n", i + 2));
    }
    let v = h.raw(&text);
    // The two beyond the bound are refused at once; the rest wait.
    assert_eq!(v.len(), 2);
    assert!(v
        .iter()
        .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
}

#[test]
fn get_parameter_known_and_empty() {
    let mut h = Harness::new();
    let r = h.req_body(
        "GET_PARAMETER",
        &format!("{BASE}/"),
        &["Content-Type: text/parameters"],
        "sluice.egress_latency\r\n",
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"sluice.egress_latency: p50=1ms\r\n");
    assert_eq!(r.headers.get("Content-Type"), Some("text/parameters"));
    let r = h.req("GET_PARAMETER", &format!("{BASE}/"), &[]);
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
}

// ----- every status -----

#[test]
fn status_400_missing_or_bad_cseq() {
    let mut h = Harness::new();
    let v = h.raw("OPTIONS * RTSP/1.0\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: x1\r\n\r\n");
    assert_eq!(v.len(), 2);
    assert!(v
        .iter()
        .all(|r| r.status == StatusCode::BAD_REQUEST && r.cseq().is_none()));
    assert_eq!(h.refused(), vec![400, 400]);
}

#[test]
fn status_400_not_an_rtsp_url_and_pathless_announce() {
    let mut h = Harness::new();
    let r = h.req("DESCRIBE", "http://127.0.0.1/live/cam", &[]);
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.req_body(
        "ANNOUNCE",
        &format!("{BASE}/"),
        &["Content-Type: application/sdp"],
        PUB_SDP,
    );
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[test]
fn status_401_then_digest_login_succeeds() {
    let mut h = Harness::authed();
    let mut c = client(&h, &format!("{BASE}/live/cam"), ClientTransport::Tcp);
    let ev = pump(&mut c, &mut h);
    assert_eq!(failed_status(&ev), Some(401), "{ev:?}");
    assert!(h.refused().contains(&401));
    let mut h = Harness::authed();
    let mut c = client(
        &h,
        "rtsp://alice:secret@127.0.0.1:8554/live/cam",
        ClientTransport::Tcp,
    );
    let ev = pump(&mut c, &mut h);
    assert!(playing(&ev).is_some(), "{ev:?}");
    assert_eq!(h.conn.sessions()[0].principal, "alice");
}

#[test]
fn status_401_carries_challenges() {
    let mut h = Harness::authed();
    let r = h.req("DESCRIBE", &format!("{BASE}/live/cam"), &[]);
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> = r.headers.get_all("WWW-Authenticate").collect();
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].starts_with("Digest realm=\"Sluice\""));
    assert!(challenges[1].starts_with("Basic"));
}

#[test]
fn status_403_no_permission() {
    let mut h = Harness::authed();
    // bob may read but not publish.
    let mut p = ClientSession::new(
        ClientConfig {
            credentials: Some(Credentials {
                username: "bob".into(),
                password: "hunter2".into(),
            }),
            ..client_config(
                &format!("{BASE}/pub/cam"),
                ClientTransport::Tcp,
                ClientMode::Record {
                    sdp: PUB_SDP.into(),
                },
            )
        },
        h.now,
    )
    .unwrap();
    let ev = pump(&mut p, &mut h);
    assert_eq!(failed_status(&ev), Some(403), "{ev:?}");
    // carol may read live/one only.
    let mut c = client(
        &h,
        "rtsp://carol:pw@127.0.0.1:8554/live/cam",
        ClientTransport::Tcp,
    );
    let ev = pump(&mut c, &mut h);
    assert_eq!(failed_status(&ev), Some(403), "{ev:?}");
}

#[test]
fn status_403_tls_required_names_the_port() {
    let mut cfg = config();
    cfg.require_tls = Some(8322);
    let mut h = Harness::with(cfg, Box::new(AllowAll), World::live());
    let r = h.req("OPTIONS", "*", &[]);
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req("DESCRIBE", &format!("{BASE}/live/cam"), &[]);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.reason, "Forbidden - TLS required, use rtsps:// port 8322");
    // Over TLS the same request is served.
    let mut cfg = config();
    cfg.require_tls = Some(8322);
    cfg.tls = true;
    let mut h = Harness::with(cfg, Box::new(AllowAll), World::live());
    let r = h.req("DESCRIBE", &format!("{BASE}/live/cam"), &[]);
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn status_404_unknown_path_bad_path_and_track() {
    let mut h = Harness::new();
    let mut c = client(&h, &format!("{BASE}/nothing/here"), ClientTransport::Tcp);
    let ev = pump(&mut c, &mut h);
    assert_eq!(failed_status(&ev), Some(404));
    for uri in [
        format!("{BASE}/live/../etc/passwd"),
        format!("{BASE}/live/%2e%2e/x"),
        format!("{BASE}/a//b"),
    ] {
        let r = h.req("DESCRIBE", &uri, &[]);
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
    }
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=2"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[test]
fn status_404_url_of_another_path_on_a_session() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "PAUSE",
        &format!("{BASE}/live/one"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(h.conn.session(&id).unwrap().state, State::Playing);
}

#[test]
fn status_415_announce_without_sdp_type() {
    let mut h = Harness::new();
    let r = h.req_body(
        "ANNOUNCE",
        &format!("{BASE}/pub/x"),
        &["Content-Type: text/plain"],
        PUB_SDP,
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(h.conn.announced_path(), None);
}

#[test]
fn status_451_unknown_parameter() {
    let mut h = Harness::new();
    let r = h.req_body("GET_PARAMETER", &format!("{BASE}/"), &[], "volume\r\n");
    assert_eq!(r.status, StatusCode::PARAMETER_NOT_UNDERSTOOD);
    let r = h.req_body(
        "SET_PARAMETER",
        &format!("{BASE}/"),
        &[],
        "sluice.egress_latency\r\n",
    );
    assert_eq!(r.status, StatusCode::PARAMETER_NOT_UNDERSTOOD);
}

#[test]
fn status_453_reader_limit() {
    let mut h = Harness::new();
    h.world.readers_full = true;
    let mut c = client(&h, &format!("{BASE}/live/cam"), ClientTransport::Tcp);
    let ev = pump(&mut c, &mut h);
    assert_eq!(failed_status(&ev), Some(453));
    assert!(!h.conn.has_sessions());
    assert_eq!(h.conn.channel(0), None);
}

#[test]
fn status_503_session_limit() {
    let mut h = Harness::new();
    h.world.full = true;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!h.conn.has_sessions());
}

#[test]
fn status_454_without_session_or_unknown() {
    let mut h = Harness::new();
    for m in ["PLAY", "PAUSE", "RECORD", "TEARDOWN"] {
        let r = h.req(m, &format!("{BASE}/live/cam"), &[]);
        assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND, "{m}");
        let r = h.req(
            m,
            &format!("{BASE}/live/cam"),
            &["Session: 0000000000000001"],
        );
        assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND, "{m}");
    }
    let r = h.req("GET_PARAMETER", &format!("{BASE}/"), &["Session: DEADBEEF"]);
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
}

#[test]
fn status_455_method_not_valid_in_state() {
    let mut h = Harness::new();
    // SETUP for record without ANNOUNCE.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=0"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1;mode=record"],
    );
    assert_eq!(r.status, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
    // RECORD on a player session.
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "RECORD",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
}

#[test]
fn status_455_new_track_while_playing_and_play_on_recorder() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=1"),
        &[
            "Transport: RTP/AVP/TCP;interleaved=2-3",
            &format!("Session: {id}"),
        ],
    );
    assert_eq!(r.status, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
    assert_eq!(h.conn.channel(2), None, "a refused SETUP allocates nothing");
    // A publisher's session cannot PLAY.
    let mut h = Harness::new();
    let mut p = publisher(&h, &format!("{BASE}/pub/cam"), ClientTransport::Tcp);
    pump(&mut p, &mut h);
    let pid = p.session_id().unwrap().to_owned();
    let r = h.req(
        "PLAY",
        &format!("{BASE}/pub/cam"),
        &[&format!("Session: {pid}")],
    );
    assert_eq!(r.status, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
}

#[test]
fn status_455_path_already_published() {
    let mut h = Harness::new();
    h.world.busy.insert("pub/cam".into());
    let mut p = publisher(&h, &format!("{BASE}/pub/cam"), ClientTransport::Tcp);
    let ev = pump(&mut p, &mut h);
    assert_eq!(failed_status(&ev), Some(455));
    assert_eq!(h.conn.announced_path(), None);
}

#[test]
fn status_456_scale_on_live_and_garbage() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let s = format!("Session: {id}");
    let r = h.req("PLAY", &format!("{BASE}/live/cam"), &[&s, "Scale: 2"]);
    assert_eq!(r.status, StatusCode::HEADER_FIELD_NOT_VALID);
    let r = h.req("PLAY", &format!("{BASE}/live/cam"), &[&s, "Scale: inf"]);
    assert_eq!(r.status, StatusCode::HEADER_FIELD_NOT_VALID);
    // Scale 1 on live is fine and not echoed.
    let r = h.req("PLAY", &format!("{BASE}/live/cam"), &[&s, "Scale: 1"]);
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn status_457_unparsable_range() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/cam"),
        &[&format!("Session: {id}"), "Range: npt=abc-"],
    );
    assert_eq!(r.status, StatusCode::INVALID_RANGE);
}

#[test]
fn status_459_aggregate_setup_and_session_of_another_path() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED);
    let id = setup_one(&mut h);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &[
            "Transport: RTP/AVP/TCP;interleaved=4-5",
            &format!("Session: {id}"),
        ],
    );
    assert_eq!(r.status, StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED);
}

#[test]
fn status_460_play_of_one_track() {
    let mut h = Harness::new();
    let (_, id) = play_live(&mut h, ClientTransport::Tcp);
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/cam/trackID=0"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::ONLY_AGGREGATE_OPERATION_ALLOWED);
}

#[test]
fn status_461_transport_refusals() {
    let mut h = Harness::new();
    let uri = format!("{BASE}/live/one");
    for t in [
        None,
        Some("garbage;;=="),
        Some("RTP/AVP;unicast"),
        Some("RTP/AVP;unicast;client_port=0-1"),
        Some("RTP/AVP;unicast;destination=10.9.9.9;client_port=5000-5001"),
        Some("RTP/AVP/TCP;interleaved=3-3"),
    ] {
        let header = t.map(|t| format!("Transport: {t}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        let r = h.req("SETUP", &uri, &headers);
        assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT, "{t:?}");
    }
    // UDP with no server socket, and a policy without TCP.
    h.conn.config.transport.server_port = None;
    h.conn.config.transport.tcp = false;
    let r = h.req(
        "SETUP",
        &uri,
        &["Transport: RTP/AVP;unicast;client_port=5000-5001"],
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
    let r = h.req("SETUP", &uri, &["Transport: RTP/AVP/TCP;interleaved=0-1"]);
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
    assert!(!h.conn.has_sessions());
}

#[test]
fn status_461_interleaved_channel_conflict_across_sessions() {
    let mut h = Harness::new();
    setup_one(&mut h);
    // Another session of the same connection asks for the same channels.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
    // Without interleaved=, the server picks the first free pair from 2*track.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP"],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(transport_of(&r).interleaved, Some((2, 3)));
}

#[test]
fn status_461_mixed_transport_kinds_in_one_session() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=1"),
        &[
            "Transport: RTP/AVP;unicast;client_port=5000-5001",
            &format!("Session: {id}"),
        ],
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
}

#[test]
fn status_501_unimplemented_methods() {
    let mut h = Harness::new();
    for m in ["REDIRECT", "FLY", "options"] {
        let r = h.req(m, &format!("{BASE}/live/cam"), &[]);
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{m}");
        assert_eq!(r.cseq(), Some(9));
    }
}

#[test]
fn status_505_other_versions() {
    let mut h = Harness::new();
    let v = h.raw("OPTIONS * RTSP/2.0\r\nCSeq: 3\r\n\r\n");
    assert_eq!(v[0].status, StatusCode::RTSP_VERSION_NOT_SUPPORTED);
    assert_eq!(v[0].cseq(), Some(3));
}

// ----- session ownership (live555 CVE-2026-41470's class) -----

#[test]
fn session_replayed_from_another_connection_is_454() {
    let mut a = Harness::new();
    let (_, id) = play_live(&mut a, ClientTransport::Udp { rtp_port: 5000 });
    let mut b = Harness::new();
    // Same ids on b's counter: make sure b has no session of its own with that id.
    assert!(!b.conn.has_sessions());
    let s = format!("Session: {id}");
    for (m, extra) in [
        ("PLAY", None),
        ("PAUSE", None),
        ("TEARDOWN", None),
        ("GET_PARAMETER", None),
        ("SETUP", Some("Transport: RTP/AVP/TCP;interleaved=0-1")),
    ] {
        let uri = if m == "SETUP" {
            format!("{BASE}/live/cam/trackID=1")
        } else {
            format!("{BASE}/live/cam")
        };
        let mut headers = vec![s.as_str()];
        headers.extend(extra);
        let r = b.req(m, &uri, &headers);
        assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND, "{m}");
    }
    assert!(!b.conn.has_sessions(), "never adopted");
    assert!(b
        .actions
        .iter()
        .all(|x| !matches!(x, Action::Pause { .. } | Action::EndSession { .. })));
    assert_eq!(a.conn.session(&id).unwrap().state, State::Playing);
}

#[test]
fn session_replayed_by_another_user_is_454() {
    let mut h = Harness::authed();
    let mut c = client(
        &h,
        "rtsp://alice:secret@127.0.0.1:8554/live/cam",
        ClientTransport::Tcp,
    );
    assert!(playing(&pump(&mut c, &mut h)).is_some());
    let id = c.session_id().unwrap().to_owned();
    let basic = |u: &str, p: &str| {
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let bob = basic("bob", "hunter2");
    let s = format!("Session: {id}");
    let r = h.req("PLAY", &format!("{BASE}/live/cam"), &[&s, &bob]);
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=1"),
        &[&s, &bob, "Transport: RTP/AVP/TCP;interleaved=8-9"],
    );
    // SETUP's read check passes for bob, but the session is alice's.
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
    assert_eq!(h.conn.channel(8), None);
    for m in ["PAUSE", "TEARDOWN", "GET_PARAMETER"] {
        let r = h.req(m, &format!("{BASE}/live/cam"), &[&s, &bob]);
        assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND, "{m}");
    }
    assert_eq!(h.conn.session(&id).unwrap().state, State::Playing);
    // Alice herself may.
    let alice = basic("alice", "secret");
    let r = h.req("PAUSE", &format!("{BASE}/live/cam"), &[&s, &alice]);
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req("PLAY", &format!("{BASE}/live/cam"), &[&s, &alice]);
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn anonymous_sessions_are_usable_by_their_connection() {
    let mut h = Harness::new();
    let id = setup_one(&mut h);
    assert_eq!(h.conn.session(&id).unwrap().principal, ANYONE);
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/one"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::OK);
}

// ----- keep-alive -----

#[test]
fn keepalive_expiry_ends_the_session() {
    let mut h = Harness::new();
    let id = setup_one(&mut h);
    assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    h.advance(Duration::from_secs(59));
    assert!(h.conn.has_sessions());
    h.advance(Duration::from_secs(1));
    assert!(!h.conn.has_sessions());
    assert_eq!(h.ended(), vec![(id.clone(), EndReason::Timeout)]);
    assert_eq!(h.conn.channel(0), None);
    let r = h.req(
        "PLAY",
        &format!("{BASE}/live/one"),
        &[&format!("Session: {id}")],
    );
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
}

#[test]
fn keepalive_refresh_by_get_parameter_and_options() {
    let mut h = Harness::new();
    // UDP only: connection bytes alone do not count, the Session header does.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;unicast;client_port=5000-5001"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    let s = format!("Session: {id}");
    h.advance(Duration::from_secs(40));
    let r = h.req("GET_PARAMETER", &format!("{BASE}/live/one"), &[&s]);
    assert_eq!(r.headers.get("Session"), Some(id.as_str()));
    h.advance(Duration::from_secs(40));
    h.req("OPTIONS", "*", &[&s]);
    h.advance(Duration::from_secs(40));
    assert!(h.conn.has_sessions());
    // Unrelated requests without the Session header do not keep a UDP session alive.
    h.req("OPTIONS", "*", &[]);
    h.advance(Duration::from_secs(20));
    assert!(!h.conn.has_sessions());
    assert_eq!(h.ended(), vec![(id, EndReason::Timeout)]);
}

#[test]
fn client_keepalives_keep_a_session_alive_for_minutes() {
    let mut h = Harness::new();
    let (mut c, id) = play_live(&mut h, ClientTransport::Udp { rtp_port: 5000 });
    for _ in 0..20 {
        h.now += Duration::from_secs(15);
        c.handle_timeout(h.now);
        h.conn.handle_timeout(h.now);
        h.run_actions();
        pump(&mut c, &mut h);
    }
    assert!(h.conn.session(&id).is_some(), "{:?}", h.ended());
}

#[test]
fn udp_session_activity_refreshes() {
    let mut h = Harness::new();
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;unicast;client_port=5000-5001"],
    );
    let id = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    h.now += Duration::from_secs(50);
    h.conn.handle_session_activity(&id, h.now);
    h.advance(Duration::from_secs(50));
    assert!(h.conn.has_sessions());
    h.advance(Duration::from_secs(10));
    assert!(!h.conn.has_sessions());
}

#[test]
fn connection_close_keeps_udp_players_until_timeout() {
    let mut h = Harness::new();
    let tcp = setup_one(&mut h);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;unicast;client_port=5000-5001"],
    );
    let udp = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    h.conn.handle_close(h.now);
    h.run_actions();
    assert_eq!(h.ended(), vec![(tcp, EndReason::ConnectionClosed)]);
    assert!(h.conn.session(&udp).is_some());
    h.advance(Duration::from_secs(60));
    assert_eq!(h.ended().last(), Some(&(udp, EndReason::Timeout)));
    assert_eq!(h.conn.poll_timeout(), None);
    // Nothing is answered after close.
    assert!(h.raw("OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").is_empty());
}

#[test]
fn publisher_replaced_ends_recording() {
    let mut h = Harness::new();
    let mut p = publisher(&h, &format!("{BASE}/pub/cam"), ClientTransport::Tcp);
    pump(&mut p, &mut h);
    let id = p.session_id().unwrap().to_owned();
    h.conn.handle_publisher_replaced(h.now);
    h.run_actions();
    assert_eq!(h.ended(), vec![(id, EndReason::Replaced)]);
    assert_eq!(h.conn.announced_path(), None);
    assert_eq!(h.conn.channel(0), None);
}

#[test]
fn announce_again_names_the_replaced_path() {
    let mut h = Harness::new();
    h.world.hold = true;
    let body = PUB_SDP;
    h.raw(&format!(
        "ANNOUNCE {BASE}/pub/a RTSP/1.0\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let (t, q) = h.held.remove(0);
    assert!(matches!(&q, Question::Announce { replaces: None, .. }));
    h.conn.answer_announce(t, Ok(())).unwrap();
    h.output();
    h.raw(&format!(
        "ANNOUNCE {BASE}/pub/b RTSP/1.0\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let (_, q) = h.held.remove(0);
    assert!(matches!(&q, Question::Announce { replaces: Some(p), .. } if p == "pub/a"));
}

#[test]
fn record_setup_of_unknown_track_is_404() {
    let mut h = Harness::new();
    let r = h.req_body(
        "ANNOUNCE",
        &format!("{BASE}/pub/cam"),
        &["Content-Type: application/sdp"],
        PUB_SDP,
    );
    assert_eq!(r.status, StatusCode::OK);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=7"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1;mode=record"],
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Multicast is never offered to a publisher.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=0"),
        &["Transport: RTP/AVP;multicast;mode=record"],
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=0"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1;mode=record"],
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("Transport"),
        Some("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    );
}

#[test]
fn deterministic_ids_skip_collisions() {
    let mut h = Harness::with(config(), Box::new(AllowAll), World::live());
    h.conn.ids = Box::new(|| 0xABCD_u64);
    let a = setup_one(&mut h);
    assert_eq!(a, "000000000000ABCD");
    // Another source: second id differs even if the source repeats once.
    let mut seq = vec![2u64, 1, 1].into_iter();
    h.conn.ids = Box::new(move || seq.next().unwrap_or(3));
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP;interleaved=4-5"],
    );
    let b = SessionHeader::parse(r.headers.get("Session").unwrap())
        .unwrap()
        .id;
    assert_eq!(b, "0000000000000002");
}

#[test]
fn scale_header_round_trip_in_reply() {
    assert_eq!(Scale(-1.0).to_string(), "-1");
    assert_eq!(Scale(0.5).to_string(), "0.5");
}

#[test]
fn decode_error_answers_after_earlier_requests_then_stops() {
    let mut h = Harness::new();
    h.world.hold = true;
    h.raw(&format!(
        "DESCRIBE {BASE}/live/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n"
    ));
    let err = crate::DecodeError::BadHeader {
        line: "x".into(),
        cseq: Some(2),
    };
    h.conn.handle_decode_error(h.now, &err);
    assert!(
        h.output().is_empty(),
        "the 400 waits for the DESCRIBE answer"
    );
    let (t, _) = h.held.remove(0);
    h.conn
        .answer_describe(t, Ok(Bytes::from_static(SDP1.as_bytes())))
        .unwrap();
    let v = responses(&h.output());
    let got: Vec<_> = v.iter().map(|r| (r.cseq(), r.status.0)).collect();
    assert_eq!(got, vec![(Some(1), 200), (Some(2), 400)]);
    assert_eq!(v[1].headers.get("Connection"), Some("close"));
    // Nothing more is taken.
    assert!(h.raw("OPTIONS * RTSP/1.0\r\nCSeq: 3\r\n\r\n").is_empty());
    let big = crate::DecodeError::BodyTooLarge {
        length: 1,
        limit: 0,
        cseq: None,
    };
    let mut h = Harness::new();
    h.conn.handle_decode_error(h.now, &big);
    let v = responses(&h.output());
    assert_eq!(v[0].status, StatusCode::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(v[0].cseq(), None);
}

#[test]
fn missed_receiver_reports_are_not_made_up() {
    let mut h = Harness::new();
    let mut p = publisher(&h, &format!("{BASE}/pub/cam"), ClientTransport::Tcp);
    pump(&mut p, &mut h);
    // 1 s to the first report, then a 12 s stall (the connection's bytes keep it alive).
    h.now += Duration::from_secs(13);
    h.conn.handle_activity(h.now);
    h.conn.handle_timeout(h.now);
    h.run_actions();
    let n = h
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SendReceiverReports { .. }))
        .count();
    assert_eq!(n, 1);
    // Next slot on the 1 s + 5k grid after 13 s: 16 s.
    let t0 = h.now - Duration::from_secs(13);
    assert_eq!(h.conn.poll_timeout(), Some(t0 + Duration::from_secs(16)));
}

#[test]
fn repeated_setup_of_a_track_moves_its_channels() {
    let mut h = Harness::new();
    let id = setup_one(&mut h);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one/trackID=0"),
        &[
            "Transport: RTP/AVP/TCP;interleaved=6-7",
            &format!("Session: {id}"),
        ],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(h.conn.channel(0), None);
    assert_eq!(
        h.conn.channel(6).map(|u| u.session.clone()),
        Some(id.clone())
    );
    assert_eq!(
        h.conn.session(&id).unwrap().transports,
        vec![(0, TrackTransport::Tcp { rtp: 6, rtcp: 7 })]
    );
}

#[test]
fn a_repeating_id_source_gets_503_not_a_hang() {
    let mut h = Harness::new();
    h.conn.ids = Box::new(|| 5u64);
    setup_one(&mut h);
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/cam/trackID=0"),
        &["Transport: RTP/AVP/TCP;interleaved=4-5"],
    );
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.conn.sessions().len(), 1);
}

#[test]
fn refused_udp_commit_moves_on_to_the_next_offer() {
    let mut h = Harness::new();
    h.world.udp_taken = true;
    let r = h.req_body(
        "ANNOUNCE",
        &format!("{BASE}/pub/cam"),
        &["Content-Type: application/sdp"],
        PUB_SDP,
    );
    assert_eq!(r.status, StatusCode::OK);
    // The publisher's ports are taken: its second offer, TCP, is what it gets.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=0"),
        &["Transport: RTP/AVP;unicast;client_port=5000-5001;mode=record, RTP/AVP/TCP;interleaved=0-1;mode=record"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(transport_of(&r).interleaved, Some((0, 1)));
    assert_eq!(h.conn.sessions().len(), 1);
    assert!(h.conn.channel(0).is_some());
    // With no offer left, the server's refusal stands and nothing is created.
    let r = h.req(
        "SETUP",
        &format!("{BASE}/pub/cam/streamid=1"),
        &["Transport: RTP/AVP;unicast;client_port=5002-5003;mode=record"],
    );
    assert_eq!(r.status, StatusCode::UNSUPPORTED_TRANSPORT);
}

#[test]
fn multicast_without_group_moves_on_to_the_next_offer() {
    let mut h = Harness::new();
    h.world.no_groups = true;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP;multicast, RTP/AVP/TCP;interleaved=4-5"],
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let t = transport_of(&r);
    assert!(!t.multicast);
    assert_eq!(t.interleaved, Some((4, 5)));
    // A limit of the server, not of the transport, is not retried.
    let mut h = Harness::new();
    h.world.readers_full = true;
    let r = h.req(
        "SETUP",
        &format!("{BASE}/live/one"),
        &["Transport: RTP/AVP/TCP;interleaved=0-1, RTP/AVP;unicast;client_port=5000-5001"],
    );
    assert_eq!(r.status, StatusCode::NOT_ENOUGH_BANDWIDTH);
    assert!(!h.conn.has_sessions());
}
