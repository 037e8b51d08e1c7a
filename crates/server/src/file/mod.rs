//! The file module: stored media as sources. Configured `file://` paths and the built-in
//! demo play as looping live streams published on their paths; files under `vod/` are
//! provided to the hub as on-demand media, which the RTSP module serves per session with
//! seek, pause and Scale.
//!
//! [`Files`] starts the configured sources and registers the on-demand provider; it names
//! no other module.

pub mod source;
pub mod vod;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sluice_hub::registry::Claim;
use sluice_hub::{
    Hub, OnDemand, OnDemandMedia, OpenError, Playback, Presentation, SourceHandle, Stream,
};
use tracing::info;

use crate::config::{Config, SourceKind};
use crate::file::source::FileSource;
use crate::file::vod::OpenedMedia;

/// The embedded demo clip served at `demo.path` (regenerate with scripts/make-demo-clip.sh).
pub static DEMO_CLIP: &[u8] = include_bytes!("../../assets/demo.mp4");

/// Why a configured file source could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the source of path {path:?}: {reason}")]
pub struct FileError {
    /// The path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The running file sources (kept alive with the server; dropped, each ends its stream)
/// and the `vod/` provider.
#[derive(Debug)]
pub struct Files {
    hub: Arc<Hub>,
    sources: std::sync::Mutex<Vec<Running>>,
    vod: Arc<VodProvider>,
}

/// What a configured file source plays: a reload restarts a source whose spec changed.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    /// A file, looping or not.
    File { file: PathBuf, looping: bool },
    /// The built-in demo clip.
    Demo,
}

/// One configured file source playing on its path.
#[derive(Debug)]
struct Running {
    path: String,
    spec: Spec,
    /// Plays the file (its task stops when dropped, before the stream ends).
    _source: FileSource,
    /// The path's stream, ended when dropped.
    _handle: SourceHandle,
}

/// The file sources `config` asks for, by path.
fn wanted(config: &Config) -> Vec<(String, Spec)> {
    let mut v: Vec<(String, Spec)> = config
        .paths
        .iter()
        .filter(|(name, _)| !name.starts_with('~')) // regex paths start on demand
        .filter_map(|(name, p)| match p.kind() {
            Ok(SourceKind::File(file)) => Some((
                name.clone(),
                Spec::File {
                    file,
                    looping: p.looping,
                },
            )),
            _ => None,
        })
        .collect();
    if config.demo.enabled {
        v.push((config.demo.path.clone(), Spec::Demo));
    }
    v
}

impl Files {
    /// Starts the file paths of `[paths]` and the demo, each a looping live stream
    /// published on `hub` (overriding any other source of the path), and registers the
    /// `vod/` provider. Must run inside a tokio runtime.
    pub fn start(config: &Config, hub: &Arc<Hub>) -> Result<Files, FileError> {
        let vod = Arc::new(VodProvider {
            dir: std::sync::RwLock::new(None),
        });
        hub.add_on_demand(vod.clone());
        let files = Files {
            hub: hub.clone(),
            sources: std::sync::Mutex::new(Vec::new()),
            vod,
        };
        files.apply(config)?;
        Ok(files)
    }

    /// Brings the running sources in line with `config` (at start and on a reload): a
    /// source whose path went away or whose file or looping changed stops (its stream
    /// ends), a new one starts, and every other one plays on untouched, its readers with
    /// it. The `vod/` directory follows the configuration. On an error the sources
    /// started before it stay.
    pub fn apply(&self, config: &Config) -> Result<(), FileError> {
        *self.vod.dir.write().unwrap_or_else(|e| e.into_inner()) = match &config.vod {
            v if v.enabled => v.dir.clone(),
            _ => None,
        };
        let wanted = wanted(config);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|r| {
            let keep = wanted.iter().any(|(p, s)| *p == r.path && *s == r.spec);
            if !keep {
                info!(path = %r.path, "file source stopped (configuration changed)");
            }
            keep
        });
        for (name, spec) in wanted {
            if sources.iter().any(|r| r.path == name) {
                continue;
            }
            sources.push(self.start_one(&name, spec)?);
        }
        Ok(())
    }

    /// Whether `config`'s new or changed file sources can start: their files open and
    /// describe (a reload checks before it changes anything).
    pub fn check(&self, config: &Config) -> Result<(), FileError> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        for (name, spec) in wanted(config) {
            if sources.iter().any(|r| r.path == name && r.spec == spec) {
                continue;
            }
            if let Spec::File { file, .. } = &spec {
                vod::open_path(file).map_err(|e| FileError {
                    path: name.clone(),
                    reason: format!("{}: {e}", file.display()),
                })?;
            }
        }
        Ok(())
    }

    /// Opens and starts one file source on `name`.
    fn start_one(&self, name: &str, spec: Spec) -> Result<Running, FileError> {
        let fail = |reason: String| FileError {
            path: name.to_owned(),
            reason,
        };
        let (media, looping) = match &spec {
            Spec::File { file, looping } => (
                vod::open_path(file).map_err(|e| fail(format!("{}: {e}", file.display())))?,
                *looping,
            ),
            Spec::Demo => (
                vod::open_reader(std::io::Cursor::new(DEMO_CLIP))
                    .map_err(|e| fail(format!("built-in demo clip: {e}")))?,
                true,
            ),
        };
        // A looping file never ends: readers must see a live stream, not the file's length.
        let presentation = if looping {
            media.presentation.live()
        } else {
            media.presentation
        };
        let handle = self
            .hub
            .publish_source(name, presentation, Claim::Override)
            .map_err(|e| fail(e.to_string()))?;
        handle.stream().set_source_kind(match spec {
            Spec::Demo => sluice_hub::SourceKind::Demo,
            Spec::File { .. } => sluice_hub::SourceKind::File,
        });
        let source = FileSource::new(
            media.demuxer,
            media.packetizers,
            handle.stream().clone(),
            looping,
            name.to_owned(),
        );
        source
            .play(
                &sluice_hub::PlayRequest::npt(Some(0.0), None, 1.0),
                Instant::now(),
            )
            .map_err(|e| fail(e.to_string()))?;
        handle.set_ready();
        info!(path = %name, looping, "file source started");
        Ok(Running {
            path: name.to_owned(),
            spec,
            _source: source,
            _handle: handle,
        })
    }

    /// Paths with a configured file source, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.path.clone())
            .collect();
        v.sort();
        v
    }
}

/// Serves `vod/<relative path>` from a directory, each session playing its own copy.
/// No directory: stored media is not served (the path is then any other path).
#[derive(Debug)]
struct VodProvider {
    dir: std::sync::RwLock<Option<PathBuf>>,
}

impl VodProvider {
    /// The directory served, if any.
    fn dir(&self) -> Option<PathBuf> {
        self.dir.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl OnDemand for VodProvider {
    fn serves(&self, path: &str) -> bool {
        path.starts_with("vod/") && self.dir().is_some()
    }

    fn open(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError> {
        let (Some(name), Some(dir)) = (path.strip_prefix("vod/"), self.dir()) else {
            return Ok(None);
        };
        let file = vod::resolve(&dir, name)?;
        let media = vod::open_path(&file).map_err(|e| match e {
            OpenError::NotFound => OpenError::NotFound,
            OpenError::Unsupported(m) => OpenError::Unsupported(format!("{}: {m}", file.display())),
            OpenError::Malformed(m) => OpenError::Malformed(format!("{}: {m}", file.display())),
            OpenError::Io(m) => OpenError::Io(format!("{}: {m}", file.display())),
            OpenError::BadRequest(m) => OpenError::BadRequest(m),
        })?;
        Ok(Some(Box::new(Opened {
            media,
            label: path.to_owned(),
        })))
    }
}

/// A stored file opened for one session.
struct Opened {
    media: OpenedMedia,
    label: String,
}

impl OnDemandMedia for Opened {
    fn presentation(&self) -> &Presentation {
        &self.media.presentation
    }

    fn start(self: Box<Self>, stream: Arc<Stream>) -> Box<dyn Playback> {
        let OpenedMedia {
            demuxer,
            packetizers,
            ..
        } = self.media;
        Box::new(FileSource::new(
            demuxer,
            packetizers,
            stream,
            false,
            self.label,
        ))
    }
}
