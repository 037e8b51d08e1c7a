//! RTCP: compound packet parsing and SR/RR/BYE writing (RFC 3550 §6).
//!
//! Parsing and serialisation of the individual packets go through `rtcp-types`;
//! this module converts to and from plain owned structs that are easy for the
//! server to store and compare.

mod parse;
mod write;

pub use parse::parse_compound;
pub use write::{write_bye, write_receiver_report, write_sender_report};

use crate::ntp::NtpTime;

/// RTCP packet type of a Sender Report.
pub const PT_SR: u8 = 200;
/// RTCP packet type of a Receiver Report.
pub const PT_RR: u8 = 201;
/// RTCP packet type of Source Description.
pub const PT_SDES: u8 = 202;
/// RTCP packet type of Goodbye.
pub const PT_BYE: u8 = 203;
/// RTCP packet type of an application-defined packet.
pub const PT_APP: u8 = 204;

/// Largest number of report blocks (or BYE sources) one RTCP packet can carry.
pub const MAX_BLOCKS_PER_PACKET: usize = 31;

/// Smallest value representable in the 24-bit signed cumulative-lost field.
pub const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;
/// Largest value representable in the 24-bit signed cumulative-lost field.
pub const CUMULATIVE_LOST_MAX: i32 = 0x7f_ffff;

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost in the last interval, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; clamped when written).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the high 16 bits).
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from this source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR in 1/65536 s units (0 if none).
    pub delay_since_last_sr: u32,
}

/// Sender information section of a Sender Report (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    /// SSRC of the sender.
    pub ssrc: u32,
    /// Wall-clock time at which `rtp_timestamp` was sampled.
    pub ntp: NtpTime,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    /// Sender's packet count.
    pub packet_count: u32,
    /// Sender's payload octet count.
    pub octet_count: u32,
}

/// One packet of a (compound) RTCP datagram, reduced to what the server uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket {
    /// Sender Report (PT 200).
    SenderReport {
        /// Sender information.
        info: SenderInfo,
        /// Reception report blocks.
        blocks: Vec<ReportBlock>,
    },
    /// Receiver Report (PT 201).
    ReceiverReport {
        /// SSRC of the reporter.
        ssrc: u32,
        /// Reception report blocks.
        blocks: Vec<ReportBlock>,
    },
    /// Goodbye (PT 203).
    Bye {
        /// Sources leaving.
        ssrcs: Vec<u32>,
    },
    /// Any other packet type (SDES, APP, feedback, XR, unknown), not decoded.
    Other {
        /// The RTCP packet type byte.
        packet_type: u8,
    },
}

/// Why a buffer could not be parsed as RTCP.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RtcpError {
    /// The buffer was empty.
    #[error("empty RTCP packet")]
    Empty,
    /// Fewer than 4 bytes left for an RTCP header at `offset`.
    #[error("truncated RTCP header at offset {offset} ({remaining} bytes left)")]
    TruncatedHeader {
        /// Offset of the packet within the compound.
        offset: usize,
        /// Bytes remaining from `offset`.
        remaining: usize,
    },
    /// The version field of the packet at `offset` is not 2.
    #[error("unsupported RTCP version {version} at offset {offset}")]
    BadVersion {
        /// Offset of the packet within the compound.
        offset: usize,
        /// Version found.
        version: u8,
    },
    /// The length field of the packet at `offset` runs past the end of the buffer.
    #[error("RTCP packet at offset {offset} claims {length} bytes, only {remaining} left")]
    LengthOverrun {
        /// Offset of the packet within the compound.
        offset: usize,
        /// Length in bytes from the header's length field.
        length: usize,
        /// Bytes remaining from `offset`.
        remaining: usize,
    },
    /// An SR, RR or BYE packet's body is inconsistent with its header.
    #[error("malformed RTCP packet type {packet_type} at offset {offset}: {reason}")]
    Malformed {
        /// Packet type.
        packet_type: u8,
        /// Offset of the packet within the compound.
        offset: usize,
        /// Description from the underlying parser.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            extended_highest_seq: 0x0001_0005,
            jitter: 123,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    fn info() -> SenderInfo {
        SenderInfo {
            ssrc: 0xdead_beef,
            ntp: NtpTime(0xe8f0_1234_8000_0000),
            rtp_timestamp: 0x0102_0304,
            packet_count: 1000,
            octet_count: 1_000_000,
        }
    }

    #[test]
    fn sender_report_round_trip() {
        let blocks = [block(1, 5), block(2, -3)];
        let mut out = vec![0xaa]; // existing content must be preserved
        write_sender_report(&mut out, &info(), &blocks, "sluice@example");
        assert_eq!(out[0], 0xaa);
        assert_eq!(out.len() % 4, 1);
        let packets = parse_compound(&out[1..]).unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::SenderReport {
                    info: info(),
                    blocks: blocks.to_vec()
                },
                RtcpPacket::Other {
                    packet_type: PT_SDES
                },
            ]
        );
    }

    #[test]
    fn receiver_report_round_trip() {
        let mut out = Vec::new();
        write_receiver_report(&mut out, 77, &[block(9, 0)], "c");
        let packets = parse_compound(&out).unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: 77,
                    blocks: vec![block(9, 0)]
                },
                RtcpPacket::Other {
                    packet_type: PT_SDES
                },
            ]
        );
        // Empty RR: header + SSRC only.
        let mut out = Vec::new();
        write_receiver_report(&mut out, 77, &[], "c");
        assert_eq!(&out[..8], &[0x80, 201, 0, 1, 0, 0, 0, 77]);
    }

    #[test]
    fn sdes_cname_bytes() {
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[], "ab");
        // SDES: V=2 SC=1, PT 202, length 3 (16 bytes); SSRC; CNAME(1) len 2 "ab"; null + pad.
        assert_eq!(
            &out[8..],
            &[0x81, 202, 0, 3, 0, 0, 0, 1, 1, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }

    #[test]
    fn bye_round_trip() {
        let mut out = Vec::new();
        write_bye(&mut out, 42, "me");
        let packets = parse_compound(&out).unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: 42,
                    blocks: vec![]
                },
                RtcpPacket::Other {
                    packet_type: PT_SDES
                },
                RtcpPacket::Bye { ssrcs: vec![42] },
            ]
        );
    }

    #[test]
    fn many_blocks_split_into_extra_rr() {
        let blocks: Vec<ReportBlock> = (0..40).map(|i| block(i, i as i32)).collect();
        let mut out = Vec::new();
        write_sender_report(&mut out, &info(), &blocks, "x");
        let packets = parse_compound(&out).unwrap();
        assert_eq!(packets.len(), 3);
        let mut all = Vec::new();
        match &packets[0] {
            RtcpPacket::SenderReport { blocks, .. } => all.extend_from_slice(blocks),
            p => panic!("unexpected {p:?}"),
        }
        match &packets[1] {
            RtcpPacket::ReceiverReport { ssrc, blocks } => {
                assert_eq!(*ssrc, info().ssrc);
                all.extend_from_slice(blocks);
            }
            p => panic!("unexpected {p:?}"),
        }
        assert_eq!(all, blocks);

        let mut out = Vec::new();
        write_receiver_report(&mut out, 5, &blocks, "x");
        assert_eq!(parse_compound(&out).unwrap().len(), 3);
    }

    #[test]
    fn cumulative_lost_saturates() {
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[block(2, i32::MAX), block(3, i32::MIN)], "x");
        match &parse_compound(&out).unwrap()[0] {
            RtcpPacket::ReceiverReport { blocks, .. } => {
                assert_eq!(blocks[0].cumulative_lost, CUMULATIVE_LOST_MAX);
                assert_eq!(blocks[1].cumulative_lost, CUMULATIVE_LOST_MIN);
            }
            p => panic!("unexpected {p:?}"),
        }
    }

    #[test]
    fn long_cname_truncated() {
        let cname = "é".repeat(200); // 400 bytes
        let mut out = Vec::new();
        write_bye(&mut out, 1, &cname);
        // RR (8) + SDES header (4) + SSRC (4) + item header (2) + 254 bytes (127 chars).
        assert_eq!(out[8 + 8 + 1], 254);
        assert!(parse_compound(&out).is_ok());
    }

    /// An SR + SDES as sent by ffmpeg's RTP muxer (libavformat/rtpenc.c),
    /// written out field by field from the RFC 3550 §6.4.1 / §6.5 layout.
    #[test]
    fn ffmpeg_sender_report_with_sdes() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            // SR: V=2 P=0 RC=0, PT=200, length=6 (28 bytes)
            0x80, 0xc8, 0x00, 0x06,
            0x5b, 0x2e, 0x8a, 0x1f, // SSRC
            0xe9, 0x0f, 0x7c, 0x3a, // NTP seconds
            0x47, 0xae, 0x14, 0x7a, // NTP fraction
            0x00, 0x5d, 0x8c, 0x40, // RTP timestamp
            0x00, 0x00, 0x01, 0x2c, // sender's packet count = 300
            0x00, 0x04, 0x93, 0xe0, // sender's octet count = 300000
            // SDES: V=2 P=0 SC=1, PT=202, length=5 (24 bytes)
            0x81, 0xca, 0x00, 0x05,
            0x5b, 0x2e, 0x8a, 0x1f, // chunk SSRC
            0x01, 0x0c,             // CNAME, 12 bytes
            b'L', b'a', b'v', b'f', b'6', b'1', b'.', b'7', b'.', b'1', b'0', b'0',
            0x00, 0x00,             // end of items + pad to 32 bits
        ];
        let packets = parse_compound(bytes).unwrap();
        assert_eq!(
            packets,
            vec![
                RtcpPacket::SenderReport {
                    info: SenderInfo {
                        ssrc: 0x5b2e_8a1f,
                        ntp: NtpTime(0xe90f_7c3a_47ae_147a),
                        rtp_timestamp: 0x005d_8c40,
                        packet_count: 300,
                        octet_count: 300_000,
                    },
                    blocks: vec![],
                },
                RtcpPacket::Other {
                    packet_type: PT_SDES
                },
            ]
        );
    }

    #[test]
    fn single_packets_accepted() {
        let mut out = Vec::new();
        write_sender_report(&mut out, &info(), &[], "x");
        // Just the SR, no SDES (some cameras do this).
        let sr_only = &out[..28];
        assert!(matches!(
            parse_compound(sr_only).unwrap()[..],
            [RtcpPacket::SenderReport { .. }]
        ));
        // Lone BYE with a reason string.
        let bye = [0x81, 203, 0, 2, 0, 0, 0, 9, 3, b'b', b'y', b'e'];
        assert_eq!(
            parse_compound(&bye).unwrap(),
            vec![RtcpPacket::Bye { ssrcs: vec![9] }]
        );
        // Lone APP packet.
        let app = [0x80, 204, 0, 2, 0, 0, 0, 1, b'n', b'a', b'm', b'e'];
        assert_eq!(
            parse_compound(&app).unwrap(),
            vec![RtcpPacket::Other { packet_type: 204 }]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse_compound(&[]), Err(RtcpError::Empty));
        assert_eq!(
            parse_compound(&[0x80, 201]),
            Err(RtcpError::TruncatedHeader {
                offset: 0,
                remaining: 2
            })
        );
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 0]),
            Err(RtcpError::BadVersion {
                offset: 0,
                version: 1
            })
        );
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 1, 0, 0]),
            Err(RtcpError::LengthOverrun {
                offset: 0,
                length: 8,
                remaining: 6
            })
        );
        // RR claiming one report block but only carrying the SSRC.
        assert!(matches!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::Malformed {
                packet_type: 201,
                offset: 0,
                ..
            })
        ));
        // Second packet in the compound has a bad version.
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[], "x");
        let second = 8;
        out[second] &= 0x3f;
        assert_eq!(
            parse_compound(&out),
            Err(RtcpError::BadVersion {
                offset: 8,
                version: 0
            })
        );
        // Trailing garbage after a valid packet.
        let mut out = Vec::new();
        write_receiver_report(&mut out, 1, &[], "x");
        let len = out.len();
        out.extend_from_slice(&[0x80, 0]);
        assert_eq!(
            parse_compound(&out),
            Err(RtcpError::TruncatedHeader {
                offset: len,
                remaining: 2
            })
        );
    }
}
