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
use sluice_hub::{MediaPacket, SourceFigures, SourceStats, Stream};

/// A publisher feeding one stream.
#[derive(Debug)]
pub struct Ingest {
    stream: Arc<Stream>,
    stats: Vec<Mutex<ReceiverStats>>,
    /// Each track's RTP clock rate (jitter is counted in its units).
    clock_rates: Vec<u32>,
    /// RTP payload bytes received (for the session's figures).
    bytes: AtomicU64,
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
        let clock_rates = stream
            .presentation()
            .tracks()
            .iter()
            .map(|t| t.clock_rate)
            .collect();
        Ingest {
            stream,
            stats,
            clock_rates,
            bytes: AtomicU64::new(0),
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
        let packet = MediaPacket {
            track,
            data,
            header,
            received_at: now,
        };
        self.bytes
            .fetch_add(u64::from(packet.payload_len()), Ordering::Relaxed);
        self.stream.push_rtp(packet);
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

    /// RTP payload bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Registers this source's loss and jitter on its stream (see
    /// [`Stream::set_source_stats`]), for the API and metrics.
    pub fn report_on_stream(self: &Arc<Self>) {
        let me: Arc<dyn SourceFigures> = self.clone();
        self.stream.set_source_stats(Arc::downgrade(&me));
    }

    /// (packets received, cumulative lost) summed over tracks, for the session's end log line.
    pub fn totals(&self) -> (u64, i64) {
        self.stats.iter().fold((0, 0), |(p, l), s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            (p + s.packets_received(), l + s.cumulative_lost())
        })
    }
}

impl SourceFigures for Ingest {
    /// Loss summed over tracks (never below zero), the largest jitter in seconds.
    fn source_stats(&self) -> SourceStats {
        let mut out = SourceStats::default();
        for (s, rate) in self.stats.iter().zip(&self.clock_rates) {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            out.packets_lost += s.cumulative_lost().max(0) as u64;
            if *rate > 0 {
                out.jitter_seconds = out
                    .jitter_seconds
                    .max(f64::from(s.jitter()) / f64::from(*rate));
            }
        }
        out
    }
}
