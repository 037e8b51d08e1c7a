//! Where configuration values come from, in increasing precedence: built-in defaults, the
//! file, `SLUICE_…` environment variables (nesting with `__`: `SLUICE_RTSP__LISTEN` is
//! `rtsp.listen`), then `--set key=value` command-line flags. The layers merge before
//! the result is parsed and validated as one; [`ConfigSource`] remembers which keys an
//! environment variable or a flag set, so the API can report them.
//!
//! Also the `check-config` diagnostics: an error as `line:column: message`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError};

/// Top-level tables an environment variable may set. Other `SLUICE_…` variables (such as
/// a test harness's own) are not configuration and are left alone.
const SECTIONS: &[&str] = &[
    "rtsp", "log", "vod", "demo", "paths", "auth", "limits", "rtsps", "http", "hooks", "hls",
    "webrtc",
];

/// The provenance of a running configuration.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The merged values of the file, the environment and the flags (defaults omitted).
    pub values: toml::Table,
    /// Dotted keys an environment variable set (`rtsp.listen`), in the order applied.
    pub overridden_by_env: Vec<String>,
    /// Dotted keys a `--set` flag set.
    pub overridden_by_flag: Vec<String>,
}

/// A configuration error located in its file (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

/// Sets `path` (dotted key) in `table` to `value`, creating tables on the way.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut t = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{} is not a table", parents[..=i].join("."))),
        };
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// A value as written in an override: TOML when it parses as a TOML value (`8000`, `true`,
/// `["tcp"]`, `"x"`), otherwise the text itself as a string (`127.0.0.1:9554`).
fn parse_value(text: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct V {
        v: toml::Value,
    }
    toml::from_str::<V>(&format!("v = {text}"))
        .map(|v| v.v)
        .unwrap_or_else(|_| toml::Value::String(text.to_owned()))
}

/// A `--set` key: TOML dotted-key syntax, so quoted parts may hold dots
/// (`paths."cam.1".source`).
fn parse_key(key: &str) -> Result<Vec<String>, String> {
    let keys = toml_edit::Key::parse(key).map_err(|e| format!("invalid key {key:?}: {e}"))?;
    Ok(keys.into_iter().map(|k| k.get().to_owned()).collect())
}

fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| {
            if !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                p.clone()
            } else {
                format!("{p:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Config {
    /// Loads the layered configuration: `file` (or nothing), then the `SLUICE_…` entries
    /// of `env`, then `flags` (`key=value`, TOML dotted keys); validates the result and
    /// records the provenance in [`Config::source`].
    pub fn load_layered(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[String],
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Config::load_layered_text(&text, file, env, flags)
    }

    /// As [`Config::load_layered`], with the file's content given (`file` names where it
    /// is, or will be): for a change checked before it is written.
    pub fn load_layered_text(
        text: &str,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[String],
    ) -> Result<Config, ConfigError> {
        // The file alone first, so its errors keep their line and column.
        let _: Config = toml::from_str(text)?;
        let mut values: toml::Table = toml::from_str(text)?;
        let mut source = ConfigSource {
            file: file.map(Path::to_path_buf),
            ..ConfigSource::default()
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SLUICE_"))
            .collect();
        env.sort();
        for (name, value) in env {
            let path: Vec<String> = name["SLUICE_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if !SECTIONS.contains(&path[0].as_str()) {
                continue;
            }
            if path.len() < 2 || path.iter().any(String::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "environment variable {name}: name a key, e.g. SLUICE_RTSP__LISTEN"
                )));
            }
            set(&mut values, &path, parse_value(&value))
                .map_err(|e| ConfigError::Invalid(format!("environment variable {name}: {e}")))?;
            source.overridden_by_env.push(dotted(&path));
        }
        for flag in flags {
            let (key, value) = flag.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--set {flag:?}: expected key=value"))
            })?;
            let path = parse_key(key.trim()).map_err(ConfigError::Invalid)?;
            set(&mut values, &path, parse_value(value.trim()))
                .map_err(|e| ConfigError::Invalid(format!("--set {key}: {e}")))?;
            source.overridden_by_flag.push(dotted(&path));
        }
        let mut config = Config::deserialize(toml::Value::Table(values.clone()))?;
        config.validate()?;
        source.values = values;
        config.source = source;
        Ok(config)
    }
}

/// Offset `at` in `text` as a 1-based line and column (in characters).
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The dotted key a validation message starts with (`rtsp.rtp_port must…`,
/// `paths."cam": …`, `limits: …`), as path segments.
fn key_of_message(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    loop {
        let seg: String;
        if let Some(r) = rest.strip_prefix('"') {
            let Some(end) = r.find('"') else { break };
            seg = r[..end].to_owned();
            rest = &r[end + 1..];
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            seg = rest[..end].to_owned();
            rest = &rest[end..];
        }
        out.push(seg);
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// Where `path` is in the parsed document: the deepest key found.
fn span_of(doc: &toml_edit::Document<&str>, path: &[String]) -> Option<std::ops::Range<usize>> {
    let mut item = doc.as_item();
    let mut found = None;
    for seg in path {
        let kv = match item {
            toml_edit::Item::Table(t) => t.get_key_value(seg),
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(seg),
            _ => None,
        };
        let Some((key, next)) = kv else { break };
        found = key.span().or_else(|| next.span()).or(found);
        item = next;
    }
    found
}

/// Parses and validates configuration text as `sluice check-config` does; an error comes
/// with the line and column of what it is about (the key a validation error names, or
/// the start of the file when the key is not written in it).
pub fn check_toml(text: &str) -> Result<Config, Diagnostic> {
    match Config::from_toml(text) {
        Ok(c) => Ok(c),
        Err(ConfigError::Parse(e)) => {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            Err(Diagnostic {
                line,
                column,
                message: e.message().trim_end().to_owned(),
            })
        }
        Err(ConfigError::Invalid(message)) => {
            let path = key_of_message(&message);
            let span = toml_edit::Document::parse(text)
                .ok()
                .and_then(|doc| span_of(&doc, &path));
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            Err(Diagnostic {
                line,
                column,
                message,
            })
        }
        Err(e @ ConfigError::Read { .. }) => Err(Diagnostic {
            line: 1,
            column: 1,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let dir = std::env::temp_dir().join(format!("sluice-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[rtsp]\nlisten = \"127.0.0.1:1000\"\nrtp_port = 9000\n",
        )
        .unwrap();
        let c = Config::load_layered(
            Some(&file),
            env(&[
                ("SLUICE_RTSP__LISTEN", "127.0.0.1:9554"),
                ("SLUICE_HTTP__ENABLED", "false"),
                ("SLUICE_TEST_LOG", "debug"),
                ("HOME", "/root"),
            ]),
            &[
                "rtsp.rtp_port=9100".into(),
                "http.listen=127.0.0.1:1".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.rtsp.listen.to_string(), "127.0.0.1:9554");
        assert_eq!(c.rtsp.rtp_port, 9100);
        assert!(!c.http.enabled);
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.source.overridden_by_env, ["http.enabled", "rtsp.listen"]);
        assert_eq!(
            c.source.overridden_by_flag,
            ["rtsp.rtp_port", "http.listen"]
        );
        let e = Config::load_layered(Some(&file), env(&[("SLUICE_RTSP__LISTN", "x")]), &[])
            .unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e =
            Config::load_layered(None, env(&[("SLUICE_RTSP__RTP_PORT", "8001")]), &[]).unwrap_err();
        assert!(e.to_string().contains("rtsp.rtp_port"), "{e}");
        let c = Config::load_layered(
            None,
            Vec::new(),
            &["paths.\"cam.1\".source=rtsp://h/x".into()],
        )
        .unwrap();
        assert_eq!(c.paths["cam.1"].source, "rtsp://h/x");
        assert_eq!(c.source.overridden_by_flag, ["paths.\"cam.1\".source"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn diagnostics_carry_line_and_column() {
        let d = check_toml("[rtsp]\nlisten = \"127.0.0.1:1\"\nrtp_port = 8001\n").unwrap_err();
        assert_eq!((d.line, d.column), (3, 1), "{d:?}");
        assert!(d.message.contains("rtsp.rtp_port"), "{d:?}");
        let d = check_toml("[rtsp]\n  listen_addr = 1\n").unwrap_err();
        assert_eq!((d.line, d.column), (2, 3), "{d:?}");
        assert!(d.message.contains("listen_addr"), "{d:?}");
        let d = check_toml("[rtsp\n").unwrap_err();
        assert_eq!(d.line, 1, "{d:?}");
        let d = check_toml("[demo]\nenabled = true\n\n[paths.v1]\nsource = \"rtsp://x/\"\n")
            .unwrap_err();
        assert_eq!((d.line, d.column), (4, 8), "{d:?}");
        assert!(check_toml("[rtsp]\nrtp_port = 8000\n").is_ok());
    }
}
