//! MPEG-4 AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1), the fields the RTP layer needs.

use crate::bits::BitReader;

const SAMPLE_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

/// The leading fields of an AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioSpecificConfig {
    /// audioObjectType (2 = AAC LC, 5 = SBR, 29 = PS, …).
    pub(crate) object_type: u8,
    /// Sampling frequency in Hz.
    pub(crate) sample_rate: u32,
    /// channelConfiguration (0 = defined in-band; 1..=6 = that many channels; 7 = 8 channels).
    pub(crate) channel_config: u8,
}

impl AudioSpecificConfig {
    /// Parses the leading fields; fails on truncated or reserved values.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, &'static str> {
        const TRUNCATED: &str = "AudioSpecificConfig is truncated";
        let mut r = BitReader::new(data);
        let mut object_type = r.read(5).ok_or(TRUNCATED)?;
        if object_type == 31 {
            object_type = 32 + r.read(6).ok_or(TRUNCATED)?;
        }
        let index = r.read(4).ok_or(TRUNCATED)?;
        let sample_rate = if index == 15 {
            r.read(24).ok_or(TRUNCATED)?
        } else {
            *SAMPLE_RATES
                .get(index as usize)
                .ok_or("reserved samplingFrequencyIndex")?
        };
        if sample_rate == 0 {
            return Err("sample rate 0");
        }
        let channel_config = r.read(4).ok_or(TRUNCATED)?;
        Ok(AudioSpecificConfig {
            object_type: u8::try_from(object_type).map_err(|_| "bad audioObjectType")?,
            sample_rate,
            channel_config: u8::try_from(channel_config).map_err(|_| "bad channelConfiguration")?,
        })
    }

    /// Channel count implied by channelConfiguration, if it is one of the fixed layouts.
    pub(crate) fn channels(&self) -> Option<u16> {
        match self.channel_config {
            1..=6 => Some(u16::from(self.channel_config)),
            7 => Some(8),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ffmpeg_aac_lc_stereo_48k() {
        let asc = AudioSpecificConfig::parse(&[0x11, 0x90, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!(asc.object_type, 2);
        assert_eq!(asc.sample_rate, 48_000);
        assert_eq!(asc.channels(), Some(2));
    }

    #[test]
    fn explicit_rate_and_errors() {
        // AOT 2, index 15, rate 0x00ac44 (44100), channels 1
        let asc = AudioSpecificConfig::parse(&[0x17, 0x80, 0x56, 0x22, 0x08]).unwrap();
        assert_eq!(asc.sample_rate, 44_100);
        assert_eq!(asc.channels(), Some(1));
        assert!(AudioSpecificConfig::parse(&[]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x16, 0x88]).is_err()); // index 13 reserved
    }
}
