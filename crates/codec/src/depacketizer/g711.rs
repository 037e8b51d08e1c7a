//! G.711 depacketization (RFC 3551 PCMU/PCMA): each RTP payload is one sample run, kept as one access
//! unit (the MP4 writer stores it as one `ulaw`/`alaw` sample).

use bytes::Bytes;

use super::{AccessUnit, RtpPacket};
use crate::params::{Codec, CodecParams};

/// G.711 depacketizer state.
#[derive(Debug, Clone)]
pub(super) struct G711 {
    codec: Codec,
    clock_rate: u32,
    channels: u16,
    /// Packets were lost since the last emitted packet.
    loss: bool,
}

impl G711 {
    /// `codec` is [`Codec::Pcmu`] or [`Codec::Pcma`]; the clock rate is the sample rate.
    pub(super) fn new(codec: Codec, clock_rate: u32, channels: Option<u16>) -> Self {
        G711 {
            codec,
            clock_rate,
            channels: channels.filter(|&c| c > 0).unwrap_or(1),
            loss: false,
        }
    }

    /// Codec parameters (no configuration record).
    pub(super) fn params(&self) -> CodecParams {
        CodecParams {
            sample_rate: Some(self.clock_rate),
            channels: Some(self.channels),
            ..CodecParams::new(self.codec, Bytes::new())
        }
    }

    /// Processes one packet.
    pub(super) fn push(
        &mut self,
        pkt: &RtpPacket<'_>,
        gap: bool,
        out: &mut Vec<AccessUnit>,
    ) -> Result<(), &'static str> {
        self.loss |= gap;
        if pkt.payload.is_empty() {
            self.loss = true;
            return Err("empty payload");
        }
        out.push(AccessUnit {
            rtp_timestamp: pkt.timestamp,
            keyframe: true,
            data: Bytes::copy_from_slice(pkt.payload),
            loss: std::mem::take(&mut self.loss),
        });
        Ok(())
    }
}
