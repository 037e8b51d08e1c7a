//! One publisher, 20 simultaneous readers of the same path.

mod common;

use common::*;
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
