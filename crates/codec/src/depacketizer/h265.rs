//! H.265 depacketization, RFC 7798: single NAL unit packets, aggregation packets (AP), fragmentation units
//! (FU), with DONL fields when `sprop-max-don-diff` > 0 (transmission order is kept; DON is not used to
//! reorder).

use base64::Engine as _;

use super::assembler::Assembler;
use super::config::{hvcc, ParamSets};
use super::{fmtp_get, AccessUnit, DepacketizeError, RtpPacket};
use crate::params::{Codec, CodecParams};

/// NAL unit and payload types this module cares about.
const VPS: u8 = 32;
const SPS: u8 = 33;
const PPS: u8 = 34;
const AP: u8 = 48;
const FU: u8 = 49;

/// The NAL unit type of an H.265 NAL unit header's first byte.
fn nal_type(first: u8) -> u8 {
    (first >> 1) & 0x3f
}

/// H.265 depacketizer state.
#[derive(Debug, Clone, Default)]
pub(super) struct H265 {
    au: Assembler,
    sets: ParamSets,
    /// Whether packets carry DONL/DOND fields.
    donl: bool,
}

impl H265 {
    /// Reads `sprop-vps/sps/pps` and `sprop-max-don-diff` from the fmtp.
    pub(super) fn new(fmtp: &[(String, String)]) -> Result<Self, DepacketizeError> {
        let mut d = H265 {
            donl: fmtp_get(fmtp, "sprop-max-don-diff")
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|v| v > 0),
            ..H265::default()
        };
        for key in ["sprop-vps", "sprop-sps", "sprop-pps"] {
            for set in fmtp_get(fmtp, key).unwrap_or_default().split(',') {
                if let Ok(nal) = base64::engine::general_purpose::STANDARD.decode(set.trim()) {
                    d.parameter_set(&nal);
                }
            }
        }
        Ok(d)
    }

    /// Remembers a VPS, SPS or PPS.
    fn parameter_set(&mut self, nal: &[u8]) {
        match nal.first().map(|&h| nal_type(h)) {
            Some(VPS) => self.sets.set_vps(nal),
            Some(SPS) => self.sets.set_sps(nal, 2),
            Some(PPS) => self.sets.set_pps(nal, 2),
            _ => {}
        }
    }

    /// Codec parameters once a VPS, an SPS and a PPS are known.
    pub(super) fn params(&self) -> Option<CodecParams> {
        let (config, (w, h)) = hvcc(&self.sets)?;
        Some(CodecParams {
            width: Some(w),
            height: Some(h),
            ..CodecParams::new(Codec::H265, config)
        })
    }

    /// Adds one complete NAL unit to the access unit.
    fn nal(&mut self, nal: &[u8]) {
        let Some(&h) = nal.first() else {
            return;
        };
        if nal.len() < 2 {
            return;
        }
        let ty = nal_type(h);
        if (VPS..=PPS).contains(&ty) {
            self.parameter_set(nal);
        }
        self.au.push_nal(nal, (16..=21).contains(&ty));
    }

    /// Processes one packet.
    pub(super) fn push(
        &mut self,
        pkt: &RtpPacket<'_>,
        gap: bool,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        self.au.begin(pkt.timestamp, gap, out);
        if let Err(e) = self.payload(pkt.payload) {
            self.au.mark_loss();
            self.au.end(pkt.marker, out);
            return Err(e);
        }
        self.au.end(pkt.marker, out);
        Ok(())
    }

    /// Processes one packet's payload.
    fn payload(&mut self, payload: &[u8]) -> Result<(), &'static str> {
        let &[h0, h1, ref rest @ ..] = payload else {
            return Err("payload shorter than its header");
        };
        if h0 & 0x80 != 0 {
            return Err("forbidden_zero_bit set");
        }
        let donl = if self.donl { 2 } else { 0 };
        match nal_type(h0) {
            AP => {
                let mut rest = rest;
                let mut nals = Vec::new();
                let mut first = true;
                while !rest.is_empty() {
                    let skip = match (self.donl, first) {
                        (false, _) => 0,
                        (true, true) => 2,
                        (true, false) => 1,
                    };
                    first = false;
                    let tail = rest.get(skip..).ok_or("AP DON field is truncated")?;
                    let (&[l0, l1], tail) = tail
                        .split_first_chunk::<2>()
                        .ok_or("AP size is truncated")?;
                    let len = usize::from(u16::from_be_bytes([l0, l1]));
                    let nal = tail.get(..len).ok_or("AP unit is truncated")?;
                    if nal.len() < 2 {
                        return Err("AP unit shorter than a NAL header");
                    }
                    nals.push(nal);
                    rest = tail.get(len..).unwrap_or_default();
                }
                if nals.is_empty() {
                    return Err("empty AP");
                }
                for nal in nals {
                    self.nal(nal);
                }
                Ok(())
            }
            FU => {
                let (&fu, body) = rest.split_first().ok_or("FU is truncated")?;
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if start && end {
                    return Err("FU with both start and end bits");
                }
                if start {
                    let body = body.get(donl..).ok_or("FU DONL is truncated")?;
                    let header = [(h0 & 0x81) | ((fu & 0x3f) << 1), h1];
                    self.au.start_fragment(&header, body);
                } else if let Some(nal) = self.au.continue_fragment(body, end) {
                    self.nal(&nal);
                }
                Ok(())
            }
            50 => Err("PACI packets are not supported"),
            51..=63 => Err("reserved H.265 payload type"),
            _ => {
                if donl == 0 {
                    self.nal(payload);
                } else {
                    let body = rest.get(donl..).ok_or("DONL is truncated")?;
                    let mut nal = Vec::with_capacity(2 + body.len());
                    nal.extend_from_slice(&[h0, h1]);
                    nal.extend_from_slice(body);
                    self.nal(&nal);
                }
                Ok(())
            }
        }
    }
}
