//! The server recorder's on-disk index and file helpers.
//!
//! [`Index`] is the recordings index, `<record dir>/index.redb`: one entry per segment file
//! ([`SegmentRecord`], with its parts), keyed by (stream, wall clock of its first sample),
//! plus retention locks. Listing, timeline and seek queries are range scans of those keys,
//! so nothing ever walks the directory (MediaMTX's listing does, and slows down with the
//! archive's size). The store is [redb](https://docs.rs/redb): pure Rust (no C library to
//! build and link, unlike SQLite), one file, ACID commits that survive a crash, ordered
//! B-tree keys; the queries are all key ranges, so no SQL is needed.
//!
//! The files stay self-describing: [`reindex_dir`] (`sluice recordings reindex DIR`) rebuilds
//! the index from them alone, naming each file's stream through the [`PathTemplate`] that
//! named it.
//!
//! Everything here does blocking I/O with `std::fs` and redb: callers run it off the async
//! runtime (a writer thread, `spawn_blocking`).

#![forbid(unsafe_code)]

mod files;
mod index;
mod template;

pub use files::{free_space, reindex_dir, sync_dir, DiskSpace, ReindexReport, Skipped, INDEX_FILE};
pub use index::{Hold, Index, IndexError, Lock};
pub use sluice_media::archive::{PartRecord, SegmentRecord};
pub use template::{PathTemplate, TemplateError, DEFAULT_TEMPLATE};
