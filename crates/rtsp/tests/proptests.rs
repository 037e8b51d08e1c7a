//! Property tests: chunking invariance, robustness on arbitrary input, and
//! typed-header round trips.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_rtsp::fuzzing::{self, decode_chunks, fuzz_limits};
use sluice_rtsp::{
    format_rtp_info, interleaved, parse_rtp_info, parse_transport, Frame, Headers, Limits,
    LowerTransport, Message, Method, NptTime, Range, Request, Response, RtpInfo, SessionHeader,
    StatusCode, TransportMode, TransportSpec, Version,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------- message generators ----------

fn arb_method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just("OPTIONS".to_string()),
        Just("DESCRIBE".to_string()),
        Just("SETUP".to_string()),
        Just("PLAY".to_string()),
        Just("TEARDOWN".to_string()),
        Just("GET_PARAMETER".to_string()),
        "[A-Z][A-Z_-]{0,12}",
    ]
    .prop_map(|m| Method::parse(&m))
}

fn arb_version() -> impl Strategy<Value = Version> {
    prop_oneof![
        3 => Just(Version::RTSP_1_0),
        1 => (0u8..10, 0u8..10).prop_map(|(major, minor)| Version { major, minor }),
    ]
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    let name = "[A-Za-z][A-Za-z0-9_-]{0,15}".prop_filter("encoder owns Content-Length", |n| {
        !n.eq_ignore_ascii_case("content-length")
    });
    let value = prop_oneof![Just(String::new()), "[!-~]([ -~]{0,38}[!-~])?"];
    prop::collection::vec((name, value), 0..8).prop_map(|pairs| {
        let mut h = Headers::new();
        for (n, v) in pairs {
            h.append(n, v);
        }
        h
    })
}

fn arb_body() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let uri = prop_oneof![
        Just("*".to_string()),
        "rtsp://[a-z0-9.]{1,20}(:[0-9]{1,5})?/[a-zA-Z0-9/=_.?&-]{0,30}",
    ];
    (arb_method(), uri, arb_version(), arb_headers(), arb_body()).prop_map(
        |(method, uri, version, headers, body)| Request {
            method,
            uri,
            version,
            headers,
            body,
        },
    )
}

fn arb_response() -> impl Strategy<Value = Response> {
    let reason = prop_oneof![Just(String::new()), "[A-Za-z]([A-Za-z -]{0,20}[A-Za-z])?"];
    (
        arb_version(),
        100u16..1000,
        reason,
        arb_headers(),
        arb_body(),
    )
        .prop_map(|(version, code, reason, headers, body)| Response {
            version,
            status: StatusCode(code),
            reason,
            headers,
            body,
        })
}

/// A frame to put on the wire, and whether to precede it with blank lines.
fn arb_frame() -> impl Strategy<Value = (Frame, bool)> {
    let frame = prop_oneof![
        arb_request().prop_map(|r| Frame::Message(Message::Request(r))),
        arb_response().prop_map(|r| Frame::Message(Message::Response(r))),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(channel, p)| {
            Frame::Interleaved {
                channel,
                payload: p.into(),
            }
        }),
    ];
    (frame, any::<bool>())
}

/// Encodes `frames` and returns the wire bytes and the frames a decoder
/// must produce (messages gain the `Content-Length` the encoder writes).
fn encode_stream(frames: &[(Frame, bool)]) -> (Vec<u8>, Vec<Frame>) {
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for (frame, crlf) in frames {
        if *crlf {
            wire.extend_from_slice(b"\r\n");
        }
        fuzzing::encode_frame(frame, &mut wire);
        let mut frame = frame.clone();
        if let Frame::Message(m) = &mut frame {
            let (headers, len) = match m {
                Message::Request(r) => (&mut r.headers, r.body.len()),
                Message::Response(r) => (&mut r.headers, r.body.len()),
            };
            if len > 0 {
                headers.append("Content-Length", len.to_string());
            }
        }
        expected.push(frame);
    }
    (wire.to_vec(), expected)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_chunkings_match_whole(
        frames in prop::collection::vec(arb_frame(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (wire, expected) = encode_stream(&frames);
        let whole = decode_chunks([&wire[..]], Limits::default());
        prop_assert_eq!(&whole.error, &None);
        prop_assert_eq!(whole.rest.as_deref(), Some(&[][..]));
        prop_assert_eq!(&whole.frames, &expected);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
        let chunked = decode_chunks(chunks, Limits::default());
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn decoder_survives_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::decoder_roundtrip(&data);
        fuzzing::interleaved(&data);
    }

    #[test]
    fn decoder_survives_mutated_streams(
        frames in prop::collection::vec(arb_frame(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        split in any::<u8>(),
    ) {
        let (mut wire, _) = encode_stream(&frames);
        for (i, b) in flips {
            let at = i.index(wire.len());
            wire[at] = b;
        }
        let mut data = vec![split];
        data.extend_from_slice(&wire);
        fuzzing::decoder_roundtrip(&data);
    }

    #[test]
    fn headers_never_panic(s in "\\PC{0,80}") {
        fuzzing::headers(s.as_bytes());
    }

    #[test]
    fn headers_never_panic_on_header_like_text(
        s in "[a-zA-Z0-9=;,:\"./ _-]{0,80}",
        prefix in prop_oneof![
            Just(""), Just("RTP/AVP;"), Just("RTP/AVP/TCP;interleaved="), Just("npt="),
            Just("url=rtsp://h/t;seq="), Just("abc;timeout="), Just("smpte="),
        ],
    ) {
        fuzzing::headers(format!("{prefix}{s}").as_bytes());
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn every_split_point_matches_whole(frames in prop::collection::vec(arb_frame(), 1..5)) {
        let (wire, expected) = encode_stream(&frames);
        let whole = decode_chunks([&wire[..]], Limits::default());
        prop_assert_eq!(&whole.frames, &expected);
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            let parts = decode_chunks([a, b], Limits::default());
            prop_assert_eq!(&parts, &whole, "split at {}", split);
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole(frames in prop::collection::vec(arb_frame(), 1..5)) {
        let (wire, expected) = encode_stream(&frames);
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let outcome = decode_chunks(chunks, fuzz_limits());
        prop_assert_eq!(outcome.error, None);
        prop_assert_eq!(outcome.frames, expected);
    }
}

// ---------- header generators ----------

/// A trimmed parameter value without quotes; may need quoting on output.
fn arb_param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z0-9.:]([a-zA-Z0-9 ;,.:/=]{0,10}[a-zA-Z0-9])?"
    ]
}

fn arb_transport() -> impl Strategy<Value = TransportSpec> {
    let profile = prop_oneof![
        Just("RTP/AVP".to_string()),
        Just("RTP/AVPF".to_string()),
        Just("RTP/SAVP".to_string()),
        "[A-Za-z0-9]{1,6}/[A-Za-z0-9.-]{1,6}",
    ];
    let lower = prop::option::of(prop_oneof![
        Just(LowerTransport::Udp),
        Just(LowerTransport::Tcp)
    ]);
    let mode = prop::option::of(prop_oneof![
        Just(TransportMode::Play),
        Just(TransportMode::Record),
        arb_param_value()
            .prop_filter("not a known mode", |m| {
                !["play", "record", "receive"]
                    .iter()
                    .any(|k| m.eq_ignore_ascii_case(k))
            })
            .prop_map(TransportMode::Other),
    ]);
    let addr = || prop::option::of(arb_param_value());
    let pair16 = || prop::option::of(any::<(u16, u16)>());
    let other = prop::collection::vec(
        ("x-[a-z0-9_]{1,8}", prop::option::of(arb_param_value())),
        0..3,
    );
    (
        (
            profile,
            lower,
            any::<(bool, bool, bool)>(),
            addr(),
            addr(),
            mode,
        ),
        (
            prop::option::of(any::<(u8, u8)>()),
            prop::option::of(any::<u8>()),
            pair16(),
            pair16(),
            pair16(),
            prop::option::of(any::<u32>()),
            other,
        ),
    )
        .prop_map(
            |(
                (profile, lower, (multicast, unicast, append), destination, source, mode),
                (interleaved, ttl, port, client_port, server_port, ssrc, other),
            )| TransportSpec {
                profile,
                lower,
                multicast,
                unicast,
                destination,
                source,
                interleaved,
                ttl,
                port,
                client_port,
                server_port,
                ssrc,
                mode,
                append,
                other,
            },
        )
}

fn arb_npt_time() -> impl Strategy<Value = NptTime> {
    prop_oneof![
        Just(NptTime::Now),
        (0u64..1_000_000_000_000).prop_map(|ms| NptTime::Seconds(ms as f64 / 1000.0)),
    ]
}

fn arb_range() -> impl Strategy<Value = Range> {
    prop_oneof![
        (
            prop::option::of(arb_npt_time()),
            prop::option::of(arb_npt_time())
        )
            .prop_filter("one bound", |(s, e)| s.is_some() || e.is_some())
            .prop_map(|(start, end)| Range::Npt { start, end }),
        "(smpte|smpte-25|clock)=[0-9:.TZ]{1,12}-[0-9:.TZ]{0,12}".prop_map(Range::Other),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn transport_round_trip(specs in prop::collection::vec(arb_transport(), 1..4)) {
        for spec in &specs {
            let text = spec.to_string();
            let parsed = TransportSpec::parse(&text);
            prop_assert_eq!(parsed.as_ref(), Ok(spec), "{}", text);
        }
        let joined = sluice_rtsp::format_transport(&specs);
        prop_assert_eq!(parse_transport(&joined), Ok(specs));
    }

    #[test]
    fn range_round_trip(range in arb_range()) {
        prop_assert_eq!(Range::parse(&range.to_string()), Ok(range));
    }

    #[test]
    fn session_round_trip(id in "[A-Za-z0-9$_.+-]{1,24}", timeout in prop::option::of(any::<u32>())) {
        let s = SessionHeader { id, timeout };
        prop_assert_eq!(SessionHeader::parse(&s.to_string()), Ok(s));
    }

    #[test]
    fn rtp_info_round_trip(entries in prop::collection::vec(
        ("rtsp://[a-z0-9.]{1,15}(:[0-9]{1,5})?/[a-zA-Z0-9/=_.-]{0,20}",
         prop::option::of(any::<u16>()), prop::option::of(any::<u32>()))
            .prop_map(|(url, seq, rtptime)| RtpInfo { url, seq, rtptime }),
        1..4,
    )) {
        prop_assert_eq!(parse_rtp_info(&format_rtp_info(&entries)), Ok(entries));
    }

    #[test]
    fn interleaved_header_matches_encode(channel: u8, payload in prop::collection::vec(any::<u8>(), 0..100)) {
        let mut out = BytesMut::new();
        prop_assert!(interleaved::encode(channel, &payload, &mut out).is_ok());
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        prop_assert_eq!(&out[..4], &interleaved::header(channel, len)[..]);
        prop_assert_eq!(&out[4..], &payload[..]);
    }
}
