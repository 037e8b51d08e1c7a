//! Compound RTCP parsing.

use rtcp_types::{
    Bye, ReceiverReport, ReportBlock as WireBlock, RtcpPacketParser, RtcpParseError, SenderReport,
};

use super::{ReportBlock, RtcpError, RtcpPacket, SenderInfo, PT_BYE, PT_RR, PT_SR};
use crate::ntp::NtpTime;

/// Parses a compound RTCP packet (tolerant: also accepts non-compound single SR/RR/BYE as sent by some cameras; unknown types -> Other).
///
/// The framing (splitting the datagram on the per-packet length fields) is done
/// here rather than with `rtcp_types::Compound` so that we can be lenient where
/// real senders are sloppy: the first packet need not be SR/RR, and a padding
/// bit on a non-final packet is ignored. Framing must still be exact: every
/// packet must be version 2 and the lengths must add up to the buffer length.
/// SR, RR and BYE bodies are decoded with `rtcp-types`; every other packet
/// type is reported as [`RtcpPacket::Other`] without looking at its body.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut packets = Vec::new();
    let mut offset = 0;
    while let Some(rest) = buf.get(offset..).filter(|r| !r.is_empty()) {
        let &[first, packet_type, len_hi, len_lo, ..] = rest else {
            return Err(RtcpError::TruncatedHeader {
                offset,
                remaining: rest.len(),
            });
        };
        let version = first >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let length = 4 * (usize::from(u16::from_be_bytes([len_hi, len_lo])) + 1);
        let Some(data) = rest.get(..length) else {
            return Err(RtcpError::LengthOverrun {
                offset,
                length,
                remaining: rest.len(),
            });
        };
        let malformed = |e: RtcpParseError| RtcpError::Malformed {
            packet_type,
            offset,
            reason: e.to_string(),
        };
        let packet = match packet_type {
            PT_SR => {
                let sr = SenderReport::parse(data).map_err(malformed)?;
                RtcpPacket::SenderReport {
                    info: SenderInfo {
                        ssrc: sr.ssrc(),
                        ntp: NtpTime(sr.ntp_timestamp()),
                        rtp_timestamp: sr.rtp_timestamp(),
                        packet_count: sr.packet_count(),
                        octet_count: sr.octet_count(),
                    },
                    blocks: sr.report_blocks().map(|b| convert_block(&b)).collect(),
                }
            }
            PT_RR => {
                let rr = ReceiverReport::parse(data).map_err(malformed)?;
                RtcpPacket::ReceiverReport {
                    ssrc: rr.ssrc(),
                    blocks: rr.report_blocks().map(|b| convert_block(&b)).collect(),
                }
            }
            PT_BYE => {
                let bye = Bye::parse(data).map_err(malformed)?;
                RtcpPacket::Bye {
                    ssrcs: bye.ssrcs().collect(),
                }
            }
            other => RtcpPacket::Other { packet_type: other },
        };
        packets.push(packet);
        offset += length;
    }
    Ok(packets)
}

fn convert_block(b: &WireBlock<'_>) -> ReportBlock {
    // Sign-extend the 24-bit two's complement cumulative-lost field.
    let cumulative_lost = ((b.cumulative_lost() << 8) as i32) >> 8;
    ReportBlock {
        ssrc: b.ssrc(),
        fraction_lost: b.fraction_lost(),
        cumulative_lost,
        extended_highest_seq: b.extended_sequence_number(),
        jitter: b.interarrival_jitter(),
        last_sr: b.last_sender_report_timestamp(),
        delay_since_last_sr: b.delay_since_last_sender_report_timestamp(),
    }
}
