//! VP8 packetization, RFC 7741: a 4-byte payload descriptor (X=1, I=1, 15-bit PictureID) per packet,
//! S=1 on the first packet of a frame.

use super::{malformed, PacketizeError};
use crate::params::Codec;
use crate::rtp::Staging;

/// Payload descriptor length this packetizer writes.
const DESCRIPTOR_LEN: usize = 4;

/// VP8 state: the running PictureID.
#[derive(Debug, Clone, Default)]
pub(super) struct Vp8 {
    picture_id: u16,
}

impl Vp8 {
    /// Stages the packets of one frame.
    pub(super) fn packetize(
        &mut self,
        data: &[u8],
        ts: u32,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        if data.is_empty() {
            return Err(malformed(Codec::Vp8, "empty frame"));
        }
        let pid = self.picture_id;
        for (i, chunk) in data.chunks(max - DESCRIPTOR_LEN).enumerate() {
            let start = if i == 0 { 0x10 } else { 0 };
            let descriptor = [0x80 | start, 0x80, 0x80 | (pid >> 8) as u8, pid as u8];
            st.push(ts, false, &[&descriptor, chunk]);
        }
        st.mark_last();
        self.picture_id = (pid + 1) & 0x7fff;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::keyframe::starts_keyframe;
    use crate::packetizer::Packetizer;
    use crate::params::CodecParams;
    use bytes::Bytes;

    const KEY: &[u8] = include_bytes!("../../tests/data/vp8_sample0.bin");
    const INTER: &[u8] = include_bytes!("../../tests/data/vp8_sample1.bin");

    #[test]
    fn packets_and_keyframes() {
        let params = CodecParams {
            width: Some(160),
            height: Some(120),
            ..CodecParams::new(Codec::Vp8, Bytes::new())
        };
        let mut p = Packetizer::new(&params, 100, 1, 0, 1000).unwrap();
        assert_eq!(
            p.sdp_media(),
            "m=video 0 RTP/AVP 100\r\na=rtpmap:100 VP8/90000\r\na=framesize:100 160-120\r\n"
        );
        let mut out = Vec::new();
        p.packetize(KEY, 0, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 100, 1, 0, 0, 1000);
        assert!(pkts.len() > 1);
        assert!(starts_keyframe(Codec::Vp8, pkts[0].payload));
        assert!(!starts_keyframe(Codec::Vp8, pkts[1].payload));
        let joined: Vec<u8> = pkts.iter().flat_map(|r| r.payload[4..].to_vec()).collect();
        assert_eq!(joined, KEY);
        out.clear();
        p.packetize(INTER, 3600, false, &mut out).unwrap();
        let r = Rtp::parse(&out[0]);
        assert_eq!(&r.payload[..4], &[0x90, 0x80, 0x80, 0x01]);
        assert!(!starts_keyframe(Codec::Vp8, r.payload));
    }

    #[test]
    fn keyframe_detection_on_hand_built_descriptors() {
        // Minimal descriptor (S=1, PID=0) + key frame header (P bit 0).
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x50, 0x02, 0x00]));
        // Same with inter frame header (P bit 1).
        assert!(!starts_keyframe(Codec::Vp8, &[0x10, 0x51, 0x02, 0x00]));
        // S=0: continuation.
        assert!(!starts_keyframe(Codec::Vp8, &[0x00, 0x50]));
        // X=1 with I (7-bit PictureID), L and T/K bytes.
        assert!(starts_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x05, 0x01, 0x40, 0x00]
        ));
        // X=1 with I (15-bit PictureID) but truncated.
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0x80, 0x80, 0x01]));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }
}
