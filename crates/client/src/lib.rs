//! Sluice's tokio RTSP client.
//!
//! [`Connection`] drives the sans-IO [`ClientSession`](sluice_rtsp::client::ClientSession)
//! over a TCP connection and, for UDP transport, one RTP/RTCP socket pair per track: it
//! writes what the session wants sent, feeds it what arrives, fires its timers, and hands
//! the caller the session's events. Used by pull sources (the server relaying cameras),
//! `sluice probe`, `sluice record` and `sluice publish`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connection;

pub use connection::{authority, Connection, ConnectionError, Options};
pub use sluice_rtsp::auth::Credentials;
pub use sluice_rtsp::client::{ClientEvent, ClientMode, PacketKind};

pub mod probe;
pub mod publish;
pub mod record;
