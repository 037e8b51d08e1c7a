//! The segment writer on a virtual clock: frames made up here, wall clock readings made up,
//! and the files read back with this crate's demuxer and the recovery parser.

use std::io::Cursor;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use sluice_codec::depacketizer::Depacketizer;

use super::*;

/// x264's 640x360 SPS and PPS.
const SPROP_360: &str =
    "packetization-mode=1;sprop-parameter-sets=Z2QAHqzZQKAv+XARAAADAAEAAAMAPA8WLZY=,aO+Pyw==";
/// Another resolution's SPS and PPS.
const SPROP_OTHER: &str =
    "packetization-mode=1;sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==";

fn h264(sprop: &str) -> CodecParams {
    Depacketizer::new("H264", 90_000, None, Some(sprop))
        .expect("H.264 depacketizer")
        .params()
        .expect("parameter sets from the sprop")
}

fn opus() -> CodecParams {
    CodecParams {
        channels: Some(2),
        ..CodecParams::new(crate::Codec::Opus, Vec::new())
    }
}

/// 2027-01-15T08:00:00Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn at(secs: f64) -> SystemTime {
    t0() + Duration::from_secs_f64(secs)
}

/// A length-prefixed made-up slice (IDR or not), `n` marking it.
fn slice(keyframe: bool, n: u32) -> bytes::Bytes {
    let mut s = vec![0, 0, 0, 6, if keyframe { 0x65 } else { 0x41 }, 0x88];
    s.extend_from_slice(&n.to_be_bytes());
    s.into()
}

fn video(n: i64, gop: i64) -> Frame {
    Frame {
        track: 0,
        dts: n * 3600,
        pts: n * 3600,
        keyframe: n % gop == 0,
        data: slice(n % gop == 0, n as u32),
    }
}

fn audio(track: usize, n: i64) -> Frame {
    Frame {
        track,
        dts: n * 960,
        pts: n * 960,
        keyframe: true,
        data: vec![0xfc, 0xff, (n & 0xff) as u8].into(),
    }
}

/// A finished segment: its bytes, why it ended and its record.
#[derive(Debug)]
struct Seg {
    bytes: Vec<u8>,
    reason: CutReason,
    record: SegmentRecord,
}

/// Drains the writer into segment files, checking the output's order.
fn drain(w: &mut SegmentWriter, open: &mut Option<Vec<u8>>, done: &mut Vec<Seg>) {
    while let Some(o) = w.poll_output() {
        match o {
            ArchiveOutput::SegmentStarted { init, init_id, .. } => {
                assert!(open.is_none(), "a segment starts while another is open");
                assert_eq!(init_id, index::fnv1a(&init));
                *open = Some(init.to_vec());
            }
            ArchiveOutput::Part { bytes, record, .. } => {
                let f = open.as_mut().expect("a part outside a segment");
                assert_eq!(record.offset, f.len() as u64);
                assert_eq!(record.len, bytes.len() as u64);
                assert_eq!(&bytes[4..8], b"prft");
                f.extend_from_slice(&bytes);
            }
            ArchiveOutput::SegmentEnded { reason, record, .. } => {
                let bytes = open.take().expect("an end without a segment");
                assert_eq!(record.bytes, bytes.len() as u64);
                done.push(Seg {
                    bytes,
                    reason,
                    record,
                });
            }
        }
    }
}

/// Runs frames (with their arrival times) through a writer and returns the segments.
fn record(
    params: Vec<CodecParams>,
    config: ArchiveConfig,
    frames: impl IntoIterator<Item = (Frame, SystemTime)>,
) -> (Vec<Seg>, ArchiveStats) {
    let mut w = SegmentWriter::new(params, config).expect("writer");
    let (mut open, mut done) = (None, Vec::new());
    for (f, wall) in frames {
        w.push(f, wall);
        drain(&mut w, &mut open, &mut done);
    }
    w.finish();
    drain(&mut w, &mut open, &mut done);
    assert!(open.is_none(), "finish closes the segment");
    (done, w.stats())
}

/// 25 fps video with a keyframe every `gop` frames and 20 ms Opus, for `secs`, arriving in
/// time order (audio up to 40 ms behind video, as a network interleaves them).
fn av(secs: i64, gop: i64) -> Vec<(Frame, SystemTime)> {
    let mut out = Vec::new();
    for n in 0..secs * 25 {
        out.push((video(n, gop), at(n as f64 / 25.0 + 0.01)));
        for k in 0..2 {
            let a = 2 * n + k;
            out.push((audio(1, a), at(a as f64 / 50.0 + 0.04)));
        }
    }
    out
}

/// Seconds of a duration, for messages.
fn s(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn segments_cut_at_keyframes_with_one_second_parts_that_abut() {
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(10),
        ..ArchiveConfig::default()
    };
    let (segs, stats) = record(vec![h264(SPROP_360), opus()], config, av(25, 50));
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    assert_eq!(stats.frames, 25 * 25 + 25 * 50, "every frame written");
    let durations: Vec<f64> = segs.iter().map(|g| s(g.record.media_end)).collect();
    println!(
        "segments: {durations:?}, parts {}, bytes {}",
        stats.parts, stats.bytes
    );
    assert_eq!(segs.len(), 3);
    for (i, g) in segs.iter().enumerate() {
        let want = if i < 2 { 10.0 } else { 5.0 };
        assert!(
            (durations[i] - want).abs() < 0.05,
            "segment {i}: {}",
            durations[i]
        );
        assert_eq!(
            g.reason,
            if i < 2 {
                CutReason::Duration
            } else {
                CutReason::Stop
            }
        );
        assert!(
            g.record.parts[0].keyframe,
            "segment {i} starts with a keyframe"
        );
        // Cut on duration: one decode timeline, each segment's from the previous one's end,
        // every track (the file's first tfdt per track).
        assert_eq!(g.record.media_base, Duration::from_secs(10 * i as u64));
        let r = recover(&g.bytes);
        let first: Vec<(usize, u64)> = r.parts[0]
            .tracks
            .iter()
            .map(|t| (t.track, t.base_dts))
            .collect();
        let n = i as u64;
        assert_eq!(first, [(0, n * 900_000), (1, n * 480_000)], "segment {i}");
        for p in &g.record.parts {
            let d = s(p.media_end - p.media_start);
            assert!((0.95..=1.05).contains(&d), "part of {d} s");
        }
        for w in g.record.parts.windows(2) {
            assert_eq!(w[0].media_end, w[1].media_start, "parts abut");
            assert_eq!(w[0].offset + w[0].len, w[1].offset);
        }
        // Wall clock: the segment's first sample was captured at 10 s × i; it arrived 10 ms
        // later, its audio 40 ms: the smoothed mapping sits in between.
        let wall = g
            .record
            .start_wall
            .duration_since(t0())
            .map(s)
            .unwrap_or(-1.0);
        assert!(
            (0.01..0.04).contains(&(wall - 10.0 * i as f64)),
            "start wall {wall}"
        );
        // The file plays: every sample of the segment is there, in the demuxer's eyes too.
        let mut d = crate::open_reader(Cursor::new(g.bytes.clone())).expect("segment opens");
        let mut n = [0usize; 2];
        let mut first = None;
        while let Some(sample) = d.next_sample().expect("sample") {
            first.get_or_insert(sample.keyframe);
            n[sample.track] += 1;
        }
        let secs = want as usize;
        assert_eq!(n, [secs * 25, secs * 50], "segment {i} samples");
        // It is whole: recovery keeps it all, and its index record is rebuilt exactly.
        let r = recover(&g.bytes);
        assert_eq!(r.damage, None);
        assert_eq!(r.valid_len, g.bytes.len() as u64);
        let mut want_record = g.record.clone();
        want_record.path = format!("seg{i}.mp4");
        let rebuilt = reindex(&want_record.path, &g.bytes).expect("reindex");
        assert_eq!(rebuilt.parts.len(), want_record.parts.len());
        for (a, b) in rebuilt.parts.iter().zip(&want_record.parts) {
            let dw = a
                .wall_start
                .duration_since(b.wall_start)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .map(s)
                .unwrap_or(1.0);
            assert!(dw < 1e-6, "prft wall clock round trip {dw}");
        }
        assert_eq!(rebuilt.init_id, want_record.init_id);
        assert_eq!(rebuilt.media_end, want_record.media_end);
        assert!(!rebuilt.recovered);
        let back = SegmentRecord::decode(&rebuilt.encode()).expect("decode");
        assert_eq!(back, rebuilt);
    }
    // Segments abut within a frame: the end of one is the next one's start, on the wall clock.
    for w in segs.windows(2) {
        let gap = w[1]
            .record
            .start_wall
            .duration_since(w[0].record.end_wall)
            .map(s)
            .unwrap_or_else(|e| -s(e.duration()));
        assert!(gap.abs() < 0.04, "gap between segments {gap}");
    }
}

#[test]
fn parts_are_cut_on_time_not_only_at_keyframes() {
    // A 4 s GOP with 1 s parts: three parts of four begin with a non-keyframe.
    let (segs, stats) = record(vec![h264(SPROP_360)], ArchiveConfig::default(), {
        (0..200).map(|n| (video(n, 100), at(n as f64 / 25.0)))
    });
    assert_eq!(stats.dropped(), 0);
    assert_eq!(segs.len(), 1);
    let parts = &segs[0].record.parts;
    let keys: Vec<bool> = parts.iter().map(|p| p.keyframe).collect();
    println!("part keyframe flags: {keys:?}");
    assert_eq!(keys, [true, false, false, false, true, false, false, false]);
    // The sample flags say so to a player: only IDRs are sync samples.
    let mut d = crate::open_reader(Cursor::new(segs[0].bytes.clone())).unwrap();
    let mut keyframes = 0;
    while let Some(s) = d.next_sample().unwrap() {
        keyframes += usize::from(s.keyframe);
    }
    assert_eq!(keyframes, 2);
}

#[test]
fn a_resolution_change_starts_a_segment_with_a_new_init_and_loses_nothing() {
    let mut w =
        SegmentWriter::new(vec![h264(SPROP_360), opus()], ArchiveConfig::default()).unwrap();
    let (mut open, mut done) = (None, Vec::new());
    let frames = av(6, 25);
    let mut changed = false;
    for (f, wall) in frames.iter().cloned() {
        // The new parameter sets arrive (in-band) just before the IDR at 3 s.
        if !changed && f.track == 0 && f.dts == 75 * 3600 {
            w.set_params(0, h264(SPROP_OTHER));
            changed = true;
        }
        w.push(f, wall);
        drain(&mut w, &mut open, &mut done);
    }
    w.finish();
    drain(&mut w, &mut open, &mut done);
    let stats = w.stats();
    assert_eq!(stats.dropped(), 0);
    assert_eq!(stats.frames, frames.len() as u64);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].reason, CutReason::ParamsChanged { track: 0 });
    assert_ne!(done[0].record.init_id, done[1].record.init_id);
    assert!((s(done[0].record.media_end) - 3.0).abs() < 0.001);
    assert!(done[1].record.parts[0].keyframe);
    // New parameters: a new decode timeline (the HLS VOD breaks there anyway).
    assert_eq!(done[1].record.media_base, Duration::ZERO);
    let size = |b: &[u8]| {
        let d = crate::open_reader(Cursor::new(b.to_vec())).unwrap();
        let t = &d.info().tracks[0];
        (t.params.width, t.params.height)
    };
    let (a, b) = (size(&done[0].bytes), size(&done[1].bytes));
    println!("sizes: {a:?} then {b:?}");
    assert_eq!(a, (Some(640), Some(360)));
    assert_ne!(a, b);
    // Unchanged parameters change nothing.
    let mut w = SegmentWriter::new(vec![opus()], ArchiveConfig::default()).unwrap();
    w.set_params(0, opus());
    for n in 0..100 {
        w.push(audio(0, n), at(n as f64 / 50.0));
    }
    w.finish();
    let ends = std::iter::from_fn(|| w.poll_output())
        .filter(|o| matches!(o, ArchiveOutput::SegmentEnded { .. }))
        .count();
    assert_eq!(ends, 1);
}

#[test]
fn drift_is_absorbed_and_a_clock_step_starts_a_segment() {
    // The sender's clock runs 0.1 % slow for 100 s: 100 ms of drift, no new segment, and
    // each part's wall clock follows the arrivals.
    let frames = (0..5000).map(|n| (audio(0, n), at(n as f64 / 50.0 * 1.001)));
    let (segs, stats) = record(vec![opus()], ArchiveConfig::default(), frames);
    assert_eq!((segs.len(), stats.dropped()), (1, 0));
    let last = segs[0].record.parts.last().unwrap();
    let want = s(last.media_start) * 1.001;
    let got = s(last.wall_start.duration_since(t0()).unwrap());
    println!(
        "drift: last part at media {:.3} s, wall {got:.3} s (arrival {want:.3} s)",
        s(last.media_start)
    );
    assert!((got - want).abs() < 0.03, "{got} vs {want}");
    // The wall clock steps 30 s ahead at 5 s: a new segment, whose wall start is the step's.
    let frames = (0..500).map(|n| {
        let step = if n >= 250 { 30.0 } else { 0.0 };
        (audio(0, n), at(n as f64 / 50.0 + step))
    });
    let (segs, stats) = record(vec![opus()], ArchiveConfig::default(), frames);
    assert_eq!(stats.frames, 500);
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].reason, CutReason::ClockStep);
    let start = s(segs[1].record.start_wall.duration_since(t0()).unwrap());
    assert!((start - 35.0).abs() < 0.01, "{start}");
    assert!((s(segs[0].record.media_end) - 5.0).abs() < 0.001);
    assert_eq!(segs[1].record.media_base, Duration::ZERO, "a new timeline");
    // A network stall of 3 s, its backlog then delivered at 10× real time: late frames, not
    // a clock step; nothing is lost.
    let frames = (0..1000).map(|n| {
        let t = n as f64 / 50.0;
        // From 5 s on, media arrives from 8 s at ten times real time until it caught up.
        let arrival = if t < 5.0 {
            t
        } else {
            (8.0 + (t - 5.0) / 10.0).max(t)
        };
        (audio(0, n), at(arrival))
    });
    let (segs, stats) = record(vec![opus()], ArchiveConfig::default(), frames);
    assert_eq!((segs.len(), stats.frames, stats.dropped()), (1, 1000, 0));
}

#[test]
fn late_frames_within_the_window_are_reordered_beyond_it_counted() {
    // Audio arrives 300 ms behind video: inside the 500 ms window, nothing is lost.
    let mut frames = Vec::new();
    for n in 0..250i64 {
        frames.push((video(n, 50), at(n as f64 / 25.0)));
    }
    for n in 0..500i64 {
        frames.push((audio(1, n), at(n as f64 / 50.0 + 0.3)));
    }
    frames.sort_by_key(|(_, wall)| *wall);
    let (segs, stats) = record(
        vec![h264(SPROP_360), opus()],
        ArchiveConfig::default(),
        frames,
    );
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    assert_eq!(stats.frames, 750);
    let r = recover(&segs[0].bytes);
    let tracks: Vec<usize> = r.parts[1].tracks.iter().map(|t| t.track).collect();
    assert_eq!(tracks, [0, 1], "parts interleave both tracks");
    // One audio frame 2 s late: dropped and counted.
    let mut frames: Vec<_> = (0..250i64)
        .map(|n| (audio(0, n), at(n as f64 / 50.0)))
        .collect();
    frames.push((audio(0, 10), at(5.0)));
    let (_, stats) = record(vec![opus()], ArchiveConfig::default(), frames);
    assert_eq!((stats.dropped_late, stats.frames), (1, 250));
}

#[test]
fn after_a_publisher_change_the_next_segment_waits_for_a_keyframe() {
    let mut w = SegmentWriter::new(vec![h264(SPROP_360)], ArchiveConfig::default()).unwrap();
    // The stream starts mid-GOP: frames before the first IDR are skipped, not dropped.
    for n in 10..60 {
        w.push(video(n, 25), at(n as f64 / 25.0));
    }
    w.cut(CutReason::PublisherChanged);
    for n in 60..120 {
        w.push(video(n + 3, 25), at(n as f64 / 25.0));
    }
    w.finish();
    let stats = w.stats();
    let (mut open, mut done) = (None, Vec::new());
    drain(&mut w, &mut open, &mut done);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].reason, CutReason::PublisherChanged);
    assert!(done.iter().all(|g| g.record.parts[0].keyframe));
    assert_eq!(done[1].record.media_base, Duration::ZERO, "a new timeline");
    // 15 frames before the first IDR (10..25), 12 before the new publisher's (63..75).
    assert_eq!(stats.skipped_before_keyframe, 15 + 12);
    assert_eq!(stats.dropped(), 0);
}

/// A finished two-track segment of `secs` seconds and its part boundaries: the second of
/// a run cut on duration, so that its decode times start where the first's ended (`secs`
/// seconds), not at 0.
fn sample_file(secs: i64) -> (Vec<u8>, Vec<PartRecord>) {
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(secs as u64),
        ..ArchiveConfig::default()
    };
    let (mut segs, _) = record(vec![h264(SPROP_360), opus()], config, av(2 * secs + 1, 25));
    assert_eq!(segs.len(), 3);
    let g = segs.remove(1);
    assert_eq!(g.record.media_base, Duration::from_secs(secs as u64));
    let r = recover(&g.bytes);
    assert_eq!(r.media_base(), Some(Duration::from_secs(secs as u64)));
    assert_eq!(r.parts[0].tracks[0].base_dts, secs as u64 * 90_000, "tfdt");
    (g.bytes, g.record.parts)
}

/// What recovery must keep of `file` cut at `cut`: the parts that end at or before it.
fn complete_before(parts: &[PartRecord], init_len: u64, cut: u64) -> (usize, u64) {
    let kept: Vec<&PartRecord> = parts.iter().filter(|p| p.offset + p.len <= cut).collect();
    (
        kept.len(),
        kept.last().map_or(init_len, |p| p.offset + p.len),
    )
}

#[test]
fn a_torn_tail_is_cut_after_the_last_complete_part_at_every_byte() {
    let (file, parts) = sample_file(4);
    let init_len = parts[0].offset;
    let from = parts[parts.len() - 2].offset;
    let mut checked = 0;
    for cut in from..=file.len() as u64 {
        for zeros in [0usize, 7, 64] {
            let mut torn = file[..cut as usize].to_vec();
            torn.resize(torn.len() + zeros, 0);
            let r = recover(&torn);
            let (n, end) = complete_before(&parts, init_len, cut);
            assert_eq!(r.parts.len(), n, "cut {cut} + {zeros} zeros");
            assert_eq!(r.valid_len, end, "cut {cut} + {zeros} zeros");
            assert_eq!(r.damage.is_some(), end < torn.len() as u64);
            checked += 1;
        }
    }
    println!("torn tails checked: {checked} (last two parts, every byte, 0/7/64 zero bytes)");
    // The kept range: up to the last complete part, on both clocks.
    let r = recover(&file[..(parts[2].offset + 5) as usize]);
    let (start, end) = r.media_range().unwrap();
    assert_eq!((start, end), (parts[0].media_start, parts[1].media_end));
    let (w0, w1) = r.wall_range().unwrap();
    assert_eq!(w0, parts[0].wall_start);
    assert!(w1 > w0);
    let rebuilt = reindex("x.mp4", &file[..(parts[2].offset + 5) as usize]).unwrap();
    assert!(rebuilt.recovered);
    assert_eq!(rebuilt.bytes, parts[2].offset);
    // A damaged init keeps nothing.
    let r = recover(&file[..20]);
    assert_eq!((r.init.is_none(), r.valid_len), (true, 0));
    assert!(reindex("x.mp4", &file[..20]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Cut anywhere in the last three parts and followed by any zero tail, recovery keeps
    /// exactly the complete parts before the damage.
    #[test]
    fn torn_tails_keep_every_complete_part(cut in 0.0f64..1.0, zeros in 0usize..300) {
        let (file, parts) = FILE.with(Clone::clone);
        let from = parts[parts.len() - 3].offset;
        let cut = from + ((file.len() as u64 - from) as f64 * cut) as u64;
        let mut torn = file[..cut as usize].to_vec();
        torn.resize(torn.len() + zeros, 0);
        let r = recover(&torn);
        let (n, end) = complete_before(&parts, parts[0].offset, cut);
        prop_assert_eq!(r.parts.len(), n);
        prop_assert_eq!(r.valid_len, end);
    }

    /// Arbitrary damage (bytes overwritten anywhere) never panics, and what is kept is a
    /// prefix of whole parts that parses again to the same result.
    #[test]
    fn damage_anywhere_never_panics(edits in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..8)) {
        let (mut file, _) = FILE.with(Clone::clone);
        for (at, b) in edits {
            let i = ((file.len() - 1) as f64 * at) as usize;
            file[i] = b;
        }
        let r = recover(&file);
        prop_assert!(r.valid_len <= file.len() as u64);
        let again = recover(&file[..r.valid_len as usize]);
        prop_assert_eq!(again.parts.len(), r.parts.len());
        prop_assert_eq!(again.valid_len, r.valid_len);
    }

    /// Records decode from anything without panicking, and round-trip.
    #[test]
    fn records_decode_safely(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = SegmentRecord::decode(&garbage);
        let mut with_version = vec![1u8];
        with_version.extend_from_slice(&garbage);
        let _ = SegmentRecord::decode(&with_version);
    }
}

thread_local! {
    static FILE: (Vec<u8>, Vec<PartRecord>) = sample_file(5);
}

#[test]
fn records_are_compact_and_round_trip() {
    let (file, parts) = sample_file(10);
    let record = reindex("cam/2027-01-15/08-00-00.mp4", &file).unwrap();
    assert_eq!(record.parts.len(), parts.len());
    let bytes = record.encode();
    println!(
        "record of {} parts: {} bytes ({:.1} per part)",
        record.parts.len(),
        bytes.len(),
        bytes.len() as f64 / record.parts.len() as f64
    );
    assert!(bytes.len() < 60 + 16 * record.parts.len());
    assert_eq!(SegmentRecord::decode(&bytes).unwrap(), record);
    assert!(SegmentRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(matches!(
        SegmentRecord::decode(&[9]),
        Err(RecordError::Version(9))
    ));
}

#[test]
fn ntp_timestamps_round_trip() {
    let t = at(0.123_456);
    let back = ntp_to_system(system_to_ntp(t));
    let d = back.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(d < Duration::from_nanos(2));
    assert_eq!(system_to_ntp(SystemTime::UNIX_EPOCH) >> 32, 2_208_988_800);
}

#[test]
fn an_idle_stream_gets_its_last_media_out_and_then_continues() {
    let mut w =
        SegmentWriter::new(vec![h264(SPROP_360), opus()], ArchiveConfig::default()).unwrap();
    let (mut open, mut done) = (None, Vec::new());
    let frames = av(4, 25);
    let (first, rest) = frames.split_at(frames.len() / 2 + 7);
    for (f, wall) in first.iter().cloned() {
        w.push(f, wall);
    }
    drain(&mut w, &mut open, &mut done);
    let before = open.as_ref().map_or(0, Vec::len);
    // The stream stalls: everything pushed so far is written.
    w.idle();
    drain(&mut w, &mut open, &mut done);
    let file = open.clone().unwrap();
    assert!(file.len() > before);
    let r = recover(&file);
    assert_eq!(r.damage, None);
    let frames_out: u64 = r
        .parts
        .iter()
        .flat_map(|p| &p.tracks)
        .map(|t| t.samples)
        .sum();
    assert_eq!(
        frames_out,
        first.len() as u64,
        "every frame pushed is on disk"
    );
    // It resumes in the same segment.
    for (f, wall) in rest.iter().cloned() {
        w.push(f, wall);
    }
    w.finish();
    drain(&mut w, &mut open, &mut done);
    assert_eq!(done.len(), 1);
    assert_eq!(w.stats().frames, frames.len() as u64);
    assert_eq!(w.stats().dropped(), 0);
    let mut d = crate::open_reader(Cursor::new(done[0].bytes.clone())).unwrap();
    let mut n = 0;
    while d.next_sample().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, frames.len());
}

/// The fuzz target's checks, on its seed corpus.
#[test]
fn the_fuzz_seeds_recover() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/archive_recover");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let r = recover(&data);
        let again = recover(&data[..r.valid_len as usize]);
        assert_eq!(
            (again.valid_len, again.parts.len()),
            (r.valid_len, r.parts.len())
        );
        let record = reindex("fuzz.mp4", &data).unwrap();
        assert_eq!(record.bytes, r.valid_len);
        assert_eq!(SegmentRecord::decode(&record.encode()).unwrap(), record);
        assert!(!r.parts.is_empty());
        assert_eq!(r.media_range().map(|m| m.0), Some(Duration::ZERO));
        seen += 1;
    }
    assert_eq!(seen, 3);
}

/// Something that happens to a writer in [`any_run`].
#[derive(Debug, Clone)]
enum Event {
    /// A video frame (keyframe or not), arriving `late` ms late.
    Video { key: bool, late: u16 },
    /// An audio frame arriving `late` ms late.
    Audio { late: u16 },
    /// The video parameters switch to the other resolution.
    Params,
    /// Another publisher takes over.
    Publisher,
    /// The stream stalls.
    Idle,
    /// The wall clock jumps ahead.
    ClockJump,
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        30 => (prop::bool::weighted(0.05), prop_oneof![9 => Just(0u16), 1 => 0u16..3000])
            .prop_map(|(key, late)| Event::Video { key, late }),
        30 => prop_oneof![9 => Just(0u16), 1 => 0u16..3000].prop_map(|late| Event::Audio { late }),
        1 => Just(Event::Params),
        1 => Just(Event::Publisher),
        1 => Just(Event::Idle),
        1 => Just(Event::ClockJump),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever happens, every segment written recovers whole, its parts abut, its record
    /// is what reindex finds, and every frame is accounted for: written, dropped late, or
    /// skipped before a keyframe.
    #[test]
    fn any_run_gives_whole_segments_and_accounts_for_every_frame(
        steps in proptest::collection::vec(any_event(), 1..400),
        part_ms in 100u64..1000,
        segment_s in 1u64..6,
    ) {
        let config = ArchiveConfig {
            part_duration: Duration::from_millis(part_ms),
            segment_duration: Duration::from_secs(segment_s),
            ..ArchiveConfig::default()
        };
        let mut w = SegmentWriter::new(vec![h264(SPROP_360), opus()], config).unwrap();
        let (mut open, mut done) = (None, Vec::new());
        let (mut v, mut a, mut pushed) = (0i64, 0i64, 0u64);
        let mut wide = false;
        let mut jump = 0.0;
        for step in steps {
            match step {
                Event::Video { key, late } => {
                    let f = Frame { keyframe: key || v == 0, data: slice(key || v == 0, v as u32), ..video(v, i64::MAX) };
                    w.push(f, at(v as f64 / 25.0 + f64::from(late) / 1000.0 + jump));
                    v += 1;
                    pushed += 1;
                }
                Event::Audio { late } => {
                    // Audio follows the video's clock.
                    a = a.max(v * 2 - 4);
                    w.push(audio(1, a), at(a as f64 / 50.0 + f64::from(late) / 1000.0 + jump));
                    a += 1;
                    pushed += 1;
                }
                Event::Params => {
                    wide = !wide;
                    w.set_params(0, h264(if wide { SPROP_OTHER } else { SPROP_360 }));
                }
                Event::Publisher => w.cut(CutReason::PublisherChanged),
                Event::Idle => w.idle(),
                Event::ClockJump => jump += 10.0,
            }
            drain(&mut w, &mut open, &mut done);
        }
        w.finish();
        drain(&mut w, &mut open, &mut done);
        let stats = w.stats();
        prop_assert_eq!(stats.frames + stats.dropped() + stats.skipped_before_keyframe, pushed, "{:?}", stats);
        let mut in_files = 0u64;
        for g in &done {
            let r = recover(&g.bytes);
            prop_assert_eq!(&r.damage, &None);
            prop_assert_eq!(r.valid_len, g.bytes.len() as u64);
            in_files += r.parts.iter().flat_map(|p| &p.tracks).map(|t| t.samples).sum::<u64>();
            for p in g.record.parts.windows(2) {
                prop_assert!(
                    p[0].media_end <= p[1].media_start + Duration::from_millis(1),
                    "parts overlap: {:?}\n{:?}",
                    p,
                    recover(&g.bytes).parts.iter().map(|p| (p.sequence, p.tracks.clone())).collect::<Vec<_>>()
                );
            }
            let rebuilt = reindex("", &g.bytes).unwrap();
            prop_assert_eq!(rebuilt.parts, g.record.parts.clone());
            prop_assert_eq!(rebuilt.init_id, g.record.init_id);
        }
        prop_assert_eq!(in_files, stats.frames);
    }
}

/// B-frames of a sender whose RTP times are presentation times (2 between references, as
/// the recorder hands them on: decode times the presentation times made increasing):
/// each segment's decode times are moved back by the reorder delay, so that composition
/// offsets are never negative and the keyframe opening a segment, like the audio beside
/// it, starts a reorder delay (80 ms) after the segment's start.
#[test]
fn b_frames_get_non_negative_composition_offsets() {
    let frames = b_frame_stream();
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(4),
        ..ArchiveConfig::default()
    };
    let (segs, stats) = record(vec![h264(SPROP_360), opus()], config, frames);
    assert_eq!(stats.dropped(), 0);
    assert!(segs.len() >= 2, "{} segments", segs.len());
    let mut video_end = None;
    for (i, g) in segs.iter().enumerate() {
        let t = b_frame_segment_times(i, &g.bytes);
        let (v, a) = (t.video, t.audio);
        // The segment starts at its first decode time (not 0 after the first: the decode
        // times go on from the previous segment's).
        assert_eq!(
            t.first_dts,
            video_end.unwrap_or(0),
            "segment {i} continues the previous one's decode times"
        );
        assert_eq!(
            g.record.media_base.as_micros(),
            (t.first_dts as u128 * 1_000_000) / 90_000,
            "segment {i}: media base"
        );
        video_end = Some(t.end_dts);
        assert!(
            (v - 0.080).abs() < 0.002,
            "segment {i}: video starts at {v}"
        );
        assert!((v - a).abs() <= 0.020, "segment {i}: video {v}, audio {a}");
    }
}

/// A stall right after a reference frame of a B-frame stream (the recorder's idle cut):
/// the B-frames after it, one tick later in decode order, still decode before they are
/// presented, and the parts do not overlap. (The idle cut once gave that reference frame
/// a whole frame interval, so the B-frames' decode times were pushed 120 ms past their
/// presentation, and ffmpeg shifted the segment's video by as much.)
#[test]
fn an_idle_cut_after_a_reference_frame_keeps_b_frames_decodable() {
    let frames = b_frame_stream();
    let mut w = SegmentWriter::new(vec![h264(SPROP_360), opus()], ArchiveConfig::default())
        .expect("writer");
    let (mut open, mut done) = (None, Vec::new());
    let mut video = 0;
    for (f, wall) in frames {
        let reference = f.track == 0 && video > 0 && (video - 1) % 3 == 0;
        video += i64::from(f.track == 0);
        w.push(f, wall);
        // Stalls after the reference frames 52 (pts 54) and 100 (pts 102).
        if reference && (video == 53 || video == 101) {
            w.idle();
        }
        drain(&mut w, &mut open, &mut done);
    }
    w.finish();
    drain(&mut w, &mut open, &mut done);
    assert_eq!(w.stats().dropped(), 0);
    for (i, g) in done.iter().enumerate() {
        for p in g.record.parts.windows(2) {
            assert!(p[0].media_end <= p[1].media_start, "parts overlap: {p:?}");
        }
        let t = b_frame_segment_times(i, &g.bytes);
        let (v, a) = (t.video, t.audio);
        assert!((v - a).abs() <= 0.020, "segment {i}: video {v}, audio {a}");
    }
}

/// Where a segment of [`b_frame_stream`] starts.
struct SegmentTimes {
    /// First video presentation time (s) after the segment's first decode time.
    video: f64,
    /// First audio presentation time (s) after the segment's first decode time.
    audio: f64,
    /// The segment's first video decode time (90 kHz), where its timeline starts.
    first_dts: i64,
    /// The end of its last video frame (90 kHz).
    end_dts: i64,
}

/// The first video and audio presentation times of a segment of [`b_frame_stream`],
/// relative to its first decode time, checking that every video frame decodes before it
/// is presented.
fn b_frame_segment_times(i: usize, bytes: &[u8]) -> SegmentTimes {
    let mut d = crate::open_reader(Cursor::new(bytes.to_vec())).expect("segment opens");
    let (mut first_video, mut first_audio, mut base) = (None, None, None);
    let mut end = 0;
    while let Some(s) = d.next_sample().expect("sample") {
        if s.track == 0 {
            assert!(s.pts >= s.dts, "segment {i}: pts {} < dts {}", s.pts, s.dts);
            let b = *base.get_or_insert(s.dts);
            first_video.get_or_insert((s.pts - b) as f64 / 90_000.0);
            end = s.dts + i64::from(s.duration);
        } else {
            let b = base.expect("video first") as f64 / 90_000.0;
            first_audio.get_or_insert(s.pts as f64 / 48_000.0 - b);
        }
    }
    SegmentTimes {
        video: first_video.expect("video"),
        audio: first_audio.expect("audio"),
        first_dts: base.expect("video"),
        end_dts: end,
    }
}

/// 8 s of 25 fps H.264 with B-frames as the recorder hands them on (decode times the
/// presentation times made increasing) and 20 ms Opus, arriving in time order.
fn b_frame_stream() -> Vec<(Frame, SystemTime)> {
    // Decode order I P B B P B B …: presentation frame numbers 0 3 1 2 6 4 5 …; a
    // reference every 30 frames is a keyframe.
    let order = |n: i64| match n {
        0 => 0,
        _ if (n - 1) % 3 == 0 => n + 2,
        _ => n - 1,
    };
    let mut frames = Vec::new();
    let mut last = None::<i64>;
    for n in 0..25 * 8 {
        let pts = order(n) * 3600;
        let dts = last.map_or(pts, |l| pts.max(l + 1));
        last = Some(dts);
        let key = order(n) % 30 == 0 && (n == 0 || (n - 1) % 3 == 0);
        let mut f = video(n, 50);
        (f.dts, f.pts, f.keyframe, f.data) = (dts, pts, key, slice(key, n as u32));
        frames.push((f, at(n as f64 / 25.0 + 0.01)));
        for k in 0..2 {
            let a = n * 2 + k;
            frames.push((audio(1, a), at(a as f64 / 50.0 + 0.04)));
        }
    }
    frames
}

/// B-frames that begin only after the first segment (the reorder delay grows): the next
/// segment cannot continue the first's decode timeline with the delay it was written with,
/// so it starts a timeline of its own; the segments after it continue that one.
#[test]
fn a_grown_reorder_delay_starts_a_new_timeline() {
    let order = |n: i64| match n {
        0 => 0,
        _ if (n - 1) % 3 == 0 => n + 2,
        _ => n - 1,
    };
    let mut frames = Vec::new();
    let mut last = None::<i64>;
    for n in 0..25 * 9 {
        // Plain frames for 3 s, then I P B B … (a keyframe every 30 frames from 3 s on).
        let (p, key) = if n < 75 {
            (n, n % 25 == 0)
        } else {
            let m = n - 75;
            (
                75 + order(m),
                order(m) % 30 == 0 && (m == 0 || (m - 1) % 3 == 0),
            )
        };
        let pts = p * 3600;
        let dts = last.map_or(pts, |l| pts.max(l + 1));
        last = Some(dts);
        let mut f = video(n, 25);
        (f.dts, f.pts, f.keyframe, f.data) = (dts, pts, key, slice(key, n as u32));
        frames.push((f, at(n as f64 / 25.0 + 0.01)));
    }
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(2),
        ..ArchiveConfig::default()
    };
    let (segs, stats) = record(vec![h264(SPROP_360)], config, frames);
    assert_eq!(stats.dropped(), 0);
    let bases: Vec<f64> = segs.iter().map(|g| s(g.record.media_base)).collect();
    let ends: Vec<f64> = segs.iter().map(|g| s(g.record.media_end)).collect();
    println!("bases {bases:?}, lengths {ends:?}");
    assert!(segs.len() >= 4, "{} segments", segs.len());
    // 0..2 s plain; 2 s: still plain, continued; the delay then grows with the B-frames
    // seen in the window, so a later segment starts anew at 0, and the one after it
    // continues it.
    assert_eq!(bases[0], 0.0);
    let fresh = (1..segs.len())
        .filter(|&i| bases[i] == 0.0)
        .collect::<Vec<_>>();
    assert_eq!(fresh.len(), 1, "one new timeline: {bases:?}");
    for i in 1..segs.len() {
        if !fresh.contains(&i) {
            assert!(
                (bases[i] - (bases[i - 1] + ends[i - 1])).abs() < 0.001,
                "segment {i} continues: {bases:?} {ends:?}"
            );
        }
    }
}
