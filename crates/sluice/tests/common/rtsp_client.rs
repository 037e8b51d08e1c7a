//! A minimal raw RTSP/1.0 client over `TcpStream` for protocol-level tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub(crate) struct RtspResponse {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RtspResponse {
    /// Case-insensitive header lookup.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The Session header's id without `;timeout=...`.
    pub(crate) fn session_id(&self) -> Option<String> {
        self.header("Session")
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
    }

    pub(crate) fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One interleaved `$` frame: channel and payload.
#[derive(Debug, Clone)]
pub(crate) struct Interleaved {
    pub channel: u8,
    pub data: Vec<u8>,
}

/// What arrived next on the connection.
#[derive(Debug)]
pub(crate) enum Incoming {
    Response(RtspResponse),
    Data(Interleaved),
}

pub(crate) struct RtspClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    cseq: u32,
    pub user_agent: &'static str,
}

impl RtspClient {
    pub(crate) fn connect(addr: SocketAddr) -> std::io::Result<RtspClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(RtspClient {
            stream,
            buf: Vec::new(),
            cseq: 0,
            user_agent: "sluice-it",
        })
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `METHOD url RTSP/1.0` with a fresh CSeq and the given headers
    /// (and body, with Content-Length) and waits for the response,
    /// skipping interleaved data. Returns the response and the CSeq used.
    pub(crate) fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<RtspResponse> {
        self.cseq += 1;
        let mut req = format!(
            "{method} {url} RTSP/1.0\r\nCSeq: {}\r\nUser-Agent: {}\r\n",
            self.cseq, self.user_agent
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)?;
        self.read_response(Duration::from_secs(10))
    }

    pub(crate) fn last_cseq(&self) -> u32 {
        self.cseq
    }

    /// Reads until a response arrives (interleaved data is discarded).
    pub(crate) fn read_response(&mut self, timeout: Duration) -> std::io::Result<RtspResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left)? {
                Some(Incoming::Response(r)) => return Ok(r),
                Some(Incoming::Data(_)) => continue,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no RTSP response before timeout",
                    ))
                }
            }
        }
    }

    /// Next response or interleaved frame, `None` on timeout. EOF is an
    /// `UnexpectedEof` error.
    pub(crate) fn next_incoming(&mut self, timeout: Duration) -> std::io::Result<Option<Incoming>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.try_parse()? {
                return Ok(Some(item));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the server closes the connection within `timeout` (any data
    /// received meanwhile is discarded).
    pub(crate) fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true, // reset
            }
        }
        false
    }

    fn try_parse(&mut self) -> std::io::Result<Option<Incoming>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf[0] == b'$' {
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            let data = self.buf[4..4 + len].to_vec();
            let channel = self.buf[1];
            self.buf.drain(..4 + len);
            return Ok(Some(Incoming::Data(Interleaved { channel, data })));
        }
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let reason = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        if self.buf.len() < end + 4 + len {
            return Ok(None);
        }
        let body = self.buf[end + 4..end + 4 + len].to_vec();
        self.buf.drain(..end + 4 + len);
        Ok(Some(Incoming::Response(RtspResponse {
            version,
            status,
            reason,
            headers,
            body,
        })))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// DESCRIBE status for `url` (`None` on connection/parse failure).
pub(crate) fn describe_status(url: &str) -> Option<u16> {
    let addr = addr_of(url)?;
    let mut c = RtspClient::connect(addr).ok()?;
    c.request("DESCRIBE", url, &[("Accept", "application/sdp")], b"")
        .ok()
        .map(|r| r.status)
}

/// `127.0.0.1:PORT` from `rtsp://127.0.0.1:PORT/...`.
pub(crate) fn addr_of(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("rtsp://")?;
    let hostport = rest.split('/').next()?;
    hostport.parse().ok()
}

/// Absolute control URLs of each media section of `sdp`, resolved against
/// `base` (the Content-Base header or request URL).
pub(crate) fn media_control_urls(sdp: &str, base: &str) -> Vec<String> {
    let mut session_control: Option<String> = None;
    let mut out = Vec::new();
    let mut in_media = false;
    for line in sdp.lines() {
        let line = line.trim();
        if line.starts_with("m=") {
            in_media = true;
            out.push(None);
        } else if let Some(c) = line.strip_prefix("a=control:") {
            if in_media {
                *out.last_mut().unwrap() = Some(c.to_string());
            } else {
                session_control = Some(c.to_string());
            }
        }
    }
    let base = match session_control.as_deref() {
        Some(c) if c.starts_with("rtsp://") => c.to_string(),
        _ => base.to_string(),
    };
    out.into_iter()
        .map(|c| match c {
            None => base.clone(),
            Some(c) if c.starts_with("rtsp://") => c,
            Some(c) if c == "*" => base.clone(),
            Some(c) => format!("{}/{}", base.trim_end_matches('/'), c),
        })
        .collect()
}

/// A minimal H.264 SDP (640x360 baseline SPS/PPS) for raw ANNOUNCE.
pub(crate) fn h264_sdp() -> String {
    "v=0\r\n\
     o=- 0 0 IN IP4 127.0.0.1\r\n\
     s=sluice-it\r\n\
     c=IN IP4 127.0.0.1\r\n\
     t=0 0\r\n\
     m=video 0 RTP/AVP 96\r\n\
     a=rtpmap:96 H264/90000\r\n\
     a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0LAHtoCgL/lwEQAAAMABAAAAwDIPFi6gA==,aM4PyA==;profile-level-id=42c01e\r\n\
     a=control:streamid=0\r\n"
        .to_string()
}

/// Publishes `url` with a raw client: ANNOUNCE (H.264 SDP), SETUP
/// (TCP interleaved, mode=record), RECORD. Returns the connected client
/// (keep it alive to keep the path published) and the session id.
pub(crate) fn raw_publish(url: &str) -> (RtspClient, String) {
    let mut c = RtspClient::connect(addr_of(url).expect("rtsp url")).expect("connect");
    let r = c
        .request(
            "ANNOUNCE",
            url,
            &[("Content-Type", "application/sdp")],
            h264_sdp().as_bytes(),
        )
        .expect("ANNOUNCE");
    assert_eq!(r.status, 200, "ANNOUNCE: {r:?}");
    let track = format!("{url}/streamid=0");
    let r = c
        .request(
            "SETUP",
            &track,
            &[(
                "Transport",
                "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
            )],
            b"",
        )
        .expect("SETUP");
    assert_eq!(r.status, 200, "SETUP (record): {r:?}");
    let session = r.session_id().expect("Session header");
    let r = c
        .request(
            "RECORD",
            url,
            &[("Session", &session), ("Range", "npt=0.000-")],
            b"",
        )
        .expect("RECORD");
    assert_eq!(r.status, 200, "RECORD: {r:?}");
    (c, session)
}

/// DESCRIBE `url` and return (response, absolute control URL per track).
pub(crate) fn describe(c: &mut RtspClient, url: &str) -> (RtspResponse, Vec<String>) {
    let r = c
        .request("DESCRIBE", url, &[("Accept", "application/sdp")], b"")
        .expect("DESCRIBE");
    assert_eq!(r.status, 200, "DESCRIBE {url}: {r:?}");
    let base = r.header("Content-Base").unwrap_or(url).to_string();
    let controls = media_control_urls(&r.body_str(), &base);
    (r, controls)
}
