//! AV1 packetization (AOM "RTP Payload Format for AV1" v1.0): OBU elements, each with a LEB128 length
//! (W=0), fragmented across packets with the Z/Y flags; temporal delimiters, tile lists and padding are
//! dropped and `obu_has_size_field` is cleared. N=1 on the first packet of a keyframe temporal unit, whose
//! sequence header (from `av1C` when the sample has none) is sent first.

use bytes::Bytes;

use super::{bad_config, malformed, PacketizeError};
use crate::params::Codec;
use crate::rtp::Staging;

/// OBU type of a sequence header.
const OBU_SEQUENCE_HEADER: u8 = 1;
/// OBU type of a temporal delimiter.
const OBU_TEMPORAL_DELIMITER: u8 = 2;
/// OBU type of a tile list.
const OBU_TILE_LIST: u8 = 8;
/// OBU type of padding.
const OBU_PADDING: u8 = 15;

/// One OBU as it goes on the wire: header (size field cleared) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Obu {
    obu_type: u8,
    bytes: Vec<u8>,
}

/// Reads a LEB128 value (at most 8 bytes), returning it and the bytes after it.
fn read_leb128(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in data.iter().enumerate().take(8) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, data.get(i + 1..)?));
        }
    }
    None
}

/// Appends `value` as LEB128.
fn write_leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Bytes LEB128 needs for `value`.
fn leb128_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits as usize).div_ceil(7).max(1)
}

/// Splits low-overhead bitstream format data into OBUs.
fn parse_obus(mut data: &[u8]) -> Result<Vec<Obu>, &'static str> {
    let mut obus = Vec::new();
    while let Some((&header, rest)) = data.split_first() {
        if header & 0x80 != 0 {
            return Err("OBU forbidden bit set");
        }
        let obu_type = (header >> 3) & 0x0f;
        let (extension, rest) = if header & 0x04 != 0 {
            let (&ext, rest) = rest.split_first().ok_or("truncated OBU extension header")?;
            (Some(ext), rest)
        } else {
            (None, rest)
        };
        let (payload, rest) = if header & 0x02 != 0 {
            let (size, rest) = read_leb128(rest).ok_or("bad OBU size")?;
            let size = usize::try_from(size).map_err(|_| "OBU size too large")?;
            if size > rest.len() {
                return Err("OBU runs past the end of the sample");
            }
            rest.split_at(size)
        } else {
            (rest, &[][..])
        };
        let mut bytes = Vec::with_capacity(2 + payload.len());
        bytes.push(header & !0x02);
        bytes.extend(extension);
        bytes.extend_from_slice(payload);
        obus.push(Obu { obu_type, bytes });
        data = rest;
    }
    Ok(obus)
}

/// AV1 state: `av1C` fields and its sequence header.
#[derive(Debug, Clone)]
pub(super) struct Av1 {
    profile: u8,
    level_idx: u8,
    tier: u8,
    has_config: bool,
    sequence_header: Option<Obu>,
}

impl Av1 {
    /// Parses the `av1C` record (empty is accepted: no fmtp, no sequence header to repeat).
    pub(super) fn new(av1c: &Bytes) -> Result<Self, PacketizeError> {
        let &[marker_version, profile_level, tier_etc, _, ref config_obus @ ..] = &av1c[..] else {
            if av1c.is_empty() {
                return Ok(Av1 {
                    profile: 0,
                    level_idx: 0,
                    tier: 0,
                    has_config: false,
                    sequence_header: None,
                });
            }
            return Err(bad_config(Codec::Av1, "av1C is truncated"));
        };
        if marker_version != 0x81 {
            return Err(bad_config(Codec::Av1, "av1C marker/version is not 1/1"));
        }
        let obus = parse_obus(config_obus).map_err(|r| bad_config(Codec::Av1, r))?;
        Ok(Av1 {
            profile: profile_level >> 5,
            level_idx: profile_level & 0x1f,
            tier: tier_etc >> 7,
            has_config: true,
            sequence_header: obus.into_iter().find(|o| o.obu_type == OBU_SEQUENCE_HEADER),
        })
    }

    /// `a=fmtp` parameters, when `av1C` was given.
    pub(super) fn fmtp(&self) -> Option<String> {
        if !self.has_config {
            return None;
        }
        Some(format!(
            "profile={};level-idx={};tier={}",
            self.profile, self.level_idx, self.tier
        ))
    }

    /// Stages the packets of one temporal unit.
    pub(super) fn packetize(
        &mut self,
        data: &[u8],
        ts: u32,
        keyframe: bool,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        let mut obus = parse_obus(data).map_err(|r| malformed(Codec::Av1, r))?;
        obus.retain(|o| {
            !matches!(
                o.obu_type,
                OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING
            )
        });
        if obus.is_empty() {
            return Err(malformed(Codec::Av1, "temporal unit has no OBUs to send"));
        }
        let has_seq = obus.iter().any(|o| o.obu_type == OBU_SEQUENCE_HEADER);
        let new_sequence = keyframe && (has_seq || self.sequence_header.is_some());
        if keyframe && !has_seq {
            if let Some(seq) = &self.sequence_header {
                obus.insert(0, seq.clone());
            }
        }
        pack(&obus, ts, new_sequence, max, st);
        Ok(())
    }
}

/// Packs OBU elements into packets of at most `max` bytes, fragmenting where needed.
fn pack(obus: &[Obu], ts: u32, new_sequence: bool, max: usize, st: &mut Staging) {
    let mut payload = vec![if new_sequence { 0x08 } else { 0x00 }];
    for obu in obus {
        let mut rest = &obu.bytes[..];
        while !rest.is_empty() {
            let avail = max.saturating_sub(payload.len());
            if avail < 3 {
                flush(&mut payload, false, ts, st);
                continue;
            }
            let take = rest.len().min(avail - leb128_len(avail));
            let (chunk, tail) = rest.split_at(take);
            write_leb128(chunk.len(), &mut payload);
            payload.extend_from_slice(chunk);
            rest = tail;
            if !rest.is_empty() {
                flush(&mut payload, true, ts, st);
            }
        }
    }
    if payload.len() > 1 {
        st.push(ts, false, &[&payload]);
    }
    st.mark_last();
}

/// Stages the packet in `payload` (setting Y when its last element continues) and starts the next one
/// (with Z when it continues an element).
fn flush(payload: &mut Vec<u8>, continues: bool, ts: u32, st: &mut Staging) {
    if let Some(agg) = payload.first_mut() {
        *agg |= u8::from(continues) << 6;
    }
    st.push(ts, false, &[payload]);
    payload.clear();
    payload.push(u8::from(continues) << 7);
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::keyframe::starts_keyframe;
    use crate::packetizer::Packetizer;
    use crate::params::CodecParams;
    use proptest::prelude::*;

    const AV1C: &[u8] = include_bytes!("../../tests/data/av1.av1c");
    const KEY: &[u8] = include_bytes!("../../tests/data/av1_sample0.bin");
    const INTER: &[u8] = include_bytes!("../../tests/data/av1_sample1.bin");

    /// Depacketizes one temporal unit's payloads back into OBUs (checking Z/Y continuity).
    fn depacketize(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut obus: Vec<Vec<u8>> = Vec::new();
        let mut open = false;
        for p in payloads {
            let agg = p[0];
            assert_eq!(agg & 0x80 != 0, open, "Z matches previous Y");
            assert_eq!((agg >> 4) & 3, 0, "W=0");
            let mut rest = &p[1..];
            let mut first = true;
            while !rest.is_empty() {
                let (len, tail) = read_leb128(rest).unwrap();
                let (el, tail) = tail.split_at(len as usize);
                if first && agg & 0x80 != 0 {
                    obus.last_mut().unwrap().extend_from_slice(el);
                } else {
                    obus.push(el.to_vec());
                }
                first = false;
                rest = tail;
            }
            open = agg & 0x40 != 0;
        }
        assert!(!open);
        obus
    }

    fn packetizer(max: usize) -> Packetizer {
        Packetizer::new(
            &CodecParams::new(Codec::Av1, Bytes::from_static(AV1C)),
            96,
            2,
            0,
            max,
        )
        .unwrap()
    }

    #[test]
    fn leb128() {
        for v in [0usize, 1, 127, 128, 300, 16_383, 16_384, 1 << 30] {
            let mut b = Vec::new();
            write_leb128(v, &mut b);
            assert_eq!(b.len(), leb128_len(v));
            assert_eq!(read_leb128(&b).unwrap(), (v as u64, &[][..]));
        }
        assert!(read_leb128(&[0x80, 0x80]).is_none());
    }

    #[test]
    fn sdp_and_keyframe_temporal_unit() {
        let mut p = packetizer(500);
        assert_eq!(p.rtpmap(), "96 AV1/90000");
        assert_eq!(p.fmtp().unwrap(), "96 profile=0;level-idx=0;tier=0");
        let mut out = Vec::new();
        p.packetize(KEY, 0, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 96, 2, 0, 0, 500);
        assert!(pkts.len() > 1);
        assert_eq!(pkts[0].payload[0] & 0x08, 0x08, "N on first packet");
        assert!(pkts[1..].iter().all(|p| p.payload[0] & 0x08 == 0));
        assert!(starts_keyframe(Codec::Av1, pkts[0].payload));
        assert!(!starts_keyframe(Codec::Av1, pkts[1].payload));
        let payloads: Vec<&[u8]> = pkts.iter().map(|p| p.payload).collect();
        let expect: Vec<Vec<u8>> = parse_obus(KEY)
            .unwrap()
            .into_iter()
            .filter(|o| o.obu_type != OBU_TEMPORAL_DELIMITER)
            .map(|o| o.bytes)
            .collect();
        assert_eq!(depacketize(&payloads), expect);
        assert_eq!((expect[0][0] >> 3) & 0x0f, OBU_SEQUENCE_HEADER);

        out.clear();
        let first = p.next_sequence();
        p.packetize(INTER, 3000, false, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 96, 2, first, 3000, 500);
        assert!(pkts.iter().all(|p| !starts_keyframe(Codec::Av1, p.payload)));
    }

    #[test]
    fn keyframe_without_sequence_header_gets_the_one_from_av1c() {
        let mut p = packetizer(1200);
        let frame = [0x32, 0x03, 1, 2, 3]; // OBU_FRAME with size field
        let mut out = Vec::new();
        p.packetize(&frame, 0, true, &mut out).unwrap();
        let payloads: Vec<&[u8]> = out.iter().map(|b| &b[12..]).collect();
        let obus = depacketize(&payloads);
        assert_eq!(obus.len(), 2);
        assert_eq!((obus[0][0] >> 3) & 0x0f, OBU_SEQUENCE_HEADER);
        assert_eq!(obus[1], [0x30, 1, 2, 3]);
        assert!(starts_keyframe(Codec::Av1, payloads[0]));
        assert!(
            p.packetize(&[0x12, 0x00], 0, false, &mut out).is_err(),
            "only a temporal delimiter"
        );
        assert!(
            p.packetize(&[0x32, 0x09, 1], 0, false, &mut out).is_err(),
            "truncated"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trips(sizes in proptest::collection::vec(0usize..5000, 1..5), max in 64usize..1500) {
            let mut tu = vec![0x12, 0x00];
            let mut expect = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let mut obu = vec![0x32];
                write_leb128(*size, &mut obu);
                obu.extend((0..*size).map(|k| (k + i) as u8));
                tu.extend_from_slice(&obu);
                let mut bare = vec![0x30];
                bare.extend((0..*size).map(|k| (k + i) as u8));
                expect.push(bare);
            }
            let mut p = packetizer(max);
            let mut out = Vec::new();
            p.packetize(&tu, 9, false, &mut out).unwrap();
            let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
            check_headers(&pkts, 96, 2, 0, 9, max);
            let payloads: Vec<&[u8]> = pkts.iter().map(|p| p.payload).collect();
            prop_assert_eq!(depacketize(&payloads), expect);
        }
    }
}
