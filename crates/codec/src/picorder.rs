//! H.264 picture order counts (ITU-T H.264 §8.2.1) of access units in decode order, so a
//! receiver can recover the presentation order of B-frames when the sender's RTP
//! timestamps cannot be trusted (a sender whose RTP clock does not advance, for one).
//!
//! Sans-IO: access units go in (MP4 sample form, as [`crate::Depacketizer`] returns them),
//! picture order counts come out. Parameter sets are learnt from an `avcC` record and from
//! in-band SPS/PPS. Only frame coding with `pic_order_cnt_type` 0 carries reordering; type 2
//! (output order is decode order) gives increasing counts, and type 1 or field coding give
//! `None` (the caller then keeps decode order).

use h264_reader::nal::pps::PicParameterSet;
use h264_reader::nal::slice::{FieldPic, PicOrderCountLsb, SliceHeader};
use h264_reader::nal::sps::{PicOrderCntType, SeqParameterSet};
use h264_reader::nal::{Nal as _, NalHeader, RefNal};
use h264_reader::Context;

use crate::avcc::AvcConfig;

const NON_IDR: u8 = 1;
const IDR: u8 = 5;
const SPS: u8 = 7;
const PPS: u8 = 8;

/// Tracks picture order counts across the access units of one H.264 stream.
pub struct H264PicOrder {
    ctx: Context,
    /// prevPicOrderCntMsb and prevPicOrderCntLsb of the last reference picture (type 0).
    prev_msb: i64,
    prev_lsb: i64,
    /// Decode index within the current IDR period (type 2 and as a fallback order).
    decoded: i64,
}

impl std::fmt::Debug for H264PicOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264PicOrder")
            .field("prev_msb", &self.prev_msb)
            .field("prev_lsb", &self.prev_lsb)
            .finish()
    }
}

impl Default for H264PicOrder {
    fn default() -> Self {
        H264PicOrder {
            ctx: Context::new(),
            prev_msb: 0,
            prev_lsb: 0,
            decoded: 0,
        }
    }
}

/// How many frames an H.264 stream's decode order may run ahead of its presentation order
/// (the VUI's `max_num_reorder_frames`), from an `avcC` record: what a receiver that only
/// has presentation times (RTP timestamps) must wait for before it can give each frame a
/// decode time. Baseline (and constrained baseline) streams have no B-frames: 0. `None`
/// when the record or its SPS cannot be parsed or the SPS does not say.
pub fn h264_reorder_depth(avcc: &[u8]) -> Option<u32> {
    let config = AvcConfig::parse(avcc).ok()?;
    let sps = config.sps.first()?;
    let sps = SeqParameterSet::from_bits(RefNal::new(sps, &[], true).rbsp_bits()).ok()?;
    if let Some(r) = sps
        .vui_parameters
        .as_ref()
        .and_then(|v| v.bitstream_restrictions.as_ref())
    {
        return Some(r.max_num_reorder_frames);
    }
    (u8::from(sps.profile_idc) == 66).then_some(0)
}

/// As [`h264_reorder_depth`], for H.265 from an `hvcC` record: the SPS's
/// `sps_max_num_reorder_pics` of its highest sub-layer (always present in an H.265 SPS).
pub fn h265_reorder_depth(hvcc: &[u8]) -> Option<u32> {
    let config = crate::hvcc::HevcConfig::parse(hvcc).ok()?;
    crate::depacketizer::config::parse_hevc_sps(config.sps.first()?)?.max_num_reorder_pics
}

impl H264PicOrder {
    /// A tracker knowing the parameter sets of an `avcC` record (unparsable records and sets
    /// are ignored: in-band sets may still follow).
    pub fn from_avcc(avcc: &[u8]) -> Self {
        let mut p = H264PicOrder::default();
        if let Ok(c) = AvcConfig::parse(avcc) {
            for nal in c.sps.iter().chain(c.pps.iter()) {
                p.parameter_set(nal);
            }
        }
        p
    }

    /// Learns an SPS or PPS NAL unit (with its header byte); other NAL units are ignored.
    pub fn parameter_set(&mut self, nal: &[u8]) {
        match nal.first().map(|h| h & 0x1f) {
            Some(SPS) => {
                if let Ok(sps) = SeqParameterSet::from_bits(RefNal::new(nal, &[], true).rbsp_bits())
                {
                    self.ctx.put_seq_param_set(sps);
                }
            }
            Some(PPS) => {
                if let Ok(pps) =
                    PicParameterSet::from_bits(&self.ctx, RefNal::new(nal, &[], true).rbsp_bits())
                {
                    self.ctx.put_pic_param_set(pps);
                }
            }
            _ => {}
        }
    }

    /// The picture order count of the next access unit in decode order, given as 4-byte
    /// length-prefixed NAL units; SPS/PPS inside it are learnt first. Counts restart at each
    /// IDR picture. `None` when it has no slice that parses with the known parameter sets,
    /// or codes fields or `pic_order_cnt_type` 1.
    pub fn push(&mut self, au: &[u8]) -> Option<i64> {
        let mut slice: Option<&[u8]> = None;
        let mut rest = au;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            let nal = tail.get(..len)?;
            rest = tail.get(len..).unwrap_or_default();
            match nal.first().map(|h| h & 0x1f) {
                Some(SPS) | Some(PPS) => self.parameter_set(nal),
                Some(NON_IDR) | Some(IDR) if slice.is_none() => slice = Some(nal),
                _ => {}
            }
        }
        let nal = slice?;
        let &h = nal.first()?;
        let idr = h & 0x1f == IDR;
        let is_reference = h & 0x60 != 0;
        let header = NalHeader::new(h).ok()?;
        let (slice, sps, _) = SliceHeader::from_bits(
            &self.ctx,
            &mut RefNal::new(nal, &[], true).rbsp_bits(),
            header,
            None,
        )
        .ok()?;
        if idr {
            self.prev_msb = 0;
            self.prev_lsb = 0;
            self.decoded = 0;
        } else {
            self.decoded += 1;
        }
        if slice.field_pic != FieldPic::Frame {
            return None;
        }
        match (&sps.pic_order_cnt, &slice.pic_order_cnt_lsb) {
            (
                PicOrderCntType::TypeZero {
                    log2_max_pic_order_cnt_lsb_minus4,
                },
                Some(PicOrderCountLsb::Frame(lsb))
                | Some(PicOrderCountLsb::FieldsAbsolute {
                    pic_order_cnt_lsb: lsb,
                    ..
                }),
            ) => {
                let max_lsb = 1i64 << (u32::from(*log2_max_pic_order_cnt_lsb_minus4) + 4);
                let lsb = i64::from(*lsb);
                let msb = if lsb < self.prev_lsb && self.prev_lsb - lsb >= max_lsb / 2 {
                    self.prev_msb + max_lsb
                } else if lsb > self.prev_lsb && lsb - self.prev_lsb > max_lsb / 2 {
                    self.prev_msb - max_lsb
                } else {
                    self.prev_msb
                };
                if is_reference {
                    self.prev_msb = msb;
                    self.prev_lsb = lsb;
                }
                Some(msb + lsb)
            }
            (PicOrderCntType::TypeTwo, _) => Some(2 * self.decoded),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 14 frames of x264 High profile with 2 B-frames (I P B B P B B …), Annex B.
    const STREAM: &[u8] = include_bytes!("../tests/data/h264_bframes.h264");

    /// Annex-B NAL units grouped into access units (each VCL NAL unit starts one: the clip
    /// has one slice per picture), in MP4 sample form.
    fn access_units(stream: &[u8]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut i = 0;
        let mut start = None;
        while i + 3 <= stream.len() {
            if stream[i..i + 3] == [0, 0, 1] {
                if let Some(s) = start {
                    let mut end = i;
                    while end > s && stream[end - 1] == 0 {
                        end -= 1;
                    }
                    nals.push(&stream[s..end]);
                }
                i += 3;
                start = Some(i);
            } else {
                i += 1;
            }
        }
        if let Some(s) = start {
            nals.push(&stream[s..]);
        }
        let mut aus = Vec::new();
        let mut cur = Vec::new();
        for nal in nals {
            cur.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            cur.extend_from_slice(nal);
            if matches!(nal[0] & 0x1f, NON_IDR | IDR) {
                aus.push(std::mem::take(&mut cur));
            }
        }
        aus
    }

    #[test]
    fn x264_b_frames_come_out_in_display_order() {
        let aus = access_units(STREAM);
        assert_eq!(aus.len(), 14);
        let mut order = H264PicOrder::default();
        let pocs: Vec<i64> = aus.iter().map(|au| order.push(au).unwrap()).collect();
        let mut by_poc: Vec<usize> = (0..pocs.len()).collect();
        by_poc.sort_by_key(|&i| pocs[i]);
        let mut rank = vec![0; pocs.len()];
        for (r, &i) in by_poc.iter().enumerate() {
            rank[i] = r;
        }
        // ffprobe: coded pictures 0 2 3 1 5 6 4 8 9 7 11 12 10 13 in display order.
        assert_eq!(rank, [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 13]);
        // An IDR restarts the count.
        assert_eq!(order.push(&aus[0]), Some(0));
    }

    #[test]
    fn the_reorder_depth_comes_from_the_sps() {
        let aus = access_units(STREAM);
        let mut sets = Vec::new();
        let mut rest = &aus[0][..];
        while rest.len() > 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            sets.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        let sps = sets.iter().find(|n| n[0] & 0x1f == SPS).unwrap();
        let pps = sets.iter().find(|n| n[0] & 0x1f == PPS).unwrap();
        let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        avcc.extend_from_slice(sps);
        avcc.push(1);
        avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        avcc.extend_from_slice(pps);
        let depth = h264_reorder_depth(&avcc);
        assert!(matches!(depth, Some(1..=2)), "x264 -bf 2: {depth:?}");
        assert_eq!(h264_reorder_depth(b"garbage"), None);
    }

    #[test]
    fn unknown_parameter_sets_and_garbage_give_none() {
        let aus = access_units(STREAM);
        let mut order = H264PicOrder::from_avcc(b"not an avcC");
        // A P picture before any SPS/PPS.
        assert_eq!(order.push(&aus[1][aus[1].len() - 40..]), None);
        assert_eq!(order.push(&[0, 0, 0, 9, 0x65]), None);
        assert_eq!(order.push(&[]), None);
        assert_eq!(order.push(&[0, 0, 0, 2, 0x41, 0xff]), None);
    }
}
