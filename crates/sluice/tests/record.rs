//! Server recording (issue 25, the recorder): real ffmpeg publishers, the real `sluice`
//! binary, the segment files checked with ffmpeg/ffprobe and the index read back with
//! `sluice-archive`. Parts are 1 s; the segment test runs at the full scale (40 s
//! of three codec pairs, 10 s segments, published side by side), the other cases use short
//! segments (2–4 s); the cases run in parallel.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use common::media::run_with_timeout;
use common::{free_tcp_port, FfmpegPublisher, Server};
use sluice_archive::{Index, SegmentRecord};

/// 640x360 25 fps H.264 Main with B-frames (2 between references, 1 s GOP) + AAC 48 kHz,
/// `secs` long.
fn bframes_file(secs: u32) -> PathBuf {
    h264_file(secs, "aac")
}

/// 640x360 25 fps H.264 Main with B-frames (2 between references, 1 s GOP) + `audio`
/// (`aac`: AAC 48 kHz in MP4; `pcmu`: G.711 µ-law 8 kHz in 20 ms packets, as cameras send
/// it, in Matroska, which keeps them so), `secs` long.
fn h264_file(secs: u32, audio: &str) -> PathBuf {
    // One lock per file: tests asking for the same file wait for one generation, while
    // different files are made side by side.
    type Locks = std::sync::Mutex<HashMap<(u32, String), Arc<std::sync::Mutex<()>>>>;
    static FILES: OnceLock<Locks> = OnceLock::new();
    let lock = FILES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry((secs, audio.to_owned()))
        .or_default()
        .clone();
    let _g = lock.lock().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("test-media")
        .join("rec");
    std::fs::create_dir_all(&dir).unwrap();
    let ext = if audio == "aac" { "mp4" } else { "mkv" };
    let dest = dir.join(format!("h264_bframes_{audio}_{secs}s.{ext}"));
    if dest.exists() {
        return dest;
    }
    let tmp = dir.join(format!(".tmp-{}-{audio}-{secs}.{ext}", std::process::id()));
    let (sample_rate, source) = if audio == "aac" {
        ("48000", "sine=frequency=440:sample_rate=48000")
    } else {
        (
            "8000",
            "sine=frequency=440:sample_rate=8000:samples_per_frame=160",
        )
    };
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
        .args(["-f", "lavfi", "-i"])
        .arg(source)
        .args(["-t", &secs.to_string(), "-map", "0:v", "-map", "1:a"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-profile:v",
            "main",
            "-bf",
            "2",
        ])
        .args([
            "-g",
            "25",
            "-keyint_min",
            "25",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(match audio {
            "aac" => &["-c:a", "aac", "-b:a", "64k"][..],
            _ => &["-c:a", "pcm_mulaw"][..],
        })
        .args(["-ar", sample_rate, "-ac", "1"])
        .args(if ext == "mp4" {
            &["-movflags", "+faststart"][..]
        } else {
            &[][..]
        })
        .arg(&tmp);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(120)).unwrap();
    assert!(status.success(), "generating {dest:?}: {err}");
    std::fs::rename(&tmp, &dest).unwrap();
    dest
}

/// A server recording into `<its dir>/rec` with `record` appended to `[record]`, and an
/// HTTP listener.
fn start(record: &str, more: &str) -> (Server, SocketAddr, PathBuf) {
    let dir = common::test_dir("record");
    let rec = dir.join("rec");
    let http = free_tcp_port();
    let server = Server::start_in_dir(
        &dir,
        None,
        &format!(
            "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{http}\"\n[demo]\nenabled = false\n\
             [record]\ndir = \"{}\"\npart_duration = \"1s\"\n{record}\n{more}",
            rec.display()
        ),
    );
    (server, SocketAddr::from(([127, 0, 0, 1], http)), rec)
}

/// One HTTP/1.1 request (Connection: close); returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Chunked answers (axum's JSON has a length, metrics may not): keep the raw text.
    (status, body.to_owned())
}

/// `ffmpeg -v error -xerror -i FILE -f null -`: (success, stderr).
fn decodes(file: &Path) -> (bool, String) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-xerror", "-i"])
        .arg(file)
        .args(["-f", "null", "-"]);
    let (status, err) = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    (status.success(), err)
}

/// ffprobe of a file: per stream (codec_type, start_time), the first video frame's
/// key_frame flag, and the video size.
struct FileProbe {
    video_start: Option<f64>,
    video_codec: String,
    audio_start: Option<f64>,
    audio_codec: String,
    first_key: bool,
    size: (u32, u32),
}

fn probe_file(file: &Path) -> FileProbe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,start_time,width,height",
            "-of",
            "compact=p=0",
        ])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut p = FileProbe {
        video_start: None,
        video_codec: String::new(),
        audio_start: None,
        audio_codec: String::new(),
        first_key: false,
        size: (0, 0),
    };
    for line in text.lines() {
        let field = |k: &str| {
            line.split('|')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        let start = field("start_time").and_then(|s| s.parse().ok());
        match field("codec_type").as_deref() {
            Some("video") => {
                p.video_start = start;
                p.video_codec = field("codec_name").unwrap_or_default();
                p.size = (
                    field("width").and_then(|s| s.parse().ok()).unwrap_or(0),
                    field("height").and_then(|s| s.parse().ok()).unwrap_or(0),
                );
            }
            Some("audio") => {
                p.audio_start = start;
                p.audio_codec = field("codec_name").unwrap_or_default();
            }
            _ => {}
        }
    }
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-read_intervals",
            "%+#1",
        ])
        .args(["-show_entries", "frame=key_frame", "-of", "compact=p=0"])
        .arg(file)
        .output()
        .unwrap();
    p.first_key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .is_some_and(|l| l.contains("key_frame=1"));
    p
}

/// The index's segments of `path` (the server must be stopped: redb locks its file).
fn indexed(rec: &Path, path: &str) -> Vec<SegmentRecord> {
    let index = Index::open(rec).expect("open the index");
    index
        .segments(
            path,
            SystemTime::UNIX_EPOCH,
            SystemTime::now() + Duration::from_secs(3600),
        )
        .unwrap()
}

/// Publishes `file` once (no loop) to `url`, waiting until ffmpeg is done.
fn publish_once(file: &Path, url: &str, dir: &Path) -> common::Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "info", "-re", "-i"])
        .arg(file)
        .args([
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
        ])
        .arg(url);
    common::Proc::spawn(
        &format!("pub-{}", url.rsplit('/').next().unwrap()),
        cmd,
        dir,
    )
}

/// Checks the closed segments of one recording: decodable with empty stderr, keyframe
/// first, durations within the segment target, abutting within a frame, summing to the
/// Waits for `path`'s last segment to complete with reason `stop` (its stream ended).
fn wait_final_segment(server: &Server, path: &str) {
    server
        .wait_log_line(Duration::from_secs(10), |l| {
            l.contains("segment completed")
                && l.contains(&format!("path={path} "))
                && l.contains("stop")
        })
        .unwrap_or_else(|| {
            panic!(
                "{path}: no final segment\n{}",
                common::tail(&server.log(), 30)
            )
        });
}

/// published duration; returns the largest A/V start difference and each file's probe.
fn check_segments(
    what: &str,
    rec: &Path,
    segs: &[SegmentRecord],
    target: Duration,
    published: Duration,
) -> (f64, Vec<FileProbe>) {
    assert!(segs.len() >= 2, "{what}: {} segments", segs.len());
    let mut av_max: f64 = 0.0;
    let mut probes = Vec::new();
    let total: Duration = segs.iter().map(|s| s.media_end).sum();
    for (i, s) in segs.iter().enumerate() {
        let file = rec.join(&s.path);
        let (ok, err) = decodes(&file);
        assert!(
            ok && err.trim().is_empty(),
            "{what}: {} does not decode cleanly: {err}",
            s.path
        );
        let p = probe_file(&file);
        assert!(
            p.first_key,
            "{what}: {} does not start with a keyframe",
            s.path
        );
        let (Some(v), Some(a)) = (p.video_start, p.audio_start) else {
            panic!("{what}: {} lacks video or audio", s.path);
        };
        av_max = av_max.max((v - a).abs());
        let last = i + 1 == segs.len();
        let d = s.media_end.as_secs_f64();
        let t = target.as_secs_f64();
        println!(
            "{what}: {} {:.3} s, {} parts, {} bytes, v/a start {v:.3}/{a:.3} ({} {}x{}, {})",
            s.path,
            d,
            s.parts.len(),
            s.bytes,
            p.video_codec,
            p.size.0,
            p.size.1,
            p.audio_codec
        );
        // The last segment ends with the stream, so only its upper bound applies.
        assert!(
            d <= t + 1.0 && (last || d >= t - 0.5),
            "{what}: segment {} lasts {d:.3} s (target {t} s)",
            s.path
        );
        if let Some(next) = segs.get(i + 1) {
            let gap = match next.start_wall.duration_since(s.end_wall) {
                Ok(g) => g.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            assert!(
                gap.abs() <= 0.040,
                "{what}: {} and the next are {gap:.3} s apart",
                s.path
            );
        }
        probes.push(p);
    }
    let sum = total.as_secs_f64();
    println!("{what}: {} segments, {sum:.3} s in all (published {published:?}), A/V start differs by at most {:.0} ms", segs.len(), av_max * 1000.0);
    assert!(
        (sum - published.as_secs_f64()).abs() <= 1.0,
        "{what}: {sum:.3} s recorded of {published:?}"
    );
    (av_max, probes)
}

/// 640x360 25 fps H.265 (1 s GOP, no B-frames) + Opus 48 kHz, `secs` long.
fn h265_opus_file(secs: u32) -> PathBuf {
    common::media::lavfi_clip(
        &format!("h265_opus_{secs}s.mkv"),
        secs,
        48000,
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "bframes=0:keyint=25:min-keyint=25:scenecut=0:log-level=error",
            "-c:a",
            "libopus",
            "-ar",
            "48000",
            "-ac",
            "1",
            "-b:a",
            "64k",
        ],
    )
}

/// The segment test at full scale: H.264 with B-frames + AAC, H.265 + Opus and
/// H.264 + PCMU, 40 s each, published at the same time to three recorded paths of one
/// server (10 s segments, 1 s parts): every closed segment decodes with `-xerror` and
/// empty stderr, starts with a keyframe, lasts 9.5–11 s and abuts the next within a
/// frame; the durations sum to 40 ± 1 s; audio and video start within 50 ms; nothing
/// dropped.
///
/// The longest test of this binary: its name sorts first so that libtest starts it first.
#[test]
fn abutting_segments_decode_and_start_with_keyframes() {
    const SECS: u32 = 40;
    const SEGMENT: Duration = Duration::from_secs(10);
    // The three inputs are made side by side (cached after the first run).
    let (bf, (hevc_file, ulaw)) = std::thread::scope(|scope| {
        let hevc = scope.spawn(|| h265_opus_file(SECS));
        let ulaw = scope.spawn(|| h264_file(SECS, "pcmu"));
        let bf = bframes_file(SECS);
        (bf, (hevc.join().unwrap(), ulaw.join().unwrap()))
    });
    let (mut server, api, rec) = start(
        &format!(
            "paths = [\"bf\", \"hevc\", \"pcmu\"]\nsegment_duration = \"{}s\"",
            SEGMENT.as_secs()
        ),
        "",
    );
    let published = Instant::now();
    let mut a = publish_once(&bf, &server.url("bf"), &server.dir);
    let mut b = publish_once(&hevc_file, &server.url("hevc"), &server.dir);
    let mut c = publish_once(&ulaw, &server.url("pcmu"), &server.dir);
    for (name, p) in [("bf", &mut a), ("hevc", &mut b), ("pcmu", &mut c)] {
        assert!(
            p.wait_timeout(Duration::from_secs(u64::from(SECS) + 30))
                .is_some(),
            "{name}: publisher still running"
        );
    }
    println!(
        "three publishers of {SECS} s done after {:.1} s",
        published.elapsed().as_secs_f64()
    );
    // The streams ended: their last segments complete with reason "stop".
    for path in ["bf", "hevc", "pcmu"] {
        wait_final_segment(&server, path);
    }
    let (_, metrics) = http(api, "GET", "/metrics", "");
    for path in ["bf", "hevc", "pcmu"] {
        let dropped = format!("sluice_record_dropped_total{{path=\"{path}\"}} 0");
        assert!(metrics.contains(&dropped), "{path}: drops:\n{metrics}");
    }
    let (status, list) = http(api, "GET", "/v1/recordings", "");
    assert_eq!(status, 200, "{list}");
    assert!(
        list.contains("\"path\":\"bf\"") && list.contains("\"path\":\"hevc\""),
        "{list}"
    );
    server.signal(15);
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let bf_segs = indexed(&rec, "bf");
    let hevc_segs = indexed(&rec, "hevc");
    let pcmu_segs = indexed(&rec, "pcmu");
    // The paths' files are checked side by side (decoding them is most of the test's time).
    std::thread::scope(|scope| {
        let hevc = scope.spawn(|| {
            let (av, _) = check_segments(
                "h265+opus",
                &rec,
                &hevc_segs,
                SEGMENT,
                Duration::from_secs(SECS.into()),
            );
            assert!(av <= 0.050, "h265+opus: A/V start differs by {av:.3} s");
        });
        let pcmu = scope.spawn(|| {
            let (av, _) = check_segments(
                "h264+pcmu",
                &rec,
                &pcmu_segs,
                SEGMENT,
                Duration::from_secs(SECS.into()),
            );
            assert!(av <= 0.050, "h264+pcmu: A/V start differs by {av:.3} s");
            let codec = probe_file(&rec.join(&pcmu_segs[0].path)).audio_codec;
            assert_eq!(codec, "pcm_mulaw", "h264+pcmu: audio codec");
        });
        let (av, _) = check_segments(
            "h264+aac",
            &rec,
            &bf_segs,
            SEGMENT,
            Duration::from_secs(SECS.into()),
        );
        // Tracks are aligned by the publisher's Sender Reports; with B-frames a segment's
        // first picture is presented a reorder delay (2 frames, 80 ms here) after its
        // start, and so is its first audio frame.
        assert!(av <= 0.050, "h264+aac: A/V start differs by {av:.3} s");
        for t in [hevc, pcmu] {
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    // `sluice recordings reindex` rebuilds the same index from the files alone.
    std::fs::remove_file(rec.join("index.redb")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["recordings", "reindex"])
        .arg(&rec)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{}", said.trim());
    assert!(
        out.status.success() && said.contains("segments of 3 paths"),
        "{said}"
    );
    let rebuilt = indexed(&rec, "bf");
    assert_eq!(rebuilt.len(), bf_segs.len());
    for (a, b) in rebuilt.iter().zip(&bf_segs) {
        assert_eq!(
            (&a.path, a.parts.len(), a.bytes),
            (&b.path, b.parts.len(), b.bytes)
        );
    }
}

/// `secs` of 640x360 25 fps AV1 (libaom realtime) or VP9 (libvpx realtime), 1 s GOP,
/// + Opus 48 kHz, in MP4 (AV1: what `sluice publish` reads) or WebM (VP9).
fn av1_vp9_opus_file(codec: &str, secs: u32) -> PathBuf {
    let (name, video): (String, &[&str]) = match codec {
        "av1" => (
            format!("rec_av1_opus_{secs}s.mp4"),
            &["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8"],
        ),
        _ => (
            format!("rec_vp9_opus_{secs}s.webm"),
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
            ],
        ),
    };
    let mut args = video.to_vec();
    args.extend([
        "-b:v",
        "600k",
        "-g",
        "25",
        "-keyint_min",
        "25",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "libopus",
        "-ar",
        "48000",
        "-ac",
        "1",
        "-b:a",
        "48k",
    ]);
    common::media::lavfi_clip(&name, secs, 48000, &args)
}

/// AV1 + Opus and VP9 + Opus published over RTSP at the same time to two recorded paths
/// (2 s segments, 1 s parts): every closed segment decodes with `-xerror` and empty
/// stderr, starts with a keyframe, and ffprobe reports the codec (`av1`, `vp9`), 640x360
/// and Opus; the segments last their target, abut and sum to what was published.
///
/// ffmpeg 5.1 publishes the VP9 (its RTP VP9 packetizer needs `-strict experimental`).
/// Neither ffmpeg 5.1 nor GStreamer 1.22 (without the Rust plugins) has an AV1 RTP
/// payloader, so `sluice publish` (the client crate's packetizer, ANNOUNCE/RECORD over
/// TCP) sends the AV1.
#[test]
fn av1_and_vp9_publications_are_recorded() {
    const SECS: u32 = 8;
    const SEGMENT: Duration = Duration::from_secs(2);
    let (av1, vp9) = std::thread::scope(|scope| {
        let vp9 = scope.spawn(|| av1_vp9_opus_file("vp9", SECS));
        (av1_vp9_opus_file("av1", SECS), vp9.join().unwrap())
    });
    let (mut server, _api, rec) = start(
        &format!(
            "paths = [\"av1\", \"vp9\"]\nsegment_duration = \"{}s\"",
            SEGMENT.as_secs()
        ),
        "",
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("publish").arg(&av1).arg(server.url("av1"));
    let mut a = common::Proc::spawn("pub-av1", cmd, &server.dir);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-hide_banner", "-loglevel", "info", "-re", "-i"])
        .arg(&vp9)
        .args(["-map", "0", "-c", "copy", "-strict", "experimental"])
        .args(["-f", "rtsp", "-rtsp_transport", "tcp"])
        .arg(server.url("vp9"));
    let mut b = common::Proc::spawn("pub-vp9", cmd, &server.dir);
    for (name, p) in [("av1", &mut a), ("vp9", &mut b)] {
        let status = p.wait_timeout(Duration::from_secs(u64::from(SECS) + 20));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: publisher {status:?}\n{}",
            common::tail(&p.stderr(), 20)
        );
    }
    for path in ["av1", "vp9"] {
        wait_final_segment(&server, path);
    }
    server.signal(15);
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    for (path, codec) in [("av1", "av1"), ("vp9", "vp9")] {
        let segs = indexed(&rec, path);
        let what = format!("{codec}+opus");
        let (av, probes) = check_segments(
            &what,
            &rec,
            &segs,
            SEGMENT,
            Duration::from_secs(SECS.into()),
        );
        assert!(av <= 0.050, "{what}: A/V start differs by {av:.3} s");
        for (s, p) in segs.iter().zip(&probes) {
            assert_eq!(
                (p.video_codec.as_str(), p.size, p.audio_codec.as_str()),
                (codec, (640, 360), "opus"),
                "{what}: {}",
                s.path
            );
        }
    }
}

/// Kill -9 at random moments (10 runs): the restarted server is ready within 5 s, the
/// segment left open is recovered (its file decodes and holds the media up to the kill
/// minus one part and 0.5 s), the `segment_completed` event with reason `recovered`
/// reaches a command hook, and recording goes on in a new segment.
#[test]
fn kill_9_recovers_the_open_segment() {
    let events = common::test_dir("record-events").join("events.jsonl");
    let hook = format!(
        "[[hooks.command]]\nargv = [\"sh\", \"-c\", \"cat >> {} && echo >> {}\"]\nevents = [\"segment_completed\"]\n",
        events.display(),
        events.display()
    );
    let (mut server, _api, rec) = start("paths = [\"cam\"]\nsegment_duration = \"30s\"", &hook);
    let file = bframes_file(12);
    let (mut worst_ready, mut worst_lost) = (Duration::ZERO, Duration::ZERO);
    for run in 0..10 {
        let mut publisher = FfmpegPublisher::start(&file, &server.url("cam"), "tcp", &server.dir);
        server
            .wait_log_line(Duration::from_secs(10), |l| l.contains("segment created"))
            .expect("recording started");
        // A random moment 1.2–2 s into the segment (after its first 1 s part, so that
        // there is something to recover; short, so that 10 runs stay near 40 s).
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let wait = Duration::from_millis(1200 + u64::from(nanos % 800));
        std::thread::sleep(wait);
        let killed_at = SystemTime::now();
        server.signal(9);
        publisher.kill();
        let t = Instant::now();
        server.restart();
        let ready = t.elapsed();
        let recovered = common::wait_for(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&events).ok()?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("\"recovered\""))
                .map(str::to_owned)
                .collect();
            lines.get(run).cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "run {run}: no recovered event\n{}",
                common::tail(&server.log(), 30)
            )
        });
        let v: serde_json::Value = serde_json::from_str(&recovered).unwrap();
        let end = humantime::parse_rfc3339_weak(v["end"].as_str().unwrap()).unwrap();
        let lost = killed_at.duration_since(end).unwrap_or_default();
        let path = rec.join(v["file"].as_str().unwrap());
        let (ok, err) = decodes(&path);
        println!(
            "run {run}: killed {wait:?} into the recording; restart ready in {ready:?}; recovered {} ({} bytes) ends {lost:?} before the kill",
            v["file"], v["bytes"]
        );
        assert!(
            ready <= Duration::from_secs(5),
            "run {run}: ready after {ready:?}"
        );
        assert!(
            ok && err.trim().is_empty(),
            "run {run}: recovered file: {err}"
        );
        assert!(
            lost <= Duration::from_millis(1500),
            "run {run}: lost {lost:?} (part 1 s + 0.5 s)"
        );
        worst_ready = worst_ready.max(ready);
        worst_lost = worst_lost.max(lost);
    }
    println!("10 kills: restart ready in at most {worst_ready:?}; recovered segments end at most {worst_lost:?} before the kill");
    // Recording goes on after the last restart.
    let _publisher = FfmpegPublisher::start(&file, &server.url("cam"), "tcp", &server.dir);
    server
        .wait_log_line(Duration::from_secs(10), |l| l.contains("segment created"))
        .expect("recording continues after recovery");
    // Every file in the directory decodes once recovered (a last kill, a last restart).
    server.signal(9);
    server.restart();
    server
        .wait_log_line(Duration::from_secs(5), |l| {
            // A segment killed before its first part has nothing to keep.
            l.contains("segment recovered") || l.contains("open segment dropped")
        })
        .expect("the last open segment recovered");
    server.signal(15);
    std::thread::sleep(Duration::from_millis(300));
    for f in walk(&rec) {
        if f.extension().is_some_and(|e| e == "mp4") {
            let (ok, err) = decodes(&f);
            assert!(ok, "{f:?}: {err}");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Retention by bytes and by age, each within one segment of its limit, and a locked
/// range that survives it; runtime stop and start through the API.
#[test]
fn retention_by_bytes_and_age_keeps_locked_ranges() {
    let record = "paths = [\"bytes\", \"age\"]\nsegment_duration = \"2s\"";
    let more = "[paths.bytes]\nsource = \"publisher\"\nrecord_retain_bytes = \"1200KB\"\n[paths.age]\nsource = \"publisher\"\nrecord_retain_age = \"3s\"\n";
    let (server, api, _rec) = start(record, more);
    let file = bframes_file(12);
    let lock_start = SystemTime::now();
    let lock = format!(
        "{{\"path\":\"age\",\"start\":\"{}\",\"end\":\"{}\",\"reason\":\"incident\"}}",
        humantime::format_rfc3339(lock_start),
        humantime::format_rfc3339(lock_start + Duration::from_secs(3))
    );
    let (status, body) = http(api, "POST", "/v1/recordings/locks", &lock);
    assert_eq!(status, 201, "{body}");
    let mut a = FfmpegPublisher::start(&file, &server.url("bytes"), "tcp", &server.dir);
    let mut b = FfmpegPublisher::start(&file, &server.url("age"), "tcp", &server.dir);
    std::thread::sleep(Duration::from_secs(8));
    for reason in ["bytes", "age"] {
        server
            .wait_log_line(Duration::from_secs(4), |l| {
                l.contains("recording deleted") && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("nothing deleted for {reason}"));
    }
    let (_, list) = http(api, "GET", "/v1/recordings", "");
    let list: serde_json::Value =
        serde_json::from_str(&list).unwrap_or_else(|e| panic!("{e}: {list}"));
    let entry = |p: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .cloned()
            .unwrap()
    };
    let bytes = entry("bytes");
    let age = entry("age");
    println!("after 8 s: {bytes}\n{age}");
    // About 450 kB per 2 s segment: within one segment of the limit.
    let stored = bytes["bytes"].as_u64().unwrap();
    assert!(stored <= 1_200_000 + 600_000, "bytes: {stored} stored");
    assert!(
        server.log().contains("reason=\"bytes\""),
        "nothing deleted for bytes"
    );
    // Age: the locked first segment stays; the others are at most 3 s + a segment old.
    let first = humantime::parse_rfc3339_weak(age["first"].as_str().unwrap()).unwrap();
    assert!(
        first < lock_start + Duration::from_secs(3),
        "the locked segment was deleted"
    );
    assert!(
        server.log().contains("reason=\"age\""),
        "nothing deleted for age"
    );
    let segments = age["segments"].as_u64().unwrap();
    assert!(segments <= 1 + 2 + 2, "age: {segments} segments kept");
    // Stop and start recording at runtime.
    let (status, _) = http(api, "DELETE", "/v1/recordings/active/bytes", "");
    assert_eq!(status, 204);
    server
        .wait_log_line(Duration::from_secs(5), |l| {
            l.contains("recording stopped") && l.contains("path=bytes")
        })
        .expect("stopped");
    let (status, _) = http(api, "POST", "/v1/recordings/active/bytes", "");
    assert_eq!(status, 204);
    let (_, locks) = http(api, "GET", "/v1/recordings/locks?path=age", "");
    assert!(locks.contains("incident"), "{locks}");
    a.kill();
    b.kill();
}

/// Unmounts a tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Disk full on a small tmpfs: recording pauses (one log line), an RTSP reader keeps
/// playing, and a new segment starts within 2 s of space returning.
#[test]
fn disk_full_pauses_recording_and_keeps_the_relay() {
    if !common::is_root() {
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = common::test_dir("record-full");
    let rec = dir.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&rec)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let _mount = Mount(rec.clone());
    // Leave about 1.5 MB: a few seconds of the stream.
    let filler = rec.join("filler");
    std::fs::write(&filler, vec![0u8; 4_500_000]).unwrap();
    let http_port = free_tcp_port();
    let server = Server::start_in_dir(
        &dir,
        None,
        &format!(
            "transports = [\"tcp\"]\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n[demo]\nenabled = false\n\
             [record]\ndir = \"{}\"\npaths = [\"cam\"]\nsegment_duration = \"2s\"\n",
            rec.display()
        ),
    );
    let file = bframes_file(12);
    let _publisher = FfmpegPublisher::start(&file, &server.url("cam"), "tcp", &server.dir);
    server
        .wait_log_line(Duration::from_secs(20), |l| l.contains("disk full"))
        .unwrap_or_else(|| panic!("no disk full\n{}", common::tail(&server.log(), 30)));
    let r = common::ffmpeg_read(&server.url("cam"), "tcp", Duration::from_secs(3), &dir);
    println!(
        "while the disk is full a reader decoded {} video frames in 3 s",
        r.video_frames
    );
    assert!(
        r.video_frames >= common::min_frames(Duration::from_secs(3), 0.85),
        "{}",
        r.tail()
    );
    let full_lines = server
        .log()
        .lines()
        .filter(|l| l.contains("disk full"))
        .count();
    assert_eq!(full_lines, 1, "one log line while paused");
    let created_before = server.log().matches("segment created").count();
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    common::wait_for(Duration::from_secs(5), || {
        (server.log().matches("segment created").count() > created_before).then_some(())
    })
    .unwrap_or_else(|| panic!("no new segment\n{}", common::tail(&server.log(), 30)));
    let took = freed.elapsed();
    println!("a new segment started {took:?} after space returned");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    // The index took its failed writes in its stride: the new segment is indexed.
    let freed_wall = SystemTime::now() - freed.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let mut server = server;
    server.signal(15);
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let segs = indexed(&rec, "cam");
    let disk_full = segs.iter().filter(|s| s.start_wall < freed_wall).count();
    let after = segs.iter().filter(|s| s.start_wall >= freed_wall).count();
    println!("indexed: {disk_full} segments before space returned, {after} after");
    assert!(
        after >= 1,
        "the segment after space returned is not indexed"
    );
}

/// 4 s of 640x360 then 4 s of 320x180 H.264 (1 s GOP, in-band parameter sets), one
/// MPEG-TS stream.
fn resolution_change_file() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("test-media")
            .join("rec");
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("resize.ts");
        if dest.exists() {
            return dest;
        }
        let mut all = Vec::new();
        for (i, size) in ["640x360", "320x180"].iter().enumerate() {
            let part = dir.join(format!(".resize-{}-{i}.ts", std::process::id()));
            let mut cmd = Command::new("ffmpeg");
            cmd.args([
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc2=size={size}:rate=25"))
            .args([
                "-t",
                "4",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "25",
            ])
            .args([
                "-bf",
                "0",
                "-pix_fmt",
                "yuv420p",
                "-output_ts_offset",
                &(i * 4).to_string(),
            ])
            .args(["-f", "mpegts"])
            .arg(&part);
            let (status, err) = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
            assert!(status.success(), "{err}");
            all.extend(std::fs::read(&part).unwrap());
            let _ = std::fs::remove_file(&part);
        }
        let tmp = dir.join(format!(".resize-{}.ts", std::process::id()));
        std::fs::write(&tmp, all).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    })
    .clone()
}

/// A resolution change mid-recording starts a new segment (reason `params_changed`)
/// whose file ffprobe reports at the new size.
#[test]
fn resolution_change_starts_a_new_segment() {
    let (mut server, _api, rec) = start("paths = [\"resize\"]\nsegment_duration = \"20s\"", "");
    let mut p = publish_once(
        &resolution_change_file(),
        &server.url("resize"),
        &server.dir,
    );
    assert!(
        p.wait_timeout(Duration::from_secs(20)).is_some(),
        "publisher still running"
    );
    server
        .wait_log_line(Duration::from_secs(10), |l| {
            l.contains("segment completed") && l.contains("stop")
        })
        .unwrap_or_else(|| panic!("no final segment\n{}", common::tail(&server.log(), 30)));
    assert!(
        server.log().contains("reason=\"params_changed\""),
        "{}",
        common::tail(&server.log(), 30)
    );
    server.signal(15);
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let segs = indexed(&rec, "resize");
    let sizes: Vec<(u32, u32)> = segs
        .iter()
        .map(|s| probe_file(&rec.join(&s.path)).size)
        .collect();
    println!(
        "segments and sizes: {:?}",
        segs.iter().map(|s| &s.path).zip(&sizes).collect::<Vec<_>>()
    );
    assert_eq!(sizes, [(640, 360), (320, 180)]);
    for s in &segs {
        let (ok, err) = decodes(&rec.join(&s.path));
        assert!(ok && err.trim().is_empty(), "{}: {err}", s.path);
    }
}
