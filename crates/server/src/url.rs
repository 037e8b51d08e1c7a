//! Request-URI handling: the path part of an `rtsp://` URL and the track it may name.
//! The rules are the RTSP connection's ([`sluice_rtsp::server::url`]); re-exported for
//! the configuration's path-name checks.

pub use sluice_rtsp::server::url::{request_path, UrlError};
