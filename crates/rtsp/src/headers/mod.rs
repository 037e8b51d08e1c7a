//! Typed parsers and writers for the RTSP headers a media server relies on.

pub mod error;
pub mod range;
pub mod replay;
pub mod rtp_info;
pub mod scale;
pub mod session;
pub mod transport;

pub use error::HeaderError;

/// Parses a `CSeq` header value: a trimmed decimal `u32`, nothing else.
pub fn parse_cseq(value: &str) -> Result<u32, HeaderError> {
    parse_decimal(value.trim()).ok_or_else(|| HeaderError::invalid("CSeq", value))
}

/// Parses a non-empty run of ASCII digits into `T`, rejecting signs,
/// whitespace and overflow.
pub(crate) fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Splits `s` on `sep`, ignoring separators inside double quotes.
pub(crate) fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// True for an RFC 2616 `token` character.
pub(crate) fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// True when `s` is a non-empty token.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        assert_eq!(parse_cseq("1"), Ok(1));
        assert_eq!(parse_cseq(" 42 "), Ok(42));
        assert_eq!(parse_cseq("4294967295"), Ok(u32::MAX));
        for bad in ["", " ", "-1", "+1", "4294967296", "1a", "0x10", "1 2"] {
            assert!(parse_cseq(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn split_respects_quotes() {
        assert_eq!(
            split_unquoted(r#"a;b="x;y";c"#, ';'),
            vec!["a", r#"b="x;y""#, "c"]
        );
        assert_eq!(split_unquoted("", ','), vec![""]);
    }
}
