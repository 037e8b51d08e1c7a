//! Opus packetization, RFC 7587: one Opus packet per RTP packet.

use bytes::Bytes;

use super::{malformed, PacketizeError};
use crate::params::Codec;
use crate::rtp::Staging;

/// Opus state: the channel count for `sprop-stereo`.
#[derive(Debug, Clone)]
pub(super) struct Opus {
    channels: u16,
}

impl Opus {
    /// Takes the channel count from `dOps` or an OpusHead, else from the container, else assumes stereo.
    pub(super) fn new(config: &Bytes, channels: Option<u16>) -> Self {
        let from_config = match config.strip_prefix(b"OpusHead") {
            // OpusHead: version, channel count, …
            Some(head) => head.get(1),
            // dOps: version, OutputChannelCount, …
            None => config.get(1),
        };
        let channels = from_config
            .map(|&c| u16::from(c))
            .filter(|&c| c > 0)
            .or(channels.filter(|&c| c > 0))
            .unwrap_or(2);
        Opus { channels }
    }

    /// Channel count of the stream.
    pub(super) fn channels(&self) -> u16 {
        self.channels
    }

    /// `a=fmtp` parameters.
    pub(super) fn fmtp(&self) -> String {
        format!("sprop-stereo={}", u8::from(self.channels >= 2))
    }

    /// Stages one Opus packet.
    pub(super) fn packetize(
        &self,
        data: &[u8],
        ts: u32,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        if data.is_empty() {
            return Err(malformed(Codec::Opus, "empty packet"));
        }
        if data.len() > max {
            return Err(PacketizeError::FrameTooLarge {
                codec: Codec::Opus,
                size: data.len(),
                max,
            });
        }
        st.push(ts, true, &[data]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::packetizer::Packetizer;
    use crate::params::CodecParams;

    const DOPS: &[u8] = include_bytes!("../../tests/data/opus.dops");
    const FRAME: &[u8] = include_bytes!("../../tests/data/opus_sample0.bin");

    #[test]
    fn sdp_and_packets() {
        let params = CodecParams::new(Codec::Opus, Bytes::from_static(DOPS));
        let mut p = Packetizer::new(&params, 98, 3, 9, 1400).unwrap();
        assert_eq!(p.rtpmap(), "98 opus/48000/2");
        assert_eq!(p.fmtp().unwrap(), "98 sprop-stereo=1");
        assert_eq!(
            p.sdp_media(),
            "m=audio 0 RTP/AVP 98\r\na=rtpmap:98 opus/48000/2\r\na=fmtp:98 sprop-stereo=1\r\n"
        );
        let mut out = Vec::new();
        p.packetize(FRAME, 960, true, &mut out).unwrap();
        let r = Rtp::parse(&out[0]);
        assert!(r.marker);
        assert_eq!((r.sequence, r.timestamp, r.payload), (9, 960, FRAME));
        assert!(p.packetize(&[0; 1401], 0, true, &mut out).is_err());
        assert!(p.packetize(&[], 0, true, &mut out).is_err());
        assert_eq!(out.len(), 1);

        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1, 0, 0]);
        let mono = Packetizer::new(&CodecParams::new(Codec::Opus, head), 98, 3, 9, 1400).unwrap();
        assert_eq!(mono.fmtp().unwrap(), "98 sprop-stereo=0");
        assert_eq!(mono.rtpmap(), "98 opus/48000/2");
    }
}
