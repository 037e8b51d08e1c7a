//! RTP packet validation, header rewriting and RTP/RTCP demultiplexing.

use rtp_types::{RtpPacket, RtpParseError};

/// Length of the RTP fixed header (RFC 3550 §5.1).
pub const FIXED_HEADER_LEN: usize = 12;

/// Fields of an RTP fixed header needed for relaying, read from a validated packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
    /// Offset of the payload from the start of the packet (after CSRCs and extension).
    pub payload_offset: usize,
}

/// Why a buffer is not a valid RTP packet.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet too short: {len} bytes, need at least 12")]
    TooShort {
        /// Length of the buffer.
        len: usize,
    },
    /// The version field is not 2.
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    /// The CSRC list announced by the CC field runs past the end of the buffer.
    #[error("RTP CSRC list ({count} entries) exceeds packet length {len}")]
    CsrcOverrun {
        /// CSRC count from the header.
        count: u8,
        /// Length of the buffer.
        len: usize,
    },
    /// The header extension (or its 4-byte header) runs past the end of the buffer.
    #[error("RTP header extension needs {needed} bytes, packet has {len}")]
    ExtensionOverrun {
        /// Bytes needed to hold the header including the extension.
        needed: usize,
        /// Length of the buffer.
        len: usize,
    },
    /// The padding count is zero or larger than the space after the header.
    #[error("invalid RTP padding length {padding} (packet {len} bytes, payload offset {payload_offset})")]
    BadPadding {
        /// Value of the last byte (padding count); 0 if there was no room for it.
        padding: u8,
        /// Length of the buffer.
        len: usize,
        /// Where the payload starts.
        payload_offset: usize,
    },
}

/// Validates an RTP packet (version 2, header+CSRC+extension+padding lengths within the buffer) and reads its header.
pub fn parse_rtp(buf: &[u8]) -> Result<RtpHeader, RtpError> {
    match RtpPacket::parse(buf) {
        Ok(pkt) => Ok(RtpHeader {
            payload_type: pkt.payload_type(),
            marker: pkt.marker_bit(),
            sequence: pkt.sequence_number(),
            timestamp: pkt.timestamp(),
            ssrc: pkt.ssrc(),
            payload_offset: pkt.payload_offset(),
        }),
        Err(RtpParseError::UnsupportedVersion(v)) => Err(RtpError::BadVersion(v)),
        Err(RtpParseError::PaddingInvalid(_)) => Err(padding_error(buf)),
        Err(RtpParseError::Truncated { expected, .. }) => Err(classify_truncation(buf, expected)),
    }
}

/// rtp-types reports every length problem as `Truncated { expected }`; work out which
/// part of the header it was from where `expected` falls relative to the header layout.
fn classify_truncation(buf: &[u8], expected: usize) -> RtpError {
    let len = buf.len();
    let Some(&first) = buf.first() else {
        return RtpError::TooShort { len };
    };
    if len < FIXED_HEADER_LEN {
        return RtpError::TooShort { len };
    }
    let count = first & 0x0f;
    let csrc_end = FIXED_HEADER_LEN + 4 * usize::from(count);
    if expected <= csrc_end {
        return RtpError::CsrcOverrun { count, len };
    }
    let has_extension = first & 0x10 != 0;
    if has_extension {
        let ext_len = buf
            .get(csrc_end + 2..csrc_end + 4)
            .map(|b| 4 * usize::from(u16::from_be_bytes([b[0], b[1]])));
        match ext_len {
            None => {
                return RtpError::ExtensionOverrun {
                    needed: csrc_end + 4,
                    len,
                }
            }
            Some(ext_len) if expected <= csrc_end + 4 + ext_len => {
                return RtpError::ExtensionOverrun {
                    needed: csrc_end + 4 + ext_len,
                    len,
                }
            }
            Some(_) => {}
        }
    }
    padding_error(buf)
}

fn padding_error(buf: &[u8]) -> RtpError {
    let first = buf.first().copied().unwrap_or(0);
    let csrc_end = FIXED_HEADER_LEN + 4 * usize::from(first & 0x0f);
    let ext = if first & 0x10 != 0 {
        buf.get(csrc_end + 2..csrc_end + 4)
            .map_or(0, |b| 4 + 4 * usize::from(u16::from_be_bytes([b[0], b[1]])))
    } else {
        0
    };
    let payload_offset = csrc_end + ext;
    let padding = if buf.len() > payload_offset {
        buf.last().copied().unwrap_or(0)
    } else {
        0
    };
    RtpError::BadPadding {
        padding,
        len: buf.len(),
        payload_offset,
    }
}

// The two helpers below are hand-written rather than going through `rtp_types`:
// they run once per packet per reader on the relay hot path, and
// `rtp_types::RtpPacketMut::parse` would re-validate the whole packet (CSRCs,
// extension, padding) just to poke three fixed-offset fields.

/// Overwrites sequence number, timestamp and SSRC in place in a buffer that already passed parse_rtp (or is ≥12 bytes). Used for per-reader rewriting.
///
/// Buffers shorter than the 12-byte fixed header are left untouched.
pub fn rewrite_header(buf: &mut [u8], sequence: u16, timestamp: u32, ssrc: u32) {
    let Some(header) = buf.get_mut(2..FIXED_HEADER_LEN) else {
        return;
    };
    header[0..2].copy_from_slice(&sequence.to_be_bytes());
    header[2..6].copy_from_slice(&timestamp.to_be_bytes());
    header[6..10].copy_from_slice(&ssrc.to_be_bytes());
}

/// true if the first byte/second byte pattern says RTCP (payload type 192..=223 in byte 1, RFC 5761 demux), used on interleaved channels.
///
/// Also requires version 2 in the first byte; anything shorter than 2 bytes is not RTCP.
pub fn looks_like_rtcp(buf: &[u8]) -> bool {
    match buf {
        [first, second, ..] => first >> 6 == 2 && (192..=223).contains(second),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header: V=2, given flags, PT 96, seq 0x1234, ts 0xdeadbeef, ssrc 0x01020304.
    fn header(padding: bool, extension: bool, cc: u8, marker: bool) -> Vec<u8> {
        let b0 = 0x80 | (u8::from(padding) << 5) | (u8::from(extension) << 4) | cc;
        let b1 = (u8::from(marker) << 7) | 96;
        vec![
            b0, b1, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
        ]
    }

    #[test]
    fn minimal_packet() {
        let mut buf = header(false, false, 0, true);
        buf.extend_from_slice(b"payload");
        let h = parse_rtp(&buf).unwrap();
        assert_eq!(
            h,
            RtpHeader {
                payload_type: 96,
                marker: true,
                sequence: 0x1234,
                timestamp: 0xdead_beef,
                ssrc: 0x0102_0304,
                payload_offset: 12,
            }
        );
    }

    #[test]
    fn header_only_is_valid() {
        let buf = header(false, false, 0, false);
        let h = parse_rtp(&buf).unwrap();
        assert_eq!(h.payload_offset, 12);
        assert!(!h.marker);
    }

    #[test]
    fn too_short() {
        assert_eq!(parse_rtp(&[]), Err(RtpError::TooShort { len: 0 }));
        let buf = header(false, false, 0, false);
        assert_eq!(parse_rtp(&buf[..11]), Err(RtpError::TooShort { len: 11 }));
    }

    #[test]
    fn bad_version() {
        let mut buf = header(false, false, 0, false);
        buf[0] = (buf[0] & 0x3f) | 0x40; // version 1
        assert_eq!(parse_rtp(&buf), Err(RtpError::BadVersion(1)));
        buf[0] &= 0x3f; // version 0
        assert_eq!(parse_rtp(&buf), Err(RtpError::BadVersion(0)));
    }

    #[test]
    fn csrcs_are_skipped() {
        let mut buf = header(false, false, 2, false);
        buf.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        buf.extend_from_slice(b"xy");
        assert_eq!(parse_rtp(&buf).unwrap().payload_offset, 20);
        // CSRC list exactly filling the packet is fine.
        assert_eq!(parse_rtp(&buf[..20]).unwrap().payload_offset, 20);
    }

    #[test]
    fn csrc_overrun() {
        let mut buf = header(false, false, 3, false);
        buf.extend_from_slice(&[0; 8]); // only 2 of 3 CSRCs
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::CsrcOverrun { count: 3, len: 20 })
        );
    }

    #[test]
    fn extension_is_skipped() {
        let mut buf = header(false, true, 1, false);
        buf.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        buf.extend_from_slice(&[0xbe, 0xde, 0x00, 0x02]); // profile, 2 words
        buf.extend_from_slice(&[1; 8]);
        buf.extend_from_slice(b"p");
        assert_eq!(parse_rtp(&buf).unwrap().payload_offset, 12 + 4 + 4 + 8);
    }

    #[test]
    fn empty_extension() {
        let mut buf = header(false, true, 0, false);
        buf.extend_from_slice(&[0xbe, 0xde, 0x00, 0x00]);
        assert_eq!(parse_rtp(&buf).unwrap().payload_offset, 16);
    }

    #[test]
    fn extension_header_overrun() {
        let mut buf = header(false, true, 0, false);
        buf.extend_from_slice(&[0xbe, 0xde]); // extension header cut in half
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::ExtensionOverrun {
                needed: 16,
                len: 14
            })
        );
    }

    #[test]
    fn extension_body_overrun() {
        let mut buf = header(false, true, 0, false);
        buf.extend_from_slice(&[0xbe, 0xde, 0x00, 0x03]); // claims 12 bytes
        buf.extend_from_slice(&[0; 8]);
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::ExtensionOverrun {
                needed: 28,
                len: 24
            })
        );
    }

    #[test]
    fn padding_accepted() {
        let mut buf = header(true, false, 0, false);
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&[0, 0, 3]);
        assert_eq!(parse_rtp(&buf).unwrap().payload_offset, 12);
        // Padding that consumes the whole (empty) payload is allowed.
        let mut buf = header(true, false, 0, false);
        buf.extend_from_slice(&[0, 0, 0, 4]);
        assert!(parse_rtp(&buf).is_ok());
    }

    #[test]
    fn padding_zero_rejected() {
        let mut buf = header(true, false, 0, false);
        buf.extend_from_slice(&[1, 2, 0]);
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::BadPadding {
                padding: 0,
                len: 15,
                payload_offset: 12
            })
        );
    }

    #[test]
    fn padding_into_header_rejected() {
        let mut buf = header(true, false, 0, false);
        buf.extend_from_slice(&[1, 2, 4]); // 4 > 3 bytes after header
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::BadPadding {
                padding: 4,
                len: 15,
                payload_offset: 12
            })
        );
    }

    #[test]
    fn padding_bit_without_room() {
        // Padding bit set but no byte after the header to hold the count.
        let buf = header(true, false, 0, false);
        assert_eq!(
            parse_rtp(&buf),
            Err(RtpError::BadPadding {
                padding: 0,
                len: 12,
                payload_offset: 12
            })
        );
    }

    #[test]
    fn padding_into_extension_rejected() {
        let mut buf = header(true, true, 0, false);
        buf.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 9, 9, 9, 9]);
        buf.extend_from_slice(&[7, 2]); // 2 bytes after extension, padding says 2: ok
        assert!(parse_rtp(&buf).is_ok());
        let last = buf.len() - 1;
        buf[last] = 3; // now reaches into the extension
        assert!(matches!(
            parse_rtp(&buf),
            Err(RtpError::BadPadding {
                padding: 3,
                payload_offset: 20,
                ..
            })
        ));
    }

    #[test]
    fn rewrite_changes_only_seq_ts_ssrc() {
        let mut buf = header(false, false, 1, true);
        buf.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        buf.extend_from_slice(b"data");
        let before = buf.clone();
        rewrite_header(&mut buf, 0xfffe, 0x0102_0304, 0xcafe_babe);
        let h = parse_rtp(&buf).unwrap();
        assert_eq!(h.sequence, 0xfffe);
        assert_eq!(h.timestamp, 0x0102_0304);
        assert_eq!(h.ssrc, 0xcafe_babe);
        assert_eq!(h.payload_type, 96);
        assert!(h.marker);
        assert_eq!(buf[..2], before[..2]);
        assert_eq!(buf[12..], before[12..]);
    }

    #[test]
    fn rewrite_short_buffer_is_noop() {
        let mut buf = [0x80u8, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        let before = buf;
        rewrite_header(&mut buf, 5, 6, 7);
        assert_eq!(buf, before);
    }

    #[test]
    fn rtcp_demux() {
        assert!(looks_like_rtcp(&[0x80, 200, 0, 6]));
        assert!(looks_like_rtcp(&[0x81, 201]));
        assert!(looks_like_rtcp(&[0x80, 192]));
        assert!(looks_like_rtcp(&[0x80, 223]));
        assert!(!looks_like_rtcp(&[0x80, 191]));
        assert!(!looks_like_rtcp(&[0x80, 224]));
        // RTP PT 96 with and without marker.
        assert!(!looks_like_rtcp(&[0x80, 96]));
        assert!(!looks_like_rtcp(&[0x80, 0x80 | 96]));
        assert!(!looks_like_rtcp(&[0x40, 200]));
        assert!(!looks_like_rtcp(&[0x80]));
        assert!(!looks_like_rtcp(&[]));
    }
}
