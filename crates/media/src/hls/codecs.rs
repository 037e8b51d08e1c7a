//! RFC 6381 `CODECS` strings of the carried tracks, for the multivariant playlist
//! ([`super::HlsMuxer::multivariant`]): what a player checks before it fetches a byte.

use sluice_codec::{Codec, CodecParams};

/// The RFC 6381 codec string of a track from its configuration record: `avc1.PPCCLL`,
/// `hvc1.…` (ISO/IEC 14496-15 Annex E), `av01.P.LLT.DD` (AV1-ISOBMFF), `vp09.PP.LL.DD`
/// (VP codec ISO media file format), `mp4a.40.AOT`, `opus`. None when the record is too
/// short to say (or the codec is not carried in HLS).
pub fn rfc6381(p: &CodecParams) -> Option<String> {
    let c = &p.config;
    match p.codec {
        Codec::H264 => {
            let b = c.get(1..4)?;
            Some(format!("avc1.{:02x}{:02x}{:02x}", b[0], b[1], b[2]))
        }
        Codec::H265 => {
            let b1 = *c.get(1)?;
            let space = ["", "A", "B", "C"][usize::from(b1 >> 6)];
            let tier = if b1 & 0x20 != 0 { 'H' } else { 'L' };
            let profile = b1 & 0x1f;
            let compat = u32::from_be_bytes(c.get(2..6)?.try_into().ok()?).reverse_bits();
            let constraints = c.get(6..12)?;
            let level = *c.get(12)?;
            let mut s = format!("hvc1.{space}{profile}.{compat:X}.{tier}{level}");
            let used = constraints
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            for b in constraints.iter().take(used) {
                s.push_str(&format!(".{b:02X}"));
            }
            Some(s)
        }
        Codec::Av1 => {
            let (b1, b2) = (*c.get(1)?, *c.get(2)?);
            let depth = match (b2 & 0x40 != 0, b2 & 0x20 != 0) {
                (false, _) => 8,
                (true, false) => 10,
                (true, true) => 12,
            };
            let tier = if b2 & 0x80 != 0 { 'H' } else { 'M' };
            Some(format!(
                "av01.{}.{:02}{tier}.{depth:02}",
                b1 >> 5,
                b1 & 0x1f
            ))
        }
        Codec::Vp9 => {
            // vpcC body: version and flags, then profile, level, bit depth (high nibble).
            let b = c.get(4..7)?;
            Some(format!("vp09.{:02}.{:02}.{:02}", b[0], b[1], b[2] >> 4))
        }
        Codec::Aac => Some(format!("mp4a.40.{}", c.first()? >> 3)),
        Codec::Opus => Some("opus".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(codec: Codec, config: &'static [u8]) -> Option<String> {
        rfc6381(&CodecParams::new(codec, config))
    }

    #[test]
    fn codec_strings() {
        let avcc: &[u8] = include_bytes!("../../../codec/tests/data/h264.avcc");
        assert!(of(Codec::H264, avcc).unwrap().starts_with("avc1."));
        let hvcc: &[u8] = include_bytes!("../../../codec/tests/data/h265.hvcc");
        let h = of(Codec::H265, hvcc).unwrap();
        assert!(
            h.starts_with("hvc1.1.6.L") || h.starts_with("hvc1.1.2.L"),
            "{h}"
        );
        assert_eq!(
            of(Codec::Av1, &[0x81, 0x08, 0x0c, 0]).unwrap(),
            "av01.0.08M.08"
        );
        assert_eq!(
            of(Codec::Av1, &[0x81, 0x4d, 0xcc, 0]).unwrap(),
            "av01.2.13H.10"
        );
        assert_eq!(
            of(Codec::Vp9, &[1, 0, 0, 0, 0, 30, 0x82, 2, 2, 2, 0, 0]).unwrap(),
            "vp09.00.30.08"
        );
        assert_eq!(of(Codec::Aac, &[0x11, 0x90]).unwrap(), "mp4a.40.2");
        assert_eq!(of(Codec::Opus, &[]).unwrap(), "opus");
        assert_eq!(of(Codec::Vp9, &[1, 0]), None);
        assert_eq!(of(Codec::Pcmu, &[]), None);
    }
}
