//! The ONVIF replay headers (ONVIF Streaming Specification §6): `Range: clock=…` (absolute
//! UTC times, RFC 2326 §3.7), `Rate-Control`, `Frames`, `Immediate`, `Speed` (RFC 2326
//! §12.35) and the `Require` option tags a server accepts.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::HeaderError;

/// The option tag of ONVIF replay (`Require: onvif-replay`).
pub const ONVIF_REPLAY: &str = "onvif-replay";

/// Option tags of a `Require` value (comma separated, trimmed, empty ones dropped).
pub fn require_tags(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An absolute UTC time as RFC 2326 §3.7 writes it: `YYYYMMDDThhmmss[.fraction]Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(pub SystemTime);

impl ClockTime {
    /// Parses `19961108T143720.25Z` (years 1900–9999: ONVIF clients start at the NTP epoch,
    /// `19000101T000000Z`, to mean "the beginning"; the fraction kept to the nanosecond).
    pub fn parse(s: &str) -> Result<ClockTime, HeaderError> {
        let bad = || HeaderError::invalid("Range", s);
        let t = s.trim();
        let t = t.strip_suffix('Z').ok_or_else(bad)?;
        let (date, time) = t.split_once('T').ok_or_else(bad)?;
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if date.len() != 8 || hms.len() != 6 || !digits(date) || !digits(hms) {
            return Err(bad());
        }
        if time.contains('.') && (!digits(frac) || frac.len() > 9) {
            return Err(bad());
        }
        let num = |x: &str| x.parse::<u32>().map_err(|_| bad());
        let (y, mo, d) = (num(&date[..4])?, num(&date[4..6])?, num(&date[6..])?);
        let (h, mi, se) = (num(&hms[..2])?, num(&hms[2..4])?, num(&hms[4..])?);
        let y = i64::from(y);
        if y < 1900 || !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
            return Err(bad());
        }
        if h > 23 || mi > 59 || se > 60 {
            return Err(bad());
        }
        let nanos = if frac.is_empty() {
            0
        } else {
            num(frac)? * 10u32.pow(9 - frac.len() as u32)
        };
        let secs = days_from_civil(y, mo, d) * 86_400
            + i64::from(h) * 3600
            + i64::from(mi) * 60
            + i64::from(se);
        let t = if secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        };
        t.map(ClockTime).ok_or_else(bad)
    }
}

impl fmt::Display for ClockTime {
    /// `YYYYMMDDThhmmss.mmmZ` (milliseconds; times before 1970 print as 1970).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}{m:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

/// A `Range: clock=[start]-[end]` value. A start later than the end asks for reverse
/// playback (ONVIF replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockRange {
    /// Where playback starts.
    pub start: Option<ClockTime>,
    /// Where it ends.
    pub end: Option<ClockTime>,
}

impl ClockRange {
    /// Parses a whole `Range` value that starts with `clock=` (a `;time=` suffix ignored).
    /// `None` when the value is another unit.
    pub fn parse(value: &str) -> Option<Result<ClockRange, HeaderError>> {
        let spec = value.trim().split(';').next().unwrap_or_default();
        let (unit, v) = spec.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("clock") {
            return None;
        }
        let parse = || {
            let (a, b) = v
                .split_once('-')
                .ok_or_else(|| HeaderError::invalid("Range", value))?;
            let bound = |t: &str| {
                if t.trim().is_empty() {
                    Ok(None)
                } else {
                    ClockTime::parse(t).map(Some)
                }
            };
            let (start, end) = (bound(a)?, bound(b)?);
            if start.is_none() && end.is_none() {
                return Err(HeaderError::invalid("Range", value));
            }
            Ok(ClockRange { start, end })
        };
        Some(parse())
    }
}

impl fmt::Display for ClockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("clock=")?;
        if let Some(s) = self.start {
            write!(f, "{s}")?;
        }
        f.write_str("-")?;
        if let Some(e) = self.end {
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The ONVIF `Frames` header: which frames a replay sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frames {
    /// Every frame (the default).
    #[default]
    All,
    /// No B-frames: key and predicted (reference) frames only.
    Predicted,
    /// Keyframes only; with an interval, at most one per that many milliseconds.
    Intra(Option<u32>),
}

impl Frames {
    /// Parses `all`, `predicted`, `intra` or `intra/<milliseconds>`.
    pub fn parse(value: &str) -> Result<Frames, HeaderError> {
        let v = value.trim();
        let bad = || HeaderError::invalid("Frames", value);
        if v.eq_ignore_ascii_case("all") {
            return Ok(Frames::All);
        }
        if v.eq_ignore_ascii_case("predicted") {
            return Ok(Frames::Predicted);
        }
        let (kind, interval) = v.split_once('/').map_or((v, None), |(k, i)| (k, Some(i)));
        if !kind.eq_ignore_ascii_case("intra") {
            return Err(bad());
        }
        match interval {
            None => Ok(Frames::Intra(None)),
            Some(ms) => super::parse_decimal::<u32>(ms.trim())
                .map(|ms| Frames::Intra(Some(ms)))
                .ok_or_else(bad),
        }
    }
}

/// Parses a `yes`/`no` header (`Rate-Control`, `Immediate`).
pub fn parse_yes_no(header: &'static str, value: &str) -> Result<bool, HeaderError> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("yes") => Ok(true),
        v if v.eq_ignore_ascii_case("no") => Ok(false),
        _ => Err(HeaderError::invalid(header, value)),
    }
}

/// A `Speed` value (RFC 2326 §12.35): delivery speed, positive and finite.
pub fn parse_speed(value: &str) -> Result<f64, HeaderError> {
    match crate::Scale::parse(value) {
        Ok(s) if s.0 > 0.0 => Ok(s.0),
        _ => Err(HeaderError::invalid("Speed", value)),
    }
}

/// What a PLAY asks beyond `Range` and `Scale`: the ONVIF replay options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayOptions {
    /// A `Range: clock=…` (then the question's `range` is None).
    pub clock: Option<ClockRange>,
    /// `Speed` (delivery speed; timestamps unchanged).
    pub speed: Option<f64>,
    /// `Rate-Control` (default yes): no sends as fast as the transport allows.
    pub rate_control: bool,
    /// `Frames`.
    pub frames: Frames,
    /// `Immediate: yes`: replace what is playing at once (no queueing).
    pub immediate: bool,
    /// The request's CSeq (its low byte goes into the ONVIF RTP header extension).
    pub cseq: u32,
    /// The request had `Require: onvif-replay`.
    pub onvif: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            clock: None,
            speed: None,
            rate_control: true,
            frames: Frames::All,
            immediate: false,
            cseq: 0,
            onvif: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> ClockTime {
        ClockTime(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn clock_times() {
        assert_eq!(ClockTime::parse("19700101T000000Z"), Ok(at(0, 0)));
        assert_eq!(
            ClockTime::parse("19961108T143720.25Z"),
            Ok(at(847_463_840, 250_000_000))
        );
        assert_eq!(
            ClockTime::parse("20240229T235959Z"),
            Ok(at(1_709_251_199, 0))
        );
        // ONVIF clients' "from the beginning": the NTP epoch.
        let prime = ClockTime::parse("19000101T000000Z").unwrap();
        assert_eq!(
            SystemTime::UNIX_EPOCH.duration_since(prime.0).unwrap(),
            Duration::from_secs(2_208_988_800)
        );
        for bad in [
            "",
            "19961108T143720",
            "1996118T143720Z",
            "19961308T143720Z",
            "20230229T000000Z",
            "19961108T246000Z",
            "19961108T143720.Z",
            "19961108T143720.1234567890Z",
            "18991231T235959Z",
            "19961108 143720Z",
        ] {
            assert!(ClockTime::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            at(847_463_840, 250_000_000).to_string(),
            "19961108T143720.250Z"
        );
        for s in [0u64, 1_709_251_199, 1_800_000_000, 4_102_444_800] {
            let t = at(s, 0);
            assert_eq!(ClockTime::parse(&t.to_string()), Ok(t));
        }
    }

    #[test]
    fn clock_ranges() {
        let r = ClockRange::parse("clock=19961108T143720.25Z-")
            .unwrap()
            .unwrap();
        assert_eq!(r.start, Some(at(847_463_840, 250_000_000)));
        assert_eq!(r.end, None);
        let r = ClockRange::parse("clock=19961108T143730Z-19961108T143720Z")
            .unwrap()
            .unwrap();
        assert!(r.start > r.end);
        assert_eq!(
            r.to_string(),
            "clock=19961108T143730.000Z-19961108T143720.000Z"
        );
        assert!(ClockRange::parse("npt=0-").is_none());
        assert!(ClockRange::parse("clock=-").unwrap().is_err());
        assert!(ClockRange::parse("clock=x-").unwrap().is_err());
    }

    #[test]
    fn onvif_headers() {
        assert_eq!(Frames::parse("intra"), Ok(Frames::Intra(None)));
        assert_eq!(Frames::parse("Intra/1000"), Ok(Frames::Intra(Some(1000))));
        assert_eq!(Frames::parse("predicted"), Ok(Frames::Predicted));
        assert_eq!(Frames::parse(" all "), Ok(Frames::All));
        assert!(Frames::parse("intra/").is_err());
        assert!(Frames::parse("some").is_err());
        assert_eq!(parse_yes_no("Rate-Control", "no"), Ok(false));
        assert_eq!(parse_yes_no("Immediate", "YES"), Ok(true));
        assert!(parse_yes_no("Immediate", "maybe").is_err());
        assert_eq!(parse_speed("4.0"), Ok(4.0));
        assert!(parse_speed("-1").is_err());
        assert!(parse_speed("0").is_err());
        assert_eq!(
            require_tags("onvif-replay, x-foo,").collect::<Vec<_>>(),
            vec!["onvif-replay", "x-foo"]
        );
    }
}
