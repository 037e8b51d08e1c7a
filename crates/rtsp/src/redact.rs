//! Removing credentials from URLs before they reach a log or a terminal.

/// `url` without the `user:password@` of its authority (other `@`s, e.g. in the path, are
/// left alone): `rtsp://admin:pw@cam/s` → `rtsp://cam/s`.
pub fn redact_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_credentials;

    #[test]
    fn credentials_are_removed_from_the_authority_only() {
        assert_eq!(redact_credentials("rtsp://u:p@h:554/x"), "rtsp://h:554/x");
        assert_eq!(redact_credentials("rtsp://u:p@h"), "rtsp://h");
        assert_eq!(redact_credentials("rtsp://u:p@w@h/x"), "rtsp://h/x");
        assert_eq!(redact_credentials("rtsp://h/x@y"), "rtsp://h/x@y");
        assert_eq!(redact_credentials("not a url"), "not a url");
    }
}
