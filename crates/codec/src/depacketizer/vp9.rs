//! VP9 depacketization, RFC 9628: the payload descriptor (flexible or non-flexible mode, with or
//! without a scalability structure) is stripped; the layer frames of one picture (all spatial layers
//! sharing the RTP timestamp) are joined into one sample, with a superframe index when there are
//! several, as VP9 in MP4 (`vp09`) stores them.
//!
//! A picture is a keyframe when its first packet starts a frame (B=1) that is not inter-picture
//! predicted (P=0) at spatial layer 0 and its uncompressed header says `KEY_FRAME`. The `vpcC` record
//! and the picture size come from a keyframe's uncompressed header.

use bytes::{Bytes, BytesMut};

use super::{AccessUnit, RtpPacket, MAX_ACCESS_UNIT};
use crate::bits::BitReader;
use crate::params::{Codec, CodecParams};

/// Most layer frames in one picture (a superframe index holds at most 8).
const MAX_LAYER_FRAMES: usize = 8;

/// What a keyframe's uncompressed header says about the stream (VP9 bitstream spec §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vp9Config {
    /// Profile 0..=3.
    pub(crate) profile: u8,
    /// 8, 10 or 12.
    pub(crate) bit_depth: u8,
    /// `color_space` (0 unknown, 1 BT.601, 2 BT.709, 3 SMPTE-170, 4 SMPTE-240, 5 BT.2020, 7 sRGB).
    pub(crate) color_space: u8,
    /// Full-range samples.
    pub(crate) full_range: bool,
    /// Horizontal and vertical chroma subsampling.
    pub(crate) subsampling: (bool, bool),
    /// Frame width in pixels.
    pub(crate) width: u32,
    /// Frame height in pixels.
    pub(crate) height: u32,
}

impl Vp9Config {
    /// Parses a keyframe's uncompressed header; None for other frames or truncated data.
    pub(crate) fn parse(frame: &[u8]) -> Option<Vp9Config> {
        let mut r = BitReader::new(frame);
        if r.read(2)? != 2 {
            return None; // frame_marker
        }
        let low = r.read(1)?;
        let high = r.read(1)?;
        let profile = ((high << 1) | low) as u8;
        if profile == 3 {
            r.read(1)?; // reserved_zero
        }
        if r.flag()? {
            return None; // show_existing_frame
        }
        if r.flag()? {
            return None; // frame_type: NON_KEY_FRAME
        }
        r.read(2)?; // show_frame, error_resilient_mode
        if r.read(24)? != 0x49_83_42 {
            return None; // frame_sync_code
        }
        let bit_depth = if profile >= 2 {
            if r.flag()? {
                12
            } else {
                10
            }
        } else {
            8
        };
        let color_space = r.read(3)? as u8;
        let (full_range, subsampling) = if color_space != 7 {
            let full = r.flag()?;
            let ss = if profile == 1 || profile == 3 {
                let x = r.flag()?;
                let y = r.flag()?;
                r.read(1)?;
                (x, y)
            } else {
                (true, true)
            };
            (full, ss)
        } else {
            if profile == 1 || profile == 3 {
                r.read(1)?;
            }
            (true, (false, false))
        };
        let width = r.read(16)? + 1;
        let height = r.read(16)? + 1;
        Some(Vp9Config {
            profile,
            bit_depth,
            color_space,
            full_range,
            subsampling,
            width,
            height,
        })
    }

    /// The lowest VP9 level (×10) whose picture size limit holds this size (assuming ≤ 30 fps).
    pub(crate) fn level(&self) -> u8 {
        let samples = u64::from(self.width) * u64::from(self.height);
        const LEVELS: [(u64, u8); 9] = [
            (36_864, 10),
            (73_728, 11),
            (122_880, 20),
            (245_760, 21),
            (552_960, 30),
            (983_040, 31),
            (2_228_224, 40),
            (8_912_896, 50),
            (35_651_584, 60),
        ];
        LEVELS
            .iter()
            .find(|(max, _)| samples <= *max)
            .map_or(62, |&(_, l)| l)
    }

    /// The `vpcC` box body (VPCodecConfigurationRecord, version 1, with its FullBox header).
    pub(crate) fn vpcc(&self) -> Vec<u8> {
        let chroma = match self.subsampling {
            (true, true) => 0, // 4:2:0, vertical siting (what ffmpeg writes when unspecified)
            (true, false) => 2,
            _ => 3,
        };
        let (primaries, transfer, matrix) = match self.color_space {
            1 | 3 => (6, 6, 6),
            2 => (1, 1, 1),
            4 => (7, 7, 7),
            5 => (9, 14, 9),
            7 => (1, 13, 0),
            _ => (2, 2, 2),
        };
        vec![
            1,
            0,
            0,
            0,
            self.profile,
            self.level(),
            (self.bit_depth << 4) | (chroma << 1) | u8::from(self.full_range),
            primaries,
            transfer,
            matrix,
            0,
            0,
        ]
    }
}

/// VP9 depacketizer state.
#[derive(Debug, Clone, Default)]
pub(super) struct Vp9 {
    /// RTP timestamp of the picture in progress.
    timestamp: Option<u32>,
    /// Completed layer frames of the picture in progress.
    frames: Vec<Bytes>,
    /// The layer frame being assembled (started by a B=1 packet).
    frame: Option<BytesMut>,
    /// Whether the picture's first layer frame is a keyframe per the payload descriptor.
    key: bool,
    /// Packets were lost inside or just before the picture in progress.
    loss: bool,
    /// From the last keyframe.
    config: Option<Vp9Config>,
}

/// The parts of an RFC 9628 payload descriptor the depacketizer uses.
struct Descriptor<'a> {
    inter: bool,
    start: bool,
    end: bool,
    spatial: u8,
    body: &'a [u8],
}

/// Parses the payload descriptor (RFC 9628 §4.2) and returns the rest.
fn descriptor(payload: &[u8]) -> Result<Descriptor<'_>, &'static str> {
    const TRUNC: &str = "VP9 payload descriptor is truncated";
    let (&b0, mut rest) = payload.split_first().ok_or("empty payload")?;
    let flag = |bit: u8| b0 & bit != 0;
    let (i, p, l, f, b, e, v) = (
        flag(0x80),
        flag(0x40),
        flag(0x20),
        flag(0x10),
        flag(0x08),
        flag(0x04),
        flag(0x02),
    );
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        let (head, tail) = rest.split_at_checked(n).ok_or(TRUNC)?;
        rest = tail;
        Ok(head)
    };
    if i {
        let m = take(1)?.first().copied().unwrap_or(0);
        if m & 0x80 != 0 {
            take(1)?;
        }
    }
    let mut spatial = 0;
    if l {
        let layer = take(1)?.first().copied().unwrap_or(0);
        spatial = (layer >> 1) & 0x07;
        if !f {
            take(1)?; // TL0PICIDX
        }
    }
    if f && p {
        let mut n = 0;
        loop {
            let diff = take(1)?.first().copied().unwrap_or(0);
            n += 1;
            if diff & 0x01 == 0 {
                break;
            }
            if n == 3 {
                return Err("more than 3 VP9 reference indices");
            }
        }
    }
    if v {
        let ss = take(1)?.first().copied().unwrap_or(0);
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            take(4 * layers)?;
        }
        if ss & 0x08 != 0 {
            let groups = take(1)?.first().copied().unwrap_or(0);
            for _ in 0..groups {
                let g = take(1)?.first().copied().unwrap_or(0);
                take(usize::from((g >> 2) & 0x03))?;
            }
        }
    }
    Ok(Descriptor {
        inter: p,
        start: b,
        end: e,
        spatial,
        body: rest,
    })
}

/// Joins layer frames into one sample: a single frame as is, several as a superframe (VP9 bitstream
/// spec Annex B) with an index of 4-byte sizes.
fn superframe(frames: &[Bytes]) -> Bytes {
    match frames {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let total: usize = many.iter().map(Bytes::len).sum();
            let marker = 0xc0 | (3 << 3) | ((many.len() - 1) as u8 & 0x07);
            let mut out = BytesMut::with_capacity(total + 2 + 4 * many.len());
            for f in many {
                out.extend_from_slice(f);
            }
            out.extend_from_slice(&[marker]);
            for f in many {
                out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            }
            out.extend_from_slice(&[marker]);
            out.freeze()
        }
    }
}

impl Vp9 {
    /// Codec parameters once a keyframe was seen: `vpcC` and the picture size.
    pub(super) fn params(&self) -> Option<CodecParams> {
        let c = self.config?;
        Some(CodecParams {
            width: Some(c.width),
            height: Some(c.height),
            ..CodecParams::new(Codec::Vp9, c.vpcc())
        })
    }

    /// Emits the picture in progress, if it has a complete layer frame.
    fn emit(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(ts) = self.timestamp.take() else {
            return;
        };
        if self.frame.take().is_some() {
            self.loss = true;
        }
        if self.frames.is_empty() {
            self.key = false;
            return;
        }
        let first = self.frames.first().cloned().unwrap_or_default();
        let config = if self.key {
            Vp9Config::parse(&first)
        } else {
            None
        };
        let keyframe = config.is_some();
        if let Some(c) = config {
            self.config = Some(c);
        }
        out.push(AccessUnit {
            rtp_timestamp: ts,
            keyframe,
            data: superframe(&self.frames),
            loss: self.loss,
        });
        self.frames.clear();
        self.key = false;
        self.loss = false;
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
            self.frame = None;
        }
        if self.timestamp.is_some_and(|t| t != pkt.timestamp) {
            self.emit(out);
            self.loss |= gap;
        }
        self.timestamp = Some(pkt.timestamp);
        let d = match descriptor(pkt.payload) {
            Ok(d) => d,
            Err(e) => {
                self.loss = true;
                self.frame = None;
                if pkt.marker {
                    self.emit(out);
                }
                return Err(e);
            }
        };
        if d.start {
            if self.frame.is_some() {
                self.loss = true;
            }
            if self.frames.is_empty() {
                self.key = !d.inter && d.spatial == 0;
            }
            self.frame = Some(BytesMut::with_capacity(d.body.len() * 4));
        }
        let held: usize = self.frames.iter().map(Bytes::len).sum();
        match self.frame.as_mut() {
            None => self.loss = true, // the frame's start was lost
            Some(f) if held + f.len() + d.body.len() > MAX_ACCESS_UNIT => {
                self.frame = None;
                self.frames.clear();
                self.loss = true;
            }
            Some(f) => f.extend_from_slice(d.body),
        }
        if d.end {
            if let Some(f) = self.frame.take() {
                if self.frames.len() < MAX_LAYER_FRAMES && !f.is_empty() {
                    self.frames.push(f.freeze());
                } else {
                    self.loss = true;
                }
            }
        }
        if pkt.marker {
            self.emit(out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = include_bytes!("../../tests/data/vp9_sample0.bin");
    const VPCC: &[u8] = include_bytes!("../../tests/data/vp9.vpcc");

    #[test]
    fn keyframe_header_gives_the_vpcc_of_the_file() {
        let c = Vp9Config::parse(KEY).unwrap();
        assert_eq!((c.profile, c.bit_depth), (0, 8));
        assert!(c.width > 0 && c.height > 0);
        let ours = c.vpcc();
        // Profile, bit depth / subsampling / range agree with what the muxer wrote.
        assert_eq!(ours[4], VPCC[4]);
        assert_eq!(ours[6] >> 4, VPCC[6] >> 4);
        assert!(Vp9Config::parse(include_bytes!("../../tests/data/vp9_sample1.bin")).is_none());
    }

    #[test]
    fn descriptors_with_every_field_parse() {
        // I (15-bit id), L (non-flexible: TL0PICIDX), V with Y and G.
        let p = [
            0xaa, 0x81, 0x02, 0x02, 0x07, 0x18, 0x02, 0x80, 0x01, 0xe0, 1, 0x04, 0x11, 0xaa,
        ];
        let d = descriptor(&p).unwrap();
        assert!(d.start && !d.inter && d.spatial == 1);
        assert_eq!(d.body, &[0xaa]);
        assert!(descriptor(&[0xaa, 0x81]).is_err());
        // Flexible mode with four P_DIFFs is refused.
        assert!(descriptor(&[0x58, 0x01, 0x01, 0x01, 0x01, 0x00]).is_err());
    }

    #[test]
    fn superframe_index_lists_the_layer_frames() {
        let s = superframe(&[Bytes::from_static(&[1, 2]), Bytes::from_static(&[3])]);
        assert_eq!(&s[..], &[1, 2, 3, 0xd9, 2, 0, 0, 0, 1, 0, 0, 0, 0xd9][..]);
    }
}
