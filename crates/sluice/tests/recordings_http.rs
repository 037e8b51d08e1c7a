//! Recordings played back over HTTP, as a user checks them: segment files written by the
//! archive writer (from a 30 s H.264 + AAC test pattern, 10 s segments, 1 s parts: three
//! abutting files whose decode times continue from file to file; then a second 5 s
//! recording after a 10 s gap, and a third of 3 s right after it by a restarted writer,
//! whose decode times start anew) and indexed, then served by the real binary:
//!
//! - the timeline names both spans and the gaps;
//! - `export.mp4` over the three abutting files: HEAD and ranged GETs are byte-exact slices
//!   of the full GET, ffprobe reads the URL, and `ffmpeg -ss 20 -i URL` decodes the
//!   source's frame at 20 s (PSNR);
//! - the HLS VOD: one `EXT-X-MAP` (the inits are byte-identical), a discontinuity only at
//!   the gap and at the restart, none between abutting files of one run; `ffmpeg -i
//!   …index.m3u8… -c copy` over the three files gives the range's duration within a part,
//!   and over a range across a file boundary the asked one; the first PROGRAM-DATE-TIME is
//!   the index's first segment start;
//! - `playback` is needed on the path (an anonymous visitor without it gets 401).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use sluice_media::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentRecord, SegmentWriter};

use common::{free_tcp_port, test_dir, Server};

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn http(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// Writes `source`'s samples from `from_s` for `secs` seconds as archive segments into
/// `dir/cam/`, the first sample at wall clock `t0`; returns their records.
fn record(source: &Path, dir: &Path, t0: SystemTime, from_s: f64, secs: f64) -> Vec<SegmentRecord> {
    let mut demux = sluice_media::open(source).expect("open the source");
    let tracks = demux.info().tracks.clone();
    let params: Vec<_> = tracks.iter().map(|t| t.params.clone()).collect();
    let config = ArchiveConfig {
        part_duration: Duration::from_secs(1),
        segment_duration: Duration::from_secs(10),
        ..ArchiveConfig::default()
    };
    let mut w = SegmentWriter::new(params.clone(), config).expect("writer");
    let mut first: Option<f64> = None;
    std::fs::create_dir_all(dir.join("cam")).unwrap();
    let mut records = Vec::new();
    let mut file: Option<(std::fs::File, String)> = None;
    let mut drain = |w: &mut SegmentWriter, file: &mut Option<(std::fs::File, String)>| {
        while let Some(o) = w.poll_output() {
            match o {
                ArchiveOutput::SegmentStarted { init, wall, .. } => {
                    let micros = wall
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_micros();
                    let rel = format!("cam/{micros}.mp4");
                    let mut f = std::fs::File::create(dir.join(&rel)).unwrap();
                    f.write_all(&init).unwrap();
                    *file = Some((f, rel));
                }
                ArchiveOutput::Part { bytes, .. } => {
                    file.as_mut().unwrap().0.write_all(&bytes).unwrap();
                }
                ArchiveOutput::SegmentEnded { mut record, .. } => {
                    record.path = file.take().unwrap().1;
                    records.push(record);
                }
            }
        }
    };
    while let Some(s) = demux.next_sample().expect("sample") {
        let t = &tracks[s.track];
        let secs_at = s.dts as f64 / f64::from(t.timescale);
        if secs_at < from_s {
            continue;
        }
        if secs_at >= from_s + secs {
            break;
        }
        let rate = i64::from(params[s.track].clock_rate());
        let scale = |v: i64| v * rate / i64::from(t.timescale);
        let zero = *first.get_or_insert(from_s);
        let wall = t0 + Duration::from_secs_f64(secs_at - zero);
        w.push(
            Frame {
                track: s.track,
                dts: scale(s.dts),
                pts: scale(s.pts),
                keyframe: s.keyframe,
                data: s.data,
            },
            wall,
        );
        drain(&mut w, &mut file);
    }
    w.finish();
    drain(&mut w, &mut file);
    records
}

fn ffmpeg(args: &[&str]) -> std::process::Output {
    Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg")
}

/// PSNR (dB, `inf` as 100) of two images.
fn psnr(a: &Path, b: &Path) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args(["-lavfi", "psnr", "-f", "null", "-"])
        .output()
        .expect("ffmpeg psnr");
    let text = String::from_utf8_lossy(&out.stderr);
    let avg = text
        .split("average:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no PSNR in {text}"));
    if avg == "inf" {
        100.0
    } else {
        avg.parse().unwrap_or(0.0)
    }
}

fn rfc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[test]
fn recordings_play_back_over_http_as_mp4_and_hls_vod() {
    let dir = test_dir("recordings-http");
    let source = dir.join("source.mp4");
    let made = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "31",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-bf",
        "0",
        "-g",
        "25",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        source.to_str().unwrap(),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let rec_dir = dir.join("rec");
    // An hour ago: 30 s, a 10 s gap, 5 s more, then 3 s by a restarted writer.
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let mut records = record(&source, &rec_dir, t0, 0.0, 30.0);
    records.extend(record(
        &source,
        &rec_dir,
        t0 + Duration::from_secs(40),
        0.0,
        5.0,
    ));
    records.extend(record(
        &source,
        &rec_dir,
        t0 + Duration::from_secs(45),
        5.0,
        3.0,
    ));
    assert_eq!(
        records.len(),
        5,
        "three of the first recording, one of the second, one of the third"
    );
    for r in &records {
        println!(
            "segment {}: {} .. {}, media base {:.3} s, {:.3} s long",
            r.path,
            rfc(r.start_wall),
            rfc(r.end_wall),
            r.media_base.as_secs_f64(),
            r.media_end.as_secs_f64()
        );
    }
    // The first run's files continue one decode timeline; the others start at 0.
    let bases: Vec<u64> = records
        .iter()
        .map(|r| r.media_base.as_millis() as u64)
        .collect();
    assert_eq!(bases, [0, 10_000, 20_000, 0, 0], "media bases (ms)");
    {
        let index = sluice_archive::Index::open(&rec_dir).expect("index");
        for r in &records {
            index.put("cam", r).expect("put");
        }
    }
    let port = free_tcp_port();
    let server = Server::start(&format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[record]\ndir = {:?}\n\
         [[users]]\nuser = \"any\"\npermissions = [ {{ action = \"playback\", path = \"cam\" }} ]\n",
        rec_dir.to_str().unwrap()
    ));
    let http_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let q = |start: SystemTime, end: SystemTime| {
        format!("path=cam&start={}&end={}", rfc(start), rfc(end))
    };

    // The timeline: two spans, the gaps named.
    let tl = http(
        http_addr,
        "GET",
        &format!(
            "/v1/recordings/timeline?{}",
            q(t0, t0 + Duration::from_secs(50))
        ),
        &[],
    );
    assert_eq!(tl.status, 200, "{tl:?}\n{}", server.log());
    let tl: serde_json::Value = serde_json::from_slice(&tl.body).unwrap();
    println!("timeline: {tl}");
    let spans = tl["spans"].as_array().unwrap();
    let gaps = tl["gaps"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{tl}");
    assert_eq!(gaps.len(), 2, "{tl}");
    let secs = |v: &serde_json::Value| {
        humantime::parse_rfc3339_weak(v.as_str().unwrap())
            .unwrap()
            .duration_since(t0)
            .unwrap_or_default()
            .as_secs_f64()
    };
    assert!((secs(&gaps[0]["start"]) - 30.0).abs() < 0.5, "{tl}");
    assert!((secs(&gaps[0]["end"]) - 40.0).abs() < 0.1, "{tl}");
    // Another path's recordings need playback there: the anonymous visitor is asked for
    // credentials.
    let other = http(http_addr, "GET", "/v1/recordings/timeline?path=other", &[]);
    assert_eq!(other.status, 401, "{other:?}");

    // The MP4 export: HEAD, full GET, ranges.
    let url = format!(
        "/v1/recordings/export.mp4?{}",
        q(t0, t0 + Duration::from_secs(30))
    );
    let head = http(http_addr, "HEAD", &url, &[]);
    assert_eq!(head.status, 200, "{head:?}\n{}", server.log());
    let len: usize = head.header("content-length").unwrap().parse().unwrap();
    assert_eq!(head.header("accept-ranges").as_deref(), Some("bytes"));
    let etag = head.header("etag").expect("an ETag");
    let full = http(http_addr, "GET", &url, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), len);
    assert_eq!(full.header("etag").as_deref(), Some(etag.as_str()));
    assert_eq!(&full.body[4..8], b"ftyp");
    assert_eq!(
        &full.body[full.body[..4]
            .iter()
            .fold(0usize, |a, b| a * 256 + *b as usize)
            + 4..][..4],
        b"moov",
        "moov first"
    );
    for (range, from, to) in [
        ("bytes=1000-4999", 1000, 5000),
        ("bytes=-777", len - 777, len),
        (&format!("bytes={}-", len / 2) as &str, len / 2, len),
    ] {
        let part = http(http_addr, "GET", &url, &[("Range", range)]);
        assert_eq!(part.status, 206, "{range}: {part:?}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {from}-{}/{len}", to - 1))
        );
        assert!(
            part.body == full.body[from..to],
            "{range}: not the same bytes"
        );
    }
    let past = http(
        http_addr,
        "GET",
        &url,
        &[("Range", &format!("bytes={len}-"))],
    );
    assert_eq!(past.status, 416);
    let full_url = format!("http://{http_addr}{url}");
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_name,width,height",
            "-of",
            "json",
        ])
        .arg(&full_url)
        .output()
        .expect("ffprobe");
    let probed: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap_or_default();
    println!("export: {len} bytes, ffprobe {probed}");
    let duration: f64 = probed["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (duration - 30.0).abs() < 0.5,
        "duration {duration}: {probed}"
    );
    assert_eq!(probed["streams"][0]["codec_name"], "h264", "{probed}");
    // `ffmpeg -ss 20` lands on the source's frame at 20 s.
    let got = dir.join("at20.png");
    let out = ffmpeg(&[
        "-ss",
        "20",
        "-i",
        &full_url,
        "-frames:v",
        "1",
        got.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |s: &str, name: &str| {
        let p = dir.join(name);
        let out = ffmpeg(&[
            "-ss",
            s,
            "-i",
            source.to_str().unwrap(),
            "-frames:v",
            "1",
            p.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        p
    };
    let (same, earlier) = (
        psnr(&got, &at("20", "src20.png")),
        psnr(&got, &at("15", "src15.png")),
    );
    println!("ffmpeg -ss 20 on the export: PSNR {same:.1} dB against the source at 20 s, {earlier:.1} dB at 15 s");
    assert!(same >= 35.0 && earlier < 25.0, "{same} / {earlier}");
    // From 12.5 s: the edit list starts the file there exactly.
    let mid = format!(
        "http://{http_addr}/v1/recordings/export.mp4?{}",
        q(
            t0 + Duration::from_millis(12_500),
            t0 + Duration::from_secs(17)
        )
    );
    let first = dir.join("mid.png");
    let out = ffmpeg(&["-i", &mid, "-frames:v", "1", first.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exact = psnr(&first, &at("12.5", "src12.png"));
    println!("export from 12.5 s: first frame PSNR {exact:.1} dB against the source at 12.5 s");
    assert!(exact >= 35.0, "{exact}");

    // The HLS VOD over all three recordings: one map (byte-identical inits), a
    // discontinuity at the gap and at the restart only.
    let m3u8 = format!(
        "/v1/recordings/index.m3u8?{}",
        q(t0, t0 + Duration::from_secs(50))
    );
    let pl = http(http_addr, "GET", &m3u8, &[]);
    assert_eq!(pl.status, 200, "{pl:?}");
    let text = String::from_utf8_lossy(&pl.body).into_owned();
    assert!(text.contains("#EXT-X-ENDLIST"), "{text}");
    assert_eq!(text.matches("#EXT-X-MAP:").count(), 1, "{text}");
    // The files (by their start, as the URIs name them) a discontinuity precedes.
    let mut broken = Vec::new();
    let mut files = Vec::new();
    let mut pending = false;
    for l in text.lines() {
        if l == "#EXT-X-DISCONTINUITY" {
            pending = true;
        } else if let Some(at) = l.strip_prefix("segment.mp4?").and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("segment="))
                .and_then(|v| v.parse::<u64>().ok())
        }) {
            if files.last() != Some(&at) {
                files.push(at);
            }
            if std::mem::take(&mut pending) {
                broken.push(at);
            }
        }
    }
    let start_of = |r: &SegmentRecord| {
        r.start_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let all: Vec<u64> = records.iter().map(start_of).collect();
    println!(
        "VOD over all: {} lines, {} files, discontinuities before files {:?} of {:?}",
        text.lines().count(),
        files.len(),
        broken
            .iter()
            .map(|b| all.iter().position(|a| a == b).unwrap())
            .collect::<Vec<_>>(),
        (0..all.len()).collect::<Vec<_>>()
    );
    assert_eq!(files, all, "{text}");
    assert_eq!(
        broken,
        [all[3], all[4]],
        "a discontinuity at the gap and at the restart, none between abutting files: {text}"
    );
    let pdt = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
        .expect("a PDT");
    println!(
        "VOD first PDT {pdt}, index's first segment start {}",
        rfc(records[0].start_wall)
    );
    assert_eq!(pdt, rfc(records[0].start_wall), "PDT from the index");
    assert_eq!(records[0].start_wall, records[0].parts[0].wall_start);

    // `ffmpeg -c copy` of the VOD over the three abutting files: the range's duration,
    // within a part.
    let vod_copy = |from: u64, to: u64, name: &str| -> f64 {
        let m3u8 = format!(
            "/v1/recordings/index.m3u8?{}",
            q(t0 + Duration::from_secs(from), t0 + Duration::from_secs(to))
        );
        let copied = dir.join(name);
        let out = ffmpeg(&[
            "-i",
            &format!("http://{http_addr}{m3u8}"),
            "-c",
            "copy",
            copied.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let probe = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&copied)
            .output()
            .unwrap();
        String::from_utf8_lossy(&probe.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    };
    let whole = vod_copy(0, 30, "vod-run.mp4");
    println!("VOD 0 s..30 s (three files), -c copy: ffprobe {whole:.3} s");
    assert!((whole - 30.0).abs() <= 1.0, "{whole}");
    // Across the boundary at 20 s: from the keyframe part at or before 16 s to the part
    // before 29 s.
    let vod_secs = vod_copy(16, 29, "vod.mp4");
    println!("VOD 16 s..29 s (two files), -c copy: ffprobe {vod_secs:.3} s");
    // 13 s asked; it starts at the keyframe part at or before 16 s (15 s when the part at
    // 16 s began a fraction of a millisecond after the asked, millisecond-rounded start).
    assert!((12.5..=14.5).contains(&vod_secs), "{vod_secs}");
}
