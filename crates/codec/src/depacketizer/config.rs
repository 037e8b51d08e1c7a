//! Parameter set tracking and the codec configuration records built from them: H.264 `avcC`
//! (ISO/IEC 14496-15 §5.3.3.1) and H.265 `hvcC` (§8.3.3.1), with the picture size from the SPS.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use h264_reader::nal::sps::{ChromaFormat, SeqParameterSet};
use h264_reader::nal::{Nal as _, RefNal};

use crate::bits::BitReader;

/// Most picture parameter sets kept (H.264 allows ids up to 255, H.265 up to 63).
const MAX_PPS: usize = 64;
/// Largest parameter set kept (they are tiny; this only bounds memory).
const MAX_SET: usize = 4096;

/// Removes emulation prevention bytes (`00 00 03` → `00 00`), giving the RBSP.
pub(super) fn unescape(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut zeros = 0;
    for &b in data {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Reads an unsigned Exp-Golomb code (ue(v)), up to 31 leading zeros.
fn ue(r: &mut BitReader<'_>) -> Option<u32> {
    let mut zeros = 0;
    while !r.flag()? {
        zeros += 1;
        if zeros > 31 {
            return None;
        }
    }
    if zeros == 0 {
        return Some(0);
    }
    let rest = r.read(zeros)?;
    Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
}

/// The latest parameter sets of a stream: VPS (H.265), SPS, and PPS by id.
#[derive(Debug, Clone, Default)]
pub(super) struct ParamSets {
    pub(super) vps: Option<Bytes>,
    pub(super) sps: Option<Bytes>,
    pub(super) pps: BTreeMap<u32, Bytes>,
}

impl ParamSets {
    /// Stores a VPS (replacing the previous one).
    pub(super) fn set_vps(&mut self, nal: &[u8]) {
        if (2..=MAX_SET).contains(&nal.len()) {
            self.vps = Some(Bytes::copy_from_slice(nal));
        }
    }

    /// Stores an SPS (replacing the previous one).
    pub(super) fn set_sps(&mut self, nal: &[u8], header_len: usize) {
        if (header_len + 3..=MAX_SET).contains(&nal.len()) {
            self.sps = Some(Bytes::copy_from_slice(nal));
        }
    }

    /// Stores a PPS under its id (the first ue(v) after the `header_len`-byte NAL header).
    pub(super) fn set_pps(&mut self, nal: &[u8], header_len: usize) {
        if nal.len() <= header_len || nal.len() > MAX_SET {
            return;
        }
        let rbsp = unescape(nal.get(header_len..).unwrap_or_default());
        let Some(id) = ue(&mut BitReader::new(&rbsp)) else {
            return;
        };
        if self.pps.len() >= MAX_PPS && !self.pps.contains_key(&id) {
            return;
        }
        self.pps.insert(id, Bytes::copy_from_slice(nal));
    }
}

/// Appends `sets` as u16-length-prefixed NAL units.
fn put_sets<'a>(out: &mut BytesMut, sets: impl Iterator<Item = &'a Bytes>) {
    for s in sets {
        out.put_u16(u16::try_from(s.len()).unwrap_or(0));
        out.extend_from_slice(s);
    }
}

/// An `avcC` body from an SPS and PPSs, with the picture size if the SPS parses. None without both.
pub(super) fn avcc(sets: &ParamSets) -> Option<(Bytes, Option<(u32, u32)>)> {
    let sps = sets.sps.as_ref()?;
    if sets.pps.is_empty() {
        return None;
    }
    let &[_, profile, compat, level, ..] = &sps[..] else {
        return None;
    };
    let parsed = SeqParameterSet::from_bits(RefNal::new(sps, &[], true).rbsp_bits()).ok();
    let mut out = BytesMut::new();
    out.put_slice(&[1, profile, compat, level, 0xff, 0xe1]);
    put_sets(&mut out, std::iter::once(sps));
    out.put_u8(u8::try_from(sets.pps.len()).unwrap_or(u8::MAX));
    put_sets(&mut out, sets.pps.values());
    if matches!(profile, 100 | 110 | 122 | 144) {
        if let Some(p) = &parsed {
            let c = &p.chroma_info;
            let chroma = match c.chroma_format {
                ChromaFormat::Monochrome => 0,
                ChromaFormat::YUV420 => 1,
                ChromaFormat::YUV422 => 2,
                ChromaFormat::YUV444 => 3,
                ChromaFormat::Invalid(_) => 1,
            };
            out.put_slice(&[
                0xfc | chroma,
                0xf8 | (c.bit_depth_luma_minus8 & 7),
                0xf8 | (c.bit_depth_chroma_minus8 & 7),
                0,
            ]);
        }
    }
    let dims = parsed.and_then(|p| p.pixel_dimensions().ok());
    Some((out.freeze(), dims))
}

/// What `hvcC` needs from an H.265 SPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HevcSps {
    /// general_profile_space..general_level_idc: the 12 bytes of the general profile_tier_level.
    pub(super) ptl: [u8; 12],
    /// sps_max_sub_layers_minus1 + 1.
    pub(super) temporal_layers: u8,
    /// sps_temporal_id_nesting_flag.
    pub(super) temporal_id_nested: bool,
    /// chroma_format_idc.
    pub(super) chroma_format_idc: u8,
    /// bit_depth_luma_minus8.
    pub(super) bit_depth_luma_minus8: u8,
    /// bit_depth_chroma_minus8.
    pub(super) bit_depth_chroma_minus8: u8,
    /// Picture width after the conformance window.
    pub(super) width: u32,
    /// Picture height after the conformance window.
    pub(super) height: u32,
    /// sps_max_num_reorder_pics of the highest sub-layer: how many pictures may precede
    /// one in decode order and follow it in output order. None when the SPS ends before it.
    pub(crate) max_num_reorder_pics: Option<u32>,
}

/// Parses an H.265 SPS NAL unit (with its 2-byte header) up to the bit depths (ITU-T H.265 §7.3.2.2).
pub(crate) fn parse_hevc_sps(nal: &[u8]) -> Option<HevcSps> {
    let rbsp = unescape(nal.get(2..)?);
    let first = *rbsp.first()?;
    let max_sub_layers_minus1 = (first >> 1) & 7;
    let ptl: [u8; 12] = rbsp.get(1..13)?.try_into().ok()?;
    let mut r = BitReader::new(rbsp.get(13..)?);
    let mut present = Vec::new();
    for _ in 0..max_sub_layers_minus1 {
        present.push((r.flag()?, r.flag()?));
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.read(2)?;
        }
    }
    for (profile, level) in present {
        if profile {
            // 88 bits of sub-layer profile.
            r.read(32)?;
            r.read(32)?;
            r.read(24)?;
        }
        if level {
            r.read(8)?;
        }
    }
    let _sps_id = ue(&mut r)?;
    let chroma_format_idc = ue(&mut r)?;
    if chroma_format_idc > 3 {
        return None;
    }
    let separate = chroma_format_idc == 3 && r.flag()?;
    let pic_width = ue(&mut r)?;
    let pic_height = ue(&mut r)?;
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        (left, right, top, bottom) = (ue(&mut r)?, ue(&mut r)?, ue(&mut r)?, ue(&mut r)?);
    }
    let bit_depth_luma_minus8 = ue(&mut r)?;
    let bit_depth_chroma_minus8 = ue(&mut r)?;
    let (sub_w, sub_h): (u32, u32) = match (chroma_format_idc, separate) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let crop_w = u64::from(sub_w) * (u64::from(left) + u64::from(right));
    let crop_h = u64::from(sub_h) * (u64::from(top) + u64::from(bottom));
    let max_num_reorder_pics = (|| {
        let _log2_max_poc_lsb_minus4 = ue(&mut r)?;
        let all_layers = r.flag()?;
        let mut reorder = None;
        for _ in (if all_layers { 0 } else { max_sub_layers_minus1 })..=max_sub_layers_minus1 {
            let _max_dec_pic_buffering_minus1 = ue(&mut r)?;
            reorder = Some(ue(&mut r)?);
            let _max_latency_increase_plus1 = ue(&mut r)?;
        }
        reorder
    })();
    Some(HevcSps {
        max_num_reorder_pics,
        ptl,
        temporal_layers: max_sub_layers_minus1 + 1,
        temporal_id_nested: first & 1 != 0,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma_minus8: u8::try_from(bit_depth_luma_minus8.min(7)).ok()?,
        bit_depth_chroma_minus8: u8::try_from(bit_depth_chroma_minus8.min(7)).ok()?,
        width: u32::try_from(u64::from(pic_width).checked_sub(crop_w)?).ok()?,
        height: u32::try_from(u64::from(pic_height).checked_sub(crop_h)?).ok()?,
    })
}

/// NAL unit types of the H.265 parameter sets.
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;

/// An `hvcC` body from VPS, SPS and PPSs, with the picture size. None unless all three are known and the
/// SPS parses.
pub(super) fn hvcc(sets: &ParamSets) -> Option<(Bytes, (u32, u32))> {
    let vps = sets.vps.as_ref()?;
    let sps = sets.sps.as_ref()?;
    if sets.pps.is_empty() {
        return None;
    }
    let s = parse_hevc_sps(sps)?;
    let mut out = BytesMut::new();
    out.put_u8(1);
    out.put_slice(&s.ptl);
    out.put_slice(&[
        0xf0,
        0x00, // min_spatial_segmentation_idc 0
        0xfc, // parallelismType 0 (unknown)
        0xfc | s.chroma_format_idc,
        0xf8 | s.bit_depth_luma_minus8,
        0xf8 | s.bit_depth_chroma_minus8,
        0,
        0, // avgFrameRate unknown
        ((s.temporal_layers & 7) << 3) | (u8::from(s.temporal_id_nested) << 2) | 3,
        3, // numOfArrays
    ]);
    for (ty, list) in [
        (HEVC_VPS, vec![vps]),
        (HEVC_SPS, vec![sps]),
        (HEVC_PPS, sets.pps.values().collect()),
    ] {
        out.put_u8(0x80 | ty);
        out.put_u16(u16::try_from(list.len()).unwrap_or(0));
        put_sets(&mut out, list.into_iter());
    }
    Some((out.freeze(), (s.width, s.height)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avcc::AvcConfig;
    use crate::hvcc::HevcConfig;

    const AVCC: &[u8] = include_bytes!("../../tests/data/h264.avcc");
    const HVCC: &[u8] = include_bytes!("../../tests/data/h265.hvcc");

    #[test]
    fn unescapes_and_reads_exp_golomb() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3]), [0, 0, 1, 0, 0]);
        // 1 → 0, 010 → 1, 011 → 2, 00100 → 3
        let mut r = BitReader::new(&[0b1010_0110, 0b0100_0000]);
        assert_eq!(
            (ue(&mut r), ue(&mut r), ue(&mut r), ue(&mut r)),
            (Some(0), Some(1), Some(2), Some(3))
        );
        assert_eq!(ue(&mut BitReader::new(&[0, 0, 0, 0, 0])), None);
    }

    #[test]
    fn rebuilds_x264_avcc() {
        let orig = AvcConfig::parse(AVCC).unwrap();
        let mut sets = ParamSets::default();
        sets.set_sps(&orig.sps[0], 1);
        sets.set_pps(&orig.pps[0], 1);
        let (rec, dims) = avcc(&sets).unwrap();
        assert_eq!(dims, Some((640, 360)));
        let parsed = AvcConfig::parse(&rec).unwrap();
        assert_eq!(parsed.length_size, 4);
        assert_eq!(parsed.sps, orig.sps);
        assert_eq!(parsed.pps, orig.pps);
        // x264's record is the same bytes (High profile: with the chroma/bit depth extension).
        assert_eq!(&rec[..], AVCC);
    }

    #[test]
    fn rebuilds_x265_hvcc() {
        let orig = HevcConfig::parse(HVCC).unwrap();
        let mut sets = ParamSets::default();
        sets.set_vps(&orig.vps[0]);
        sets.set_sps(&orig.sps[0], 2);
        sets.set_pps(&orig.pps[0], 2);
        let (rec, dims) = hvcc(&sets).unwrap();
        assert_eq!(dims, (320, 240));
        let sps = parse_hevc_sps(&orig.sps[0]).unwrap();
        assert!(
            matches!(sps.max_num_reorder_pics, Some(0..=16)),
            "{:?}",
            sps.max_num_reorder_pics
        );
        let parsed = HevcConfig::parse(&rec).unwrap();
        assert_eq!(
            (parsed.profile_id, parsed.tier_flag, parsed.level_id),
            (orig.profile_id, orig.tier_flag, orig.level_id)
        );
        assert_eq!(
            (parsed.vps, parsed.sps, parsed.pps),
            (orig.vps, orig.sps, orig.pps)
        );
        // General profile/tier/level, chroma format and bit depths match the encoder's record.
        assert_eq!(rec[..13], HVCC[..13]);
        assert_eq!(rec[16..19], HVCC[16..19]);
    }

    #[test]
    fn incomplete_sets_give_nothing() {
        let mut sets = ParamSets::default();
        assert!(avcc(&sets).is_none());
        sets.set_sps(&[0x67, 0x42, 0, 0x1e], 1);
        assert!(avcc(&sets).is_none());
        sets.set_pps(&[0x68, 0xce], 1);
        let (rec, dims) = avcc(&sets).unwrap();
        assert!(AvcConfig::parse(&rec).is_ok());
        assert_eq!(dims, None);
        assert!(hvcc(&sets).is_none());
        assert!(parse_hevc_sps(&[0x42, 0x01, 0x01]).is_none());
    }
}
