//! The recorder on a virtual clock: packets built here, arrival instants made up, and the
//! output read back with this crate's demuxer.

use std::io::Cursor;
use std::time::{Duration, Instant};

use super::*;
use crate::Sample;

/// x264's 640x360 SPS and PPS, as an SDP carries them.
const SPROP: &str =
    "packetization-mode=1;sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAPA8WLZY=,aO+Pyw==";

/// 14 frames of x264 High profile with 2 B-frames (I P B B P B B …), Annex B.
const BFRAMES: &[u8] = include_bytes!("../../../codec/tests/data/h264_bframes.h264");

fn h264(fmtp: Option<&str>) -> TrackSpec {
    TrackSpec {
        encoding: "H264".into(),
        clock_rate: 90_000,
        channels: None,
        fmtp: fmtp.map(str::to_owned),
        video: true,
        framerate: None,
    }
}

fn opus() -> TrackSpec {
    TrackSpec {
        encoding: "opus".into(),
        clock_rate: 48_000,
        channels: Some(2),
        fmtp: None,
        video: false,
        framerate: None,
    }
}

/// An RTP packet (version 2, payload type 96, SSRC 7).
fn rtp(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 96 | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&7u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A made-up single-NAL slice: an IDR or a non-IDR reference picture.
fn slice(keyframe: bool, n: u32) -> Vec<u8> {
    let mut nal = vec![if keyframe { 0x65 } else { 0x41 }, 0x88];
    nal.extend_from_slice(&n.to_be_bytes());
    nal
}

/// Everything the recorder has produced so far, concatenated.
fn drain(rec: &mut Recorder, file: &mut Vec<u8>) -> usize {
    let mut fragments = 0;
    while let Some(o) = rec.poll_output() {
        match o {
            Output::Init(b) => {
                assert!(file.is_empty(), "the init segment comes first");
                file.extend_from_slice(&b);
            }
            Output::Fragment(b) => {
                assert!(!file.is_empty(), "a fragment before the init segment");
                assert_eq!(&b[4..8], b"moof");
                file.extend_from_slice(&b);
                fragments += 1;
            }
        }
    }
    fragments
}

/// The samples of a recorded file, as a player reads them.
fn samples(file: Vec<u8>) -> Vec<Sample> {
    let mut d = crate::open_reader(Cursor::new(file)).expect("the recording opens");
    let mut out = Vec::new();
    while let Some(s) = d.next_sample().expect("readable sample") {
        out.push(s);
    }
    out
}

fn at(t0: Instant, secs: f64) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}

#[test]
fn a_frozen_rtp_clock_is_timed_on_the_arrival_grid() {
    let t0 = Instant::now();
    let mut rec = Recorder::new(&[h264(Some(SPROP))], t0).unwrap();
    rec.playing(t0, &[Some(1234)]);
    let mut file = Vec::new();
    // 3 s at 30 fps, ±6 ms of jitter, every frame stamped 1234, an IDR each second.
    for i in 0..90u16 {
        let jitter = if i % 2 == 0 { 0.006 } else { -0.006 };
        let arrival = at(t0, 0.1 + f64::from(i) / 30.0 + jitter);
        let p = rtp(i, 1234, true, &slice(i % 30 == 0, u32::from(i)));
        rec.push_rtp(0, &p, arrival).unwrap();
        drain(&mut rec, &mut file);
    }
    let mut events = Vec::new();
    while let Some(e) = rec.poll_event() {
        events.push(e);
    }
    assert!(
        events.contains(&Event::ArrivalTiming {
            track: 0,
            encoding: "H264".into(),
            fps: 30.0
        }),
        "{events:?}"
    );
    assert!(events.contains(&Event::Started));
    let status = rec.status();
    assert!(status.started);
    assert_eq!(status.packets, 90);
    assert!(
        (status.duration.as_secs_f64() - 89.0 / 30.0).abs() < 0.02,
        "{:?}",
        status.duration
    );
    file.extend_from_slice(&rec.finish().unwrap());
    let s = samples(file);
    assert_eq!(s.len(), 90, "the file starts at the first IDR, frame 0");
    assert!(s[0].keyframe && s[30].keyframe && s[60].keyframe);
    for w in s.windows(2) {
        let step = w[1].dts - w[0].dts;
        assert!(
            (step - 3000).abs() <= 375,
            "decode steps stay on the 30 fps grid: {step}"
        );
        assert!(
            w[1].pts > w[0].pts,
            "no B-frames: picture order is decode order"
        );
    }
}

#[test]
fn arrival_timed_b_frames_are_presented_in_picture_order() {
    // The clip's NAL units grouped into access units (SPS/PPS go with the first picture).
    let mut nals: Vec<&[u8]> = Vec::new();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= BFRAMES.len() {
        if BFRAMES[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(BFRAMES.len(), |&n| n - 3);
        while end > s && BFRAMES[end - 1] == 0 {
            end -= 1;
        }
        nals.push(&BFRAMES[s..end]);
    }
    let t0 = Instant::now();
    let mut rec = Recorder::new(&[h264(Some("packetization-mode=1"))], t0).unwrap();
    rec.playing(t0, &[None]);
    let mut file = Vec::new();
    let (mut seq, mut frame) = (0u16, 0u32);
    // Three passes of the clip (each starts with its IDR), all stamped alike, at 25 fps.
    for _ in 0..3 {
        for nal in &nals {
            let vcl = matches!(nal[0] & 0x1f, 1 | 5);
            let arrival = at(t0, f64::from(frame) / 25.0);
            rec.push_rtp(0, &rtp(seq, 0, vcl, nal), arrival).unwrap();
            seq = seq.wrapping_add(1);
            if vcl {
                frame += 1;
            }
            drain(&mut rec, &mut file);
        }
    }
    file.extend_from_slice(&rec.finish().unwrap());
    let s = samples(file);
    // Held while the frozen clock is recognised (0.5 s in), the first IDR still starts the
    // file.
    assert_eq!(s.len(), 42);
    for pass in s.chunks(14) {
        let mut by_pts: Vec<usize> = (0..pass.len()).collect();
        by_pts.sort_by_key(|&i| pass[i].pts);
        let mut rank = vec![0; pass.len()];
        for (r, &i) in by_pts.iter().enumerate() {
            rank[i] = r;
        }
        // ffprobe: coded pictures 0 2 3 1 5 6 4 8 9 7 11 12 10 13 in display order.
        assert_eq!(rank, [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11, 13]);
        for x in pass {
            assert!(x.pts >= x.dts, "presented before decoded: {x:?}");
        }
    }
}

#[test]
fn rtp_timestamps_unwrap_across_the_32_bit_wrap() {
    let t0 = Instant::now();
    let mut rec = Recorder::new(&[opus()], t0).unwrap();
    let origin = u32::MAX - 960 * 10 + 1;
    rec.playing(t0, &[Some(origin)]);
    let mut file = Vec::new();
    for i in 0..100u16 {
        let ts = origin.wrapping_add(u32::from(i) * 960);
        let p = rtp(i, ts, true, &[0xfc, 0xff, 0xfe]);
        rec.push_rtp(0, &p, at(t0, f64::from(i) * 0.02)).unwrap();
        drain(&mut rec, &mut file);
    }
    assert_eq!(rec.status().duration, Duration::from_millis(1980));
    file.extend_from_slice(&rec.finish().unwrap());
    let dts: Vec<i64> = samples(file).iter().map(|s| s.dts).collect();
    let want: Vec<i64> = (0..100).map(|i| i * 960).collect();
    assert_eq!(dts, want, "continuous across the wrap after packet 10");
}

#[test]
fn fragments_are_cut_at_the_first_keyframe_a_second_on() {
    let t0 = Instant::now();
    let mut rec = Recorder::new(&[h264(Some(SPROP))], t0).unwrap();
    rec.playing(t0, &[Some(0)]);
    let mut file = Vec::new();
    let mut cut_at = Vec::new();
    let mut init_at = None;
    // 30 fps, an IDR every 15 frames (0.5 s).
    for i in 0..100u16 {
        let p = rtp(
            i,
            u32::from(i) * 3000,
            true,
            &slice(i % 15 == 0, u32::from(i)),
        );
        rec.push_rtp(0, &p, at(t0, f64::from(i) / 30.0)).unwrap();
        let was_empty = file.is_empty();
        if drain(&mut rec, &mut file) > 0 {
            cut_at.push(i);
        }
        if was_empty && !file.is_empty() {
            init_at = Some(i);
        }
    }
    assert_eq!(
        init_at,
        Some(1),
        "the second timestamp shows the clock advances"
    );
    assert_eq!(cut_at, [30, 60, 90], "at the keyframes a second apart");
    assert_eq!(rec.status().bytes, file.len() as u64);
    file.extend_from_slice(&rec.finish().unwrap());
    let s = samples(file);
    assert_eq!(s.len(), 100);
    assert_eq!(s[99].dts, 99 * 3000);
}

#[test]
fn the_start_diagnosis_names_the_track_and_what_it_lacks() {
    let t0 = Instant::now();
    let lack = |specs: &[TrackSpec], packets: &[(usize, bool)]| {
        let mut rec = Recorder::new(specs, t0).unwrap();
        rec.playing(t0, &[]);
        for (n, &(track, key)) in packets.iter().enumerate() {
            let n = u16::try_from(n).unwrap();
            let p = rtp(n, u32::from(n) * 3000, true, &slice(key, n.into()));
            rec.push_rtp(track, &p, at(t0, f64::from(n) / 30.0))
                .unwrap();
        }
        let l = rec.start_lack().expect("the file did not start");
        let Err(RecorderError::NotStarted(at_end)) = rec.finish() else {
            panic!("finish without a start must fail");
        };
        assert_eq!(l, at_end);
        (l.track, l.missing)
    };
    let p_slices: Vec<(usize, bool)> = (0..50).map(|_| (0, false)).collect();
    // No sprop, packets came but no SPS/PPS among them.
    assert_eq!(lack(&[h264(None)], &p_slices), (0, Missing::ParameterSets));
    // No sprop and nothing came at all: the lack of media is the news.
    assert_eq!(lack(&[h264(None)], &[]), (0, Missing::Media));
    // Parameter sets known, packets came, no IDR among them.
    assert_eq!(
        lack(&[h264(Some(SPROP))], &p_slices),
        (0, Missing::Keyframe)
    );
    // The track that lacks something is named, not the first one.
    let vp8 = TrackSpec {
        encoding: "VP8".into(),
        ..h264(None)
    };
    let on_1: Vec<(usize, bool)> = (0..5).map(|_| (1, false)).collect();
    assert_eq!(
        lack(&[vp8.clone(), h264(None)], &on_1),
        (1, Missing::ParameterSets)
    );
    // A lone keyframe settles its track's timing after the probe window: the file starts
    // when the driver calls at poll_timeout, without another packet.
    let mut rec = Recorder::new(&[vp8.clone(), h264(Some(SPROP))], t0).unwrap();
    assert!(matches!(
        rec.poll_event(),
        Some(Event::NotRecorded { track: 0, .. })
    ));
    assert!(!rec.is_recorded(0) && rec.is_recorded(1));
    rec.playing(t0, &[]);
    rec.push_rtp(1, &rtp(0, 0, true, &slice(true, 0)), t0)
        .unwrap();
    assert_eq!(
        rec.poll_timeout(),
        Some(at(t0, 0.5)),
        "the lone IDR's probe"
    );
    rec.handle_timeout(at(t0, 0.5)).unwrap();
    assert!(rec.status().started && rec.start_lack().is_none());
    assert_eq!(rec.poll_timeout(), None);
    // An SDP with nothing recordable is refused.
    assert!(matches!(
        Recorder::new(&[vp8], t0),
        Err(RecorderError::NoTracks { offered }) if offered == "VP8"
    ));
}

#[test]
fn a_recorder_can_move_to_another_task() {
    fn send<T: Send + 'static>() {}
    send::<Recorder>();
}

#[test]
fn frames_mode_hands_out_the_timed_access_units_for_the_archive() {
    let t0 = Instant::now();
    let mut rec = Recorder::new(&[h264(Some(SPROP))], t0)
        .unwrap()
        .frames_mode();
    rec.playing(t0, &[Some(0)]);
    let mut frames = Vec::new();
    // 30 fps from frame 5 on; the IDRs are at 15, 30, …: the file starts at 15.
    for i in 5..100u16 {
        let p = rtp(
            i,
            u32::from(i) * 3000,
            true,
            &slice(i % 15 == 0, u32::from(i)),
        );
        rec.push_rtp(0, &p, at(t0, f64::from(i) / 30.0)).unwrap();
        while let Some(f) = rec.poll_frame() {
            frames.push(f);
        }
    }
    assert!(matches!(rec.poll_output(), Some(Output::Init(_))));
    assert_eq!(rec.poll_output(), None, "no MP4 fragments in frames mode");
    let params = rec.file_params().expect("started").to_vec();
    assert_eq!(params.len(), 1);
    frames.extend(rec.finish_frames().unwrap());
    assert_eq!(frames.len(), 85);
    assert!(frames[0].keyframe);
    assert_eq!((frames[0].dts, frames[84].dts), (0, 84 * 3000));
    // The archive writes them into time-based parts.
    let mut w = crate::archive::SegmentWriter::new(params, Default::default()).unwrap();
    let wall = std::time::SystemTime::UNIX_EPOCH;
    for f in frames {
        let secs = f.dts as f64 / 90_000.0;
        w.push(f, wall + Duration::from_secs_f64(secs));
    }
    w.finish();
    let parts = std::iter::from_fn(|| w.poll_output())
        .filter(|o| matches!(o, crate::archive::ArchiveOutput::Part { .. }))
        .count();
    assert_eq!(parts, 3, "85 frames at 30 fps in 1 s parts");
    assert_eq!(w.stats().frames, 85);
}
