//! Named tolerances for real-world RTSP servers and cameras.
//!
//! Each item documents the deviation from RFC 2326 it accepts and the kind
//! of server it was written for. The client state machine
//! ([`super::ClientSession`]) uses only these helpers to interpret server
//! responses, so every tolerance is in one place and unit-tested here.

use std::time::Duration;

use crate::headers::split_unquoted;
use crate::{SessionHeader, TransportSpec};

/// RFC 2326 §12.37 default session timeout, used when the `Session` header
/// has no (or a zero) `timeout=` parameter.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// Base URL for resolving `a=control:` attributes (RFC 2326 C.1.1):
/// `Content-Base`, else `Content-Location`, else the request URL.
///
/// Quirk: empty or whitespace-only `Content-Base` values (sent by some
/// embedded camera servers) are treated as absent.
pub fn control_base(
    content_base: Option<&str>,
    content_location: Option<&str>,
    request_url: &str,
) -> String {
    [content_base, content_location]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(request_url)
        .to_owned()
}

/// True when `s` starts with an RTSP URL scheme (case-insensitive).
fn is_absolute(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("rtsp://") || lower.starts_with("rtsps://") || lower.starts_with("rtspu://")
}

/// `scheme://authority` of an absolute URL (no trailing slash).
fn origin(url: &str) -> &str {
    let Some(pos) = url.find("://") else {
        return url;
    };
    let rest = url.get(pos + 3..).unwrap_or_default();
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    url.get(..pos + 3 + end).unwrap_or(url)
}

/// Resolves a media or session `a=control:` value against `base`.
///
/// Tolerances, matching what ffmpeg's and live555's clients do:
/// * **control `*` or absent** — the base itself (the aggregate URL);
///   live555-based servers and most cameras use `a=control:*` at session
///   level.
/// * **absolute control URLs** (`rtsp://…`, any case) are used verbatim;
///   Hikvision- and Axis-class cameras send them, sometimes with a query
///   string.
/// * **`Content-Base` without trailing slash** — RFC 3986 resolution would
///   drop the last path segment (`rtsp://cam/live` + `trackID=1` →
///   `rtsp://cam/trackID=1`), which no camera expects; the control is
///   appended after a `/` instead (`rtsp://cam/live/trackID=1`). Bases
///   with a query string (Dahua-class `…/realmonitor?channel=1&subtype=0`)
///   are appended to the same way.
/// * **absolute-path controls** (`/stream1/track1`) replace the base's path.
pub fn join_control(base: &str, control: Option<&str>) -> String {
    let control = control.map(str::trim).unwrap_or_default();
    if control.is_empty() || control == "*" {
        return base.to_owned();
    }
    if is_absolute(control) {
        return control.to_owned();
    }
    if control.starts_with('/') {
        return format!("{}{control}", origin(base));
    }
    if base.ends_with('/') {
        format!("{base}{control}")
    } else {
        format!("{base}/{control}")
    }
}

/// Session- and media-level `a=control:` values of an SDP description:
/// `(session_control, one entry per m= line)`.
///
/// Tolerates `\n`-only line endings and attributes in any case; returns no
/// media for text without `m=` lines.
pub fn sdp_controls(sdp: &str) -> (Option<String>, Vec<Option<String>>) {
    let mut session = None;
    let mut media: Vec<Option<String>> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim();
        if line.starts_with("m=") {
            media.push(None);
            continue;
        }
        let Some(attr) = line.strip_prefix("a=").or_else(|| line.strip_prefix("A=")) else {
            continue;
        };
        let Some((name, value)) = attr.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("control") {
            continue;
        }
        let value = Some(value.trim().to_owned());
        match media.last_mut() {
            Some(slot) => *slot = value,
            None => session = value,
        }
    }
    (session, media)
}

/// Parses a number that should be decimal but which servers sometimes send
/// in hex (`0x…`, or hex letters), or as a negative decimal (two's
/// complement). Returns the value truncated to 64 bits.
fn parse_number(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('"').trim();
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return parse_hex(h);
    }
    if let Some(neg) = v.strip_prefix('-') {
        let n: i64 = neg
            .parse()
            .ok()
            .filter(|_| neg.bytes().all(|b| b.is_ascii_digit()))?;
        return Some(n.wrapping_neg() as u64);
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    parse_hex(v)
}

/// Hex digits (leading zeros allowed) into a `u64`.
fn parse_hex(h: &str) -> Option<u64> {
    let h = h.trim_start_matches('0');
    if h.is_empty() {
        return Some(0);
    }
    if h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// Parses an SSRC from `Transport: …;ssrc=` or `RTP-Info: …;ssrc=`.
///
/// RFC 2326 says 8 hex digits. Tolerated: fewer digits, `0x` prefixes,
/// more than 8 digits with leading zeros, and **decimal** values too long
/// to be hex (some embedded camera servers print the SSRC with `%u`, e.g.
/// `ssrc=3735928559`) or negative (`%d`). Up to 8 plain digits stay hex.
pub fn parse_ssrc(v: &str) -> Option<u32> {
    let t = v.trim().trim_matches('"').trim();
    let digits = t.trim_start_matches('0');
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    if t.starts_with("0x") || t.starts_with("0X") || t.starts_with('-') {
        return parse_number(t).map(|n| n as u32);
    }
    if is_hex(t) && digits.len() <= 8 {
        return parse_hex(t).and_then(|n| u32::try_from(n).ok());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().ok().and_then(|n| u32::try_from(n).ok());
    }
    None
}

/// Parses a `Transport` header from a SETUP response, keeping what it can.
///
/// Tolerances:
/// * **trailing `;`**, spaces and **reordered parameters** (accepted by the
///   strict parser already; e.g. `RTP/AVP/TCP;interleaved=0-1;unicast;`
///   from various IP cameras);
/// * **non-standard SSRC syntax** via [`parse_ssrc`];
/// * **malformed individual parameters** (e.g. `mode=` junk, bad `ttl`)
///   are dropped instead of rejecting the header;
/// * several alternatives: the first parseable one is used.
pub fn parse_transport_lenient(v: &str) -> Option<TransportSpec> {
    split_unquoted(v, ',')
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .find_map(parse_spec_lenient)
}

/// One transport-spec, lenient (see [`parse_transport_lenient`]).
fn parse_spec_lenient(alt: &str) -> Option<TransportSpec> {
    let mut params = split_unquoted(alt, ';').into_iter();
    let head = params.next()?.trim();
    TransportSpec::parse(head).ok()?;
    let mut kept = vec![head.to_owned()];
    let mut ssrc = None;
    for p in params {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        if name.trim().eq_ignore_ascii_case("ssrc") {
            ssrc = parse_ssrc(value);
            continue;
        }
        if TransportSpec::parse(&format!("{head};{p}")).is_ok() {
            kept.push(p.to_owned());
        }
    }
    let mut spec = TransportSpec::parse(&kept.join(";")).ok()?;
    spec.ssrc = ssrc;
    Some(spec)
}

/// Parses a `Session` response header.
///
/// Tolerances: **trailing spaces** and **trailing `;`** (e.g.
/// `Session: 1234ABCD ;` from some embedded camera servers), a quoted id,
/// and ids with characters outside RFC 2326's set (any visible ASCII is
/// echoed back verbatim). A malformed `timeout=` is ignored.
pub fn parse_session_lenient(v: &str) -> Option<SessionHeader> {
    if let Ok(h) = SessionHeader::parse(v) {
        return Some(h);
    }
    let mut parts = v.split(';');
    let id = parts.next()?.trim().trim_matches('"').trim();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let timeout = parts.find_map(|p| {
        let (n, val) = p.split_once('=')?;
        if n.trim().eq_ignore_ascii_case("timeout") {
            val.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    });
    Some(SessionHeader {
        id: id.to_owned(),
        timeout,
    })
}

/// Chooses the session id to send next: **the latest one the server sent**.
///
/// Quirk: some servers (seen on budget NVRs and some GStreamer-based
/// servers proxied by middleware) return a different `Session` id in a
/// later SETUP or PLAY response than in the first SETUP; they expect the
/// newest one.
pub fn latest_session_id(
    current: Option<String>,
    received: Option<&SessionHeader>,
) -> Option<String> {
    received.map(|h| h.id.clone()).or(current)
}

/// Session timeout from a `Session` header: `timeout=` seconds, or
/// [`DEFAULT_SESSION_TIMEOUT`] when **missing** (most Hikvision-class
/// cameras and many live555 builds omit it) **or zero**.
pub fn session_timeout(timeout: Option<u32>) -> Duration {
    match timeout {
        Some(t) if t > 0 => Duration::from_secs(u64::from(t)),
        _ => DEFAULT_SESSION_TIMEOUT,
    }
}

/// Interleaved channels for a track: **the server's** when its SETUP
/// response names them, else the requested ones.
///
/// Quirk: some cameras ignore the requested `interleaved=` pair (for
/// example always answering `0-1` or numbering tracks their own way); the
/// frames then arrive on the channels from the response.
pub fn interleaved_channels(requested: (u8, u8), response: Option<&TransportSpec>) -> (u8, u8) {
    response.and_then(|t| t.interleaved).unwrap_or(requested)
}

/// Whether a response without a `CSeq` header may be matched to the only
/// outstanding request.
///
/// Quirk: some minimal embedded servers omit `CSeq` on responses. With one
/// request in flight the match is unambiguous; with several the response is
/// ignored.
pub fn match_without_cseq(outstanding: usize) -> bool {
    outstanding == 1
}

/// Whether a failed initial `OPTIONS` stops the session.
///
/// Quirk: several camera servers answer `OPTIONS` with `404`, `405` or
/// `501` (or require auth only for later methods); like ffmpeg, the client
/// carries on with DESCRIBE/ANNOUNCE. Only `401` is handled (by retrying
/// with credentials) before this is consulted.
pub fn options_failure_is_fatal(_status: u16) -> bool {
    false
}

/// One entry of a leniently parsed `RTP-Info` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpInfoEntry {
    /// Stream URL as sent.
    pub url: String,
    /// First sequence number.
    pub seq: Option<u16>,
    /// RTP timestamp (low 32 bits).
    pub rtptime: Option<u32>,
    /// SSRC, if given.
    pub ssrc: Option<u32>,
}

/// Parses an `RTP-Info` header without ever failing.
///
/// Tolerances: `seq`/`rtptime` in hex (`0x…`) or negative decimal, rtptime
/// beyond 32 bits (truncated; some servers print an unwrapped 64-bit
/// clock), an `ssrc=` parameter in any syntax [`parse_ssrc`] accepts,
/// trailing `;`/`,`, `;` inside URLs, and entries without `url=` (skipped).
pub fn parse_rtp_info_lenient(v: &str) -> Vec<RtpInfoEntry> {
    let mut entries = Vec::new();
    let mut start = 0;
    let mut cuts = Vec::new();
    for (i, _) in v.match_indices(',') {
        let rest = v.get(i + 1..).unwrap_or_default().trim_start();
        if rest
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("url="))
        {
            cuts.push(v.get(start..i).unwrap_or_default());
            start = i + 1;
        }
    }
    cuts.push(v.get(start..).unwrap_or_default());
    for entry in cuts {
        let mut pieces = entry.trim().trim_end_matches(',').split(';');
        let first = pieces.next().unwrap_or_default().trim();
        let Some(url) = first
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("url="))
            .and_then(|_| first.get(4..))
        else {
            continue;
        };
        let mut e = RtpInfoEntry {
            url: url.trim().trim_matches('"').to_owned(),
            seq: None,
            rtptime: None,
            ssrc: None,
        };
        let mut in_params = false;
        for piece in pieces {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            // Junk after a stray comma belongs to no parameter.
            let value = value.split(',').next().unwrap_or_default();
            match name.trim().to_ascii_lowercase().as_str() {
                "seq" => {
                    e.seq = parse_number(value).and_then(|n| u16::try_from(n).ok());
                    in_params = true;
                }
                "rtptime" => {
                    e.rtptime = parse_number(value).map(|n| n as u32);
                    in_params = true;
                }
                "ssrc" => {
                    e.ssrc = parse_ssrc(value);
                    in_params = true;
                }
                _ if !in_params => {
                    e.url.push(';');
                    e.url.push_str(piece);
                }
                _ => {}
            }
        }
        entries.push(e);
    }
    entries
}

/// The path of a URL with scheme and authority removed, without a trailing
/// slash.
fn path_of(url: &str) -> &str {
    let o = origin(url);
    url.get(o.len()..).unwrap_or_default().trim_end_matches('/')
}

/// Assigns `RTP-Info` entries to tracks by URL.
///
/// Tolerances, tried in order for each track:
/// 1. exact URL match;
/// 2. same path ignoring scheme/host/port (cameras behind NAT report their
///    internal address, e.g. `rtsp://192.168.1.64/…` when reached by a
///    public one) and trailing slash;
/// 3. the entry URL is a suffix of the control URL (relative URLs such as
///    `url=trackID=1`, sent by some live555-derived camera firmwares);
/// 4. if nothing matched at all and the counts are equal, by position
///    (servers reporting the aggregate URL in every entry).
pub fn match_rtp_info(entries: &[RtpInfoEntry], controls: &[String]) -> Vec<Option<RtpInfoEntry>> {
    let find = |control: &str| {
        entries
            .iter()
            .find(|e| e.url == control)
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| is_absolute(&e.url) && path_of(&e.url) == path_of(control))
            })
            .or_else(|| {
                entries.iter().find(|e| {
                    !e.url.is_empty()
                        && !is_absolute(&e.url)
                        && control
                            .trim_end_matches('/')
                            .ends_with(e.url.trim_end_matches('/'))
                })
            })
            .cloned()
    };
    let matched: Vec<Option<RtpInfoEntry>> = controls.iter().map(|c| find(c)).collect();
    let distinct = {
        let mut urls: Vec<&str> = matched.iter().flatten().map(|e| e.url.as_str()).collect();
        urls.dedup();
        urls.len()
    };
    if (matched.iter().all(Option::is_none) || (distinct == 1 && controls.len() > 1))
        && entries.len() == controls.len()
    {
        return entries.iter().cloned().map(Some).collect();
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_resolution() {
        // Trailing slash present (Hikvision style).
        assert_eq!(
            join_control("rtsp://cam/Streaming/Channels/101/", Some("trackID=1")),
            "rtsp://cam/Streaming/Channels/101/trackID=1"
        );
        // Missing trailing slash.
        assert_eq!(
            join_control("rtsp://cam/live", Some("trackID=1")),
            "rtsp://cam/live/trackID=1"
        );
        // Absolute control, any case.
        assert_eq!(
            join_control("rtsp://cam/a/", Some("RTSP://cam:554/a/track1?x=1")),
            "RTSP://cam:554/a/track1?x=1"
        );
        // `*` and absent.
        assert_eq!(join_control("rtsp://cam/a/", Some("*")), "rtsp://cam/a/");
        assert_eq!(join_control("rtsp://cam/a", None), "rtsp://cam/a");
        // Absolute path.
        assert_eq!(
            join_control("rtsp://u@cam:554/a/b/", Some("/x/y")),
            "rtsp://u@cam:554/x/y"
        );
        // Query in base (Dahua style).
        assert_eq!(
            join_control(
                "rtsp://cam/cam/realmonitor?channel=1&subtype=0/",
                Some("trackID=0")
            ),
            "rtsp://cam/cam/realmonitor?channel=1&subtype=0/trackID=0"
        );
        assert_eq!(
            control_base(Some(" "), Some("rtsp://loc/"), "rtsp://req"),
            "rtsp://loc/"
        );
        assert_eq!(
            control_base(Some("rtsp://b/"), Some("rtsp://loc/"), "rtsp://req"),
            "rtsp://b/"
        );
        assert_eq!(control_base(None, None, "rtsp://req"), "rtsp://req");
    }

    #[test]
    fn sdp_control_extraction() {
        let sdp = "v=0\no=- 0 0 IN IP4 0.0.0.0\ns=x\nA=CONTROL:*\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\nm=audio 0 RTP/AVP 0\nm=application 0 RTP/AVP 107\na=control: rtsp://h/x \n";
        let (s, m) = sdp_controls(sdp);
        assert_eq!(s.as_deref(), Some("*"));
        assert_eq!(
            m,
            vec![Some("trackID=0".into()), None, Some("rtsp://h/x".into())]
        );
        assert_eq!(sdp_controls("garbage"), (None, vec![]));
    }

    #[test]
    fn ssrc_forms() {
        assert_eq!(parse_ssrc("6B8B4567"), Some(0x6B8B4567));
        assert_eq!(parse_ssrc("1a"), Some(0x1a));
        assert_eq!(parse_ssrc("12345678"), Some(0x12345678));
        assert_eq!(parse_ssrc("0x1A2B"), Some(0x1A2B));
        assert_eq!(parse_ssrc("3735928559"), Some(3_735_928_559));
        assert_eq!(parse_ssrc("000000001A2B3C4D"), Some(0x1A2B3C4D));
        assert_eq!(parse_ssrc("-1"), Some(u32::MAX));
        assert_eq!(parse_ssrc("\"ABCDEF01\""), Some(0xABCDEF01));
        assert_eq!(parse_ssrc("99999999999"), None);
        assert_eq!(parse_ssrc("xyz"), None);
        assert_eq!(parse_ssrc(""), None);
    }

    #[test]
    fn transport_lenient() {
        let t = parse_transport_lenient(
            "RTP/AVP/TCP;interleaved=4-5;unicast;ssrc=3735928559;mode=\"pl\"ay\";",
        )
        .unwrap_or_default();
        assert!(t.is_tcp() && t.unicast);
        assert_eq!(t.interleaved, Some((4, 5)));
        assert_eq!(t.ssrc, Some(3_735_928_559));
        assert_eq!(t.mode, None);
        let t = parse_transport_lenient(
            "RTP/AVP;server_port=6970-6971;client_port=5000-5001;source=10.0.0.1;ttl=999",
        )
        .unwrap_or_default();
        assert_eq!(t.server_port, Some((6970, 6971)));
        assert_eq!(t.source.as_deref(), Some("10.0.0.1"));
        assert_eq!(t.ttl, None);
        assert_eq!(parse_transport_lenient("garbage"), None);
        assert_eq!(parse_transport_lenient(""), None);
    }

    #[test]
    fn session_forms() {
        let s = |id: &str, t: Option<u32>| {
            Some(SessionHeader {
                id: id.into(),
                timeout: t,
            })
        };
        assert_eq!(parse_session_lenient("1234ABCD   "), s("1234ABCD", None));
        assert_eq!(parse_session_lenient("1234ABCD ;"), s("1234ABCD", None));
        assert_eq!(
            parse_session_lenient("ab:cd/ef;timeout=30;"),
            s("ab:cd/ef", Some(30))
        );
        assert_eq!(parse_session_lenient("\"q1\";timeout=x"), s("q1", None));
        assert_eq!(parse_session_lenient(" ;timeout=3"), None);
        assert_eq!(latest_session_id(Some("a".into()), None), Some("a".into()));
        assert_eq!(
            latest_session_id(Some("a".into()), parse_session_lenient("b").as_ref()),
            Some("b".into())
        );
        assert_eq!(session_timeout(None), DEFAULT_SESSION_TIMEOUT);
        assert_eq!(session_timeout(Some(0)), DEFAULT_SESSION_TIMEOUT);
        assert_eq!(session_timeout(Some(30)), Duration::from_secs(30));
    }

    #[test]
    fn channels_and_cseq() {
        let resp = parse_transport_lenient("RTP/AVP/TCP;unicast;interleaved=6-7");
        assert_eq!(interleaved_channels((2, 3), resp.as_ref()), (6, 7));
        let resp = parse_transport_lenient("RTP/AVP/TCP;unicast");
        assert_eq!(interleaved_channels((2, 3), resp.as_ref()), (2, 3));
        assert_eq!(interleaved_channels((2, 3), None), (2, 3));
        assert!(match_without_cseq(1));
        assert!(!match_without_cseq(2));
        assert!(!options_failure_is_fatal(501));
    }

    #[test]
    fn rtp_info_lenient_and_matching() {
        let v = parse_rtp_info_lenient(
            "url=rtsp://192.168.1.64/live/trackID=0;seq=0x10;rtptime=4294967297;ssrc=1A2B3C4D, url=trackID=1;seq=-1;rtptime=7,junk;",
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].seq, Some(0x10));
        assert_eq!(v[0].rtptime, Some(1));
        assert_eq!(v[0].ssrc, Some(0x1A2B3C4D));
        assert_eq!(v[1].url, "trackID=1");
        assert_eq!(v[1].seq, None);
        assert_eq!(v[1].rtptime, Some(7));
        let controls = vec![
            "rtsp://cam.example:8554/live/trackID=0".to_string(),
            "rtsp://cam.example:8554/live/trackID=1".to_string(),
        ];
        let m = match_rtp_info(&v, &controls);
        assert_eq!(m[0].as_ref().map(|e| e.seq), Some(Some(0x10)));
        assert_eq!(m[1].as_ref().map(|e| e.rtptime), Some(Some(7)));
        // Positional fallback when every entry names the aggregate URL.
        let v = parse_rtp_info_lenient("url=rtsp://h/a;seq=1,url=rtsp://h/a;seq=2");
        let m = match_rtp_info(&v, &["rtsp://h/a/1".into(), "rtsp://h/a/2".into()]);
        assert_eq!(
            m.iter()
                .map(|e| e.as_ref().and_then(|e| e.seq))
                .collect::<Vec<_>>(),
            vec![Some(1), Some(2)]
        );
        // Exact match, partial.
        let v = parse_rtp_info_lenient("url=rtsp://h/a/2;seq=5");
        let m = match_rtp_info(&v, &["rtsp://h/a/1".into(), "rtsp://h/a/2".into()]);
        assert_eq!(m[0], None);
        assert_eq!(m[1].as_ref().and_then(|e| e.seq), Some(5));
        assert!(parse_rtp_info_lenient("").is_empty());
    }
}
