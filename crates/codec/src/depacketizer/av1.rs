//! AV1 depacketization (AOM "RTP Payload Format for AV1" v1.0): the aggregation header (Z, Y, W, N),
//! OBU elements with or without LEB128 lengths, OBUs fragmented across packets. The temporal unit's
//! OBUs are rebuilt with `obu_has_size_field` set, as the ISOBMFF `av01` sample format wants them;
//! temporal delimiters, tile lists and padding are dropped.
//!
//! A temporal unit is a keyframe when its first packet has N=1, or when it holds a sequence header and
//! a key frame's header. The `av1C` record and the picture size come from the sequence header.

use bytes::{Bytes, BytesMut};

use super::{AccessUnit, RtpPacket, MAX_ACCESS_UNIT};
use crate::bits::BitReader;
use crate::params::{Codec, CodecParams};

/// OBU types (AV1 spec §6.2.2).
const OBU_SEQUENCE_HEADER: u8 = 1;
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_FRAME_HEADER: u8 = 3;
const OBU_FRAME: u8 = 6;
const OBU_TILE_LIST: u8 = 8;
const OBU_PADDING: u8 = 15;

/// Reads a LEB128 value (at most 8 bytes), returning it and the bytes after it.
pub(crate) fn read_leb128(data: &[u8]) -> Option<(u64, &[u8])> {
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
fn write_leb128(mut value: usize, out: &mut BytesMut) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.extend_from_slice(&[byte]);
            return;
        }
        out.extend_from_slice(&[byte | 0x80]);
    }
}

/// What a sequence header says (AV1 spec §5.5), as `av1C` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SequenceHeader {
    pub(crate) profile: u8,
    pub(crate) level_idx: u8,
    pub(crate) tier: bool,
    pub(crate) high_bitdepth: bool,
    pub(crate) twelve_bit: bool,
    pub(crate) monochrome: bool,
    pub(crate) subsampling: (bool, bool),
    pub(crate) chroma_sample_position: u8,
    pub(crate) reduced_still_picture_header: bool,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// An `uvlc()` value (AV1 spec §4.10.3).
fn uvlc(r: &mut BitReader<'_>) -> Option<u32> {
    let mut zeros = 0;
    while !r.flag()? {
        zeros += 1;
        if zeros >= 32 {
            return None;
        }
    }
    Some(r.read(zeros)?.saturating_add((1u32 << zeros) - 1))
}

impl SequenceHeader {
    /// Parses a sequence header OBU's payload (after the OBU header and size).
    pub(crate) fn parse(payload: &[u8]) -> Option<SequenceHeader> {
        let mut r = BitReader::new(payload);
        let profile = r.read(3)? as u8;
        r.read(1)?; // still_picture
        let reduced = r.flag()?;
        let (level_idx, tier);
        if reduced {
            level_idx = r.read(5)? as u8;
            tier = false;
        } else {
            let mut buffer_delay_len = 0;
            let timing_info = r.flag()?;
            let mut decoder_model_info = false;
            if timing_info {
                r.read(32)?;
                r.read(32)?;
                if r.flag()? {
                    uvlc(&mut r)?;
                }
                decoder_model_info = r.flag()?;
                if decoder_model_info {
                    buffer_delay_len = r.read(5)? + 1;
                    r.read(32)?;
                    r.read(10)?; // buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
                }
            }
            let initial_display_delay = r.flag()?;
            let points = r.read(5)? + 1;
            let mut first = None;
            for _ in 0..points {
                r.read(12)?; // operating_point_idc
                let level = r.read(5)? as u8;
                let t = if level > 7 { r.flag()? } else { false };
                if decoder_model_info && r.flag()? {
                    r.read(buffer_delay_len)?;
                    r.read(buffer_delay_len)?;
                    r.read(1)?;
                }
                if initial_display_delay && r.flag()? {
                    r.read(4)?;
                }
                first.get_or_insert((level, t));
            }
            (level_idx, tier) = first?;
        }
        let width_bits = r.read(4)? + 1;
        let height_bits = r.read(4)? + 1;
        let width = r.read(width_bits)?.checked_add(1)?;
        let height = r.read(height_bits)?.checked_add(1)?;
        if !reduced && r.flag()? {
            r.read(7)?; // delta_frame_id_length_minus_2, additional_frame_id_length_minus_1
        }
        r.read(3)?; // use_128x128_superblock, enable_filter_intra, enable_intra_edge_filter
        if !reduced {
            r.read(4)?; // interintra, masked compound, warped motion, dual filter
            let order_hint = r.flag()?;
            if order_hint {
                r.read(2)?; // jnt_comp, ref_frame_mvs
            }
            let force_screen_content = if r.flag()? { 2 } else { r.read(1)? };
            if force_screen_content > 0 && !r.flag()? {
                r.read(1)?; // seq_force_integer_mv
            }
            if order_hint {
                r.read(3)?;
            }
        }
        r.read(3)?; // superres, cdef, restoration
                    // color_config()
        let high_bitdepth = r.flag()?;
        let twelve_bit = profile == 2 && high_bitdepth && r.flag()?;
        let monochrome = profile != 1 && r.flag()?;
        let (mut primaries, mut transfer, mut matrix) = (2, 2, 2);
        if r.flag()? {
            primaries = r.read(8)?;
            transfer = r.read(8)?;
            matrix = r.read(8)?;
        }
        let (subsampling, position) = if monochrome {
            r.read(1)?;
            ((true, true), 0)
        } else if primaries == 1 && transfer == 13 && matrix == 0 {
            ((false, false), 0)
        } else {
            r.read(1)?; // color_range
            let ss = match profile {
                0 => (true, true),
                1 => (false, false),
                _ if twelve_bit => {
                    let x = r.flag()?;
                    let y = x && r.flag()?;
                    (x, y)
                }
                _ => (true, false),
            };
            let pos = if ss == (true, true) {
                r.read(2)? as u8
            } else {
                0
            };
            (ss, pos)
        };
        Some(SequenceHeader {
            profile,
            level_idx,
            tier,
            high_bitdepth,
            twelve_bit,
            monochrome,
            subsampling,
            chroma_sample_position: position,
            reduced_still_picture_header: reduced,
            width,
            height,
        })
    }

    /// The `av1C` box body (AV1CodecConfigurationRecord) with `obu` (the whole sequence header OBU,
    /// with its size field) as configOBUs.
    pub(crate) fn av1c(&self, obu: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + obu.len());
        out.push(0x81);
        out.push((self.profile << 5) | (self.level_idx & 0x1f));
        out.push(
            u8::from(self.tier) << 7
                | u8::from(self.high_bitdepth) << 6
                | u8::from(self.twelve_bit) << 5
                | u8::from(self.monochrome) << 4
                | u8::from(self.subsampling.0) << 3
                | u8::from(self.subsampling.1) << 2
                | (self.chroma_sample_position & 0x03),
        );
        out.push(0);
        out.extend_from_slice(obu);
        out
    }
}

/// AV1 depacketizer state.
#[derive(Debug, Clone, Default)]
pub(super) struct Av1 {
    /// RTP timestamp of the temporal unit in progress.
    timestamp: Option<u32>,
    /// OBUs of the temporal unit so far, with size fields.
    data: BytesMut,
    /// The OBU being reassembled from fragments (Y=1 on the packet that ended with it).
    fragment: Option<BytesMut>,
    /// The temporal unit's first packet had N=1.
    new_sequence: bool,
    /// The temporal unit holds a sequence header.
    has_sequence_header: bool,
    /// The temporal unit's first frame header says KEY_FRAME.
    key_frame_header: Option<bool>,
    /// Packets were lost inside or just before the temporal unit in progress.
    loss: bool,
    /// The last sequence header OBU (with its size field) and what it says.
    sequence: Option<(Bytes, SequenceHeader)>,
}

impl Av1 {
    /// Codec parameters once a sequence header was seen: `av1C` and the picture size.
    pub(super) fn params(&self) -> Option<CodecParams> {
        let (obu, seq) = self.sequence.as_ref()?;
        Some(CodecParams {
            width: Some(seq.width),
            height: Some(seq.height),
            ..CodecParams::new(Codec::Av1, seq.av1c(obu))
        })
    }

    /// Emits the temporal unit in progress, if it has any OBU.
    fn emit(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(ts) = self.timestamp.take() else {
            return;
        };
        if self.fragment.take().is_some() {
            self.loss = true;
        }
        let keyframe =
            self.new_sequence || (self.has_sequence_header && self.key_frame_header == Some(true));
        self.new_sequence = false;
        self.has_sequence_header = false;
        self.key_frame_header = None;
        if self.data.is_empty() {
            return;
        }
        out.push(AccessUnit {
            rtp_timestamp: ts,
            keyframe,
            data: self.data.split().freeze(),
            loss: std::mem::take(&mut self.loss),
        });
    }

    /// Adds one complete OBU (as carried: header, optional extension, payload; a size field, if the
    /// sender set one, is honoured).
    fn obu(&mut self, obu: &[u8]) -> Result<(), &'static str> {
        let (&header, rest) = obu.split_first().ok_or("empty OBU element")?;
        if header & 0x80 != 0 {
            return Err("OBU forbidden bit set");
        }
        let obu_type = (header >> 3) & 0x0f;
        let (ext, rest) = if header & 0x04 != 0 {
            let (&e, rest) = rest.split_first().ok_or("truncated OBU extension header")?;
            (Some(e), rest)
        } else {
            (None, rest)
        };
        let payload = if header & 0x02 != 0 {
            let (size, rest) = read_leb128(rest).ok_or("bad OBU size")?;
            let size = usize::try_from(size).map_err(|_| "OBU size too large")?;
            rest.get(..size).ok_or("OBU runs past its element")?
        } else {
            rest
        };
        if matches!(
            obu_type,
            OBU_TEMPORAL_DELIMITER | OBU_TILE_LIST | OBU_PADDING
        ) {
            return Ok(());
        }
        if self.data.len() + payload.len() + 11 > MAX_ACCESS_UNIT {
            self.data.clear();
            self.loss = true;
            return Ok(());
        }
        let start = self.data.len();
        self.data.extend_from_slice(&[header | 0x02]);
        if let Some(e) = ext {
            self.data.extend_from_slice(&[e]);
        }
        write_leb128(payload.len(), &mut self.data);
        self.data.extend_from_slice(payload);
        match obu_type {
            OBU_SEQUENCE_HEADER => {
                self.has_sequence_header = true;
                if let Some(seq) = SequenceHeader::parse(payload) {
                    let whole = self.data.get(start..).unwrap_or_default();
                    let changed = self
                        .sequence
                        .as_ref()
                        .is_none_or(|(old, _)| old.as_ref() != whole);
                    if changed {
                        self.sequence = Some((Bytes::copy_from_slice(whole), seq));
                    }
                }
            }
            OBU_FRAME | OBU_FRAME_HEADER if self.key_frame_header.is_none() => {
                let reduced = self
                    .sequence
                    .as_ref()
                    .is_some_and(|(_, s)| s.reduced_still_picture_header);
                let mut r = BitReader::new(payload);
                self.key_frame_header = Some(if reduced {
                    true
                } else {
                    // show_existing_frame = 0, frame_type = KEY_FRAME (0)
                    matches!((r.read(1), r.read(2)), (Some(0), Some(0)))
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Processes one packet.
    pub(super) fn push(
        &mut self,
        pkt: &RtpPacket<'_>,
        gap: bool,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        if gap {
            self.loss = true;
            self.fragment = None;
        }
        if self.timestamp.is_some_and(|t| t != pkt.timestamp) {
            self.emit(out);
            self.loss |= gap;
        }
        let first_packet = self.timestamp.is_none();
        self.timestamp = Some(pkt.timestamp);
        let result = self.payload(pkt.payload, first_packet);
        if result.is_err() {
            self.loss = true;
            self.fragment = None;
        }
        if pkt.marker {
            self.emit(out);
        }
        result
    }

    /// Processes one packet's payload.
    fn payload(&mut self, payload: &[u8], first_packet: bool) -> Result<(), &'static str> {
        let (&agg, mut rest) = payload.split_first().ok_or("empty payload")?;
        let (z, y, w, n) = (
            agg & 0x80 != 0,
            agg & 0x40 != 0,
            usize::from((agg >> 4) & 0x03),
            agg & 0x08 != 0,
        );
        if n {
            if z {
                return Err("N=1 with Z=1");
            }
            if first_packet || self.data.is_empty() {
                self.new_sequence = true;
            }
        }
        // Split the elements first, so that a malformed packet changes nothing.
        let mut elements: Vec<&[u8]> = Vec::new();
        while !rest.is_empty() {
            if w != 0 && elements.len() + 1 == w {
                elements.push(rest);
                break;
            }
            let (len, tail) = read_leb128(rest).ok_or("bad OBU element length")?;
            let len = usize::try_from(len).map_err(|_| "OBU element too long")?;
            let (el, tail) = tail
                .split_at_checked(len)
                .ok_or("OBU element runs past the packet")?;
            elements.push(el);
            rest = tail;
            if elements.len() > 4096 {
                return Err("too many OBU elements");
            }
        }
        if w != 0 && elements.len() != w {
            return Err("fewer OBU elements than W says");
        }
        let count = elements.len();
        for (i, el) in elements.into_iter().enumerate() {
            let continues = i == 0 && z;
            let open = i + 1 == count && y;
            let mut whole: Option<BytesMut> = if continues {
                match self.fragment.take() {
                    Some(mut f) if f.len() + el.len() <= MAX_ACCESS_UNIT => {
                        f.extend_from_slice(el);
                        Some(f)
                    }
                    _ => {
                        // Its start was lost (or it is absurdly large): dropped.
                        self.loss = true;
                        None
                    }
                }
            } else {
                if self.fragment.take().is_some() {
                    self.loss = true; // Y promised a continuation that never came
                }
                Some(BytesMut::from(el))
            };
            if open {
                self.fragment = whole.take();
            } else if let Some(obu) = whole {
                if !obu.is_empty() {
                    self.obu(&obu)?;
                }
            }
        }
        if count == 0 && z {
            return Err("Z=1 without OBU elements");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AV1C: &[u8] = include_bytes!("../../tests/data/av1.av1c");

    #[test]
    fn sequence_header_of_the_file_gives_its_av1c() {
        // av1C: 4 bytes, then the sequence header OBU with its size field.
        let obu = &AV1C[4..];
        assert_eq!((obu[0] >> 3) & 0x0f, OBU_SEQUENCE_HEADER);
        let (size, payload) = read_leb128(&obu[1..]).unwrap();
        let seq = SequenceHeader::parse(&payload[..size as usize]).unwrap();
        assert!(seq.width > 0 && seq.height > 0);
        assert_eq!(seq.av1c(obu), AV1C);
    }

    #[test]
    fn uvlc_reads_exp_golomb() {
        assert_eq!(uvlc(&mut BitReader::new(&[0b1000_0000])), Some(0));
        assert_eq!(uvlc(&mut BitReader::new(&[0b0100_0000])), Some(1));
        assert_eq!(uvlc(&mut BitReader::new(&[0b0010_1000])), Some(4));
        assert_eq!(uvlc(&mut BitReader::new(&[0, 0, 0, 0, 0])), None);
    }
}
