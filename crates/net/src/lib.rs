//! Sluice's system calls, behind safe APIs: the one crate of the workspace where `unsafe`
//! is allowed (the role `quinn-udp` plays for quinn), so that every other crate can
//! forbid it and an audit of memory safety reads this crate only.
//!
//! It does system calls and nothing else: what to send, when, and what to do when the
//! kernel refuses is decided by the caller (the server).
//!
//! - [`udp`]: a UDP socket registered with the runtime for reading only, receiving
//!   into a buffer's spare capacity; batched sends (`sendmmsg(2)`, each message
//!   optionally a UDP GSO run) and the GSO probe.
//! - [`tcp`]: one non-blocking vectored `sendmsg(2)`, and [`tcp::HeldFd`], a
//!   descriptor read once and kept open by its owner.
//! - [`prefetch`]: cache prefetch hints.
//! - [`mem`]: handing freed heap memory back to the operating system.
//!
//! Every `unsafe` block states why it is sound in a `// SAFETY:` comment.

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod mem;
pub mod prefetch;
pub mod tcp;
pub mod udp;
