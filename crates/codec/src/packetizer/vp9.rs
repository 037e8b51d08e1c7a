//! VP9 packetization, RFC 9628 (non-flexible mode, one spatial layer): a 3-byte payload descriptor
//! (I=1 with 15-bit PictureID, P, B, E) per packet. Superframes are sent whole as one picture.

use super::{malformed, PacketizeError};
use crate::bits::BitReader;
use crate::params::Codec;
use crate::rtp::Staging;

/// Payload descriptor length this packetizer writes.
const DESCRIPTOR_LEN: usize = 3;

/// VP9 state: the running PictureID.
#[derive(Debug, Clone, Default)]
pub(super) struct Vp9 {
    picture_id: u16,
}

/// Whether a VP9 frame's uncompressed header says it is a key frame.
pub(crate) fn frame_is_key(data: &[u8]) -> bool {
    key_flag(&mut BitReader::new(data)).unwrap_or(false)
}

/// [`frame_is_key`], `None` when truncated.
fn key_flag(r: &mut BitReader<'_>) -> Option<bool> {
    if r.read(2)? != 2 {
        return Some(false);
    }
    let low = r.read(1)?;
    let high = r.read(1)?;
    if (high << 1) | low == 3 {
        r.read(1)?;
    }
    if r.flag()? {
        return Some(false); // show_existing_frame
    }
    Some(!r.flag()?)
}

impl Vp9 {
    /// Stages the packets of one frame (or superframe).
    pub(super) fn packetize(
        &mut self,
        data: &[u8],
        ts: u32,
        keyframe: bool,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        if data.is_empty() {
            return Err(malformed(Codec::Vp9, "empty frame"));
        }
        let key = keyframe || frame_is_key(data);
        let pid = self.picture_id;
        let chunks = data.chunks(max - DESCRIPTOR_LEN);
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.enumerate() {
            let mut first = 0x80; // I
            if !key {
                first |= 0x40; // P
            }
            if i == 0 {
                first |= 0x08; // B
            }
            if i == last {
                first |= 0x04; // E
            }
            let descriptor = [first, 0x80 | (pid >> 8) as u8, pid as u8];
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

    const KEY: &[u8] = include_bytes!("../../tests/data/vp9_sample0.bin");
    const INTER: &[u8] = include_bytes!("../../tests/data/vp9_sample1.bin");

    #[test]
    fn packets_and_keyframes() {
        assert!(frame_is_key(KEY));
        assert!(!frame_is_key(INTER));
        let params = CodecParams::new(
            Codec::Vp9,
            Bytes::from_static(include_bytes!("../../tests/data/vp9.vpcc")),
        );
        let mut p = Packetizer::new(&params, 101, 1, 0, 1000).unwrap();
        assert_eq!(
            p.sdp_media(),
            "m=video 0 RTP/AVP 101\r\na=rtpmap:101 VP9/90000\r\n"
        );
        let mut out = Vec::new();
        p.packetize(KEY, 0, false, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 101, 1, 0, 0, 1000);
        assert!(pkts.len() > 1);
        assert_eq!(&pkts[0].payload[..3], &[0x88, 0x80, 0x00]);
        assert!(starts_keyframe(Codec::Vp9, pkts[0].payload));
        assert!(!starts_keyframe(Codec::Vp9, pkts[1].payload));
        let joined: Vec<u8> = pkts.iter().flat_map(|r| r.payload[3..].to_vec()).collect();
        assert_eq!(joined, KEY);
        out.clear();
        p.packetize(INTER, 3600, false, &mut out).unwrap();
        let r = Rtp::parse(&out[0]);
        assert_eq!(&r.payload[..3], &[0xcc, 0x80, 0x01]);
        assert!(!starts_keyframe(Codec::Vp9, r.payload));
    }
}
