//! The unit a stream relays: one RTP packet of a track as a shared buffer, and a batch of
//! them handed to every sink at once.

use std::time::Instant;

use bytes::Bytes;
use sluice_rtp::packet::RtpHeader;

/// One RTP packet of a track as relayed to sinks.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// Index of the track in the stream's presentation.
    pub track: usize,
    /// The whole RTP packet, shared by every sink.
    pub data: Bytes,
    /// Its parsed header.
    pub header: RtpHeader,
    /// When Sluice received it.
    pub received_at: Instant,
}

impl MediaPacket {
    /// RTP payload bytes (what Sender Reports count as octets).
    pub fn payload_len(&self) -> u32 {
        self.data.len().saturating_sub(self.header.payload_offset) as u32
    }
}

/// Packets handed to sinks together (usually one frame's, see [`crate::batcher`]), in
/// arrival order. Reusable: [`Batch::clear`] keeps the allocation, so a source that
/// refills one batch allocates nothing per frame once warm.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    packets: Vec<MediaPacket>,
}

impl Batch {
    /// An empty batch with room for `capacity` packets.
    pub fn with_capacity(capacity: usize) -> Batch {
        Batch {
            packets: Vec::with_capacity(capacity),
        }
    }

    /// The packets, oldest first.
    pub fn packets(&self) -> &[MediaPacket] {
        &self.packets
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Appends a packet.
    pub fn push(&mut self, packet: MediaPacket) {
        self.packets.push(packet);
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.packets.clear();
    }

    /// The packets as a vector.
    pub fn into_vec(self) -> Vec<MediaPacket> {
        self.packets
    }
}

impl From<Vec<MediaPacket>> for Batch {
    fn from(packets: Vec<MediaPacket>) -> Batch {
        Batch { packets }
    }
}

impl Extend<MediaPacket> for Batch {
    fn extend<I: IntoIterator<Item = MediaPacket>>(&mut self, iter: I) {
        self.packets.extend(iter);
    }
}

/// Why a stream ended, as told to its sinks and to registry watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The source left (TEARDOWN, closed connection, timeout).
    SourceGone,
    /// A new source replaced this one; readers must DESCRIBE again.
    Replaced,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndReason::SourceGone => "source gone",
            EndReason::Replaced => "replaced",
        })
    }
}
