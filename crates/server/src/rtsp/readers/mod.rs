//! The RTSP readers' fast path, behind one reader-group sink per path.
//!
//! A path's [`ReaderGroup`] is one [`sluice_hub::Sink`] of its stream: the stream hands it
//! each batch once, and the group does the rest for every RTSP reader and multicast group
//! of the path. It plans the batch once (its egress: UDP messages, GSO runs, TCP `$`
//! framing), fans it out over shards and offload threads ([`group`], [`outbox`]) with
//! cache prefetch hints ([`prefetch`]), writes TCP readers directly within a budget
//! ([`media_queue`], [`direct_budget`]) and sends UDP in batches (`sluice_net::udp_send`); each
//! [`reader::ReaderSink`] paces its GOP catch-up, sends Sender Reports and BYE, and
//! records egress latency ([`latency`]). The stream sees a handful of sinks per path, not
//! thousands of readers.

pub mod direct_budget;
pub mod group;
pub mod latency;
pub mod media_queue;
pub mod outbox;
pub mod prefetch;
pub mod reader;

pub use group::{Reader, ReaderGroup, SinkId, OFFLOAD_SINKS};

#[cfg(test)]
pub(crate) mod tests;
