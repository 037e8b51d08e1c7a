//! Stored media: resolving `vod/<relative path>` to a file that is certainly inside the
//! configured directory, opening it, and describing it as a presentation.

use std::io::{Read, Seek};
use std::path::{Component, Path, PathBuf};

use sluice_codec::packetizer::Packetizer;
use sluice_media::{Demuxer, MediaError};

use sluice_hub::presentation::Presentation;

use crate::file::source::packetizers;

/// Why a file could not be served: the hub's on-demand error, which the RTSP module maps
/// to its status codes.
pub use sluice_hub::OpenError as VodError;

/// A demuxer error as the reason a file cannot be served.
fn media_error(e: MediaError) -> VodError {
    match e {
        MediaError::Unsupported(s) => VodError::Unsupported(s),
        MediaError::Io(e) => VodError::Io(e.to_string()),
        other => VodError::Malformed(other.to_string()),
    }
}

/// A file ready to play: its demuxer, per-track packetizers and presentation (SDP).
pub struct OpenedMedia {
    /// Positioned at the start.
    pub demuxer: Box<dyn Demuxer>,
    /// One per demuxer track.
    pub packetizers: Vec<Packetizer>,
    /// Tracks and SDP, with the duration.
    pub presentation: Presentation,
}

/// Maps a request path below `vod/` to a regular file inside `dir`.
///
/// Refused (NotFound, and never opened): empty names, absolute paths, `.`/`..`
/// components, names whose canonical location is outside `dir` (symlinks pointing out),
/// and anything that is not a regular file. Percent-encoded names never reach here: the
/// URL layer accepts no `%`.
pub fn resolve(dir: &Path, rel: &str) -> Result<PathBuf, VodError> {
    if rel.is_empty() || rel.starts_with('/') || rel.contains('\\') || rel.contains('\0') {
        return Err(VodError::NotFound);
    }
    let rel_path = Path::new(rel);
    if !rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(VodError::NotFound);
    }
    let root = dir.canonicalize().map_err(|_| VodError::NotFound)?;
    let full = root
        .join(rel_path)
        .canonicalize()
        .map_err(|_| VodError::NotFound)?;
    if !full.starts_with(&root) || !full.is_file() {
        return Err(VodError::NotFound);
    }
    Ok(full)
}

/// Opens and describes a file.
pub fn open_path(path: &Path) -> Result<OpenedMedia, VodError> {
    let demuxer = sluice_media::open(path).map_err(media_error)?;
    describe(demuxer)
}

/// Opens and describes in-memory or other seekable media.
pub fn open_reader<R: Read + Seek + Send + 'static>(reader: R) -> Result<OpenedMedia, VodError> {
    describe(sluice_media::open_reader(reader).map_err(media_error)?)
}

fn describe(demuxer: Box<dyn Demuxer>) -> Result<OpenedMedia, VodError> {
    let packetizers =
        packetizers(demuxer.as_ref()).map_err(|e| VodError::Unsupported(e.to_string()))?;
    let duration = demuxer.info().duration.as_secs_f64();
    let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Sluice\r\nt=0 0\r\n");
    for p in &packetizers {
        sdp.push_str(&p.sdp_media());
    }
    let presentation = Presentation::from_sdp(sdp.as_bytes())
        .map_err(|e| VodError::Unsupported(format!("cannot describe tracks: {e}")))?
        .with_duration(duration);
    Ok(OpenedMedia {
        demuxer,
        packetizers,
        presentation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        let root = std::env::temp_dir().join(format!("sluice-vod-{}", std::process::id()));
        let inner = root.join("media");
        std::fs::create_dir_all(inner.join("sub")).unwrap();
        std::fs::write(inner.join("sub/a.mp4"), b"x").unwrap();
        std::fs::write(root.join("secret.mp4"), b"x").unwrap();
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink(root.join("secret.mp4"), inner.join("link.mp4"));
        assert!(resolve(&inner, "sub/a.mp4").is_ok());
        for bad in [
            "../secret.mp4",
            "sub/../../secret.mp4",
            "/etc/passwd",
            "",
            "sub",
            "link.mp4",
            "./sub/a.mp4",
            "sub\\..\\..\\secret.mp4",
            "missing.mp4",
        ] {
            assert!(
                matches!(resolve(&inner, bad), Err(VodError::NotFound)),
                "{bad}"
            );
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
