//! Invariant checks shared by the `rtp_rtcp` fuzz target (`/fuzz`) and the
//! corpus test. Each function panics when an invariant is violated and
//! otherwise accepts any input.

use std::time::{Duration, Instant};

use crate::packet::{looks_like_rtcp, parse_rtp, rewrite_header, RtpHeader};
use crate::rtcp::{
    parse_compound, write_bye, write_receiver_report, write_sender_report, RtcpPacket,
    CUMULATIVE_LOST_MAX, CUMULATIVE_LOST_MIN,
};
use crate::stats::ReceiverStats;
use crate::timeline::{Mapped, Timeline};

/// Clock rates the target picks from (0 disables jitter).
const CLOCK_RATES: [u32; 4] = [90_000, 48_000, 8_000, 0];

/// RTP/RTCP target. `data[0]` picks the clock rate; then records follow,
/// each `op` (1 byte), a big-endian u16 length and that many bytes:
///
/// * `op & 3 == 0 | 1`: an RTP packet: parsed; valid ones feed
///   [`ReceiverStats`] and [`Timeline`]; header rewriting is checked.
/// * `op & 3 == 2`: an RTCP compound: parsed; SR/RR blocks are written back
///   and re-parsed; SRs feed the statistics.
/// * `op & 3 == 3`: a source change on the timeline and a report block poll.
///
/// `op >> 2` is the time elapsed before the record, in milliseconds × 16.
pub fn rtp_rtcp(data: &[u8]) {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let clock_rate = CLOCK_RATES[usize::from(sel) % CLOCK_RATES.len()];
    let mut stats = ReceiverStats::new(clock_rate);
    let mut timeline = Timeline::new(clock_rate);
    let start = Instant::now();
    let mut now = start;
    // Last incoming and mapped header of the current timeline segment.
    let mut prev: Option<(RtpHeader, Mapped)> = None;
    // Newest mapped (sequence, timestamp), as the timeline tracks it.
    let mut newest: Option<(u16, u32)> = None;
    let mut out_ssrc: Option<u32> = None;
    while let Some((&op, tail)) = rest.split_first() {
        let Some((len, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(op >> 2) * 16);
        match op & 3 {
            0 | 1 => {
                let _ = looks_like_rtcp(payload);
                let Ok(h) = parse_rtp(payload) else {
                    continue;
                };
                assert!(h.payload_offset <= payload.len());
                assert!(h.payload_type < 128);
                let mut copy = payload.to_vec();
                rewrite_header(&mut copy, !h.sequence, !h.timestamp, !h.ssrc);
                let r = parse_rtp(&copy).unwrap_or_else(|e| panic!("rewritten header: {e}"));
                assert_eq!(
                    (r.sequence, r.timestamp, r.ssrc, r.payload_offset, r.marker),
                    (
                        !h.sequence,
                        !h.timestamp,
                        !h.ssrc,
                        h.payload_offset,
                        h.marker
                    )
                );
                stats.handle_packet(&h, now);
                check_stats(&mut stats, now);
                let new_segment = prev.is_none_or(|(p, _)| p.ssrc != h.ssrc);
                let m = timeline.map(&h, now);
                assert_eq!(
                    *out_ssrc.get_or_insert(m.ssrc),
                    m.ssrc,
                    "outgoing SSRC changed"
                );
                match (prev, new_segment) {
                    (Some((p, pm)), false) => {
                        assert_eq!(
                            m.sequence.wrapping_sub(pm.sequence),
                            h.sequence.wrapping_sub(p.sequence),
                            "sequence gap changed within a segment"
                        );
                        assert_eq!(
                            m.timestamp.wrapping_sub(pm.timestamp),
                            h.timestamp.wrapping_sub(p.timestamp),
                            "timestamp gap changed within a segment"
                        );
                    }
                    _ => {
                        if let Some((seq, ts)) = newest {
                            assert_eq!(m.sequence, seq.wrapping_add(1), "join not contiguous");
                            assert_ne!(m.timestamp, ts, "timestamp did not advance at a join");
                        }
                    }
                }
                if newest.is_none_or(|(s, _)| (m.sequence.wrapping_sub(s) as i16) > 0) {
                    newest = Some((m.sequence, m.timestamp));
                }
                prev = Some((h, m));
                let _ = timeline.map_timestamp(h.timestamp);
                let _ = timeline.is_identity();
            }
            2 => {
                let Ok(packets) = parse_compound(payload) else {
                    continue;
                };
                for p in &packets {
                    match p {
                        RtcpPacket::SenderReport { info, blocks } => {
                            stats.handle_sender_report(info, now);
                            let mut out = Vec::new();
                            write_sender_report(&mut out, info, blocks, "fuzz");
                            match parse_compound(&out).as_deref() {
                                Ok([RtcpPacket::SenderReport { info: i, blocks: b }, ..]) => {
                                    assert_eq!((i, b), (info, blocks), "SR round trip");
                                }
                                other => panic!("own SR parsed as {other:?}"),
                            }
                        }
                        RtcpPacket::ReceiverReport { ssrc, blocks } => {
                            let mut out = Vec::new();
                            write_receiver_report(&mut out, *ssrc, blocks, "fuzz");
                            match parse_compound(&out).as_deref() {
                                Ok([RtcpPacket::ReceiverReport { ssrc: s, blocks: b }, ..]) => {
                                    assert_eq!((s, b), (ssrc, blocks), "RR round trip");
                                }
                                other => panic!("own RR parsed as {other:?}"),
                            }
                        }
                        RtcpPacket::Bye { ssrcs } => {
                            if let Some(&ssrc) = ssrcs.first() {
                                let mut out = Vec::new();
                                write_bye(&mut out, ssrc, "fuzz");
                                let parsed =
                                    parse_compound(&out).unwrap_or_else(|e| panic!("own BYE: {e}"));
                                assert!(parsed
                                    .iter()
                                    .any(|p| *p == RtcpPacket::Bye { ssrcs: vec![ssrc] }));
                            }
                        }
                        RtcpPacket::Other { .. } => {}
                    }
                }
            }
            _ => {
                timeline.handle_source_change();
                prev = None;
                check_stats(&mut stats, now);
                if let Some(m) = stats.sr_mapping() {
                    let _ = m.extrapolate(now, clock_rate);
                }
            }
        }
    }
    check_stats(&mut stats, now);
}

/// Polls a report block and checks it against the statistics; the block
/// must write and re-parse.
fn check_stats(stats: &mut ReceiverStats, now: Instant) {
    let lost = stats.cumulative_lost();
    let ext = stats.extended_highest_seq();
    let _ = stats.packets_received();
    let Some(block) = stats.poll_report_block(now) else {
        return;
    };
    assert_eq!(Some(block.ssrc), stats.ssrc());
    assert_eq!(Some(block.extended_highest_seq), ext);
    assert!((CUMULATIVE_LOST_MIN..=CUMULATIVE_LOST_MAX).contains(&block.cumulative_lost));
    assert_eq!(
        i64::from(block.cumulative_lost),
        lost.clamp(
            i64::from(CUMULATIVE_LOST_MIN),
            i64::from(CUMULATIVE_LOST_MAX)
        )
    );
    assert_eq!(block.jitter, stats.jitter());
    let mut out = Vec::new();
    write_receiver_report(&mut out, 1, &[block], "fuzz");
    match parse_compound(&out).as_deref() {
        Ok([RtcpPacket::ReceiverReport { blocks, .. }, ..]) => {
            assert_eq!(blocks.as_slice(), &[block]);
        }
        other => panic!("own RR parsed as {other:?}"),
    }
}
