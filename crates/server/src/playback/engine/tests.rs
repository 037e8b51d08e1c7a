//! The replay engine on a virtual clock, over segments written in memory by the archive's
//! segment writer: gaps skipped with E/D bits, clock seeks, reverse keyframes, Speed,
//! Rate-Control, Frames and the T bit at the end.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::{Duration, Instant, SystemTime};

use sluice_codec::depacketizer::Depacketizer;
use sluice_media::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentWriter};
use sluice_media::{Codec, CodecParams};

use super::*;

const SPROP: &str =
    "packetization-mode=1;sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAPA8WLZY=,aO+Pyw==";

fn h264() -> CodecParams {
    Depacketizer::new("H264", 90_000, None, Some(SPROP))
        .expect("H.264 depacketizer")
        .params()
        .expect("parameter sets")
}

fn opus() -> CodecParams {
    CodecParams {
        channels: Some(2),
        ..CodecParams::new(Codec::Opus, Vec::new())
    }
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn at(secs: f64) -> SystemTime {
    t0() + Duration::from_secs_f64(secs)
}

/// One segment of `secs` seconds of 25 fps video (keyframe every second; frame `n` of the
/// recording marked in its bytes) and 20 ms Opus, recorded from wall time `from`.
pub(crate) fn segment(name: &str, from: f64, secs: i64, first_frame: u32) -> (Segment, Vec<u8>) {
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(3600),
        ..ArchiveConfig::default()
    };
    let mut w = SegmentWriter::new(vec![h264(), opus()], config).expect("writer");
    for n in 0..secs * 25 {
        let key = n % 25 == 0;
        let mut data = vec![0, 0, 0, 6, if key { 0x65 } else { 0x41 }, 0x88];
        data.extend_from_slice(&(first_frame + n as u32).to_be_bytes());
        w.push(
            Frame {
                track: 0,
                dts: n * 3600,
                pts: n * 3600,
                keyframe: key,
                data: data.into(),
            },
            at(from + n as f64 / 25.0),
        );
        for k in 0..2 {
            let a = 2 * n + k;
            w.push(
                Frame {
                    track: 1,
                    dts: a * 960,
                    pts: a * 960,
                    keyframe: true,
                    data: vec![0xfc, 0xff, 0xfe].into(),
                },
                at(from + a as f64 / 50.0),
            );
        }
    }
    w.finish();
    let mut bytes = Vec::new();
    let mut record = None;
    while let Some(o) = w.poll_output() {
        match o {
            ArchiveOutput::SegmentStarted { init, .. } => bytes.extend_from_slice(&init),
            ArchiveOutput::Part { bytes: b, .. } => bytes.extend_from_slice(&b),
            ArchiveOutput::SegmentEnded { record: r, .. } => record = Some(r),
        }
    }
    let r = record.expect("one segment");
    (
        Segment {
            file: name.into(),
            start: r.start_wall,
            end: r.end_wall,
            parts: r
                .parts
                .iter()
                .map(|p| (r.media_base.saturating_add(p.media_start), p.wall_start))
                .collect(),
        },
        bytes,
    )
}

/// Two 10 s segments with a 5 s pause between them: [0, 10) and [15, 25).
fn two_with_gap() -> Replay {
    replay(
        vec![segment("a", 0.0, 10, 0), segment("b", 15.0, 10, 250)],
        None,
        None,
    )
}

fn replay(
    segs: Vec<(Segment, Vec<u8>)>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> Replay {
    replay_shared(segs, from, to).0
}

pub(crate) type Files = std::sync::Arc<std::sync::Mutex<HashMap<PathBuf, Vec<u8>>>>;

/// A replay whose segment files can be rewritten (a recording that grows).
pub(crate) fn replay_shared(
    segs: Vec<(Segment, Vec<u8>)>,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
) -> (Replay, Files) {
    let files: Files = std::sync::Arc::new(std::sync::Mutex::new(
        segs.iter()
            .map(|(s, b)| (s.file.clone(), b.clone()))
            .collect(),
    ));
    let shared = files.clone();
    let timeline = Timeline::new(segs.into_iter().map(|(s, _)| s).collect(), from, to)
        .expect("segments in the window");
    let opener = move |s: &Segment| -> Result<Box<dyn Demuxer>, MediaError> {
        let bytes = files
            .lock()
            .unwrap()
            .get(&s.file)
            .cloned()
            .ok_or_else(|| MediaError::Malformed("no such segment".into()))?;
        sluice_media::open_reader(Cursor::new(bytes))
    };
    let outputs = [h264(), opus()]
        .iter()
        .enumerate()
        .map(|(i, p)| TrackOut {
            packetizer: Packetizer::new(p, 96 + i as u8, 0x1000 + i as u32, 100, 1400)
                .expect("packetizer"),
            params: p.clone(),
            payload_type: 96 + i as u8,
            ssrc: 0x1000 + i as u32,
            rtp_offset: 1000,
        })
        .collect();
    (Replay::new(timeline, Box::new(opener), outputs), shared)
}

/// Polls until the end, sleeping virtually; returns (send instant, burst) pairs.
fn drain(r: &mut Replay, start: Instant) -> (Vec<(Instant, Burst)>, bool) {
    let mut now = start;
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match r.poll(now) {
            Poll::Send(b) => out.push((now, b)),
            Poll::Skipped(why) => panic!("skipped: {why}"),
            Poll::Ended(_) => return (out, true),
            Poll::WaitUntil(t) => now = now.max(t),
            Poll::Idle => return (out, false),
            // The recording is not growing: as the driver does after a while.
            Poll::CaughtUp => r.stop_following(),
        }
    }
    panic!("no end")
}

fn request(start: Option<Position>, end: Option<Position>, scale: f64) -> PlayRequest {
    PlayRequest {
        onvif: true,
        cseq: 7,
        ..PlayRequest::npt(None, None, scale)
    }
    .with(start, end)
}

trait With {
    fn with(self, start: Option<Position>, end: Option<Position>) -> Self;
}

impl With for PlayRequest {
    fn with(mut self, start: Option<Position>, end: Option<Position>) -> Self {
        self.start = start;
        self.end = end;
        self
    }
}

fn video(sent: &[(Instant, Burst)]) -> Vec<&(Instant, Burst)> {
    sent.iter().filter(|(_, b)| b.track == 0).collect()
}

#[test]
fn a_gap_is_skipped_with_e_and_d_bits_and_the_end_has_t() {
    let mut r = two_with_gap();
    let t = Instant::now();
    // Up to the end of the recording (an open end would follow it as it grows).
    let started = r
        .play(
            &request(Some(Position::Npt(0.0)), Some(Position::Npt(25.0)), 1.0),
            t,
        )
        .expect("play");
    assert_eq!(started.start, 0.0);
    assert_eq!(r.timeline().span(), 25.0);
    let (sent, ended) = drain(&mut r, t);
    assert!(ended);
    let v = video(&sent);
    assert_eq!(v.len(), 500, "every video frame of both segments");
    // The pause is not waited through: 20 s of media play in about 20 s.
    let wall = sent.last().unwrap().0 - t;
    assert!(
        (19.0..20.5).contains(&wall.as_secs_f64()),
        "played in {wall:?}"
    );
    // Across the gap: E on the last frame before it, D on the first after it, and the
    // npt jumps by the pause.
    let before = sent
        .iter()
        .position(|(_, b)| b.npt >= 15.0)
        .expect("frames after the gap");
    let (last_before, first_after) = (&sent[before - 1].1, &sent[before].1);
    assert!(last_before.flags & FLAG_E != 0, "{last_before:?}");
    assert!(first_after.flags & FLAG_D != 0, "{first_after:?}");
    let wall_step = sent[before].0 - sent[before - 1].0;
    assert!(
        wall_step < Duration::from_millis(100),
        "waited {wall_step:?}"
    );
    let e_count = sent.iter().filter(|(_, b)| b.flags & FLAG_E != 0).count();
    assert_eq!(e_count, 4, "E on each track before the gap and at the end");
    // The end: T (and E) on the last frame, on its last packet only.
    let (_, last) = sent.last().unwrap();
    assert!(last.flags & FLAG_T != 0 && last.flags & FLAG_E != 0);
    let ext = onvif_extension(last.packets.last().unwrap()).expect("extension");
    assert!(ext.1 & FLAG_T != 0);
    assert_eq!(ext.2, 7, "CSeq low byte");
    // Every packet carries the extension with its frame's wall clock NTP time and C bit;
    // D only on a frame's first packet, E and T only on its last.
    // A frame after a discontinuity is preceded by a filler NAL unit one tick earlier,
    // without the extension (see `send`).
    for (_, b) in &sent {
        let primed = usize::from(onvif_extension(&b.packets[0]).is_none());
        if primed == 1 {
            assert!(b.flags & FLAG_D != 0 && b.track == 0, "{b:?}");
            assert_eq!(b.packets[0][12] & 0x1f, 12, "filler NAL");
        }
        let n = b.packets.len() - primed;
        for (i, p) in b.packets.iter().skip(primed).enumerate() {
            let (ntp, flags, _) = onvif_extension(p).expect("extension");
            assert_eq!(ntp, sluice_media::archive::system_to_ntp(b.wall));
            assert_eq!(flags & FLAG_C != 0, b.flags & FLAG_C != 0);
            assert_eq!(flags & FLAG_D != 0, i == 0 && b.flags & FLAG_D != 0);
            assert_eq!(flags & FLAG_T != 0, i + 1 == n && b.flags & FLAG_T != 0);
        }
    }
    // RTP timestamps of video follow npt: the gap is a 5 s jump.
    let ts = |b: &Burst| {
        sluice_rtp::packet::parse_rtp(b.packets.last().unwrap())
            .unwrap()
            .timestamp
    };
    let step = ts(first_after).wrapping_sub(ts(last_before));
    if first_after.track == last_before.track {
        assert!((5 * 90_000..6 * 90_000).contains(&step), "{step}");
    }
}

#[test]
fn a_clock_seek_lands_on_the_keyframe_before_it_and_into_a_gap_after_it() {
    let mut r = two_with_gap();
    let t = Instant::now();
    let s = r
        .play(&request(Some(Position::Clock(at(5.3))), None, 1.0), t)
        .unwrap();
    assert!((s.start - 5.0).abs() < 1e-3, "{}", s.start);
    let s = r
        .play(&request(Some(Position::Clock(at(12.0))), None, 1.0), t)
        .unwrap();
    assert!((s.start - 15.0).abs() < 1e-3, "{}", s.start);
    // A range end stops there.
    let s = r
        .play(
            &request(Some(Position::Npt(16.0)), Some(Position::Npt(18.0)), 1.0),
            t,
        )
        .unwrap();
    assert!((s.start - 16.0).abs() < 1e-3);
    let (sent, _) = drain(&mut r, t);
    let v = video(&sent);
    assert_eq!(v.len(), 51, "16.00 to 18.00 inclusive");
    assert!(sent.last().unwrap().1.flags & FLAG_T != 0);
    // GStreamer's ONVIF mode before it knows the clock range: times since 1900 as npt.
    let ntp_epoch = SystemTime::UNIX_EPOCH - Duration::from_secs(2_208_988_800);
    let s = r
        .play(
            &request(
                Some(Position::Clock(ntp_epoch + Duration::from_secs(6))),
                Some(Position::Clock(ntp_epoch + Duration::from_secs(25))),
                1.0,
            ),
            t,
        )
        .unwrap();
    assert!((s.start - 6.0).abs() < 1e-3, "{}", s.start);
    assert_eq!(s.end, Some(25.0));
    // GStreamer without ONVIF mode: the SDP's clock range read as npt seconds since 1900.
    let ntp_secs = at(5.3)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 2_208_988_800.0;
    let s = r
        .play(&request(Some(Position::Npt(ntp_secs)), None, 1.0), t)
        .unwrap();
    assert!((s.start - 5.0).abs() < 1e-3, "{}", s.start);
    // Out of the recording.
    assert!(matches!(
        r.play(&request(Some(Position::Npt(40.0)), None, 1.0), t),
        Err(PlayError::InvalidRange(_))
    ));
    assert!(matches!(
        r.play(&request(Some(Position::Clock(at(30.0))), None, 1.0), t),
        Err(PlayError::InvalidRange(_))
    ));
}

#[test]
fn reverse_plays_keyframes_newest_first_with_increasing_rtp_times() {
    let mut r = two_with_gap();
    let t = Instant::now();
    let s = r
        .play(
            &request(
                Some(Position::Clock(at(24.5))),
                Some(Position::Clock(at(3.0))),
                -1.0,
            ),
            t,
        )
        .unwrap();
    assert!((s.start - 24.0).abs() < 1e-3, "{}", s.start);
    let (sent, ended) = drain(&mut r, t);
    assert!(ended);
    let npts: Vec<f64> = sent.iter().map(|(_, b)| b.npt).collect();
    let want: Vec<f64> = (15..=24)
        .rev()
        .chain((3..=9).rev())
        .map(f64::from)
        .collect();
    assert_eq!(npts.len(), want.len(), "{npts:?}");
    for (a, b) in npts.iter().zip(&want) {
        assert!((a - b).abs() < 1e-3, "{npts:?}");
    }
    assert!(sent
        .iter()
        .all(|(_, b)| b.track == 0 && b.flags & FLAG_C != 0));
    let ts: Vec<u32> = sent
        .iter()
        .map(|(_, b)| {
            sluice_rtp::packet::parse_rtp(b.packets.last().unwrap())
                .unwrap()
                .timestamp
        })
        .collect();
    assert!(ts
        .windows(2)
        .all(|w| w[1].wrapping_sub(w[0]) < u32::MAX / 2 && w[1] != w[0]));
    // One keyframe per second of media at Scale −1 (24 → 15, 9 → 3); the gap is skipped.
    let wall = sent.last().unwrap().0 - t;
    assert!((14.5..15.5).contains(&wall.as_secs_f64()), "{wall:?}");
    let gap = npts.iter().position(|n| *n < 12.0).unwrap();
    assert!(sent[gap].1.flags & FLAG_D != 0);
    assert!(sent[gap - 1].1.flags & FLAG_E != 0);
    assert!(sent.last().unwrap().1.flags & FLAG_T != 0);
}

#[test]
fn speed_delivers_faster_with_recorded_timestamps_and_rate_control_off_at_once() {
    let mut r = replay(vec![segment("a", 0.0, 20, 0)], None, None);
    let t = Instant::now();
    let req = PlayRequest {
        speed: 4.0,
        ..request(Some(Position::Npt(0.0)), None, 1.0)
    };
    r.play(&req, t).unwrap();
    let (sent, _) = drain(&mut r, t);
    assert_eq!(video(&sent).len(), 500, "every frame at Speed 4");
    let wall = sent.last().unwrap().0 - t;
    assert!((4.5..5.2).contains(&wall.as_secs_f64()), "{wall:?}");
    let ts = |b: &Burst| {
        sluice_rtp::packet::parse_rtp(b.packets.last().unwrap())
            .unwrap()
            .timestamp
    };
    let v = video(&sent);
    assert_eq!(
        ts(&v[25].1).wrapping_sub(ts(&v[0].1)),
        90_000,
        "1 s of media"
    );

    let req = PlayRequest {
        rate_control: false,
        ..request(Some(Position::Npt(0.0)), None, 1.0)
    };
    r.play(&req, t).unwrap();
    let (sent, _) = drain(&mut r, t);
    assert_eq!(video(&sent).len(), 500);
    assert!(sent.iter().all(|(at, _)| *at == t), "no waiting");
}

#[test]
fn frames_intra_sends_keyframes_only_and_respects_an_interval() {
    let mut r = replay(vec![segment("a", 0.0, 10, 0)], None, None);
    let t = Instant::now();
    let req = PlayRequest {
        frames: FrameFilter::Intra(None),
        ..request(Some(Position::Npt(0.0)), None, 1.0)
    };
    r.play(&req, t).unwrap();
    let (sent, _) = drain(&mut r, t);
    assert_eq!(sent.len(), 10);
    assert!(sent
        .iter()
        .all(|(_, b)| b.track == 0 && b.flags & FLAG_C != 0));
    let req = PlayRequest {
        frames: FrameFilter::Intra(Some(2000)),
        ..request(Some(Position::Npt(0.0)), None, 1.0)
    };
    r.play(&req, t).unwrap();
    let (sent, _) = drain(&mut r, t);
    let npts: Vec<f64> = sent.iter().map(|(_, b)| b.npt).collect();
    assert_eq!(npts, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
    // Fast forward: keyframes at twice the pace.
    r.play(&request(Some(Position::Npt(0.0)), None, 2.0), t)
        .unwrap();
    let (sent, _) = drain(&mut r, t);
    assert_eq!(sent.len(), 10);
    let wall = sent.last().unwrap().0 - t;
    assert!((4.0..5.0).contains(&wall.as_secs_f64()), "{wall:?}");
}

#[test]
fn pause_and_resume_continue_where_it_stopped() {
    let mut r = replay(vec![segment("a", 0.0, 10, 0)], None, None);
    let t = Instant::now();
    r.play(&request(Some(Position::Npt(0.0)), None, 1.0), t)
        .unwrap();
    let mut now = t;
    let mut sent = 0;
    while sent < 60 {
        match r.poll(now) {
            Poll::Send(b) => sent += usize::from(b.track == 0),
            Poll::WaitUntil(w) => now = w,
            other => panic!("{other:?}"),
        }
    }
    let at = r.pause();
    assert!(matches!(r.poll(now), Poll::Idle));
    let later = now + Duration::from_secs(30);
    let s = r.play(&request(None, None, 1.0), later).unwrap();
    assert!(
        s.start >= at && s.start - at < 0.05,
        "{} after {at}",
        s.start
    );
    let (rest, _) = drain(&mut r, later);
    assert_eq!(video(&rest).len() + 60, 250);
}

#[test]
fn the_extension_round_trips_and_never_doubles() {
    let pkt = [0x80u8, 96, 0, 1, 0, 0, 0, 5, 0, 0, 0, 9, 0xaa, 0xbb];
    let with = with_onvif_extension(&pkt, 0x0102_0304_0506_0708, FLAG_C | FLAG_D, 42).unwrap();
    assert_eq!(with.len(), pkt.len() + 16);
    assert_eq!(
        onvif_extension(&with),
        Some((0x0102_0304_0506_0708, FLAG_C | FLAG_D, 42))
    );
    assert_eq!(&with[with.len() - 2..], &[0xaa, 0xbb]);
    assert!(with_onvif_extension(&with, 0, 0, 0).is_none());
    assert!(with_onvif_extension(&[0x40], 0, 0, 0).is_none());
    assert!(onvif_extension(&pkt).is_none());
}

#[test]
fn non_reference_frames_are_recognised() {
    let p = h264();
    let nal = |h: u8| vec![0, 0, 0, 2, h, 0x88];
    assert!(is_reference(&p, &nal(0x65)));
    assert!(is_reference(&p, &nal(0x41)));
    assert!(!is_reference(&p, &nal(0x01)), "nal_ref_idc 0: a B-frame");
    assert!(is_reference(&p, &[0, 0, 0, 9]), "truncated: kept");
}

#[test]
fn open_ended_playback_follows_the_recording_as_it_grows() {
    let (mut r, files) = replay_shared(vec![segment("a", 0.0, 4, 0)], None, None);
    let t = Instant::now();
    r.play(&request(Some(Position::Npt(0.0)), None, 1.0), t)
        .unwrap();
    let mut now = t;
    let mut sent = Vec::new();
    let caught_up_at = loop {
        match r.poll(now) {
            Poll::Send(b) => sent.push(b),
            Poll::WaitUntil(w) => now = w,
            Poll::CaughtUp => break now,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        video(&sent.iter().map(|b| (t, b.clone())).collect::<Vec<_>>()).len(),
        100
    );
    assert!(
        sent.iter().all(|b| b.flags & FLAG_T == 0),
        "no T while following"
    );
    // The segment grew to 6 s, and a new one began after a 2 s pause.
    let (grown, bytes) = segment("a", 0.0, 6, 0);
    files.lock().unwrap().insert(grown.file.clone(), bytes);
    let (next, bytes) = segment("b", 8.0, 2, 150);
    files.lock().unwrap().insert(next.file.clone(), bytes);
    r.extend(vec![grown, next]);
    let mut more = Vec::new();
    now = caught_up_at + Duration::from_millis(250);
    loop {
        match r.poll(now) {
            Poll::Send(b) => more.push(b),
            Poll::WaitUntil(w) => now = w,
            Poll::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    let v: Vec<&Burst> = more.iter().filter(|b| b.track == 0).collect();
    assert_eq!(v.len(), 100, "4..6 s and 8..10 s, nothing twice");
    assert!((v[0].npt - 4.0).abs() < 1e-3, "{}", v[0].npt);
    let after_pause = v.iter().position(|b| b.npt >= 8.0).unwrap();
    assert!(v[after_pause].flags & FLAG_D != 0);
    // The recording stopped: the end comes with the next poll at the end.
    r.stop_following();
    assert!(matches!(r.poll(now), Poll::Ended(_)));
}

#[test]
fn a_following_segment_that_overlaps_the_last_is_played_too() {
    // The recorder's next segment starts a reorder delay (80 ms here) before the one
    // before it ends; following must not skip it (it once skipped whole segments).
    let (mut r, files) = replay_shared(vec![segment("a", 0.0, 2, 0)], None, None);
    let t = Instant::now();
    r.play(&request(Some(Position::Npt(0.0)), None, 1.0), t)
        .unwrap();
    let mut now = t;
    let mut sent = Vec::new();
    loop {
        match r.poll(now) {
            Poll::Send(b) => sent.push(b),
            Poll::WaitUntil(w) => now = w,
            Poll::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    let (next, bytes) = segment("b", 1.92, 2, 50);
    assert!(next.start < r.timeline().end, "overlaps");
    files.lock().unwrap().insert(next.file.clone(), bytes);
    r.extend(vec![next]);
    now += Duration::from_millis(250);
    loop {
        match r.poll(now) {
            Poll::Send(b) => sent.push(b),
            Poll::WaitUntil(w) => now = w,
            Poll::CaughtUp => break,
            other => panic!("{other:?}"),
        }
    }
    let v: Vec<&Burst> = sent.iter().filter(|b| b.track == 0).collect();
    assert_eq!(v.len(), 100, "both segments' frames");
    assert!(
        v.last().is_some_and(|b| b.npt > 3.8),
        "{:?}",
        v.last().map(|b| b.npt)
    );
}
