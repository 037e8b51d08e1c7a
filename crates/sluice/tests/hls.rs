//! LL-HLS as a player meets it, without a browser: ffmpeg publishes over RTSP, the real
//! binary packages, and Python's `m3u8` package parses every playlist (parts, preload
//! hint, server control, skip) while `tests/scripts/hls_check.py` times blocking reloads
//! against a parallel poller; ffmpeg decodes the playlist; ffprobe checks the B-frame
//! decode times and the H.265 (`hvc1`) segments; AV1 and VP9 file sources are named in
//! the multivariant playlist's CODECS and decoded by ffmpeg. Each test publishes its own
//! stream, and they run in parallel.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::media::run_with_timeout;
use common::*;

/// The Python of the test venv (with `m3u8`; see scripts/install-test-deps.sh).
const PYTHON: &str = "/opt/sluice-test-venv/bin/python";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/hls_check.py")
}

/// A server with HTTP on a free port; returns it and the HTTP port.
fn server(extra: &str) -> (Server, u16) {
    let http = free_tcp_port();
    let s = Server::start(&format!(
        "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{http}\"\n[demo]\nenabled = false\n{extra}"
    ));
    (s, http)
}

/// Runs hls_check.py; its JSON output.
fn check(http: u16, path: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script())
        .arg(format!("http://127.0.0.1:{http}/{path}/"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .expect("run hls_check.py (scripts/install-test-deps.sh)");
    let out = child.wait_with_output().expect("hls_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "hls_check.py {args:?}: {e}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && json.get("error").is_none(),
        "hls_check.py {args:?}: {json}"
    );
    json
}

/// `GET path` on the HTTP listener: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, answer) = http_get_as(port, path, None);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// `GET path` with Basic credentials `user:pass`, if given: status and the whole answer
/// (head and body).
fn http_get_as(port: u16, path: &str, basic: Option<&str>) -> (u16, String) {
    use base64::Engine;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = basic.map_or(String::new(), |b| {
        let b = base64::engine::general_purpose::STANDARD.encode(b);
        format!("Authorization: Basic {b}\r\n")
    });
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Publishes `file` (looped) to `path` and lets a couple of GOPs reach the server, so
/// the path "has been live" when the first HLS request comes.
fn publish(server: &Server, file: &Path, path: &str) -> FfmpegPublisher {
    let p = FfmpegPublisher::start(file, &server.url(path), "tcp", &server.dir);
    std::thread::sleep(Duration::from_millis(1500));
    p
}

/// 640x360 25 fps H.264 High with 2 B-frames (x264 `-bf 2`, b-pyramid) + AAC, 1 s GOP.
fn bframes_media() -> PathBuf {
    generate_media(
        "h264_bframes_aac.mp4",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
            "-bf",
            "2",
        ],
    )
}

/// 640x360 25 fps H.265 with x265's B-frame pyramid (`bframes=4`) + AAC, 1 s GOP.
fn hevc_bframes_media() -> PathBuf {
    generate_media(
        "h265_bframes_aac.mp4",
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "bframes=4:b-pyramid=1:keyint=25:min-keyint=25:scenecut=0:log-level=error",
        ],
    )
}

/// Generates (once) 10 s of the test pattern with a sine as AAC, video coded by `video`.
fn generate_media(name: &str, video: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("v1");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join(name);
    if dest.exists() {
        return dest;
    }
    let tmp = dir.join(format!(".{name}.tmp-{}.mp4", std::process::id()));
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "10"])
        .args(video)
        .args(["-g", "25", "-keyint_min", "25", "-sc_threshold", "0"])
        .args(["-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-ar", "48000", "-ac", "1", "-b:a", "64k"])
        .arg(&tmp);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(120)).expect("ffmpeg");
    assert!(status.success(), "generating {name}: {err}");
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// Runs ffprobe with `args` on `file`: stdout.
fn ffprobe_out(file: &Path, args: &[&str]) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(file)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ll_hls_h264_aac_blocking_reloads_parts_and_ffmpeg_decode() {
    let (server, http) = server("");
    let _p = publish(&server, &media().h264_aac, "cams/front");
    // The python checks and an ffmpeg player run side by side.
    let started = Instant::now();
    let figures = check(http, "cams/front", &["full"]);
    println!("LL-HLS H.264+AAC: {figures}");
    let dur = |k: &str| figures[k].as_f64().unwrap_or(f64::MAX);
    assert!(
        dur("first_playlist_ms") <= 250.0,
        "first playlist {} ms",
        dur("first_playlist_ms")
    );
    assert!(
        dur("held_delay_ms_max") <= 20.0,
        "held reload answered {} ms after its part",
        dur("held_delay_ms_max")
    );
    assert_eq!(figures["ahead_status"], 400);
    assert_eq!(figures["ahead_part_status"], 400);
    // At once, not after a hold (3 s); the bound leaves room for a loaded machine.
    assert!(dur("ahead_ms") < 1000.0, "400 after {} ms", dur("ahead_ms"));
    assert!(figures["segments_compared"].as_u64() >= Some(1));
    assert!(figures["skipped_segments"].as_u64() >= Some(1));
    let segments = figures["segments"].as_u64().unwrap_or(0);
    assert!((6..=7).contains(&segments), "{segments} segments (7 kept)");
    assert_eq!(
        figures["part_target"].as_f64(),
        Some(0.2),
        "5 frames of 1/25 s"
    );

    let url = format!("http://127.0.0.1:{http}/cams/front/index.m3u8");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin", "-v", "error", "-i", &url, "-t", "5", "-f", "null", "-",
    ]);
    let t = Instant::now();
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(30)).expect("ffmpeg");
    println!(
        "ffmpeg -i {url} -t 5: {status} in {:.1} s, stderr {:?} (test {:.1} s)",
        t.elapsed().as_secs_f64(),
        err.trim(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        status.success() && err.trim().is_empty(),
        "ffmpeg decode: {status}: {err}"
    );
    assert!(server.log().contains("HLS packager started"));
    // The path counts its HLS clients (by address) as readers.
    let (status, body) = http_get(http, "/v1/paths/cams/front");
    assert_eq!(status, 200, "{body}");
    let path: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hls = path["readers"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["protocol"] == "hls"))
        .unwrap_or_else(|| panic!("no hls readers in {body}"));
    println!("readers: {}", path["readers"]);
    assert_eq!(hls["count"], 1, "one client address: {hls}");
}

#[test]
fn b_frames_get_monotonic_decode_times_and_composition_offsets() {
    check_b_frames(&bframes_media(), "bframes", "h264");
}

#[test]
fn h265_b_frame_pyramids_get_monotonic_decode_times() {
    check_b_frames(&hevc_bframes_media(), "hevc-bframes", "hevc");
}

/// Publishes `file` (with B-frames) to `path`; a downloaded segment must decode, with
/// presentation times never before decode times and decode times increasing.
fn check_b_frames(file: &Path, path: &str, codec: &str) {
    let (server, http) = server("");
    let _p = publish(&server, file, path);
    let out = server.dir.join(format!("{path}-segment.mp4"));
    let got = check(http, path, &["segment", out.to_str().unwrap()]);
    println!("{codec} B-frame segment: {got}");
    let streams = ffprobe_out(
        &out,
        &[
            "-show_entries",
            "stream=codec_name,has_b_frames",
            "-of",
            "csv=p=0",
        ],
    );
    assert!(
        streams.contains(&format!("{codec},1"))
            || streams.contains(&format!("{codec},2"))
            || streams.contains(&format!("{codec},3")),
        "{streams}"
    );
    assert!(streams.contains("aac"), "{streams}");
    let packets = ffprobe_out(
        &out,
        &[
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts,dts",
            "-of",
            "csv=p=0",
        ],
    );
    let mut last_dts = i64::MIN;
    let (mut n, mut reordered) = (0, 0);
    let mut last_pts = i64::MIN;
    for line in packets.lines() {
        let mut it = line.split(',').map(|v| v.trim().parse::<i64>().unwrap());
        let (pts, dts) = (it.next().unwrap(), it.next().unwrap());
        assert!(pts >= dts, "pts {pts} < dts {dts}");
        assert!(dts > last_dts, "dts {dts} after {last_dts}");
        if pts < last_pts {
            reordered += 1;
        }
        last_dts = dts;
        last_pts = pts;
        n += 1;
    }
    println!("{codec} B-frame segment: {n} video packets, {reordered} presented before their predecessor, pts >= dts, dts increasing");
    assert!(
        n >= 20 && reordered >= 5,
        "{n} packets, {reordered} reordered"
    );
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-i"])
        .arg(&out)
        .args(["-f", "null", "-"]);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(30)).unwrap();
    assert!(
        status.success() && err.trim().is_empty(),
        "decoding the segment: {err}"
    );
}

#[test]
fn h265_opus_is_carried_as_hvc1() {
    let (server, http) = server("");
    let _p = publish(&server, &media().h265_opus, "hevc");
    let out = server.dir.join("hevc-segment.mp4");
    let got = check(http, "hevc", &["segment", out.to_str().unwrap()]);
    println!("H.265 segment: {got}");
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        bytes.windows(4).any(|w| w == b"hvc1"),
        "no hvc1 sample entry in init.mp4"
    );
    let streams = ffprobe_out(
        &out,
        &[
            "-show_entries",
            "stream=codec_name,codec_tag_string,width",
            "-of",
            "csv=p=0",
        ],
    );
    println!("ffprobe: {}", streams.trim().replace('\n', "; "));
    assert!(streams.contains("hevc,hvc1,640"), "{streams}");
    assert!(streams.contains("opus"), "{streams}");
}

#[test]
fn a_stalled_source_gets_503_and_unknown_paths_404() {
    let (server, http) = server("");
    let (status, body) = http_get(http, "/nobody/index.m3u8");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not live"), "{body}");
    let mut p = publish(&server, &media().h264_aac, "stall");
    let (status, _) = http_get(http, "/stall/index.m3u8");
    assert_eq!(status, 200);
    // The publisher freezes (its connection stays open): the path stays live without parts.
    p.proc.signal(libc::SIGSTOP);
    let got = check(http, "stall", &["stall"]);
    p.proc.signal(libc::SIGCONT);
    println!("stalled source: {got}");
    assert_eq!(got["status"], 503);
    assert_eq!(got["content_type"], "application/problem+json");
    let target = got["target_duration"].as_f64().unwrap();
    assert_eq!(
        got["retry_after"].as_str(),
        Some(format!("{target}").as_str())
    );
    let held = got["held_s"].as_f64().unwrap();
    assert!(
        held >= 3.0 * target - 0.2 && held <= 3.0 * target + 1.0,
        "held {held} s"
    );
}

#[test]
fn a_codec_hls_cannot_carry_is_refused_by_name() {
    let (server, http) = server("");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "info", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25")
        .args([
            "-t",
            "30",
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
        ])
        .arg(server.url("vp8"));
    let mut p = FfmpegPublisher {
        proc: Proc::spawn("ffmpeg-vp8", cmd, &server.dir),
        url: server.url("vp8"),
    };
    p.wait_publishing(Duration::from_secs(10))
        .expect("VP8 publisher");
    let status = wait_for(Duration::from_secs(5), || {
        let (s, body) = http_get(http, "/vp8/index.m3u8");
        (s != 404).then_some((s, body))
    });
    let (status, body) = status.expect("the path goes live");
    println!("VP8 path: {status} {body}");
    assert_eq!(status, 415);
    assert!(body.contains("VP8"), "{body}");
}

#[test]
fn an_idle_packager_stops_and_restarts_from_the_gop_with_new_numbers() {
    let (server, http) = server("[hls]\nidle_timeout = \"1s\"\n");
    let _p = publish(&server, &media().h264_aac, "idle");
    let first_sequence = |body: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no media sequence in {body}"))
    };
    let (status, body) = http_get(http, "/idle/index.m3u8");
    assert_eq!(status, 200, "{body}");
    let before = first_sequence(&body);
    let stopped = wait_for(Duration::from_secs(5), || {
        server
            .log()
            .contains("HLS packager stopped path=\"idle\" reason=\"idle\"")
            .then_some(())
    });
    assert!(stopped.is_some(), "no idle stop in the log");
    let t = Instant::now();
    let (status, body) = http_get(http, "/idle/index.m3u8");
    let again = t.elapsed();
    assert_eq!(status, 200, "{body}");
    let after = first_sequence(&body);
    println!(
        "restarted packager: first playlist in {:.1} ms, media sequence {before} -> {after}",
        again.as_secs_f64() * 1000.0
    );
    assert!(again <= Duration::from_millis(250));
    assert!(after > before, "a restarted packager reuses numbers");
    let (status, metrics) = http_get(http, "/metrics");
    assert_eq!(status, 200);
    for want in ["sluice_hls_muxers 1", "sluice_hls_muxers_started_total 2"] {
        assert!(metrics.contains(want), "{want} not in /metrics");
    }
}

#[test]
fn hls_needs_the_read_permission_like_rtsp() {
    let users = "[[users]]\nuser = \"cam\"\npass = \"p\"\npermissions = [ { action = \"publish\" } ]\n\
                 [[users]]\nuser = \"viewer\"\npass = \"v\"\npermissions = [ { action = \"read\", path = \"door\" } ]\n";
    let (server, http) = server(users);
    let url = format!("rtsp://cam:p@{}/door", server.addr());
    let _p = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &server.dir);
    let (status, answer) = http_get_as(http, "/door/index.m3u8", None);
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{answer}"
    );
    let (status, answer) = http_get_as(http, "/door/index.m3u8", Some("cam:p"));
    assert_eq!(status, 403, "a publisher may not read: {answer}");
    let (status, answer) = http_get_as(http, "/door/index.m3u8", Some("viewer:v"));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("#EXTM3U"));
    let (status, _) = http_get_as(http, "/door/init.mp4", Some("viewer:v"));
    assert_eq!(status, 200);
    let (status, _) = http_get_as(http, "/door/init.mp4", None);
    assert_eq!(status, 401, "every HLS resource is checked");
    println!("HLS access: anonymous 401, publisher 403, reader 200");
}

#[test]
fn the_mpegts_variant_plays_h264_and_aac() {
    let (server, http) = server("[hls]\nmpegts = true\n");
    let _p = publish(&server, &media().h264_aac, "ts");
    let (status, list) = http_get(http, "/ts/mpegts.m3u8");
    assert_eq!(status, 200, "{list}");
    assert!(list.contains("#EXTINF") && list.contains(".ts"), "{list}");
    let segment = list
        .lines()
        .rfind(|l| l.ends_with(".ts"))
        .expect("a segment");
    let url = format!("http://127.0.0.1:{http}/ts/{segment}");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&url)
        .output()
        .expect("ffprobe");
    let streams = String::from_utf8_lossy(&probe.stdout);
    println!(
        "MPEG-TS segment {segment}: {}",
        streams.trim().replace('\n', ", ")
    );
    assert!(
        streams.contains("h264") && streams.contains("aac"),
        "{streams}"
    );
    let url = format!("http://127.0.0.1:{http}/ts/mpegts.m3u8");
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-nostdin", "-v", "error", "-i", &url, "-t", "3", "-f", "null", "-",
    ]);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(30)).expect("ffmpeg");
    assert!(
        status.success() && err.trim().is_empty(),
        "ffmpeg decode of MPEG-TS: {err}"
    );
    let (status, body) = http_get(http, "/ts/seg1.ts");
    assert_eq!(status, 404, "{body}");
}

/// 640x360 25 fps video coded by `video` with Opus, 1 s GOP, 6 s, in MP4 (for a `file://`
/// source, which publishes it through the codec crate's packetizers).
fn opus_media(name: &str, video: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("v1");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join(name);
    if dest.exists() {
        return dest;
    }
    let tmp = dir.join(format!(".{name}.tmp-{}.mp4", std::process::id()));
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=640x360:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", "6"])
        .args(video)
        .args(["-g", "25", "-keyint_min", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "libopus", "-b:a", "48k"])
        .arg(&tmp);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(120)).expect("ffmpeg");
    assert!(status.success(), "generating {name}: {err}");
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// An AV1 or VP9 file source over LL-HLS: the multivariant playlist names the codec
/// (`codecs_prefix`), both playlists parse, and ffmpeg decodes 3 s of the media playlist.
fn hls_of_file_source(name: &str, file: &Path, codecs_prefix: &str) {
    let (_server, http) = server(&format!(
        "[paths.{name}]\nsource = \"file://{}\"\nloop = true\n",
        file.display()
    ));
    let figures = check(http, name, &["variant"]);
    println!("LL-HLS {name}: {figures}");
    let codecs = figures["codecs"].as_str().unwrap_or_default();
    assert!(codecs.starts_with(codecs_prefix), "CODECS {codecs}");
    assert!(codecs.ends_with(",opus"), "CODECS {codecs}");
    assert_eq!(figures["resolution"], serde_json::json!([640, 360]));
    assert!(figures["independent_parts"].as_u64() >= Some(1));

    // ffmpeg's HLS demuxer reads whole segments only: wait for two.
    let segments = wait_for(Duration::from_secs(10), || {
        let (_, body) = http_get(http, &format!("/{name}/index.m3u8"));
        (body.matches("#EXTINF").count() >= 2).then_some(())
    });
    assert!(
        segments.is_some(),
        "{name}: no two complete segments in 10 s"
    );
    let url = format!("http://127.0.0.1:{http}/{name}/index.m3u8");
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-i", &url, "-t", "3"])
        .args(["-map", "0:v:0", "-f", "framecrc", "-"]);
    let t = Instant::now();
    let out = cmd.output().expect("ffmpeg");
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "ffmpeg -i {url} -t 3: {} in {:.1} s, {frames} frames decoded, stderr {:?}",
        out.status,
        t.elapsed().as_secs_f64(),
        err.trim()
    );
    assert!(out.status.success(), "ffmpeg decode: {err}");
    assert!(
        (70..=80).contains(&frames),
        "{frames} frames in 3 s at 25 fps"
    );
}

#[test]
fn ll_hls_av1_file_source_names_its_codec_and_decodes() {
    let file = opus_media(
        "av1_opus.mp4",
        &[
            "-c:v",
            "libaom-av1",
            "-cpu-used",
            "8",
            "-usage",
            "realtime",
            "-b:v",
            "400k",
        ],
    );
    hls_of_file_source("av1", &file, "av01.0.");
}

#[test]
fn ll_hls_vp9_file_source_names_its_codec_and_decodes() {
    let file = opus_media(
        "vp9_opus.mp4",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
        ],
    );
    hls_of_file_source("vp9", &file, "vp09.00.");
}
