//! The GOP cache: the packets since the last keyframe, handed to a new reader first. It
//! lives in the hub ([`sluice_hub::gop`]); re-exported here for the server's modules.

pub use sluice_hub::gop::{GopCache, TrackStart, MAX_BYTES, MAX_PACKETS};
