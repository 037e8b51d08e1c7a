//! The recordings index as the playback module's [`Catalog`]: a key range scan per
//! session, holds that keep retention away from the segments being played, and file
//! names made absolute below the record directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sluice_archive::Index;

use crate::playback::engine::Segment;
use crate::playback::{Catalog, Listing};

/// The index of one record directory.
#[derive(Debug)]
pub struct IndexCatalog {
    index: Arc<Index>,
    dir: PathBuf,
}

impl IndexCatalog {
    /// Serves `index`, whose segment paths are relative to `dir`.
    pub fn new(index: Arc<Index>, dir: PathBuf) -> IndexCatalog {
        IndexCatalog { index, dir }
    }

    /// The record directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Catalog for IndexCatalog {
    fn segments(&self, stream: &str, from: SystemTime, to: SystemTime) -> Result<Listing, String> {
        let records = self
            .index
            .segments(stream, from, to)
            .map_err(|e| e.to_string())?;
        let holds: Vec<_> = records
            .iter()
            .map(|r| self.index.hold(stream, r.start_wall))
            .collect();
        let segments = records
            .into_iter()
            .map(|r| Segment {
                file: self.dir.join(&r.path),
                start: r.start_wall,
                end: r.end_wall,
                parts: r
                    .parts
                    .iter()
                    .map(|p| (r.media_base.saturating_add(p.media_start), p.wall_start))
                    .collect(),
            })
            .collect();
        Ok(Listing {
            segments,
            guard: Box::new(holds),
        })
    }
}
