//! What a new packager starts from: the stream's packets since the keyframe *before* the
//! last one (the last complete GOP and the one in progress), so that its first playlist
//! already lists a segment's worth of parts however recently the last keyframe came.
//! Shared packet buffers, bounded in packets and bytes.

use std::collections::VecDeque;

use sluice_codec::{starts_random_access, Codec};
use sluice_hub::MediaPacket;

/// Most packets kept.
pub(crate) const MAX_PACKETS: usize = 8192;
/// Most packet bytes kept.
pub(crate) const MAX_BYTES: usize = 16 << 20;
/// Packets kept for a stream without video (about two seconds of audio).
const AUDIO_PACKETS: usize = 100;

/// The last two GOPs of a stream (see the module docs).
#[derive(Debug)]
pub(crate) struct TwoGops {
    video: Option<(usize, Codec)>,
    packets: VecDeque<MediaPacket>,
    bytes: usize,
    /// Absolute index of `packets[0]`.
    base: u64,
    /// Absolute indices where the kept GOPs start (at most two).
    starts: VecDeque<u64>,
    /// Timestamp of the video access unit being received, whether it showed its random
    /// access slice, and the absolute index of its first packet.
    au: Option<(u32, bool, u64)>,
}

impl TwoGops {
    pub(crate) fn new(video: Option<(usize, Codec)>) -> TwoGops {
        TwoGops {
            video,
            packets: VecDeque::new(),
            bytes: 0,
            base: 0,
            starts: VecDeque::new(),
            au: None,
        }
    }

    /// Drops the packets before absolute index `to`.
    fn drop_until(&mut self, to: u64) {
        while self.base < to {
            match self.packets.pop_front() {
                Some(p) => self.bytes -= p.data.len(),
                None => {
                    self.base = to;
                    break;
                }
            }
            self.base += 1;
        }
    }

    /// Records a packet the stream relays.
    pub(crate) fn push(&mut self, packet: &MediaPacket) {
        let next = self.base + self.packets.len() as u64;
        match self.video {
            None => {
                if self.packets.len() >= AUDIO_PACKETS {
                    self.drop_until(self.base + 1);
                }
            }
            Some((track, codec)) if packet.track == track => {
                let ts = packet.header.timestamp;
                let (au_ts, mut random, mut start) = self.au.unwrap_or((ts, false, next));
                if au_ts != ts {
                    (random, start) = (false, next);
                    if self.starts.is_empty() {
                        // No keyframe yet: only the current access unit is kept, in case
                        // it starts with parameter sets before its IDR.
                        self.drop_until(next);
                    }
                }
                let payload = packet
                    .data
                    .get(packet.header.payload_offset..)
                    .unwrap_or(&[]);
                if !random && starts_random_access(codec, payload) {
                    random = true;
                    self.starts.push_back(start);
                    if self.starts.len() > 2 {
                        self.starts.pop_front();
                    }
                    if let Some(&first) = self.starts.front() {
                        self.drop_until(first);
                    }
                }
                self.au = Some((ts, random, start));
            }
            Some(_) if self.starts.is_empty() => return,
            Some(_) => {}
        }
        self.bytes += packet.data.len();
        self.packets.push_back(packet.clone());
        while self.packets.len() > MAX_PACKETS || self.bytes > MAX_BYTES {
            // Too much: keep only the last GOP, or nothing until the next keyframe.
            if self.starts.len() > 1 {
                self.starts.pop_front();
                if let Some(&first) = self.starts.front() {
                    self.drop_until(first);
                }
            } else {
                let end = self.base + self.packets.len() as u64;
                self.drop_until(end);
                self.starts.clear();
                self.au = None;
            }
        }
    }

    /// The kept packets, oldest first (from a keyframe; empty before the first).
    pub(crate) fn packets(&self) -> Vec<MediaPacket> {
        if self.video.is_some() && self.starts.is_empty() {
            return Vec::new();
        }
        self.packets.iter().cloned().collect()
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
    const IDR: &[u8] = &[0x65, 0x88];
    const P: &[u8] = &[0x41, 0x9a];
    const AAC: &[u8] = &[0, 0x10, 0x01, 0x00, 0xaa];

    #[test]
    fn keeps_the_last_two_gops_from_their_keyframes() {
        let mut g = TwoGops::new(Some((0, Codec::H264)));
        g.push(&pkt(1, 1, 0, AAC));
        g.push(&pkt(0, 1, 0, P));
        assert!(g.packets().is_empty());
        g.push(&pkt(0, 2, 3000, SPS));
        g.push(&pkt(0, 3, 3000, IDR));
        g.push(&pkt(1, 2, 1024, AAC));
        g.push(&pkt(0, 4, 6000, P));
        g.push(&pkt(0, 5, 9000, IDR));
        g.push(&pkt(0, 6, 12000, P));
        let seqs: Vec<(usize, u16)> = g
            .packets()
            .iter()
            .map(|p| (p.track, p.header.sequence))
            .collect();
        assert_eq!(seqs, [(0, 2), (0, 3), (1, 2), (0, 4), (0, 5), (0, 6)]);
        g.push(&pkt(0, 7, 15000, IDR));
        let seqs: Vec<u16> = g.packets().iter().map(|p| p.header.sequence).collect();
        assert_eq!(seqs, [5, 6, 7], "the oldest GOP goes");
    }

    #[test]
    fn audio_only_keeps_a_bounded_tail() {
        let mut g = TwoGops::new(None);
        for i in 0..300u16 {
            g.push(&pkt(0, i, u32::from(i) * 1024, AAC));
        }
        let p = g.packets();
        assert_eq!(p.len(), AUDIO_PACKETS);
        assert_eq!(p[0].header.sequence, 200);
    }
}
