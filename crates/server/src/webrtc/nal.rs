//! NAL unit helpers for WebRTC delivery: length-prefixed access units to Annex B with the
//! parameter sets before every keyframe, the parameter sets of `avcC`/`hvcC` records, and
//! the B-slice check a WHEP answer is decided on. Input is untrusted: nothing here indexes
//! unchecked or panics.

use super::feed::VideoCodec;

/// Iterates the NAL units of a 4-byte length-prefixed access unit (stops at a bad length).
fn nal_units(au: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = au;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let nal = tail.get(..len)?;
        rest = tail.get(len..).unwrap_or_default();
        Some(nal)
    })
}

fn nal_type(codec: VideoCodec, nal: &[u8]) -> u8 {
    match (codec, nal.first()) {
        (VideoCodec::H264, Some(b)) => b & 0x1f,
        (VideoCodec::H265, Some(b)) => (b >> 1) & 0x3f,
        _ => 0xff,
    }
}

/// Whether `nal` is a sequence parameter set.
fn is_sps(codec: VideoCodec, nal: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => nal_type(codec, nal) == 7,
        VideoCodec::H265 => nal_type(codec, nal) == 33,
        VideoCodec::Vp8 | VideoCodec::Vp9 | VideoCodec::Av1 => false,
    }
}

/// The access unit `au` (4-byte length-prefixed NAL units) as an Annex B byte stream,
/// with `sets` (parameter sets, in order) first unless the access unit carries its own SPS.
pub fn to_annex_b(codec: VideoCodec, au: &[u8], sets: &[Vec<u8>]) -> Vec<u8> {
    let has_sps = nal_units(au).any(|n| is_sps(codec, n));
    let extra: usize = if has_sps {
        0
    } else {
        sets.iter().map(|s| s.len() + 4).sum()
    };
    let mut out = Vec::with_capacity(au.len() + extra);
    if !has_sps {
        for s in sets {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(s);
        }
    }
    for n in nal_units(au) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(n);
    }
    out
}

/// SPS then PPS NAL units of an `AVCDecoderConfigurationRecord`; empty if malformed.
pub fn avcc_parameter_sets(avcc: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 5;
    for mask in [0x1f_u8, 0xff] {
        let Some(&count) = avcc.get(at) else {
            return Vec::new();
        };
        at += 1;
        for _ in 0..(count & mask) {
            let Some(len) = avcc.get(at..at + 2) else {
                return Vec::new();
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(nal) = avcc.get(at + 2..at + 2 + len) else {
                return Vec::new();
            };
            out.push(nal.to_vec());
            at += 2 + len;
        }
    }
    out
}

/// VPS, SPS and PPS NAL units of an `HEVCDecoderConfigurationRecord`; empty if malformed.
pub fn hvcc_parameter_sets(hvcc: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(&arrays) = hvcc.get(22) else {
        return out;
    };
    let mut at = 23;
    for _ in 0..arrays {
        let Some(head) = hvcc.get(at..at + 3) else {
            return Vec::new();
        };
        let count = u16::from_be_bytes([head[1], head[2]]);
        at += 3;
        for _ in 0..count {
            let Some(len) = hvcc.get(at..at + 2) else {
                return Vec::new();
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(nal) = hvcc.get(at + 2..at + 2 + len) else {
                return Vec::new();
            };
            if matches!(nal.first().map(|b| (b >> 1) & 0x3f), Some(32..=34)) {
                out.push(nal.to_vec());
            }
            at += 2 + len;
        }
    }
    out
}

/// Reads Exp-Golomb codes from the start of an RBSP (emulation prevention removed).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v = 1u64;
        for _ in 0..zeros {
            v = (v << 1) | u64::from(self.bit()?);
        }
        u32::try_from(v - 1).ok()
    }
}

/// The first bytes of a NAL unit's RBSP (after its header), emulation prevention removed.
fn rbsp_head(nal: &[u8], header: usize, max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(max);
    let mut zeros = 0;
    for &b in nal.iter().skip(header) {
        if out.len() >= max {
            break;
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Whether an H.264 access unit (4-byte length-prefixed) has B slices, and whether it is
/// a reference picture (`nal_ref_idc` ≠ 0) as well.
pub fn h264_b_slices(au: &[u8]) -> (bool, bool) {
    for n in nal_units(au) {
        let t = nal_type(VideoCodec::H264, n);
        if t != 1 && t != 5 {
            continue;
        }
        let head = rbsp_head(n, 1, 16);
        let mut bits = Bits {
            data: &head,
            pos: 0,
        };
        let (Some(_first_mb), Some(slice_type)) = (bits.ue(), bits.ue()) else {
            continue;
        };
        if slice_type % 5 == 1 {
            let referenced = n.first().is_some_and(|b| b & 0x60 != 0);
            return (true, referenced);
        }
        // One slice says the picture's type well enough.
        return (false, false);
    }
    (false, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn au(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn annex_b_gets_parameter_sets_unless_present() {
        let idr = au(&[&[0x65, 0x88]]);
        let sets = vec![vec![0x67, 1], vec![0x68, 2]];
        let out = to_annex_b(VideoCodec::H264, &idr, &sets);
        assert_eq!(
            out,
            [0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 0x88]
        );
        let with = au(&[&[0x67, 9], &[0x68, 8], &[0x65, 0x88]]);
        let out = to_annex_b(VideoCodec::H264, &with, &sets);
        assert_eq!(out.len(), with.len());
        // A truncated length stops, never panics.
        let bad = [0, 0, 0, 9, 0x65];
        assert!(to_annex_b(VideoCodec::H264, &bad, &[]).is_empty());
    }

    #[test]
    fn avcc_sets_are_read_and_garbage_is_empty() {
        let avcc = [
            1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 2, 0x67, 0x42, 1, 0, 2, 0x68, 0xce,
        ];
        assert_eq!(
            avcc_parameter_sets(&avcc),
            vec![vec![0x67, 0x42], vec![0x68, 0xce]]
        );
        assert!(avcc_parameter_sets(&avcc[..9]).is_empty());
        assert!(hvcc_parameter_sets(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn b_slices_are_found_with_their_reference_flag() {
        // first_mb_in_slice = 0 ("1"), slice_type = 1 (B: "010"), then padding.
        let b_nonref = au(&[&[0x01, 0b1010_0000]]);
        assert_eq!(h264_b_slices(&b_nonref), (true, false));
        let b_ref = au(&[&[0x21, 0b1010_0000]]);
        assert_eq!(h264_b_slices(&b_ref), (true, true));
        // slice_type = 0 (P: "1").
        let p = au(&[&[0x41, 0b1100_0000]]);
        assert_eq!(h264_b_slices(&p), (false, false));
        // slice_type = 6 (B, all slices: "00111").
        let b6 = au(&[&[0x01, 0b1001_1100]]);
        assert_eq!(h264_b_slices(&b6), (true, false));
    }
}
