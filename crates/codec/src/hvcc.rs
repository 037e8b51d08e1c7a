//! H.265 `hvcC` (HEVCDecoderConfigurationRecord, ISO/IEC 14496-15 §8.3.3.1).

use bytes::Bytes;

use crate::avcc::read_sets;
use crate::cursor::Cursor;

/// NAL unit type of a video parameter set.
pub(crate) const VPS: u8 = 32;
/// NAL unit type of a sequence parameter set.
pub(crate) const SPS: u8 = 33;
/// NAL unit type of a picture parameter set.
pub(crate) const PPS: u8 = 34;

/// What the packetizer takes from an `hvcC` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HevcConfig {
    /// Size in bytes of the NAL unit length fields of samples (1, 2 or 4).
    pub(crate) length_size: usize,
    /// general_profile_idc.
    pub(crate) profile_id: u8,
    /// general_tier_flag.
    pub(crate) tier_flag: u8,
    /// general_level_idc.
    pub(crate) level_id: u8,
    /// Video parameter set NAL units.
    pub(crate) vps: Vec<Bytes>,
    /// Sequence parameter set NAL units.
    pub(crate) sps: Vec<Bytes>,
    /// Picture parameter set NAL units.
    pub(crate) pps: Vec<Bytes>,
}

/// The NAL unit type in an H.265 NAL unit header's first byte.
pub(crate) fn nal_type(first: u8) -> u8 {
    (first >> 1) & 0x3f
}

impl HevcConfig {
    /// Parses an `hvcC` body (without the box header). Arrays other than VPS/SPS/PPS (e.g. SEI) are skipped.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, &'static str> {
        const TRUNCATED: &str = "hvcC is truncated";
        let mut cur = Cursor::new(data);
        let fixed = cur.take(23).ok_or(TRUNCATED)?;
        let [version, ptl, .., level_id, _, _, _, _, _, _, _, _, lengths, num_arrays] = *fixed
        else {
            return Err(TRUNCATED);
        };
        if version != 1 {
            return Err("hvcC configurationVersion is not 1");
        }
        let length_size = usize::from(lengths & 0x03) + 1;
        if length_size == 3 {
            return Err("hvcC lengthSizeMinusOne is 2");
        }
        let mut config = HevcConfig {
            length_size,
            profile_id: ptl & 0x1f,
            tier_flag: (ptl >> 5) & 1,
            level_id,
            vps: Vec::new(),
            sps: Vec::new(),
            pps: Vec::new(),
        };
        for _ in 0..num_arrays {
            let _array_type = cur.u8().ok_or(TRUNCATED)?;
            let count = cur.u16().ok_or(TRUNCATED)?;
            for nal in read_sets(&mut cur, usize::from(count))? {
                if nal.len() < 2 {
                    return Err("NAL unit shorter than its header");
                }
                match nal.first().map(|&b| nal_type(b)) {
                    Some(VPS) => config.vps.push(nal),
                    Some(SPS) => config.sps.push(nal),
                    Some(PPS) => config.pps.push(nal),
                    _ => {}
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HVCC: &[u8] = include_bytes!("../tests/data/h265.hvcc");

    #[test]
    fn parses_x265_record() {
        let c = HevcConfig::parse(HVCC).unwrap();
        assert_eq!(c.length_size, 4);
        assert_eq!(c.profile_id, 1);
        assert_eq!(c.tier_flag, 0);
        assert_eq!((c.vps.len(), c.sps.len(), c.pps.len()), (1, 1, 1));
        assert_eq!(nal_type(c.vps[0][0]), VPS);
    }

    #[test]
    fn rejects_truncated_records() {
        for n in [0, 10, 22, 23, 30, 100, HVCC.len() - 1] {
            assert!(HevcConfig::parse(&HVCC[..n]).is_err(), "prefix {n}");
        }
    }
}
