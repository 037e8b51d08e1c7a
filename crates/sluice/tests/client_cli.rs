//! The client subcommands against a real Sluice (and gst-rtsp-server): `sluice record`
//! writes MP4s that ffprobe reads, `sluice publish` feeds readers, `sluice probe` tells
//! what the SDP says and fails with clear messages.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::rtsp_client::{describe, describe_status};
use common::upstream::{
    h264_aac_mp4, h264_high_annexb, probe_file, sluice_run, sluice_spawn, FileProbe, GstUpstream,
    UpstreamOpts,
};
use common::*;

/// A Sluice with an ffmpeg publisher looping `file` on `cam`.
fn live(file: &Path, dir: &Path) -> (Server, FfmpegPublisher) {
    let server = Server::start("");
    let publisher = FfmpegPublisher::start(file, &server.url("cam"), "tcp", dir);
    (server, publisher)
}

fn assert_recording(what: &str, p: &FileProbe, video: &str, audio: &str, want_secs: f64) {
    let v = p
        .video()
        .unwrap_or_else(|| panic!("{what}: no video stream\n{}", p.raw));
    let a = p
        .audio()
        .unwrap_or_else(|| panic!("{what}: no audio stream\n{}", p.raw));
    assert_eq!(v.codec_name, video, "{what}: video codec\n{}", p.raw);
    assert_eq!(
        (v.width, v.height),
        (640, 360),
        "{what}: resolution\n{}",
        p.raw
    );
    assert_eq!(a.codec_name, audio, "{what}: audio codec\n{}", p.raw);
    assert_eq!(a.sample_rate, 48000, "{what}: audio rate\n{}", p.raw);
    assert!(
        (p.format_duration - want_secs).abs() <= 0.2,
        "{what}: duration {:.3} s, want {want_secs} ± 0.2 s\n{}",
        p.format_duration,
        p.raw
    );
}

fn record_10s(file: &Path, transport: &str, video: &str, audio: &str) {
    let dir = test_dir(&format!("cli-record-{transport}-{video}"));
    let (server, _publisher) = live(file, &dir);
    let out = dir.join("out.mp4");
    let url = server.url("cam");
    let r = sluice_run(
        &[
            "record",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--duration",
            "10s",
            "--transport",
            transport,
        ],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.success,
        "sluice record exited with {:?}\nstderr:\n{}",
        r.code, r.stderr
    );
    assert!(
        r.elapsed >= Duration::from_secs(9),
        "recorded 10 s of live media in {:?}?",
        r.elapsed
    );
    let p = probe_file(&out).unwrap_or_else(|e| panic!("{e}\nsluice stderr:\n{}", r.stderr));
    eprintln!(
        "record --transport {transport}: {:.3} s in {:?}",
        p.format_duration, r.elapsed
    );
    assert_recording(
        &format!("record --transport {transport}"),
        &p,
        video,
        audio,
        10.0,
    );
}

#[test]
fn record_h264_aac_for_10s_over_tcp() {
    record_10s(&media().h264_aac, "tcp", "h264", "aac");
}

#[test]
fn record_h264_aac_for_10s_over_udp() {
    record_10s(&media().h264_aac, "udp", "h264", "aac");
}

#[test]
fn record_h265_opus_for_10s() {
    record_10s(&media().h265_opus, "tcp", "hevc", "opus");
}

/// A gst-rtsp-server camera (`rtph264pay config-interval=1`, H.264 High 640x360 at 30 fps,
/// video only) fed an elementary stream without timestamps: every RTP packet carries one
/// timestamp. `sluice record` still writes 10 s that ffprobe reads as such and that decode
/// without an error, about 30 frames a second.
fn record_gstreamer_camera(bframes: bool) {
    let dir = test_dir(&format!("cli-record-gst-camera-bf{bframes}"));
    let up = GstUpstream::start(
        UpstreamOpts {
            h264: Some(h264_high_annexb(10, 30, bframes)),
            fps: Some(30),
            ..Default::default()
        },
        &dir,
    );
    let out = dir.join("camera.mp4");
    let r = sluice_run(
        &[
            "record",
            &up.url(),
            "-o",
            out.to_str().unwrap(),
            "--duration",
            "10s",
        ],
        Duration::from_secs(40),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.success,
        "sluice record of the gst camera exited with {:?}\nstderr:\n{}",
        r.code, r.stderr
    );
    assert!(
        r.elapsed >= Duration::from_secs(9) && r.elapsed <= Duration::from_secs(20),
        "recorded 10 s of a live camera in {:?}\n{}",
        r.elapsed,
        r.stderr
    );
    let p = probe_file(&out).unwrap_or_else(|e| panic!("{e}\nsluice stderr:\n{}", r.stderr));
    let v = p
        .video()
        .unwrap_or_else(|| panic!("no video stream\n{}", p.raw));
    assert_eq!(v.codec_name, "h264", "{}", p.raw);
    assert_eq!(v.profile, "High", "{}", p.raw);
    assert_eq!((v.width, v.height), (640, 360), "{}", p.raw);
    assert!(p.audio().is_none(), "the camera has no audio\n{}", p.raw);
    assert!(
        (p.format_duration - 10.0).abs() <= 0.3,
        "camera recording is {:.3} s, want 10 ± 0.3 s\n{}",
        p.format_duration,
        p.raw
    );
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-i"])
        .arg(&out)
        .args(["-f", "null", "-"]);
    let (status, err) = common::media::run_with_timeout(cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ffmpeg decode: {e}"));
    assert!(
        status.success() && err.trim().is_empty(),
        "decoding the camera recording: {status}\n{err}"
    );
    let frames = decoded_frames(&out);
    assert!(
        (280..=320).contains(&frames),
        "{frames} frames decoded from 10 s of a 30 fps camera (want ≈300)"
    );
    eprintln!(
        "gst camera (B-frames: {bframes}): {:.3} s, {frames} frames, in {:?}",
        p.format_duration, r.elapsed
    );
}

/// Video frames ffprobe decodes from a file.
fn decoded_frames(file: &Path) -> u64 {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe frame count of {}: {text:?}", file.display()))
}

#[test]
fn record_a_gstreamer_camera_for_10s() {
    record_gstreamer_camera(false);
}

/// The same camera sending B-frames: arrival order is decode order, so presentation times
/// come from the pictures' order counts.
#[test]
fn record_a_gstreamer_camera_with_b_frames_for_10s() {
    record_gstreamer_camera(true);
}

/// A camera that cannot be recorded (its only keyframe is 30 s away) makes `sluice record`
/// fail within a bounded time, naming the track and what it lacks, and writing no file, even
/// with a `--duration` that nothing reached.
#[test]
fn record_without_a_keyframe_fails_clearly_and_in_bounded_time() {
    let dir = test_dir("cli-record-no-keyframe");
    let up = GstUpstream::start(
        UpstreamOpts {
            h264: Some(h264_high_annexb(30, 900, false)),
            fps: Some(30),
            ..Default::default()
        },
        &dir,
    );
    // The camera's shared pipeline starts with its first reader, at the file's only
    // keyframe: let another reader start it, so the recorder joins after that keyframe.
    let _first = FfmpegReader::spawn(&up.url(), "tcp", 25.0, &dir, None);
    wait_for(Duration::from_secs(10), || {
        (up.connections() >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the first reader never reached the camera\n{}", up.log()));
    std::thread::sleep(Duration::from_secs(2));
    let out = dir.join("nothing.mp4");
    let r = sluice_run(
        &[
            "record",
            &up.url(),
            "-o",
            out.to_str().unwrap(),
            "--duration",
            "3s",
        ],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !r.success,
        "record without a keyframe succeeded?\n{}",
        r.stderr
    );
    assert!(
        r.elapsed <= Duration::from_secs(15),
        "record gave up after {:?}",
        r.elapsed
    );
    assert!(
        r.stderr.contains("track 0 (H264)") && r.stderr.contains("no keyframe"),
        "the error does not name the track and what it lacks:\n{}",
        r.stderr
    );
    assert!(!out.exists(), "a file was written: {}", out.display());
    eprintln!(
        "record without a keyframe: {:?}: {}",
        r.elapsed,
        r.stderr.trim()
    );
}

#[test]
fn record_interrupted_by_ctrl_c_leaves_a_playable_file() {
    let dir = test_dir("cli-record-sigint");
    let (server, _publisher) = live(&media().h264_aac, &dir);
    let out = dir.join("out.mp4");
    let url = server.url("cam");
    let mut rec = sluice_spawn(
        "record",
        &["record", &url, "-o", out.to_str().unwrap()],
        &dir,
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(rec.is_running(), "record exited early:\n{}", rec.stderr());
    rec.signal(libc::SIGINT);
    let status = rec
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("record did not exit after SIGINT:\n{}", rec.stderr()));
    assert!(
        status.success(),
        "record exited with {status} after SIGINT:\n{}",
        rec.stderr()
    );
    let p = probe_file(&out).unwrap_or_else(|e| panic!("{e}\nsluice stderr:\n{}", rec.stderr()));
    assert!(
        p.format_duration >= 3.0,
        "interrupted recording is {:.2} s long, want >= 3 s\n{}",
        p.format_duration,
        p.raw
    );
    assert_eq!(p.video().map(|v| v.codec_name.as_str()), Some("h264"));
    assert_eq!(p.audio().map(|a| a.codec_name.as_str()), Some("aac"));
}

/// `kill -9` of `sluice record` (1 s parts, fdatasync after each) loses at most the part
/// being built and the reordering window: the file recovers to whole parts holding the media
/// up to the kill less about 1.5 s, and decodes without an error.
#[test]
fn record_killed_with_sigkill_loses_at_most_one_part() {
    let dir = test_dir("cli-record-sigkill");
    let (server, _publisher) = live(&media().h264_aac, &dir);
    let out = dir.join("out.mp4");
    let url = server.url("cam");
    let mut rec = sluice_spawn(
        "record",
        &[
            "record",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--part-duration",
            "1s",
            "--fsync",
            "part",
        ],
        &dir,
    );
    let started = wait_for(Duration::from_secs(15), || out.exists().then(Instant::now))
        .unwrap_or_else(|| panic!("record wrote no file:\n{}", rec.stderr()));
    std::thread::sleep(Duration::from_secs(6));
    assert!(rec.is_running(), "record exited early:\n{}", rec.stderr());
    let ran = started.elapsed();
    rec.kill();
    let bytes = std::fs::read(&out).unwrap();
    let r = sluice_media::archive::recover(&bytes);
    let (_, end) = r
        .media_range()
        .unwrap_or_else(|| panic!("no complete part after {ran:?}: {:?}", r.damage));
    eprintln!(
        "record killed after {ran:?}: {} bytes, {} whole parts up to {:.3} s, {} bytes torn",
        bytes.len(),
        r.parts.len(),
        end.as_secs_f64(),
        r.file_len - r.valid_len
    );
    assert!(
        end.as_secs_f64() >= ran.as_secs_f64() - 1.5 - 0.5,
        "kept {:.3} s of {ran:?} (want all but a part, the window and the start)",
        end.as_secs_f64()
    );
    let kept = dir.join("kept.mp4");
    std::fs::write(&kept, &bytes[..r.valid_len as usize]).unwrap();
    let mut cmd = std::process::Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-xerror", "-i"])
        .arg(&kept)
        .args(["-f", "null", "-"]);
    let (status, err) = common::media::run_with_timeout(cmd, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ffmpeg decode: {e}"));
    assert!(
        status.success() && err.trim().is_empty(),
        "decoding the recovered recording: {status}\n{err}"
    );
}

fn wait_described(url: &str, what: &str, publisher: &mut Proc) {
    let ok = wait_for(Duration::from_secs(10), || {
        (describe_status(url) == Some(200)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: path never became readable; publisher running={} stderr:\n{}",
        publisher.is_running(),
        publisher.stderr()
    );
}

fn publish_then_read(transport: &str) {
    let dir = test_dir(&format!("cli-publish-{transport}"));
    let server = Server::start("");
    let url = server.url("pub");
    let file = &media().h264_aac; // 10 s
    let mut publisher = sluice_spawn(
        "publish",
        &[
            "publish",
            file.to_str().unwrap(),
            &url,
            "--transport",
            transport,
        ],
        &dir,
    );
    wait_described(&url, "sluice publish", &mut publisher);
    let r = ffmpeg_read(&url, transport, READ_SECS, &dir);
    assert_ffmpeg_read(
        &format!("reader of `sluice publish --transport {transport}`"),
        &r,
        READ_SECS,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    // Without --loop it ends with the file and exits 0.
    let status = publisher
        .wait_timeout(Duration::from_secs(12))
        .unwrap_or_else(|| {
            panic!(
                "publish still running after its 10 s file:\n{}",
                publisher.stderr()
            )
        });
    assert!(
        status.success(),
        "publish exited with {status}:\n{}",
        publisher.stderr()
    );
}

#[test]
fn publish_file_over_tcp() {
    publish_then_read("tcp");
}

#[test]
fn publish_file_over_udp() {
    publish_then_read("udp");
}

#[test]
fn publish_loop_keeps_a_4s_file_going() {
    let dir = test_dir("cli-publish-loop");
    let server = Server::start("");
    let url = server.url("loop");
    let file = h264_aac_mp4(4, "640x360");
    let started = Instant::now();
    let mut publisher = sluice_spawn(
        "publish-loop",
        &["publish", file.to_str().unwrap(), &url, "--loop"],
        &dir,
    );
    wait_described(&url, "sluice publish --loop", &mut publisher);
    let secs = Duration::from_secs(8);
    let r = ffmpeg_read(&url, "tcp", secs, &dir);
    assert_ffmpeg_read(
        "reader of `sluice publish --loop` (4 s file)",
        &r,
        secs,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    assert!(
        r.exited_by_itself && r.success,
        "the reader did not finish its 8 s normally\n{}",
        r.tail()
    );
    // Still publishing at 10.5 s: well past two and a half loops of the 4 s file.
    let at = started + Duration::from_millis(10_500);
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    assert!(
        publisher.is_running() && describe_status(&url) == Some(200),
        "publish --loop stopped after {:?}:\n{}",
        started.elapsed(),
        publisher.stderr()
    );
}

/// ffmpeg's complaints about timestamps going backwards in a read.
fn backwards_dts(r: &FfmpegReport) -> Vec<String> {
    r.stderr
        .split(['\n', '\r'])
        .filter(|l| {
            l.contains("non monotonically increasing dts") || l.contains("Non-monotonous DTS")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn publish_loop_timestamps_never_go_backwards() {
    let dir = test_dir("cli-publish-loop-ts");
    let server = Server::start("");
    let url = server.url("loop");
    let file = h264_aac_mp4(4, "640x360");
    let mut publisher = sluice_spawn(
        "publish-loop",
        &["publish", file.to_str().unwrap(), &url, "--loop"],
        &dir,
    );
    wait_described(&url, "sluice publish --loop", &mut publisher);
    // 6 s of media from ~0.2 s in: crosses the loop point at 4 s.
    let secs = Duration::from_secs(6);
    let r = ffmpeg_read(&url, "tcp", secs, &dir);
    assert_ffmpeg_read(
        "reader across a loop point",
        &r,
        secs,
        MIN_RATIO,
        "h264",
        Some("aac"),
    );
    let bad = backwards_dts(&r);
    assert!(
        bad.is_empty(),
        "timestamps go backwards at the loop point:\n{}",
        bad.join("\n")
    );
}

#[test]
fn probe_text_and_json_match_the_sdp() {
    let dir = test_dir("cli-probe");
    let (server, _publisher) = live(&media().h264_aac, &dir);
    let url = server.url("cam");
    let r = sluice_run(&["probe", &url], Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.success, "probe failed: {}", r.stderr);
    let video = r
        .stdout
        .lines()
        .find(|l| l.contains("video H264"))
        .unwrap_or_else(|| panic!("no H264 video track line:\n{}", r.stdout));
    assert!(video.contains("640x360"), "{video}");
    let audio = r
        .stdout
        .lines()
        .find(|l| l.to_ascii_uppercase().contains("AUDIO MPEG4-GENERIC"))
        .unwrap_or_else(|| panic!("no MPEG4-GENERIC audio track line:\n{}", r.stdout));
    assert!(audio.contains("48000 Hz"), "{audio}");

    let mut c = RtspClient::connect(server.addr()).expect("connect");
    let (d, _) = describe(&mut c, &url);
    let raw_sdp = d.body_str();
    assert!(
        r.stdout.contains(raw_sdp.trim_end()),
        "text output lacks the SDP\nprobe:\n{}\nDESCRIBE:\n{raw_sdp}",
        r.stdout
    );

    let j = sluice_run(&["probe", "--json", &url], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(j.success, "probe --json failed: {}", j.stderr);
    let v: serde_json::Value = serde_json::from_str(&j.stdout)
        .unwrap_or_else(|e| panic!("probe --json is not JSON ({e}):\n{}", j.stdout));
    let tracks = v["tracks"].as_array().expect("tracks array");
    assert_eq!(tracks.len(), 2, "{v:#}");
    let t0 = &tracks[0];
    assert_eq!(t0["media"], "video", "{t0:#}");
    assert_eq!(t0["encoding"], "H264", "{t0:#}");
    assert_eq!(
        (t0["width"].as_u64(), t0["height"].as_u64()),
        (Some(640), Some(360)),
        "{t0:#}"
    );
    let t1 = &tracks[1];
    assert_eq!(t1["media"], "audio", "{t1:#}");
    assert_eq!(
        t1["encoding"]
            .as_str()
            .map(str::to_ascii_uppercase)
            .as_deref(),
        Some("MPEG4-GENERIC"),
        "{t1:#}"
    );
    assert_eq!(t1["sample_rate"].as_u64(), Some(48000), "{t1:#}");
    assert_eq!(
        v["sdp"].as_str(),
        Some(raw_sdp.as_str()),
        "JSON sdp differs from a raw DESCRIBE's body"
    );
}

#[test]
fn probe_errors_are_clear() {
    let dir = test_dir("cli-probe-errors");
    // Nothing listens.
    let port = free_tcp_port();
    let r = sluice_run(
        &["probe", &format!("rtsp://127.0.0.1:{port}/cam")],
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !r.success,
        "probe of a closed port succeeded:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("cannot connect"),
        "unreachable port: {:?}",
        r.stderr
    );

    // A path with no stream.
    let server = Server::start("");
    let r = sluice_run(&["probe", &server.url("nothing")], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !r.success,
        "probe of a missing path succeeded:\n{}",
        r.stdout
    );
    assert!(r.stderr.contains("404"), "missing path: {:?}", r.stderr);

    // Digest-protected upstream without, then with, credentials.
    let up = GstUpstream::start(
        UpstreamOpts {
            digest: Some(("admin".into(), "s3cret".into())),
            ..Default::default()
        },
        &dir,
    );
    let r = sluice_run(&["probe", &up.url()], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !r.success,
        "probe without credentials succeeded:\n{}",
        r.stdout
    );
    let e = r.stderr.to_ascii_lowercase();
    assert!(
        e.contains("401") || e.contains("authentication"),
        "no-credentials probe: {:?}",
        r.stderr
    );
    let r = sluice_run(
        &["probe", &up.url_with("admin", "s3cret")],
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.success, "probe with credentials failed: {}", r.stderr);
    assert!(r.stdout.contains("video H264"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("s3cret"),
        "password printed:\n{}",
        r.stdout
    );
}
