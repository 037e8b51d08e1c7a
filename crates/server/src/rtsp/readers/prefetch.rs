//! Cache prefetch hints for the fan-out loop.
//!
//! A fan-out visits every reader once per batch, and with thousands of readers each
//! reader's state has left the cache since the last batch: perf showed most of the
//! per-reader user-space time of a 1,000-reader TCP fan-out on the first load of the
//! reader's sink, of its track counters and of its media queue (cache misses, not work).
//! The loop therefore asks the caches for readers a few places ahead of the one it
//! serves, so their state is on its way while the current one is served.
//!
//! The hint itself is `sluice-net`'s ([`sluice_net::prefetch`]), where the workspace's
//! `unsafe` lives.

pub use sluice_net::prefetch::prefetch;
