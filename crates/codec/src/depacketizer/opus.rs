//! Opus depacketization, RFC 7587: each RTP payload is one Opus packet.

use bytes::Bytes;

use super::{fmtp_get, AccessUnit, RtpPacket};
use crate::params::{Codec, CodecParams};

/// Opus depacketizer state.
#[derive(Debug, Clone)]
pub(super) struct Opus {
    channels: u16,
    /// Packets were lost since the last emitted packet.
    loss: bool,
}

impl Opus {
    /// Channel count: `sprop-stereo=0` means mono, else stereo (the rtpmap always says 2).
    pub(super) fn new(channels: Option<u16>, fmtp: &[(String, String)]) -> Self {
        let channels = match fmtp_get(fmtp, "sprop-stereo") {
            Some("0") => 1,
            Some(_) => 2,
            None => channels.filter(|&c| (1..=2).contains(&c)).unwrap_or(2),
        };
        Opus {
            channels,
            loss: false,
        }
    }

    /// Codec parameters with an OpusHead (RFC 7845 §5.1: version 1, channel count, no pre-skip, 48 kHz
    /// input, no gain, mapping family 0).
    pub(super) fn params(&self) -> CodecParams {
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(u8::try_from(self.channels).unwrap_or(2));
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        CodecParams {
            sample_rate: Some(48_000),
            channels: Some(self.channels),
            ..CodecParams::new(Codec::Opus, head)
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
