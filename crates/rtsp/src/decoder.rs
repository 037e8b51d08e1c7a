//! Incremental decoder for RTSP byte streams (messages mixed with
//! `$`-interleaved binary frames).

use bytes::{Buf, Bytes, BytesMut};

use crate::headers::{is_token, parse_cseq, parse_decimal};
use crate::{Headers, Message, Method, Request, Response, StatusCode, Version};

/// Longest offending line reproduced in a [`DecodeError`].
const MAX_ECHO: usize = 80;

/// Bounds applied while decoding untrusted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message head (start line through the blank line), in bytes.
    pub max_head_bytes: usize,
    /// Largest number of header lines in one message.
    pub max_headers: usize,
    /// Largest message body (`Content-Length`), in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// One unit decoded from an RTSP stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// An RTSP request or response.
    Message(Message),
    /// A `$`-interleaved binary frame.
    Interleaved {
        /// Interleaved channel number.
        channel: u8,
        /// Frame payload (at most 65535 bytes).
        payload: Bytes,
    },
}

/// The stream could not be decoded; the connection should be answered (see
/// [`DecodeError::status`]) and closed.
///
/// Variants raised after the message head was delimited carry the `CSeq`
/// recovered from it, if any.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// No end of head was found within the head size limit.
    #[error("message head exceeds {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The head has more header lines than allowed.
    #[error("message has more than {limit} header lines")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
    /// The request or status line is malformed (including non-RTSP protocols).
    #[error("malformed start line {line:?}")]
    BadStartLine {
        /// The offending line (lossy UTF-8, at most 80 characters).
        line: String,
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
    /// A header line is malformed.
    #[error("malformed header line {line:?}")]
    BadHeader {
        /// The offending line (at most 80 characters).
        line: String,
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
    /// `Content-Length` is not a decimal number, overflows or is repeated
    /// with different values.
    #[error("invalid Content-Length {value:?}")]
    BadContentLength {
        /// The offending value (at most 80 characters).
        value: String,
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
    /// `Content-Length` exceeds the body size limit.
    #[error("body of {length} bytes exceeds the limit of {limit}")]
    BodyTooLarge {
        /// Announced body length.
        length: usize,
        /// The configured limit.
        limit: usize,
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
    /// The head is not valid UTF-8.
    #[error("message head is not valid UTF-8")]
    NotUtf8 {
        /// CSeq recovered from the head.
        cseq: Option<u32>,
    },
}

impl DecodeError {
    /// RTSP status to answer with before closing: 413 for
    /// [`DecodeError::BodyTooLarge`], 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            DecodeError::BodyTooLarge { .. } => StatusCode::REQUEST_ENTITY_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// CSeq, if it could be recovered from the bad head.
    pub fn cseq(&self) -> Option<u32> {
        match self {
            DecodeError::HeadTooLarge { .. } => None,
            DecodeError::TooManyHeaders { cseq, .. }
            | DecodeError::BadStartLine { cseq, .. }
            | DecodeError::BadHeader { cseq, .. }
            | DecodeError::BadContentLength { cseq, .. }
            | DecodeError::BodyTooLarge { cseq, .. }
            | DecodeError::NotUtf8 { cseq } => *cseq,
        }
    }
}

/// Where the decoder is within the current frame.
#[derive(Debug)]
enum State {
    /// At a frame boundary.
    Start,
    /// Inside a message head; `scanned` bytes were searched and the current
    /// line starts at `line_start`.
    Head { scanned: usize, line_start: usize },
    /// Head decoded; waiting for `len` body bytes.
    Body { message: Message, len: usize },
    /// A previous call failed; the stream is unusable.
    Failed(DecodeError),
}

/// Incremental decoder of an RTSP byte stream: requests, responses and `$`-interleaved binary frames, possibly mixed, fed in arbitrary splits.
///
/// The caller appends received bytes to a [`BytesMut`] and calls
/// [`Decoder::decode`] until it returns `Ok(None)`. Between calls the caller
/// must only append to the buffer. While `Ok(None)` is returned the buffer
/// never needs to hold more than the largest of `max_head_bytes`,
/// `max_body_bytes` and 65 539 bytes.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Start,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Consumes one complete frame from the front of `buf` if present. Ok(None) = need more bytes (buf untouched or partially scanned; it must not rescan the whole buffer on every call — keep a scan offset so feeding 1 byte at a time is linear). After an Err the stream is unusable.
    ///
    /// After an error every further call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let result = self.step(buf);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
        }
        result
    }

    /// One decoding step without the poisoning bookkeeping.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        let (mut scanned, mut line_start) = match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Body { .. } => return Ok(self.take_body(buf)),
            State::Head {
                scanned,
                line_start,
            } => (*scanned, *line_start),
            State::Start => {
                let blank = buf
                    .iter()
                    .take_while(|b| **b == b'\r' || **b == b'\n')
                    .count();
                buf.advance(blank);
                match buf.first() {
                    None => return Ok(None),
                    Some(b'$') => return Ok(take_interleaved(buf)),
                    Some(_) => (0, 0),
                }
            }
        };
        if scanned > buf.len() || line_start > scanned {
            // The caller shrank the buffer; start over rather than misindex.
            scanned = 0;
            line_start = 0;
        }
        let window_end = buf.len().min(self.limits.max_head_bytes);
        let mut head_len = None;
        while scanned < window_end {
            let window = buf.get(scanned..window_end).unwrap_or_default();
            let Some(off) = window.iter().position(|b| *b == b'\n') else {
                scanned = window_end;
                break;
            };
            let nl = scanned + off;
            let line = buf.get(line_start..nl).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            scanned = nl + 1;
            if line.is_empty() {
                head_len = Some(scanned);
                break;
            }
            line_start = scanned;
        }
        let Some(head_len) = head_len else {
            self.state = State::Head {
                scanned,
                line_start,
            };
            if buf.len() > self.limits.max_head_bytes {
                return Err(DecodeError::HeadTooLarge {
                    limit: self.limits.max_head_bytes,
                });
            }
            return Ok(None);
        };
        let (message, len) = parse_head(buf.get(..head_len).unwrap_or_default(), &self.limits)?;
        buf.advance(head_len);
        self.state = State::Body { message, len };
        Ok(self.take_body(buf))
    }

    /// Completes a message whose head was decoded once its body is buffered.
    fn take_body(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let State::Body { len, .. } = &self.state else {
            return None;
        };
        if buf.len() < *len {
            return None;
        }
        let body = buf.split_to(*len).freeze();
        let State::Body { mut message, .. } = std::mem::replace(&mut self.state, State::Start)
        else {
            return None;
        };
        match &mut message {
            Message::Request(r) => r.body = body,
            Message::Response(r) => r.body = body,
        }
        Some(Frame::Message(message))
    }
}

/// Takes a complete `$` frame from the front of `buf`, if buffered.
fn take_interleaved(buf: &mut BytesMut) -> Option<Frame> {
    let &[_, channel, hi, lo] = buf.get(..4)? else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    let payload = buf.split_to(len).freeze();
    Some(Frame::Interleaved { channel, payload })
}

/// Truncates to [`MAX_ECHO`] characters.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

/// Finds a valid `CSeq` header in a (possibly malformed) head.
fn recover_cseq(head: &[u8]) -> Option<u32> {
    head.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|b| *b == b':')?;
        let (name, value) = (line.get(..colon)?, line.get(colon + 1..)?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"cseq") {
            return None;
        }
        parse_cseq(std::str::from_utf8(value).ok()?).ok()
    })
}

/// Parses `RTSP/<digit>.<digit>`.
fn parse_version(s: &str) -> Option<Version> {
    match s.strip_prefix("RTSP/")?.as_bytes() {
        &[major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9'] => Some(Version {
            major: major - b'0',
            minor: minor - b'0',
        }),
        _ => None,
    }
}

/// Parses a request or status line into a message without headers.
fn parse_start_line(line: &str) -> Option<Message> {
    if line.chars().any(|c| c.is_control()) {
        return None;
    }
    if line.starts_with("RTSP/") {
        let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
        let version = parse_version(version)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 {
            return None;
        }
        let status = StatusCode(parse_decimal(code)?);
        return Some(Message::Response(Response {
            version,
            status,
            reason: reason.trim().to_owned(),
            headers: Headers::new(),
            body: Bytes::new(),
        }));
    }
    let mut parts = line.split(' ');
    let (method, uri, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_token(method) || uri.is_empty() {
        return None;
    }
    let mut request = Request::new(Method::parse(method), uri);
    request.version = parse_version(version)?;
    Some(Message::Request(request))
}

/// Parses `Name: value` into its parts, or `None` when malformed.
fn parse_header_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    if !is_token(name) {
        return None;
    }
    let value = value.trim_matches([' ', '\t']);
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    Some((name, value))
}

/// Parses a delimited head (ending with the blank line) into a message and
/// its body length.
fn parse_head(head: &[u8], limits: &Limits) -> Result<(Message, usize), DecodeError> {
    let cseq = || recover_cseq(head);
    let text = std::str::from_utf8(head).map_err(|_| DecodeError::NotUtf8 { cseq: cseq() })?;
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .take_while(|l| !l.is_empty());
    let start = lines.next().unwrap_or_default();
    let mut message = parse_start_line(start).ok_or_else(|| DecodeError::BadStartLine {
        line: echo(start),
        cseq: cseq(),
    })?;
    let headers = match &mut message {
        Message::Request(r) => &mut r.headers,
        Message::Response(r) => &mut r.headers,
    };
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(DecodeError::TooManyHeaders {
                limit: limits.max_headers,
                cseq: cseq(),
            });
        }
        let (name, value) = parse_header_line(line).ok_or_else(|| DecodeError::BadHeader {
            line: echo(line),
            cseq: cseq(),
        })?;
        headers.append(name, value);
    }
    let mut length: Option<usize> = None;
    for value in headers.get_all("Content-Length") {
        let bad = || DecodeError::BadContentLength {
            value: echo(value),
            cseq: cseq(),
        };
        let n: usize = parse_decimal(value).ok_or_else(bad)?;
        if length.is_some_and(|l| l != n) {
            return Err(bad());
        }
        length = Some(n);
    }
    let length = length.unwrap_or(0);
    if length > limits.max_body_bytes {
        return Err(DecodeError::BodyTooLarge {
            length,
            limit: limits.max_body_bytes,
            cseq: cseq(),
        });
    }
    Ok((message, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("RTSP/1.0"), Some(Version::RTSP_1_0));
        assert_eq!(
            parse_version("RTSP/2.1"),
            Some(Version { major: 2, minor: 1 })
        );
        for bad in [
            "HTTP/1.1",
            "RTSP/1",
            "RTSP/1.",
            "RTSP/10.0",
            "RTSP/1.0 ",
            "rtsp/1.0",
            "",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cseq_recovery() {
        assert_eq!(recover_cseq(b"X\r\ncseq : 5\r\n\r\n"), Some(5));
        assert_eq!(recover_cseq(b"X\r\nCSeq: x\r\nCSeq: 6\r\n\r\n"), Some(6));
        assert_eq!(recover_cseq(b"CSeq: 1\r\n\r\n"), None);
        assert_eq!(recover_cseq(b"X\r\nCSeq: \xff\r\n\r\n"), None);
    }

    #[test]
    fn head_scan_resumes_across_crlf_split() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(matches!(d.state, State::Head { .. }));
        buf.extend_from_slice(b"\n");
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Message(_)))));
        assert!(buf.is_empty());
    }

    #[test]
    fn shrunk_buffer_does_not_panic() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        buf.clear();
        buf.extend_from_slice(b"OPTIONS * RTSP/1.0\r\n\r\n");
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Message(_)))));
    }
}
