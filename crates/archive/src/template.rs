//! Segment file names: a strftime-style template with the path name, rendered for each new
//! segment and matched back to a path name when a directory is reindexed.

use std::time::{Duration, SystemTime};

/// Why a path template was refused (at config load, so a bad template never reaches a
/// recording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `%` conversion this template language does not have.
    #[error("path template {template:?}: unknown conversion %{conversion} (known: %path %Y %m %d %H %M %S %f %s %%)")]
    Unknown {
        /// The template.
        template: String,
        /// The character after `%`.
        conversion: char,
    },
    /// The template cannot name distinct files for distinct paths and segments.
    #[error("path template {template:?}: {reason}")]
    Invalid {
        /// The template.
        template: String,
        /// What it lacks.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Path,
    /// A zero-padded decimal field of the given width (`%Y` 4, `%m` … `%S` 2, `%f` 6).
    Field(char, usize),
    /// `%s`: Unix seconds, unpadded.
    UnixSeconds,
}

/// A validated segment path template, relative to the record directory.
///
/// Conversions: `%path` the stream's path name (may hold `/`), `%Y %m %d %H %M %S` the UTC
/// date and time of the segment's first sample, `%f` its microseconds (6 digits), `%s` Unix
/// seconds, `%%` a percent sign. A template must hold `%path`, the time to the second (`%s`,
/// or all of `%Y %m %d %H %M %S`) and `%f`: segments can be cut within one second (a new
/// resolution), and each needs its own name. It is relative and never climbs out of the
/// record directory (`..`). Times are UTC so that names sort, and never repeat at a
/// daylight-saving change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    tokens: Vec<Token>,
}

/// The default template: `%path/%Y-%m-%d_%H-%M-%S-%f.mp4`.
pub const DEFAULT_TEMPLATE: &str = "%path/%Y-%m-%d_%H-%M-%S-%f.mp4";

impl PathTemplate {
    /// Parses and validates `template`.
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let invalid = |reason| TemplateError::Invalid {
            template: template.to_owned(),
            reason,
        };
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(conv) = chars.next() else {
                return Err(invalid("ends with a lone %"));
            };
            let token = match conv {
                '%' => {
                    lit.push('%');
                    continue;
                }
                'p' => {
                    for want in ['a', 't', 'h'] {
                        if chars.next() != Some(want) {
                            return Err(TemplateError::Unknown {
                                template: template.to_owned(),
                                conversion: 'p',
                            });
                        }
                    }
                    Token::Path
                }
                'Y' => Token::Field('Y', 4),
                'm' | 'd' | 'H' | 'M' | 'S' => Token::Field(conv, 2),
                'f' => Token::Field('f', 6),
                's' => Token::UnixSeconds,
                other => {
                    return Err(TemplateError::Unknown {
                        template: template.to_owned(),
                        conversion: other,
                    })
                }
            };
            if !lit.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut lit)));
            }
            tokens.push(token);
        }
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        let has = |t: &Token| tokens.contains(t);
        if !has(&Token::Path) {
            return Err(invalid("it must contain %path"));
        }
        let civil = ['Y', 'm', 'd', 'H', 'M', 'S'].iter().all(|&c| {
            tokens
                .iter()
                .any(|t| matches!(t, Token::Field(f, _) if *f == c))
        });
        if !(civil || has(&Token::UnixSeconds)) {
            return Err(invalid(
                "it must contain the time to the second: %s, or all of %Y %m %d %H %M %S",
            ));
        }
        if !has(&Token::Field('f', 6)) {
            return Err(invalid(
                "it must contain %f (segments can start within the same second)",
            ));
        }
        if template.starts_with('/') {
            return Err(invalid("it must be relative to the record directory"));
        }
        if template.split('/').any(|c| c == ".." || c == ".") {
            return Err(invalid("it must not contain . or .. components"));
        }
        if template.ends_with('/') {
            return Err(invalid("it must name a file, not a directory"));
        }
        Ok(PathTemplate {
            source: template.to_owned(),
            tokens,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The relative file path of the segment of `stream` whose first sample is at `start`.
    pub fn render(&self, stream: &str, start: SystemTime) -> String {
        let since = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let tod = secs % 86_400;
        let mut out = String::new();
        for t in &self.tokens {
            match t {
                Token::Literal(s) => out.push_str(s),
                Token::Path => out.push_str(stream),
                Token::UnixSeconds => out.push_str(&secs.to_string()),
                Token::Field(c, w) => {
                    let v: i64 = match c {
                        'Y' => y,
                        'm' => mo.into(),
                        'd' => d.into(),
                        'H' => (tod / 3600) as i64,
                        'M' => (tod / 60 % 60) as i64,
                        'S' => (tod % 60) as i64,
                        _ => since.subsec_micros().into(),
                    };
                    out.push_str(&format!("{v:0w$}"));
                }
            }
        }
        out
    }

    /// The stream a relative file path belongs to, if the template could have named it
    /// (used by reindexing; the time comes from the file's own `prft` boxes).
    pub fn stream_of(&self, rel: &str) -> Option<String> {
        match_tokens(&self.tokens, rel, None)
    }
}

fn match_tokens(tokens: &[Token], s: &str, path: Option<&str>) -> Option<String> {
    let Some((first, rest)) = tokens.split_first() else {
        return if s.is_empty() {
            path.map(str::to_owned)
        } else {
            None
        };
    };
    match first {
        Token::Literal(l) => match_tokens(rest, s.strip_prefix(l.as_str())?, path),
        Token::Field(_, w) => {
            let head = s.get(..*w)?;
            if !head.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            match_tokens(rest, s.get(*w..)?, path)
        }
        Token::UnixSeconds => {
            let digits = s.bytes().take_while(u8::is_ascii_digit).count();
            (1..=digits)
                .rev()
                .find_map(|n| match_tokens(rest, s.get(n..)?, path))
        }
        Token::Path => {
            // A repeated %path must name the same stream.
            if let Some(p) = path {
                return match_tokens(rest, s.strip_prefix(p)?, Some(p));
            }
            let ends: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(1).collect();
            ends.into_iter()
                .chain(std::iter::once(s.len()))
                .rev()
                .find_map(|end| {
                    let name = s.get(..end)?;
                    valid_stream_name(name)
                        .then(|| match_tokens(rest, s.get(end..)?, Some(name)))
                        .flatten()
                })
        }
    }
}

fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A time as whole microseconds since the Unix epoch (the index's key unit; times before
/// the epoch count as the epoch).
pub(crate) fn micros(t: SystemTime) -> u64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The inverse of [`micros`].
pub(crate) fn from_micros(us: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_and_matches_back() {
        let t = PathTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        // 2026-12-07T03:08:20.000123Z
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_612_900_000_123);
        let name = t.render("cams/front", at);
        assert_eq!(name, "cams/front/2026-12-07_03-08-20-000123.mp4");
        assert_eq!(t.stream_of(&name).as_deref(), Some("cams/front"));
        assert_eq!(t.stream_of("cams/front/2026-12-07_03-08-20.mp4"), None);
        assert_eq!(t.stream_of("index.redb"), None);
        let u = PathTemplate::parse("rec-%s-%f/%path.mp4").unwrap();
        let name = u.render("cam", at);
        assert_eq!(name, "rec-1796612900-000123/cam.mp4");
        assert_eq!(u.stream_of(&name).as_deref(), Some("cam"));
    }

    #[test]
    fn refuses_what_cannot_name_distinct_files() {
        for bad in [
            "%Y-%m-%d_%H-%M-%S-%f.mp4",
            "%path/%Y-%m-%d_%H-%M.mp4",
            "%path/%Y-%m-%d_%H-%M-%S.mp4",
            "/abs/%path/%s-%f",
            "%path/../%s-%f",
            "%path/%s-%f-%q",
            "%path/%s-%f%",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
    }
}
