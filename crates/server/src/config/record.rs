//! `[record]`: server-side recording of paths to crash-safe fMP4 segments, with an index,
//! retention and a free-space floor. Per-path overrides are `record_*` keys under
//! `[paths.NAME]` (see [`RecordOverrides`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sluice_archive::{PathTemplate, DEFAULT_TEMPLATE};

use super::ConfigError;

/// When the recorder syncs what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// fdatasync after each part (a crash loses at most the part being built), and the
    /// directory after creating a file.
    #[default]
    Part,
    /// fsync when a segment ends (and the directory after creating a file).
    Segment,
    /// Never: the OS writes back when it likes (a power cut may lose minutes).
    Off,
}

impl Fsync {
    /// The key's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Part => "part",
            Fsync::Segment => "segment",
            Fsync::Off => "off",
        }
    }
}

/// A free-space floor: bytes, or a percentage of the file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// Bytes that must stay free.
    Bytes(u64),
    /// Percent of the file system's size that must stay free.
    Percent(f64),
}

impl MinFree {
    /// The floor in bytes on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

/// `[record]`: where and how recorded paths are written. Recording is off unless `dir` is
/// set; then the paths named in `paths` (names, or `~regex`), those with `[paths.NAME]
/// record = true`, and those started through the API are recorded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    /// The record directory: segment files below it, and its index (`index.redb`).
    pub dir: Option<PathBuf>,
    /// Paths recorded: exact names or `~regex` patterns.
    pub paths: Vec<String>,
    /// Segment file names below `dir` (strftime-style, UTC): `%path`, `%Y %m %d %H %M %S`,
    /// `%f` (microseconds), `%s`; must hold `%path`, the time to the second and `%f`.
    pub path_template: String,
    /// Parts are cut on time, about this long (100 ms to 10 s).
    #[serde(deserialize_with = "super::de_duration")]
    pub part_duration: Duration,
    /// A segment ends at the first keyframe after this long (at least `part_duration`).
    #[serde(deserialize_with = "super::de_duration")]
    pub segment_duration: Duration,
    /// `part` (default), `segment` or `off`.
    pub fsync: Fsync,
    /// Delete segments that ended longer ago than this.
    #[serde(deserialize_with = "super::de_opt_duration")]
    pub retain_age: Option<Duration>,
    /// Keep at most this many bytes per path (`"10GB"`, `"512MiB"`, or a number).
    #[serde(deserialize_with = "de_opt_size")]
    pub retain_bytes: Option<u64>,
    /// Keep this much of the file system free (`"5GB"` or `"10%"`), deleting the oldest
    /// segments of any path.
    #[serde(deserialize_with = "de_opt_min_free")]
    pub min_free: Option<MinFree>,
    /// Recording starts with the GOP cache (so the first part decodes from its first
    /// frame) when the cached keyframe is at most this old; `0s` starts at the next
    /// keyframe.
    #[serde(deserialize_with = "super::de_duration")]
    pub pre_roll: Duration,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: None,
            paths: Vec::new(),
            path_template: DEFAULT_TEMPLATE.to_owned(),
            part_duration: Duration::from_secs(1),
            segment_duration: Duration::from_secs(3600),
            fsync: Fsync::Part,
            retain_age: None,
            retain_bytes: None,
            min_free: None,
            pre_roll: Duration::from_secs(10),
        }
    }
}

/// The `record*` keys of `[paths.NAME]`: this path's own recording settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordOverrides {
    /// Record this path (true) or never (false, even if `[record] paths` matches it).
    pub record: Option<bool>,
    /// Overrides `[record] part_duration`.
    pub record_part_duration: Option<Duration>,
    /// Overrides `[record] segment_duration`.
    pub record_segment_duration: Option<Duration>,
    /// Overrides `[record] fsync`.
    pub record_fsync: Option<Fsync>,
    /// Overrides `[record] retain_age`.
    pub record_retain_age: Option<Duration>,
    /// Overrides `[record] retain_bytes`.
    pub record_retain_bytes: Option<u64>,
    /// Overrides `[record] pre_roll`.
    pub record_pre_roll: Option<Duration>,
}

impl RecordOverrides {
    /// Whether any key is set.
    pub fn any(&self) -> bool {
        *self != RecordOverrides::default()
    }
}

/// One path's effective recording settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRecordSettings {
    /// Part duration.
    pub part_duration: Duration,
    /// Segment duration.
    pub segment_duration: Duration,
    /// Sync policy.
    pub fsync: Fsync,
    /// Age limit.
    pub retain_age: Option<Duration>,
    /// Byte limit.
    pub retain_bytes: Option<u64>,
    /// GOP cache pre-roll limit.
    pub pre_roll: Duration,
}

impl RecordConfig {
    /// The parsed path template (validated at load, so this only fails on a config that
    /// skipped validation).
    pub fn template(&self) -> Result<PathTemplate, ConfigError> {
        PathTemplate::parse(&self.path_template)
            .map_err(|e| ConfigError::Invalid(format!("record.path_template: {e}")))
    }

    /// Whether `path` is recorded by configuration: its `[paths]` entry says so, else a
    /// `[record] paths` entry matches.
    pub fn wants(&self, path: &str, own: Option<&RecordOverrides>) -> bool {
        if self.dir.is_none() {
            return false;
        }
        if let Some(r) = own.and_then(|o| o.record) {
            return r;
        }
        self.paths.iter().any(|p| match p.strip_prefix('~') {
            Some(re) => regex::Regex::new(re).is_ok_and(|re| re.is_match(path)),
            None => p == path,
        })
    }

    /// `path`'s settings: `[record]` with its `[paths]` overrides.
    pub fn settings(&self, own: Option<&RecordOverrides>) -> PathRecordSettings {
        let o = own.cloned().unwrap_or_default();
        PathRecordSettings {
            part_duration: o.record_part_duration.unwrap_or(self.part_duration),
            segment_duration: o.record_segment_duration.unwrap_or(self.segment_duration),
            fsync: o.record_fsync.unwrap_or(self.fsync),
            retain_age: o.record_retain_age.or(self.retain_age),
            retain_bytes: o.record_retain_bytes.or(self.retain_bytes),
            pre_roll: o.record_pre_roll.unwrap_or(self.pre_roll),
        }
    }

    /// Checks the keys (called from [`super::Config::validate`] with the paths' overrides).
    pub(super) fn validate<'a>(
        &self,
        overrides: impl Iterator<Item = (&'a str, &'a RecordOverrides)>,
    ) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("record: {m}")));
        self.template()?;
        for p in &self.paths {
            if let Some(re) = p.strip_prefix('~') {
                if let Err(e) = regex::Regex::new(re) {
                    return bad(format!("paths entry {p:?}: {e}"));
                }
            } else if p.is_empty() {
                return bad("paths entries must not be empty".into());
            }
        }
        let check = |what: &str, s: &PathRecordSettings| -> Result<(), ConfigError> {
            let bad = |m: String| Err(ConfigError::Invalid(format!("{what}: {m}")));
            if s.part_duration < Duration::from_millis(100)
                || s.part_duration > Duration::from_secs(10)
            {
                return bad("part_duration must be between 100ms and 10s".into());
            }
            if s.segment_duration < s.part_duration
                || s.segment_duration > Duration::from_secs(86_400)
            {
                return bad(
                    "segment_duration must be at least part_duration and at most 24h".into(),
                );
            }
            if s.retain_age.is_some_and(|a| a < s.segment_duration) {
                return bad("retain_age must be at least segment_duration".into());
            }
            if s.retain_bytes == Some(0) {
                return bad("retain_bytes must be above 0".into());
            }
            Ok(())
        };
        check("record", &self.settings(None))?;
        if let Some(MinFree::Percent(p)) = self.min_free {
            if !(0.0..100.0).contains(&p) {
                return bad("min_free percentage must be below 100%".into());
            }
        }
        for (name, o) in overrides {
            if !o.any() {
                continue;
            }
            if self.dir.is_none() && o.record == Some(true) {
                return Err(ConfigError::Invalid(format!(
                    "paths.{name:?}: record = true needs [record] dir"
                )));
            }
            check(&format!("paths.{name:?}"), &self.settings(Some(o)))?;
        }
        if self.dir.is_none() && !self.paths.is_empty() {
            return bad("paths needs dir".into());
        }
        Ok(())
    }
}

/// Parses a size: a number of bytes, or a number with `B`, `KB`/`MB`/`GB`/`TB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 10GB, 512MiB or 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((n * mult) as u64)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Int(u64),
    Text(String),
}

pub(super) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<SizeValue>::deserialize(d)? {
        None => Ok(None),
        Some(SizeValue::Int(n)) => Ok(Some(n)),
        Some(SizeValue::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

fn de_opt_min_free<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MinFree>, D::Error> {
    match Option::<SizeValue>::deserialize(d)? {
        None => Ok(None),
        Some(SizeValue::Int(n)) => Ok(Some(MinFree::Bytes(n))),
        Some(SizeValue::Text(t)) => match t.trim().strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .map(|p| Some(MinFree::Percent(p)))
                .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a percentage"))),
            None => parse_size(&t)
                .map(|b| Some(MinFree::Bytes(b)))
                .map_err(serde::de::Error::custom),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn record_keys_are_read_and_checked() {
        let c = Config::from_toml(
            "[record]\ndir = \"/tmp/rec\"\npaths = [\"~^cams/\"]\nsegment_duration = \"10s\"\nretain_bytes = \"1GB\"\nmin_free = \"5%\"\nfsync = \"segment\"\n[paths.door]\nsource = \"publisher\"\nrecord = true\nrecord_segment_duration = \"20s\"\n[paths.cams_off]\nsource = \"publisher\"\nrecord = false\n",
        )
        .unwrap();
        let r = &c.record;
        assert_eq!(r.retain_bytes, Some(1_000_000_000));
        assert_eq!(r.min_free, Some(MinFree::Percent(5.0)));
        assert!(r.wants("cams/a", None));
        assert!(r.wants("door", Some(&c.paths["door"].recording())));
        assert!(!r.wants("other", None));
        assert_eq!(
            r.settings(Some(&c.paths["door"].recording()))
                .segment_duration,
            Duration::from_secs(20)
        );
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        for bad in [
            "[record]\ndir = \"/tmp/rec\"\npath_template = \"%Y/%path\"\n",
            "[record]\ndir = \"/tmp/rec\"\npart_duration = \"10ms\"\n",
            "[record]\ndir = \"/tmp/rec\"\nsegment_duration = \"500ms\"\n",
            "[record]\ndir = \"/tmp/rec\"\nmin_free = \"150%\"\n",
            "[record]\ndir = \"/tmp/rec\"\nretain_bytes = \"12 parsecs\"\n",
            "[record]\ndir = \"/tmp/rec\"\nfsync = \"sometimes\"\n",
            "[record]\npaths = [\"cam\"]\n",
            "[paths.cam]\nsource = \"publisher\"\nrecord = true\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }
}
