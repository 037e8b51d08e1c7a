//! Writes fragmented MP4 from samples demuxed out of ffmpeg-made files and checks the result with
//! ffprobe, ffmpeg and this crate's own demuxer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sluice_codec::{Depacketizer, Packetizer};
use sluice_media::mux::Mp4Writer;
use sluice_media::{open, CodecParams};

/// A sample converted to the writer's timescale (the track's RTP clock rate).
#[derive(Debug, Clone, PartialEq)]
struct Rescaled {
    track: usize,
    dts: u64,
    pts_offset: i32,
    keyframe: bool,
    data: Vec<u8>,
}

/// Demuxes `path`: the tracks' params and every sample rescaled to the clock rate, dts from 0.
fn demux(path: &Path) -> (Vec<CodecParams>, Vec<Rescaled>) {
    let mut d = open(path).expect("open");
    let info = d.info().clone();
    let params: Vec<CodecParams> = info.tracks.iter().map(|t| t.params.clone()).collect();
    let mut first: Vec<Option<i64>> = vec![None; params.len()];
    let mut out = Vec::new();
    while let Some(s) = d.next_sample().expect("sample") {
        let t = &info.tracks[s.track];
        let clock = i128::from(params[s.track].clock_rate());
        let scale = |v: i64| (i128::from(v) * clock / i128::from(t.timescale)) as i64;
        let base = *first[s.track].get_or_insert(s.dts);
        let dts = scale(s.dts - base);
        let pts = scale(s.pts - base);
        out.push(Rescaled {
            track: s.track,
            dts: u64::try_from(dts).expect("dts"),
            pts_offset: i32::try_from(pts - dts).expect("cts"),
            keyframe: s.keyframe,
            data: s.data.to_vec(),
        });
    }
    (params, out)
}

/// Writes `samples` with a writer over a file; `finish` or just drop it.
fn write(path: &Path, params: &[CodecParams], samples: &[Rescaled], finish: bool) -> u64 {
    let file = std::fs::File::create(path).expect("create");
    let mut w = Mp4Writer::new(std::io::BufWriter::new(file), params).expect("writer");
    for s in samples {
        w.write_sample(s.track, s.dts, s.pts_offset, s.keyframe, &s.data)
            .expect("write_sample");
    }
    let n = w.bytes_written();
    if finish {
        let out = w.finish().expect("finish");
        out.into_inner().expect("flush").sync_all().expect("sync");
    }
    n
}

fn out_path(name: &str) -> PathBuf {
    media_dir().join(format!("mux-{}-{name}", std::process::id()))
}

/// ffprobe's stream lines "codec_name,width,height" and the format duration.
fn probe(path: &Path) -> (Vec<String>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streams = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_end_matches(',').to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    (streams, probe_duration(path))
}

/// Decodes the whole file with ffmpeg; returns its error output (empty when clean).
fn decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The full check for one source file.
fn check(spec: &Spec, want_streams: &[&str]) {
    let src = media(spec);
    let (params, samples) = demux(&src);
    let path = out_path(&format!("{}.mp4", spec.name));
    write(&path, &params, &samples, true);

    let (streams, duration) = probe(&path);
    assert_eq!(streams, want_streams);
    let want = probe_duration(&src);
    assert!(
        (duration - want).abs() <= 0.1,
        "duration {duration} vs source {want}"
    );
    let errors = decode_errors(&path);
    assert!(errors.is_empty(), "ffmpeg decode errors: {errors}");

    // Our own demuxer reads back the same samples at the same times.
    let (params2, back) = demux(&path);
    assert_eq!(params2.len(), params.len());
    for (a, b) in params.iter().zip(&params2) {
        assert_eq!(a.codec, b.codec);
        assert_eq!(a.clock_rate(), b.clock_rate());
    }
    for track in 0..params.len() {
        let a: Vec<_> = samples.iter().filter(|s| s.track == track).collect();
        let b: Vec<_> = back.iter().filter(|s| s.track == track).collect();
        assert_eq!(a.len(), b.len(), "track {track} sample count");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y);
        }
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn h264_aac_from_mp4() {
    check(&MP4, &["h264,640,360", "aac"]);
}

#[test]
fn h265_opus_from_matroska() {
    check(&MKV_HEVC, &["hevc,640,360", "opus"]);
}

#[test]
fn dropped_writer_leaves_a_playable_file() {
    let (params, samples) = demux(&media(&MP4));
    let three_s: Vec<Rescaled> = samples
        .into_iter()
        .filter(|s| s.dts < 3 * u64::from(params[s.track].clock_rate()))
        .collect();
    let path = out_path("dropped.mp4");
    let written = write(&path, &params, &three_s, false);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), written);
    let (streams, duration) = probe(&path);
    assert_eq!(streams, ["h264,640,360", "aac"]);
    assert!(duration >= 2.0, "duration {duration}");
    let errors = decode_errors(&path);
    assert!(errors.is_empty(), "ffmpeg decode errors: {errors}");
    std::fs::remove_file(&path).ok();
}

/// Samples → this workspace's RTP packetizer → the depacketizer → the writer: the depacketizer's
/// configuration records (built from the in-band/sprop parameter sets) and access units make a file
/// ffmpeg decodes cleanly.
#[test]
fn depacketized_streams_make_a_playable_file() {
    for (spec, want) in [
        (&MP4, ["h264,640,360", "aac"]),
        (&MKV_HEVC, ["hevc,640,360", "opus"]),
    ] {
        let (params, samples) = demux(&media(spec));
        let mut tracks = Vec::new();
        for p in &params {
            let pk = Packetizer::new(p, 96, 1, 0, 1200).expect("packetizer");
            let rtpmap = pk.rtpmap();
            let mut parts = rtpmap.split_once(' ').unwrap().1.split('/');
            let name = parts.next().unwrap().to_owned();
            let rate: u32 = parts.next().unwrap().parse().unwrap();
            let channels = parts.next().map(|c| c.parse().unwrap());
            let dp = Depacketizer::new(&name, rate, channels, pk.fmtp().as_deref())
                .expect("depacketizer");
            tracks.push((pk, dp));
        }
        let out_params: Vec<CodecParams> = tracks
            .iter()
            .map(|(_, d)| d.params().expect("params"))
            .collect();
        let path = out_path(&format!("rtp-{}.mp4", spec.name));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = Mp4Writer::new(std::io::BufWriter::new(file), &out_params).unwrap();
        let mut counts = vec![0usize; params.len()];
        for s in &samples {
            let (pk, dp) = &mut tracks[s.track];
            let pts = s.dts as i64 + i64::from(s.pts_offset);
            let mut pkts = Vec::new();
            pk.packetize(&s.data, pts as u32, s.keyframe, &mut pkts)
                .unwrap();
            for pkt in pkts {
                for au in dp.push(&pkt).unwrap() {
                    assert!(!au.loss);
                    // RTP carries the presentation time; the decode time comes from the source here.
                    assert_eq!(au.rtp_timestamp, pts as u32);
                    assert_eq!(au.keyframe, s.keyframe, "track {}", s.track);
                    w.write_sample(s.track, s.dts, s.pts_offset, au.keyframe, &au.data)
                        .unwrap();
                    counts[s.track] += 1;
                }
            }
        }
        w.finish().unwrap().into_inner().unwrap();
        for (t, &n) in counts.iter().enumerate() {
            assert_eq!(n, samples.iter().filter(|s| s.track == t).count());
        }
        let (streams, duration) = probe(&path);
        assert_eq!(streams, want);
        assert!((duration - probe_duration(&media(spec))).abs() <= 0.1);
        let errors = decode_errors(&path);
        assert!(errors.is_empty(), "ffmpeg decode errors: {errors}");
        std::fs::remove_file(&path).ok();
    }
}
