//! Request-URI handling: the path part of an `rtsp://` URL and the track it may name.
//!
//! The same rules as `sluice_server::url`, moved here so that the sans-IO connection
//! resolves URLs itself; the server's copy goes once the glue uses this one.

/// Why a request URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not an absolute `rtsp://` / `rtsps://` URL (nor `*`).
    #[error("request URI is not an rtsp:// URL: {0:?}")]
    NotRtsp(String),
    /// The path has characters or segments Sluice does not serve.
    #[error("invalid path in request URI: {0:?}")]
    BadPath(String),
}

/// The path of a request URL without leading/trailing slashes and without query,
/// e.g. `rtsp://h:8554/live/cam/trackID=0?x=1` → `live/cam/trackID=0`.
///
/// Only `A–Z a–z 0–9 - _ . ~ / = + : @ ,` are accepted; `.`/`..` segments and empty
/// segments are refused so a path can never be read as a file system location.
pub fn request_path(uri: &str) -> Result<String, UrlError> {
    let rest = uri
        .strip_prefix("rtsp://")
        .or_else(|| uri.strip_prefix("rtsps://"))
        .or_else(|| uri.strip_prefix("RTSP://"))
        .ok_or_else(|| UrlError::NotRtsp(truncate(uri)))?;
    let path = match rest.find('/') {
        Some(i) => &rest[i + 1..],
        None => "",
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    if path.is_empty() {
        return Ok(String::new());
    }
    let ok_chars = path.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'~' | b'/' | b'=' | b'+' | b':' | b'@' | b','
            )
    });
    let ok_segments = path
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..");
    if !ok_chars || !ok_segments {
        return Err(UrlError::BadPath(truncate(path)));
    }
    Ok(path.to_owned())
}

/// Splits a Sluice track control (`…/trackID=N`) off a path: `("live/cam", Some(N))`.
/// A path without one comes back whole with `None`.
pub fn split_track(path: &str) -> (&str, Option<usize>) {
    if let Some((base, last)) = path.rsplit_once('/') {
        if let Some(n) = last.strip_prefix("trackID=").and_then(|n| n.parse().ok()) {
            return (base, Some(n));
        }
    } else if let Some(n) = path.strip_prefix("trackID=").and_then(|n| n.parse().ok()) {
        return ("", Some(n));
    }
    (path, None)
}

/// The base URL (`rtsp://host:port/path/`) for Content-Base and RTP-Info, built from the
/// request URI so that clients get back the host name they used.
pub fn base_url(uri: &str, path: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("rtsp", uri));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{scheme}://{authority}/{path}/")
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(request_path("rtsp://h:8554/live/cam").unwrap(), "live/cam");
        assert_eq!(request_path("rtsp://h/live/cam/").unwrap(), "live/cam");
        assert_eq!(request_path("rtsp://h/live?x=1").unwrap(), "live");
        assert_eq!(request_path("rtsp://h").unwrap(), "");
        assert_eq!(
            request_path("rtsp://user:pw@h:1/a/trackID=1").unwrap(),
            "a/trackID=1"
        );
        assert!(request_path("http://h/a").is_err());
        assert!(request_path("rtsp://h/a/../b").is_err());
        assert!(request_path("rtsp://h/a//b").is_err());
        assert!(request_path("rtsp://h/a%2e%2e/b").is_err());
        assert!(request_path("rtsp://h/a b").is_err());
    }

    #[test]
    fn tracks() {
        assert_eq!(split_track("live/cam/trackID=1"), ("live/cam", Some(1)));
        assert_eq!(split_track("live/cam"), ("live/cam", None));
        assert_eq!(split_track("trackID=0"), ("", Some(0)));
        assert_eq!(split_track("a/trackID=x"), ("a/trackID=x", None));
    }

    #[test]
    fn base() {
        assert_eq!(
            base_url("rtsp://127.0.0.1:8554/live/cam", "live/cam"),
            "rtsp://127.0.0.1:8554/live/cam/"
        );
    }
}
