//! RTSP messages: header lists, versions, requests and responses.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::headers::parse_cseq;
use crate::{Method, StatusCode};

/// Ordered header list, case-insensitive lookup, preserves insertion order and original name casing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value for `name` (case-insensitive), trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// All values for `name` (case-insensitive) in order, trimmed.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Appends a header, keeping any existing ones of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces all headers named `name` with a single one. The new header
    /// takes the position of the first replaced one, or goes last.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(pos) => {
                self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                let pos = pos.min(self.entries.len());
                self.entries.insert(pos, (name, value));
            }
            None => self.entries.push((name, value)),
        }
    }

    /// Removes every header named `name` (case-insensitive).
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All `(name, value)` pairs in insertion order, values as stored.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `CSeq` header parsed as a `u32`, if present and valid.
    pub fn cseq(&self) -> Option<u32> {
        self.get("CSeq").and_then(|v| parse_cseq(v).ok())
    }

    /// Writes `Name: value\r\n` lines, skipping `Content-Length` (the
    /// encoder writes its own) and replacing CR/LF in values with spaces.
    fn encode(&self, out: &mut BytesMut) {
        for (name, value) in &self.entries {
            if name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            put_sanitized(out, name);
            out.put_slice(b": ");
            put_sanitized(out, value);
            out.put_slice(b"\r\n");
        }
    }
}

/// Writes `s`, replacing CR and LF bytes by spaces so a value can never
/// inject extra header lines.
fn put_sanitized(out: &mut BytesMut, s: &str) {
    out.reserve(s.len());
    for b in s.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
}

/// Writes the end of a head: `Content-Length` when the body is non-empty,
/// the blank line, then the body.
fn encode_tail(headers: &Headers, body: &Bytes, out: &mut BytesMut) {
    headers.encode(out);
    if !body.is_empty() {
        out.put_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
}

/// An RTSP protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Major version digit.
    pub major: u8,
    /// Minor version digit.
    pub minor: u8,
}

impl Version {
    /// `RTSP/1.0`.
    pub const RTSP_1_0: Version = Version { major: 1, minor: 0 };
}

impl Default for Version {
    fn default() -> Self {
        Version::RTSP_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RTSP/{}.{}", self.major, self.minor)
    }
}

/// An RTSP request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Request method.
    pub method: Method,
    /// Request-URI (`*` or an absolute `rtsp://` URL, unvalidated).
    pub uri: String,
    /// Protocol version from the request line.
    pub version: Version,
    /// Header lines in order.
    pub headers: Headers,
    /// Message body (`Content-Length` bytes).
    pub body: Bytes,
}

impl Request {
    /// A request with version RTSP/1.0, no headers and no body.
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Request {
            method,
            uri: uri.into(),
            version: Version::RTSP_1_0,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// The `CSeq` header, `None` if missing or invalid.
    pub fn cseq(&self) -> Option<u32> {
        self.headers.cseq()
    }

    /// The session id from the `Session` header (text before `;`, trimmed);
    /// `None` when absent or empty.
    pub fn session_id(&self) -> Option<&str> {
        self.headers
            .get("Session")
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// Writes the request line, headers, `Content-Length` when the body is
    /// non-empty, the blank line and the body.
    pub fn encode(&self, out: &mut BytesMut) {
        put_sanitized(out, self.method.as_str());
        out.put_u8(b' ');
        put_sanitized(out, &self.uri);
        out.put_slice(format!(" {}\r\n", self.version).as_bytes());
        encode_tail(&self.headers, &self.body, out);
    }
}

/// An RTSP response.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// Protocol version from the status line.
    pub version: Version,
    /// Status code.
    pub status: StatusCode,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header lines in order.
    pub headers: Headers,
    /// Message body (`Content-Length` bytes).
    pub body: Bytes,
}

impl Response {
    /// An RTSP/1.0 response with the standard reason phrase for `status`.
    pub fn new(status: StatusCode) -> Self {
        Response {
            version: Version::RTSP_1_0,
            status,
            reason: status.reason().to_owned(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body and `Content-Type`; `Content-Length` is written by
    /// [`Response::encode`].
    pub fn with_body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.headers.set("Content-Type", content_type);
        self.body = body.into();
        self
    }

    /// The `CSeq` header, `None` if missing or invalid.
    pub fn cseq(&self) -> Option<u32> {
        self.headers.cseq()
    }

    /// Writes the status line, headers, `Content-Length` when the body is
    /// non-empty, the blank line and the body.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(format!("{} {:03} ", self.version, self.status.0).as_bytes());
        put_sanitized(out, &self.reason);
        out.put_slice(b"\r\n");
        encode_tail(&self.headers, &self.body, out);
    }
}

/// Either kind of RTSP message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// The message's `CSeq` header, if present and valid.
    pub fn cseq(&self) -> Option<u32> {
        match self {
            Message::Request(r) => r.cseq(),
            Message::Response(r) => r.cseq(),
        }
    }

    /// The message's headers.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    /// Encodes the message (see [`Request::encode`], [`Response::encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Message::Request(r) => r.encode(out),
            Message::Response(r) => r.encode(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_ordered_and_case_insensitive() {
        let mut h = Headers::new();
        assert!(h.is_empty());
        h.append("CSeq", " 3 ");
        h.append("X-A", "1");
        h.append("x-a", "2");
        assert_eq!(h.get("cseq"), Some("3"));
        assert_eq!(h.get_all("X-a").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(h.cseq(), Some(3));
        h.set("X-A", "3");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![("CSeq", " 3 "), ("X-A", "3")]
        );
        h.set("New", "v");
        assert_eq!(h.len(), 3);
        h.remove("x-a");
        assert_eq!(h.get("X-A"), None);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn request_helpers_and_encoding() {
        let mut r = Request::new(Method::Setup, "rtsp://h/s/trackID=0");
        r.headers.append("CSeq", "2");
        r.headers.append("Session", " abc123 ;timeout=60");
        r.headers.append("Content-Length", "99");
        assert_eq!(r.cseq(), Some(2));
        assert_eq!(r.session_id(), Some("abc123"));
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(
            &out[..],
            b"SETUP rtsp://h/s/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nSession:  abc123 ;timeout=60\r\n\r\n"
        );
        r.body = Bytes::from_static(b"xyz");
        r.headers.set("CSeq", "x");
        assert_eq!(r.cseq(), None);
        out.clear();
        r.encode(&mut out);
        assert!(out.ends_with(b"Content-Length: 3\r\n\r\nxyz"));
    }

    #[test]
    fn response_builder_and_encoding() {
        let r = Response::new(StatusCode::OK)
            .with_header("CSeq", "1")
            .with_body("application/sdp", &b"v=0\r\n"[..]);
        assert_eq!(r.cseq(), Some(1));
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(
            &out[..],
            &b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"[..]
        );
        let mut out = BytesMut::new();
        Response::new(StatusCode::NOT_FOUND)
            .with_header("X", "a\r\nInjected: 1")
            .encode(&mut out);
        assert_eq!(
            &out[..],
            &b"RTSP/1.0 404 Not Found\r\nX: a  Injected: 1\r\n\r\n"[..]
        );
        assert_eq!(Version::RTSP_1_0.to_string(), "RTSP/1.0");
    }
}
