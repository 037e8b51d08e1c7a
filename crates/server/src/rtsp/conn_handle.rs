//! What other tasks hold of an RTSP connection ([`ConnHandle`]: its outbound queue and
//! a way to close it) and where it came from ([`Accepted`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::rtsp::readers::media_queue::MediaQueue;

/// How long a response may wait for room in the connection's queue before the
/// connection is closed (a client that sends requests but does not read the answers).
const RESPONSE_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// What other tasks hold of a connection: its outbound queues and a way to close it.
#[derive(Debug)]
pub struct ConnHandle {
    /// Connection number, for logs.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is RTSPS (TLS).
    pub tls: bool,
    /// Outbound queue: responses, and interleaved media (bounded; sinks push a frame at a
    /// time, written directly when the socket is free).
    pub media: Arc<MediaQueue>,
    close: Notify,
    closing: AtomicBool,
}

impl ConnHandle {
    /// The handle of the connection `from`, writing through `media`.
    pub fn new(from: Accepted, media: Arc<MediaQueue>) -> ConnHandle {
        ConnHandle {
            id: from.id,
            peer: from.peer,
            local: from.local,
            tls: from.tls,
            media,
            close: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// Queues encoded response bytes (never dropped; requests are answered in order).
    pub async fn send_bytes(&self, bytes: Bytes) {
        // Bounded: a client that sends requests but does not read the answers is not read
        // either (TCP backpressure); one that stalls too long is disconnected.
        if tokio::time::timeout(RESPONSE_QUEUE_WAIT, self.media.push_response(bytes))
            .await
            .is_err()
        {
            warn!(conn = self.id, peer = %self.peer, "client does not read its responses; closing");
            self.close("responses not read");
        }
    }

    /// Asks the connection to close (idempotent).
    pub fn close(&self, why: &str) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            debug!(conn = self.id, why, "closing connection");
        }
        self.close.notify_one();
    }

    /// Waits until a close is requested.
    pub async fn closed(&self) {
        self.close.notified().await
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Where an accepted connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Connection number.
    pub id: u64,
    /// Client address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Whether the stream is TLS.
    pub tls: bool,
}
