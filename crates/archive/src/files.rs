//! File helpers around the index: rebuilding it from a directory, syncing a directory
//! entry, reading free space.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_media::archive::{reindex_from, SegmentRecord};

use crate::index::{Index, IndexError};
use crate::template::PathTemplate;

/// The index's file name inside the record directory.
pub const INDEX_FILE: &str = "index.redb";

/// A file [`reindex_dir`] left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its path relative to the directory.
    pub path: String,
    /// Why (unreadable, or no valid init segment).
    pub reason: String,
}

/// What [`reindex_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReindexReport {
    /// Segments indexed.
    pub segments: usize,
    /// Of those, files whose damaged tail was cut off (truncated after the last complete
    /// part).
    pub recovered: usize,
    /// Streams found.
    pub streams: usize,
    /// Files the template names that could not be indexed.
    pub skipped: Vec<Skipped>,
    /// Files the template does not name (left alone).
    pub ignored: usize,
}

/// Rebuilds the index of the record directory `dir` from its segment files (`sluice
/// recordings reindex DIR`): every file that `template` could have named is read, its
/// record rebuilt by [`reindex_from`] (a damaged tail is truncated away, as crash recovery
/// does), and the index's segment entries are replaced by what was found. Locks are kept.
/// Run it while no server records into `dir`.
pub fn reindex_dir(dir: &Path, template: &PathTemplate) -> Result<ReindexReport, IndexError> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    let mut report = ReindexReport::default();
    let mut by_stream: BTreeMap<String, Vec<SegmentRecord>> = BTreeMap::new();
    for (rel, full) in files {
        let Some(stream) = template.stream_of(&rel) else {
            report.ignored += 1;
            continue;
        };
        match reindex_file(&full, &rel) {
            Ok(rec) => {
                report.segments += 1;
                report.recovered += usize::from(rec.recovered);
                by_stream.entry(stream).or_default().push(rec);
            }
            Err(reason) => report.skipped.push(Skipped { path: rel, reason }),
        }
    }
    let index = Index::open(dir)?;
    index.clear_segments()?;
    for (stream, recs) in &by_stream {
        index.put_batch(stream, recs)?;
    }
    report.streams = by_stream.len();
    Ok(report)
}

/// Rebuilds one file's record, truncating a damaged tail (and syncing the cut).
pub(crate) fn reindex_file(full: &Path, rel: &str) -> Result<SegmentRecord, String> {
    // Read part by part (bounded memory: a segment may be gigabytes).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(full)
        .map_err(|e| format!("opening: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("reading metadata: {e}"))?
        .len();
    let rec =
        reindex_from(rel, &mut f).map_err(|d| format!("{} at byte {}", d.reason, d.offset))?;
    if rec.bytes < len {
        f.set_len(rec.bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("truncating to {} bytes: {e}", rec.bytes))?;
    }
    Ok(rec)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), IndexError> {
    let io = |source| IndexError::Io {
        what: "reading directory",
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let rel = rel.join("/");
            if rel == INDEX_FILE {
                continue;
            }
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Makes a directory's entries durable (after creating or deleting a file in it): fsync
/// of the directory itself.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Space of the file system holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Its size in bytes.
    pub total: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
}

/// Reads the space of the file system holding `path` (statvfs).
pub fn free_space(path: &Path) -> std::io::Result<DiskSpace> {
    let s = rustix::fs::statvfs(path)?;
    Ok(DiskSpace {
        total: s.f_blocks.saturating_mul(s.f_frsize),
        available: s.f_bavail.saturating_mul(s.f_frsize),
    })
}
