//! Property tests: parsers never panic, RTCP write→parse round-trips, extended
//! sequence numbers are monotonic for in-order input.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::packet::{parse_rtp, RtpHeader};
use sluice_rtp::rtcp::{
    parse_compound, write_receiver_report, write_sender_report, ReportBlock, RtcpPacket,
    SenderInfo, CUMULATIVE_LOST_MAX, CUMULATIVE_LOST_MIN, PT_SDES,
};
use sluice_rtp::stats::ReceiverStats;

fn arb_block() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        CUMULATIVE_LOST_MIN..=CUMULATIVE_LOST_MAX,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, cumulative_lost, ext, jitter, lsr, dlsr)| ReportBlock {
                ssrc,
                fraction_lost,
                cumulative_lost,
                extended_highest_seq: ext,
                jitter,
                last_sr: lsr,
                delay_since_last_sr: dlsr,
            },
        )
}

fn arb_info() -> impl Strategy<Value = SenderInfo> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, ntp, rtp_timestamp, packet_count, octet_count)| SenderInfo {
                ssrc,
                ntp: NtpTime(ntp),
                rtp_timestamp,
                packet_count,
                octet_count,
            },
        )
}

/// Concatenates the blocks of the SR/RR packets in a parsed compound.
fn collect_blocks(packets: &[RtcpPacket]) -> Vec<ReportBlock> {
    packets
        .iter()
        .flat_map(|p| match p {
            RtcpPacket::SenderReport { blocks, .. } | RtcpPacket::ReceiverReport { blocks, .. } => {
                blocks.clone()
            }
            _ => Vec::new(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_rtp_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(h) = parse_rtp(&buf) {
            prop_assert!(h.payload_offset <= buf.len());
        }
    }

    #[test]
    fn parse_rtp_never_panics_v2(mut buf in proptest::collection::vec(any::<u8>(), 12..128)) {
        // Force version 2 so the deeper length checks are exercised.
        buf[0] = (buf[0] & 0x3f) | 0x80;
        if let Ok(h) = parse_rtp(&buf) {
            prop_assert!(h.payload_offset <= buf.len());
        }
    }

    #[test]
    fn parse_compound_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_compound(&buf);
    }

    #[test]
    fn parse_compound_never_panics_framed(
        parts in proptest::collection::vec(
            (0u8..=255, 0u8..=0x3f, proptest::collection::vec(any::<u32>(), 0..12)),
            1..4,
        )
    ) {
        // Correctly framed version-2 packets with random type, flags/count and body.
        let mut buf = Vec::new();
        for (pt, flags, words) in parts {
            buf.push(0x80 | flags);
            buf.push(pt);
            buf.extend_from_slice(&(words.len() as u16).to_be_bytes());
            for w in words {
                buf.extend_from_slice(&w.to_be_bytes());
            }
        }
        let _ = parse_compound(&buf);
    }

    #[test]
    fn sender_report_round_trip(
        info in arb_info(),
        blocks in proptest::collection::vec(arb_block(), 0..40),
        cname in "[a-zA-Z0-9@.-]{0,64}",
    ) {
        let mut out = Vec::new();
        write_sender_report(&mut out, &info, &blocks, &cname);
        let packets = parse_compound(&out).unwrap();
        match packets.first() {
            Some(RtcpPacket::SenderReport { info: parsed, .. }) => prop_assert_eq!(*parsed, info),
            other => prop_assert!(false, "first packet {:?}", other),
        }
        prop_assert_eq!(packets.last(), Some(&RtcpPacket::Other { packet_type: PT_SDES }));
        prop_assert_eq!(collect_blocks(&packets), blocks);
    }

    #[test]
    fn receiver_report_round_trip(
        ssrc in any::<u32>(),
        blocks in proptest::collection::vec(arb_block(), 0..40),
        cname in "\\PC{0,40}",
    ) {
        let mut out = Vec::new();
        write_receiver_report(&mut out, ssrc, &blocks, &cname);
        let packets = parse_compound(&out).unwrap();
        for p in &packets[..packets.len() - 1] {
            match p {
                RtcpPacket::ReceiverReport { ssrc: s, .. } => prop_assert_eq!(*s, ssrc),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(packets.last(), Some(&RtcpPacket::Other { packet_type: PT_SDES }));
        prop_assert_eq!(collect_blocks(&packets), blocks);
    }

    #[test]
    fn extended_seq_monotonic_in_order(
        start in prop_oneof![any::<u16>(), 65000u16..=65535],
        steps in proptest::collection::vec(1u16..=50, 0..3000),
    ) {
        let base = Instant::now();
        let mut stats = ReceiverStats::new(90_000);
        let mut seq = start;
        let mut prev: Option<u32> = None;
        // Two consecutive packets first so the source passes probation.
        let all_steps = std::iter::once(0).chain(std::iter::once(1)).chain(steps);
        for (i, step) in all_steps.enumerate() {
            seq = seq.wrapping_add(step);
            let header = RtpHeader {
                payload_type: 96,
                marker: false,
                sequence: seq,
                timestamp: u32::from(seq).wrapping_mul(3000),
                ssrc: 1,
                payload_offset: 12,
            };
            stats.handle_packet(&header, base + Duration::from_millis(i as u64));
            if let Some(ext) = stats.extended_highest_seq() {
                prop_assert_eq!(ext as u16, seq);
                if let Some(p) = prev {
                    prop_assert!(ext > p, "ext {} after {}", ext, p);
                }
                prev = Some(ext);
            }
        }
        prop_assert!(prev.is_some());
        prop_assert_eq!(stats.cumulative_lost() >= 0, true);
    }
}
