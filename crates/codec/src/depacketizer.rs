//! RTP depacketization into access units, the inverse of [`crate::packetizer`], for recording.
//!
//! A [`Depacketizer`] is built from a track's SDP (`a=rtpmap` encoding name, clock rate and channels, and
//! `a=fmtp`), then fed whole RTP packets in arrival order. It returns complete [`AccessUnit`]s in the form
//! an MP4 writer stores them (H.264/H.265: 4-byte length-prefixed NAL units; AAC: raw frames; Opus,
//! G.711: packets; VP9: frames; AV1: OBUs with size fields) and, through [`Depacketizer::params`], the
//! codec configuration record (`avcC`, `hvcC`, AudioSpecificConfig, OpusHead, `vpcC`, `av1C`) as soon
//! as it is known.
//!
//! Supported payload formats: H.264 (RFC 6184: single NAL unit, STAP-A, FU-A), H.265 (RFC 7798: single
//! NAL unit, AP, FU, with or without DONL), AAC (RFC 3640 `mode=AAC-hbr`/`AAC-lbr` or any AU-header
//! layout given by the fmtp), Opus (RFC 7587), G.711 (RFC 3551 PCMU/PCMA), VP9 (RFC 9628: pictures
//! of all spatial layers, as a superframe when there are several) and AV1 (AOM RTP payload format:
//! temporal units as `av01` samples, OBUs with size fields, temporal delimiters dropped).
//!
//! Packets are untrusted: malformed ones are refused with an error (the depacketizer stays usable and
//! marks the next access unit as lossy), and no input panics or grows memory without bound.

mod aac;
mod assembler;
pub(crate) mod av1;
pub(crate) mod config;
mod g711;
mod h264;
mod h265;
mod opus;
pub(crate) mod vp9;

use bytes::Bytes;

use crate::keyframe::codec_from_encoding;
use crate::params::{Codec, CodecParams};

/// Largest access unit assembled; a bigger one is dropped and the next access unit is marked lossy.
pub const MAX_ACCESS_UNIT: usize = 16 << 20;

/// One complete access unit (coded frame) reassembled from RTP packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// RTP timestamp of the access unit (for AAC packets with several access units, the packet's
    /// timestamp plus the preceding access units' frame lengths).
    pub rtp_timestamp: u32,
    /// Whether the access unit is a random access point (H.264 IDR, H.265 IRAP, VP9 key frame, AV1
    /// new coded video sequence; always true for audio).
    pub keyframe: bool,
    /// H.264/H.265: NAL units, each preceded by its 4-byte big-endian length (the MP4 sample format, as
    /// described by the `avcC`/`hvcC` of [`Depacketizer::params`]); AAC: one raw frame; Opus, G.711: one
    /// packet; VP9: one frame or superframe; AV1: a temporal unit's OBUs, each with its size field.
    pub data: Bytes,
    /// Packets were lost inside or just before this access unit (it may be incomplete or undecodable).
    pub loss: bool,
}

/// Why a track cannot be depacketized, or a packet was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DepacketizeError {
    /// The SDP encoding name is unknown, or this crate has no depacketizer for it.
    #[error("depacketizing {0:?} is not supported")]
    Unsupported(String),
    /// The SDP parameters (clock rate, channels, fmtp) are unusable.
    #[error("bad {codec:?} SDP parameters: {reason}")]
    BadParameters {
        /// Codec of the track.
        codec: Codec,
        /// What is wrong.
        reason: String,
    },
    /// A packet is not a valid RTP packet or its payload does not follow the payload format.
    #[error("malformed {codec:?} RTP packet: {reason}")]
    MalformedPacket {
        /// Codec of the track.
        codec: Codec,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Shorthand for [`DepacketizeError::MalformedPacket`].
fn malformed(codec: Codec, reason: &'static str) -> DepacketizeError {
    DepacketizeError::MalformedPacket { codec, reason }
}

/// Shorthand for [`DepacketizeError::BadParameters`].
fn bad_params(codec: Codec, reason: impl Into<String>) -> DepacketizeError {
    DepacketizeError::BadParameters {
        codec,
        reason: reason.into(),
    }
}

/// The parts of an RTP packet the depacketizers use.
#[derive(Debug, Clone, Copy)]
struct RtpPacket<'a> {
    marker: bool,
    sequence: u16,
    timestamp: u32,
    payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses an RTP packet (RFC 3550 §5.1): skips CSRCs and the header extension, strips padding.
    fn parse(b: &'a [u8]) -> Result<Self, &'static str> {
        let (&[b0, b1, s0, s1, t0, t1, t2, t3], rest) = b
            .split_first_chunk::<8>()
            .ok_or("shorter than an RTP header")?;
        if b0 >> 6 != 2 {
            return Err("RTP version is not 2");
        }
        let rest = rest.get(4..).ok_or("shorter than an RTP header")?; // SSRC
        let csrc_len = usize::from(b0 & 0x0f) * 4;
        let mut rest = rest.get(csrc_len..).ok_or("CSRC list is truncated")?;
        if b0 & 0x10 != 0 {
            let (&[_, _, l0, l1], ext) = rest
                .split_first_chunk::<4>()
                .ok_or("header extension is truncated")?;
            let ext_len = usize::from(u16::from_be_bytes([l0, l1])) * 4;
            rest = ext.get(ext_len..).ok_or("header extension is truncated")?;
        }
        if b0 & 0x20 != 0 {
            let pad = usize::from(*rest.last().ok_or("padding without payload")?);
            if pad == 0 || pad > rest.len() {
                return Err("bad padding length");
            }
            rest = rest.get(..rest.len() - pad).unwrap_or_default();
        }
        Ok(RtpPacket {
            marker: b1 & 0x80 != 0,
            sequence: u16::from_be_bytes([s0, s1]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            payload: rest,
        })
    }
}

/// Parses an fmtp value ("a=b;c=d", optionally prefixed with the payload type) into lower-cased keys and
/// trimmed values.
fn fmtp_pairs(fmtp: Option<&str>) -> Vec<(String, String)> {
    let Some(fmtp) = fmtp else {
        return Vec::new();
    };
    let fmtp = fmtp.trim();
    // Tolerate "96 key=value;…" as well as "key=value;…".
    let fmtp = match fmtp.split_once(' ') {
        Some((pt, rest)) if pt.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => fmtp,
    };
    fmtp.split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

/// Looks up a key (lower-case) in parsed fmtp pairs.
fn fmtp_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The codec-specific half of a [`Depacketizer`].
#[derive(Debug, Clone)]
enum Inner {
    H264(h264::H264),
    H265(h265::H265),
    Aac(aac::Aac),
    Opus(opus::Opus),
    G711(g711::G711),
    Vp9(vp9::Vp9),
    Av1(av1::Av1),
}

/// Reassembles RTP packets of one track into access units (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Depacketizer {
    codec: Codec,
    clock_rate: u32,
    /// Sequence number of the last accepted packet.
    last_sequence: Option<u16>,
    /// Access units completed by a packet that then turned out malformed, returned by the next push.
    pending: Vec<AccessUnit>,
    inner: Inner,
}

impl Depacketizer {
    /// From the SDP's encoding name, clock rate, channels and fmtp (e.g. `"H264"`, 90000, None,
    /// `Some("packetization-mode=1;sprop-parameter-sets=..")`; the fmtp may keep its leading payload type).
    ///
    /// Fails for encodings other than H264, H265, MPEG4-GENERIC (AAC), opus, PCMU, PCMA, VP9 and AV1
    /// (VP8 is not depacketized here), for H.264
    /// packetization-mode=2, for AAC without `config=` or in a mode without AU sizes, and for a zero clock
    /// rate.
    pub fn new(
        encoding: &str,
        clock_rate: u32,
        channels: Option<u16>,
        fmtp: Option<&str>,
    ) -> Result<Self, DepacketizeError> {
        let codec = codec_from_encoding(encoding)
            .ok_or_else(|| DepacketizeError::Unsupported(encoding.to_owned()))?;
        if clock_rate == 0 {
            return Err(bad_params(codec, "clock rate 0"));
        }
        let pairs = fmtp_pairs(fmtp);
        let inner = match codec {
            Codec::H264 => Inner::H264(h264::H264::new(&pairs)?),
            Codec::H265 => Inner::H265(h265::H265::new(&pairs)?),
            Codec::Aac => Inner::Aac(aac::Aac::new(clock_rate, channels, &pairs)?),
            Codec::Opus => Inner::Opus(opus::Opus::new(channels, &pairs)),
            Codec::Pcmu | Codec::Pcma => Inner::G711(g711::G711::new(codec, clock_rate, channels)),
            Codec::Vp9 => Inner::Vp9(vp9::Vp9::default()),
            Codec::Av1 => Inner::Av1(av1::Av1::default()),
            other => return Err(DepacketizeError::Unsupported(format!("{other:?}"))),
        };
        Ok(Depacketizer {
            codec,
            clock_rate,
            last_sequence: None,
            pending: Vec::new(),
            inner,
        })
    }

    /// Codec of the track.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// RTP clock rate of the track (from the SDP).
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Codec parameters known so far (from fmtp sprop or in-band SPS/PPS/VPS; AAC config from fmtp
    /// `config=`), as the muxer needs them: [`CodecParams`] with `config` = `avcC`/`hvcC`/
    /// AudioSpecificConfig/OpusHead/`vpcC`/`av1C` record (empty for G.711) and, for video, the picture
    /// size from the SPS, VP9 keyframe header or AV1 sequence header. None until known (e.g. H.264
    /// without sprop and before the first SPS/PPS; VP9 before the first keyframe; AV1 before the first
    /// sequence header).
    pub fn params(&self) -> Option<CodecParams> {
        match &self.inner {
            Inner::H264(d) => d.params(),
            Inner::H265(d) => d.params(),
            Inner::Aac(d) => Some(d.params()),
            Inner::Opus(d) => Some(d.params()),
            Inner::G711(d) => Some(d.params()),
            Inner::Vp9(d) => d.params(),
            Inner::Av1(d) => d.params(),
        }
    }

    /// Feeds one RTP packet (whole packet incl. header); returns completed access units (0, 1 or several,
    /// e.g. AAC with several AUs per packet). Handles H.264 single NAL/STAP-A/FU-A (RFC 6184), H.265
    /// single/AP/FU (RFC 7798), AAC AU headers (RFC 3640), Opus (RFC 7587), G.711, VP9 (RFC 9628), AV1.
    /// A sequence gap marks the next
    /// access unit `loss` and drops partial fragments; an access unit ends at the marker bit or when the
    /// timestamp changes. Packets older than the last one (reordered or duplicated) are ignored.
    ///
    /// A malformed packet is an error; the depacketizer stays usable and the next access unit is marked
    /// `loss`.
    pub fn push(&mut self, packet: &[u8]) -> Result<Vec<AccessUnit>, DepacketizeError> {
        let pkt = RtpPacket::parse(packet).map_err(|r| malformed(self.codec, r))?;
        let gap = match self.last_sequence {
            None => false,
            Some(last) => {
                let delta = pkt.sequence.wrapping_sub(last);
                if delta == 0 || delta >= 0x8000 {
                    // Duplicate or late: the access unit it belonged to is already out.
                    return Ok(std::mem::take(&mut self.pending));
                }
                delta != 1
            }
        };
        self.last_sequence = Some(pkt.sequence);
        let mut out = std::mem::take(&mut self.pending);
        let result = match &mut self.inner {
            Inner::H264(d) => d.push(&pkt, gap, &mut out),
            Inner::H265(d) => d.push(&pkt, gap, &mut out),
            Inner::Aac(d) => d.push(&pkt, gap, &mut out),
            Inner::Opus(d) => d.push(&pkt, gap, &mut out),
            Inner::G711(d) => d.push(&pkt, gap, &mut out),
            Inner::Vp9(d) => d.push(&pkt, gap, &mut out),
            Inner::Av1(d) => d.push(&pkt, gap, &mut out),
        };
        match result {
            Ok(()) => Ok(out),
            Err(reason) => {
                // Access units completed before the bad part are not lost: the next push returns them.
                self.pending = out;
                Err(malformed(self.codec, reason))
            }
        }
    }
}

#[cfg(test)]
mod tests;
