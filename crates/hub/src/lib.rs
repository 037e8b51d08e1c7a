//! Sluice's hub: where a path's one source meets its many sinks, without sockets, tasks
//! or clock reads.
//!
//! Everything here is plain data and decisions, so it is tested on a virtual clock: time
//! comes in as an argument ([`std::time::Instant`] values the caller read), packets come
//! in as shared [`bytes::Bytes`], and what to send out comes back as return values.
//!
//! - [`packet`]: the relayed [`MediaPacket`], a [`Batch`] of them and why a stream ends
//!   ([`EndReason`]).
//! - [`presentation`]: the tracks a source announced and the SDP readers get.
//! - [`delivery`]: what each web delivery module can carry of a stream, and why not.
//! - [`gop`]: the packets since the last keyframe, handed to a new reader first.
//! - [`batcher`]: when a source's collected packets go out as one batch.
//! - [`sink`]: the two-method [`Sink`] a stream hands its batches and its end to.
//! - [`source`]: a source's handle on its path: its published stream, ended when dropped.
//! - [`registry`]: who publishes which path, look-ups, and lifecycle events that any
//!   module can watch with a path pattern.
//! - [`stream`]: a path's live [`Stream`]: one source in, its sinks out.
//! - [`on_demand`]: media opened per session (stored files), provided by one module and
//!   served by another.
//! - [`stats`]: per-stream figures (in, out, readers, loss) and the directory of live
//!   sessions ([`Sessions`]) the HTTP API lists and kicks.
//! - [`events`]: the server's event bus, a bounded ring of numbered [`ServerEvent`]s.
//! - [`hub`]: the [`Hub`] every module shares: the registry of streams, the hooks that
//!   attach modules' sinks to new streams, the on-demand providers and the session
//!   directories.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batcher;
pub mod delivery;
pub mod events;
pub mod gop;
pub mod hub;
pub mod on_demand;
pub mod packet;
pub mod presentation;
pub mod registry;
pub mod sink;
pub mod source;
pub mod stats;
pub mod stream;

pub use batcher::Batcher;
pub use delivery::DeliveryNote;
pub use events::{EventBus, Record, ServerEvent, SessionRef};
pub use hub::Hub;
pub use on_demand::{
    FrameFilter, OnDemand, OnDemandMedia, OpenError, PlayRequest, Playback, Position,
};
pub use packet::{Batch, EndReason, MediaPacket};
pub use presentation::{Presentation, PresentationError, Track};
pub use registry::{Busy, Claim, Event, Owner, PathClaim, Pattern, Registry, SourceId};
pub use sink::{Room, Sink};
pub use source::SourceHandle;
pub use stats::{
    ReaderCount, SessionInfo, SessionRole, Sessions, SinkStats, SourceFigures, SourceKind,
    SourceStats, StreamStats,
};
pub use stream::{Stream, StreamSinkId};
