//! The player on a virtual clock: a synthetic two-track file (VP8 video, 25 fps, a keyframe
//! every 0.4 s; PCMU audio in 20 ms frames) through the real packetizers, with `now`
//! advanced to exactly the instants the player asks for.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sluice_codec::packetizer::Packetizer;

use super::*;
use crate::{Codec, CodecParams, MediaInfo, TrackInfo};

const VIDEO: usize = 0;
const AUDIO: usize = 1;
/// Video timescale (ms) and frame duration.
const VIDEO_TS: u32 = 1000;
const FRAME_MS: i64 = 40;
/// Frames per keyframe interval (0.4 s).
const GOP: i64 = 10;
/// Audio: 8 kHz, 20 ms frames.
const AUDIO_TS: u32 = 8000;
const AUDIO_FRAME: i64 = 160;
const VIDEO_OFFSET: u32 = 1_000;
const AUDIO_OFFSET: u32 = 4_000_000_000;

/// A file of `secs` seconds held in memory, interleaved by decode time.
struct Synthetic {
    info: MediaInfo,
    samples: Vec<Sample>,
    keyframes: Vec<Duration>,
    cursor: usize,
}

fn secs_of(s: &Sample) -> f64 {
    let ts = if s.track == VIDEO { VIDEO_TS } else { AUDIO_TS };
    s.dts as f64 / f64::from(ts)
}

impl Synthetic {
    fn new(secs: i64) -> Synthetic {
        let mut samples = Vec::new();
        for i in 0..secs * 1000 / FRAME_MS {
            samples.push(Sample {
                track: VIDEO,
                dts: i * FRAME_MS,
                pts: i * FRAME_MS,
                duration: FRAME_MS as u32,
                keyframe: i % GOP == 0,
                data: Bytes::from(vec![if i % GOP == 0 { 0x10 } else { 0x11 }; 300]),
            });
        }
        for i in 0..secs * i64::from(AUDIO_TS) / AUDIO_FRAME {
            samples.push(Sample {
                track: AUDIO,
                dts: i * AUDIO_FRAME,
                pts: i * AUDIO_FRAME,
                duration: AUDIO_FRAME as u32,
                keyframe: true,
                data: Bytes::from(vec![0xff; AUDIO_FRAME as usize]),
            });
        }
        samples.sort_by(|a, b| {
            secs_of(a)
                .total_cmp(&secs_of(b))
                .then(a.track.cmp(&b.track))
        });
        let keyframes = (0..secs * 1000 / (FRAME_MS * GOP))
            .map(|k| Duration::from_millis((k * FRAME_MS * GOP) as u64))
            .collect();
        let duration = Duration::from_secs(secs as u64);
        let track = |index, codec, timescale| TrackInfo {
            index,
            params: CodecParams::new(codec, Bytes::new()),
            timescale,
            duration,
        };
        Synthetic {
            info: MediaInfo {
                duration,
                tracks: vec![
                    track(VIDEO, Codec::Vp8, VIDEO_TS),
                    track(AUDIO, Codec::Pcmu, AUDIO_TS),
                ],
            },
            samples,
            keyframes,
            cursor: 0,
        }
    }
}

impl Demuxer for Synthetic {
    fn info(&self) -> &MediaInfo {
        &self.info
    }

    fn seek(&mut self, t: Duration) -> Result<Duration, MediaError> {
        let k = self
            .keyframes
            .iter()
            .rev()
            .find(|k| **k <= t)
            .copied()
            .unwrap_or_default();
        self.cursor = self
            .samples
            .iter()
            .position(|s| secs_of(s) >= k.as_secs_f64() - 1e-9)
            .unwrap_or(self.samples.len());
        Ok(k)
    }

    fn next_sample(&mut self) -> Result<Option<Sample>, MediaError> {
        let s = self.samples.get(self.cursor).cloned();
        self.cursor += 1;
        Ok(s)
    }

    fn keyframe_times(&self) -> &[Duration] {
        &self.keyframes
    }
}

fn player(secs: i64, looping: bool) -> Player {
    let outputs = [
        (Codec::Vp8, 100u16, VIDEO_OFFSET),
        (Codec::Pcmu, 65_500, AUDIO_OFFSET),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (codec, seq, rtp_offset))| TrackOutput {
        packetizer: Packetizer::new(
            &CodecParams::new(codec, Bytes::new()),
            96 + i as u8,
            0x1000 + i as u32,
            seq,
            1400,
        )
        .unwrap(),
        rtp_offset,
    })
    .collect();
    Player::new(
        Box::new(Synthetic::new(secs)),
        outputs,
        PlayerOptions {
            looping,
            lead: Duration::ZERO,
        },
    )
}

/// One packet as a receiver sees it, and when it was handed out.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    track: usize,
    seq: u16,
    ts: u32,
    keyframe: bool,
    position: f64,
}

/// Drives `p` on the virtual clock `now` until `until`, jumping to each due instant; returns
/// the packets and the end, if playback ended.
fn run(p: &mut Player, now: &mut Instant, until: Instant) -> (Vec<Sent>, Option<EndReason>) {
    let mut sent = Vec::new();
    loop {
        match p.poll(*now) {
            Poll::Send(b) => {
                assert!(!b.packets.is_empty());
                for pkt in &b.packets {
                    sent.push(Sent {
                        at: *now,
                        track: b.track,
                        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
                        ts: u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]),
                        keyframe: b.keyframe,
                        position: b.position,
                    });
                    assert_eq!(sent.last().unwrap().ts, b.rtp_timestamp);
                }
            }
            Poll::Skipped(s) => panic!("skipped {s:?}"),
            Poll::Ended(r) => return (sent, Some(r)),
            Poll::WaitUntil(t) => {
                assert!(t > *now, "asked to wait for the past");
                if t > until {
                    *now = until;
                    return (sent, None);
                }
                *now = t;
            }
            Poll::Idle => return (sent, None),
        }
    }
}

fn of(sent: &[Sent], track: usize) -> Vec<Sent> {
    sent.iter().copied().filter(|s| s.track == track).collect()
}

/// Each packet's sequence number follows the previous one's.
fn assert_seq_continuous(sent: &[Sent]) {
    for w in sent.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{w:?}");
    }
}

/// Timestamp steps between consecutive packets of one track (wrapping arithmetic).
fn ts_steps(sent: &[Sent]) -> Vec<u32> {
    sent.windows(2)
        .map(|w| w[1].ts.wrapping_sub(w[0].ts))
        .collect()
}

#[test]
fn loop_keeps_timestamps_and_sequence_numbers_continuous() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, true);
    let start = p.play(None, None, 1.0, now).unwrap();
    assert_eq!(start.start, 0.0);
    assert_eq!(
        start.tracks[VIDEO],
        TrackStart {
            seq: 100,
            rtptime: VIDEO_OFFSET
        }
    );
    assert_eq!(
        start.tracks[AUDIO],
        TrackStart {
            seq: 65_500,
            rtptime: AUDIO_OFFSET
        }
    );
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_millis(5_100));
    assert!(end.is_none());
    assert_eq!(p.loops(), 2);
    let video = of(&sent, VIDEO);
    let audio = of(&sent, AUDIO);
    // Video 0 … 5.08 s, audio 0 … 5.10 s over two loops of 2 s: one packet a sample.
    assert_eq!(video.len(), 128);
    assert_eq!(audio.len(), 256);
    assert_seq_continuous(&video);
    assert_seq_continuous(&audio);
    // 90 kHz × 40 ms and 160 samples, across both loop points too (audio wraps the
    // 32-bit timestamp on the way).
    assert!(ts_steps(&video).iter().all(|&d| d == 3_600));
    assert!(ts_steps(&audio).iter().all(|&d| d == 160));
    // Wall time follows media time across the loops.
    for s in &sent {
        let media = s.ts.wrapping_sub(if s.track == VIDEO {
            VIDEO_OFFSET
        } else {
            AUDIO_OFFSET
        });
        let rate = if s.track == VIDEO { 90_000.0 } else { 8_000.0 };
        let due = f64::from(media) / rate;
        assert!(((s.at - t0).as_secs_f64() - due).abs() < 1e-6, "{s:?}");
    }
}

#[test]
fn seek_lands_on_the_keyframe_at_or_before_and_reports_it() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    let start = p.play(Some(1.0), None, 1.0, now).unwrap();
    assert_eq!(start.start, 0.8);
    assert_eq!(start.tracks[VIDEO].rtptime, VIDEO_OFFSET + 72_000);
    assert_eq!(start.tracks[AUDIO].rtptime, AUDIO_OFFSET + 6_400);
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::EndOfFile)));
    let video = of(&sent, VIDEO);
    let first = video.first().unwrap();
    assert!(first.keyframe);
    assert_eq!(first.seq, start.tracks[VIDEO].seq);
    assert_eq!(first.ts, start.tracks[VIDEO].rtptime);
    assert_eq!(first.at, t0);
    let audio = of(&sent, AUDIO);
    assert_eq!(audio.first().unwrap().ts, start.tracks[AUDIO].rtptime);
    // The rest (0.8 … 1.96 s) plays at media pace.
    assert_eq!(video.len(), 30);
    assert_eq!(video.last().unwrap().at - t0, Duration::from_millis(1_160));
    // The end is reported once, then the player idles.
    assert!(matches!(p.poll(now), Poll::Idle));
}

#[test]
fn scale_2_plays_keyframes_only_in_half_the_wall_time() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    let start = p.play(Some(0.0), None, 2.0, now).unwrap();
    assert_eq!(start.scale, 2.0);
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::EndOfFile)));
    assert!(sent.iter().all(|s| s.track == VIDEO && s.keyframe));
    let positions: Vec<f64> = sent.iter().map(|s| s.position).collect();
    assert_eq!(positions, [0.0, 0.4, 0.8, 1.2, 1.6]);
    let at: Vec<Duration> = sent.iter().map(|s| s.at - t0).collect();
    assert_eq!(at, [0, 200, 400, 600, 800].map(Duration::from_millis));
    assert_seq_continuous(&sent);
    assert!(ts_steps(&sent).iter().all(|&d| d == 36_000));
}

#[test]
fn negative_scale_goes_backwards_to_the_start() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    let start = p.play(Some(1.7), None, -1.0, now).unwrap();
    assert_eq!(start.start, 1.6);
    assert_eq!(start.tracks[VIDEO].rtptime, VIDEO_OFFSET + 144_000);
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::EndOfFile)));
    let positions: Vec<f64> = sent.iter().map(|s| s.position).collect();
    assert_eq!(positions, [1.6, 1.2, 0.8, 0.4, 0.0]);
    let at: Vec<Duration> = sent.iter().map(|s| s.at - t0).collect();
    assert_eq!(at, [0, 400, 800, 1_200, 1_600].map(Duration::from_millis));
    assert_eq!(sent.first().unwrap().ts, start.tracks[VIDEO].rtptime);
    assert!(ts_steps(&sent)
        .iter()
        .all(|&d| d == 36_000u32.wrapping_neg()));
    assert_seq_continuous(&sent);
}

#[test]
fn slow_scale_stretches_wall_time() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    p.play(Some(0.0), Some(0.4), 0.5, now).unwrap();
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::RangeEnd)));
    let video = of(&sent, VIDEO);
    assert_eq!(video.len(), 11);
    assert_eq!(video.last().unwrap().at - t0, Duration::from_millis(800));
}

#[test]
fn pause_and_resume_keep_timestamps_continuous() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    p.play(None, None, 1.0, now).unwrap();
    let (before, _) = run(&mut p, &mut now, t0 + Duration::from_millis(500));
    // The audio frame at 0.5 s was due at 500 ms exactly.
    let resume_at = p.pause();
    assert_eq!(resume_at, 0.5);
    // Paused: nothing however long the wait.
    now += Duration::from_secs(30);
    assert!(matches!(p.poll(now), Poll::Idle));
    let resumed = p.play(None, None, 1.0, now).unwrap();
    assert_eq!(resumed.start, 0.5);
    assert_eq!(resumed.tracks[VIDEO].rtptime, VIDEO_OFFSET + 45_000);
    let t1 = now;
    let (after, end) = run(&mut p, &mut now, t1 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::EndOfFile)));
    for track in [VIDEO, AUDIO] {
        let all: Vec<Sent> = of(&before, track)
            .into_iter()
            .chain(of(&after, track))
            .collect();
        assert_seq_continuous(&all);
        let step = if track == VIDEO { 3_600 } else { 160 };
        assert!(ts_steps(&all).iter().all(|&d| d == step), "track {track}");
        assert_eq!(
            of(&after, track).first().unwrap().seq,
            resumed.tracks[track].seq
        );
    }
    // The video frame read ahead before the pause (0.52 s) is due 20 ms after the resume.
    assert_eq!(after.first().unwrap().at - t1, Duration::from_millis(20));
    assert_eq!(after.first().unwrap().position, 0.52);
    assert_eq!(
        of(&after, VIDEO).last().unwrap().at - t1,
        Duration::from_millis(1_460)
    );
}

#[test]
fn range_end_stops_exactly() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = player(2, false);
    let start = p.play(Some(0.4), Some(1.0), 1.0, now).unwrap();
    assert_eq!(start.end, Some(1.0));
    let (sent, end) = run(&mut p, &mut now, t0 + Duration::from_secs(10));
    assert!(matches!(end, Some(EndReason::RangeEnd)));
    let video = of(&sent, VIDEO);
    assert_eq!(video.first().unwrap().position, 0.4);
    assert_eq!(video.last().unwrap().position, 1.0);
    assert_eq!(of(&sent, AUDIO).last().unwrap().position, 1.0);
    // Ended as soon as the first sample past the end (audio, 1.02 s) was read, not when
    // it or the file's end would have been due.
    assert_eq!(now - t0, Duration::from_millis(600));
    assert!(matches!(p.poll(now + Duration::from_secs(5)), Poll::Idle));
}

#[test]
fn bad_requests_are_refused() {
    let now = Instant::now();
    let mut p = player(2, false);
    for scale in [0.0, f64::NAN, 33.0, -40.0] {
        assert!(matches!(
            p.play(None, None, scale, now),
            Err(PlayError::UnsupportedScale(_))
        ));
    }
    assert!(matches!(
        p.play(Some(5.0), None, 1.0, now),
        Err(PlayError::InvalidRange(_))
    ));
    assert!(matches!(
        p.play(Some(1.0), Some(0.5), 1.0, now),
        Err(PlayError::InvalidRange(_))
    ));
    assert!(matches!(
        p.play(Some(0.5), Some(1.0), -1.0, now),
        Err(PlayError::InvalidRange(_))
    ));
    assert!(!p.is_playing());
}

#[test]
fn lead_hands_samples_out_early() {
    let t0 = Instant::now();
    let mut p = player(2, false);
    p.options.lead = Duration::from_millis(50);
    p.play(None, None, 1.0, t0).unwrap();
    // Video 0 and 40 ms, audio 0, 20 and 40 ms are within the lead; the 60 ms audio frame
    // is asked for at 10 ms.
    let mut sent = 0;
    let wait = loop {
        match p.poll(t0) {
            Poll::Send(_) => sent += 1,
            Poll::WaitUntil(t) => break t,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(sent, 2 + 3);
    assert_eq!(wait - t0, Duration::from_millis(10));
}

#[derive(Debug, Clone)]
enum Op {
    /// Let playback run this long.
    Run(u16),
    Pause,
    Resume,
    Seek(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..3_000).prop_map(Op::Run),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => (0u16..2_000).prop_map(Op::Seek),
    ]
}

proptest! {
    /// Whatever the sequence of pauses, resumes, seeks and loops: sequence numbers never skip
    /// or repeat, timestamps only step back at a seek, and the first packet after every PLAY
    /// matches the RTP-Info it announced: after a seek the video keyframe carries it exactly
    /// (audio within one frame, as its frames need not start on the keyframe); after a resume
    /// each track continues at most one frame after the resume point.
    #[test]
    fn timestamps_follow_media_time(ops in proptest::collection::vec(op(), 1..30)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut p = player(2, true);
        let mut announced = Some((p.play(None, None, 1.0, now).unwrap(), true));
        let mut last_ts: [Option<u32>; 2] = [None, None];
        let mut all: Vec<Vec<Sent>> = vec![Vec::new(), Vec::new()];
        for op in ops {
            match op {
                Op::Run(ms) => {
                    let until = now + Duration::from_millis(u64::from(ms));
                    let (sent, end) = run(&mut p, &mut now, until);
                    prop_assert!(end.is_none());
                    for track in [VIDEO, AUDIO] {
                        let new = of(&sent, track);
                        if let (Some((a, seek)), Some(first)) = (&announced, new.first()) {
                            let start = a.tracks[track];
                            prop_assert_eq!(first.seq, start.seq);
                            let ahead = first.ts.wrapping_sub(start.rtptime) as i32;
                            let frame = if track == VIDEO { 3_600 } else { 160 };
                            let range = match (*seek, track) {
                                (true, VIDEO) => 0..=0,
                                (true, _) => -frame..=0,
                                (false, _) => 0..=frame,
                            };
                            prop_assert!(range.contains(&ahead), "track {} ahead {}", track, ahead);
                        }
                        for s in &new {
                            if let Some(last) = last_ts[track] {
                                prop_assert!((s.ts.wrapping_sub(last) as i32) > 0, "{:?}", s);
                            }
                            last_ts[track] = Some(s.ts);
                        }
                        all[track].extend(new);
                    }
                    if !sent.is_empty() {
                        announced = None;
                    }
                }
                Op::Pause => {
                    p.pause();
                }
                Op::Resume => {
                    if !p.is_playing() {
                        announced = Some((p.play(None, None, 1.0, now).unwrap(), false));
                    }
                }
                Op::Seek(ms) => {
                    let start = p.play(Some(f64::from(ms) / 1000.0), None, 1.0, now).unwrap();
                    announced = Some((start, true));
                    last_ts = [None, None];
                }
            }
        }
        for track in [VIDEO, AUDIO] {
            assert_seq_continuous(&all[track]);
        }
    }
}
