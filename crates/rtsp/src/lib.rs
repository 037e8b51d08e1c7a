//! Sans-IO RTSP/1.0 (RFC 2326) protocol core.
//!
//! This crate decodes and encodes RTSP messages and `$`-interleaved binary
//! frames, and parses the typed headers a media server needs (`Transport`,
//! `Range`, `RTP-Info`, `Scale`, `Session`, `CSeq`). It performs no I/O and reads no
//! clocks: callers feed bytes in and take frames out.
//!
//! Two protocol state machines are built on it: [`client::ClientSession`] (one client
//! session) and [`server::ServerConnection`] (every RTSP decision of a server for one
//! client connection).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod decoder;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod headers;
pub mod interleaved;
pub mod message;
pub mod method;
pub mod redact;
pub mod server;
pub mod server_session;
pub mod status;
pub mod vec_map;

pub use decoder::*;
pub use headers::{range::*, replay::*, rtp_info::*, scale::*, session::*, transport::*};
pub use message::*;
pub use method::Method;
pub use redact::redact_credentials;
pub use status::StatusCode;
