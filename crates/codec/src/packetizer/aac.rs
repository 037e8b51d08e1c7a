//! AAC packetization, RFC 3640 mode AAC-hbr: one access unit per packet with a 16-bit AU header
//! (13-bit size, 3-bit index); an access unit larger than a packet is fragmented.

use bytes::Bytes;

use super::{bad_config, hex_upper, malformed, PacketizeError};
use crate::asc::AudioSpecificConfig;
use crate::params::Codec;
use crate::rtp::Staging;

/// Largest access unit a 13-bit AU-size can describe.
const MAX_AU: usize = (1 << 13) - 1;
/// AU-headers-length (16 bits, in bits) plus one 16-bit AU header.
const HEADERS_LEN: usize = 4;

/// AAC state: the AudioSpecificConfig.
#[derive(Debug, Clone)]
pub(super) struct Aac {
    config: Bytes,
    asc: AudioSpecificConfig,
}

impl Aac {
    /// Parses the AudioSpecificConfig.
    pub(super) fn new(config: &Bytes) -> Result<Self, PacketizeError> {
        let asc = AudioSpecificConfig::parse(config).map_err(|r| bad_config(Codec::Aac, r))?;
        Ok(Aac {
            config: config.clone(),
            asc,
        })
    }

    /// Channel count from the AudioSpecificConfig, if it has a fixed layout.
    pub(super) fn channels(&self) -> Option<u16> {
        self.asc.channels()
    }

    /// `a=fmtp` parameters.
    pub(super) fn fmtp(&self) -> String {
        format!(
            "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config={}",
            hex_upper(&self.config)
        )
    }

    /// Stages the packets of one raw AAC frame.
    pub(super) fn packetize(
        &self,
        data: &[u8],
        ts: u32,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        if data.is_empty() {
            return Err(malformed(Codec::Aac, "empty frame"));
        }
        if data.len() > MAX_AU {
            return Err(PacketizeError::FrameTooLarge {
                codec: Codec::Aac,
                size: data.len(),
                max: MAX_AU,
            });
        }
        let size = u16::try_from(data.len()).unwrap_or(0);
        let headers = [0x00, 0x10, (size >> 5) as u8, ((size & 0x1f) << 3) as u8];
        // Each fragment repeats the AU header with the whole AU's size (RFC 3640 §3.2.3.2).
        for chunk in data.chunks(max - HEADERS_LEN) {
            st.push(ts, false, &[&headers, chunk]);
        }
        st.mark_last();
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

    const ASC: &[u8] = include_bytes!("../../tests/data/aac.asc");
    const FRAME: &[u8] = include_bytes!("../../tests/data/aac_sample0.bin");

    fn packetizer() -> Packetizer {
        let params = CodecParams {
            sample_rate: Some(48_000),
            channels: Some(2),
            ..CodecParams::new(Codec::Aac, Bytes::from_static(ASC))
        };
        Packetizer::new(&params, 97, 1, 0, 1400).unwrap()
    }

    #[test]
    fn sdp_for_ffmpeg_asc() {
        let p = packetizer();
        assert_eq!(p.rtpmap(), "97 MPEG4-GENERIC/48000/2");
        assert_eq!(p.clock_rate(), 48_000);
        assert_eq!(
            p.fmtp().unwrap(),
            "97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=119056E500"
        );
        assert!(p
            .sdp_media()
            .starts_with("m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n"));
        // Without container hints, rate and channels come from the ASC.
        let bare = CodecParams::new(Codec::Aac, Bytes::from_static(&[0x12, 0x08]));
        let p = Packetizer::new(&bare, 97, 1, 0, 1400).unwrap();
        assert_eq!(p.rtpmap(), "97 MPEG4-GENERIC/44100/1");
        assert!(
            Packetizer::new(&CodecParams::new(Codec::Aac, Bytes::new()), 97, 1, 0, 1400).is_err()
        );
    }

    #[test]
    fn au_header_and_marker() {
        let mut p = packetizer();
        let mut out = Vec::new();
        p.packetize(FRAME, 1024, true, &mut out).unwrap();
        p.packetize(FRAME, 2048, false, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        for (i, b) in out.iter().enumerate() {
            let r = Rtp::parse(b);
            assert!(r.marker);
            assert_eq!(r.sequence, i as u16);
            assert_eq!(r.timestamp, 1024 * (i as u32 + 1));
            let au = u16::from_be_bytes([r.payload[2], r.payload[3]]);
            assert_eq!(&r.payload[..2], &[0, 16]);
            assert_eq!(au, (FRAME.len() as u16) << 3);
            assert_eq!(&r.payload[4..], FRAME);
            assert!(starts_keyframe(Codec::Aac, r.payload));
        }
    }

    #[test]
    fn large_frames_fragment_and_huge_ones_fail() {
        let mut p = packetizer();
        let mut out = Vec::new();
        let frame = vec![7u8; 3000];
        p.packetize(&frame, 0, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 97, 1, 0, 0, 1400);
        let mut joined = Vec::new();
        for r in &pkts {
            assert_eq!(u16::from_be_bytes([r.payload[2], r.payload[3]]), 3000 << 3);
            joined.extend_from_slice(&r.payload[4..]);
        }
        assert_eq!(joined, frame);
        assert!(matches!(
            p.packetize(&vec![0; 9000], 0, true, &mut out),
            Err(PacketizeError::FrameTooLarge { .. })
        ));
        assert!(p.packetize(&[], 0, true, &mut out).is_err());
    }
}
