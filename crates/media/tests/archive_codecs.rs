//! AV1, VP9 and G.711 through the whole recording path: ffmpeg encodes a file (libaom AV1
//! or libvpx VP9 with G.711 µ-law or A-law), this crate demuxes it, the codec crate
//! packetizes it to RTP and depacketizes it back (so `av1C` / `vpcC` come from the
//! bitstream, as for a live source), the archive's segment writer makes segments, and ffmpeg
//! decodes them without an error and ffprobe counts their frames.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::{lavfi_clip, media_dir};
use sluice_codec::{Depacketizer, Packetizer};
use sluice_media::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentWriter};
use sluice_media::CodecParams;

/// Seconds of source.
const SECS: u32 = 4;

/// Makes a 320x240 25 fps clip with a keyframe every second and an 8 kHz mono tone,
/// encoded by ffmpeg with `args`, in Matroska.
fn source(name: &str, args: &[&str]) -> PathBuf {
    let encode = [&["-g", "25", "-keyint_min", "25", "-ac", "1"], args].concat();
    lavfi_clip(name, "320x240", SECS, 8000, &encode)
}

/// The file's tracks through RTP and back: the depacketized tracks' parameters and their
/// access units as frames (with their times in seconds), in arrival order.
fn through_rtp(file: &Path) -> (Vec<CodecParams>, Vec<(Frame, f64)>) {
    let mut d = sluice_media::open(file).expect("open source");
    let info = d.info().clone();
    let mut pairs = Vec::new();
    for (i, t) in info.tracks.iter().enumerate() {
        let p = Packetizer::new(&t.params, 96 + i as u8, 1, 0, 1200).expect("packetizer");
        let rtpmap = p.rtpmap();
        let mut parts = rtpmap.split_once(' ').unwrap().1.split('/');
        let name = parts.next().unwrap().to_owned();
        let rate: u32 = parts.next().unwrap().parse().unwrap();
        let channels = parts.next().map(|c| c.parse().unwrap());
        let dep =
            Depacketizer::new(&name, rate, channels, p.fmtp().as_deref()).expect("depacketizer");
        pairs.push((p, dep, t.timescale, rate));
    }
    let mut frames = Vec::new();
    let mut packets = Vec::new();
    while let Some(s) = d.next_sample().expect("sample") {
        let (p, dep, scale, rate) = &mut pairs[s.track];
        let ts = (i128::from(s.pts) * i128::from(*rate) / i128::from(*scale)) as u32;
        packets.clear();
        p.packetize(&s.data, ts, s.keyframe, &mut packets)
            .expect("packetize");
        for pkt in &packets {
            for au in dep.push(pkt).expect("depacketize") {
                assert!(!au.loss);
                let t = i64::from(au.rtp_timestamp);
                let frame = Frame {
                    track: s.track,
                    dts: t,
                    pts: t,
                    keyframe: au.keyframe,
                    data: au.data,
                };
                frames.push((frame, t as f64 / f64::from(*rate)));
            }
        }
    }
    // The video's last temporal unit ends with its marker; nothing is held.
    let params = pairs
        .iter()
        .map(|(_, dep, _, _)| dep.params().expect("parameters from the bitstream"))
        .collect();
    frames.sort_by(|a, b| a.1.total_cmp(&b.1));
    (params, frames)
}

/// Records the frames in 2 s segments of 1 s parts; returns the segment files.
fn archive(params: Vec<CodecParams>, frames: Vec<(Frame, f64)>, tag: &str) -> Vec<PathBuf> {
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(2),
        ..ArchiveConfig::default()
    };
    let mut w = SegmentWriter::new(params, config).expect("writer accepts the tracks");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let dir = media_dir().join(format!("archive-codecs-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut open: Option<(PathBuf, Vec<u8>)> = None;
    let mut done = Vec::new();
    let mut drain = |w: &mut SegmentWriter| {
        while let Some(o) = w.poll_output() {
            match o {
                ArchiveOutput::SegmentStarted { segment, init, .. } => {
                    open = Some((dir.join(format!("{segment:03}.mp4")), init.to_vec()));
                }
                ArchiveOutput::Part { bytes, .. } => {
                    open.as_mut().expect("open").1.extend_from_slice(&bytes)
                }
                ArchiveOutput::SegmentEnded { .. } => {
                    let (path, bytes) = open.take().expect("open");
                    std::fs::write(&path, bytes).unwrap();
                    done.push(path);
                }
            }
        }
    };
    for (frame, secs) in frames {
        w.push(frame, t0 + Duration::from_secs_f64(secs + 0.02));
        drain(&mut w);
    }
    w.finish();
    drain(&mut w);
    assert_eq!(w.stats().dropped(), 0, "{tag}: {:?}", w.stats());
    done
}

/// ffprobe's `codec_name,nb_read_frames` of each stream (decoding every frame).
fn count_frames(path: &Path) -> Vec<(String, u64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once(',')?;
            Some((name.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
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

fn check(tag: &str, src: &Path, video: &str, audio: &str) {
    let (params, frames) = through_rtp(src);
    let segs = archive(params, frames, tag);
    assert_eq!(segs.len(), 2, "{tag}: {SECS} s in 2 s segments");
    let mut video_frames = 0;
    let mut audio_frames = 0;
    for (i, seg) in segs.iter().enumerate() {
        assert_eq!(decode_errors(seg), "", "{tag} segment {i} decodes cleanly");
        let streams = count_frames(seg);
        println!("{tag} segment {i}: {streams:?}");
        let v = streams.iter().find(|s| s.0 == video).expect("video stream");
        let a = streams.iter().find(|s| s.0 == audio).expect("audio stream");
        assert!(v.1 >= 45, "{tag} segment {i}: {} video frames", v.1);
        assert!(a.1 > 0, "{tag} segment {i}: audio decodes");
        video_frames += v.1;
        audio_frames += a.1;
    }
    println!("{tag}: {video_frames} video frames, {audio_frames} audio frames decoded");
    assert_eq!(video_frames, u64::from(SECS) * 25, "{tag}: every frame");
}

#[test]
fn av1_and_pcmu_segments_decode() {
    let src = source(
        "archive_av1_pcmu.mkv",
        &[
            "-c:v",
            "libaom-av1",
            "-cpu-used",
            "8",
            "-usage",
            "realtime",
            "-b:v",
            "300k",
            "-c:a",
            "pcm_mulaw",
        ],
    );
    check("av1+pcmu", &src, "av1", "pcm_mulaw");
}

#[test]
fn vp9_and_pcma_segments_decode() {
    let src = source(
        "archive_vp9_pcma.mkv",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "300k",
            "-c:a",
            "pcm_alaw",
        ],
    );
    check("vp9+pcma", &src, "vp9", "pcm_alaw");
}
