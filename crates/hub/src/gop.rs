//! The GOP cache: the packets of a live stream since its last video keyframe, so a new
//! reader starts decoding at once instead of waiting up to a GOP for the next keyframe.
//!
//! The cache holds shared buffers (a refcount per packet, never a copy). A new reader
//! gets the cached packets first — with their original sequence numbers and timestamps,
//! so its decoder sees one continuous stream that runs into the live edge — then the
//! live packets. Audio packets that arrived after the keyframe are kept too. The cache is
//! bounded in packets and bytes; a GOP larger than that is not cached (readers then wait
//! for the next keyframe, as without a cache).

use std::collections::VecDeque;

use sluice_codec::{starts_random_access, Codec};
use sluice_rtp::packet::RtpHeader;

use crate::packet::MediaPacket;

/// Where a new subscriber's numbering starts on a track (for RTP-Info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackStart {
    /// Sequence number of the subscriber's first packet on the track.
    pub seq: u16,
    /// RTP timestamp of that packet (or of the last one sent, when none is cached).
    pub rtptime: u32,
}

/// Most packets kept.
pub const MAX_PACKETS: usize = 4096;
/// Most payload bytes kept.
pub const MAX_BYTES: usize = 8 << 20;

/// Packets since the last keyframe of the stream's first video track.
#[derive(Debug)]
pub struct GopCache {
    video: Option<(usize, Codec)>,
    packets: VecDeque<MediaPacket>,
    bytes: usize,
    /// A keyframe has started the current cache and it is within bounds.
    active: bool,
    /// Timestamp of the video access unit being received.
    au_timestamp: Option<u32>,
    /// Whether that access unit has shown its random-access slice.
    au_random_access: bool,
    /// Index in `packets` of that access unit's first packet.
    au_start: usize,
}

impl GopCache {
    /// A cache keyed on `video` (track index and codec); None disables caching (no video
    /// track, or a codec whose keyframes Sluice cannot recognize).
    pub fn new(video: Option<(usize, Codec)>) -> GopCache {
        GopCache {
            video,
            packets: VecDeque::new(),
            bytes: 0,
            active: false,
            au_timestamp: None,
            au_random_access: false,
            au_start: 0,
        }
    }

    /// Records a packet the stream is relaying.
    pub fn handle_packet(&mut self, packet: &MediaPacket) {
        let Some((track, codec)) = self.video else {
            return;
        };
        if packet.track == track {
            let ts = packet.header.timestamp;
            if self.au_timestamp != Some(ts) {
                // A new access unit.
                self.au_timestamp = Some(ts);
                self.au_random_access = false;
                if !self.active {
                    // Not caching: only the current access unit's packets are held, in
                    // case it turns out to start with parameter sets before its IDR.
                    self.packets.clear();
                    self.bytes = 0;
                }
                self.au_start = self.packets.len();
            }
            let payload = packet
                .data
                .get(packet.header.payload_offset..)
                .unwrap_or(&[]);
            // The first IDR/IRAP packet of an access unit starts a new GOP that keeps the
            // access unit's earlier packets (parameter sets). Parameter sets alone never
            // start one: encoders repeat them mid-GOP.
            if !self.au_random_access && starts_random_access(codec, payload) {
                self.au_random_access = true;
                let dropped: usize = self
                    .packets
                    .drain(..self.au_start)
                    .map(|p| p.data.len())
                    .sum();
                self.bytes -= dropped;
                self.au_start = 0;
                self.active = true;
            }
        } else if !self.active {
            return;
        }
        if self.packets.len() >= MAX_PACKETS || self.bytes + packet.data.len() > MAX_BYTES {
            // Too big to cache: drop it until the next keyframe.
            self.packets.clear();
            self.bytes = 0;
            self.au_start = 0;
            self.active = false;
            return;
        }
        self.bytes += packet.data.len();
        self.packets.push_back(packet.clone());
    }

    /// The cached packets, oldest first (empty when no complete GOP start is cached).
    pub fn packets(&self) -> impl Iterator<Item = &MediaPacket> {
        let n = if self.active { self.packets.len() } else { 0 };
        self.packets.iter().take(n)
    }

    /// Packets cached.
    pub fn len(&self) -> usize {
        if self.active {
            self.packets.len()
        } else {
            0
        }
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where a subscriber handed this cache starts on each of `tracks` tracks, given the
    /// last header the stream delivered on each (`last`): at the track's first cached
    /// packet, else right after its last delivered one (the next packet it will get), else
    /// unknown. Computed under the same lock as the hand-over, so RTP-Info names exactly
    /// the subscriber's first packet.
    pub fn starts(
        &self,
        tracks: usize,
        last: impl Fn(usize) -> Option<RtpHeader>,
    ) -> Vec<Option<TrackStart>> {
        let mut starts: Vec<Option<TrackStart>> = (0..tracks)
            .map(|t| {
                last(t).map(|h| TrackStart {
                    seq: h.sequence.wrapping_add(1),
                    rtptime: h.timestamp,
                })
            })
            .collect();
        let mut seen = vec![false; tracks];
        for p in self.packets() {
            if let (Some(slot), Some(first)) = (starts.get_mut(p.track), seen.get_mut(p.track)) {
                if !*first {
                    *first = true;
                    *slot = Some(TrackStart {
                        seq: p.header.sequence,
                        rtptime: p.header.timestamp,
                    });
                }
            }
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_rtp::packet::parse_rtp;
    use std::time::Instant;

    fn pkt(track: usize, seq: u16, ts: u32, payload: &[u8]) -> MediaPacket {
        let mut d = vec![0x80, 96];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(payload);
        let data = Bytes::from(d);
        MediaPacket {
            track,
            header: parse_rtp(&data).unwrap(),
            data,
            received_at: Instant::now(),
        }
    }

    const SPS: &[u8] = &[0x67, 0x42, 0, 0x1e];
    const PPS: &[u8] = &[0x68, 0xce];
    const IDR: &[u8] = &[0x65, 0x88];
    const P: &[u8] = &[0x41, 0x9a];
    const AAC: &[u8] = &[0, 0x10, 0x01, 0x00, 0xaa];

    #[test]
    fn keeps_packets_from_the_last_keyframe_with_audio() {
        let mut g = GopCache::new(Some((0, Codec::H264)));
        g.handle_packet(&pkt(1, 1, 0, AAC)); // before any keyframe: not kept
        g.handle_packet(&pkt(0, 10, 0, P));
        assert!(g.is_empty());
        g.handle_packet(&pkt(0, 11, 3000, SPS));
        g.handle_packet(&pkt(0, 12, 3000, PPS));
        g.handle_packet(&pkt(0, 13, 3000, IDR));
        g.handle_packet(&pkt(1, 2, 1024, AAC));
        g.handle_packet(&pkt(0, 14, 6000, P));
        let seqs: Vec<u16> = g.packets().map(|p| p.header.sequence).collect();
        assert_eq!(
            seqs,
            vec![11, 12, 13, 2, 14],
            "SPS starts the GOP; PPS/IDR of the same AU continue it"
        );
        // The next keyframe replaces the cache.
        g.handle_packet(&pkt(0, 15, 9000, IDR));
        let seqs: Vec<u16> = g.packets().map(|p| p.header.sequence).collect();
        assert_eq!(seqs, vec![15]);
    }

    #[test]
    fn parameter_sets_repeated_mid_gop_do_not_restart_it() {
        let mut g = GopCache::new(Some((0, Codec::H264)));
        g.handle_packet(&pkt(0, 1, 0, IDR));
        g.handle_packet(&pkt(0, 2, 3000, P));
        g.handle_packet(&pkt(0, 3, 6000, SPS));
        g.handle_packet(&pkt(0, 4, 6000, PPS));
        g.handle_packet(&pkt(0, 5, 6000, P));
        let seqs: Vec<u16> = g.packets().map(|p| p.header.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn oversized_gops_are_not_cached() {
        let mut g = GopCache::new(Some((0, Codec::H264)));
        g.handle_packet(&pkt(0, 0, 0, IDR));
        for i in 1..=MAX_PACKETS as u16 {
            g.handle_packet(&pkt(0, i, u32::from(i) * 3000, P));
        }
        assert!(g.is_empty());
        g.handle_packet(&pkt(0, 9, 1, P));
        assert!(g.is_empty(), "stays off until the next keyframe");
        g.handle_packet(&pkt(0, 10, 2, IDR));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn starts_name_the_first_cached_packet_or_the_one_after_the_last_sent() {
        let mut g = GopCache::new(Some((0, Codec::H264)));
        g.handle_packet(&pkt(0, 10, 3000, IDR));
        g.handle_packet(&pkt(0, 11, 6000, P));
        g.handle_packet(&pkt(1, 70, 1024, AAC));
        g.handle_packet(&pkt(7, 1, 0, AAC)); // a track the stream does not have
        let last = |t: usize| {
            let h = pkt(t, [11, 70, 5][t.min(2)], 9999, P).header;
            Some(h)
        };
        let at = |seq, rtptime| Some(TrackStart { seq, rtptime });
        assert_eq!(
            g.starts(3, last),
            vec![at(10, 3000), at(70, 1024), at(6, 9999)]
        );
        assert_eq!(GopCache::new(None).starts(2, |_| None), vec![None, None]);
        // Numbering wraps.
        let wrap = |_| Some(pkt(0, u16::MAX, 1, P).header);
        assert_eq!(GopCache::new(None).starts(1, wrap), vec![at(0, 1)]);
    }

    #[test]
    fn no_video_no_cache() {
        let mut g = GopCache::new(None);
        g.handle_packet(&pkt(0, 1, 0, IDR));
        assert!(g.is_empty());
    }
}
