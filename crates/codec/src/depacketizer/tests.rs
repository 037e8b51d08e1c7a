//! Depacketizer tests: round trips through this crate's [`Packetizer`], loss, boundaries, robustness.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::nal::split_length_prefixed;
use crate::packetizer::Packetizer;

const AVCC: &[u8] = include_bytes!("../../tests/data/h264.avcc");
const HVCC: &[u8] = include_bytes!("../../tests/data/h265.hvcc");
const ASC: &[u8] = include_bytes!("../../tests/data/aac.asc");
const DOPS: &[u8] = include_bytes!("../../tests/data/opus.dops");
const H264_SAMPLES: [&[u8]; 2] = [
    include_bytes!("../../tests/data/h264_sample0.bin"),
    include_bytes!("../../tests/data/h264_sample1.bin"),
];
const H265_SAMPLES: [&[u8]; 2] = [
    include_bytes!("../../tests/data/h265_sample0.bin"),
    include_bytes!("../../tests/data/h265_sample1.bin"),
];
const AAC_FRAME: &[u8] = include_bytes!("../../tests/data/aac_sample0.bin");
const OPUS_FRAME: &[u8] = include_bytes!("../../tests/data/opus_sample0.bin");
const VPCC: &[u8] = include_bytes!("../../tests/data/vp9.vpcc");
const VP9_SAMPLES: [&[u8]; 2] = [
    include_bytes!("../../tests/data/vp9_sample0.bin"),
    include_bytes!("../../tests/data/vp9_sample1.bin"),
];
const AV1C: &[u8] = include_bytes!("../../tests/data/av1.av1c");
const AV1_SAMPLES: [&[u8]; 2] = [
    include_bytes!("../../tests/data/av1_sample0.bin"),
    include_bytes!("../../tests/data/av1_sample1.bin"),
];

/// A packetizer for `codec` with a real config record, and the depacketizer its SDP describes.
fn pair(codec: Codec, max: usize, first_seq: u16) -> (Packetizer, Depacketizer) {
    let config = match codec {
        Codec::H264 => AVCC,
        Codec::H265 => HVCC,
        Codec::Aac => ASC,
        Codec::Opus => DOPS,
        Codec::Vp9 => VPCC,
        Codec::Av1 => AV1C,
        Codec::Pcmu => &[],
        _ => unreachable!(),
    };
    let params = CodecParams::new(codec, Bytes::from_static(config));
    let p = Packetizer::new(&params, 96, 7, first_seq, max).unwrap();
    let rtpmap = p.rtpmap();
    let mut parts = rtpmap.split_once(' ').unwrap().1.split('/');
    let (name, rate) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    );
    let channels = parts.next().map(|c| c.parse().unwrap());
    let fmtp = p.fmtp();
    let d = Depacketizer::new(name, rate, channels, fmtp.as_deref()).unwrap();
    (p, d)
}

/// The NAL units of a length-prefixed sample, without parameter sets (which the packetizer injects).
fn nals_without_sets(data: &[u8], h265: bool) -> Vec<Vec<u8>> {
    split_length_prefixed(data, 4)
        .unwrap()
        .into_iter()
        .filter(|n| {
            let ty = if h265 {
                (n[0] >> 1) & 0x3f
            } else {
                n[0] & 0x1f
            };
            if h265 {
                !(32..=34).contains(&ty)
            } else {
                ty != 7 && ty != 8
            }
        })
        .map(<[u8]>::to_vec)
        .collect()
}

/// Packetizes `samples` (cycling) and feeds every packet, returning the access units.
fn round_trip(codec: Codec, samples: &[&[u8]], max: usize, first_seq: u16) -> Vec<AccessUnit> {
    let (mut p, mut d) = pair(codec, max, first_seq);
    let mut aus = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let mut pkts = Vec::new();
        p.packetize(s, 3000 * i as u32, i == 0, &mut pkts).unwrap();
        for pkt in pkts {
            aus.extend(d.push(&pkt).unwrap());
        }
    }
    aus
}

#[test]
fn h264_round_trip_at_many_packet_sizes() {
    let samples = [
        H264_SAMPLES[0],
        H264_SAMPLES[1],
        H264_SAMPLES[1],
        H264_SAMPLES[0],
    ];
    for max in [64, 100, 500, 1400, 65_000] {
        let aus = round_trip(Codec::H264, &samples, max, 65_530);
        assert_eq!(aus.len(), samples.len(), "max {max}");
        for (i, (au, s)) in aus.iter().zip(&samples).enumerate() {
            assert_eq!(au.rtp_timestamp, 3000 * i as u32);
            assert!(!au.loss);
            assert_eq!(
                nals_without_sets(&au.data, false),
                nals_without_sets(s, false)
            );
            let idr = nals_without_sets(s, false).iter().any(|n| n[0] & 0x1f == 5);
            assert_eq!(au.keyframe, idr);
            if idr {
                // The packetizer sent SPS and PPS in-band before the IDR.
                let all = split_length_prefixed(&au.data, 4).unwrap();
                assert!(all.iter().any(|n| n[0] & 0x1f == 7));
            }
        }
    }
    let (_, d) = pair(Codec::H264, 1400, 0);
    let params = d.params().unwrap();
    assert_eq!(&params.config[..], AVCC);
    assert_eq!((params.width, params.height), (Some(640), Some(360)));
}

#[test]
fn h265_round_trip_at_many_packet_sizes() {
    let samples = [H265_SAMPLES[0], H265_SAMPLES[1], H265_SAMPLES[0]];
    for max in [64, 300, 1400] {
        let aus = round_trip(Codec::H265, &samples, max, 100);
        assert_eq!(aus.len(), samples.len(), "max {max}");
        for (au, s) in aus.iter().zip(&samples) {
            assert!(!au.loss);
            assert_eq!(
                nals_without_sets(&au.data, true),
                nals_without_sets(s, true)
            );
            let irap = nals_without_sets(s, true)
                .iter()
                .any(|n| (16..=21).contains(&((n[0] >> 1) & 0x3f)));
            assert_eq!(au.keyframe, irap);
        }
    }
    let (_, d) = pair(Codec::H265, 1400, 0);
    let params = d.params().unwrap();
    let c = crate::hvcc::HevcConfig::parse(&params.config).unwrap();
    let orig = crate::hvcc::HevcConfig::parse(HVCC).unwrap();
    assert_eq!((c.vps, c.sps, c.pps), (orig.vps, orig.sps, orig.pps));
    assert_eq!((params.width, params.height), (Some(320), Some(240)));
}

#[test]
fn aac_round_trip_including_fragmented_frames() {
    let big = vec![0x21u8; 3000];
    let samples: [&[u8]; 3] = [AAC_FRAME, &big, AAC_FRAME];
    let aus = round_trip(Codec::Aac, &samples, 1400, 0);
    assert_eq!(aus.len(), 3);
    for (i, (au, s)) in aus.iter().zip(&samples).enumerate() {
        assert_eq!(&au.data[..], *s);
        assert_eq!(au.rtp_timestamp, 3000 * i as u32);
        assert!(au.keyframe && !au.loss);
    }
    let (_, d) = pair(Codec::Aac, 1400, 0);
    let params = d.params().unwrap();
    assert_eq!(&params.config[..], ASC);
    assert_eq!(params.clock_rate(), 48_000);
    assert_eq!(params.channels, Some(2));
}

/// Builds an RTP packet.
fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, (u8::from(marker) << 7) | 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn aac_several_access_units_per_packet_and_lbr() {
    let mut d = Depacketizer::new(
        "mpeg4-generic",
        48_000,
        Some(2),
        Some("96 streamtype=5;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190"),
    )
    .unwrap();
    // Three AUs of 3, 1 and 2 bytes: AU-headers-length 48 bits, headers size<<3.
    let mut payload = vec![0, 48];
    for size in [3u16, 1, 2] {
        payload.extend_from_slice(&(size << 3).to_be_bytes());
    }
    payload.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    let aus = d.push(&rtp(1, 1000, true, &payload)).unwrap();
    let got: Vec<(u32, &[u8])> = aus.iter().map(|a| (a.rtp_timestamp, &a.data[..])).collect();
    assert_eq!(
        got,
        [
            (1000, &[1, 2, 3][..]),
            (2024, &[4][..]),
            (3048, &[5, 6][..])
        ]
    );

    // AAC-lbr defaults: 6-bit size, 2-bit index; 960-sample frames from frameLengthFlag.
    let mut d = Depacketizer::new(
        "MPEG4-GENERIC",
        48_000,
        None,
        Some("mode=AAC-lbr;config=1194"),
    )
    .unwrap();
    let aus = d
        .push(&rtp(1, 0, true, &[0, 16, 2 << 2, 1 << 2, 9, 9, 8]))
        .unwrap();
    let got: Vec<(u32, &[u8])> = aus.iter().map(|a| (a.rtp_timestamp, &a.data[..])).collect();
    assert_eq!(got, [(0, &[9, 9][..]), (960, &[8][..])]);
    assert!(d
        .push(&rtp(2, 0, true, &[0, 16, 2 << 2, 1 << 2, 9]))
        .is_err());

    assert!(Depacketizer::new("MPEG4-GENERIC", 48_000, None, Some("mode=AAC-hbr")).is_err());
    assert!(Depacketizer::new("MPEG4-GENERIC", 48_000, None, Some("config=1190")).is_err());
}

#[test]
fn opus_packets_and_head() {
    let aus = round_trip(Codec::Opus, &[OPUS_FRAME, OPUS_FRAME], 1400, 9);
    assert_eq!(aus.len(), 2);
    assert!(aus.iter().all(|a| &a.data[..] == OPUS_FRAME && a.keyframe));
    let d = Depacketizer::new("opus", 48_000, Some(2), Some("sprop-stereo=0")).unwrap();
    let params = d.params().unwrap();
    assert!(params.config.starts_with(b"OpusHead"));
    assert_eq!((params.channels, params.config[9]), (Some(1), 1));
    assert!(Depacketizer::new("VP8", 90_000, None, None).is_err());
    assert!(Depacketizer::new("nonsense", 8000, None, None).is_err());
    assert!(Depacketizer::new("H264", 0, None, None).is_err());
    assert!(Depacketizer::new("H264", 90_000, None, Some("packetization-mode=2")).is_err());
}

#[test]
fn losing_a_fragment_marks_loss_and_drops_the_nal() {
    let (mut p, mut d) = pair(Codec::H264, 200, 0);
    let mut pkts = Vec::new();
    p.packetize(H264_SAMPLES[0], 0, true, &mut pkts).unwrap();
    let first_len = pkts.len();
    p.packetize(H264_SAMPLES[1], 3000, false, &mut pkts)
        .unwrap();
    p.packetize(H264_SAMPLES[1], 6000, false, &mut pkts)
        .unwrap();
    assert!(first_len > 4);
    let mut aus = Vec::new();
    for (i, pkt) in pkts.iter().enumerate() {
        if i == first_len / 2 {
            continue; // a middle fragment of the keyframe's big NAL unit
        }
        aus.extend(d.push(pkt).unwrap());
    }
    assert_eq!(aus.len(), 3);
    assert!(aus[0].loss);
    // The damaged NAL unit is gone; the parameter sets before it survive.
    let kept = split_length_prefixed(&aus[0].data, 4).unwrap();
    assert!(
        kept.iter().all(|n| n[0] & 0x1f != 5),
        "no partial IDR slice"
    );
    assert!(!aus[1].loss && !aus[2].loss);

    // Losing the last packet of an access unit: it ends at the timestamp change, and the next one is clean.
    let (mut p, mut d) = pair(Codec::H264, 200, 0);
    let mut a = Vec::new();
    p.packetize(H264_SAMPLES[1], 0, false, &mut a).unwrap();
    let mut b = Vec::new();
    p.packetize(H264_SAMPLES[1], 3000, false, &mut b).unwrap();
    let mut aus = Vec::new();
    for pkt in &a[..a.len() - 1] {
        aus.extend(d.push(pkt).unwrap());
    }
    for pkt in &b {
        aus.extend(d.push(pkt).unwrap());
    }
    // The first access unit was one fragmented NAL unit whose end was lost: nothing of it is left.
    assert_eq!(aus.len(), 1);
    assert_eq!(aus[0].rtp_timestamp, 3000);
    assert!(aus[0].loss, "the AU after a gap is marked");
}

#[test]
fn gap_between_access_units_marks_the_next_one() {
    let mut d = Depacketizer::new("opus", 48_000, Some(2), None).unwrap();
    assert!(!d.push(&rtp(10, 0, true, &[1])).unwrap()[0].loss);
    assert!(d.push(&rtp(12, 1920, true, &[1])).unwrap()[0].loss);
    // Late and duplicate packets are ignored.
    assert!(d.push(&rtp(11, 960, true, &[1])).unwrap().is_empty());
    assert!(d.push(&rtp(12, 1920, true, &[1])).unwrap().is_empty());
    assert!(!d.push(&rtp(13, 2880, true, &[1])).unwrap()[0].loss);
}

#[test]
fn h264_in_band_parameter_sets_and_timestamp_boundaries() {
    let mut d = Depacketizer::new("H264", 90_000, None, None).unwrap();
    assert!(d.params().is_none());
    let cfg = crate::avcc::AvcConfig::parse(AVCC).unwrap();
    let mut stap = vec![24u8];
    for set in [&cfg.sps[0], &cfg.pps[0]] {
        stap.extend_from_slice(&(set.len() as u16).to_be_bytes());
        stap.extend_from_slice(set);
    }
    assert!(d.push(&rtp(1, 0, false, &stap)).unwrap().is_empty());
    assert_eq!(&d.params().unwrap().config[..], AVCC);
    // No marker: the access unit ends when the timestamp changes.
    assert!(d.push(&rtp(2, 0, false, &[0x65, 1, 2])).unwrap().is_empty());
    let aus = d.push(&rtp(3, 3000, true, &[0x41, 3])).unwrap();
    assert_eq!(aus.len(), 2);
    assert!(aus[0].keyframe && !aus[1].keyframe);
    assert_eq!(aus[1].data[..], [0, 0, 0, 2, 0x41, 3]);
    // A malformed packet is refused, the next AU is marked, and earlier complete AUs are not lost.
    assert!(d.push(&rtp(4, 6000, false, &[0x41, 4])).unwrap().is_empty());
    assert!(d.push(&rtp(5, 9000, false, &[24, 0, 9, 1])).is_err());
    let aus = d.push(&rtp(6, 9000, true, &[0x41, 5])).unwrap();
    assert_eq!(aus.len(), 2);
    assert_eq!(aus[0].rtp_timestamp, 6000);
    assert!(!aus[0].loss && aus[1].loss);
}

#[test]
fn rtp_header_extensions_csrcs_and_padding() {
    let mut d = Depacketizer::new("opus", 48_000, Some(2), None).unwrap();
    // CC=1, X=1, P=1: one CSRC, a one-word extension, two padding bytes.
    let mut p = vec![0xb1, 0x80 | 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(&[9, 9, 9, 9]); // CSRC
    p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension
    p.extend_from_slice(&[0xaa, 0xbb, 0, 2]); // payload + padding
    assert_eq!(&d.push(&p).unwrap()[0].data[..], &[0xaa, 0xbb]);
    for bad in [
        &[0x80u8, 96][..],
        &[0x40; 12][..],
        &[0xa0, 96, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 5][..],
    ] {
        assert!(d.push(bad).is_err());
    }
}

#[test]
fn h265_donl_fields() {
    let cfg = crate::hvcc::HevcConfig::parse(HVCC).unwrap();
    let mut d = Depacketizer::new("H265", 90_000, None, Some("sprop-max-don-diff=2")).unwrap();
    // AP with DONL then DOND: VPS, SPS, PPS.
    let mut ap = vec![48 << 1, 1];
    for (i, set) in [&cfg.vps[0], &cfg.sps[0], &cfg.pps[0]]
        .into_iter()
        .enumerate()
    {
        if i == 0 {
            ap.extend_from_slice(&[0, 0]);
        } else {
            ap.push(1);
        }
        ap.extend_from_slice(&(set.len() as u16).to_be_bytes());
        ap.extend_from_slice(set);
    }
    d.push(&rtp(1, 0, false, &ap)).unwrap();
    assert!(d.params().is_some());
    // FU of an IDR_W_RADL (19) NAL unit, DONL in the first fragment only.
    d.push(&rtp(2, 0, false, &[49 << 1, 1, 0x80 | 19, 0, 3, 0xaa]))
        .unwrap();
    let aus = d
        .push(&rtp(3, 0, true, &[49 << 1, 1, 0x40 | 19, 0xbb]))
        .unwrap();
    let nals = split_length_prefixed(&aus[0].data, 4).unwrap();
    assert_eq!(nals.last().unwrap(), &[19 << 1, 1, 0xaa, 0xbb]);
    assert!(aus[0].keyframe);
    // Single NAL unit with DONL.
    let aus = d.push(&rtp(4, 3000, true, &[2, 1, 0, 4, 0xcc])).unwrap();
    assert_eq!(aus[0].data[..], [0, 0, 0, 3, 2, 1, 0xcc]);
}

const CODECS: [(&str, u32, Option<&str>); 9] = [
    ("H264", 90_000, Some("packetization-mode=1")),
    ("H265", 90_000, None),
    ("H265", 90_000, Some("sprop-max-don-diff=1")),
    ("MPEG4-GENERIC", 48_000, Some("mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190")),
    ("MPEG4-GENERIC", 44_100, Some("sizelength=6;indexlength=2;indexdeltalength=2;ctsdeltalength=3;dtsdeltalength=2;randomaccessindication=1;streamstateindication=2;auxiliarydatasizelength=5;config=1208")),
    ("opus", 48_000, None),
    ("PCMU", 8_000, None),
    ("VP9", 90_000, None),
    ("AV1", 90_000, None),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary packets (with a valid-looking RTP header) never panic, and output stays bounded.
    #[test]
    fn arbitrary_packets_never_panic(
        codec in 0..CODECS.len(),
        packets in proptest::collection::vec(
            (any::<u16>(), 0u32..4, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)),
            1..40,
        ),
    ) {
        let (name, rate, fmtp) = CODECS[codec];
        let mut d = Depacketizer::new(name, rate, None, fmtp).unwrap();
        for (seq, ts, marker, payload) in packets {
            // Mostly consecutive sequence numbers, so that reassembly paths are reached.
            let seq = if seq % 4 == 0 { seq } else { 1 };
            if let Ok(aus) = d.push(&rtp(seq, ts * 3000, marker, &payload)) {
                for au in aus {
                    prop_assert!(au.data.len() <= MAX_ACCESS_UNIT);
                    prop_assert!(!au.data.is_empty());
                }
            }
            let _ = d.params();
        }
    }

    /// Fully arbitrary bytes never panic either.
    #[test]
    fn arbitrary_bytes_never_panic(
        codec in 0..CODECS.len(),
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20),
    ) {
        let (name, rate, fmtp) = CODECS[codec];
        let mut d = Depacketizer::new(name, rate, None, fmtp).unwrap();
        for p in packets {
            let _ = d.push(&p);
        }
    }

    /// Real packets with random packets dropped: no panic, every AU well-formed, loss reported.
    #[test]
    fn random_loss_on_real_streams(
        h265: bool,
        drops in proptest::collection::vec(any::<bool>(), 200),
        max in 64usize..600,
    ) {
        let codec = if h265 { Codec::H265 } else { Codec::H264 };
        let samples = if h265 { H265_SAMPLES } else { H264_SAMPLES };
        let (mut p, mut d) = pair(codec, max, 0);
        let mut pkts = Vec::new();
        for i in 0..6u32 {
            p.packetize(samples[(i % 2) as usize], i * 3000, i == 0, &mut pkts).unwrap();
        }
        let mut dropped = false;
        let mut lossy = false;
        for (i, pkt) in pkts.iter().enumerate() {
            if drops.get(i).copied().unwrap_or(false) && i % 3 == 0 {
                dropped = true;
                continue;
            }
            for au in d.push(pkt).unwrap() {
                prop_assert!(split_length_prefixed(&au.data, 4).is_ok());
                lossy |= au.loss;
            }
        }
        if !dropped {
            prop_assert!(!lossy);
        }
    }
}

/// The OBUs of an `av01` sample (each with its size field), as (type, whole OBU), or None when the
/// sample is not a well-formed OBU sequence with size fields.
fn av1_obus(mut data: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while let Some(&header) = data.first() {
        if header & 0x02 == 0 || header & 0x80 != 0 {
            return None;
        }
        let hdr_len = if header & 0x04 != 0 { 2 } else { 1 };
        let (size, rest) = av1::read_leb128(data.get(hdr_len..)?)?;
        let leb_len = data.len() - hdr_len - rest.len();
        let total = hdr_len + leb_len + usize::try_from(size).ok()?;
        out.push(((header >> 3) & 0x0f, data.get(..total)?.to_vec()));
        data = data.get(total..)?;
    }
    Some(out)
}

/// An `av01` sample as the depacketizer rebuilds it: temporal delimiters dropped.
fn av1_expected(sample: &[u8]) -> Vec<u8> {
    av1_obus(sample)
        .unwrap()
        .into_iter()
        .filter(|(t, _)| *t != 2)
        .flat_map(|(_, o)| o)
        .collect()
}

/// Packetizes `count` frames alternating key and inter samples (timestamps 3000 apart).
fn stream(codec: Codec, p: &mut Packetizer, count: u32) -> Vec<Bytes> {
    let samples = match codec {
        Codec::Vp9 => VP9_SAMPLES,
        Codec::Av1 => AV1_SAMPLES,
        _ => unreachable!(),
    };
    let mut pkts = Vec::new();
    for i in 0..count {
        let key = i % 4 == 0;
        let sample = if key { samples[0] } else { samples[1] };
        p.packetize(sample, i * 3000, key, &mut pkts).unwrap();
    }
    pkts
}

#[test]
fn vp9_round_trip_keyframes_and_vpcc() {
    for max in [64, 300, 1200] {
        let (mut p, mut d) = pair(Codec::Vp9, max, 65_530);
        assert!(d.params().is_none(), "no vpcC before a keyframe");
        let mut aus = Vec::new();
        for pkt in stream(Codec::Vp9, &mut p, 8) {
            aus.extend(d.push(&pkt).unwrap());
        }
        assert_eq!(aus.len(), 8);
        for (i, au) in aus.iter().enumerate() {
            let key = i % 4 == 0;
            assert_eq!(au.keyframe, key, "frame {i}");
            assert_eq!(&au.data[..], VP9_SAMPLES[usize::from(!key)]);
            assert!(!au.loss);
            assert_eq!(au.rtp_timestamp, i as u32 * 3000);
        }
        let params = d.params().unwrap();
        assert_eq!(params.codec, Codec::Vp9);
        assert_eq!(params.config.len(), 12);
        assert_eq!(params.config[4], VPCC[4], "profile");
        assert!(params.width.unwrap() > 0 && params.height.unwrap() > 0);
    }
}

#[test]
fn vp9_spatial_layers_join_as_a_superframe() {
    let mut d = Depacketizer::new("VP9", 90_000, None, None).unwrap();
    // Two layer frames of one picture (L=1, non-flexible), the marker on the second.
    let key = VP9_SAMPLES[0];
    assert!(d
        .push(&rtp(1, 0, false, &[&[0x2c, 0x00, 0x00][..], key].concat()))
        .unwrap()
        .is_empty());
    let aus = d
        .push(&rtp(2, 0, true, &[0x6c, 0x02, 0x00, 0xaa, 0xbb]))
        .unwrap();
    assert_eq!(aus.len(), 1);
    assert!(aus[0].keyframe);
    let data = &aus[0].data;
    assert_eq!(data.len(), key.len() + 2 + 2 + 8);
    assert_eq!(data[..key.len()], *key);
    assert_eq!(data[data.len() - 1], 0xd9);
    // A frame whose start (B) was lost is dropped and the picture marked lossy.
    let aus = d.push(&rtp(4, 3000, true, &[0x44, 0xcc])).unwrap();
    assert!(aus.is_empty());
    let aus = d.push(&rtp(5, 6000, true, &[0x4c, 0xdd])).unwrap();
    assert_eq!(aus.len(), 1);
    assert!(aus[0].loss && !aus[0].keyframe);
}

#[test]
fn av1_round_trip_keyframes_and_av1c() {
    for max in [64, 300, 1200] {
        let (mut p, mut d) = pair(Codec::Av1, max, 65_500);
        let mut aus = Vec::new();
        for pkt in stream(Codec::Av1, &mut p, 8) {
            aus.extend(d.push(&pkt).unwrap());
        }
        assert_eq!(aus.len(), 8);
        for (i, au) in aus.iter().enumerate() {
            let key = i % 4 == 0;
            assert_eq!(au.keyframe, key, "temporal unit {i}");
            assert_eq!(au.data[..], av1_expected(AV1_SAMPLES[usize::from(!key)]));
            assert!(!au.loss);
        }
        let params = d.params().unwrap();
        assert_eq!(
            &params.config[..],
            AV1C,
            "av1C rebuilt from the sequence header"
        );
        assert!(params.width.unwrap() > 0 && params.height.unwrap() > 0);
    }
}

#[test]
fn av1_elements_with_w_and_size_fields() {
    let mut d = Depacketizer::new("AV1", 90_000, None, None).unwrap();
    // W=2: a temporal delimiter (dropped) with a length, then an OBU_FRAME without; the frame
    // OBU carries a size field of its own (allowed) that is honoured.
    let p = [0x20, 0x01, 0x10, 0x32, 0x02, 0xaa, 0xbb];
    let aus = d.push(&rtp(1, 0, true, &p)).unwrap();
    assert_eq!(&aus[0].data[..], &[0x32, 0x02, 0xaa, 0xbb]);
    assert!(!aus[0].keyframe);
    // Fragments: Y on the first packet, Z on the second.
    assert!(d
        .push(&rtp(2, 3000, false, &[0x50, 0x30, 1, 2]))
        .unwrap()
        .is_empty());
    let aus = d.push(&rtp(3, 3000, true, &[0x90, 3, 4])).unwrap();
    assert_eq!(&aus[0].data[..], &[0x32, 0x04, 1, 2, 3, 4]);
    // A continuation whose start was lost is dropped; the unit is marked lossy.
    let aus = d
        .push(&rtp(5, 6000, true, &[0xa0, 0x02, 9, 9, 0x30, 7]))
        .unwrap();
    assert_eq!(&aus[0].data[..], &[0x32, 0x01, 7]);
    assert!(aus[0].loss);
    for (i, bad) in [
        &[0x10][..],
        &[0x00, 0x05, 1],
        &[0x00, 0x01, 0x80],
        &[0x30, 0x01, 0x10],
    ]
    .into_iter()
    .enumerate()
    {
        let seq = 9 + i as u16;
        assert!(
            d.push(&rtp(seq, 9000 * seq as u32, true, bad)).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn g711_packets_are_access_units() {
    let params = CodecParams::new(Codec::Pcma, Bytes::new());
    let mut p = Packetizer::new(&params, 8, 1, 0, 1200).unwrap();
    let mut d = Depacketizer::new("PCMA", 8000, None, None).unwrap();
    let mut pkts = Vec::new();
    p.packetize(&[0xd5; 160], 0, true, &mut pkts).unwrap();
    let aus = d.push(&pkts[0]).unwrap();
    assert_eq!(&aus[0].data[..], &[0xd5; 160][..]);
    let params = d.params().unwrap();
    assert_eq!(
        (params.codec, params.sample_rate, params.channels),
        (Codec::Pcma, Some(8000), Some(1))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// VP9 and AV1 streams with packets lost and swapped: no panic; access units stay well-formed
    /// (AV1: OBUs with size fields, no temporal delimiter); a stream without loss comes back whole;
    /// loss is reported.
    #[test]
    fn vp9_av1_loss_and_reorder(
        av1: bool,
        events in proptest::collection::vec(0u8..20, 400),
        max in 64usize..1300,
    ) {
        let codec = if av1 { Codec::Av1 } else { Codec::Vp9 };
        let (mut p, mut d) = pair(codec, max, 100);
        let mut pkts = stream(codec, &mut p, 12);
        let mut damaged = false;
        let mut i = 0;
        let mut sent = Vec::new();
        while i < pkts.len() {
            // The first packet always arrives: losses before it cannot be seen.
            let event = if i == 0 { 2 } else { events.get(i).copied().unwrap_or(2) };
            match event {
                0 => damaged = true, // dropped
                1 if i + 1 < pkts.len() => {
                    pkts.swap(i, i + 1);
                    damaged = true;
                    sent.push(pkts[i].clone());
                }
                _ => sent.push(pkts[i].clone()),
            }
            i += 1;
        }
        let mut lossy = false;
        let mut count = 0;
        for pkt in &sent {
            let Ok(aus) = d.push(pkt) else { continue };
            for au in aus {
                count += 1;
                lossy |= au.loss;
                prop_assert!(!au.data.is_empty());
                if av1 {
                    let obus = av1_obus(&au.data);
                    prop_assert!(obus.is_some(), "OBUs with size fields");
                    prop_assert!(obus.unwrap().iter().all(|(t, _)| *t != 2));
                }
                if !au.loss {
                    let key = (au.rtp_timestamp / 3000) % 4 == 0;
                    let sample = if av1 { AV1_SAMPLES[usize::from(!key)] } else { VP9_SAMPLES[usize::from(!key)] };
                    let expect = if av1 { av1_expected(sample) } else { sample.to_vec() };
                    prop_assert_eq!(&au.data[..], &expect[..]);
                    prop_assert_eq!(au.keyframe, key);
                }
            }
        }
        if !damaged {
            prop_assert!(!lossy);
            prop_assert_eq!(count, 12);
        } else {
            prop_assert!(lossy || count <= 12);
        }
    }
}

/// The fuzz target's seeds (`fuzz/corpus/depacketize_av1_vp9`) reach the full paths: every
/// frame comes out whole, keyframes first, with parameters.
#[test]
fn av1_vp9_fuzz_seeds_depacketize() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/depacketize_av1_vp9");
    for (name, want) in [
        ("vp9_key_inter", 2),
        ("vp9_layers_ss", 1),
        ("av1_key_inter", 3),
        ("av1_w2_fragments", 2),
    ] {
        let data = std::fs::read(dir.join(name)).unwrap();
        let av1 = data[0] & 1 == 1;
        let mut d = Depacketizer::new(if av1 { "AV1" } else { "VP9" }, 90_000, None, None).unwrap();
        let mut rest = &data[1..];
        let mut aus = Vec::new();
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            aus.extend(d.push(&rest[2..2 + len]).unwrap());
            rest = &rest[2 + len..];
        }
        assert_eq!(aus.len(), want, "{name}");
        assert!(aus.iter().all(|a| !a.loss), "{name}");
        if name.ends_with("key_inter") {
            assert!(aus[0].keyframe && !aus[1].keyframe, "{name}");
            assert!(d.params().is_some(), "{name}");
        }
        if av1 {
            assert!(aus.iter().all(|a| av1_obus(&a.data).is_some()), "{name}");
        }
    }
}
