//! Sluice's tokio layer: the RTSP listener and its connections, the UDP and multicast
//! media sockets, the path registry, and the stream hub where each path's single source
//! meets its many sinks.
//!
//! Protocol decisions live in the sans-IO crates (`sluice-rtsp`, `sluice-rtp`) and in
//! the pure modules here ([`presentation`]); the rest owns sockets, tasks and timers and
//! stays thin. System calls without a safe std, tokio or socket2 API (batched UDP sends,
//! `sendmsg`, prefetch hints) are `sluice-net`'s, the one crate allowed `unsafe`; this
//! crate forbids it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod answers;
pub mod at_hand;
pub mod auth;
mod compose_http;
pub mod config;
pub mod conn;
pub mod conn_handle;
pub mod file_source;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gop;
pub mod http;
pub mod ingest;
pub mod media_socket;
pub mod multicast;
pub mod presentation;
pub mod pull;
pub mod readers;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod url;
pub mod vod;
pub mod writer;

// The fast-path modules' former paths, for the modules that still name them there.
pub use readers::{
    direct_budget, egress, fanout, latency, media_queue, outbox, prefetch, reader, udp_send,
};

pub use config::Config;
pub use server::{Server, ServerError};
