//! G.711 (PCMU/PCMA) packetization, RFC 3551: raw samples split into packets on frame boundaries.

use super::{malformed, PacketizeError};
use crate::params::Codec;
use crate::rtp::Staging;

/// G.711 state: the interleaved channel count (bytes per sample frame).
#[derive(Debug, Clone)]
pub(super) struct G711 {
    channels: u16,
}

impl G711 {
    /// A packetizer for `channels` (≥ 1) interleaved channels.
    pub(super) fn new(channels: u16) -> Self {
        G711 { channels }
    }

    /// Stages a run of samples, each packet's timestamp advanced by the sample frames before it.
    pub(super) fn packetize(
        &self,
        data: &[u8],
        codec: Codec,
        ts: u32,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        let frame = usize::from(self.channels.max(1));
        if data.is_empty() {
            return Err(malformed(codec, "empty sample"));
        }
        if data.len() % frame != 0 {
            return Err(malformed(codec, "sample is not a whole number of frames"));
        }
        let per_packet = (max / frame).max(1) * frame;
        let mut offset: u32 = 0;
        for chunk in data.chunks(per_packet) {
            st.push(ts.wrapping_add(offset), true, &[chunk]);
            offset = offset.wrapping_add(u32::try_from(chunk.len() / frame).unwrap_or(0));
        }
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

    #[test]
    fn sdp_and_splitting() {
        let mut p =
            Packetizer::new(&CodecParams::new(Codec::Pcmu, Bytes::new()), 0, 5, 0, 160).unwrap();
        assert_eq!(p.rtpmap(), "0 PCMU/8000");
        assert_eq!(p.fmtp(), None);
        assert_eq!(
            p.sdp_media(),
            "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let mut out = Vec::new();
        let data: Vec<u8> = (0..400u32).map(|i| i as u8).collect();
        p.packetize(&data, u32::MAX - 100, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        assert_eq!(pkts.len(), 3);
        let ts: Vec<u32> = pkts.iter().map(|r| r.timestamp).collect();
        assert_eq!(ts, [u32::MAX - 100, 59, 219]);
        assert!(pkts.iter().all(|r| r.marker && r.payload.len() <= 160));
        assert!(starts_keyframe(Codec::Pcmu, pkts[1].payload));
        let joined: Vec<u8> = pkts.iter().flat_map(|r| r.payload.to_vec()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn stereo_alaw() {
        let params = CodecParams {
            channels: Some(2),
            ..CodecParams::new(Codec::Pcma, Bytes::new())
        };
        let mut p = Packetizer::new(&params, 8, 5, 0, 101).unwrap();
        assert_eq!(p.rtpmap(), "8 PCMA/8000/2");
        let mut out = Vec::new();
        p.packetize(&[0; 200], 0, true, &mut out).unwrap();
        let ts: Vec<u32> = out.iter().map(|b| Rtp::parse(b).timestamp).collect();
        assert_eq!(ts, [0, 50]);
        assert!(p.packetize(&[0; 3], 0, true, &mut out).is_err());
    }
}
