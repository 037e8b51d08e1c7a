//! Demuxes real files made by ffmpeg and checks them against ffprobe.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sluice_media::{open, Codec, Demuxer, Sample};

fn drain(d: &mut dyn Demuxer) -> Vec<Sample> {
    let mut out = Vec::new();
    while let Some(s) = d.next_sample().expect("next_sample") {
        out.push(s);
        assert!(out.len() < 100_000, "runaway");
    }
    out
}

/// The checks shared by every file.
fn check_file(path: &Path, video: Codec, audio: Codec) {
    let mut d = open(path).expect("open");
    let info = d.info().clone();
    assert_eq!(info.tracks.len(), 2, "{:?}", info.tracks);
    let v = &info.tracks[0];
    let a = &info.tracks[1];
    assert_eq!(v.params.codec, video);
    assert_eq!(a.params.codec, audio);
    assert_eq!(v.params.width, Some(640));
    assert_eq!(v.params.height, Some(360));
    assert_eq!(a.params.sample_rate, Some(48_000));
    assert!(a.params.channels.is_some_and(|c| c >= 1));
    match video {
        Codec::H264 | Codec::H265 => {
            assert_eq!(v.params.config.first(), Some(&1), "config version")
        }
        _ => {}
    }
    match audio {
        Codec::Aac => {
            // AAC LC (object type 2), 48 kHz (index 3).
            let c = &v_or(&a.params.config);
            assert_eq!(c[0] >> 3, 2);
            assert_eq!(((c[0] & 7) << 1) | (c[1] >> 7), 3);
        }
        Codec::Opus => {
            let c = &a.params.config;
            assert!(
                c.starts_with(b"OpusHead") || (c.len() >= 11 && c[0] == 0),
                "{c:?}"
            );
        }
        _ => {}
    }

    let want = probe_duration(path);
    let got = info.duration.as_secs_f64();
    assert!(
        (got - want).abs() <= 0.1,
        "duration {got} vs ffprobe {want}"
    );

    // Keyframes every second.
    let k: Vec<f64> = d
        .keyframe_times()
        .iter()
        .map(Duration::as_secs_f64)
        .collect();
    // (ffmpeg may start presentation slightly after 0: AAC priming shifts Matroska timestamps
    // by 21 ms; fragmented MP4 has no edit list to hide the 2-frame B-frame delay.)
    assert_eq!(k.len(), 4, "{k:?}");
    assert!(k[0] < 0.1, "first keyframe {k:?}");
    for (i, t) in k.iter().enumerate() {
        assert!((t - k[0] - i as f64).abs() < 0.01, "keyframes {k:?}");
    }

    let samples = drain(d.as_mut());
    let counts = probe_packet_counts(path);
    for (i, &want) in counts.iter().enumerate() {
        let got = samples.iter().filter(|s| s.track == i).count();
        assert_eq!(got, want, "packet count of track {i}");
    }
    // Per-track dts monotonic; interleaving by dts seconds.
    for t in 0..2 {
        let dts: Vec<i64> = samples
            .iter()
            .filter(|s| s.track == t)
            .map(|s| s.dts)
            .collect();
        assert!(
            dts.windows(2).all(|w| w[0] <= w[1]),
            "track {t} dts not monotonic"
        );
        assert!(
            dts[0].abs() < i64::from(info.tracks[t].timescale) / 5,
            "dts starts near 0"
        );
    }
    let secs = |s: &Sample| s.dts as f64 / f64::from(info.tracks[s.track].timescale);
    assert!(samples
        .windows(2)
        .all(|w| secs(&w[0]) <= secs(&w[1]) + 1e-9));
    assert!(samples[0].keyframe && samples[0].track == 0 || samples[0].track == 1);

    // Sample sizes match ffprobe's packets.
    for t in 0..2 {
        let want = probe_packet_sizes(path, t, 10);
        let got: Vec<usize> = samples
            .iter()
            .filter(|s| s.track == t)
            .take(10)
            .map(|s| s.data.len())
            .collect();
        assert_eq!(got, want, "packet sizes of track {t}");
    }
    if matches!(video, Codec::H264 | Codec::H265) {
        // Length-prefixed NAL units fill the first sample exactly.
        let s = samples.iter().find(|s| s.track == 0).expect("video");
        let mut p = 0usize;
        while p + 4 <= s.data.len() {
            let n = u32::from_be_bytes(s.data[p..p + 4].try_into().unwrap()) as usize;
            p += 4 + n;
        }
        assert_eq!(p, s.data.len(), "AVCC/HVCC framing");
    }

    // Seek to 2.5 s lands on the 2 s keyframe.
    let start = d.seek(Duration::from_millis(2500)).expect("seek");
    assert!(
        (start.as_secs_f64() - 2.0).abs() < 0.1,
        "seek start {start:?}"
    );
    assert!(
        (start.as_secs_f64() - k[2]).abs() < 0.001,
        "seek start {start:?}"
    );
    let mut first_video = None;
    let mut after = Vec::new();
    while let Some(s) = d.next_sample().expect("next") {
        if s.track == 0 && first_video.is_none() {
            first_video = Some(s.clone());
        }
        after.push(s);
    }
    let fv = first_video.expect("video after seek");
    assert!(fv.keyframe);
    let pts = fv.pts as f64 / f64::from(v.timescale);
    assert!((pts - k[2]).abs() < 0.001, "pts after seek {pts}");
    let audio_after = after.iter().filter(|s| s.track == 1).count();
    let audio_total = samples.iter().filter(|s| s.track == 1).count();
    assert!(audio_after > audio_total / 4 && audio_after < audio_total * 3 / 4);

    // Seek back to the start replays everything.
    let s0 = d.seek(Duration::ZERO).expect("seek 0").as_secs_f64();
    assert!((s0 - k[0]).abs() < 0.001);
    assert_eq!(drain(d.as_mut()).len(), samples.len());
}

fn v_or(b: &bytes::Bytes) -> Vec<u8> {
    assert!(b.len() >= 2, "config too short");
    b.to_vec()
}

#[test]
fn mp4_h264_aac() {
    check_file(&media(&MP4), Codec::H264, Codec::Aac);
}

#[test]
fn mp4_h264_aac_faststart() {
    check_file(&media(&MP4_FASTSTART), Codec::H264, Codec::Aac);
}

#[test]
fn fragmented_mp4_h264_aac() {
    check_file(&media(&FMP4), Codec::H264, Codec::Aac);
}

#[test]
fn mkv_h265_opus() {
    check_file(&media(&MKV_HEVC), Codec::H265, Codec::Opus);
}

#[test]
fn webm_vp9_opus() {
    check_file(&media(&WEBM), Codec::Vp9, Codec::Opus);
}

#[test]
fn mkv_h264_aac() {
    check_file(&media(&MKV_H264), Codec::H264, Codec::Aac);
}

#[test]
fn faststart_and_plain_mp4_agree() {
    let a = drain(open(&media(&MP4)).expect("open").as_mut());
    let b = drain(open(&media(&MP4_FASTSTART)).expect("open").as_mut());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.track, x.dts, x.pts, x.keyframe),
            (y.track, y.dts, y.pts, y.keyframe)
        );
        assert_eq!(x.data, y.data);
    }
}

#[test]
fn sniffs_by_content_not_extension() {
    let src = media(&MKV_H264);
    let renamed = media_dir().join("really_mkv.mp4");
    std::fs::copy(&src, &renamed).expect("copy");
    let d = open(&renamed).expect("open");
    assert_eq!(d.info().tracks[0].params.codec, Codec::H264);
    let err = sluice_media::open_reader(std::io::Cursor::new(b"not a media file at all".to_vec()));
    assert!(matches!(err, Err(sluice_media::MediaError::Unsupported(_))));
}

#[test]
fn mov_g711_audio_only() {
    let path = media_dir().join("ulaw.mov");
    if !path.exists() {
        let tmp = media_dir().join(format!("tmp-{}-ulaw.mov", std::process::id()));
        let ok = std::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .args([
                "sine=frequency=440:sample_rate=8000:duration=2",
                "-c:a",
                "pcm_mulaw",
            ])
            .arg(&tmp)
            .status()
            .expect("ffmpeg")
            .success();
        assert!(ok);
        std::fs::rename(&tmp, &path).expect("rename");
    }
    let mut d = open(&path).expect("open");
    let t = d.info().tracks[0].clone();
    assert_eq!(t.params.codec, Codec::Pcmu);
    assert_eq!(t.params.sample_rate, Some(8000));
    assert!(d.keyframe_times().is_empty());
    let samples = drain(d.as_mut());
    // Per-byte MOV samples are served in runs of up to 1024, like ffmpeg's packets.
    assert_eq!(samples.len(), probe_packet_counts(&path)[0]);
    let bytes: usize = samples.iter().map(|s| s.data.len()).sum();
    assert_eq!(bytes, 16_000);
    let total: u64 = samples.iter().map(|s| u64::from(s.duration)).sum();
    assert_eq!(total, 16_000 * u64::from(t.timescale) / 8000);
    let at = d.seek(Duration::from_millis(1500)).expect("seek");
    assert!(
        at <= Duration::from_millis(1500) && at > Duration::from_millis(1000),
        "{at:?}"
    );
}
