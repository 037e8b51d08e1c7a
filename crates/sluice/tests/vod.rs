//! Stored media on demand (`[vod]`), file-fed live paths and the built-in demo, checked
//! with real peers (ffprobe, ffmpeg, GStreamer) and a raw RTSP client that sees every RTP
//! and RTCP packet: durations and codecs, seek accuracy (decoded picture compared with the
//! source's keyframe), PAUSE/resume continuity, Range end, Scale (fast forward, reverse),
//! many concurrent readers, path traversal, bad files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::media::run_with_timeout;
use common::rtsp_client::{describe_status, RtspClient};
use common::vod_client::*;
use common::*;

/// Frame duration of the generated media in 90 kHz ticks (25 fps).
const FRAME_TICKS: i64 = 3600;

fn vod_config(dir: &Path) -> String {
    format!("[vod]\ndir = {:?}\n", dir.to_str().unwrap())
}

/// A server serving the generated on-demand media at `vod/`.
fn vod_server() -> (Server, &'static VodMedia) {
    let m = vod_media();
    (Server::start(&vod_config(&m.dir)), m)
}

fn name_of(p: &Path) -> &str {
    p.file_name().unwrap().to_str().unwrap()
}

fn vod_url(server: &Server, file: &Path) -> String {
    server.url(&format!("vod/{}", name_of(file)))
}

fn open(url: &str) -> VodSession {
    VodSession::open(url).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

fn assert_ok(what: &str, r: &RtspResponse) {
    assert_eq!(r.status, 200, "{what}: {} {}\n{r:?}", r.status, r.reason);
}

fn scale_of(r: &RtspResponse) -> Option<f64> {
    r.header("Scale").and_then(|s| s.trim().parse().ok())
}

/// ffprobe (over RTSP/TCP, or a local file) as JSON with format and streams.
fn ffprobe_json(target: &str) -> serde_json::Value {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-v", "error"]);
    if target.starts_with("rtsp://") {
        cmd.args(["-rtsp_transport", "tcp", "-timeout", "10000000"]);
    }
    cmd.args(["-show_format", "-show_streams", "-of", "json", target])
        .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("spawn ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ffprobe json")
}

fn json_f64(v: &serde_json::Value) -> Option<f64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_f64())
}

/// SSIM ("All") of two images, via ffmpeg's ssim filter.
fn ssim(a: &Path, b: &Path) -> f64 {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args(["-lavfi", "ssim", "-f", "null", "-"]);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(20)).expect("ffmpeg ssim");
    assert!(status.success(), "ffmpeg ssim failed:\n{err}");
    let i = err.rfind("All:").expect("SSIM line") + 4;
    err[i..]
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse SSIM from {err}"))
}

/// The frame at exactly `t` seconds of a local file, as PNG (ffmpeg's accurate seek).
fn reference_frame(file: &Path, t: f64, out: &Path) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-ss",
        &format!("{t:.3}"),
        "-i",
    ])
    .arg(file)
    .args(["-frames:v", "1", "-update", "1"])
    .arg(out);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(20)).expect("ffmpeg ref");
    assert!(status.success(), "reference frame {t}: {err}");
}

/// The latest keyframe at or before `t`.
fn keyframe_at_or_before(keyframes: &[f64], t: f64) -> f64 {
    keyframes
        .iter()
        .copied()
        .filter(|k| *k <= t + 1e-6)
        .fold(f64::NAN, f64::max)
}

// ---------------------------------------------------------------------------------------
// 1. ffprobe: duration and codecs

#[test]
fn ffprobe_reports_duration_and_codecs() {
    let (server, m) = vod_server();
    let cases: [(&Path, &str, &str); 5] = [
        (&m.clip_mp4, "h264", "aac"),
        (&m.clip_mkv, "h264", "aac"),
        (&m.clip_frag, "h264", "aac"),
        (&m.hevc_opus_mkv, "hevc", "opus"),
        (&m.vp9_opus_webm, "vp9", "opus"),
    ];
    for (file, vcodec, acodec) in cases {
        let url = vod_url(&server, file);
        let local = ffprobe_json(file.to_str().unwrap());
        let want = json_f64(&local["format"]["duration"]).expect("local duration");
        let v = ffprobe_json(&url);
        let got = json_f64(&v["format"]["duration"])
            .unwrap_or_else(|| panic!("{url}: ffprobe reports no duration: {v}"));
        assert!(
            (got - want).abs() <= 0.1,
            "{url}: ffprobe duration {got:.3} s, file is {want:.3} s"
        );
        let streams = v["streams"].as_array().cloned().unwrap_or_default();
        let find = |kind: &str| {
            streams
                .iter()
                .find(|s| s["codec_type"] == kind)
                .cloned()
                .unwrap_or_else(|| panic!("{url}: no {kind} stream: {v}"))
        };
        let video = find("video");
        assert_eq!(video["codec_name"], vcodec, "{url}: video codec");
        assert_eq!(
            (video["width"].as_u64(), video["height"].as_u64()),
            (Some(640), Some(360)),
            "{url}: video size"
        );
        let audio = find("audio");
        assert_eq!(audio["codec_name"], acodec, "{url}: audio codec");
        assert_eq!(
            json_f64(&audio["sample_rate"]),
            Some(48000.0),
            "{url}: audio rate"
        );
        assert_eq!(streams.len(), 2, "{url}: streams {v}");
    }
    assert!(
        server.log().lines().all(|l| !l.contains("panicked")),
        "server log:\n{}",
        tail(&server.log(), 30)
    );
}

/// RFC 3640: the `a=rtpmap` encoding parameter is the channel count; it must agree with
/// the AudioSpecificConfig carried in `config=` (clients may use either).
#[test]
fn sdp_aac_channels_match_audio_specific_config() {
    let (server, m) = vod_server();
    for file in [&m.clip_mp4, &m.clip_mkv, &m.clip_frag] {
        let url = vod_url(&server, file);
        let s = open(&url);
        let rtpmap = s
            .sdp
            .lines()
            .find(|l| l.contains("MPEG4-GENERIC"))
            .unwrap_or_else(|| panic!("{url}: no AAC rtpmap in\n{}", s.sdp));
        let rtpmap_ch: u32 = rtpmap
            .trim()
            .rsplit('/')
            .next()
            .and_then(|c| c.parse().ok())
            .filter(|_| rtpmap.matches('/').count() >= 2)
            .unwrap_or(1);
        let config = s
            .sdp
            .lines()
            .find_map(|l| l.split("config=").nth(1))
            .map(|c| c.split(';').next().unwrap().trim().to_string())
            .unwrap_or_else(|| panic!("{url}: no config= in\n{}", s.sdp));
        let bytes: Vec<u8> = (0..config.len() / 2)
            .map(|i| u8::from_str_radix(&config[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        // 5 bits object type, 4 bits frequency index (not 15 here), 4 bits channels.
        let bits = u32::from(bytes[0]) << 8 | u32::from(bytes[1]);
        let asc_ch = (bits >> 3) & 0x0f;
        assert_eq!(
            rtpmap_ch, asc_ch,
            "{url}: {rtpmap:?} vs config={config} (channel configuration {asc_ch}); file is mono"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Seek accuracy: the decoded picture is the source's keyframe

/// `ffmpeg -ss T -i rtsp://…` seeks with `PLAY Range: npt=T'-`; the first decoded picture
/// must be the source's keyframe at or before T'. ffmpeg asks for T minus the stream's
/// start time (the AAC priming, 21 ms), so `-ss 12` asks for npt=11.978 whose keyframe is
/// 11 s; `-ss 12.5` asks for 12.478, keyframe 12 s. `-noaccurate_seek` makes ffmpeg output
/// the first decoded picture instead of discarding up to T (which would hide a wrong seek).
#[test]
fn ffmpeg_seek_decodes_the_keyframe_picture() {
    let (server, m) = vod_server();
    let dir = test_dir("vod-ffmpeg-seek");
    let refs: Vec<(f64, PathBuf)> = [0.0, 11.0, 12.0, 12.04, 13.0]
        .iter()
        .map(|&t| {
            let p = dir.join(format!("ref-{t:.2}.png"));
            reference_frame(&m.clip_mp4, t, &p);
            (t, p)
        })
        .collect();
    for file in [&m.clip_mp4, &m.clip_mkv] {
        let url = vod_url(&server, file);
        let out = dir.join(format!("seek-{}.png", name_of(file)));
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-v", "debug", "-y", "-noaccurate_seek"])
            .args(["-ss", "12.5", "-rtsp_transport", "tcp"])
            .args(["-timeout", "10000000", "-i", &url])
            .args(["-frames:v", "1", "-update", "1"])
            .arg(&out);
        let started = Instant::now();
        let (status, err) = run_with_timeout(cmd, Duration::from_secs(20)).expect("ffmpeg");
        assert!(
            status.success() && out.exists(),
            "{url}: ffmpeg -ss failed ({status}):\n{}",
            tail(&err, 30)
        );
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{url}: seeking and decoding one frame took {:?} (did it play from 0?)",
            started.elapsed()
        );
        let scores: Vec<(f64, f64)> = refs.iter().map(|(t, p)| (*t, ssim(&out, p))).collect();
        let at = |t: f64| scores.iter().find(|(x, _)| *x == t).unwrap().1;
        let best = scores
            .iter()
            .copied()
            .fold((f64::NAN, -1.0), |b, s| if s.1 > b.1 { s } else { b });
        assert!(
            at(12.0) > 0.98,
            "{url}: the decoded picture is not the 12 s keyframe: SSIM per reference time {scores:?}\nserver log:\n{}",
            tail(&server.log(), 10)
        );
        assert_eq!(best.0, 12.0, "{url}: closest reference {scores:?}");
        for t in [0.0, 11.0, 12.04, 13.0] {
            assert!(
                at(t) < at(12.0) - 0.03,
                "{url}: frame at {t} s too similar to the output: {scores:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. GStreamer rtspsrc seek

#[test]
fn gstreamer_seek_lands_on_the_keyframe() {
    let (server, m) = vod_server();
    let dir = test_dir("vod-gst-seek");
    let url = vod_url(&server, &m.clip_mp4);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/gst_seek.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg(&url).arg("10").arg("18");
    let mut p = Proc::spawn("gst-seek", cmd, &dir);
    let status = p.wait_timeout(Duration::from_secs(22));
    let out = p.stdout();
    let err = p.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "gst_seek.py failed ({status:?}):\n{out}\n{}",
        tail(&err, 20)
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("SAMPLE "))
        .unwrap_or_else(|| panic!("no SAMPLE line:\n{out}"));
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    // rtspsrc restarts running time at 0 after a flushing seek; the stream time (from
    // the PLAY response's Range) is the position in the file.
    let pos = field("stream_time");
    assert!(
        (9.5..=10.5).contains(&pos),
        "first frame after seeking to 10 s is at stream time {pos} s:\n{out}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. PAUSE / resume

#[test]
fn pause_and_resume_continue_exactly() {
    let (server, m) = vod_server();
    let facts = file_facts(&m.short_mp4);
    let url = vod_url(&server, &m.short_mp4);
    let mut s = open(&url);
    let v = s.video();
    let t0 = Instant::now();
    let r = s.play(&[("Range", "npt=0-")]);
    assert_ok("PLAY", &r);
    let info0 = rtp_info_of(&r, v);
    let before = s.collect(Duration::from_secs(4), false);
    let r = s.pause();
    assert_ok("PAUSE", &r);
    let paused_at = Instant::now();
    // Packets already on their way when PAUSE was answered still count as before.
    let grace = s.collect(Duration::from_millis(300), false);
    let quiet = s.collect(Duration::from_millis(1700), false);
    assert!(
        quiet.packets.is_empty(),
        "{} RTP packets arrived while paused (first: track {} seq {}, {:?} after PAUSE)",
        quiet.packets.len(),
        quiet.packets[0].track,
        quiet.packets[0].seq,
        quiet.packets[0].at - paused_at
    );
    let r = s.play(&[]);
    let resumed_at = Instant::now();
    assert_ok("PLAY (resume)", &r);
    let resume = rtp_info_of(&r, v);
    let after = s.collect(Duration::from_secs(12), true);
    let bye_at = after
        .bye_at
        .unwrap_or_else(|| panic!("no RTCP BYE at the end of the file"));

    let last = before
        .track(v)
        .chain(grace.track(v))
        .last()
        .expect("video before the pause")
        .clone();
    let first = after.track(v).next().expect("video after resume").clone();
    let (rs, rt) = (resume.seq.unwrap(), resume.rtptime.unwrap());
    assert_eq!(
        seq_diff(first.seq, last.seq),
        1,
        "video seq after resume {} does not follow the last before the pause {}",
        first.seq,
        last.seq
    );
    assert_eq!(rs, first.seq, "RTP-Info seq vs first packet after resume");
    let gap = ts_diff(first.ts, last.ts);
    assert!(
        gap > 0 && gap < 90_000,
        "video RTP time jumped by {gap} ticks over the pause (last {} → first {})",
        last.ts,
        first.ts
    );
    assert!(
        ts_diff(rt, last.ts) >= 0 && ts_diff(first.ts, rt) >= 0,
        "RTP-Info rtptime {rt} not between the last timestamp before the pause {} and the first after {}",
        last.ts,
        first.ts
    );
    // The resume Range starts where the pause stopped (media time of the last frame).
    let (start, _) = range_of(&r);
    let paused_media = ts_diff(last.ts, info0.rtptime.unwrap()) as f64 / 90_000.0;
    assert!(
        (start - paused_media).abs() < 0.1,
        "resume Range starts at {start}, the pause was at media time {paused_media:.3}"
    );

    // Everything was delivered once, in order, at media pace (plus the pause).
    let mut all = Collected::default();
    all.packets.extend(before.packets);
    all.packets.extend(grace.packets);
    all.packets.extend(after.packets);
    let frames = all.frames(v) as i64;
    assert!(
        (frames - facts.video_frames as i64).abs() <= 2,
        "{frames} video frames received, the file has {}",
        facts.video_frames
    );
    let ts = all.frame_timestamps(v);
    for w in ts.windows(2) {
        let d = ts_diff(w[1], w[0]);
        assert!(
            d > 0 && d <= FRAME_TICKS + 10,
            "video timestamps not continuous: {} → {} ({d})",
            w[0],
            w[1]
        );
    }
    let pause = resumed_at - paused_at;
    let playing = (bye_at - t0).as_secs_f64() - pause.as_secs_f64();
    assert!(
        (9.3..=11.5).contains(&playing),
        "10 s file took {playing:.2} s of playing time (+{pause:?} paused)"
    );
    assert_ok("TEARDOWN", &s.teardown());
}

// ---------------------------------------------------------------------------------------
// 5. Range end

#[test]
fn range_end_stops_with_bye_and_session_stays_valid() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    let mut s = open(&url);
    let v = s.video();
    let t0 = Instant::now();
    let r = s.play(&[("Range", "npt=2-4")]);
    assert_ok("PLAY npt=2-4", &r);
    let (start, end) = range_of(&r);
    assert!((start - 2.0).abs() < 0.001, "Range start {start}");
    assert!(
        end.is_some_and(|e| (e - 4.0).abs() < 0.001),
        "Range end {end:?}"
    );
    let info = rtp_info_of(&r, v);
    let c = s.collect(Duration::from_secs(8), true);
    let bye = c
        .bye_at
        .unwrap_or_else(|| panic!("no BYE within 8 s; {} video frames", c.frames(v)));
    let took = (bye - t0).as_secs_f64();
    assert!(
        (1.5..=3.5).contains(&took),
        "2 s range ended after {took:.2} s"
    );
    let frames = c.frames(v) as i64;
    assert!(
        (frames - 50).abs() <= 3,
        "{frames} video frames for npt=2-4"
    );
    let ts = c.frame_timestamps(v);
    let rt = info.rtptime.unwrap();
    assert_eq!(ts[0], rt, "first video timestamp vs RTP-Info rtptime");
    let span = ts_diff(*ts.last().unwrap(), rt) as f64 / 90_000.0;
    assert!(
        (1.9..=2.05).contains(&span),
        "last frame at +{span:.3} s of the range start"
    );
    // No media after the BYE.
    let after = s.collect(Duration::from_millis(700), false);
    assert!(
        after.packets.is_empty(),
        "{} packets after BYE",
        after.packets.len()
    );
    // The session is still valid: play again from the start.
    let r = s.play(&[("Range", "npt=0-")]);
    assert_ok("PLAY npt=0- after the range end", &r);
    let (start, _) = range_of(&r);
    assert!(start.abs() < 0.001, "Range start {start}");
    let info = rtp_info_of(&r, v);
    let c = s.collect(Duration::from_millis(1500), false);
    assert!(
        c.frames(v) >= 25,
        "only {} video frames in 1.5 s after replaying",
        c.frames(v)
    );
    let first = c.track(v).next().unwrap();
    assert_eq!(Some(first.seq), info.seq, "seq after replay vs RTP-Info");
    assert_eq!(
        Some(first.ts),
        info.rtptime,
        "rtptime after replay vs RTP-Info"
    );
    assert_ok("TEARDOWN", &s.teardown());
}

/// A PLAY with Range while playing seeks: the packets after the response start at the
/// RTP-Info seq/rtptime with the keyframe of the new position.
#[test]
fn play_with_range_while_playing_seeks() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    let mut s = open(&url);
    let v = s.video();
    assert_ok("PLAY", &s.play(&[("Range", "npt=0-")]));
    let c = s.collect(Duration::from_secs(1), false);
    assert!(c.frames(v) >= 15, "{} frames in 1 s", c.frames(v));
    let last = c.track(v).last().unwrap().clone();
    let r = s.play(&[("Range", "npt=15.5-")]);
    assert_ok("PLAY npt=15.5- (seek)", &r);
    let (start, _) = range_of(&r);
    assert!(
        (start - 15.0).abs() < 0.001,
        "seek answered Range start {start}"
    );
    let info = rtp_info_of(&r, v);
    let c = s.collect(Duration::from_millis(1500), false);
    // Packets sent before the seek may still be in flight: skip those older than RTP-Info seq.
    let seq = info.seq.unwrap();
    let after: Vec<&RtpPkt> = c.track(v).filter(|p| seq_diff(p.seq, seq) >= 0).collect();
    let first = after.first().expect("video after the seek");
    assert_eq!(first.seq, seq, "first seq after seek");
    assert!(seq_diff(seq, last.seq) >= 1, "seq went backwards");
    assert_eq!(
        Some(first.ts),
        info.rtptime,
        "first timestamp after seek vs RTP-Info"
    );
    assert!(
        h264_starts_keyframe(&first.payload),
        "first packet after the seek is not a keyframe (NAL types {:?})",
        h264_nal_types(&first.payload)
    );
    let jump = ts_diff(first.ts, last.ts) as f64 / 90_000.0;
    assert!(
        (13.5..=15.1).contains(&jump),
        "RTP time advanced {jump:.3} s for a seek from ~1 s to 15 s"
    );
    let frames = after.iter().filter(|p| p.marker).count();
    assert!(frames >= 25, "{frames} frames in 1.5 s after the seek");
}

/// Scale 0 / garbage → 456, Range beyond the end → 457; the session survives.
#[test]
fn play_header_errors() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    let mut s = open(&url);
    let v = s.video();
    for (headers, want) in [
        (vec![("Scale", "0")], 456),
        (vec![("Scale", "fast")], 456),
        (vec![("Range", "npt=0-"), ("Scale", "0")], 456),
        (vec![("Range", "npt=30-")], 457),
        (vec![("Range", "npt=25-26")], 457),
        (vec![("Range", "npt=5-3")], 457),
    ] {
        let r = s.play(&headers);
        assert_eq!(r.status, want, "PLAY {headers:?}: {r:?}");
    }
    let r = s.play(&[("Range", "npt=0-")]);
    assert_ok("PLAY after refused PLAYs", &r);
    let c = s.collect(Duration::from_secs(1), false);
    assert!(c.frames(v) >= 15, "{} frames in 1 s", c.frames(v));
}

// ---------------------------------------------------------------------------------------
// 6. Scale

#[test]
fn scale_fast_forward_plays_keyframes_at_scale_pace() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    let mut s = open(&url);
    let v = s.video();
    for (scale, wall) in [(2.0, 8.0..=13.0), (4.0, 4.0..=7.5)] {
        let t0 = Instant::now();
        let sv = format!("{scale}");
        let r = s.play(&[("Range", "npt=0-"), ("Scale", &sv)]);
        assert_ok(&format!("PLAY Scale {scale}"), &r);
        assert_eq!(scale_of(&r), Some(scale), "Scale echo: {r:?}");
        let info = rtp_info_of(&r, v);
        let c = s.collect(Duration::from_secs(16), true);
        let bye = c
            .bye_at
            .unwrap_or_else(|| panic!("Scale {scale}: no BYE after 16 s"));
        let took = (bye - t0).as_secs_f64();
        assert!(
            wall.contains(&took),
            "Scale {scale}: the 20 s file took {took:.2} s (want {wall:?})"
        );
        let starts = c.frame_starts(v);
        assert!(
            (18..=21).contains(&starts.len()),
            "Scale {scale}: {} video frames; want the 20 keyframes",
            starts.len()
        );
        for p in &starts {
            assert!(
                h264_starts_keyframe(&p.payload),
                "Scale {scale}: frame at ts {} is not a keyframe (NAL types {:?})",
                p.ts,
                h264_nal_types(&p.payload)
            );
        }
        assert_eq!(
            Some(starts[0].ts),
            info.rtptime,
            "Scale {scale}: first ts vs RTP-Info"
        );
        for w in starts.windows(2) {
            let d = ts_diff(w[1].ts, w[0].ts);
            assert!(
                (d - 90_000).abs() <= 10,
                "Scale {scale}: keyframes {d} ticks apart (1 s GOP)"
            );
        }
    }
}

#[test]
fn scale_reverse_plays_keyframes_backwards() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    let mut s = open(&url);
    let v = s.video();
    for (scale, range, kfs, wall) in [
        ("-1", "npt=20-12", 8usize, 6.0..=10.0),
        ("-4", "npt=20-", 20usize, 3.5..=7.5),
    ] {
        let t0 = Instant::now();
        let r = s.play(&[("Range", range), ("Scale", scale)]);
        assert_ok(&format!("PLAY Scale {scale} Range {range}"), &r);
        assert_eq!(scale_of(&r), scale.parse().ok(), "Scale echo: {r:?}");
        let (start, _) = range_of(&r);
        assert!(
            (start - 19.0).abs() < 0.001,
            "reverse from 20 s starts at the keyframe 19 s, Range says {start}"
        );
        let info = rtp_info_of(&r, v);
        let c = s.collect(Duration::from_secs(14), true);
        let bye = c.bye_at.unwrap_or_else(|| panic!("Scale {scale}: no BYE"));
        let took = (bye - t0).as_secs_f64();
        assert!(
            wall.contains(&took),
            "Scale {scale} {range}: took {took:.2} s (want {wall:?})"
        );
        let starts = c.frame_starts(v);
        assert!(
            starts.len().abs_diff(kfs) <= 1,
            "Scale {scale} {range}: {} frames, want {kfs} keyframes",
            starts.len()
        );
        assert_eq!(Some(starts[0].ts), info.rtptime, "first ts vs RTP-Info");
        for p in &starts {
            assert!(
                h264_starts_keyframe(&p.payload),
                "Scale {scale}: frame at ts {} is not a keyframe (NAL types {:?})",
                p.ts,
                h264_nal_types(&p.payload)
            );
        }
        for w in starts.windows(2) {
            let d = ts_diff(w[1].ts, w[0].ts);
            assert!(
                d < 0,
                "Scale {scale}: RTP time not strictly decreasing: {} then {}",
                w[0].ts,
                w[1].ts
            );
            assert!((d + 90_000).abs() <= 10, "keyframes {d} ticks apart");
        }
        // Every packet belongs to a keyframe: no audio, no inter frames.
        let audio = c.packets.iter().filter(|p| p.track != v).count();
        assert_eq!(audio, 0, "Scale {scale}: {audio} non-video packets");
    }
}

// ---------------------------------------------------------------------------------------
// 7. Many concurrent readers

#[test]
fn twenty_concurrent_readers_start_at_their_keyframes() {
    let (server, m) = vod_server();
    let facts = file_facts(&m.clip_mp4);
    let url = vod_url(&server, &m.clip_mp4);
    const N: usize = 20;
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let url = url.clone();
            let barrier = barrier.clone();
            let want_t = 0.3 + i as f64 * 0.93;
            let kf = keyframe_at_or_before(&facts.keyframes, want_t);
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = VodSession::open(&url)?;
                let v = s.video();
                barrier.wait();
                let range = format!("npt={want_t:.3}-");
                let r = s.play(&[("Range", range.as_str())]);
                if r.status != 200 {
                    return Err(format!("reader {i}: PLAY {range}: {r:?}"));
                }
                let (start, _) = range_of(&r);
                let info = rtp_info_of(&r, v);
                let c = s.collect(Duration::from_secs(2), false);
                let first = c
                    .track(v)
                    .next()
                    .ok_or_else(|| format!("reader {i}: no video"))?;
                let pos = start + ts_diff(first.ts, info.rtptime.unwrap()) as f64 / 90_000.0;
                let mut errs = Vec::new();
                if (start - kf).abs() > 0.001 {
                    errs.push(format!("Range start {start}, keyframe {kf}"));
                }
                if (pos - kf).abs() > 0.05 {
                    errs.push(format!("first frame at {pos:.3} s, keyframe {kf}"));
                }
                if Some(first.seq) != info.seq {
                    errs.push(format!(
                        "first seq {} vs RTP-Info {:?}",
                        first.seq, info.seq
                    ));
                }
                if !h264_starts_keyframe(&first.payload) {
                    errs.push("first frame not a keyframe".into());
                }
                if c.frames(v) < 35 {
                    errs.push(format!("{} frames in 2 s", c.frames(v)));
                }
                let _ = s.teardown();
                if errs.is_empty() {
                    Ok(())
                } else {
                    Err(format!("reader {i} (npt={want_t:.3}): {}", errs.join("; ")))
                }
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("reader thread").err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

fn retina_reads(url: &str, t: RetinaTransport, secs: Duration) {
    let r = retina_read_blocking(url, t, secs).unwrap_or_else(|e| panic!("retina {t:?}: {e}"));
    assert!(
        r.error.is_none() && !r.ended_early,
        "retina {t:?}: ended early: {:?}",
        r.error
    );
    let min = min_frames(secs, MIN_RATIO);
    assert!(
        r.video_frames >= min,
        "retina {t:?}: {} video frames in {secs:?}, want >= {min}",
        r.video_frames
    );
    assert!(r.audio_frames > 0, "retina {t:?}: no audio frames");
    assert_eq!(r.loss, 0, "retina {t:?}: lost packets");
    // Paced at media speed: not the whole file at once.
    assert!(
        r.video_frames <= expected_frames(secs) + 10,
        "retina {t:?}: {} frames in {secs:?}: not paced",
        r.video_frames
    );
}

/// Other real clients and UDP: retina (strict about SDP, RTP-Info, SSRC and sequence
/// numbers) over TCP and UDP and ffmpeg over UDP, from the start of the file, zero loss.
#[test]
fn retina_and_ffmpeg_udp_play_vod() {
    let (server, m) = vod_server();
    let dir = test_dir("vod-clients");
    let url = vod_url(&server, &m.clip_mkv);
    let secs = Duration::from_secs(3);
    for t in [RetinaTransport::Tcp, RetinaTransport::Udp] {
        retina_reads(&url, t, secs);
    }
    let url = vod_url(&server, &m.clip_mp4);
    let secs = Duration::from_secs(4);
    let r = ffmpeg_read(&url, "udp", secs, &dir);
    assert_ffmpeg_read("ffmpeg udp (vod)", &r, secs, MIN_RATIO, "h264", Some("aac"));
}

/// retina refuses an SDP whose AAC rtpmap channel count contradicts the
/// AudioSpecificConfig (see `sdp_aac_channels_match_audio_specific_config`).
#[test]
fn retina_plays_vod_mp4() {
    let (server, m) = vod_server();
    let url = vod_url(&server, &m.clip_mp4);
    retina_reads(&url, RetinaTransport::Tcp, Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------
// 8. Path traversal

#[test]
fn path_traversal_is_not_found() {
    let m = vod_media();
    let root = test_dir("vod-traversal");
    let inner = root.join("media");
    std::fs::create_dir_all(inner.join("sub")).unwrap();
    std::fs::copy(&m.short_mp4, inner.join("ok.mp4")).unwrap();
    // A perfectly playable file outside the served directory.
    std::fs::copy(&m.short_mp4, root.join("secret.mp4")).unwrap();
    std::os::unix::fs::symlink(root.join("secret.mp4"), inner.join("link.mp4")).unwrap();
    std::os::unix::fs::symlink(&root, inner.join("up")).unwrap();
    let server = Server::start(&vod_config(&inner));
    for path in [
        "vod/../secret.mp4",
        "vod/sub/../../secret.mp4",
        "vod/%2e%2e/secret.mp4",
        "vod/%2E%2E/secret.mp4",
        "vod/..%2fsecret.mp4",
        "vod/%2e%2e%2fsecret.mp4",
        "vod/sub/%2e%2e/%2e%2e/secret.mp4",
        "vod//etc/passwd",
        &format!("vod/{}", root.join("secret.mp4").display()),
        "vod/link.mp4",
        "vod/up/secret.mp4",
        "vod/missing.mp4",
        "vod/sub",
        "vod/",
    ] {
        let url = server.url(path);
        let status = describe_status(&url);
        assert_eq!(status, Some(404), "DESCRIBE {url}");
        // SETUP opens the file too.
        let mut c = RtspClient::connect(server.addr()).unwrap();
        let r = c
            .request(
                "SETUP",
                &format!("{url}/trackID=0"),
                &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
                b"",
            )
            .expect("SETUP");
        assert_eq!(r.status, 404, "SETUP {url}/trackID=0: {r:?}");
    }
    let log = server.log();
    assert!(
        !log.contains("describe (file)"),
        "server log mentions serving a file:\n{}",
        tail(&log, 30)
    );
    // Still serving valid files.
    let mut s = open(&server.url("vod/ok.mp4"));
    let v = s.video();
    assert_ok("PLAY ok.mp4", &s.play(&[("Range", "npt=0-")]));
    let c = s.collect(Duration::from_secs(1), false);
    assert!(c.frames(v) >= 15, "{} frames", c.frames(v));
}

// ---------------------------------------------------------------------------------------
// 9. The built-in demo

#[test]
fn demo_plays_in_ffmpeg_with_zero_config() {
    let dir = test_dir("demo-ffmpeg");
    let server = Server::start("");
    let url = server.url("demo");
    let secs = Duration::from_secs(4);
    let r = ffmpeg_read(&url, "tcp", secs, &dir);
    let min = min_frames(secs, MIN_RATIO);
    assert!(
        r.video_frames >= min,
        "demo: {} frames in {secs:?}, want >= {min}\n{}",
        r.video_frames,
        r.tail()
    );
    assert_eq!(r.video_codec.as_deref(), Some("h264"), "{}", r.tail());
    assert_eq!((r.width, r.height), (426, 240), "{}", r.tail());
    assert_eq!(r.audio_codec.as_deref(), Some("aac"), "{}", r.tail());
    assert_eq!(r.lost_packets, 0, "{}", r.tail());
}

#[test]
fn demo_plays_in_gstreamer_with_zero_config() {
    let dir = test_dir("demo-gst");
    let server = Server::start("");
    let url = server.url("demo");
    let secs = Duration::from_secs(4);
    let r = gst::gst_read(
        &url,
        "tcp",
        gst::GstVideo::H264,
        secs + Duration::from_secs(2),
        &dir,
        None,
    );
    let min = min_frames(secs, MIN_RATIO);
    assert!(r.errors.is_empty(), "errors {:?}\n{}", r.errors, r.output);
    assert!(
        r.video_frames >= min,
        "{} frames < {min}\n{}",
        r.video_frames,
        r.output
    );
    assert_eq!((r.width, r.height), (426, 240), "{}", r.output);
}

// ---------------------------------------------------------------------------------------
// 10. A looping file as a live path

/// Reads the looping 4 s clip at `loopy` for 10 s with ffmpeg and, meanwhile, for 9 s
/// with the raw client (more than two loops).
fn read_looping_path(name: &str) -> (FfmpegReport, Collected, usize, usize) {
    let m = vod_media();
    let dir = test_dir(name);
    let abs = m.loop4_mp4.canonicalize().unwrap();
    let server = Server::start(&format!(
        "[paths.loopy]\nsource = \"file://{}\"\nloop = true\n",
        abs.display()
    ));
    let url = server.url("loopy");
    let reader = FfmpegReader::spawn(&url, "tcp", 10.0, &dir, None);
    let mut s = open(&url);
    let v = s.video();
    let a = s
        .tracks
        .iter()
        .position(|t| t.media == "audio")
        .expect("audio track");
    assert_ok("PLAY", &s.play(&[]));
    let c = s.collect(Duration::from_secs(9), false);
    let r = reader.finish(Duration::from_secs(22));
    (r, c, v, a)
}

#[test]
fn looping_file_path_plays_continuously() {
    let (r, c, v, _) = read_looping_path("vod-loop");
    let ts = c.frame_timestamps(v);
    assert!(ts.len() >= 200, "raw reader: {} frames in 9 s", ts.len());
    for w in ts.windows(2) {
        let d = ts_diff(w[1], w[0]);
        assert!(
            d > 0 && d <= 2 * FRAME_TICKS,
            "loop: video RTP time {} → {} ({d} ticks)",
            w[0],
            w[1]
        );
    }
    let seqs: Vec<u16> = c.track(v).map(|p| p.seq).collect();
    for w in seqs.windows(2) {
        assert_eq!(
            seq_diff(w[1], w[0]),
            1,
            "loop: video seq {} → {}",
            w[0],
            w[1]
        );
    }
    assert!(
        (225..=262).contains(&r.video_frames),
        "ffmpeg decoded {} frames in 10 s of a looping 4 s clip (want ≈250)\n{}",
        r.video_frames,
        r.tail()
    );
    assert!(
        r.elapsed >= Duration::from_secs(9),
        "10 s of live media read in {:?}",
        r.elapsed
    );
    assert_eq!(r.lost_packets, 0, "{}", r.tail());
}

/// Across the loop points every track's RTP time keeps increasing (no overlap of the
/// last audio frames of one pass with the first of the next), so ffmpeg reports no
/// timestamp problems.
#[test]
fn looping_file_path_timestamps_are_monotonic() {
    let (r, c, _, a) = read_looping_path("vod-loop-ts");
    let audio: Vec<&RtpPkt> = c.track(a).collect();
    assert!(audio.len() > 100, "{} audio packets", audio.len());
    let back: Vec<String> = audio
        .windows(2)
        .filter(|w| ts_diff(w[1].ts, w[0].ts) <= 0)
        .map(|w| {
            format!(
                "seq {} ts {} → seq {} ts {} ({} ticks)",
                w[0].seq,
                w[0].ts,
                w[1].seq,
                w[1].ts,
                ts_diff(w[1].ts, w[0].ts)
            )
        })
        .collect();
    assert!(
        back.is_empty(),
        "audio RTP time goes backwards at the loop points:\n{}",
        back.join("\n")
    );
    let bad: Vec<&str> = r
        .stderr
        .split(['\n', '\r'])
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("non-monoton")
                || l.contains("non monoton")
                || l.contains("discontinuity")
                || l.contains("invalid timestamp")
                || l.contains("invalid dts")
                || l.contains("invalid pts")
                || l.contains("out of order")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "ffmpeg timestamp warnings:\n{}",
        bad.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 11. Damaged files

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn damaged_files_never_crash_the_server() {
    let m = vod_media();
    let dir = test_dir("vod-damaged").join("media");
    std::fs::create_dir_all(&dir).unwrap();
    let cut = |src: &Path, name: &str, ratio: f64| {
        let data = std::fs::read(src).unwrap();
        let n = (data.len() as f64 * ratio) as usize;
        std::fs::write(dir.join(name), &data[..n]).unwrap();
    };
    std::fs::copy(&m.short_mp4, dir.join("good.mp4")).unwrap();
    // moov first (+faststart): the index survives, the media data is cut at ~6 s.
    cut(&m.short_mp4, "truncated.mp4", 0.6);
    cut(&m.clip_mkv, "truncated.mkv", 0.6);
    cut(&m.clip_frag, "truncated_frag.mp4", 0.6);
    // moov last: the index is lost.
    let nofast = dir.join("nofaststart-src.mp4");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&m.short_mp4)
        .args(["-c", "copy"])
        .arg(&nofast);
    assert!(run_with_timeout(cmd, Duration::from_secs(30))
        .unwrap()
        .0
        .success());
    cut(&nofast, "truncated_moov_lost.mp4", 0.6);
    std::fs::remove_file(&nofast).unwrap();
    std::fs::write(dir.join("garbage.mp4"), noise(200_000, 0x9e37_79b9)).unwrap();
    std::fs::write(dir.join("garbage.mkv"), noise(200_000, 0x1234_5678)).unwrap();
    std::fs::write(dir.join("empty.mp4"), b"").unwrap();
    // A valid ftyp, then boxes claiming absurd sizes.
    let mut absurd = Vec::new();
    absurd.extend_from_slice(&[0, 0, 0, 0x18]);
    absurd.extend_from_slice(b"ftypisom\0\0\x02\0isommp42");
    absurd.extend_from_slice(&[0xff, 0xff, 0xff, 0xf0]);
    absurd.extend_from_slice(b"moov");
    absurd.extend_from_slice(&[0, 0, 0, 1]);
    absurd.extend_from_slice(b"trak");
    absurd.extend_from_slice(&[0xff; 8]);
    absurd.extend_from_slice(&noise(1000, 7));
    std::fs::write(dir.join("absurd_sizes.mp4"), &absurd).unwrap();
    // An EBML header followed by a Segment of unknown size full of noise.
    let mut ebml = vec![0x1a, 0x45, 0xdf, 0xa3, 0x9f];
    ebml.extend_from_slice(&[0x42, 0x82, 0x88]);
    ebml.extend_from_slice(b"matroska");
    ebml.extend_from_slice(&[0; 20]);
    ebml.extend_from_slice(&[
        0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    ebml.extend_from_slice(&noise(50_000, 99));
    std::fs::write(dir.join("noise_segment.mkv"), &ebml).unwrap();

    let mut server = Server::start(&vod_config(&dir));
    let mut report = Vec::new();
    // (file, PLAY start): the truncated files' data ends at about 60% of their duration
    // (6 s of 10, 12 s of 20), about 2 s after the start's keyframe (the remuxed MKV and
    // fragmented MP4 have their keyframes at N.021 s).
    for (name, start) in [
        ("truncated.mp4", 4.0),
        ("truncated.mkv", 10.5),
        ("truncated_frag.mp4", 10.5),
        ("truncated_moov_lost.mp4", 4.0),
        ("garbage.mp4", 0.0),
        ("garbage.mkv", 0.0),
        ("empty.mp4", 0.0),
        ("absurd_sizes.mp4", 0.0),
        ("noise_segment.mkv", 0.0),
    ] {
        let url = server.url(&format!("vod/{name}"));
        match VodSession::open(&url) {
            Err(e) => {
                assert!(
                    e.contains(": 415 ") || e.contains(": 404 "),
                    "{name}: want 415 or 404, got {e}"
                );
                report.push(format!("{name}: {e}"));
            }
            Ok(mut s) => {
                // Playable as far as the data goes, then BYE well before the claimed end.
                let claimed = s
                    .sdp
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("a=range:"))
                    .and_then(parse_npt_range)
                    .and_then(|(_, e)| e)
                    .unwrap_or(f64::INFINITY);
                let t0 = Instant::now();
                let range = format!("npt={start}-");
                let r = s.play(&[("Range", range.as_str())]);
                if r.status != 200 {
                    assert!(
                        matches!(r.status, 404 | 415 | 457 | 500),
                        "{name}: PLAY answered {r:?}"
                    );
                    report.push(format!("{name}: PLAY {}", r.status));
                } else {
                    let c = s.collect(Duration::from_secs(9), true);
                    let bye = c.bye_at.unwrap_or_else(|| {
                        panic!(
                            "{name}: no BYE within 9 s ({} packets)\n{}",
                            c.packets.len(),
                            tail(&server.log(), 20)
                        )
                    });
                    let took = (bye - t0).as_secs_f64();
                    assert!(
                        took < 4.5,
                        "{name}: BYE {took:.2} s after PLAY {range}; the data ends ~2 s in \
                         (claimed duration {claimed})"
                    );
                    report.push(format!(
                        "{name}: claimed {claimed} s, played {} packets from {start} s, BYE after {took:.2} s",
                        c.packets.len(),
                    ));
                }
            }
        }
        assert!(
            server.is_running(),
            "server died on {name}:\n{}",
            tail(&server.log(), 30)
        );
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        !server.log().contains("panicked"),
        "panic in server log:\n{}",
        tail(&server.log(), 30)
    );
    let mut s = open(&server.url("vod/good.mp4"));
    let v = s.video();
    assert_ok("PLAY good.mp4", &s.play(&[("Range", "npt=0-")]));
    let c = s.collect(Duration::from_secs(1), false);
    assert!(c.frames(v) >= 15, "{} frames", c.frames(v));
}

/// `ffprobe URL`'s `Duration:` line (its text report, what a user reads).
fn ffprobe_duration_line(url: &str) -> String {
    let mut cmd = Command::new("ffprobe");
    cmd.args(["-rtsp_transport", "tcp", "-timeout", "10000000", url])
        .stdin(std::process::Stdio::null());
    let (status, stderr) = run_with_timeout(cmd, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("ffprobe {url}: {e}"));
    assert!(status.success(), "ffprobe {url} failed:\n{stderr}");
    stderr
        .lines()
        .find(|l| l.trim_start().starts_with("Duration:"))
        .unwrap_or_else(|| panic!("ffprobe {url} printed no Duration line:\n{stderr}"))
        .trim()
        .to_string()
}

/// The demo and a looping file path are endless live streams: their SDP has an open range
/// (`a=range:npt=now-`) and ffprobe reports no duration; a stored file served on demand keeps
/// its finite duration.
#[test]
fn looping_sources_advertise_live_and_stored_files_their_duration() {
    let m = vod_media();
    let abs = m.loop4_mp4.canonicalize().unwrap();
    let server = Server::start(&format!(
        "{}[paths.loopy]\nsource = \"file://{}\"\nloop = true\n",
        vod_config(&m.dir),
        abs.display()
    ));
    for path in ["demo", "loopy"] {
        let url = server.url(path);
        let line = ffprobe_duration_line(&url);
        assert!(
            line.starts_with("Duration: N/A"),
            "{url} is live but ffprobe says {line:?}"
        );
        let addr = common::rtsp_client::addr_of(&url).expect("address");
        let r = RtspClient::connect(addr)
            .and_then(|mut c| c.request("DESCRIBE", &url, &[("Accept", "application/sdp")], b""))
            .unwrap_or_else(|e| panic!("DESCRIBE {url}: {e}"));
        assert_eq!(r.status, 200, "DESCRIBE {url}");
        let sdp = String::from_utf8_lossy(&r.body);
        assert!(sdp.contains("a=range:npt=now-\r\n"), "{url} SDP:\n{sdp}");
    }
    let url = vod_url(&server, &m.clip_mp4);
    let line = ffprobe_duration_line(&url);
    assert!(
        line.starts_with("Duration: 00:00:20.0") || line.starts_with("Duration: 00:00:19.9"),
        "{url} is a 20 s file but ffprobe says {line:?}"
    );
}
