//! Receiver-side statistics for one RTP source (RFC 3550 Appendix A).

use std::time::Instant;

use crate::clock::SrMapping;
use crate::ntp::duration_to_short;
use crate::packet::RtpHeader;
use crate::rtcp::{ReportBlock, SenderInfo, CUMULATIVE_LOST_MAX, CUMULATIVE_LOST_MIN};

/// Consecutive packets needed before a source is considered valid (A.1).
const MIN_SEQUENTIAL: u16 = 2;
/// Largest forward jump still treated as loss rather than a restart (A.1).
const MAX_DROPOUT: u16 = 3000;
/// Largest backward jump still treated as reordering/duplication (A.1).
const MAX_MISORDER: u16 = 100;
/// Sequence number modulus.
const SEQ_MOD: u64 = 1 << 16;

/// What `update_seq` decided about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SeqOutcome {
    /// Counted in the statistics.
    Counted,
    /// Source still on probation; packet not (yet) counted.
    Probation,
    /// Large jump not (yet) accepted; packet ignored.
    Rejected,
}

/// Most recent Sender Report seen from the source.
#[derive(Clone, Copy, Debug)]
struct LastSr {
    ssrc: u32,
    middle32: u32,
    mapping: SrMapping,
}

/// Receiver-side statistics for one RTP source per RFC 3550 A.1 (sequence validation/extended seq with probation), A.3 (expected/lost/fraction), A.8 (interarrival jitter).
///
/// Deviations from the appendix code, all deliberate:
/// * When a new source passes probation, the probation packets are counted too
///   (the appendix drops the first `MIN_SEQUENTIAL - 1` packets from the counts).
/// * A packet from a different SSRC resets the statistics and starts tracking
///   the new source (e.g. a camera that restarted with a new SSRC).
/// * Jitter is kept as `f64` and reported rounded to the nearest unit.
#[derive(Clone, Debug)]
pub struct ReceiverStats {
    clock_rate: u32,
    ssrc: Option<u32>,
    max_seq: u16,
    /// Wrap count shifted left by 16 (the appendix's `cycles`), widened to u64.
    cycles: u64,
    /// Extended first sequence number.
    base_seq: u64,
    bad_seq: u64,
    probation: u16,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    jitter: f64,
    /// Arrival time and RTP timestamp of the previous packet, for A.8.
    last_arrival: Option<(Instant, u32)>,
    last_sr: Option<LastSr>,
}

impl ReceiverStats {
    /// Creates empty statistics for a source whose RTP clock runs at `clock_rate` Hz.
    ///
    /// A clock rate of 0 disables the jitter calculation.
    pub fn new(clock_rate: u32) -> Self {
        ReceiverStats {
            clock_rate,
            ssrc: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: SEQ_MOD + 1,
            probation: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_arrival: None,
            last_sr: None,
        }
    }

    /// Records an arrived packet. `arrival` is the local receive time.
    pub fn handle_packet(&mut self, header: &RtpHeader, arrival: Instant) {
        if self.ssrc != Some(header.ssrc) {
            self.start_source(header.ssrc, header.sequence);
        }
        if self.update_seq(header.sequence) != SeqOutcome::Rejected {
            self.update_jitter(header.timestamp, arrival);
        }
    }

    /// Records an SR from the source (for LSR/DLSR in the next report).
    ///
    /// Reports from an SSRC other than the tracked one are ignored; a report
    /// arriving before any RTP packet is kept and used once that SSRC's packets arrive.
    pub fn handle_sender_report(&mut self, info: &SenderInfo, arrival: Instant) {
        if self.ssrc.is_some_and(|s| s != info.ssrc) {
            return;
        }
        self.last_sr = Some(LastSr {
            ssrc: info.ssrc,
            middle32: info.ntp.middle32(),
            mapping: SrMapping::from_sender_report(info, arrival),
        });
    }

    /// Builds the report block for the next RR/SR and resets the interval counters (fraction lost is per interval). None before any packet.
    ///
    /// Also `None` while the source is still on probation (fewer than two
    /// consecutive packets seen).
    pub fn poll_report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.validated_ssrc()?;
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i128::from(expected_interval) - i128::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // All packets lost gives 256/256, which does not fit: saturate.
            ((lost_interval << 8) / i128::from(expected_interval)).min(255) as u8
        };
        let cumulative_lost = self.cumulative_lost().clamp(
            i64::from(CUMULATIVE_LOST_MIN),
            i64::from(CUMULATIVE_LOST_MAX),
        ) as i32;
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some(sr) if sr.ssrc == ssrc => (
                sr.middle32,
                duration_to_short(now.saturating_duration_since(sr.mapping.received_at)),
            ),
            _ => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: self.extended_max() as u32,
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        })
    }

    /// SSRC of the tracked source, once any packet has arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Packets counted since the source was validated (duplicates included, per A.3).
    pub fn packets_received(&self) -> u64 {
        self.received
    }

    /// Expected minus received packets; negative when duplicates outnumber losses. 0 before validation.
    pub fn cumulative_lost(&self) -> i64 {
        if self.validated_ssrc().is_none() {
            return 0;
        }
        i64::try_from(self.expected()).unwrap_or(i64::MAX)
            - i64::try_from(self.received).unwrap_or(i64::MAX)
    }

    /// Interarrival jitter estimate in timestamp units, rounded.
    pub fn jitter(&self) -> u32 {
        // Float-to-int `as` saturates, and jitter is never negative.
        self.jitter.round() as u32
    }

    /// Extended highest sequence number received (wrap count in the high 16 bits), once validated.
    pub fn extended_highest_seq(&self) -> Option<u32> {
        self.validated_ssrc()?;
        Some(self.extended_max() as u32)
    }

    /// NTP↔RTP mapping from the tracked source's latest Sender Report, if any.
    pub fn sr_mapping(&self) -> Option<SrMapping> {
        match (self.last_sr, self.ssrc) {
            (Some(sr), Some(ssrc)) if sr.ssrc == ssrc => Some(sr.mapping),
            _ => None,
        }
    }

    fn validated_ssrc(&self) -> Option<u32> {
        self.ssrc.filter(|_| self.probation == 0)
    }

    fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        (self.extended_max() + 1).saturating_sub(self.base_seq)
    }

    /// Starts tracking a new source (A.1: `init_seq`, then probation).
    fn start_source(&mut self, ssrc: u32, seq: u16) {
        let last_sr = self.last_sr.filter(|sr| sr.ssrc == ssrc);
        *self = ReceiverStats {
            ssrc: Some(ssrc),
            last_sr,
            ..ReceiverStats::new(self.clock_rate)
        };
        self.init_seq(seq);
        self.max_seq = seq.wrapping_sub(1);
        self.probation = MIN_SEQUENTIAL;
    }

    /// A.1 `init_seq`.
    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u64::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// A.1 `update_seq`.
    fn update_seq(&mut self, seq: u16) -> SeqOutcome {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    // Count the probation packets as well (see type docs). They
                    // were consecutive, so the first had seq - (MIN_SEQUENTIAL - 1);
                    // if that lies before a wrap, start one cycle up so the
                    // extended base stays below the extended maximum.
                    let back = u64::from(MIN_SEQUENTIAL - 1);
                    if u64::from(seq) < back {
                        self.cycles = SEQ_MOD;
                    }
                    self.base_seq = self.extended_max() - back;
                    self.received = u64::from(MIN_SEQUENTIAL);
                    return SeqOutcome::Counted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqOutcome::Probation;
        }
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
        } else if u64::from(udelta) <= SEQ_MOD - u64::from(MAX_MISORDER) {
            // The sequence number made a very large jump.
            if u64::from(seq) == self.bad_seq {
                // Two sequential packets: assume the other side restarted without
                // telling us, so resync (i.e. pretend this was the first packet).
                self.init_seq(seq);
                self.last_arrival = None;
            } else {
                self.bad_seq = (u64::from(seq) + 1) & (SEQ_MOD - 1);
                return SeqOutcome::Rejected;
            }
        }
        // else: duplicate or reordered packet.
        self.received += 1;
        SeqOutcome::Counted
    }

    /// A.8 interarrival jitter: J += (|D(i-1,i)| - J) / 16.
    fn update_jitter(&mut self, timestamp: u32, arrival: Instant) {
        if self.clock_rate == 0 {
            return;
        }
        if let Some((prev_arrival, prev_timestamp)) = self.last_arrival {
            let arrival_delta = match arrival.checked_duration_since(prev_arrival) {
                Some(d) => d.as_secs_f64(),
                None => -prev_arrival.duration_since(arrival).as_secs_f64(),
            };
            // Signed difference of wrapping RTP timestamps.
            let ts_delta = f64::from(timestamp.wrapping_sub(prev_timestamp) as i32);
            let d = arrival_delta * f64::from(self.clock_rate) - ts_delta;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last_arrival = Some((arrival, timestamp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ntp::NtpTime;
    use std::time::Duration;

    const RATE: u32 = 90_000;
    const SSRC: u32 = 0x1234_5678;

    fn hdr(seq: u16, ts: u32) -> RtpHeader {
        RtpHeader {
            payload_type: 96,
            marker: false,
            sequence: seq,
            timestamp: ts,
            ssrc: SSRC,
            payload_offset: 12,
        }
    }

    /// Feeds sequence numbers with timestamps 1800 ticks (20 ms) apart, arriving exactly on time.
    fn feed(stats: &mut ReceiverStats, base: Instant, seqs: &[u16]) {
        for &seq in seqs {
            let ts = u32::from(seq).wrapping_mul(1800);
            let at = base + Duration::from_millis(20 * u64::from(seq));
            stats.handle_packet(&hdr(seq, ts), at);
        }
    }

    #[test]
    fn nothing_before_packets() {
        let mut s = ReceiverStats::new(RATE);
        assert_eq!(s.poll_report_block(Instant::now()), None);
        assert_eq!(s.ssrc(), None);
        assert_eq!(s.extended_highest_seq(), None);
        assert_eq!(s.packets_received(), 0);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn probation_then_valid() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[10]);
        assert_eq!(s.ssrc(), Some(SSRC));
        assert_eq!(s.extended_highest_seq(), None);
        assert_eq!(s.poll_report_block(base), None);
        feed(&mut s, base, &[11]);
        assert_eq!(s.packets_received(), 2);
        assert_eq!(s.extended_highest_seq(), Some(11));
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn probation_restarts_on_gap() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[10, 12]); // not consecutive: still on probation
        assert_eq!(s.extended_highest_seq(), None);
        feed(&mut s, base, &[13]);
        assert_eq!(s.extended_highest_seq(), Some(13));
        assert_eq!(s.packets_received(), 2); // 12 and 13
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn in_order_stream() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        let seqs: Vec<u16> = (100..110).collect();
        feed(&mut s, base, &seqs);
        assert_eq!(s.packets_received(), 10);
        assert_eq!(s.extended_highest_seq(), Some(109));
        assert_eq!(s.cumulative_lost(), 0);
        let b = s.poll_report_block(base).unwrap();
        assert_eq!(
            b,
            ReportBlock {
                ssrc: SSRC,
                fraction_lost: 0,
                cumulative_lost: 0,
                extended_highest_seq: 109,
                jitter: 0,
                last_sr: 0,
                delay_since_last_sr: 0,
            }
        );
    }

    #[test]
    fn gap_of_three() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        // 100..=104, then 105, 106, 107 lost, then 108..=111.
        feed(&mut s, base, &[100, 101, 102, 103, 104, 108, 109, 110, 111]);
        assert_eq!(s.packets_received(), 9);
        assert_eq!(s.cumulative_lost(), 3);
        let b = s.poll_report_block(base).unwrap();
        // expected = 111 - 100 + 1 = 12, lost 3: fraction = (3 << 8) / 12 = 64.
        assert_eq!(b.fraction_lost, 64);
        assert_eq!(b.cumulative_lost, 3);
        assert_eq!(b.extended_highest_seq, 111);
        // Next interval without loss: fraction back to 0, cumulative unchanged.
        feed(&mut s, base, &[112, 113, 114, 115]);
        let b = s.poll_report_block(base).unwrap();
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 3);
        // Interval with everything lost except one: 116..=119 lost, 120 received.
        feed(&mut s, base, &[120]);
        let b = s.poll_report_block(base).unwrap();
        // expected_interval 5, received 1: (4 << 8) / 5 = 204.
        assert_eq!(b.fraction_lost, 204);
        assert_eq!(b.cumulative_lost, 7);
    }

    #[test]
    fn reordering() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[100, 101, 102, 104]);
        assert_eq!(s.cumulative_lost(), 1);
        assert_eq!(s.extended_highest_seq(), Some(104));
        feed(&mut s, base, &[103, 105]);
        assert_eq!(s.packets_received(), 6);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.extended_highest_seq(), Some(105));
        assert_eq!(s.poll_report_block(base).unwrap().fraction_lost, 0);
    }

    #[test]
    fn duplicate() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[100, 101, 102, 102, 103]);
        // expected 4, received 5.
        assert_eq!(s.packets_received(), 5);
        assert_eq!(s.cumulative_lost(), -1);
        let b = s.poll_report_block(base).unwrap();
        assert_eq!(b.cumulative_lost, -1);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.extended_highest_seq, 103);
    }

    #[test]
    fn sequence_wrap() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[65533, 65534, 65535, 0, 1, 2]);
        assert_eq!(s.packets_received(), 6);
        assert_eq!(s.extended_highest_seq(), Some(65536 + 2));
        assert_eq!(s.cumulative_lost(), 0);
        // Reordered packet from before the wrap does not go back a cycle.
        feed(&mut s, base, &[65535]);
        assert_eq!(s.extended_highest_seq(), Some(65536 + 2));
    }

    #[test]
    fn wrap_during_probation() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[65535, 0, 1]);
        assert_eq!(s.extended_highest_seq(), Some(65536 + 1));
        assert_eq!(s.packets_received(), 3);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn large_jump_then_restart() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[100, 101, 102]);
        feed(&mut s, base, &[20_000]); // rejected, remembered as bad_seq - 1
        assert_eq!(s.packets_received(), 3);
        assert_eq!(s.extended_highest_seq(), Some(102));
        feed(&mut s, base, &[20_001]); // second in sequence: resync
        assert_eq!(s.packets_received(), 1);
        assert_eq!(s.extended_highest_seq(), Some(20_001));
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn ssrc_change_resets() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        feed(&mut s, base, &[100, 101, 102]);
        let other = RtpHeader {
            ssrc: 99,
            ..hdr(5, 0)
        };
        s.handle_packet(&other, base);
        assert_eq!(s.ssrc(), Some(99));
        assert_eq!(s.packets_received(), 0);
        assert_eq!(s.extended_highest_seq(), None);
    }

    #[test]
    fn jitter_constant_transit_is_zero() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        // Constant 37 ms network delay.
        for i in 0..50u32 {
            let at = base + Duration::from_millis(37 + 20 * u64::from(i));
            s.handle_packet(&hdr(i as u16, 5000 + i * 1800), at);
        }
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn jitter_alternating_delay() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        // Odd packets arrive 10 ms late, so |D| = 10 ms = 900 ticks for every pair.
        let at = |i: u32| base + Duration::from_millis(20 * u64::from(i) + 10 * u64::from(i % 2));
        s.handle_packet(&hdr(0, 0), at(0));
        assert_eq!(s.jitter(), 0);
        s.handle_packet(&hdr(1, 1800), at(1));
        // J1 = 900 / 16 = 56.25
        assert_eq!(s.jitter(), 56);
        s.handle_packet(&hdr(2, 3600), at(2));
        // J2 = 56.25 + (900 - 56.25) / 16 = 108.984375
        assert_eq!(s.jitter(), 109);
        for i in 3..400u32 {
            s.handle_packet(&hdr(i as u16, i * 1800), at(i));
        }
        // Converges to |D| = 900.
        assert_eq!(s.jitter(), 900);
        assert_eq!(s.poll_report_block(at(400)).unwrap().jitter, 900);
    }

    #[test]
    fn jitter_across_timestamp_wrap() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        let start = u32::MAX - 5000;
        for i in 0..20u32 {
            let at = base + Duration::from_millis(20 * u64::from(i));
            s.handle_packet(&hdr(i as u16, start.wrapping_add(i * 1800)), at);
        }
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn lsr_and_dlsr() {
        let base = Instant::now();
        let mut s = ReceiverStats::new(RATE);
        let ntp = NtpTime(0x0000_1234_5678_0000 | (0xabcd << 48));
        let info = SenderInfo {
            ssrc: SSRC,
            ntp,
            rtp_timestamp: 1,
            packet_count: 2,
            octet_count: 3,
        };
        // SR before any RTP packet is kept.
        s.handle_sender_report(&info, base);
        feed(&mut s, base, &[1, 2, 3]);
        let b = s
            .poll_report_block(base + Duration::from_millis(1500))
            .unwrap();
        assert_eq!(b.last_sr, 0x1234_5678);
        assert_eq!(b.delay_since_last_sr, 0x1_8000);
        assert_eq!(s.sr_mapping().unwrap().rtp_timestamp, 1);
        // SR from a different SSRC is ignored.
        let foreign = SenderInfo {
            ssrc: 7,
            ntp: NtpTime(0),
            ..info
        };
        s.handle_sender_report(&foreign, base);
        assert_eq!(s.poll_report_block(base).unwrap().last_sr, 0x1234_5678);
    }
}
