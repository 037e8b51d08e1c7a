use std::time::{Duration, Instant, SystemTime};

use mp4_atom::{Decode as _, Moof};

use super::*;

/// 14 frames of x264 High profile with 2 B-frames (I P B B P B B …), Annex B.
const STREAM: &[u8] = include_bytes!("../../../codec/tests/data/h264_bframes.h264");
/// Presentation rank of each frame in decode order (ffprobe).
const RANK: [u32; 14] = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 13];
const FRAME: u32 = 3000;

/// The clip's access units, each a list of NAL units (SPS/PPS with the first).
fn access_units() -> Vec<Vec<Vec<u8>>> {
    let mut nals = Vec::new();
    let mut i = 0;
    let mut start = None;
    while i + 3 <= STREAM.len() {
        if STREAM[i..i + 3] == [0, 0, 1] {
            if let Some(s) = start {
                let mut end = i;
                while end > s && STREAM[end - 1] == 0 {
                    end -= 1;
                }
                nals.push(STREAM[s..end].to_vec());
            }
            i += 3;
            start = Some(i);
        } else {
            i += 1;
        }
    }
    if let Some(s) = start {
        nals.push(STREAM[s..].to_vec());
    }
    let mut aus = Vec::new();
    let mut cur = Vec::new();
    for nal in nals {
        let vcl = matches!(nal[0] & 0x1f, 1 | 5);
        cur.push(nal);
        if vcl {
            aus.push(std::mem::take(&mut cur));
        }
    }
    aus
}

fn rtp(pt: u8, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn h264() -> TrackSpec {
    TrackSpec {
        encoding: "H264".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: Some("packetization-mode=1".into()),
        video: true,
        framerate: None,
    }
}

fn aac() -> TrackSpec {
    TrackSpec {
        encoding: "MPEG4-GENERIC".into(),
        clock_rate: 48_000,
        channels: Some(2),
        fmtp: Some(
            "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1190".into(),
        ),
        video: false,
        framerate: None,
    }
}

/// Feeds `seconds` of the clip looped at 30 fps (video track 0) and 48 kHz AAC (track 1),
/// interleaved by arrival; returns the muxer and the parts made after each packet.
struct Feed {
    m: HlsMuxer,
    t0: Instant,
    vseq: u16,
    aseq: u16,
    frame: u32,
    audio: u32,
    /// The AAC track's index.
    audio_track: usize,
}

impl Feed {
    fn new(tracks: &[TrackSpec]) -> Feed {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let m = HlsMuxer::new(tracks, HlsConfig::default(), (t0, wall)).unwrap();
        Feed {
            m,
            t0,
            vseq: 0,
            aseq: 0,
            frame: 0,
            audio: 0,
            audio_track: tracks.len() - 1,
        }
    }

    /// Time of decode slot `n` (33.3 ms apart).
    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn video_frame(&mut self, aus: &[Vec<Vec<u8>>]) -> u32 {
        let i = (self.frame % 14) as usize;
        let gop = self.frame / 14;
        // The first frame's presentation is 2 frames after its decode (the sender's delay).
        let ts = 10_000 + (gop * 14 + RANK[i] + 2) * FRAME;
        let at = self.at(f64::from(self.frame) / 30.0);
        let mut made = 0;
        let n = aus[i].len();
        for (k, nal) in aus[i].iter().enumerate() {
            let p = rtp(96, self.vseq, ts, k + 1 == n, nal);
            self.vseq = self.vseq.wrapping_add(1);
            made += self.m.push_rtp(0, &p, at).unwrap();
        }
        self.frame += 1;
        made
    }

    fn audio_frame(&mut self) -> u32 {
        let ts = 5_000 + self.audio * 1024;
        let at = self.at(f64::from(self.audio) * 1024.0 / 48_000.0);
        let frame = [0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c];
        let mut payload = vec![0, 16];
        payload.extend_from_slice(&((frame.len() as u16) << 3).to_be_bytes());
        payload.extend_from_slice(&frame);
        let p = rtp(97, self.aseq, ts, true, &payload);
        self.aseq = self.aseq.wrapping_add(1);
        self.audio += 1;
        self.m.push_rtp(self.audio_track, &p, at).unwrap()
    }

    /// Feeds both tracks up to `secs`, in arrival order.
    fn run(&mut self, secs: f64, audio: bool) {
        let aus = access_units();
        loop {
            let v = f64::from(self.frame) / 30.0;
            let a = f64::from(self.audio) * 1024.0 / 48_000.0;
            if v.min(if audio { a } else { f64::MAX }) >= secs {
                break;
            }
            if audio && a < v {
                self.audio_frame();
            } else {
                self.video_frame(&aus);
            }
        }
    }
}

/// Each fragment's (base decode time, [(duration, cts)]) of track `id` in `moof`+`mdat`s.
fn truns(mut data: &[u8], id: u32) -> Vec<(u64, Vec<(u32, i64)>)> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        if &data[4..8] == b"moof" {
            let moof = Moof::decode(&mut &data[..size]).unwrap();
            if let Some(traf) = moof.traf.iter().find(|t| t.tfhd.track_id == id) {
                let base = traf.tfdt.as_ref().unwrap().base_media_decode_time;
                let entries = traf
                    .trun
                    .iter()
                    .flat_map(|t| t.samples.iter())
                    .map(|e| (e.duration.unwrap(), e.cts.unwrap_or(0)))
                    .collect();
                out.push((base, entries));
            }
        }
        data = &data[size..];
    }
    out
}

#[test]
fn parts_are_whole_frames_and_segments_start_at_keyframes() {
    let mut f = Feed::new(&[h264(), aac()]);
    f.run(6.0, true);
    let m = &f.m;
    assert!(m.started());
    assert!(
        (m.part_target() - 0.2).abs() < 1e-9,
        "6 frames of 1/30 s: {}",
        m.part_target()
    );
    let list = m.playlist(false).unwrap();
    println!("{list}");
    for tag in [
        "#EXT-X-VERSION:9",
        "#EXT-X-TARGETDURATION:1",
        "CAN-BLOCK-RELOAD=YES",
        "PART-HOLD-BACK=0.600",
        "#EXT-X-PART-INF:PART-TARGET=0.20000",
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "INDEPENDENT=YES",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part",
        "#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:01:4",
    ] {
        assert!(list.contains(tag), "{tag} missing");
    }
    // Segments: 3 GOPs of 14 frames (1.4 s) each, made of whole-frame parts.
    assert!(m.segments.len() >= 3);
    for s in &m.segments {
        assert!(
            (s.duration - 1.4).abs() < 1e-6,
            "segment {} lasts {}",
            s.msn,
            s.duration
        );
        let parts: Vec<u8> = s
            .parts
            .iter()
            .flat_map(|p| p.bytes.iter().copied())
            .collect();
        if !s.parts.is_empty() {
            assert_eq!(parts, &s.bytes[..], "segment {} = its parts", s.msn);
            assert!(s.parts[0].independent);
            for p in &s.parts {
                let frames = p.duration * 30.0;
                assert!((frames - frames.round()).abs() < 1e-6 && frames <= 6.0 + 1e-9);
            }
        }
        assert_eq!(&s.bytes[4..8], b"moof");
    }
    // The segment's dates follow the media.
    let d0 = m.segments[0].date;
    let d1 = m.segments[1].date;
    assert_eq!(d1.duration_since(d0).unwrap(), Duration::from_millis(1400));
    assert_eq!(m.codecs(), vec![Codec::H264, Codec::Aac]);
    assert!(m.held_bytes() > 0);
}

#[test]
fn b_frames_get_increasing_decode_times_before_their_presentation() {
    let mut f = Feed::new(&[h264()]);
    f.run(3.0, false);
    let mut last_end = None;
    let mut pts = Vec::new();
    for s in &f.m.segments {
        for (mut dts, entries) in truns(&s.bytes, 1) {
            if let Some(end) = last_end {
                assert_eq!(dts, end, "fragments are contiguous");
            }
            for (d, cts) in entries {
                assert!(cts >= 0, "pts >= dts");
                assert!(d > 0, "decode times increase");
                pts.push(dts as i64 + cts);
                dts += u64::from(d);
            }
            last_end = Some(dts);
        }
    }
    pts.sort_unstable();
    for w in pts.windows(2) {
        assert_eq!(
            w[1] - w[0],
            i64::from(FRAME),
            "every frame presented once, in step"
        );
    }
}

#[test]
fn blocking_requests_wait_answer_or_refuse() {
    let mut f = Feed::new(&[h264(), aac()]);
    // Numbers start from the wall clock: 100 s.
    let (first_msn, first_part) = (5000, 100_000);
    assert_eq!(f.m.blocking(first_msn, Some(0)), Blocking::Wait);
    assert_eq!(f.m.blocking(first_msn + 2, None), Blocking::TooFar);
    assert!(f.m.playlist(false).is_none());
    assert_eq!(f.m.part(first_part), Lookup::Soon);
    f.run(3.0, true);
    let aus = access_units();
    while f.m.current.as_ref().unwrap().parts.is_empty() {
        f.video_frame(&aus);
    }
    let cur = f.m.current.as_ref().unwrap().msn;
    assert!(cur > first_msn);
    let parts = f.m.current.as_ref().unwrap().parts.len() as u64;
    assert_eq!(f.m.blocking(cur - 1, None), Blocking::Ready);
    assert_eq!(
        f.m.blocking(cur, Some(parts.saturating_sub(1))),
        Blocking::Ready
    );
    assert_eq!(f.m.blocking(cur, Some(parts)), Blocking::Wait);
    assert_eq!(f.m.blocking(cur, None), Blocking::Wait);
    assert_eq!(f.m.blocking(cur + 1, Some(0)), Blocking::Wait);
    assert_eq!(f.m.blocking(cur + 2, None), Blocking::TooFar);
    assert_eq!(f.m.blocking(cur, Some(parts + 5)), Blocking::TooFar);
    // The hinted part comes with the next frames.
    let next = f.m.parts_made();
    assert_eq!(f.m.part(next), Lookup::Soon);
    assert_eq!(f.m.part(next + 5), Lookup::Missing);
    while f.m.parts_made() == next {
        f.video_frame(&aus);
    }
    assert!(matches!(f.m.part(next), Lookup::Ready(_)));
    assert!(matches!(f.m.segment(cur - 1), Lookup::Ready(_)));
    assert_eq!(f.m.segment(cur + 1), Lookup::Missing);
    f.run(8.0, true);
    assert_eq!(
        f.m.part(first_part),
        Lookup::Missing,
        "old parts are dropped"
    );
}

#[test]
fn delta_updates_skip_old_segments() {
    let mut f = Feed::new(&[h264(), aac()]);
    f.run(14.0, true);
    let full = f.m.playlist(false).unwrap();
    let delta = f.m.playlist(true).unwrap();
    assert!(full.contains("CAN-SKIP-UNTIL=6.0"));
    assert!(!full.contains("EXT-X-SKIP"));
    let skipped: usize = delta
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-SKIP:SKIPPED-SEGMENTS="))
        .expect("a skip tag")
        .parse()
        .unwrap();
    assert!(skipped >= 1);
    assert_eq!(
        full.matches("#EXTINF").count() - delta.matches("#EXTINF").count(),
        skipped
    );
    assert_eq!(f.m.segments.len(), 7, "7 segments kept");
}

#[test]
fn audio_only_parts_are_whole_aac_frames() {
    let mut f = Feed::new(&[aac()]);
    for _ in 0..300 {
        f.audio_frame();
    }
    // 9 frames of 1024 samples at 48 kHz.
    assert!((f.m.part_target() - 9.0 * 1024.0 / 48_000.0).abs() < 1e-9);
    assert!(f.m.segments.len() >= 4);
    let list = f.m.playlist(false).unwrap();
    assert!(list.contains("INDEPENDENT=YES"));
}

#[test]
fn codecs_hls_cannot_carry_are_named() {
    let vp8 = TrackSpec {
        encoding: "VP8".into(),
        ..h264()
    };
    let err = HlsMuxer::new(
        &[vp8, aac()],
        HlsConfig::default(),
        (Instant::now(), SystemTime::now()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("VP8"), "{err}");
    let pcmu = TrackSpec {
        encoding: "PCMU".into(),
        clock_rate: 8000,
        video: false,
        fmtp: None,
        ..h264()
    };
    let m = HlsMuxer::new(
        &[h264(), pcmu],
        HlsConfig::default(),
        (Instant::now(), SystemTime::now()),
    )
    .unwrap();
    assert_eq!(m.left_out(), ["PCMU".to_owned()]);
}

#[test]
fn memory_stays_bounded_on_a_long_stream() {
    let mut f = Feed::new(&[h264(), aac()]);
    f.run(20.0, true);
    let at_20 = f.m.held_bytes();
    f.run(60.0, true);
    let at_60 = f.m.held_bytes();
    let actual: usize =
        f.m.segments
            .iter()
            .chain(f.m.current.iter())
            .map(|s| s.bytes.len() + s.parts.iter().map(|p| p.bytes.len()).sum::<usize>())
            .sum();
    assert_eq!(at_60, actual, "the count matches what is held");
    assert!(
        at_60 <= at_20 * 3 / 2,
        "{at_20} B at 20 s, {at_60} B at 60 s"
    );
    assert_eq!(f.m.segments.len(), 7);
}

#[test]
fn mpegts_segments_follow_the_fmp4_ones() {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let config = HlsConfig {
        mpegts: true,
        ..HlsConfig::default()
    };
    let mut f = Feed::new(&[h264(), aac()]);
    f.m = HlsMuxer::new(&[h264(), aac()], config, (t0, wall)).unwrap();
    f.t0 = t0;
    assert!(f.m.has_ts());
    assert!(f.m.playlist_ts().is_none());
    f.run(6.0, true);
    let list = f.m.playlist_ts().unwrap();
    assert!(
        list.contains("#EXT-X-VERSION:3") && list.contains(".ts\n"),
        "{list}"
    );
    for s in &f.m.segments {
        assert_eq!(s.ts.len() % 188, 0);
        assert!(s.ts.len() > 188 * 3);
        assert!(matches!(f.m.segment_ts(s.msn), Lookup::Ready(_)));
    }
    // Opus cannot go into this variant.
    let opus = TrackSpec {
        encoding: "opus".into(),
        clock_rate: 48_000,
        channels: Some(2),
        fmtp: None,
        video: false,
        framerate: None,
    };
    let m = HlsMuxer::new(&[h264(), opus], config, (t0, wall)).unwrap();
    assert!(!m.has_ts());
}

#[test]
fn av1_and_vp9_are_packaged_with_their_sample_entries_and_codecs() {
    const AV1C: &[u8] = include_bytes!("../../../codec/tests/data/av1.av1c");
    const VPCC: &[u8] = include_bytes!("../../../codec/tests/data/vp9.vpcc");
    /// Encoding, codec, config record, (key, inter) samples, sample entry, CODECS.
    type Case = (
        &'static str,
        Codec,
        &'static [u8],
        [&'static [u8]; 2],
        &'static [u8; 4],
        &'static str,
    );
    let cases: [Case; 2] = [
        (
            "AV1",
            Codec::Av1,
            AV1C,
            [
                include_bytes!("../../../codec/tests/data/av1_sample0.bin"),
                include_bytes!("../../../codec/tests/data/av1_sample1.bin"),
            ],
            b"av01",
            "CODECS=\"av01.0.00M.08\"",
        ),
        (
            "VP9",
            Codec::Vp9,
            VPCC,
            [
                include_bytes!("../../../codec/tests/data/vp9_sample0.bin"),
                include_bytes!("../../../codec/tests/data/vp9_sample1.bin"),
            ],
            b"vp09",
            "CODECS=\"vp09.00.",
        ),
    ];
    for (enc, codec, config, samples, entry, codecs) in cases {
        let spec = TrackSpec {
            encoding: enc.into(),
            fmtp: None,
            ..h264()
        };
        let t0 = Instant::now();
        let mut m = HlsMuxer::new(&[spec], HlsConfig::default(), (t0, SystemTime::now())).unwrap();
        let params = CodecParams::new(codec, Bytes::from_static(config));
        let mut p = sluice_codec::Packetizer::new(&params, 96, 1, 0, 1200).unwrap();
        for i in 0..90u32 {
            let key = i % 30 == 0;
            let mut pkts = Vec::new();
            p.packetize(samples[usize::from(!key)], i * FRAME, key, &mut pkts)
                .unwrap();
            let at = t0 + Duration::from_millis(u64::from(i) * 33);
            for pkt in pkts {
                m.push_rtp(0, &pkt, at).unwrap();
            }
        }
        assert_eq!(m.codecs(), vec![codec]);
        let init = m.init().unwrap();
        assert!(init.windows(4).any(|w| w == entry), "{enc}: sample entry");
        let list = m.playlist(false).unwrap();
        assert!(list.contains("INDEPENDENT=YES"), "{list}");
        let mv = m.multivariant().unwrap();
        println!("{mv}");
        assert!(mv.contains(codecs), "{enc}: {mv}");
        assert!(mv.contains("RESOLUTION="), "{mv}");
        let seg = &m.segments[0];
        let runs = truns(&seg.bytes, 1);
        assert!(!runs.is_empty());
        for (_, entries) in runs {
            assert!(
                entries.iter().all(|&(d, cts)| d == FRAME && cts == 0),
                "{entries:?}"
            );
        }
    }
}
