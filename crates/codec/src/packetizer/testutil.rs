//! Helpers for the packetizer tests: RTP header parsing and payload reassembly.

/// A parsed RTP packet (fixed header only, as this crate writes).
#[derive(Debug)]
pub(crate) struct Rtp<'a> {
    pub(crate) marker: bool,
    pub(crate) payload_type: u8,
    pub(crate) sequence: u16,
    pub(crate) timestamp: u32,
    pub(crate) ssrc: u32,
    pub(crate) payload: &'a [u8],
}

impl<'a> Rtp<'a> {
    /// Parses a packet written by this crate; panics on anything else.
    pub(crate) fn parse(b: &'a [u8]) -> Self {
        assert!(b.len() >= 12, "short packet");
        assert_eq!(b[0], 0x80, "V=2, no padding/extension/CSRC");
        Rtp {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7f,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[12..],
        }
    }
}

/// Checks the headers of one video access unit's packets: PT, SSRC, consecutive (wrapping) sequence
/// numbers from `first_seq`, one timestamp, marker on the last packet only, payloads within `max`.
pub(crate) fn check_headers(pkts: &[Rtp], pt: u8, ssrc: u32, first_seq: u16, ts: u32, max: usize) {
    assert!(!pkts.is_empty());
    for (i, p) in pkts.iter().enumerate() {
        assert_eq!(p.payload_type, pt);
        assert_eq!(p.ssrc, ssrc);
        assert_eq!(p.sequence, first_seq.wrapping_add(i as u16));
        assert_eq!(p.timestamp, ts);
        assert_eq!(p.marker, i == pkts.len() - 1, "marker of packet {i}");
        assert!(
            p.payload.len() <= max,
            "payload {} > {max}",
            p.payload.len()
        );
    }
}

/// Reassembles H.264 FU-A fragments (checking S/E bits) into the NAL unit.
pub(crate) fn reassemble_fu_a(frags: &[&[u8]]) -> Vec<u8> {
    assert!(frags.len() >= 2);
    let mut nal = vec![(frags[0][0] & 0xe0) | (frags[0][1] & 0x1f)];
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(f[0] & 0x1f, 28, "FU-A indicator");
        assert_eq!(f[1] & 0x80 != 0, i == 0, "S bit of fragment {i}");
        assert_eq!(
            f[1] & 0x40 != 0,
            i == frags.len() - 1,
            "E bit of fragment {i}"
        );
        assert_eq!(f[1] & 0x1f, nal[0] & 0x1f);
        nal.extend_from_slice(&f[2..]);
    }
    nal
}

/// Reassembles H.265 FU fragments (checking S/E bits) into the NAL unit.
pub(crate) fn reassemble_fu_h265(frags: &[&[u8]]) -> Vec<u8> {
    assert!(frags.len() >= 2);
    let ty = frags[0][2] & 0x3f;
    let mut nal = vec![(frags[0][0] & 0x81) | (ty << 1), frags[0][1]];
    for (i, f) in frags.iter().enumerate() {
        assert_eq!((f[0] >> 1) & 0x3f, 49, "FU payload header");
        assert_eq!(f[2] & 0x80 != 0, i == 0, "S bit of fragment {i}");
        assert_eq!(
            f[2] & 0x40 != 0,
            i == frags.len() - 1,
            "E bit of fragment {i}"
        );
        assert_eq!(f[2] & 0x3f, ty);
        nal.extend_from_slice(&f[3..]);
    }
    nal
}
