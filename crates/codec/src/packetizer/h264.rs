//! H.264 packetization, RFC 6184 packetization-mode=1: single NAL unit packets, STAP-A for the in-band
//! parameter sets, FU-A for NAL units larger than a packet.

use bytes::Bytes;
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::nal::{Nal as _, RefNal};

use super::{bad_config, base64, hex_upper, malformed, PacketizeError};
use crate::avcc::AvcConfig;
use crate::nal::split_length_prefixed;
use crate::params::Codec;
use crate::rtp::Staging;

/// NAL unit type of an IDR slice.
pub(crate) const IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub(crate) const SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub(crate) const PPS: u8 = 8;
/// NAL unit type of an access unit delimiter.
const AUD: u8 = 9;
/// Payload type of a STAP-A packet.
pub(crate) const STAP_A: u8 = 24;
/// Payload type of an FU-A packet.
pub(crate) const FU_A: u8 = 28;

/// The NAL unit type in an H.264 NAL unit header.
pub(crate) fn nal_type(header: u8) -> u8 {
    header & 0x1f
}

/// H.264 state: the parsed `avcC`.
#[derive(Debug, Clone)]
pub(super) struct H264 {
    config: AvcConfig,
}

impl H264 {
    /// Parses the `avcC` record.
    pub(super) fn new(avcc: &Bytes) -> Result<Self, PacketizeError> {
        let config = AvcConfig::parse(avcc).map_err(|r| bad_config(Codec::H264, r))?;
        if config
            .sps
            .iter()
            .any(|s| s.first().map(|&b| nal_type(b)) != Some(SPS))
            || config
                .pps
                .iter()
                .any(|s| s.first().map(|&b| nal_type(b)) != Some(PPS))
        {
            return Err(bad_config(
                Codec::H264,
                "avcC holds a NAL unit of the wrong type",
            ));
        }
        Ok(H264 { config })
    }

    /// Picture size from the first SPS, if it parses.
    pub(super) fn dimensions(&self) -> Option<(u32, u32)> {
        let sps = self.config.sps.first()?;
        let nal = RefNal::new(sps, &[], true);
        let sps = SeqParameterSet::from_bits(nal.rbsp_bits()).ok()?;
        sps.pixel_dimensions().ok()
    }

    /// profile_idc, constraint flags and level_idc, from the SPS (else from the `avcC` header).
    fn profile_level_id(&self) -> [u8; 3] {
        match self.config.sps.first().map(|s| &s[..]) {
            Some(&[_, profile, compat, level, ..]) => [profile, compat, level],
            _ => self.config.profile_level,
        }
    }

    /// `a=fmtp` parameters.
    pub(super) fn fmtp(&self) -> String {
        let mut s = format!(
            "packetization-mode=1;profile-level-id={}",
            hex_upper(&self.profile_level_id())
        );
        let sets: Vec<String> = self
            .config
            .sps
            .iter()
            .chain(&self.config.pps)
            .map(|s| base64(s))
            .collect();
        if !sets.is_empty() {
            s.push_str(";sprop-parameter-sets=");
            s.push_str(&sets.join(","));
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
            .map_err(|r| malformed(Codec::H264, r))?;
        if nals.is_empty() {
            return Err(malformed(Codec::H264, "sample has no NAL units"));
        }
        let types = || nals.iter().filter_map(|n| n.first()).map(|&h| nal_type(h));
        let inject = (keyframe || types().any(|t| t == IDR))
            && !types().any(|t| t == SPS)
            && !self.config.sps.is_empty();
        // Parameter sets go after any access unit delimiter, before everything else.
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

    /// Stages SPS and PPS: one STAP-A if they fit, else each on its own.
    fn parameter_sets(&self, ts: u32, max: usize, st: &mut Staging) {
        let sets: Vec<&Bytes> = self.config.sps.iter().chain(&self.config.pps).collect();
        let total: usize = 1 + sets.iter().map(|s| 2 + s.len()).sum::<usize>();
        if sets.len() < 2 || total > max || sets.iter().any(|s| s.len() > usize::from(u16::MAX)) {
            for set in sets {
                single_or_fragments(set, ts, max, st);
            }
            return;
        }
        let firsts = || sets.iter().filter_map(|s| s.first());
        let forbidden = firsts().fold(0, |acc, &b| acc | (b & 0x80));
        let nri = firsts().map(|&b| b & 0x60).max().unwrap_or(0);
        let mut payload = Vec::with_capacity(total);
        payload.push(forbidden | nri | STAP_A);
        for set in sets {
            payload.extend_from_slice(&u16::try_from(set.len()).unwrap_or(u16::MAX).to_be_bytes());
            payload.extend_from_slice(set);
        }
        st.push(ts, false, &[&payload]);
    }
}

/// Stages one NAL unit as a single NAL unit packet, or as FU-A fragments when larger than `max`.
fn single_or_fragments(nal: &[u8], ts: u32, max: usize, st: &mut Staging) {
    let Some((&header, body)) = nal.split_first() else {
        return;
    };
    if nal.len() <= max {
        st.push(ts, false, &[nal]);
        return;
    }
    let indicator = (header & 0xe0) | FU_A;
    let chunks = body.chunks(max - 2);
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.enumerate() {
        let fu = (u8::from(i == 0) << 7) | (u8::from(i == last) << 6) | nal_type(header);
        st.push(ts, false, &[&[indicator, fu], chunk]);
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

    const AVCC: &[u8] = include_bytes!("../../tests/data/h264.avcc");
    const IDR_SAMPLE: &[u8] = include_bytes!("../../tests/data/h264_sample0.bin");
    const P_SAMPLE: &[u8] = include_bytes!("../../tests/data/h264_sample1.bin");

    fn packetizer(max: usize) -> Packetizer {
        let params = CodecParams::new(Codec::H264, Bytes::from_static(AVCC));
        Packetizer::new(&params, 96, 0xdead_beef, 65_530, max).unwrap()
    }

    /// Length-prefixed sample of the given NAL units.
    fn sample(nals: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    #[test]
    fn sdp_for_x264_record() {
        let p = packetizer(1400);
        assert_eq!(p.rtpmap(), "96 H264/90000");
        assert_eq!(p.clock_rate(), 90_000);
        let cfg = AvcConfig::parse(AVCC).unwrap();
        let fmtp = format!(
            "96 packetization-mode=1;profile-level-id=64001E;sprop-parameter-sets={},{}",
            base64(&cfg.sps[0]),
            base64(&cfg.pps[0])
        );
        assert_eq!(p.fmtp().unwrap(), fmtp);
        assert!(fmtp.contains("sprop-parameter-sets=Z2QAHqyyAUBf8uAiAAADAAIAAAMAZB4sXJA=,aOvDyyLA"));
        assert_eq!(
            p.sdp_media(),
            format!(
                "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:{fmtp}\r\na=framesize:96 640-360\r\n"
            )
        );
    }

    #[test]
    fn idr_sample_gets_parameter_sets_then_fragments() {
        let mut p = packetizer(1400);
        let mut out = Vec::new();
        p.packetize(IDR_SAMPLE, 3600, true, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 96, 0xdead_beef, 65_530, 3600, 1400);
        assert_eq!(p.next_sequence(), 65_530u16.wrapping_add(out.len() as u16));
        // First packet: STAP-A holding SPS then PPS.
        let cfg = AvcConfig::parse(AVCC).unwrap();
        let stap = pkts[0].payload;
        assert_eq!(nal_type(stap[0]), STAP_A);
        let mut expect = vec![stap[0]];
        for s in [&cfg.sps[0], &cfg.pps[0]] {
            expect.extend_from_slice(&(s.len() as u16).to_be_bytes());
            expect.extend_from_slice(s);
        }
        assert_eq!(stap, &expect[..]);
        assert!(starts_keyframe(Codec::H264, stap));
        // Then the SEI as a single NAL unit packet, then the IDR in FU-A fragments.
        let nals = split_length_prefixed(IDR_SAMPLE, 4).unwrap();
        assert_eq!(nals.len(), 2);
        assert_eq!(pkts[1].payload, nals[0]);
        let frags: Vec<&[u8]> = pkts[2..].iter().map(|p| p.payload).collect();
        assert!(frags.len() > 1);
        assert_eq!(reassemble_fu_a(&frags), nals[1]);
        assert!(starts_keyframe(Codec::H264, frags[0]));
        assert!(!starts_keyframe(Codec::H264, frags[1]));
        assert!(!starts_keyframe(Codec::H264, frags[frags.len() - 1]));
    }

    #[test]
    fn p_frame_has_no_parameter_sets_and_is_not_a_keyframe() {
        let mut p = packetizer(1400);
        let mut out = Vec::new();
        p.packetize(P_SAMPLE, 7200, false, &mut out).unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        check_headers(&pkts, 96, 0xdead_beef, 65_530, 7200, 1400);
        let nals = split_length_prefixed(P_SAMPLE, 4).unwrap();
        assert_eq!(nals.len(), 1);
        assert_eq!(nal_type(nals[0][0]), 1);
        let frags: Vec<&[u8]> = pkts.iter().map(|p| p.payload).collect();
        assert_eq!(reassemble_fu_a(&frags), nals[0]);
        assert!(pkts
            .iter()
            .all(|p| !starts_keyframe(Codec::H264, p.payload)));
    }

    #[test]
    fn small_nals_are_single_packets_and_aud_stays_first() {
        let mut p = packetizer(1400);
        let mut out = Vec::new();
        let aud: &[u8] = &[0x09, 0xf0];
        let idr: &[u8] = &[0x65, 0x88, 0x80, 0x10];
        p.packetize(&sample(&[aud, idr]), 0, true, &mut out)
            .unwrap();
        let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0].payload, aud);
        assert_eq!(nal_type(pkts[1].payload[0]), STAP_A);
        assert_eq!(pkts[2].payload, idr);
        assert!(starts_keyframe(Codec::H264, pkts[2].payload));
        assert_eq!(
            pkts.iter().map(|p| p.marker).collect::<Vec<_>>(),
            [false, false, true]
        );

        // A sample carrying its own SPS gets no second copy.
        out.clear();
        let sps = &AvcConfig::parse(AVCC).unwrap().sps[0];
        p.packetize(&sample(&[sps, idr]), 0, true, &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
        // A non-IDR slice is not a keyframe.
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a]));
    }

    #[test]
    fn errors_emit_nothing() {
        let mut p = packetizer(1400);
        let mut out = Vec::new();
        let before = p.next_sequence();
        assert!(matches!(
            p.packetize(&[0, 0, 0, 9, 0x65], 0, true, &mut out),
            Err(PacketizeError::MalformedSample { .. })
        ));
        assert!(p.packetize(&[], 0, false, &mut out).is_err());
        assert!(out.is_empty());
        assert_eq!(p.next_sequence(), before);
        let bad = CodecParams::new(Codec::H264, Bytes::from_static(&AVCC[..10]));
        assert!(matches!(
            Packetizer::new(&bad, 96, 0, 0, 1400),
            Err(PacketizeError::BadConfig { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn fu_a_round_trips(len in 1usize..20_000, max in 64usize..3000, seed: u8) {
            let mut nal: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            nal[0] = 0x41;
            let mut p = packetizer(max);
            let mut out = Vec::new();
            p.packetize(&sample(&[&nal]), 1, false, &mut out).unwrap();
            let pkts: Vec<Rtp> = out.iter().map(|b| Rtp::parse(b)).collect();
            check_headers(&pkts, 96, 0xdead_beef, 65_530, 1, max);
            if len <= max {
                prop_assert_eq!(pkts.len(), 1);
                prop_assert_eq!(pkts[0].payload, &nal[..]);
            } else {
                let frags: Vec<&[u8]> = pkts.iter().map(|p| p.payload).collect();
                prop_assert_eq!(reassemble_fu_a(&frags), nal);
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000), key: bool) {
            let mut p = packetizer(200);
            let mut out = Vec::new();
            if p.packetize(&data, 0, key, &mut out).is_ok() {
                prop_assert!(out.iter().all(|b| b.len() <= 212));
            } else {
                prop_assert!(out.is_empty());
            }
            for b in &out {
                let _ = starts_keyframe(Codec::H264, &b[12..]);
            }
        }
    }
}
