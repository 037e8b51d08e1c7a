//! Sluice's server: a socket-free hub ([`sluice_hub`]) in the middle and the server as
//! modules around it, each a folder that imports only the hub, the net crate, [`config`],
//! [`auth`] and its own files:
//!
//! - [`rtsp`]: the RTSP/RTSPS listeners and connections, publisher and pull sources, UDP
//!   demultiplexing, multicast, and the readers' fast path.
//! - [`mod@file`]: configured file sources, the demo, and `vod/` on-demand media.
//! - [`config`]: the configuration file and its checks (and the TLS key loading).
//! - [`http`]: the HTTP listener, the REST API under `/v1`, its OpenAPI document, and the
//!   Prometheus metrics; other modules contribute routes and collectors.
//! - [`hooks`]: webhooks and command hooks fed by the hub's event bus.
//! - [`auth`]: users, permissions and the RTSP and HTTP authentication exchanges.
//! - [`webrtc`]: WHEP delivery and WHIP ingest with str0m, every peer on one UDP port.
//! - [`web`]: the player page (`/` lists the live paths, `/<path>/` plays one in a
//!   browser over WHEP or LL-HLS) and its embedded scripts.
//!
//! [`server`] is the composition root, the only file naming more than one module.
//! Protocol decisions live in the sans-IO crates (`sluice-rtsp`, `sluice-rtp`,
//! `sluice-media`, `sluice-hub`); the modules own sockets, tasks and timers and stay thin.
//! System calls without a safe std, tokio or socket2 API are `sluice-net`'s, the one crate
//! allowed `unsafe`; this crate forbids it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod file;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hls;
pub mod hooks;
pub mod http;
pub mod playback;
pub mod record;
pub mod recordings;
pub mod rtsp;
pub mod server;
pub mod web;
pub mod webrtc;

pub use config::Config;
pub use server::{Server, ServerError};
