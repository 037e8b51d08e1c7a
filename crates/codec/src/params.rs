//! Track parameters as read from a container.

use bytes::Bytes;

use crate::asc::AudioSpecificConfig;

/// Codec of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC (RFC 6184).
    H264,
    /// H.265 / HEVC (RFC 7798).
    H265,
    /// MPEG-4 AAC (RFC 3640, AAC-hbr).
    Aac,
    /// Opus (RFC 7587).
    Opus,
    /// G.711 µ-law (RFC 3551).
    Pcmu,
    /// G.711 A-law (RFC 3551).
    Pcma,
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// AV1 (AOM "RTP Payload Format for AV1").
    Av1,
}

impl Codec {
    /// `"video"` or `"audio"`.
    pub fn media_type(self) -> &'static str {
        if self.is_video() {
            "video"
        } else {
            "audio"
        }
    }

    /// Whether this is a video codec.
    pub fn is_video(self) -> bool {
        matches!(
            self,
            Codec::H264 | Codec::H265 | Codec::Vp8 | Codec::Vp9 | Codec::Av1
        )
    }

    /// The SDP encoding name used in `a=rtpmap` (e.g. `"H264"`, `"MPEG4-GENERIC"`, `"opus"`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
            Codec::Aac => "MPEG4-GENERIC",
            Codec::Opus => "opus",
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Av1 => "AV1",
        }
    }
}

/// What a packetizer needs to know about a track, as read from a container.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecParams {
    /// Codec of the track.
    pub codec: Codec,
    /// Codec configuration record as stored in the container: H.264 `avcC` (AVCDecoderConfigurationRecord),
    /// H.265 `hvcC`, AAC AudioSpecificConfig, Opus `dOps`/OpusHead (may be empty), AV1 `av1C`, VP8/VP9 empty
    /// or vpcC. Empty for G.711.
    pub config: Bytes,
    /// Picture width in pixels, if the container says.
    pub width: Option<u32>,
    /// Picture height in pixels, if the container says.
    pub height: Option<u32>,
    /// Audio sample rate in Hz, if the container says.
    pub sample_rate: Option<u32>,
    /// Audio channel count, if the container says.
    pub channels: Option<u16>,
}

impl CodecParams {
    /// Parameters with only the codec and configuration record set.
    pub fn new(codec: Codec, config: impl Into<Bytes>) -> Self {
        CodecParams {
            codec,
            config: config.into(),
            width: None,
            height: None,
            sample_rate: None,
            channels: None,
        }
    }

    /// RTP clock rate per the codec's RTP spec (90000 video, AAC = sample rate, Opus 48000, G.711 8000).
    ///
    /// AAC uses `sample_rate`, else the AudioSpecificConfig's rate; it is 0 when neither is known (the
    /// packetizer refuses such a track). G.711 uses `sample_rate` when the container gives one, else 8000.
    pub fn clock_rate(&self) -> u32 {
        match self.codec {
            Codec::H264 | Codec::H265 | Codec::Vp8 | Codec::Vp9 | Codec::Av1 => 90_000,
            Codec::Opus => 48_000,
            Codec::Pcmu | Codec::Pcma => self.sample_rate.unwrap_or(8_000),
            Codec::Aac => self
                .sample_rate
                .filter(|&r| r > 0)
                .or_else(|| {
                    AudioSpecificConfig::parse(&self.config)
                        .ok()
                        .map(|a| a.sample_rate)
                })
                .unwrap_or(0),
        }
    }

    /// "video" or "audio".
    pub fn media_type(&self) -> &'static str {
        self.codec.media_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_rates() {
        assert_eq!(
            CodecParams::new(Codec::H264, Bytes::new()).clock_rate(),
            90_000
        );
        assert_eq!(
            CodecParams::new(Codec::Opus, Bytes::new()).clock_rate(),
            48_000
        );
        assert_eq!(
            CodecParams::new(Codec::Pcmu, Bytes::new()).clock_rate(),
            8_000
        );
        let aac = CodecParams::new(Codec::Aac, Bytes::from_static(&[0x11, 0x90]));
        assert_eq!(aac.clock_rate(), 48_000);
        let aac = CodecParams {
            sample_rate: Some(44_100),
            ..aac
        };
        assert_eq!(aac.clock_rate(), 44_100);
        assert_eq!(CodecParams::new(Codec::Aac, Bytes::new()).clock_rate(), 0);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            CodecParams::new(Codec::Vp9, Bytes::new()).media_type(),
            "video"
        );
        assert_eq!(
            CodecParams::new(Codec::Pcma, Bytes::new()).media_type(),
            "audio"
        );
    }
}
