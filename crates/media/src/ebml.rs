//! A minimal EBML reader (element headers and scalar values) for the Matroska demuxer.
//!
//! Hand-written rather than using a Matroska crate: the candidates (`matroska-demuxer` 0.8,
//! `matroska` 0.30) do not expose block byte offsets (needed to build a seek index by scanning
//! block headers without reading payloads and to read samples on demand), do not derive keyframes
//! for `BlockGroup`s from `ReferenceBlock`, and `matroska` only parses metadata.

use std::io::{Read, Seek};

use crate::error::MediaError;
use crate::source::Source;

/// An element header: its ID, its data size (`None` = unknown size) and where its data starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// Element ID including its length marker bits (e.g. `0x1A45DFA3`).
    pub id: u32,
    /// Data size in bytes; `None` for the "unknown size" marker.
    pub size: Option<u64>,
    /// Offset of the element's header.
    pub start: u64,
    /// Offset of the element's data.
    pub data: u64,
}

impl Header {
    /// End of the element's data, or `fallback` for unknown sizes.
    pub(crate) fn end_or(&self, fallback: u64) -> u64 {
        self.size.map_or(fallback, |s| self.data.saturating_add(s))
    }
}

/// Reads an element header at the current position.
pub(crate) fn read_header<R: Read + Seek>(src: &mut Source<R>) -> Result<Header, MediaError> {
    let start = src.pos();
    let first = src.read_u8()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return Err(MediaError::malformed(
            "EBML element ID",
            start,
            "invalid length marker",
        ));
    }
    let mut id = u32::from(first);
    for _ in 1..len {
        id = (id << 8) | u32::from(src.read_u8()?);
    }
    let size = read_vint(src, "EBML element size")?;
    Ok(Header {
        id,
        size,
        start,
        data: src.pos(),
    })
}

/// Reads an unsigned variable-size integer; `None` when all its value bits are 1 (unknown).
pub(crate) fn read_vint<R: Read + Seek>(
    src: &mut Source<R>,
    what: &str,
) -> Result<Option<u64>, MediaError> {
    let at = src.pos();
    let first = src.read_u8()?;
    let len = first.leading_zeros() + 1;
    if len > 8 {
        return Err(MediaError::malformed(what, at, "invalid length marker"));
    }
    let mut value = u64::from(first) & (0xFFu64 >> len);
    for _ in 1..len {
        value = (value << 8) | u64::from(src.read_u8()?);
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    Ok((value != all_ones).then_some(value))
}

/// Reads a vint whose unknown marker is not allowed (block track numbers, lace sizes); returns
/// the value and its encoded length.
pub(crate) fn read_plain_vint<R: Read + Seek>(
    src: &mut Source<R>,
    what: &str,
) -> Result<(u64, u32), MediaError> {
    let at = src.pos();
    let first = src.read_u8()?;
    let len = first.leading_zeros() + 1;
    if len > 8 {
        return Err(MediaError::malformed(what, at, "invalid length marker"));
    }
    let mut value = u64::from(first) & (0xFFu64 >> len);
    for _ in 1..len {
        value = (value << 8) | u64::from(src.read_u8()?);
    }
    Ok((value, len))
}

/// Reads an unsigned integer element's data of `size` bytes (0 to 8).
pub(crate) fn read_uint<R: Read + Seek>(
    src: &mut Source<R>,
    size: u64,
    what: &str,
) -> Result<u64, MediaError> {
    if size > 8 {
        return Err(MediaError::malformed(
            what,
            src.pos(),
            format!("integer of {size} bytes"),
        ));
    }
    let mut v = 0u64;
    for _ in 0..size {
        v = (v << 8) | u64::from(src.read_u8()?);
    }
    Ok(v)
}

/// Reads a float element's data (0, 4 or 8 bytes).
pub(crate) fn read_float<R: Read + Seek>(
    src: &mut Source<R>,
    size: u64,
    what: &str,
) -> Result<f64, MediaError> {
    match size {
        0 => Ok(0.0),
        4 => {
            let mut b = [0u8; 4];
            src.read_exact(&mut b)?;
            Ok(f64::from(f32::from_be_bytes(b)))
        }
        8 => {
            let mut b = [0u8; 8];
            src.read_exact(&mut b)?;
            Ok(f64::from_be_bytes(b))
        }
        n => Err(MediaError::malformed(
            what,
            src.pos(),
            format!("float of {n} bytes"),
        )),
    }
}

/// Reads a binary element's data, bounded by the file size and `cap`.
pub(crate) fn read_binary<R: Read + Seek>(
    src: &mut Source<R>,
    size: u64,
    cap: u64,
    what: &str,
) -> Result<Vec<u8>, MediaError> {
    if size > cap {
        return Err(MediaError::malformed(
            what,
            src.pos(),
            format!("{size} bytes is too large"),
        ));
    }
    src.read_vec(size, what)
}

/// Reads a string element's data (trailing NULs dropped, invalid UTF-8 replaced).
pub(crate) fn read_string<R: Read + Seek>(
    src: &mut Source<R>,
    size: u64,
    what: &str,
) -> Result<String, MediaError> {
    let v = read_binary(src, size, 4096, what)?;
    Ok(String::from_utf8_lossy(&v)
        .trim_end_matches('\0')
        .to_owned())
}
