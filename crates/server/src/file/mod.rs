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
use sluice_hub::{Hub, OnDemand, OnDemandMedia, OpenError, Playback, Presentation, Stream};
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

/// The running file sources (kept alive with the server) and the on-demand provider.
#[derive(Debug)]
pub struct Files {
    sources: Vec<(String, FileSource)>,
}

impl Files {
    /// Starts the file paths of `[paths]` and the demo, each a looping live stream
    /// published on `hub` (overriding any other source of the path), and registers the
    /// `vod/` provider when stored media is served. Must run inside a tokio runtime.
    pub fn start(config: &Config, hub: &Arc<Hub>) -> Result<Files, FileError> {
        let mut opened = Vec::new();
        for (name, p) in &config.paths {
            if name.starts_with('~') {
                continue; // regex paths start on demand
            }
            let Ok(SourceKind::File(file)) = p.kind() else {
                continue;
            };
            let media = vod::open_path(&file).map_err(|e| FileError {
                path: name.clone(),
                reason: format!("{}: {e}", file.display()),
            })?;
            opened.push((name.clone(), media, p.looping));
        }
        if config.demo.enabled {
            let media =
                vod::open_reader(std::io::Cursor::new(DEMO_CLIP)).map_err(|e| FileError {
                    path: config.demo.path.clone(),
                    reason: format!("built-in demo clip: {e}"),
                })?;
            opened.push((config.demo.path.clone(), media, true));
        }
        let demo = config.demo.enabled.then(|| config.demo.path.clone());
        let mut sources = Vec::new();
        for (name, media, looping) in opened {
            // A looping file never ends: readers must see a live stream, not the file's length.
            let presentation = if looping {
                media.presentation.live()
            } else {
                media.presentation
            };
            let stream = hub.create_stream(&name, presentation);
            stream.set_source_kind(if demo.as_ref() == Some(&name) {
                sluice_hub::SourceKind::Demo
            } else {
                sluice_hub::SourceKind::File
            });
            hub.publish(hub.new_owner(), Claim::Override, &stream)
                .map_err(|e| FileError {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
            let source = FileSource::new(
                media.demuxer,
                media.packetizers,
                stream.clone(),
                looping,
                name.clone(),
            );
            source
                .play(Some(0.0), None, 1.0, Instant::now())
                .map_err(|e| FileError {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
            hub.set_ready(&stream);
            info!(path = %name, looping, "file source started");
            sources.push((name, source));
        }
        if let (true, Some(dir)) = (config.vod.enabled, &config.vod.dir) {
            hub.add_on_demand(Arc::new(VodProvider { dir: dir.clone() }));
        }
        Ok(Files { sources })
    }

    /// Paths with a configured file source, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sources.iter().map(|(p, _)| p.clone()).collect();
        v.sort();
        v
    }
}

/// Serves `vod/<relative path>` from a directory, each session playing its own copy.
#[derive(Debug)]
struct VodProvider {
    dir: PathBuf,
}

impl OnDemand for VodProvider {
    fn serves(&self, path: &str) -> bool {
        path.starts_with("vod/")
    }

    fn open(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError> {
        let Some(name) = path.strip_prefix("vod/") else {
            return Ok(None);
        };
        let file = vod::resolve(&self.dir, name)?;
        let media = vod::open_path(&file).map_err(|e| match e {
            OpenError::NotFound => OpenError::NotFound,
            OpenError::Unsupported(m) => OpenError::Unsupported(format!("{}: {m}", file.display())),
            OpenError::Malformed(m) => OpenError::Malformed(format!("{}: {m}", file.display())),
            OpenError::Io(m) => OpenError::Io(format!("{}: {m}", file.display())),
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
