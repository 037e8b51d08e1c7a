//! Demuxers for stored media files served on demand: MP4/MOV (regular and fragmented) and
//! Matroska/WebM, read into timed [`Sample`]s with seeking and a keyframe index.
//!
//! [`export`] plays recorded segments back over HTTP: a progressive MP4 from their
//! parts' `moof`s, and an HLS VOD playlist of byte ranges.
//!
//! [`mux`] writes fragmented MP4 (for recording and fMP4 segments). The two sans-IO media
//! cores the CLI and the server share: [`player`] turns samples into timed RTP, with
//! seeking, Scale and looping (file sources, VOD, `sluice publish`); [`recorder`] turns a
//! stream's RTP packets into a fragmented MP4 (`sluice record`, and the server's recorder).
//!
//! Files are untrusted: parsing never panics, every allocation is bounded by the file size, and
//! only index tables are kept in memory — sample data is read on demand by offset.
//!
//! ```no_run
//! let mut demuxer = sluice_media::open(std::path::Path::new("clip.mp4"))?;
//! for track in &demuxer.info().tracks {
//!     println!("{:?} {}x{:?}", track.params.codec, track.timescale, track.params.width);
//! }
//! demuxer.seek(std::time::Duration::from_secs(2))?;
//! while let Some(sample) = demuxer.next_sample()? {
//!     println!("track {} dts {} {} bytes", sample.track, sample.dts, sample.data.len());
//! }
//! # Ok::<(), sluice_media::MediaError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod demuxer;
mod ebml;
mod error;
mod index;
mod media;
mod mkv;
mod mp4;
mod source;

pub mod player;

pub mod archive;
pub mod export;
pub mod hls;
pub mod mux;
pub mod recorder;

/// The codec description types, from `sluice-codec`.
pub mod params {
    pub use sluice_codec::params::{Codec, CodecParams};
}

pub use demuxer::Demuxer;
pub use error::MediaError;
pub use media::{MediaInfo, Sample, TrackInfo};
pub use params::{Codec, CodecParams};

use std::io::{Read, Seek};
use std::path::Path;

use source::Source;

/// Opens a file, sniffing MP4/MOV vs Matroska/WebM by content (not extension). Unknown →
/// [`MediaError::Unsupported`].
pub fn open(path: &Path) -> Result<Box<dyn Demuxer>, MediaError> {
    open_reader(std::fs::File::open(path)?)
}

/// Same as [`open`] over any Read+Seek source (used by tests and fuzzing).
pub fn open_reader<R: Read + Seek + Send + 'static>(
    reader: R,
) -> Result<Box<dyn Demuxer>, MediaError> {
    let mut src = Source::new(reader)?;
    let mut head = [0u8; 12];
    let n = usize::try_from(src.len().min(12)).unwrap_or(0);
    src.read_exact(&mut head[..n])?;
    src.seek_to(0)?;
    match sniff(&head[..n]) {
        Some(Container::Mp4) => Ok(Box::new(mp4::open(src)?)),
        Some(Container::Matroska) => Ok(Box::new(mkv::open(src)?)),
        None => Err(MediaError::Unsupported(
            "unknown container (neither MP4/MOV nor Matroska/WebM)".to_owned(),
        )),
    }
}

/// A container family recognised by [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Mp4,
    Matroska,
}

/// Recognises a container from the first bytes of a file.
fn sniff(head: &[u8]) -> Option<Container> {
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(Container::Matroska);
    }
    const MP4_TOP: [&[u8; 4]; 11] = [
        b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"moof", b"styp", b"pnot", b"uuid",
        b"sidx",
    ];
    let kind = head.get(4..8)?;
    MP4_TOP
        .iter()
        .any(|k| k.as_slice() == kind)
        .then_some(Container::Mp4)
}
