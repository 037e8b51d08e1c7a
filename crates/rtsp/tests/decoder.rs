//! Decoder behaviour on hand-written streams.

use bytes::{Bytes, BytesMut};
use sluice_rtsp::{
    DecodeError, Decoder, Frame, Limits, Message, Method, Request, Response, StatusCode, Version,
};

/// Decodes everything in `input`, returning frames and the terminal result.
fn decode_all(input: &[u8], limits: Limits) -> (Vec<Frame>, Result<(), DecodeError>, BytesMut) {
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, Ok(()), buf),
            Err(e) => return (frames, Err(e), buf),
        }
    }
}

fn request(frame: &Frame) -> &Request {
    match frame {
        Frame::Message(Message::Request(r)) => r,
        other => panic!("expected request, got {other:?}"),
    }
}

fn response(frame: &Frame) -> &Response {
    match frame {
        Frame::Message(Message::Response(r)) => r,
        other => panic!("expected response, got {other:?}"),
    }
}

fn err(input: &[u8]) -> DecodeError {
    err_with(input, Limits::default())
}

fn err_with(input: &[u8], limits: Limits) -> DecodeError {
    match decode_all(input, limits).1 {
        Err(e) => e,
        Ok(()) => panic!("expected an error for {:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn full_request_with_body() {
    let input = b"ANNOUNCE rtsp://example.com/live/stream RTSP/1.0\r\n\
CSeq: 3\r\n\
Content-Type: application/sdp\r\n\
User-Agent: Lavf60.16.100\r\n\
Content-Length: 29\r\n\
\r\n\
v=0\r\no=- 0 0 IN IP4 127.0.0.1";
    let (frames, res, rest) = decode_all(input, Limits::default());
    assert_eq!(res, Ok(()));
    assert!(rest.is_empty());
    assert_eq!(frames.len(), 1);
    let r = request(&frames[0]);
    assert_eq!(r.method, Method::Announce);
    assert_eq!(r.uri, "rtsp://example.com/live/stream");
    assert_eq!(r.version, Version::RTSP_1_0);
    assert_eq!(r.cseq(), Some(3));
    assert_eq!(r.headers.get("content-type"), Some("application/sdp"));
    assert_eq!(r.headers.len(), 4);
    assert_eq!(
        r.body,
        Bytes::from_static(b"v=0\r\no=- 0 0 IN IP4 127.0.0.1")
    );
}

#[test]
fn response_with_empty_reason_and_bare_lf() {
    let input =
        b"RTSP/1.0 200\nCSeq:7\nSession: 1234;timeout=60\n\nRTSP/1.0 454 \r\nCSeq: 8\r\n\r\n";
    let (frames, res, _) = decode_all(input, Limits::default());
    assert_eq!(res, Ok(()));
    assert_eq!(frames.len(), 2);
    let r = response(&frames[0]);
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.reason, "");
    assert_eq!(r.cseq(), Some(7));
    assert_eq!(r.headers.get("Session"), Some("1234;timeout=60"));
    let r = response(&frames[1]);
    assert_eq!(r.status, StatusCode::SESSION_NOT_FOUND);
    assert_eq!(r.cseq(), Some(8));
}

#[test]
fn response_with_reason_and_body() {
    let input = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Base: rtsp://h/s/\r\nContent-Length: 4\r\n\r\nv=0\n";
    let (frames, res, _) = decode_all(input, Limits::default());
    assert_eq!(res, Ok(()));
    let r = response(&frames[0]);
    assert_eq!(r.reason, "OK");
    assert_eq!(&r.body[..], b"v=0\n");
}

#[test]
fn interleaved_frames_between_messages_and_leading_crlf() {
    let mut input = Vec::new();
    input.extend_from_slice(b"\r\n\r\n");
    input.extend_from_slice(b"$\x00\x00\x03abc");
    input.extend_from_slice(
        b"\r\nGET_PARAMETER rtsp://h/s RTSP/1.0\r\nCSeq: 9\r\nSession: abc\r\n\r\n",
    );
    input.extend_from_slice(b"$\x01\x00\x00");
    input.extend_from_slice(b"$\x02\x00\x02\r\n");
    input.extend_from_slice(b"\n\nOPTIONS * RTSP/1.0\r\nCSeq: 10\r\n\r\n");
    let (frames, res, rest) = decode_all(&input, Limits::default());
    assert_eq!(res, Ok(()));
    assert!(rest.is_empty());
    assert_eq!(
        frames[0],
        Frame::Interleaved {
            channel: 0,
            payload: Bytes::from_static(b"abc")
        }
    );
    let r = request(&frames[1]);
    assert_eq!(r.method, Method::GetParameter);
    assert_eq!(r.session_id(), Some("abc"));
    assert_eq!(
        frames[2],
        Frame::Interleaved {
            channel: 1,
            payload: Bytes::new()
        }
    );
    // The payload may itself contain CR LF bytes.
    assert_eq!(
        frames[3],
        Frame::Interleaved {
            channel: 2,
            payload: Bytes::from_static(b"\r\n")
        }
    );
    assert_eq!(request(&frames[4]).uri, "*");
    assert_eq!(frames.len(), 5);
}

#[test]
fn incomplete_input_waits() {
    let mut d = Decoder::default();
    let mut buf = BytesMut::from(&b"$\x00\x00\x05ab"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 6);
    buf.extend_from_slice(b"cde");
    assert!(matches!(
        d.decode(&mut buf),
        Ok(Some(Frame::Interleaved { .. }))
    ));
    buf.extend_from_slice(b"PLAY rtsp://h/s RTSP/1.0\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"x");
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"y");
    let f = d.decode(&mut buf).ok().flatten();
    assert_eq!(f.as_ref().map(|f| &request(f).body[..]), Some(&b"xy"[..]));
    assert_eq!(d.decode(&mut buf), Ok(None));
}

#[test]
fn byte_at_a_time_matches_whole() {
    let input = b"\r\nSETUP rtsp://h/s/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n$\x00\x00\x01zRTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Length: 1\r\n\r\n!";
    let (whole, res, _) = decode_all(input, Limits::default());
    assert_eq!(res, Ok(()));
    let mut d = Decoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for b in input {
        buf.extend_from_slice(&[*b]);
        while let Ok(Some(f)) = d.decode(&mut buf) {
            frames.push(f);
        }
    }
    assert_eq!(frames, whole);
    assert_eq!(frames.len(), 3);
}

#[test]
fn extension_method_and_other_versions() {
    let (frames, res, _) = decode_all(
        b"FOO rtsp://h/ RTSP/2.0\r\nCSeq: 1\r\n\r\n",
        Limits::default(),
    );
    assert_eq!(res, Ok(()));
    let r = request(&frames[0]);
    assert_eq!(r.method, Method::Extension("FOO".into()));
    assert_eq!(r.version, Version { major: 2, minor: 0 });
}

#[test]
fn http_start_line_is_rejected() {
    let e = err(b"GET / HTTP/1.1\r\nHost: example.com\r\nCSeq: 4\r\n\r\n");
    assert_eq!(
        e,
        DecodeError::BadStartLine {
            line: "GET / HTTP/1.1".into(),
            cseq: Some(4)
        }
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(e.cseq(), Some(4));
    assert!(matches!(
        err(b"HTTP/1.1 200 OK\r\n\r\n"),
        DecodeError::BadStartLine { .. }
    ));
}

#[test]
fn bad_start_lines() {
    for input in [
        &b"OPTIONS\r\n\r\n"[..],
        b"OPTIONS * RTSP/1.0 extra\r\n\r\n",
        b"OPTIONS  * RTSP/1.0\r\n\r\n",
        b"OPTIONS * RTSP/10\r\n\r\n",
        b"OPTIONS * RTSP/1.00\r\n\r\n",
        b"OPTIONS * rtsp/1.0\r\n\r\n",
        b"OPT(IONS * RTSP/1.0\r\n\r\n",
        b"RTSP/1.0 20 OK\r\n\r\n",
        b"RTSP/1.0 2000 OK\r\n\r\n",
        b"RTSP/1.0 abc OK\r\n\r\n",
        b"RTSP/1.0\r\n\r\n",
        b"RTSP/x.0 200 OK\r\n\r\n",
        b"OPTIONS *\x01 RTSP/1.0\r\n\r\n",
    ] {
        let e = err(input);
        assert!(
            matches!(e, DecodeError::BadStartLine { cseq: None, .. }),
            "{e:?}"
        );
    }
    let long = format!("{} * RTSP/1.0\r\n\r\n", "A(".repeat(100));
    match err(long.as_bytes()) {
        DecodeError::BadStartLine { line, .. } => assert_eq!(line.chars().count(), 80),
        e => panic!("{e:?}"),
    }
}

#[test]
fn bad_headers() {
    for input in [
        &b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nNoColon\r\n\r\n"[..],
        b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\n: empty name\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nBad Name: x\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nBad\x01: x\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nX: a\r\n folded\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nCSeq: 5\r\nX: a\rb\r\n\r\n",
    ] {
        let e = err(input);
        assert!(
            matches!(e, DecodeError::BadHeader { cseq: Some(5), .. }),
            "{e:?}"
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn content_length_errors() {
    for value in [
        "abc",
        "-1",
        "+5",
        "1 2",
        "99999999999999999999999",
        "0x10",
        "",
    ] {
        let input =
            format!("PLAY rtsp://h/ RTSP/1.0\r\nCSeq: 6\r\nContent-Length: {value}\r\n\r\n");
        let e = err(input.as_bytes());
        assert_eq!(
            e,
            DecodeError::BadContentLength {
                value: value.into(),
                cseq: Some(6)
            }
        );
    }
    let e = err(b"PLAY rtsp://h/ RTSP/1.0\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert!(matches!(
        e,
        DecodeError::BadContentLength { cseq: None, .. }
    ));
    // Repeated identical values are accepted.
    let (f, res, _) = decode_all(
        b"PLAY rtsp://h/ RTSP/1.0\r\nContent-Length: 1\r\ncontent-length: 01\r\n\r\nz",
        Limits::default(),
    );
    assert_eq!((f.len(), res), (1, Ok(())));
}

#[test]
fn body_too_large() {
    let limits = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let e = err_with(
        b"ANNOUNCE rtsp://h/ RTSP/1.0\r\nCSeq: 12\r\nContent-Length: 11\r\n\r\n",
        limits,
    );
    assert_eq!(
        e,
        DecodeError::BodyTooLarge {
            length: 11,
            limit: 10,
            cseq: Some(12)
        }
    );
    assert_eq!(e.status(), StatusCode::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(e.cseq(), Some(12));
    let (f, res, _) = decode_all(
        b"ANNOUNCE rtsp://h/ RTSP/1.0\r\nContent-Length: 10\r\n\r\n0123456789",
        limits,
    );
    assert_eq!((f.len(), res), (1, Ok(())));
}

#[test]
fn head_too_large() {
    let limits = Limits {
        max_head_bytes: 64,
        ..Limits::default()
    };
    // Exactly at the limit is fine: head counts through the blank line.
    let mut head = b"OPTIONS * RTSP/1.0\r\nX: ".to_vec();
    head.resize(60, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 64);
    let (f, res, _) = decode_all(&head, limits);
    assert_eq!((f.len(), res), (1, Ok(())));
    // One more byte and it is too large, even though it is complete.
    let mut big = b"OPTIONS * RTSP/1.0\r\nX: ".to_vec();
    big.resize(61, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        err_with(&big, limits),
        DecodeError::HeadTooLarge { limit: 64 }
    );
    // Unterminated: waits up to the limit, errors as soon as it is exceeded.
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(&[b'A'; 64][..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"A");
    let e = d.decode(&mut buf);
    assert_eq!(e, Err(DecodeError::HeadTooLarge { limit: 64 }));
    assert_eq!(e.err().and_then(|e| e.cseq()), None);
    // Errors are sticky.
    assert_eq!(
        d.decode(&mut buf),
        Err(DecodeError::HeadTooLarge { limit: 64 })
    );
}

#[test]
fn too_many_headers() {
    let limits = Limits {
        max_headers: 3,
        ..Limits::default()
    };
    let ok = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(decode_all(ok, limits).1, Ok(()));
    let e = err_with(
        b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
        limits,
    );
    assert_eq!(
        e,
        DecodeError::TooManyHeaders {
            limit: 3,
            cseq: Some(1)
        }
    );
}

#[test]
fn not_utf8() {
    let e = err(b"OPTIONS * RTSP/1.0\r\nCSeq: 77\r\nX: \xff\xfe\r\n\r\n");
    assert_eq!(e, DecodeError::NotUtf8 { cseq: Some(77) });
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(e.to_string(), "message head is not valid UTF-8");
}

#[test]
fn body_bytes_need_not_be_utf8() {
    let (f, res, _) = decode_all(
        b"SET_PARAMETER rtsp://h/ RTSP/1.0\r\nContent-Length: 2\r\n\r\n\xff\x00",
        Limits::default(),
    );
    assert_eq!(res, Ok(()));
    assert_eq!(&request(&f[0]).body[..], b"\xff\x00");
}

#[test]
fn encode_then_decode() {
    let mut req = Request::new(
        Method::Describe,
        "rtsp://cam.local:554/Streaming/Channels/101",
    );
    req.headers.append("CSeq", "2");
    req.headers.append("Accept", "application/sdp");
    let resp = Response::new(StatusCode::OK)
        .with_header("CSeq", "2")
        .with_body("application/sdp", &b"v=0\r\n"[..]);
    let mut buf = BytesMut::new();
    req.encode(&mut buf);
    resp.encode(&mut buf);
    let (frames, res, _) = decode_all(&buf, Limits::default());
    assert_eq!(res, Ok(()));
    assert_eq!(frames[0], Frame::Message(Message::Request(req)));
    let mut expected = resp;
    expected.headers.append("Content-Length", "5");
    assert_eq!(frames[1], Frame::Message(Message::Response(expected)));
}
