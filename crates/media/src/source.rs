//! A buffered, length-aware view of the seekable byte source.

use std::io::{BufReader, Read, Seek, SeekFrom};

use crate::error::MediaError;

/// A seekable byte source of known length. Every read is bounded by the length, so a length
/// field in the file can never make us allocate more than the file holds.
pub(crate) struct Source<R> {
    inner: BufReader<R>,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> Source<R> {
    /// Wraps `reader`, measuring its length.
    pub(crate) fn new(mut reader: R) -> Result<Self, MediaError> {
        let len = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        Ok(Source {
            inner: BufReader::with_capacity(64 * 1024, reader),
            len,
            pos: 0,
        })
    }

    /// Total length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Current position.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left after the current position.
    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Moves to absolute position `pos` (keeping the buffer when the jump is small).
    pub(crate) fn seek_to(&mut self, pos: u64) -> Result<(), MediaError> {
        if pos == self.pos {
            return Ok(());
        }
        let delta = i128::from(pos) - i128::from(self.pos);
        match i64::try_from(delta) {
            Ok(d) if d.unsigned_abs() < 64 * 1024 => self.inner.seek_relative(d)?,
            _ => {
                self.inner.seek(SeekFrom::Start(pos))?;
            }
        }
        self.pos = pos;
        Ok(())
    }

    /// Fills `buf` completely; an early end of file is an I/O error (`UnexpectedEof`).
    pub(crate) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), MediaError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos = self.pos.saturating_add(buf.len() as u64);
                Ok(())
            }
            Err(e) => {
                // A partial read leaves the position unknown: ask the reader.
                self.pos = self.inner.stream_position().unwrap_or(self.len);
                Err(e.into())
            }
        }
    }

    /// Reads one byte.
    pub(crate) fn read_u8(&mut self) -> Result<u8, MediaError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Reads `n` bytes into a new vector, refusing (as malformed `what`) lengths beyond the end of the file.
    pub(crate) fn read_vec(&mut self, n: u64, what: &str) -> Result<Vec<u8>, MediaError> {
        if n > self.remaining() {
            return Err(MediaError::malformed(
                what,
                self.pos,
                format!(
                    "length {n} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            ));
        }
        let n = usize::try_from(n)
            .map_err(|_| MediaError::malformed(what, self.pos, "length does not fit in memory"))?;
        let mut v = vec![0u8; n];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads `n` bytes at absolute offset `offset`.
    pub(crate) fn read_at(
        &mut self,
        offset: u64,
        n: u64,
        what: &str,
    ) -> Result<Vec<u8>, MediaError> {
        if offset > self.len {
            return Err(MediaError::malformed(
                what,
                offset,
                "offset beyond end of file",
            ));
        }
        self.seek_to(offset)?;
        self.read_vec(n, what)
    }
}
