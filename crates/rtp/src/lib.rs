//! Sans-IO RTP/RTCP helpers for the Sluice RTSP server.
//!
//! Nothing in this crate performs I/O or reads the clock: every function works on
//! byte slices and takes time as an explicit [`std::time::Instant`] or
//! [`ntp::NtpTime`] argument, so the whole crate is deterministic and testable.
//!
//! * [`packet`] — RTP header validation, in-place header rewriting, RTP/RTCP demux.
//! * [`ntp`] — 64-bit NTP timestamps.
//! * [`rtcp`] — compound RTCP parsing and SR/RR/BYE writing.
//! * [`stats`] — RFC 3550 receiver statistics (loss, extended sequence, jitter).
//! * [`clock`] — NTP↔RTP mapping taken from a Sender Report.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ntp;
pub mod packet;
pub mod rtcp;
pub mod stats;
pub mod timeline;
