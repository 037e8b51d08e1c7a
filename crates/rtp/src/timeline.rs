//! Continuous outgoing RTP numbering for one track across source changes.
//!
//! A relay's readers must not see a discontinuity when the upstream reconnects (a camera
//! reboot, a pull source's reconnect) or restarts its stream with a new SSRC: decoders and
//! jitter buffers treat a jump in sequence number, timestamp or SSRC as loss or a new
//! stream. [`Timeline`] maps each incoming header to an outgoing one: the first source
//! passes through unchanged; each later segment is shifted so that its first packet
//! follows the last one sent, with the timestamp advanced by the wall time in between.

use std::time::Instant;

use crate::packet::RtpHeader;

/// Outgoing numbering of one track.
#[derive(Debug, Clone)]
pub struct Timeline {
    clock_rate: u32,
    out_ssrc: Option<u32>,
    in_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// Last packet sent: (sequence, timestamp, arrival).
    last_out: Option<(u16, u32, Instant)>,
    new_segment: bool,
    segments: u64,
}

/// An outgoing header's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Outgoing sequence number.
    pub sequence: u16,
    /// Outgoing timestamp.
    pub timestamp: u32,
    /// Outgoing SSRC (the first source's).
    pub ssrc: u32,
}

impl Timeline {
    /// A timeline for a track with this RTP clock rate.
    pub fn new(clock_rate: u32) -> Timeline {
        Timeline {
            clock_rate,
            out_ssrc: None,
            in_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            last_out: None,
            new_segment: false,
            segments: 0,
        }
    }

    /// The source changed (reconnected, or replaced by one with the same media): the
    /// next packet starts a new segment. A change of SSRC is detected by itself.
    pub fn handle_source_change(&mut self) {
        self.new_segment = true;
    }

    /// Segments started after the first (source changes seen).
    pub fn source_changes(&self) -> u64 {
        self.segments
    }

    /// Maps an incoming packet's header, arrived at `now`, to its outgoing numbering.
    pub fn map(&mut self, header: &RtpHeader, now: Instant) -> Mapped {
        let ssrc_changed = self.in_ssrc.is_some_and(|s| s != header.ssrc);
        if self.in_ssrc.is_none() || self.new_segment || ssrc_changed {
            match self.last_out {
                Some((seq, ts, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)).round() as u64;
                    // At least one tick so timestamps strictly advance across the join.
                    let ticks = (ticks.max(1) & 0xffff_ffff) as u32;
                    self.seq_offset = seq.wrapping_add(1).wrapping_sub(header.sequence);
                    self.ts_offset = ts.wrapping_add(ticks).wrapping_sub(header.timestamp);
                    self.segments += 1;
                }
                None => {
                    self.seq_offset = 0;
                    self.ts_offset = 0;
                }
            }
            self.in_ssrc = Some(header.ssrc);
            self.new_segment = false;
        }
        let ssrc = *self.out_ssrc.get_or_insert(header.ssrc);
        let mapped = Mapped {
            sequence: header.sequence.wrapping_add(self.seq_offset),
            timestamp: header.timestamp.wrapping_add(self.ts_offset),
            ssrc,
        };
        let newer = self
            .last_out
            .is_none_or(|(s, _, _)| (mapped.sequence.wrapping_sub(s) as i16) > 0);
        if newer {
            self.last_out = Some((mapped.sequence, mapped.timestamp, now));
        }
        mapped
    }

    /// Maps an incoming RTP timestamp of the current segment (e.g. from a Sender Report).
    pub fn map_timestamp(&self, timestamp: u32) -> u32 {
        timestamp.wrapping_add(self.ts_offset)
    }

    /// Whether mapping changes anything for the current segment.
    pub fn is_identity(&self) -> bool {
        self.seq_offset == 0 && self.ts_offset == 0 && self.in_ssrc == self.out_ssrc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(seq: u16, ts: u32, ssrc: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 96,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc,
            payload_offset: 12,
        }
    }

    #[test]
    fn first_source_passes_through() {
        let mut t = Timeline::new(90_000);
        let now = Instant::now();
        for i in 0..10u16 {
            let m = t.map(
                &h(65530u16.wrapping_add(i), 1000 + u32::from(i) * 3000, 7),
                now,
            );
            assert_eq!(m.sequence, 65530u16.wrapping_add(i));
            assert_eq!(m.timestamp, 1000 + u32::from(i) * 3000);
            assert_eq!(m.ssrc, 7);
        }
        assert!(t.is_identity());
    }

    #[test]
    fn reconnect_continues_numbering_and_advances_time_by_the_outage() {
        let mut t = Timeline::new(90_000);
        let t0 = Instant::now();
        t.map(&h(100, 5000, 1), t0);
        let last = t.map(&h(101, 8000, 1), t0);
        t.handle_source_change();
        let after = t0 + Duration::from_secs(2);
        let m = t.map(&h(40_000, 123, 2), after);
        assert_eq!(m.sequence, last.sequence.wrapping_add(1));
        assert_eq!(m.timestamp, last.timestamp.wrapping_add(180_000));
        assert_eq!(m.ssrc, 1, "SSRC stays the first source's");
        let n = t.map(&h(40_001, 3123, 2), after);
        assert_eq!(n.sequence, m.sequence.wrapping_add(1));
        assert_eq!(n.timestamp, m.timestamp.wrapping_add(3000));
        assert_eq!(t.source_changes(), 1);
        assert_eq!(t.map_timestamp(3123), n.timestamp);
    }

    #[test]
    fn ssrc_change_alone_starts_a_segment() {
        let mut t = Timeline::new(8000);
        let t0 = Instant::now();
        let a = t.map(&h(1, 0, 1), t0);
        let b = t.map(&h(9, 999_999, 3), t0);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
        assert_eq!(
            b.timestamp,
            a.timestamp.wrapping_add(1),
            "at least one tick later"
        );
    }

    #[test]
    fn reordered_packets_keep_their_relative_numbering() {
        let mut t = Timeline::new(90_000);
        let now = Instant::now();
        t.map(&h(10, 0, 1), now);
        t.map(&h(12, 6000, 1), now);
        let late = t.map(&h(11, 3000, 1), now);
        assert_eq!(late.sequence, 11);
        t.handle_source_change();
        // The join follows the newest packet (12), not the late one.
        assert_eq!(t.map(&h(500, 0, 2), now).sequence, 13);
    }
}
