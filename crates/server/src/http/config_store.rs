//! The configuration file as the API will change it: a path added, replaced, merge-patched
//! (RFC 7396) or deleted by editing the TOML file in place with `toml_edit`, so comments,
//! order and untouched lines stay as the operator wrote them. The new text is validated
//! as a whole before anything is written, then written to a temporary file in the same
//! directory, fsynced and renamed over the old one (a crash leaves the old file or the
//! new, never half of one).
//!
//! Concurrency is optimistic: the ETag is a hash of the file's content; a write naming a
//! stale tag in `If-Match` fails with 412, and a file changed on disk since the store
//! last read or wrote it (an operator's editor) fails with 409 rather than being
//! overwritten.
//!
//! A change is checked by the running server before it is written (`Commit::accept`:
//! the reload's checks, so that a written change always takes effect), and may be held in
//! memory only (`persist: false`): later memory-only changes build on it, while a written
//! change, an edit of the file or SIGHUP start again from the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::StatusCode;
use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use super::problem::Problem;
use crate::config::{Config, ConfigError};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `If-Match` named another version than the current one (412).
    #[error("the configuration changed since {given}; it is now {current}")]
    Stale {
        /// The tag the client sent.
        given: String,
        /// The current tag.
        current: String,
    },
    /// The file was changed on disk since the server read or wrote it (409).
    #[error("{path} was changed on disk behind the server; reload it before changing it here")]
    ChangedOnDisk {
        /// The file.
        path: String,
    },
    /// The change would make the configuration invalid (422).
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field (`paths.cam.source`).
        field: String,
        /// Why.
        message: String,
    },
    /// The path to change or delete is not in the file (404).
    #[error("no path {0:?} in the configuration file")]
    NoSuchPath(String),
    /// Reading or writing the file failed (500).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            StoreError::Stale { .. } => StatusCode::PRECONDITION_FAILED,
            StoreError::ChangedOnDisk { .. } => StatusCode::CONFLICT,
            StoreError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::NoSuchPath(_) => StatusCode::NOT_FOUND,
            StoreError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// As problem details.
    pub fn problem(&self) -> Problem {
        Problem::new(self.status(), self.to_string())
    }
}

/// The strong ETag of a file's content: `"<sha256 hex>"`.
pub fn etag_of(text: &str) -> String {
    crate::config::reload::content_tag(text)
}

/// The configuration file the API edits.
#[derive(Debug)]
pub struct ConfigStore {
    path: PathBuf,
    /// The tag of the content the server last read or wrote.
    known: Mutex<String>,
    /// The content changed in memory only (`persist: false`), if any.
    memory: Mutex<Option<String>>,
}

/// How a change is committed.
pub struct Commit<'a> {
    /// `If-Match`: the tag the client last saw.
    pub if_match: Option<&'a str>,
    /// Write the file (else hold the change in memory only).
    pub persist: bool,
    /// The running server's check of the new content; an error refuses the change (422)
    /// and nothing is written.
    pub accept: &'a dyn Fn(&str) -> Result<(), String>,
    /// The tag of the file content the running server applied last (a reload from an
    /// edit of the file included); None: the content this store last read or wrote.
    pub applied: Option<String>,
}

impl std::fmt::Debug for Commit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commit")
            .field("if_match", &self.if_match)
            .field("persist", &self.persist)
            .finish()
    }
}

impl<'a> Commit<'a> {
    /// A written change, checked by nothing more than the configuration's own rules.
    pub fn written(if_match: Option<&'a str>) -> Commit<'a> {
        Commit {
            if_match,
            persist: true,
            accept: &|_| Ok(()),
            applied: None,
        }
    }
}

/// The outcome of an accepted change.
#[derive(Debug)]
pub struct Written {
    /// The new ETag.
    pub etag: String,
    /// The new configuration, validated.
    pub config: Config,
    /// The new content of the file (written, or held in memory).
    pub text: String,
}

impl ConfigStore {
    /// A store for `path`, remembering its current content as known.
    pub fn open(path: &Path) -> Result<ConfigStore, StoreError> {
        let text = read(path)?;
        Ok(ConfigStore {
            path: path.to_path_buf(),
            known: Mutex::new(etag_of(&text)),
            memory: Mutex::new(None),
        })
    }

    /// The tag of the memory-only content, if there is one.
    pub fn memory_tag(&self) -> Option<String> {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(etag_of)
    }

    /// The current ETag (of the content the server last read or wrote, or of the
    /// memory-only content when there is one).
    pub fn etag(&self) -> String {
        match &*self.memory.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(text) => etag_of(text),
            None => self.known.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Adds the path `name`, or replaces it whole, with the keys of `body` (a JSON
    /// object of `[paths.NAME]` keys). Keys that stay keep their comments.
    pub fn put_path(
        &self,
        name: &str,
        body: &serde_json::Value,
        how: &Commit<'_>,
    ) -> Result<Written, StoreError> {
        let obj = object(name, body)?;
        self.edit(how, name, |doc| {
            let paths = paths_table(doc)?;
            if !paths.contains_key(name) {
                let mut t = Table::new();
                t.set_implicit(false);
                paths.insert(name, Item::Table(t));
            }
            let t = path_table(paths, name)?;
            let stale: Vec<String> = t
                .iter()
                .map(|(k, _)| k.to_owned())
                .filter(|k| !obj.contains_key(k))
                .collect();
            for k in stale {
                t.remove(&k);
            }
            set_keys(t, name, obj)
        })
    }

    /// Applies a JSON merge patch (RFC 7396) to the existing path `name`: `null` removes
    /// a key, other values set it; untouched keys and their comments stay.
    pub fn patch_path(
        &self,
        name: &str,
        patch: &serde_json::Value,
        how: &Commit<'_>,
    ) -> Result<Written, StoreError> {
        let obj = object(name, patch)?;
        self.edit(how, name, |doc| {
            let paths = paths_table(doc)?;
            if !paths.contains_key(name) {
                return Err(StoreError::NoSuchPath(name.to_owned()));
            }
            let t = path_table(paths, name)?;
            let mut set = serde_json::Map::new();
            for (k, v) in obj {
                if v.is_null() {
                    t.remove(k);
                } else {
                    set.insert(k.clone(), v.clone());
                }
            }
            set_keys(t, name, &set)
        })
    }

    /// Removes the path `name` from the file.
    pub fn delete_path(&self, name: &str, how: &Commit<'_>) -> Result<Written, StoreError> {
        self.edit(how, name, |doc| {
            let paths = paths_table(doc)?;
            if paths.remove(name).is_none() {
                return Err(StoreError::NoSuchPath(name.to_owned()));
            }
            Ok(())
        })
    }

    /// Checks the tags, applies `change` to the parsed file, validates the result and
    /// writes it atomically.
    fn edit(
        &self,
        how: &Commit<'_>,
        name: &str,
        change: impl FnOnce(&mut DocumentMut) -> Result<(), StoreError>,
    ) -> Result<Written, StoreError> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(applied) = &how.applied {
            // The server applied an edit of the file since: that is the content to guard.
            *known = applied.clone();
        }
        let on_disk_text = read(&self.path)?;
        let on_disk = etag_of(&on_disk_text);
        // A memory-only change builds on the previous one; a written one on the file.
        let (text, base_tag) = match (&*memory, how.persist) {
            (Some(m), false) => (m.clone(), etag_of(m)),
            _ => (on_disk_text, known.clone()),
        };
        let if_match = how.if_match;
        let known_tag = base_tag;
        if on_disk != *known {
            return Err(StoreError::ChangedOnDisk {
                path: self.path.display().to_string(),
            });
        }
        if let Some(given) = if_match {
            let given = given.trim();
            if given != "*" && given.trim_start_matches("W/") != known_tag.as_str() {
                return Err(StoreError::Stale {
                    given: given.to_owned(),
                    current: known_tag.clone(),
                });
            }
        }
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| StoreError::Invalid {
                    field: "(file)".into(),
                    message: e.message().to_owned(),
                })?;
        change(&mut doc)?;
        let new_text = doc.to_string();
        let config = Config::from_toml(&new_text).map_err(|e| invalid(&new_text, name, e))?;
        (how.accept)(&new_text).map_err(|message| StoreError::Invalid {
            field: format!("paths.{name}"),
            message,
        })?;
        let etag = etag_of(&new_text);
        if how.persist {
            write_atomically(&self.path, &new_text)?;
            *known = etag.clone();
            *memory = None;
        } else {
            *memory = Some(new_text.clone());
        }
        Ok(Written {
            etag,
            config,
            text: new_text,
        })
    }
}

fn read(path: &Path) -> Result<String, StoreError> {
    std::fs::read_to_string(path).map_err(|source| StoreError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn object<'a>(
    name: &str,
    v: &'a serde_json::Value,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, StoreError> {
    v.as_object().ok_or_else(|| StoreError::Invalid {
        field: format!("paths.{name}"),
        message: "expected a JSON object of the path's keys".into(),
    })
}

/// The `[paths]` table, created (implicit, so only `[paths.NAME]` headers appear) when
/// the file has none.
fn paths_table(doc: &mut DocumentMut) -> Result<&mut dyn TableLike, StoreError> {
    let root = doc.as_table_mut();
    if !root.contains_key("paths") {
        let mut t = Table::new();
        t.set_implicit(true);
        root.insert("paths", Item::Table(t));
    }
    root.get_mut("paths")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| StoreError::Invalid {
            field: "paths".into(),
            message: "is not a table in the file".into(),
        })
}

fn path_table<'a>(
    paths: &'a mut dyn TableLike,
    name: &str,
) -> Result<&'a mut dyn TableLike, StoreError> {
    paths
        .get_mut(name)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| StoreError::Invalid {
            field: format!("paths.{name}"),
            message: "is not a table in the file".into(),
        })
}

/// Sets each key of `obj` in `t`, keeping the comments around a value it replaces.
fn set_keys(
    t: &mut dyn TableLike,
    name: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), StoreError> {
    for (k, v) in obj {
        let mut value = to_toml(v).ok_or_else(|| StoreError::Invalid {
            field: format!("paths.{name}.{k}"),
            message: "null inside a value, or a number TOML cannot hold".into(),
        })?;
        match t.get_mut(k) {
            Some(Item::Value(old)) => {
                if old.to_string().trim() == value.to_string().trim() {
                    continue; // unchanged: leave the line exactly as written
                }
                *value.decor_mut() = old.decor().clone();
                *old = value;
            }
            _ => {
                t.insert(k, Item::Value(value));
            }
        }
    }
    Ok(())
}

/// A JSON value as a TOML value (objects become inline tables); None for `null`.
fn to_toml(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(to_toml(x)?);
            }
            Value::Array(arr)
        }
        serde_json::Value::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in o {
                t.insert(k, to_toml(x)?);
            }
            Value::InlineTable(t)
        }
    })
}

/// The 422 for a change that does not validate, naming the field: the key on the line
/// a parse error points at, or the key a validation message starts with.
fn invalid(text: &str, name: &str, e: ConfigError) -> StoreError {
    match e {
        ConfigError::Parse(p) => {
            let key = p.span().and_then(|s| {
                let line_start = text.get(..s.start)?.rfind('\n').map_or(0, |i| i + 1);
                let line = text.get(line_start..)?.lines().next()?;
                let key = line.split('=').next()?.trim();
                (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
            });
            StoreError::Invalid {
                field: match key {
                    Some(k) => format!("paths.{name}.{k}"),
                    None => format!("paths.{name}"),
                },
                message: p.message().trim().to_owned(),
            }
        }
        ConfigError::Invalid(message) => StoreError::Invalid {
            field: format!("paths.{name}"),
            message,
        },
        ConfigError::Read { path, source } => StoreError::Io { path, source },
    }
}

/// Writes `text` to `path` through a temporary file in the same directory: written,
/// fsynced, renamed over `path`, and the directory fsynced so the rename is durable.
fn write_atomically(path: &Path, text: &str) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GOLDEN: &str = r#"# Sluice at the plant gate.
[rtsp]
listen = "0.0.0.0:8554"   # all interfaces

# Cameras, pulled on demand.
[paths.gate]
source = "rtsp://10.0.0.5:554/stream1"   # the north gate
source_on_demand = true
source_transport = "tcp"   # the camera's UDP is flaky

[paths.yard]
source = "rtsp://10.0.0.6:554/stream1"
"#;

    fn store(text: &str) -> (ConfigStore, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        (ConfigStore::open(&path).unwrap(), path)
    }

    /// Lines of `b` not in `a` and of `a` not in `b`.
    fn changed(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
        let la: Vec<&str> = a.lines().collect();
        let lb: Vec<&str> = b.lines().collect();
        (
            lb.iter()
                .filter(|l| !la.contains(l))
                .map(|l| l.to_string())
                .collect(),
            la.iter()
                .filter(|l| !lb.contains(l))
                .map(|l| l.to_string())
                .collect(),
        )
    }

    #[test]
    fn a_patch_changes_only_the_changed_lines() {
        let (s, path) = store(GOLDEN);
        let tag = s.etag();
        let w = s
            .patch_path(
                "gate",
                &json!({ "source": "rtsp://10.0.0.7:554/stream1", "source_on_demand": true }),
                &Commit::written(Some(&tag)),
            )
            .unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let (added, removed) = changed(GOLDEN, &after);
        assert_eq!(
            added,
            ["source = \"rtsp://10.0.0.7:554/stream1\"   # the north gate"],
            "{after}"
        );
        assert_eq!(
            removed,
            ["source = \"rtsp://10.0.0.5:554/stream1\"   # the north gate"]
        );
        assert_eq!(w.etag, etag_of(&after));
        assert_eq!(w.config.paths["gate"].source, "rtsp://10.0.0.7:554/stream1");
        // null removes a key.
        s.patch_path(
            "gate",
            &json!({ "source_transport": null }),
            &Commit::written(None),
        )
        .unwrap();
        let after2 = std::fs::read_to_string(&path).unwrap();
        let (added, removed) = changed(&after, &after2);
        assert!(added.is_empty(), "{added:?}");
        assert_eq!(
            removed,
            ["source_transport = \"tcp\"   # the camera's UDP is flaky"]
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn put_adds_and_replaces_and_delete_removes() {
        let (s, path) = store("# only RTSP\n[rtsp]\nlisten = \"0.0.0.0:8554\"\n");
        s.put_path(
            "cam",
            &json!({ "source": "rtsp://h/x", "source_on_demand": true }),
            &Commit::written(None),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# only RTSP\n[rtsp]\nlisten = \"0.0.0.0:8554\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[paths.cam]\nsource = \"rtsp://h/x\"\nsource_on_demand = true\n"),
            "{text}"
        );
        let w = s
            .put_path(
                "cam",
                &json!({ "source": "rtsp://h/y" }),
                &Commit::written(None),
            )
            .unwrap();
        assert_eq!(w.config.paths["cam"].source_on_demand, None);
        let w = s.delete_path("cam", &Commit::written(None)).unwrap();
        assert!(w.config.paths.is_empty());
        assert!(matches!(
            s.delete_path("cam", &Commit::written(None)),
            Err(StoreError::NoSuchPath(_))
        ));
        assert!(matches!(
            s.patch_path("cam", &json!({}), &Commit::written(None)),
            Err(StoreError::NoSuchPath(_))
        ));
    }

    #[test]
    fn stale_tags_get_412_and_edits_behind_the_server_409() {
        let (s, path) = store(GOLDEN);
        let old = s.etag();
        s.patch_path(
            "yard",
            &json!({ "source_on_demand": true }),
            &Commit::written(Some(&old)),
        )
        .unwrap();
        let e = s
            .patch_path(
                "yard",
                &json!({ "source_on_demand": false }),
                &Commit::written(Some(&old)),
            )
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::PRECONDITION_FAILED, "{e}");
        // An editor changes the file: the store refuses to overwrite it.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("# edited by hand\n");
        std::fs::write(&path, &text).unwrap();
        let e = s
            .delete_path("yard", &Commit::written(Some(&s.etag())))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::CONFLICT, "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "untouched");
    }

    #[test]
    fn invalid_changes_get_422_naming_the_field_and_write_nothing() {
        let (s, path) = store(GOLDEN);
        for (patch, field) in [
            (json!({ "sorce": "rtsp://x/" }), "paths.gate.sorce"),
            (
                json!({ "source_on_demand": "yes" }),
                "paths.gate.source_on_demand",
            ),
            (json!({ "source": "rtmp://x/" }), "paths.gate"),
        ] {
            let e = s
                .patch_path("gate", &patch, &Commit::written(None))
                .unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{e}");
            match &e {
                StoreError::Invalid { field: f, .. } => assert_eq!(f, field, "{e}"),
                other => panic!("{other}"),
            }
        }
        let e = s
            .put_path(
                "v1",
                &json!({ "source": "rtsp://x/" }),
                &Commit::written(None),
            )
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), GOLDEN);
        assert_eq!(s.etag(), etag_of(GOLDEN));
    }
}
