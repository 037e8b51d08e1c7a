//! H.264 depacketization, RFC 6184 packetization-mode 0 and 1: single NAL unit packets, STAP-A, FU-A.

use base64::Engine as _;

use super::assembler::Assembler;
use super::config::{avcc, ParamSets};
use super::{bad_params, fmtp_get, AccessUnit, DepacketizeError, RtpPacket};
use crate::params::{Codec, CodecParams};

/// NAL unit types this module cares about.
const IDR: u8 = 5;
const SPS: u8 = 7;
const PPS: u8 = 8;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// H.264 depacketizer state.
#[derive(Debug, Clone, Default)]
pub(super) struct H264 {
    au: Assembler,
    sets: ParamSets,
}

impl H264 {
    /// Reads `packetization-mode` and `sprop-parameter-sets` from the fmtp.
    pub(super) fn new(fmtp: &[(String, String)]) -> Result<Self, DepacketizeError> {
        match fmtp_get(fmtp, "packetization-mode").map(str::trim) {
            None | Some("0") | Some("1") => {}
            Some(m) => {
                return Err(bad_params(
                    Codec::H264,
                    format!("packetization-mode={m} is not supported"),
                ))
            }
        }
        let mut d = H264::default();
        if let Some(sprop) = fmtp_get(fmtp, "sprop-parameter-sets") {
            for set in sprop.split(',') {
                let Ok(nal) = base64::engine::general_purpose::STANDARD.decode(set.trim()) else {
                    continue;
                };
                d.parameter_set(&nal);
            }
        }
        Ok(d)
    }

    /// Remembers an SPS or PPS.
    fn parameter_set(&mut self, nal: &[u8]) {
        match nal.first().map(|h| h & 0x1f) {
            Some(SPS) => self.sets.set_sps(nal, 1),
            Some(PPS) => self.sets.set_pps(nal, 1),
            _ => {}
        }
    }

    /// Codec parameters once an SPS and a PPS are known.
    pub(super) fn params(&self) -> Option<CodecParams> {
        let (config, dims) = avcc(&self.sets)?;
        Some(CodecParams {
            width: dims.map(|d| d.0),
            height: dims.map(|d| d.1),
            ..CodecParams::new(Codec::H264, config)
        })
    }

    /// Adds one complete NAL unit to the access unit.
    fn nal(&mut self, nal: &[u8]) {
        let Some(&h) = nal.first() else {
            return;
        };
        let ty = h & 0x1f;
        if ty == SPS || ty == PPS {
            self.parameter_set(nal);
        }
        self.au.push_nal(nal, ty == IDR);
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
        let &header = payload.first().ok_or("empty payload")?;
        match header & 0x1f {
            0 => Err("NAL unit type 0"),
            1..=23 => {
                self.nal(payload);
                Ok(())
            }
            STAP_A => {
                let mut rest = payload.get(1..).unwrap_or_default();
                // Validate the whole packet before using any of it.
                let mut nals = Vec::new();
                while !rest.is_empty() {
                    let (&[l0, l1], tail) = rest
                        .split_first_chunk::<2>()
                        .ok_or("STAP-A size is truncated")?;
                    let len = usize::from(u16::from_be_bytes([l0, l1]));
                    let nal = tail.get(..len).ok_or("STAP-A unit is truncated")?;
                    if !nal.is_empty() {
                        nals.push(nal);
                    }
                    rest = tail.get(len..).unwrap_or_default();
                }
                if nals.is_empty() {
                    return Err("empty STAP-A");
                }
                for nal in nals {
                    self.nal(nal);
                }
                Ok(())
            }
            FU_A => {
                let &[indicator, fu, ref body @ ..] = payload else {
                    return Err("FU-A is truncated");
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if start && end {
                    return Err("FU-A with both start and end bits");
                }
                let nal_header = (indicator & 0xe0) | (fu & 0x1f);
                if start {
                    self.au.start_fragment(&[nal_header], body);
                } else if let Some(nal) = self.au.continue_fragment(body, end) {
                    self.nal(&nal);
                }
                Ok(())
            }
            _ => Err("unsupported H.264 packet type (STAP-B, MTAP or FU-B)"),
        }
    }
}
