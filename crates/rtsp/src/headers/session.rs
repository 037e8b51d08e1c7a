//! The `Session` header (RFC 2326 §12.37).

use std::fmt;

use super::{parse_decimal, HeaderError};

const HEADER: &str = "Session";

/// A parsed `Session` header: `id[;timeout=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionHeader {
    /// Session identifier: one or more of `ALPHA / DIGIT / $ - _ . +`.
    pub id: String,
    /// Optional `timeout` parameter in seconds.
    pub timeout: Option<u32>,
}

/// True for a character allowed in a session identifier.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "$-_.+".contains(c)
}

impl SessionHeader {
    /// Parses a `Session` header value; unknown parameters are ignored.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let mut parts = value.split(';');
        let id = parts.next().unwrap_or_default().trim();
        if id.is_empty() {
            return Err(HeaderError::Empty { header: HEADER });
        }
        if !id.chars().all(is_id_char) {
            return Err(HeaderError::invalid(HEADER, value));
        }
        let mut timeout = None;
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, val) = part.split_once('=').unwrap_or((part, ""));
            if name.trim().eq_ignore_ascii_case("timeout") {
                let val = val.trim();
                timeout = Some(
                    parse_decimal(val).ok_or_else(|| HeaderError::param(HEADER, "timeout", val))?,
                );
            }
        }
        Ok(SessionHeader {
            id: id.to_owned(),
            timeout,
        })
    }
}

impl fmt::Display for SessionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)?;
        if let Some(t) = self.timeout {
            write!(f, ";timeout={t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, timeout: Option<u32>) -> SessionHeader {
        SessionHeader {
            id: id.into(),
            timeout,
        }
    }

    #[test]
    fn parses_real_world_values() {
        assert_eq!(SessionHeader::parse("12345678"), Ok(s("12345678", None)));
        assert_eq!(
            SessionHeader::parse("47112344;timeout=60"),
            Ok(s("47112344", Some(60)))
        );
        // live555 style with whitespace
        assert_eq!(
            SessionHeader::parse(" A1B2C3D4; timeout = 65 "),
            Ok(s("A1B2C3D4", Some(65)))
        );
        // GStreamer ids contain '-', '_' or '.'
        assert_eq!(
            SessionHeader::parse("k1_Y-z.9+$;"),
            Ok(s("k1_Y-z.9+$", None))
        );
        // unknown parameters are ignored
        assert_eq!(SessionHeader::parse("abc;foo=bar"), Ok(s("abc", None)));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            " ",
            ";timeout=5",
            "a b",
            "a/b",
            "abc;timeout=",
            "abc;timeout=-1",
            "abc;timeout=99999999999",
        ] {
            assert!(SessionHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(s("abc", Some(60)).to_string(), "abc;timeout=60");
        assert_eq!(s("abc", None).to_string(), "abc");
    }
}
