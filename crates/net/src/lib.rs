//! Sluice's system calls, behind safe APIs: the one crate of the workspace where `unsafe`
//! is allowed (the role `quinn-udp` plays for quinn), so that every other crate can
//! forbid it and an audit of memory safety reads this crate only.
//!
//! It does system calls and what belongs to them: what to send and when is decided by
//! the caller (the server); how a batch of datagrams gets out (in `sendmmsg` chunks, a
//! refused message dropped and counted, a GSO run the device refuses resent packet by
//! packet) is decided here, as quinn-udp does for quinn.
//!
//! - [`udp`]: a UDP socket registered with the runtime for reading only, receiving
//!   into a buffer's spare capacity; batched sends (`sendmmsg(2)`, each message
//!   optionally a UDP GSO run) and the GSO probe.
//! - [`media_socket`]: the server's media sockets (large buffers, woken for input only,
//!   GSO per socket).
//! - [`udp_send`]: batched UDP egress over them: GSO runs planned within the kernel's
//!   limits, `sendmmsg` chunks, drops counted, the GSO fallback.
//! - [`tcp`]: one non-blocking vectored `sendmsg(2)`, and [`tcp::HeldFd`], a
//!   descriptor read once and kept open by its owner.
//! - [`prefetch`]: cache prefetch hints.
//! - [`mem`]: handing freed heap memory back to the operating system.
//!
//! Every `unsafe` block states why it is sound in a `// SAFETY:` comment.

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod media_socket;
pub mod mem;
pub mod prefetch;
pub mod tcp;
pub mod udp;
pub mod udp_send;
