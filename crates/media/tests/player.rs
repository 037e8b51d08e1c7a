//! The player over real files made by ffmpeg (H.264 with B-frames and AAC with an edit
//! list; H.265/VP9 with Opus in Matroska) through the real packetizers, on a virtual clock.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use sluice_codec::packetizer::Packetizer;
use sluice_media::player::{EndReason, Player, PlayerOptions, Poll, TrackOutput};

/// A packet as a receiver sees it, and when it was handed out.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    track: usize,
    seq: u16,
    ts: u32,
    keyframe: bool,
    position: f64,
    loops: u32,
}

fn player(path: &Path, looping: bool) -> Player {
    let demuxer = sluice_media::open(path).expect("open");
    let outputs = demuxer
        .info()
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| TrackOutput {
            packetizer: Packetizer::new(&t.params, 96 + i as u8, 7, 0, 1400).expect("packetizer"),
            rtp_offset: 0,
        })
        .collect();
    Player::new(
        demuxer,
        outputs,
        PlayerOptions {
            looping,
            lead: Duration::ZERO,
        },
    )
}

/// Drives the player on a virtual clock from `t0` until `until` or the end.
fn run(p: &mut Player, t0: Instant, until: Duration) -> (Vec<Sent>, Option<EndReason>) {
    let mut now = t0;
    let mut sent = Vec::new();
    loop {
        match p.poll(now) {
            Poll::Send(b) => {
                for pkt in &b.packets {
                    let h = sluice_rtp::packet::parse_rtp(pkt).expect("valid RTP");
                    assert_eq!(h.timestamp, b.rtp_timestamp);
                    sent.push(Sent {
                        at: now,
                        track: b.track,
                        seq: h.sequence,
                        ts: h.timestamp,
                        keyframe: b.keyframe,
                        position: b.position,
                        loops: b.loops,
                    });
                }
            }
            Poll::Skipped(s) => panic!("skipped {s:?}"),
            Poll::Ended(r) => return (sent, Some(r)),
            Poll::WaitUntil(t) if t - t0 > until => return (sent, None),
            Poll::WaitUntil(t) => now = t,
            Poll::Idle => return (sent, None),
        }
    }
}

fn check_loops(spec: &Spec) {
    let path = media(spec);
    let mut p = player(&path, true);
    let duration = p.duration();
    let t0 = Instant::now();
    p.play(None, None, 1.0, t0).expect("play");
    let (sent, end) = run(&mut p, t0, Duration::from_secs_f64(3.0 * duration - 0.2));
    assert!(end.is_none(), "{end:?}");
    assert_eq!(p.loops(), 2);
    for track in 0..2 {
        let packets: Vec<Sent> = sent.iter().copied().filter(|s| s.track == track).collect();
        assert!(packets.len() > 100, "{}: track {track}", spec.name);
        for w in packets.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{}: {w:?}", spec.name);
        }
        // Every timestamp of a loop is above every timestamp of the loop before, by at
        // most a couple of frames at the seam.
        for n in 0..2 {
            let ts = |l: u32| packets.iter().filter(move |s| s.loops == l).map(|s| s.ts);
            let (last_max, next_min) = (ts(n).max().unwrap(), ts(n + 1).min().unwrap());
            let gap = next_min.wrapping_sub(last_max) as i32;
            let frame = if track == 0 { 3_600 } else { 1_024 };
            assert!(
                gap > 0 && gap <= 2 * frame,
                "{}: track {track} loop {n}: {last_max} then {next_min}",
                spec.name
            );
        }
    }
    // Each packet leaves when its sample's decode time comes, loops included (or at once if
    // that is past: B-frame decode times start below 0, so a loop's first samples are due
    // before the previous loop's last).
    let mut prev = 0.0f64;
    for s in &sent {
        let due = f64::from(s.loops) * duration + s.position;
        let at = (s.at - t0).as_secs_f64();
        assert!((at - due.max(prev)).abs() < 1e-6, "{}: {s:?}", spec.name);
        prev = at;
    }
}

#[test]
fn mp4_loops_with_continuous_timestamps() {
    check_loops(&MP4);
}

#[test]
fn mkv_loops_with_continuous_timestamps() {
    check_loops(&MKV_H264);
}

#[test]
fn seek_starts_on_the_keyframe_it_announces() {
    for spec in [&MP4, &MKV_H264, &WEBM] {
        let mut p = player(&media(spec), false);
        let t0 = Instant::now();
        let start = p.play(Some(2.5), None, 1.0, t0).expect("play");
        // Keyframes every second (25 frames at 25 fps).
        assert!((start.start - 2.0).abs() < 0.05, "{}: {start:?}", spec.name);
        let (sent, end) = run(&mut p, t0, Duration::from_secs(10));
        assert!(matches!(end, Some(EndReason::EndOfFile)), "{end:?}");
        let first = sent.iter().find(|s| s.track == 0).unwrap();
        assert!(first.keyframe);
        assert_eq!(first.seq, start.tracks[0].seq);
        let off = first.ts.wrapping_sub(start.tracks[0].rtptime) as i32;
        assert!(
            off.abs() <= 1,
            "{}: first video {first:?} vs {start:?}",
            spec.name
        );
        let last = sent.last().unwrap();
        let wall = (last.at - t0).as_secs_f64();
        assert!((wall - (last.position - start.start)).abs() < 1e-6);
    }
}

#[test]
fn scale_2_sends_keyframes_only_at_double_speed() {
    let mut p = player(&media(&MP4), false);
    let t0 = Instant::now();
    p.play(Some(0.0), None, 2.0, t0).expect("play");
    let (sent, end) = run(&mut p, t0, Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::EndOfFile)), "{end:?}");
    assert!(sent.iter().all(|s| s.track == 0 && s.keyframe));
    let mut starts: Vec<(f64, f64)> = sent
        .iter()
        .map(|s| (s.position, (s.at - t0).as_secs_f64()))
        .collect();
    starts.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(starts.len(), 4, "{starts:?}");
    for (i, (pos, at)) in starts.into_iter().enumerate() {
        assert!((pos - i as f64).abs() < 0.05, "{pos}");
        assert!((at - pos / 2.0).abs() < 1e-6, "{pos} at {at}");
    }
}

#[test]
fn webm_loops_with_continuous_timestamps() {
    check_loops(&WEBM);
}
