//! The `Range` header (RFC 2326 §3.6, §12.29).

use std::fmt;

use super::HeaderError;

const HEADER: &str = "Range";

/// A normal-play-time instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NptTime {
    /// `now`: the current live position.
    Now,
    /// Seconds from the start of the presentation (finite, non-negative).
    Seconds(f64),
}

impl NptTime {
    /// Parses `now`, `12.5` (seconds) or `1:02:03.5` (h:mm:ss[.frac]).
    pub fn parse(s: &str) -> Result<Self, HeaderError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("now") {
            return Ok(NptTime::Now);
        }
        let bad = || HeaderError::invalid(HEADER, s);
        let parts: Vec<&str> = s.split(':').collect();
        let secs = match parts.as_slice() {
            [sec] => parse_seconds(sec).ok_or_else(bad)?,
            [h, m, sec] => {
                let h = parse_seconds(h).filter(|_| is_int(h)).ok_or_else(bad)?;
                let m = parse_seconds(m)
                    .filter(|v| is_int(m) && m.len() <= 2 && *v < 60.0)
                    .ok_or_else(bad)?;
                let sec = parse_seconds(sec)
                    .filter(|v| *v < 60.0 && sec.split('.').next().is_some_and(|i| i.len() <= 2))
                    .ok_or_else(bad)?;
                h * 3600.0 + m * 60.0 + sec
            }
            _ => return Err(bad()),
        };
        if secs.is_finite() {
            Ok(NptTime::Seconds(secs))
        } else {
            Err(bad())
        }
    }
}

/// True when `s` is only ASCII digits.
fn is_int(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Parses `1*DIGIT [ "." *DIGIT ]` into a finite `f64`.
fn parse_seconds(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !is_int(int) || !is_int(frac) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl fmt::Display for NptTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NptTime::Now => f.write_str("now"),
            NptTime::Seconds(s) => write!(f, "{s:.3}"),
        }
    }
}

/// A parsed `Range` header value.
#[derive(Clone, Debug, PartialEq)]
pub enum Range {
    /// `npt=[start]-[end]`; at least one bound is present.
    Npt {
        /// Start of the range.
        start: Option<NptTime>,
        /// End of the range.
        end: Option<NptTime>,
    },
    /// `smpte…=` or `clock=` ranges, kept verbatim (trimmed).
    Other(String),
}

impl Range {
    /// Parses a `Range` value such as `npt=0-`, `npt=now-`, `npt=10-20` or
    /// `npt=-20`; a `;time=…` suffix is ignored.
    pub fn parse(s: &str) -> Result<Self, HeaderError> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err(HeaderError::Empty { header: HEADER });
        }
        let spec = trimmed.split(';').next().unwrap_or_default();
        let (unit, value) = spec
            .split_once('=')
            .ok_or_else(|| HeaderError::invalid(HEADER, s))?;
        let unit = unit.trim().to_ascii_lowercase();
        if unit == "npt" {
            let (a, b) = value
                .split_once('-')
                .ok_or_else(|| HeaderError::invalid(HEADER, s))?;
            let bound = |t: &str| -> Result<Option<NptTime>, HeaderError> {
                if t.trim().is_empty() {
                    Ok(None)
                } else {
                    NptTime::parse(t).map(Some)
                }
            };
            let (start, end) = (bound(a)?, bound(b)?);
            if start.is_none() && end.is_none() {
                return Err(HeaderError::invalid(HEADER, s));
            }
            Ok(Range::Npt { start, end })
        } else if unit.starts_with("smpte") || unit == "clock" {
            Ok(Range::Other(trimmed.to_owned()))
        } else {
            Err(HeaderError::invalid(HEADER, s))
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Npt { start, end } => {
                f.write_str("npt=")?;
                if let Some(s) = start {
                    write!(f, "{s}")?;
                }
                f.write_str("-")?;
                if let Some(e) = end {
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            Range::Other(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npt(start: Option<NptTime>, end: Option<NptTime>) -> Range {
        Range::Npt { start, end }
    }
    use NptTime::{Now, Seconds};

    #[test]
    fn parses_common_forms() {
        assert_eq!(Range::parse("npt=0-"), Ok(npt(Some(Seconds(0.0)), None)));
        assert_eq!(
            Range::parse("npt=0.000-"),
            Ok(npt(Some(Seconds(0.0)), None))
        );
        assert_eq!(Range::parse("npt=now-"), Ok(npt(Some(Now), None)));
        assert_eq!(
            Range::parse("npt=10-20"),
            Ok(npt(Some(Seconds(10.0)), Some(Seconds(20.0))))
        );
        assert_eq!(Range::parse("npt=-20"), Ok(npt(None, Some(Seconds(20.0)))));
        assert_eq!(
            Range::parse("npt=1:02:03.5-"),
            Ok(npt(Some(Seconds(3723.5)), None))
        );
        // VLC sends a trailing time= parameter sometimes; ffmpeg uses "npt=0.000-"
        assert_eq!(
            Range::parse("npt=5-;time=19970123T143720Z"),
            Ok(npt(Some(Seconds(5.0)), None))
        );
        assert_eq!(
            Range::parse(" NPT = 12. - "),
            Ok(npt(Some(Seconds(12.0)), None))
        );
        assert_eq!(
            Range::parse("clock=19961108T143720.25Z-"),
            Ok(Range::Other("clock=19961108T143720.25Z-".into()))
        );
        assert_eq!(
            Range::parse("smpte=10:07:00-10:07:33:05.01"),
            Ok(Range::Other("smpte=10:07:00-10:07:33:05.01".into()))
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "npt",
            "npt=",
            "npt=-",
            "npt=-5-",
            "npt=abc-",
            "npt=1e5-",
            "npt=inf-",
            "npt=nan-",
            "npt=+5-",
            "npt=1:60:00-",
            "npt=1:00:60-",
            "npt=1:2-",
            "npt=.5-",
            "bytes=0-10",
            "npt=1:002:00-",
        ] {
            assert!(Range::parse(bad).is_err(), "{bad:?}");
        }
        let huge = format!("npt={}-", "9".repeat(400));
        assert!(Range::parse(&huge).is_err());
    }

    #[test]
    fn display() {
        assert_eq!(npt(Some(Seconds(0.0)), None).to_string(), "npt=0.000-");
        assert_eq!(npt(Some(Now), None).to_string(), "npt=now-");
        assert_eq!(
            npt(Some(Seconds(1.5)), Some(Seconds(20.0))).to_string(),
            "npt=1.500-20.000"
        );
        assert_eq!(npt(None, Some(Seconds(2.0))).to_string(), "npt=-2.000");
    }
}
