//! Sans-IO codec helpers for Sluice.
//!
//! - [`params`]: what a container tells about a track ([`params::CodecParams`]).
//! - [`depacketizer`]: reassembles RTP packets into access units and codec configuration records.
//! - [`packetizer`]: turns a track's samples (access units) into RTP packets and describes them in SDP.
//! - [`keyframe`]: keyframe detection on RTP payloads and SDP encoding-name lookup.
//!
//! Nothing here does I/O, reads a clock or spawns tasks: callers feed bytes and timestamps in and get
//! packets out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod asc;
mod avcc;
mod bits;
mod cursor;
mod hvcc;
mod nal;
mod rtp;

pub mod depacketizer;
pub mod keyframe;
pub mod packetizer;
pub mod params;
pub mod picorder;

pub use depacketizer::{AccessUnit, DepacketizeError, Depacketizer};
pub use keyframe::{codec_from_encoding, starts_keyframe, starts_random_access};
pub use packetizer::{PacketizeError, Packetizer};
pub use params::{Codec, CodecParams};
