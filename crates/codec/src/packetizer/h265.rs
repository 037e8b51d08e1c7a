//! H.265 packetization, RFC 7798 (no DONL, sprop-max-don-diff=0): single NAL unit packets, an aggregation
//! packet (AP) for the in-band parameter sets, fragmentation units (FU) for NAL units larger than a packet.

use bytes::Bytes;

use super::{bad_config, base64, malformed, PacketizeError};
use crate::hvcc::{nal_type, HevcConfig, SPS, VPS};
use crate::nal::split_length_prefixed;
use crate::params::Codec;
use crate::rtp::Staging;

/// Payload type of an aggregation packet.
pub(crate) const AP: u8 = 48;
/// Payload type of a fragmentation unit.
pub(crate) const FU: u8 = 49;
/// NAL unit type of an access unit delimiter.
const AUD: u8 = 35;

/// Whether a NAL unit type is an IRAP picture (BLA, IDR, CRA).
pub(crate) fn is_irap(t: u8) -> bool {
    (16..=21).contains(&t)
}

/// H.265 state: the parsed `hvcC`.
#[derive(Debug, Clone)]
pub(super) struct H265 {
    config: HevcConfig,
}

impl H265 {
    /// Parses the `hvcC` record.
    pub(super) fn new(hvcc: &Bytes) -> Result<Self, PacketizeError> {
        let config = HevcConfig::parse(hvcc).map_err(|r| bad_config(Codec::H265, r))?;
        Ok(H265 { config })
    }

    /// `a=fmtp` parameters.
    pub(super) fn fmtp(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "profile-id={};tier-flag={};level-id={}",
            c.profile_id, c.tier_flag, c.level_id
        );
        for (name, sets) in [("vps", &c.vps), ("sps", &c.sps), ("pps", &c.pps)] {
            if !sets.is_empty() {
                let v: Vec<String> = sets.iter().map(|s| base64(s)).collect();
                s.push_str(&format!(";sprop-{name}={}", v.join(",")));
            }
        }
        s
    }

    /// Stages the packets of one access unit.
    pub(super) fn packetize(
        &self,
        data: &[u8],
        ts: u32,
        keyframe: bool,
        max: usize,
        st: &mut Staging,
    ) -> Result<(), PacketizeError> {
        let nals = split_length_prefixed(data, self.config.length_size)
            .map_err(|r| malformed(Codec::H265, r))?;
        if nals.is_empty() {
            return Err(malformed(Codec::H265, "sample has no NAL units"));
        }
        if nals.iter().any(|n| n.len() < 2) {
            return Err(malformed(Codec::H265, "NAL unit shorter than its header"));
        }
        let types = || nals.iter().filter_map(|n| n.first()).map(|&h| nal_type(h));
        let inject = (keyframe || types().any(is_irap))
            && !types().any(|t| t == VPS || t == SPS)
            && !(self.config.vps.is_empty() && self.config.sps.is_empty());
        let lead = types().take_while(|&t| t == AUD).count();
        for (i, nal) in nals.iter().enumerate() {
            if inject && i == lead {
                self.parameter_sets(ts, max, st);
            }
            single_or_fragments(nal, ts, max, st);
        }
        if inject && lead == nals.len() {
            self.parameter_sets(ts, max, st);
        }
        st.mark_last();
        Ok(())
    }

    /// Stages VPS, SPS and PPS: one AP if they fit, else each on its own.
    fn parameter_sets(&self, ts: u32, max: usize, st: &mut Staging) {
        let c = &self.config;
        let sets: Vec<&Bytes> = c.vps.iter().chain(&c.sps).chain(&c.pps).collect();
        let total: usize = 2 + sets.iter().map(|s| 2 + s.len()).sum::<usize>();
        if sets.len() < 2 || total > max || sets.iter().any(|s| s.len() > usize::from(u16::MAX)) {
            for set in sets {
                single_or_fragments(set, ts, max, st);
            }
            return;
        }
        // F: OR of all; LayerId and TID: the lowest of all (RFC 7798 §4.4.2).
        let headers = || sets.iter().filter_map(|s| Some((*s.first()?, *s.get(1)?)));
        let forbidden = headers().fold(0, |acc, (a, _)| acc | (a & 0x80));
        let layer = headers()
            .map(|(a, b)| (u16::from(a & 1) << 5) | u16::from(b >> 3))
            .min()
            .unwrap_or(0);
        let tid = headers().map(|(_, b)| b & 0x07).min().unwrap_or(1);
        let mut payload = Vec::with_capacity(total);
        payload.push(forbidden | (AP << 1) | u8::from(layer >= 32));
        payload.push((((layer & 0x1f) as u8) << 3) | tid);
        for set in sets {
            payload.extend_from_slice(&u16::try_from(set.len()).unwrap_or(u16::MAX).to_be_bytes());
            payload.extend_from_slice(set);
        }
        st.push(ts, false, &[&payload]);
    }
}

/// Stages one NAL unit (at least 2 bytes) as a single NAL unit packet, or as FUs when larger than `max`.
fn single_or_fragments(nal: &[u8], ts: u32, max: usize, st: &mut Staging) {
    let &[h0, h1, ref body @ ..] = nal else {
        return;
    };
    if nal.len() <= max {
        st.push(ts, false, &[nal]);
        return;
    }
    let payload_header = [(h0 & 0x81) | (FU << 1), h1];
    let chunks = body.chunks(max - 3);
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let fu = (u8::from(i == 0) << 7) | (u8::from(i == last) << 6) | nal_type(h0);
        st.push(ts, false, &[&payload_header, &[fu], chunk]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::keyframe::starts_keyframe;
    use crate::packetizer::Packetizer;
    use crate::params::CodecParams;
    use proptest::prelude::*;

    const HVCC: &[u8] = include_bytes!("../../tests/data/h265.hvcc");
    const IRAP_SAMPLE: &[u8] = include_bytes!("../../tests/data/h265_sample0.bin");
    const P_SAMPLE: &[u8] = include_bytes!("../../tests/data/h265_sample1.bin");

    fn packetizer(max: usize) -> Packetizer {
        let params = CodecParams {
            width: Some(320),
            height: Some(240),
            ..CodecParams::new(Codec::H265, Bytes::from_static(HVCC))
        };
        Packetizer::new(&params, 97, 7, 100, max).unwrap()
    }

    #[test]
    fn sdp_for_x265_record() {
        let p = packetizer(1400);
        let c = HevcConfig::parse(HVCC).unwrap();
        let fmtp = format!(
            "97 profile-id=1;tier-flag=0;level-id={};sprop-vps={};sprop-sps={};sprop-pps={}",
            c.level_id,
            base64(&c.vps[0]),
            base64(&c.sps[0]),
            base64(&c.pps[0])
        );
        assert!(
            fmtp.contains(";sprop-vps=QAEMAf//AWAAAAMAkAAAAwAAAwA8"),
            "{fmtp}"
        );
        assert_eq!(p.rtpmap(), "97 H265/90000");
        assert_eq!(
            p.sdp_media(),
            format!("m=video 0 RTP/AVP 97\r\na=rtpmap:97 H265/90000\r\na=fmtp:{fmtp}\r\na=framesize:97 320-240\r\n")
        );
    }

    #[test]
    fn irap_gets_parameter_sets_in_an_ap_then_fragments() {
        let mut p = packetizer(1000);
        let mut out = Vec::new();
        p.packetize(IRAP_SAMPLE, 42, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 97, 7, 100, 42, 1000);
        let ap = pkts[0].payload;
        assert_eq!(nal_type(ap[0]), AP);
        let c = HevcConfig::parse(HVCC).unwrap();
        let mut expect = ap[..2].to_vec();
        for s in [&c.vps[0], &c.sps[0], &c.pps[0]] {
            expect.extend_from_slice(&(s.len() as u16).to_be_bytes());
            expect.extend_from_slice(s);
        }
        assert_eq!(ap, &expect[..]);
        assert_eq!(ap[1], 0x01, "LayerId 0, TID 1");
        assert!(starts_keyframe(Codec::H265, ap));
        let nals = split_length_prefixed(IRAP_SAMPLE, 4).unwrap();
        assert_eq!(nals.len(), 1);
        assert!(is_irap(nal_type(nals[0][0])));
        let frags: Vec<&[u8]> = pkts[1..].iter().map(|p| p.payload).collect();
        assert_eq!(reassemble_fu_h265(&frags), nals[0]);
        assert!(starts_keyframe(Codec::H265, frags[0]));
        assert!(!starts_keyframe(Codec::H265, frags[1]));
    }

    #[test]
    fn non_irap_is_plain() {
        let mut p = packetizer(1400);
        let mut out = Vec::new();
        p.packetize(P_SAMPLE, 0, false, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 97, 7, 100, 0, 1400);
        assert!(pkts
            .iter()
            .all(|p| !starts_keyframe(Codec::H265, p.payload)));
        let nals = split_length_prefixed(P_SAMPLE, 4).unwrap();
        assert_eq!(pkts.len(), nals.len());
        assert_eq!(pkts[0].payload, nals[0]);
    }

    #[test]
    fn keyframe_detection_on_hand_built_payloads() {
        // Single NAL units: IDR_W_RADL (19), CRA (21), VPS (32), SPS (33) yes; TRAIL_R (1), PPS (34) no.
        for (t, key) in [
            (19u8, true),
            (21, true),
            (32, true),
            (33, true),
            (1, false),
            (34, false),
        ] {
            assert_eq!(
                starts_keyframe(Codec::H265, &[t << 1, 1, 0xaa]),
                key,
                "type {t}"
            );
        }
        // AP holding a PPS then an IDR.
        let ap = [AP << 1, 1, 0, 3, 34 << 1, 1, 0xc0, 0, 3, 19 << 1, 1, 0x80];
        assert!(starts_keyframe(Codec::H265, &ap));
        // AP of PPS only, and a truncated AP.
        assert!(!starts_keyframe(
            Codec::H265,
            &[AP << 1, 1, 0, 3, 34 << 1, 1, 0xc0]
        ));
        assert!(!starts_keyframe(Codec::H265, &[AP << 1, 1, 0, 9, 19 << 1]));
        // FU start / middle of an IDR, start of a TRAIL_R.
        assert!(starts_keyframe(Codec::H265, &[FU << 1, 1, 0x80 | 19, 0]));
        assert!(!starts_keyframe(Codec::H265, &[FU << 1, 1, 19, 0]));
        assert!(!starts_keyframe(Codec::H265, &[FU << 1, 1, 0x80 | 1, 0]));
        assert!(!starts_keyframe(Codec::H265, &[]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fu_round_trips(len in 2usize..20_000, max in 64usize..3000, seed: u8) {
            let mut nal: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed)).collect();
            nal[0] = 1 << 1;
            nal[1] = 1;
            let mut sample = (len as u32).to_be_bytes().to_vec();
            sample.extend_from_slice(&nal);
            let mut p = packetizer(max);
            let mut out = Vec::new();
            p.packetize(&sample, 5, false, &mut out).unwrap();
            let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
            check_headers(&pkts, 97, 7, 100, 5, max);
            if len <= max {
                prop_assert_eq!(pkts[0].payload, &nal[..]);
            } else {
                let frags: Vec<&[u8]> = pkts.iter().map(|p| p.payload).collect();
                prop_assert_eq!(reassemble_fu_h265(&frags), nal);
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000), key: bool) {
            let mut p = packetizer(100);
            let mut out = Vec::new();
            if p.packetize(&data, 0, key, &mut out).is_ok() {
                prop_assert!(out.iter().all(|b| b.len() <= 112));
            } else {
                prop_assert!(out.is_empty());
            }
            for b in &out {
                let _ = starts_keyframe(Codec::H265, &b[12..]);
            }
        }
    }
}
