//! H.264 `avcC` (AVCDecoderConfigurationRecord, ISO/IEC 14496-15 §5.3.3.1).

use bytes::Bytes;

use crate::cursor::Cursor;

/// What the packetizer takes from an `avcC` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AvcConfig {
    /// Size in bytes of the NAL unit length fields of samples (1, 2 or 4).
    pub(crate) length_size: usize,
    /// AVCProfileIndication, profile_compatibility, AVCLevelIndication.
    pub(crate) profile_level: [u8; 3],
    /// Sequence parameter set NAL units.
    pub(crate) sps: Vec<Bytes>,
    /// Picture parameter set NAL units.
    pub(crate) pps: Vec<Bytes>,
}

impl AvcConfig {
    /// Parses an `avcC` body (without the box header). Trailing High-profile extension fields are ignored.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, &'static str> {
        const TRUNCATED: &str = "avcC is truncated";
        let mut cur = Cursor::new(data);
        if cur.u8().ok_or(TRUNCATED)? != 1 {
            return Err("avcC configurationVersion is not 1");
        }
        let &[profile, compat, level] = cur.take(3).ok_or(TRUNCATED)? else {
            return Err(TRUNCATED);
        };
        let profile_level = [profile, compat, level];
        let length_size = usize::from(cur.u8().ok_or(TRUNCATED)? & 0x03) + 1;
        if length_size == 3 {
            return Err("avcC lengthSizeMinusOne is 2");
        }
        let num_sps = cur.u8().ok_or(TRUNCATED)? & 0x1f;
        let sps = read_sets(&mut cur, usize::from(num_sps))?;
        let num_pps = cur.u8().ok_or(TRUNCATED)?;
        let pps = read_sets(&mut cur, usize::from(num_pps))?;
        Ok(AvcConfig {
            length_size,
            profile_level,
            sps,
            pps,
        })
    }
}

/// Reads `count` parameter sets, each a u16 length and that many bytes; empty ones are an error.
pub(crate) fn read_sets(cur: &mut Cursor<'_>, count: usize) -> Result<Vec<Bytes>, &'static str> {
    let mut sets = Vec::with_capacity(count.min(32));
    for _ in 0..count {
        let len = cur.u16().ok_or("parameter set length is truncated")?;
        let set = cur
            .take(usize::from(len))
            .ok_or("parameter set runs past the end of the record")?;
        if set.is_empty() {
            return Err("empty parameter set");
        }
        sets.push(Bytes::copy_from_slice(set));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVCC: &[u8] = include_bytes!("../tests/data/h264.avcc");

    #[test]
    fn parses_x264_record() {
        let c = AvcConfig::parse(AVCC).unwrap();
        assert_eq!(c.length_size, 4);
        assert_eq!(c.profile_level, [0x64, 0x00, 0x1e]);
        assert_eq!(c.sps.len(), 1);
        assert_eq!(c.sps[0][0] & 0x1f, 7);
        assert_eq!(c.pps.len(), 1);
        assert_eq!(c.pps[0][0] & 0x1f, 8);
    }

    #[test]
    fn rejects_truncated_records() {
        for n in 0..AVCC.len() - 4 {
            assert!(AvcConfig::parse(&AVCC[..n]).is_err(), "prefix {n}");
        }
    }
}
