//! The `Scale` header (RFC 2326 §12.34).

use std::fmt;

use super::HeaderError;

const HEADER: &str = "Scale";

/// A `Scale` value: the playback speed relative to normal (1), negative for reverse.
///
/// Only finite values parse, so a server never has to reason about `inf` or `NaN`
/// speeds; whether a finite value is supported (e.g. 0) is the server's decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale(pub f64);

impl Scale {
    /// Parses `1`, `-2`, `0.5`; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, HeaderError> {
        let t = s.trim();
        let digits = t.strip_prefix('-').unwrap_or(t);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(HeaderError::invalid(HEADER, s));
        }
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Scale)
            .ok_or_else(|| HeaderError::invalid(HEADER, s))
    }
}

impl fmt::Display for Scale {
    /// Integral values without a fraction (`2`, `-1`), others as the shortest decimal (`0.5`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.fract() == 0.0 && v.abs() < 1e15 {
            write!(f, "{}", v as i64)
        } else {
            write!(f, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes() {
        for (text, v, out) in [
            ("1", 1.0, "1"),
            (" -2 ", -2.0, "-2"),
            ("0.5", 0.5, "0.5"),
            ("2.0", 2.0, "2"),
            ("0", 0.0, "0"),
        ] {
            let s = Scale::parse(text).unwrap();
            assert_eq!(s.0, v, "{text}");
            assert_eq!(s.to_string(), out);
        }
    }

    #[test]
    fn refuses_garbage_and_non_finite() {
        for text in ["", "fast", "inf", "NaN", "1e400", "+1", "1.2.3", "--1", "."] {
            assert!(Scale::parse(text).is_err(), "{text:?}");
        }
    }
}
