//! The redb store behind [`Index`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use sluice_media::archive::{RecordError, SegmentRecord};

use crate::template::{from_micros, micros};

/// Segments: (stream, start µs) → (end µs, bytes, encoded [`SegmentRecord`]). The end and
/// size sit beside the record so that first/last, retention and totals need no decoding.
const SEGMENTS: TableDefinition<(&str, u64), (u64, u64, &[u8])> = TableDefinition::new("segments");
/// Segments still being written (or left open by a crash): (stream, start µs) → ().
const OPEN: TableDefinition<(&str, u64), ()> = TableDefinition::new("open");
/// Retention locks: id → (stream, start µs, end µs, reason).
const LOCKS: TableDefinition<u64, (&str, u64, u64, &str)> = TableDefinition::new("locks");
/// Counters: "next_lock" → the next lock id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Non-durable commits of open segments between two durable ones (see [`Index::put_open`]).
const DURABLE_EVERY: u32 = 30;

/// An index operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database could not be opened, read or written.
    #[error("recordings index {path}: {what}: {source}")]
    Store {
        /// The index file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record does not decode (the index is damaged: reindex the directory).
    #[error("recordings index {path}: record of {stream:?} at {start_micros} µs: {source}")]
    Record {
        /// The index file.
        path: PathBuf,
        /// The stream.
        stream: String,
        /// The record's key time.
        start_micros: u64,
        /// Why it does not decode.
        #[source]
        source: RecordError,
    },
    /// A file operation beside the index failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A retention lock: segments overlapping `[start, end)` of `stream` are never deleted by
/// retention while it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Its id (for removal).
    pub id: u64,
    /// The stream it protects.
    pub stream: String,
    /// Start of the protected range.
    pub start: SystemTime,
    /// End of the protected range (exclusive).
    pub end: SystemTime,
    /// Why (free text from the API caller).
    pub reason: String,
}

type Holds = Arc<Mutex<HashMap<(String, u64), usize>>>;

/// The recordings index of one record directory (`<dir>/index.redb`). Cheap to share
/// behind an `Arc`: redb serialises writers and lets readers run beside them.
pub struct Index {
    db: Database,
    path: PathBuf,
    holds: Holds,
    since_durable: AtomicU32,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

/// A guard that keeps retention away from one segment (a reader is serving it); released
/// when dropped. Holds live in memory only: they end with the process that took them.
#[derive(Debug)]
pub struct Hold {
    holds: Holds,
    key: (String, u64),
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = holds.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.key);
            }
        }
    }
}

impl Index {
    /// Opens (creating if needed) the index of the record directory `dir`, creating the
    /// directory too. Opening costs the same with 10 segments or 100,000: nothing is read
    /// until asked.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        std::fs::create_dir_all(dir).map_err(|source| IndexError::Io {
            what: "creating the record directory",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(crate::files::INDEX_FILE);
        let db = Database::create(&path).map_err(|e| IndexError::Store {
            path: path.clone(),
            what: "opening",
            source: Box::new(e.into()),
        })?;
        let index = Index {
            db,
            path,
            holds: Holds::default(),
            since_durable: AtomicU32::new(0),
        };
        index.write(Durability::Immediate, "creating tables", |_| Ok(()))?;
        Ok(index)
    }

    /// The index file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> IndexError + '_ {
        move |e| IndexError::Store {
            path: self.path.clone(),
            what,
            source: Box::new(e.into()),
        }
    }

    /// Runs `f` in one write transaction with all tables open, then commits.
    fn write<T>(
        &self,
        durability: Durability,
        what: &'static str,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, redb::StorageError>,
    ) -> Result<T, IndexError> {
        let durable = matches!(durability, Durability::Immediate);
        let mut txn = self.db.begin_write().map_err(self.err(what))?;
        txn.set_durability(durability);
        let out = {
            let mut t = Tables {
                segments: txn.open_table(SEGMENTS).map_err(self.err(what))?,
                open: txn.open_table(OPEN).map_err(self.err(what))?,
                locks: txn.open_table(LOCKS).map_err(self.err(what))?,
                meta: txn.open_table(META).map_err(self.err(what))?,
            };
            f(&mut t).map_err(self.err(what))?
        };
        txn.commit().map_err(self.err(what))?;
        if durable {
            self.since_durable.store(0, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// Inserts or replaces the record of a complete segment, keyed by (`stream`,
    /// `rec.start_wall`), and clears its open mark; the commit is durable (synced).
    pub fn put(&self, stream: &str, rec: &SegmentRecord) -> Result<(), IndexError> {
        self.put_batch(stream, std::slice::from_ref(rec))
    }

    /// [`Index::put`] for many records of one stream in one durable commit (reindexing,
    /// imports).
    pub fn put_batch(&self, stream: &str, recs: &[SegmentRecord]) -> Result<(), IndexError> {
        self.write(Durability::Immediate, "storing segments", |t| {
            for rec in recs {
                let key = (stream, micros(rec.start_wall));
                let value = rec.encode();
                t.segments
                    .insert(key, (micros(rec.end_wall), rec.bytes, value.as_slice()))?;
                t.open.remove(key)?;
            }
            Ok(())
        })
    }

    /// Inserts or replaces the record of a segment still being written and marks it open
    /// (crash recovery looks at open segments first). Called as each part lands: the
    /// commit is cheap and not synced, except every 30th (and the first of each segment,
    /// whose record has no parts yet), so that a crash leaves the index at most ~30 parts
    /// behind; the open mark itself is durable from the first call. The segment's file is
    /// the truth for its parts in any case: recovery reads them from it.
    pub fn put_open(&self, stream: &str, rec: &SegmentRecord) -> Result<(), IndexError> {
        let n = self.since_durable.fetch_add(1, Ordering::Relaxed);
        let durability = if rec.parts.is_empty() || n + 1 >= DURABLE_EVERY {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.write(durability, "storing an open segment", |t| {
            let key = (stream, micros(rec.start_wall));
            let value = rec.encode();
            t.segments
                .insert(key, (micros(rec.end_wall), rec.bytes, value.as_slice()))?;
            t.open.insert(key, ())?;
            Ok(())
        })
    }

    /// Removes the record keyed by (`stream`, `start_wall`) (retention, after deleting the
    /// file); durable. Removing an absent record is not an error.
    pub fn remove(&self, stream: &str, start_wall: SystemTime) -> Result<(), IndexError> {
        self.write(Durability::Immediate, "removing a segment", |t| {
            let key = (stream, micros(start_wall));
            t.segments.remove(key)?;
            t.open.remove(key)?;
            Ok(())
        })
    }

    /// Removes every segment record (locks stay): the start of a reindex.
    pub fn clear_segments(&self) -> Result<(), IndexError> {
        self.write(Durability::Immediate, "clearing segments", |t| {
            t.segments.retain(|_, _| false)?;
            t.open.retain(|_, _| false)?;
            Ok(())
        })
    }

    fn decode(&self, stream: &str, start: u64, bytes: &[u8]) -> Result<SegmentRecord, IndexError> {
        SegmentRecord::decode(bytes).map_err(|source| IndexError::Record {
            path: self.path.clone(),
            stream: stream.to_owned(),
            start_micros: start,
            source,
        })
    }

    /// The records of `stream` overlapping `[from, to)`, ordered by start: a timeline,
    /// seek or export query. Costs a key range scan plus decoding what it returns.
    pub fn segments(
        &self,
        stream: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<SegmentRecord>, IndexError> {
        let (from, to) = (micros(from), micros(to));
        if to <= from {
            return Ok(Vec::new());
        }
        let what = "reading segments";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut out = Vec::new();
        // Segments starting before `from` may reach into it; they never overlap each other
        // by much, so walking back until one ends before `from` finds them all.
        let mut before = Vec::new();
        for item in table
            .range((stream, 0)..(stream, from))
            .map_err(self.err(what))?
            .rev()
        {
            let (k, v) = item.map_err(self.err(what))?;
            let (start, (end, _, bytes)) = (k.value().1, v.value());
            if end > from {
                before.push(self.decode(stream, start, bytes)?);
            } else {
                break;
            }
        }
        out.extend(before.into_iter().rev());
        for item in table
            .range((stream, from)..(stream, to))
            .map_err(self.err(what))?
        {
            let (k, v) = item.map_err(self.err(what))?;
            let (start, (_, _, bytes)) = (k.value().1, v.value());
            out.push(self.decode(stream, start, bytes)?);
        }
        Ok(out)
    }

    /// Span summaries of `stream` overlapping `[from, to)` without decoding the records:
    /// (start, end, bytes) each, ordered by start. This is the timeline query (spans, and
    /// the gaps between them): a segment has no gap inside, so its parts are not needed;
    /// 3 days of 1 h segments answer in well under a millisecond.
    pub fn spans(
        &self,
        stream: &str,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<(SystemTime, SystemTime, u64)>, IndexError> {
        let (from, to) = (micros(from), micros(to));
        let what = "reading spans";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut out = Vec::new();
        for item in table
            .range((stream, 0)..(stream, to))
            .map_err(self.err(what))?
        {
            let (k, v) = item.map_err(self.err(what))?;
            let (start, (end, bytes, _)) = (k.value().1, v.value());
            if end > from || (start >= from && start < to) {
                out.push((from_micros(start), from_micros(end), bytes));
            }
        }
        Ok(out)
    }

    /// The record keyed by (`stream`, `start_wall`), if any.
    pub fn get(
        &self,
        stream: &str,
        start_wall: SystemTime,
    ) -> Result<Option<SegmentRecord>, IndexError> {
        let what = "reading a segment";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let start = micros(start_wall);
        match table.get((stream, start)).map_err(self.err(what))? {
            Some(v) => Ok(Some(self.decode(stream, start, v.value().2)?)),
            None => Ok(None),
        }
    }

    /// The streams that have at least one segment, sorted.
    pub fn streams(&self) -> Result<Vec<String>, IndexError> {
        let what = "listing streams";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut out: Vec<String> = Vec::new();
        loop {
            // Skip to the first key after the last stream found: one lookup per stream.
            let next = match out.last() {
                None => table.first().map_err(self.err(what))?,
                Some(last) => {
                    let lo = (last.as_str(), u64::MAX);
                    let mut r = table
                        .range::<(&str, u64)>((
                            std::ops::Bound::Excluded(lo),
                            std::ops::Bound::Unbounded,
                        ))
                        .map_err(self.err(what))?;
                    r.next().transpose().map_err(self.err(what))?
                }
            };
            match next {
                Some((k, _)) => out.push(k.value().0.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// The start of `stream`'s first segment and the end of its last, if it has any.
    pub fn first_last(&self, stream: &str) -> Result<Option<(SystemTime, SystemTime)>, IndexError> {
        let what = "reading first and last";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut r = table
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(self.err(what))?;
        let Some(first) = r.next() else {
            return Ok(None);
        };
        let first = first.map_err(self.err(what))?.0.value().1;
        let last_end = match r.next_back() {
            Some(last) => last.map_err(self.err(what))?.1.value().0,
            None => {
                let v = table.get((stream, first)).map_err(self.err(what))?;
                v.map_or(first, |v| v.value().0)
            }
        };
        Ok(Some((from_micros(first), from_micros(last_end))))
    }

    /// Bytes and segment count stored for `stream` (retention by bytes, metrics). A scan
    /// of its keys and sizes, not of the records.
    pub fn stored(&self, stream: &str) -> Result<(u64, u64), IndexError> {
        let what = "summing stored bytes";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut sum = (0u64, 0u64);
        for item in table
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(self.err(what))?
        {
            let (_, v) = item.map_err(self.err(what))?;
            sum.0 += v.value().1;
            sum.1 += 1;
        }
        Ok(sum)
    }

    /// Total number of segment records.
    pub fn len(&self) -> Result<u64, IndexError> {
        let what = "counting segments";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        table.len().map_err(self.err(what))
    }

    /// Whether the index holds no segment.
    pub fn is_empty(&self) -> Result<bool, IndexError> {
        Ok(self.len()? == 0)
    }

    /// The segments marked open, as (stream, record): at start-up these were left open by
    /// a crash (or a kill) and need recovery.
    pub fn open_segments(&self) -> Result<Vec<(String, SegmentRecord)>, IndexError> {
        let what = "listing open segments";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let open = txn.open_table(OPEN).map_err(self.err(what))?;
        let segments = txn.open_table(SEGMENTS).map_err(self.err(what))?;
        let mut out = Vec::new();
        for item in open.iter().map_err(self.err(what))? {
            let (k, _) = item.map_err(self.err(what))?;
            let (stream, start) = k.value();
            if let Some(v) = segments.get((stream, start)).map_err(self.err(what))? {
                out.push((stream.to_owned(), self.decode(stream, start, v.value().2)?));
            }
        }
        Ok(out)
    }

    /// Holds the segment keyed by (`stream`, `start_wall`) against retention while the
    /// returned guard lives (a reader is serving it).
    pub fn hold(&self, stream: &str, start_wall: SystemTime) -> Hold {
        let key = (stream.to_owned(), micros(start_wall));
        *self
            .holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        Hold {
            holds: self.holds.clone(),
            key,
        }
    }

    /// Whether a [`Hold`] on the segment is alive.
    pub fn is_held(&self, stream: &str, start_wall: SystemTime) -> bool {
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(stream.to_owned(), micros(start_wall)))
    }

    /// Adds a retention lock on `[start, end)` of `stream` and returns its id. Durable.
    pub fn add_lock(
        &self,
        stream: &str,
        start: SystemTime,
        end: SystemTime,
        reason: &str,
    ) -> Result<u64, IndexError> {
        self.write(Durability::Immediate, "adding a lock", |t| {
            let id = t.meta.get("next_lock")?.map_or(1, |v| v.value());
            t.meta.insert("next_lock", id + 1)?;
            t.locks
                .insert(id, (stream, micros(start), micros(end), reason))?;
            Ok(id)
        })
    }

    /// The locks, of `stream` only if given, ordered by id.
    pub fn locks(&self, stream: Option<&str>) -> Result<Vec<Lock>, IndexError> {
        let what = "listing locks";
        let txn = self.db.begin_read().map_err(self.err(what))?;
        let table = txn.open_table(LOCKS).map_err(self.err(what))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(self.err(what))? {
            let (k, v) = item.map_err(self.err(what))?;
            let (s, start, end, reason) = v.value();
            if stream.is_none_or(|want| want == s) {
                out.push(Lock {
                    id: k.value(),
                    stream: s.to_owned(),
                    start: from_micros(start),
                    end: from_micros(end),
                    reason: reason.to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Removes a lock; false if no lock had that id.
    pub fn remove_lock(&self, id: u64) -> Result<bool, IndexError> {
        self.write(Durability::Immediate, "removing a lock", |t| {
            Ok(t.locks.remove(id)?.is_some())
        })
    }

    /// Whether a lock of `stream` overlaps `[start, end)`.
    pub fn locked(
        &self,
        stream: &str,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<bool, IndexError> {
        Ok(self
            .locks(Some(stream))?
            .iter()
            .any(|l| l.start < end && start < l.end))
    }
}

struct Tables<'t> {
    segments: redb::Table<'t, (&'static str, u64), (u64, u64, &'static [u8])>,
    open: redb::Table<'t, (&'static str, u64), ()>,
    locks: redb::Table<'t, u64, (&'static str, u64, u64, &'static str)>,
    meta: redb::Table<'t, &'static str, u64>,
}
