//! The archive's segment writer fed with real encoder output (ffmpeg's H.264 with B-frames +
//! AAC, H.265 + Opus), its segments checked by ffmpeg and ffprobe as a user would: they
//! decode without an error, start with a keyframe, last what they should and abut; a torn
//! segment, once recovered and truncated, decodes too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{lavfi_clip, media_dir};
use sluice_media::archive::{
    recover, recover_from, reindex, reindex_from, ArchiveConfig, ArchiveOutput, CutReason, Frame,
    SegmentRecord, SegmentWriter,
};
use sluice_media::{Codec, CodecParams};

/// Makes `secs` seconds of 640x360 25 fps test video and a sine, with a keyframe every
/// 2 s, encoded by ffmpeg with `args`.
fn source(name: &str, secs: u32, args: &[&str]) -> PathBuf {
    let gop = ["-g", "50", "-keyint_min", "50", "-sc_threshold", "0"];
    lavfi_clip(name, "640x360", secs, 48000, &[&gop[..], args].concat())
}

/// A closed segment: its file, why it ended and its record.
struct Seg {
    path: PathBuf,
    reason: CutReason,
    record: SegmentRecord,
}

/// The samples of `file` as frames on each track's clock, with their times (seconds), and
/// the tracks' parameters.
fn frames_of(file: &Path) -> (Vec<CodecParams>, Vec<(Frame, f64)>) {
    let mut d = sluice_media::open(file).expect("open source");
    let info = d.info().clone();
    let params: Vec<_> = info.tracks.iter().map(|t| t.params.clone()).collect();
    let scales: Vec<(u32, u32)> = info
        .tracks
        .iter()
        .map(|t| (t.timescale, t.params.clock_rate()))
        .collect();
    let to_clock = |track: usize, ticks: i64| {
        let (scale, clock) = scales[track];
        (i128::from(ticks) * i128::from(clock) / i128::from(scale)) as i64
    };
    let mut frames = Vec::new();
    while let Some(s) = d.next_sample().expect("sample") {
        let secs = s.dts as f64 / f64::from(scales[s.track].0);
        let frame = Frame {
            track: s.track,
            dts: to_clock(s.track, s.dts),
            pts: to_clock(s.track, s.pts),
            keyframe: s.keyframe,
            data: s.data,
        };
        frames.push((frame, secs));
    }
    (params, frames)
}

/// Records frames through a segment writer (10 s segments, 1 s parts) in real time on a
/// virtual wall clock, writing the segments to a directory named `tag`.
fn archive(params: Vec<CodecParams>, mut frames: Vec<(Frame, f64)>, tag: &str) -> (Vec<Seg>, u64) {
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(10),
        ..ArchiveConfig::default()
    };
    let mut w = SegmentWriter::new(params, config).expect("writer");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    frames.sort_by(|a, b| a.1.total_cmp(&b.1));
    let dir = media_dir().join(format!("archive-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut open, mut done): (Option<(PathBuf, Vec<u8>)>, Vec<Seg>) = (None, Vec::new());
    let mut drain = |w: &mut SegmentWriter| {
        while let Some(o) = w.poll_output() {
            match o {
                ArchiveOutput::SegmentStarted { segment, init, .. } => {
                    let path = dir.join(format!("{segment:03}.mp4"));
                    open = Some((path, init.to_vec()));
                }
                ArchiveOutput::Part { bytes, .. } => open
                    .as_mut()
                    .expect("open segment")
                    .1
                    .extend_from_slice(&bytes),
                ArchiveOutput::SegmentEnded {
                    reason, mut record, ..
                } => {
                    let (path, bytes) = open.take().expect("open segment");
                    std::fs::write(&path, &bytes).unwrap();
                    record.path = path.display().to_string();
                    done.push(Seg {
                        path,
                        reason,
                        record,
                    });
                }
            }
        }
    };
    for (frame, secs) in frames {
        let wall = t0 + Duration::from_secs_f64(secs.max(0.0) + 0.02);
        w.push(frame, wall);
        drain(&mut w);
    }
    w.finish();
    drain(&mut w);
    let stats = w.stats();
    println!("{tag}: {stats:?}");
    (done, stats.dropped())
}

/// ffmpeg's errors decoding `path` (empty: it decodes cleanly).
fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        err
    } else {
        format!("exit {:?}: {err}", out.status.code())
    }
}

/// ffprobe's `stream=codec_type,start_time,duration,width,height` and the first video
/// packet's flags.
fn probe(path: &Path) -> (Vec<(String, f64, f64)>, String) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,start_time,duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let streams = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            (f.first().unwrap_or(&"").to_string(), num(1), num(2))
        })
        .collect();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=flags",
            "-read_intervals",
            "%+#1",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    (
        streams,
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

fn check(tag: &str, params: Vec<CodecParams>, frames: Vec<(Frame, f64)>) {
    let (segs, dropped) = archive(params, frames, tag);
    assert_eq!(dropped, 0, "{tag}: dropped samples");
    assert_eq!(segs.len(), 3, "{tag}: 25 s in 10 s segments");
    let mut total = 0.0;
    for (i, g) in segs.iter().enumerate() {
        let errors = decode_errors(&g.path);
        assert_eq!(errors, "", "{tag} segment {i} decodes cleanly");
        let (streams, flags) = probe(&g.path);
        let video = streams
            .iter()
            .find(|s| s.0 == "video")
            .expect("video stream");
        let audio = streams
            .iter()
            .find(|s| s.0 == "audio")
            .expect("audio stream");
        println!(
            "{tag} segment {i}: {} ({}), video start {:.3} dur {:.3}, audio start {:.3} dur {:.3}, first packet {flags}, {} parts, {} bytes",
            g.path.display(),
            g.reason.as_str(),
            video.1,
            video.2,
            audio.1,
            audio.2,
            g.record.parts.len(),
            g.record.bytes,
        );
        assert!(
            flags.starts_with('K'),
            "{tag} segment {i} starts with a keyframe: {flags}"
        );
        // A segment after the first continues the previous one's decode times, from its
        // media base: ffmpeg counts a fragmented file's duration from decode time 0.
        let base = g.record.media_base.as_secs_f64();
        let length = video.2 - base;
        if i < 2 {
            assert!(
                (9.5..=11.0).contains(&length),
                "{tag} segment {i} lasts {length} (ffprobe: start {}, duration {}, base {base})",
                video.1,
                video.2
            );
        }
        assert!(
            (0.0..0.2).contains(&(video.1 - base)),
            "{tag} segment {i}: video starts at {} on a timeline from {base}",
            video.1
        );
        assert!(
            (video.1 - audio.1).abs() < 0.05,
            "{tag} segment {i}: audio and video start within 50 ms"
        );
        total += g.record.media_end.as_secs_f64();
        // Its index record is rebuilt from the file alone.
        let bytes = std::fs::read(&g.path).unwrap();
        let rebuilt = reindex(&g.record.path, &bytes).unwrap();
        assert_eq!(rebuilt, g.record, "{tag} segment {i}: reindex");
    }
    for w in segs.windows(2) {
        let gap = w[1]
            .record
            .start_wall
            .duration_since(w[0].record.end_wall)
            .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
        assert!(
            gap.abs() <= 0.04,
            "{tag}: segments abut within a frame: {gap}"
        );
        // Cut on duration: the next file's decode times go on from where this one's end.
        let (a, b) = (&w[0].record, &w[1].record);
        let jump = (b.media_base.as_secs_f64() - (a.media_base + a.media_end).as_secs_f64()).abs();
        assert!(
            jump < 0.001,
            "{tag}: decode times continue across files ({:?} + {:?} → {:?})",
            a.media_base,
            a.media_end,
            b.media_base
        );
    }
    println!("{tag}: segment durations sum to {total:.3} s");
    assert!((total - 25.0).abs() <= 1.0);

    // A crash in the middle of a part: the recovered, truncated file decodes and keeps every
    // part before the damage (a segment whose decode times do not start at 0).
    let g = &segs[1];
    assert!(
        g.record.media_base > Duration::from_secs(9),
        "{:?}",
        g.record.media_base
    );
    let bytes = std::fs::read(&g.path).unwrap();
    let cut = g.record.parts[6].offset + g.record.parts[6].len / 2;
    let mut torn = bytes[..cut as usize].to_vec();
    torn.resize(torn.len() + 4096, 0);
    let r = recover(&torn);
    assert_eq!(r.parts.len(), 6);
    assert_eq!(r.valid_len, g.record.parts[6].offset);
    let (start, end) = r.media_range().unwrap();
    assert_eq!(start, Duration::ZERO, "media time from the segment's start");
    assert!(
        end.abs_diff(g.record.parts[5].media_end) < Duration::from_micros(2),
        "{end:?}"
    );
    assert!(r.media_base().unwrap().abs_diff(g.record.media_base) < Duration::from_micros(1));
    println!(
        "{tag}: torn at byte {cut}: {} parts kept, media to {:.3} s",
        r.parts.len(),
        end.as_secs_f64()
    );
    // Read from the file part by part (what crash recovery does), the same is found.
    let torn_path = g.path.with_extension("torn.mp4");
    std::fs::write(&torn_path, &torn).unwrap();
    let mut file = std::fs::File::open(&torn_path).unwrap();
    assert_eq!(recover_from(&mut file).unwrap(), r);
    let mut file = std::fs::File::open(&torn_path).unwrap();
    assert_eq!(
        reindex_from("torn.mp4", &mut file),
        reindex("torn.mp4", &torn)
    );
    let path = g.path.with_extension("recovered.mp4");
    std::fs::write(&path, &torn[..r.valid_len as usize]).unwrap();
    assert_eq!(
        decode_errors(&path),
        "",
        "{tag}: the recovered segment decodes"
    );
    let (streams, _) = probe(&path);
    let video = streams.iter().find(|s| s.0 == "video").unwrap();
    let kept = video.2 - g.record.media_base.as_secs_f64();
    assert!((kept - 6.0).abs() < 0.1, "{tag}: recovered {kept} s");
}

#[test]
fn h264_with_b_frames_and_aac_segments_decode_and_abut() {
    let src = source(
        "archive_h264_aac.mp4",
        25,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ],
    );
    let (params, frames) = frames_of(&src);
    check("h264+aac", params, frames);
}

#[test]
fn h265_and_opus_segments_decode_and_abut() {
    let src = source(
        "archive_h265_opus.mkv",
        25,
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "keyint=50:min-keyint=50:scenecut=0:log-level=error",
            "-c:a",
            "libopus",
            "-b:a",
            "48k",
        ],
    );
    let (params, frames) = frames_of(&src);
    check("h265+opus", params, frames);
}

/// μ-law (G.711) of a 16-bit linear sample.
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut v = i32::from(sample);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = (v + BIAS).min(32_635 + BIAS);
    let exponent = (7 - (v.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (v >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

#[test]
fn h264_and_pcmu_segments_decode_and_abut() {
    let src = source(
        "archive_h264_aac.mp4",
        25,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ],
    );
    let (mut params, mut frames) = frames_of(&src);
    // Keep the video; the audio is a 440 Hz tone in 20 ms G.711 packets.
    frames.retain(|(f, _)| f.track == 0);
    params.truncate(1);
    params.push(CodecParams {
        sample_rate: Some(8000),
        channels: Some(1),
        ..CodecParams::new(Codec::Pcmu, Vec::new())
    });
    for n in 0..25 * 50i64 {
        let data: Vec<u8> = (0..160)
            .map(|k| {
                let t = (n * 160 + k) as f64 / 8000.0;
                ulaw((8000.0 * (t * 440.0 * std::f64::consts::TAU).sin()) as i16)
            })
            .collect();
        let frame = Frame {
            track: 1,
            dts: n * 160,
            pts: n * 160,
            keyframe: true,
            data: data.into(),
        };
        frames.push((frame, n as f64 / 50.0));
    }
    check("h264+pcmu", params, frames);
}
