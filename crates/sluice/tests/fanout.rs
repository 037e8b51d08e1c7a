//! One publisher, 20 simultaneous readers of the same path; hundreds of readers from the
//! load client of `bench/fanout.sh` (`sluice-bench load`); the GOP cache seen by new readers.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

#[test]
fn twenty_readers_one_path() {
    let dir = test_dir("fanout");
    let server = Server::start("");
    let url = server.url("live/fan");
    let _publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);

    // 4 decoding ffmpeg readers (2 UDP, 2 TCP) + 16 retina readers
    // (8 TCP, 8 UDP): 20 sessions at once on a 2-core box.
    let secs = READ_SECS.as_secs_f64() + 1.0;
    let ff: Vec<FfmpegReader> = ["udp", "tcp", "udp", "tcp"]
        .iter()
        .map(|t| FfmpegReader::spawn(&url, t, secs, &dir, None))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dur = READ_SECS + Duration::from_secs(1);
    let retina: Vec<(String, Result<RetinaReport, String>)> = rt.block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let url = url.clone();
                let t = if i % 2 == 0 {
                    RetinaTransport::Tcp
                } else {
                    RetinaTransport::Udp
                };
                tokio::spawn(async move {
                    let r = tokio::time::timeout(
                        dur + Duration::from_secs(40),
                        retina_read(&url, t, dur),
                    )
                    .await
                    .unwrap_or_else(|_| Err("hard timeout".into()));
                    (format!("retina #{i} {t:?}"), r)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let limit = READ_SECS + Duration::from_secs(15);
    let ff: Vec<FfmpegReport> = ff.into_iter().map(|r| r.finish(limit)).collect();

    // Somewhat looser than single-reader tests: 20 sessions on 2 cores.
    let ratio = 0.75;
    let min = min_frames(READ_SECS, ratio);
    for (i, r) in ff.iter().enumerate() {
        assert_ffmpeg_read(
            &format!("ffmpeg reader #{i}"),
            r,
            READ_SECS,
            ratio,
            "h264",
            Some("aac"),
        );
    }
    for (what, r) in retina {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!r.ended_early, "{what}: ended early: {:?}", r.error);
        assert!(
            r.video_frames >= min,
            "{what}: {} frames < {min}",
            r.video_frames
        );
        assert_eq!(r.loss, 0, "{what}: lost packets");
    }
}

/// The load client, `sluice-bench` (tools/bench), built for this run's profile into its
/// target directory, beside `sluice`. Built here because nothing may depend on the tools
/// package, so Cargo builds it for these tests only when it tests the whole workspace;
/// when it is up to date (as then), the build is a no-op.
fn sluice_bench() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let sluice = Path::new(env!("CARGO_BIN_EXE_sluice"));
        let dir = sluice.parent().expect("sluice's directory");
        let target = dir.parent().expect("the target directory");
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory in {}", sluice.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "sluice-bench",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p sluice-bench");
        assert!(status.success(), "cargo build -p sluice-bench: {status}");
        let bin = dir.join(format!("sluice-bench{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// Runs `sluice-bench load` (the load client of `bench/fanout.sh`) and returns its JSON report.
fn bench_load(url: &str, transport: &str, readers: usize, secs: u32) -> serde_json::Value {
    // A port range of this process's own, so parallel tests do not collide (busy ports are
    // skipped anyway).
    let port_base = 20_000 + (std::process::id() % 20) * 1_000;
    let out = Command::new(sluice_bench())
        .args(["load", url, "--transport", transport])
        .args([
            "--readers",
            &readers.to_string(),
            "--duration",
            &secs.to_string(),
        ])
        .args(["--udp-port-base", &port_base.to_string()])
        .output()
        .expect("run sluice-bench load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench load {transport}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bench load JSON: {e}: {stdout}"))
}

/// 300 readers: enough for the fan-out to split each frame across both cores, and for TCP
/// readers to be written straight from the fan-out. Every reader must get the stream
/// whole, from a keyframe.
#[test]
fn three_hundred_readers_each_get_every_packet_from_a_keyframe() {
    let dir = test_dir("fanout-300");
    let server = Server::start("");
    let url = server.url("live/many");
    let mut publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
    publisher
        .wait_publishing(Duration::from_secs(15))
        .expect("ffmpeg publishing");
    for transport in ["udp", "tcp"] {
        let r = bench_load(&url, transport, 300, 3);
        let what = format!("300 {transport} readers: {r}");
        eprintln!("{what}");
        assert_eq!(r["readers_connected"], 300, "{what}");
        assert_eq!(r["lost"], 0, "{what}");
        assert_eq!(r["no_keyframe"], 0, "{what}");
        assert_eq!(r["ended_early"], serde_json::json!({}), "{what}");
        // The test stream is ~2 Mb/s: even the slowest reader kept up with it.
        let min = r["mbit_s_per_reader_min"].as_f64().unwrap_or(0.0);
        assert!(min > 0.5, "{what}: slowest reader got {min} Mbit/s");
        // The server's ingest → egress latency stays in the report's schema, empty
        // until the metrics endpoint exports the server's histogram.
        assert_eq!(r["egress_latency_us"], serde_json::Value::Null, "{what}");
    }
}

/// PLAY sent → first keyframe, minus PLAY sent → first packet (medians over one
/// `bench_load` run's readers): how long a reader waits for a picture after media starts.
fn keyframe_wait_ms(r: &serde_json::Value) -> f64 {
    let p50 = |k: &str| r[k]["p50"].as_f64().unwrap_or(f64::NAN);
    p50("first_keyframe_ms") - p50("first_packet_ms")
}

/// `rtsp.gop_cache`: on (the default), a new reader's media starts with the last keyframe;
/// off, it starts at the live edge and waits for the next one (the 1 s GOP: up to 1 s).
/// Both for a publisher's path and for a path pulled from it by a second server.
#[test]
fn a_reader_starts_at_the_last_keyframe_only_with_the_gop_cache() {
    let dir = test_dir("gop-cache");
    // `n` joins at different points of the GOP (the pauses between them differ, so they
    // do not all fall at one phase): without the cache, each lands within 20 ms before a
    // keyframe with 2 % odds, four in a row with 0.00002 %.
    let joins = |url: &str, n: u64, what: &str| -> Vec<f64> {
        (0..n)
            .map(|j| {
                std::thread::sleep(Duration::from_millis(130 * j));
                let r = bench_load(url, "tcp", 2, 1);
                let what = format!("{what}: {r}");
                assert_eq!(r["readers_connected"], 2, "{what}");
                assert_eq!(r["no_keyframe"], 0, "{what}");
                assert_eq!(r["lost"], 0, "{what}");
                keyframe_wait_ms(&r)
            })
            .collect()
    };
    for gop_cache in [true, false] {
        let setting = format!("[rtsp]\ngop_cache = {gop_cache}\n");
        let origin = Server::start(&setting);
        let url = origin.url("live/gop");
        let mut publisher = FfmpegPublisher::start(&media().h264_aac, &url, "tcp", &dir);
        publisher
            .wait_publishing(Duration::from_secs(15))
            .expect("ffmpeg publishing");
        let edge = Server::start(&format!("{setting}[paths.pulled]\nsource = \"{url}\"\n"));
        wait_for(Duration::from_secs(15), || {
            edge.log().contains("pull source playing").then_some(())
        })
        .unwrap_or_else(|| panic!("the pull never played; log:\n{}", edge.log()));
        // Past a keyframe on both servers, so a cache holds a GOP.
        std::thread::sleep(Duration::from_millis(1200));
        // With the cache the wait is exactly 0, whenever the join.
        let n = if gop_cache { 2 } else { 4 };
        let published = joins(&url, n, &format!("publisher, gop_cache = {gop_cache}"));
        let pulled = joins(
            &edge.url("pulled"),
            n,
            &format!("pull, gop_cache = {gop_cache}"),
        );
        eprintln!("gop_cache = {gop_cache}: keyframe waits {published:?} ms (publisher), {pulled:?} ms (pull)");
        for (what, waits) in [("publisher", published), ("pull", pulled)] {
            if gop_cache {
                assert!(
                    waits.iter().all(|w| *w < 1.0),
                    "{what}: with the GOP cache the first packet is the keyframe: waits {waits:?} ms"
                );
            } else {
                assert!(
                    waits.iter().any(|w| *w > 20.0),
                    "{what}: without the GOP cache readers wait for the next keyframe: waits {waits:?} ms"
                );
            }
        }
    }
}

/// `sluice.egress_latency`, once the load client's way to the server's latency histogram,
/// is a parameter like any other now: not understood (451), exactly as an unknown one,
/// with no value in the answer. The empty keep-alive is still answered.
#[test]
fn the_egress_latency_parameter_is_answered_as_any_unknown_one() {
    let server = Server::start("");
    let url = server.url("live/x");
    let mut c = RtspClient::connect(server.addr()).expect("connect");
    let text = [("Content-Type", "text/parameters")];
    let mut ask = |body: &[u8]| {
        c.request("GET_PARAMETER", &url, &text, body)
            .expect("GET_PARAMETER answered")
    };
    let former = ask(b"sluice.egress_latency\r\n");
    let unknown = ask(b"sluice.no_such_parameter\r\n");
    assert_eq!(former.status, 451, "{former:?}");
    assert_eq!(
        (former.status, &former.reason, former.header("Content-Type")),
        (
            unknown.status,
            &unknown.reason,
            unknown.header("Content-Type")
        ),
        "the same answer as an unknown parameter's"
    );
    assert!(!former.body_str().contains("count="), "{former:?}");
    let keep_alive = c
        .request("GET_PARAMETER", &url, &[], b"")
        .expect("keep-alive answered");
    assert_eq!(keep_alive.status, 200, "{keep_alive:?}");
}
