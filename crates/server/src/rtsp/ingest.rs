//! The RTSP publisher source: takes a publisher's RTP/RTCP (from UDP or interleaved
//! frames), keeps receiver statistics, feeds the path's [`Stream`] and builds the
//! Receiver Reports Sluice sends back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::rtcp::{self, RtcpPacket};
use sluice_rtp::stats::ReceiverStats;
use tracing::debug;

use crate::rtsp::readers::reader::CNAME;
use sluice_hub::{MediaPacket, Stream};

/// A publisher feeding one stream.
#[derive(Debug)]
pub struct Ingest {
    stream: Arc<Stream>,
    stats: Vec<Mutex<ReceiverStats>>,
    ssrc: u32,
    bad_packets: AtomicU64,
    last_packet_ms: AtomicU64,
    epoch: Instant,
}

impl Ingest {
    /// A source for `stream`; `ssrc` is Sluice's own SSRC in the RRs it sends.
    pub fn new(stream: Arc<Stream>, ssrc: u32, epoch: Instant) -> Ingest {
        let stats = stream
            .presentation()
            .tracks()
            .iter()
            .map(|t| Mutex::new(ReceiverStats::new(t.clock_rate)))
            .collect();
        Ingest {
            stream,
            stats,
            ssrc,
            bad_packets: AtomicU64::new(0),
            last_packet_ms: AtomicU64::new(0),
            epoch,
        }
    }

    /// The stream this publisher feeds.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// When the last valid RTP or RTCP packet arrived (for the session timeout).
    pub fn last_packet(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_packet_ms.load(Ordering::Relaxed))
    }

    /// Packets that were not valid RTP/RTCP and were dropped.
    pub fn bad_packets(&self) -> u64 {
        self.bad_packets.load(Ordering::Relaxed)
    }

    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_packet_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// One RTP packet of `track` from the publisher.
    pub fn handle_rtp(&self, track: usize, data: Bytes, now: Instant) {
        let Some(stats) = self.stats.get(track) else {
            return;
        };
        let header = match parse_rtp(&data) {
            Ok(h) => h,
            Err(e) => {
                if self.bad_packets.fetch_add(1, Ordering::Relaxed) == 0 {
                    debug!(path = %self.stream.path(), track, error = %e, "dropping invalid RTP packet from publisher");
                }
                return;
            }
        };
        stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle_packet(&header, now);
        self.touch(now);
        self.stream.push_rtp(MediaPacket {
            track,
            data,
            header,
            received_at: now,
        });
    }

    /// One RTCP (compound) packet of `track` from the publisher: SRs set the stream's clock mapping.
    pub fn handle_rtcp(&self, track: usize, data: &[u8], now: Instant) {
        let Some(stats) = self.stats.get(track) else {
            return;
        };
        let Ok(packets) = rtcp::parse_compound(data) else {
            self.bad_packets.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.touch(now);
        for p in packets {
            if let RtcpPacket::SenderReport { info, .. } = p {
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle_sender_report(&info, now);
                self.stream.handle_sender_report(track, &info, now);
            }
        }
    }

    /// The Receiver Report for `track` (None before its first packet).
    pub fn receiver_report(&self, track: usize, now: Instant) -> Option<Bytes> {
        let block = self
            .stats
            .get(track)?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll_report_block(now)?;
        let mut buf = Vec::with_capacity(64);
        rtcp::write_receiver_report(&mut buf, self.ssrc, &[block], CNAME);
        Some(Bytes::from(buf))
    }

    /// (packets received, cumulative lost) summed over tracks, for the session's end log line.
    pub fn totals(&self) -> (u64, i64) {
        self.stats.iter().fold((0, 0), |(p, l), s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            (p + s.packets_received(), l + s.cumulative_lost())
        })
    }
}
