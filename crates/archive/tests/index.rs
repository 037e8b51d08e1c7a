//! The recordings index: queries, open marks, locks, holds, reindexing real segment files,
//! and the scale figures (a 3-day timeline query, [`Index::spans`], < 50 ms; opening
//! with 10,000 segments < 5 s).

use std::time::{Duration, Instant, SystemTime};

use sluice_archive::{
    reindex_dir, Index, PartRecord, PathTemplate, SegmentRecord, DEFAULT_TEMPLATE,
};
use sluice_media::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentWriter};
use sluice_media::{Codec, CodecParams};

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A segment of `parts` 1 s parts starting `start` after t0.
fn seg(start: Duration, parts: u64) -> SegmentRecord {
    let start_wall = t0() + start;
    let parts: Vec<PartRecord> = (0..parts)
        .map(|i| PartRecord {
            offset: 1000 + i * 500_000,
            len: 500_000,
            media_start: Duration::from_secs(i),
            media_end: Duration::from_secs(i + 1),
            wall_start: start_wall + Duration::from_secs(i),
            keyframe: i % 2 == 0,
        })
        .collect();
    SegmentRecord {
        path: format!("cam/{}.mp4", start.as_secs()),
        init_id: 7,
        start_wall,
        end_wall: start_wall + Duration::from_secs(parts.len() as u64),
        media_end: Duration::from_secs(parts.len() as u64),
        media_base: Duration::ZERO,
        bytes: 1000 + 500_000 * parts.len() as u64,
        recovered: false,
        parts,
    }
}

#[test]
fn queries_overlap_order_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    assert!(index.is_empty().unwrap());
    assert_eq!(index.first_last("cam").unwrap(), None);
    for i in 0..5 {
        index
            .put("cam", &seg(Duration::from_secs(10 * i), 10))
            .unwrap();
    }
    index.put("alpha", &seg(Duration::ZERO, 3)).unwrap();
    index.put("zeta/1", &seg(Duration::ZERO, 3)).unwrap();
    assert_eq!(index.streams().unwrap(), ["alpha", "cam", "zeta/1"]);
    // [15 s, 25 s) overlaps the segments at 10 and 20.
    let got = index
        .segments(
            "cam",
            t0() + Duration::from_secs(15),
            t0() + Duration::from_secs(25),
        )
        .unwrap();
    let starts: Vec<_> = got.iter().map(|r| r.start_wall).collect();
    assert_eq!(
        starts,
        [
            t0() + Duration::from_secs(10),
            t0() + Duration::from_secs(20)
        ]
    );
    assert_eq!(got[0], seg(Duration::from_secs(10), 10));
    // [20 s, 30 s) is exactly one segment; an end at a start excludes it.
    let got = index
        .segments(
            "cam",
            t0() + Duration::from_secs(20),
            t0() + Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        index.first_last("cam").unwrap(),
        Some((t0(), t0() + Duration::from_secs(50)))
    );
    assert_eq!(index.stored("cam").unwrap(), (5 * 5_001_000, 5));
    // Replacing keeps one record per start; removing drops it.
    index.put("cam", &seg(Duration::from_secs(40), 4)).unwrap();
    assert_eq!(
        index.first_last("cam").unwrap(),
        Some((t0(), t0() + Duration::from_secs(44)))
    );
    index.remove("cam", t0()).unwrap();
    assert_eq!(index.len().unwrap(), 6);
    assert_eq!(
        index.first_last("cam").unwrap().unwrap().0,
        t0() + Duration::from_secs(10)
    );
}

#[test]
fn open_marks_survive_reopen_until_put() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path()).unwrap();
        index.put("cam", &seg(Duration::ZERO, 10)).unwrap();
        let mut open = seg(Duration::from_secs(10), 0);
        index.put_open("cam", &open).unwrap();
        for n in 1..=5 {
            open = seg(Duration::from_secs(10), n);
            index.put_open("cam", &open).unwrap();
        }
    }
    let index = Index::open(dir.path()).unwrap();
    let open = index.open_segments().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].0, "cam");
    assert_eq!(open[0].1.start_wall, t0() + Duration::from_secs(10));
    index.put("cam", &seg(Duration::from_secs(10), 7)).unwrap();
    assert!(index.open_segments().unwrap().is_empty());
    assert_eq!(
        index
            .get("cam", t0() + Duration::from_secs(10))
            .unwrap()
            .unwrap()
            .parts
            .len(),
        7
    );
}

#[test]
fn locks_and_holds() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let s = t0() + Duration::from_secs(100);
    let a = index
        .add_lock("cam", s, s + Duration::from_secs(60), "incident 42")
        .unwrap();
    let b = index
        .add_lock("door", s, s + Duration::from_secs(1), "")
        .unwrap();
    assert_ne!(a, b);
    assert!(index
        .locked(
            "cam",
            s + Duration::from_secs(59),
            s + Duration::from_secs(70)
        )
        .unwrap());
    assert!(!index
        .locked(
            "cam",
            s + Duration::from_secs(60),
            s + Duration::from_secs(70)
        )
        .unwrap());
    let locks = index.locks(Some("cam")).unwrap();
    assert_eq!((locks.len(), locks[0].reason.as_str()), (1, "incident 42"));
    drop(index);
    let index = Index::open(dir.path()).unwrap();
    assert_eq!(index.locks(None).unwrap().len(), 2);
    assert!(index.remove_lock(a).unwrap());
    assert!(!index.remove_lock(a).unwrap());
    let c = index.add_lock("cam", s, s, "x").unwrap();
    assert!(c > b, "ids are never reused");

    assert!(!index.is_held("cam", s));
    let h1 = index.hold("cam", s);
    let h2 = index.hold("cam", s);
    drop(h1);
    assert!(index.is_held("cam", s));
    drop(h2);
    assert!(!index.is_held("cam", s));
}

/// Writes real segment files (Opus, 3 s each) named by the default template, damages one,
/// and rebuilds the index from the directory alone.
#[test]
fn reindex_dir_rebuilds_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let template = PathTemplate::parse(DEFAULT_TEMPLATE).unwrap();
    let opus = CodecParams {
        channels: Some(2),
        ..CodecParams::new(Codec::Opus, Vec::new())
    };
    let config = ArchiveConfig {
        segment_duration: Duration::from_secs(3),
        ..ArchiveConfig::default()
    };
    let mut w = SegmentWriter::new(vec![opus], config).unwrap();
    for i in 0..500i64 {
        let frame = Frame {
            track: 0,
            dts: i * 960,
            pts: i * 960,
            keyframe: true,
            data: vec![0xfc, 0xff, 0xfe].into(),
        };
        w.push(frame, t0() + Duration::from_millis(20 * i as u64));
    }
    w.finish();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(out) = w.poll_output() {
        match out {
            ArchiveOutput::SegmentStarted { init, wall, .. } => {
                files.push((template.render("cams/front", wall), init.to_vec()))
            }
            ArchiveOutput::Part { bytes, .. } => {
                files.last_mut().unwrap().1.extend_from_slice(&bytes)
            }
            ArchiveOutput::SegmentEnded { .. } => {}
        }
    }
    assert!(files.len() >= 3, "{} segments", files.len());
    let last = files.len() - 1;
    let whole_len = files[last].1.len();
    files[last].1.extend_from_slice(&[0u8; 300]); // a torn, zero-filled tail
    for (rel, bytes) in &files {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    std::fs::write(
        dir.path().join("cams/front/2030-01-01_00-00-00-000000.mp4"),
        b"junk",
    )
    .unwrap();
    // A stale entry that the rebuild must drop, and a lock it must keep.
    let index = Index::open(dir.path()).unwrap();
    index.put("gone", &seg(Duration::ZERO, 1)).unwrap();
    index
        .add_lock("cams/front", t0(), t0() + Duration::from_secs(1), "keep")
        .unwrap();
    drop(index);

    let report = reindex_dir(dir.path(), &template).unwrap();
    println!("reindex: {report:?}");
    assert_eq!(report.segments, files.len());
    assert_eq!(report.recovered, 1);
    assert_eq!(report.streams, 1);
    assert_eq!(report.ignored, 1);
    assert_eq!(report.skipped.len(), 1);
    let index = Index::open(dir.path()).unwrap();
    assert_eq!(index.streams().unwrap(), ["cams/front"]);
    assert_eq!(index.locks(None).unwrap().len(), 1);
    let recs = index
        .segments("cams/front", t0(), t0() + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(recs.len(), files.len());
    assert_eq!(recs[0].path, files[0].0);
    let total: Duration = recs.iter().map(|r| r.media_end).sum();
    assert!(
        total >= Duration::from_millis(9_900) && total <= Duration::from_secs(10),
        "{total:?}"
    );
    for w in recs.windows(2) {
        assert!(w[1].start_wall >= w[0].end_wall - Duration::from_millis(25));
        // Cut on duration, each file's decode times go on from the previous one's, and
        // the rebuilt records say where (what playback and the HLS VOD rely on).
        let (want, got) = (w[0].media_base + w[0].media_end, w[1].media_base);
        assert!(
            want.abs_diff(got) < Duration::from_millis(1),
            "{want:?} {got:?}"
        );
    }
    assert_eq!(recs[0].media_base, Duration::ZERO);
    assert!(recs[1].media_base >= Duration::from_secs(3));
    let damaged = dir.path().join(&files[last].0);
    assert_eq!(std::fs::metadata(damaged).unwrap().len(), whole_len as u64);
    assert!(index.open_segments().unwrap().is_empty());
}

/// The scale figures: a timeline query over an index of 3 days of 1 h segments
/// (1 s parts) in < 50 ms; opening an index of 10,000 segments and reading what start-up
/// needs (streams, first/last, open segments) in < 5 s.
#[test]
fn scale_three_days_and_ten_thousand_segments() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let hour = Duration::from_secs(3600);
    let days: Vec<SegmentRecord> = (0..72).map(|h| seg(hour * h, 3600)).collect();
    let fill = Instant::now();
    index.put_batch("cam", &days).unwrap();
    // 10,000 more segments (10 s of 1 s parts each) over 20 streams.
    for s in 0..20 {
        let recs: Vec<SegmentRecord> = (0..500)
            .map(|i| seg(Duration::from_secs(10 * i), 10))
            .collect();
        index.put_batch(&format!("door{s}"), &recs).unwrap();
    }
    println!("filled 10,072 segments in {:?}", fill.elapsed());
    drop(index);

    let open = Instant::now();
    let index = Index::open(dir.path()).unwrap();
    let streams = index.streams().unwrap();
    for s in &streams {
        index.first_last(s).unwrap().unwrap();
    }
    let open_segments = index.open_segments().unwrap();
    let opened = open.elapsed();
    assert_eq!((streams.len(), open_segments.len()), (21, 0));
    assert_eq!(index.len().unwrap(), 10_072);

    let q = Instant::now();
    let timeline = index.segments("cam", t0(), t0() + hour * 72).unwrap();
    let full = q.elapsed();
    let q = Instant::now();
    let hour_query = index
        .segments(
            "cam",
            t0() + hour * 30 + Duration::from_secs(1800),
            t0() + hour * 31,
        )
        .unwrap();
    let one = q.elapsed();
    let q = Instant::now();
    let spans = index.spans("cam", t0(), t0() + hour * 72).unwrap();
    let coarse = q.elapsed();
    println!(
        "10,072 segments: open + streams + first/last + open marks {opened:?}; \
         3-day timeline (72 x 3600 parts) {full:?}; spans only {coarse:?}; one hour {one:?}"
    );
    assert_eq!((timeline.len(), hour_query.len(), spans.len()), (72, 1, 72));
    assert!(opened < Duration::from_secs(5), "{opened:?}");
    // The timeline (spans and the gaps between them) comes from the keys and sizes alone;
    // decoding every part of 3 days is for seeking and export, which ask for minutes.
    assert!(coarse < Duration::from_millis(50), "{coarse:?}");
    assert!(one < Duration::from_millis(50), "{one:?}");
    assert!(full < Duration::from_secs(3), "{full:?}");
}
