//! RTP packetization of a container track's samples, and the SDP that describes the stream.

mod aac;
mod av1;
mod g711;
mod h264;
mod h265;
mod opus;
mod vp8;
mod vp9;

#[cfg(test)]
mod testutil;

use bytes::Bytes;

use crate::params::{Codec, CodecParams};
use crate::rtp::{Sequencer, Staging};

/// Smallest `max_payload` accepted by [`Packetizer::new`].
pub const MIN_MAX_PAYLOAD: usize = 64;
/// Largest `max_payload` accepted by [`Packetizer::new`] (fits a UDP datagram with the RTP header).
pub const MAX_MAX_PAYLOAD: usize = 65_000;

/// Why a track cannot be packetized, or a sample was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PacketizeError {
    /// This crate has no packetizer for the codec (or for this variant of it).
    #[error("{0:?} packetization is not supported")]
    Unsupported(Codec),
    /// The codec configuration record (or other track parameter) is unusable.
    #[error("bad {codec:?} configuration: {reason}")]
    BadConfig {
        /// Codec of the track.
        codec: Codec,
        /// What is wrong.
        reason: &'static str,
    },
    /// A sample is not in the format the container promised (truncated NAL units, empty frame, …).
    #[error("malformed {codec:?} sample: {reason}")]
    MalformedSample {
        /// Codec of the track.
        codec: Codec,
        /// What is wrong.
        reason: &'static str,
    },
    /// A frame that the payload format cannot fragment is larger than one packet may carry.
    #[error("{codec:?} frame of {size} bytes does not fit in a {max}-byte payload")]
    FrameTooLarge {
        /// Codec of the track.
        codec: Codec,
        /// Size of the frame in bytes.
        size: usize,
        /// Largest payload the packetizer may produce.
        max: usize,
    },
    /// `max_payload` is outside [`MIN_MAX_PAYLOAD`]..=[`MAX_MAX_PAYLOAD`].
    #[error("max_payload {0} is outside {MIN_MAX_PAYLOAD}..={MAX_MAX_PAYLOAD}")]
    BadMaxPayload(usize),
}

/// Shorthand for [`PacketizeError::BadConfig`].
fn bad_config(codec: Codec, reason: &'static str) -> PacketizeError {
    PacketizeError::BadConfig { codec, reason }
}

/// Shorthand for [`PacketizeError::MalformedSample`].
fn malformed(codec: Codec, reason: &'static str) -> PacketizeError {
    PacketizeError::MalformedSample { codec, reason }
}

/// The codec-specific half of a [`Packetizer`].
#[derive(Debug, Clone)]
enum Payloader {
    H264(h264::H264),
    H265(h265::H265),
    Aac(aac::Aac),
    Opus(opus::Opus),
    G711(g711::G711),
    Vp8(vp8::Vp8),
    Vp9(vp9::Vp9),
    Av1(av1::Av1),
}

/// Turns a container's samples (access units) of one track into RTP packets (RFC 6184 H.264
/// packetization-mode=1 with STAP-A/FU-A, RFC 7798 H.265 with AP/FU, RFC 3640 AAC-hbr, RFC 7587 Opus,
/// RFC 3551 PCMU/PCMA, RFC 7741 VP8, RFC 9628 VP9, and AV1 per the AOM RTP spec).
#[derive(Debug, Clone)]
pub struct Packetizer {
    codec: Codec,
    payload_type: u8,
    max_payload: usize,
    clock_rate: u32,
    channels: Option<u16>,
    width: Option<u32>,
    height: Option<u32>,
    sequencer: Sequencer,
    payloader: Payloader,
}

impl Packetizer {
    /// A packetizer for the track described by `params`, writing RTP packets with `payload_type` (7 bits),
    /// `ssrc` and sequence numbers from `initial_sequence`, each payload at most `max_payload` bytes
    /// (e.g. 1400; the RTP header adds 12).
    pub fn new(
        params: &CodecParams,
        payload_type: u8,
        ssrc: u32,
        initial_sequence: u16,
        max_payload: usize,
    ) -> Result<Self, PacketizeError> {
        if !(MIN_MAX_PAYLOAD..=MAX_MAX_PAYLOAD).contains(&max_payload) {
            return Err(PacketizeError::BadMaxPayload(max_payload));
        }
        let mut clock_rate = params.clock_rate();
        let mut channels = params.channels;
        let (mut width, mut height) = (params.width, params.height);
        let payloader = match params.codec {
            Codec::H264 => {
                let p = h264::H264::new(&params.config)?;
                if width.is_none() || height.is_none() {
                    if let Some((w, h)) = p.dimensions() {
                        (width, height) = (Some(w), Some(h));
                    }
                }
                Payloader::H264(p)
            }
            Codec::H265 => Payloader::H265(h265::H265::new(&params.config)?),
            Codec::Aac => {
                let p = aac::Aac::new(&params.config)?;
                if clock_rate == 0 {
                    return Err(bad_config(Codec::Aac, "unknown sample rate"));
                }
                // The AudioSpecificConfig is authoritative: MP4's stsd channelcount is
                // written as 2 by many muxers (ffmpeg in ISO mode) even for mono.
                channels = p.channels().or(channels.filter(|&c| c > 0));
                Payloader::Aac(p)
            }
            Codec::Opus => {
                let p = opus::Opus::new(&params.config, channels);
                channels = Some(p.channels());
                Payloader::Opus(p)
            }
            Codec::Pcmu | Codec::Pcma => {
                if clock_rate == 0 {
                    return Err(bad_config(params.codec, "sample rate 0"));
                }
                let ch = channels.unwrap_or(1);
                if ch == 0 {
                    return Err(bad_config(params.codec, "zero channels"));
                }
                channels = Some(ch);
                Payloader::G711(g711::G711::new(ch))
            }
            Codec::Vp8 => Payloader::Vp8(vp8::Vp8::default()),
            Codec::Vp9 => Payloader::Vp9(vp9::Vp9::default()),
            Codec::Av1 => Payloader::Av1(av1::Av1::new(&params.config)?),
        };
        if params.codec.is_video() {
            clock_rate = 90_000;
        }
        Ok(Packetizer {
            codec: params.codec,
            payload_type: payload_type & 0x7f,
            max_payload,
            clock_rate,
            channels,
            width,
            height,
            sequencer: Sequencer::new(payload_type, ssrc, initial_sequence),
            payloader,
        })
    }

    /// Codec of the track.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// RTP payload type written in every packet.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// `a=rtpmap` value, e.g. "96 H264/90000", "97 MPEG4-GENERIC/48000/2", "98 opus/48000/2", "0 PCMU/8000".
    pub fn rtpmap(&self) -> String {
        let name = self.codec.encoding_name();
        let pt = self.payload_type;
        let rate = self.clock_rate;
        match (self.codec, self.channels) {
            (Codec::Opus, _) => format!("{pt} opus/48000/2"),
            (Codec::Aac, Some(ch)) => format!("{pt} {name}/{rate}/{ch}"),
            (Codec::Pcmu | Codec::Pcma, Some(ch)) if ch > 1 => format!("{pt} {name}/{rate}/{ch}"),
            _ => format!("{pt} {name}/{rate}"),
        }
    }

    /// `a=fmtp` value if the codec has one, e.g. "96 packetization-mode=1;profile-level-id=42C01E;
    /// sprop-parameter-sets=Z0LAHtkD...,aMuMsg==" (H.265: sprop-vps/sps/pps; AAC:
    /// "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190").
    pub fn fmtp(&self) -> Option<String> {
        let params = match &self.payloader {
            Payloader::H264(p) => Some(p.fmtp()),
            Payloader::H265(p) => Some(p.fmtp()),
            Payloader::Aac(p) => Some(p.fmtp()),
            Payloader::Opus(p) => Some(p.fmtp()),
            Payloader::Av1(p) => p.fmtp(),
            Payloader::G711(_) | Payloader::Vp8(_) | Payloader::Vp9(_) => None,
        }?;
        Some(format!("{} {params}", self.payload_type))
    }

    /// Full SDP media section lines except a=control: "m=video 0 RTP/AVP 96\r\na=rtpmap:...\r\na=fmtp:...\r\n",
    /// plus "a=framesize:PT W-H" for video whose size is known.
    pub fn sdp_media(&self) -> String {
        let mut s = format!(
            "m={} 0 RTP/AVP {}\r\na=rtpmap:{}\r\n",
            self.codec.media_type(),
            self.payload_type,
            self.rtpmap()
        );
        if let Some(fmtp) = self.fmtp() {
            s.push_str(&format!("a=fmtp:{fmtp}\r\n"));
        }
        if let (true, Some(w), Some(h)) = (self.codec.is_video(), self.width, self.height) {
            s.push_str(&format!("a=framesize:{} {w}-{h}\r\n", self.payload_type));
        }
        s
    }

    /// RTP clock rate of the stream (timestamps passed to [`Packetizer::packetize`] are in this unit).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Packetizes one sample. Sample data is as stored in MP4/Matroska: for H.264/H.265 length-prefixed NAL
    /// units (NAL length size taken from avcC/hvcC, usually 4); for AAC one raw AAC frame (no ADTS);
    /// Opus/VP8/VP9/AV1/G.711 raw. Appends complete RTP packets (12-byte header: V=2, PT, seq (incrementing,
    /// wrapping), timestamp = rtp_timestamp, SSRC; marker bit on the last packet of the access unit for video,
    /// on every packet for audio) to `out`. For H.264/H.265 keyframes, the parameter sets from the config
    /// record are sent in-band first (STAP-A / AP aggregation) so a decoder joining at any keyframe can start.
    ///
    /// On error nothing is appended and no sequence number is used. G.711 samples longer than one packet
    /// are split, later packets' timestamps advanced by the samples before them; an AAC frame larger than
    /// one packet is fragmented per RFC 3640 with the marker on its last fragment only.
    pub fn packetize(
        &mut self,
        data: &[u8],
        rtp_timestamp: u32,
        keyframe: bool,
        out: &mut Vec<Bytes>,
    ) -> Result<(), PacketizeError> {
        let mut staging = Staging::default();
        let max = self.max_payload;
        let ts = rtp_timestamp;
        match &mut self.payloader {
            Payloader::H264(p) => p.packetize(data, ts, keyframe, max, &mut staging)?,
            Payloader::H265(p) => p.packetize(data, ts, keyframe, max, &mut staging)?,
            Payloader::Aac(p) => p.packetize(data, ts, max, &mut staging)?,
            Payloader::Opus(p) => p.packetize(data, ts, max, &mut staging)?,
            Payloader::G711(p) => p.packetize(data, self.codec, ts, max, &mut staging)?,
            Payloader::Vp8(p) => p.packetize(data, ts, max, &mut staging)?,
            Payloader::Vp9(p) => p.packetize(data, ts, keyframe, max, &mut staging)?,
            Payloader::Av1(p) => p.packetize(data, ts, keyframe, max, &mut staging)?,
        }
        self.sequencer.commit(staging, out);
        Ok(())
    }

    /// Sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.sequencer.next_sequence()
    }
}

/// Hex-encodes bytes in uppercase, as SDP `profile-level-id`/`config` values are written.
fn hex_upper(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02X}")).collect()
}

/// Base64-encodes bytes (standard alphabet, padded), as `sprop-*` values are written.
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyframe::starts_keyframe;
    use proptest::prelude::*;

    const ALL: [Codec; 9] = [
        Codec::H264,
        Codec::H265,
        Codec::Aac,
        Codec::Opus,
        Codec::Pcmu,
        Codec::Pcma,
        Codec::Vp8,
        Codec::Vp9,
        Codec::Av1,
    ];

    /// A real configuration record for each codec.
    fn real_config(codec: Codec) -> Bytes {
        Bytes::from_static(match codec {
            Codec::H264 => include_bytes!("../tests/data/h264.avcc"),
            Codec::H265 => include_bytes!("../tests/data/h265.hvcc"),
            Codec::Aac => include_bytes!("../tests/data/aac.asc"),
            Codec::Opus => include_bytes!("../tests/data/opus.dops"),
            Codec::Av1 => include_bytes!("../tests/data/av1.av1c"),
            Codec::Vp9 => include_bytes!("../tests/data/vp9.vpcc"),
            Codec::Vp8 | Codec::Pcmu | Codec::Pcma => &[],
        })
    }

    #[test]
    fn max_payload_bounds() {
        let params = CodecParams::new(Codec::Pcmu, Bytes::new());
        assert_eq!(
            Packetizer::new(&params, 0, 0, 0, 10).unwrap_err(),
            PacketizeError::BadMaxPayload(10)
        );
        assert!(Packetizer::new(&params, 0, 0, 0, MAX_MAX_PAYLOAD + 1).is_err());
        assert!(Packetizer::new(&params, 0, 0, 0, MIN_MAX_PAYLOAD).is_ok());
    }

    #[test]
    fn sequence_numbers_continue_across_samples_and_wrap() {
        let params = CodecParams::new(Codec::Pcma, Bytes::new());
        let mut p = Packetizer::new(&params, 8, 0, 65_534, 100).unwrap();
        let mut out = Vec::new();
        for i in 0..4u32 {
            p.packetize(&[0xd5; 160], i * 160, true, &mut out).unwrap();
        }
        let seqs: Vec<u16> = out
            .iter()
            .map(|b| u16::from_be_bytes([b[2], b[3]]))
            .collect();
        assert_eq!(seqs, [65_534, 65_535, 0, 1, 2, 3, 4, 5]);
        assert_eq!(p.next_sequence(), 6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Packetizing arbitrary bytes with a real configuration returns an error (emitting nothing) or
        /// packets within the size limit; keyframe detection on them does not panic.
        #[test]
        fn arbitrary_samples_never_panic(
            codec in proptest::sample::select(&ALL[..]),
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            key: bool,
            ts: u32,
            max in MIN_MAX_PAYLOAD..1500,
        ) {
            let params = CodecParams::new(codec, real_config(codec));
            let Ok(mut p) = Packetizer::new(&params, 96, 1, 0, max) else {
                return Ok(());
            };
            let mut out = Vec::new();
            match p.packetize(&data, ts, key, &mut out) {
                Ok(()) => prop_assert!(out.iter().all(|b| b.len() <= max + 12 && b.len() > 12)),
                Err(_) => prop_assert!(out.is_empty()),
            }
            for b in &out {
                let _ = starts_keyframe(codec, &b[12..]);
            }
            prop_assert_eq!(usize::from(p.next_sequence()), out.len());
        }

        /// Arbitrary configuration records are refused or accepted without panicking, and so is SDP output.
        #[test]
        fn arbitrary_configs_never_panic(
            codec in proptest::sample::select(&ALL[..]),
            config in proptest::collection::vec(any::<u8>(), 0..300),
            data in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let params = CodecParams::new(codec, config);
            let _ = params.clock_rate();
            if let Ok(mut p) = Packetizer::new(&params, 96, 1, 0, 200) {
                let _ = p.sdp_media();
                let mut out = Vec::new();
                let _ = p.packetize(&data, 0, true, &mut out);
            }
        }

        /// Keyframe detection never panics on arbitrary payloads.
        #[test]
        fn arbitrary_payloads_never_panic(
            codec in proptest::sample::select(&ALL[..]),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = starts_keyframe(codec, &payload);
        }

        /// Well-formed H.264/H.265 samples of random NAL sizes always packetize within the limit.
        #[test]
        fn structured_nal_samples(
            h265: bool,
            sizes in proptest::collection::vec(2usize..4000, 1..6),
            types in proptest::collection::vec(any::<u8>(), 6),
            max in MIN_MAX_PAYLOAD..1500,
        ) {
            let codec = if h265 { Codec::H265 } else { Codec::H264 };
            let mut sample = Vec::new();
            for (size, t) in sizes.iter().zip(&types) {
                sample.extend_from_slice(&(*size as u32).to_be_bytes());
                let mut nal = vec![0x5a; *size];
                nal[0] = t & 0x7f;
                sample.extend_from_slice(&nal);
            }
            let mut p = Packetizer::new(&CodecParams::new(codec, real_config(codec)), 96, 1, 0, max).unwrap();
            let mut out = Vec::new();
            p.packetize(&sample, 0, true, &mut out).unwrap();
            prop_assert!(out.len() >= sizes.len());
            prop_assert!(out.iter().all(|b| b.len() <= max + 12));
            let markers = out.iter().filter(|b| b[1] & 0x80 != 0).count();
            prop_assert_eq!(markers, 1);
            prop_assert!(out.last().is_some_and(|b| b[1] & 0x80 != 0));
        }
    }
}
