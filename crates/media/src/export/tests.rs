use std::time::{Duration, SystemTime};

use super::*;
use crate::archive::{ArchiveConfig, ArchiveOutput, Frame, SegmentRecord, SegmentWriter};
use crate::{Codec, CodecParams};

/// Segments of 20 ms Opus packets (numbered in their first bytes): `secs` seconds from `t0`
/// each, one segment per start; their files and records.
fn segments(starts: &[(SystemTime, u64)]) -> Vec<(Vec<u8>, SegmentRecord)> {
    let mut out = Vec::new();
    for (n, (t0, secs)) in starts.iter().enumerate() {
        let opus = CodecParams {
            channels: Some(2),
            sample_rate: Some(48_000),
            ..CodecParams::new(Codec::Opus, Vec::new())
        };
        let mut w = SegmentWriter::new(vec![opus], ArchiveConfig::default()).expect("writer");
        for i in 0..(*secs as i64 * 50) {
            let data = vec![0xfc, n as u8, (i >> 8) as u8, i as u8];
            let f = Frame {
                track: 0,
                dts: i * 960,
                pts: i * 960,
                keyframe: true,
                data: data.into(),
            };
            w.push(f, *t0 + Duration::from_millis(20 * i as u64));
        }
        w.finish();
        let mut file = Vec::new();
        let mut rec = None;
        while let Some(o) = w.poll_output() {
            match o {
                ArchiveOutput::SegmentStarted { init, .. } => file.extend_from_slice(&init),
                ArchiveOutput::Part { bytes, .. } => file.extend_from_slice(&bytes),
                ArchiveOutput::SegmentEnded { record, .. } => rec = Some(record),
            }
        }
        out.push((file, rec.expect("a record")));
    }
    out
}

/// The export's bytes, from its head and the files.
fn bytes_of(e: &Export, files: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for s in e.slices(0, e.len) {
        match s {
            Ok(r) => v.extend_from_slice(&e.head[r]),
            Err(p) => {
                v.extend_from_slice(&files[p.file][p.offset as usize..(p.offset + p.len) as usize])
            }
        }
    }
    v
}

#[test]
fn an_export_spans_two_segments_and_a_gap_with_exact_edits() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // 4 s, a 2 s gap, 3 s.
    let segs = segments(&[(t0, 4), (t0 + Duration::from_secs(6), 3)]);
    let init_len = segs[0].1.parts[0].offset as usize;
    let start = t0 + Duration::from_millis(1500);
    let end = t0 + Duration::from_secs(8);
    let mut b = ExportBuilder::new(&segs[0].0[..init_len], start, end).expect("init");
    for (i, (file, rec)) in segs.iter().enumerate() {
        for p in &rec.parts {
            if p.wall_end() <= start || p.wall_start >= end {
                continue;
            }
            let prefix = &file[p.offset as usize..(p.offset + p.len) as usize];
            let n = part_header_len(prefix).expect("header").expect("complete");
            b.push_part(i, rec.zero_wall(), p.offset, &prefix[..n])
                .expect("part");
        }
    }
    let e = b.finish().expect("export");
    let files: Vec<&[u8]> = segs.iter().map(|s| s.0.as_slice()).collect();
    let all = bytes_of(&e, &files);
    assert_eq!(all.len() as u64, e.len);
    assert_eq!(&all[4..8], b"ftyp");
    assert_eq!(e.duration, Duration::from_millis(6500), "start to end");
    // A range is a slice of the whole.
    let mid: Vec<u8> = e
        .slices(e.head.len() as u64 - 10, e.head.len() as u64 + 100)
        .into_iter()
        .flat_map(|s| match s {
            Ok(r) => e.head[r].to_vec(),
            Err(p) => files[p.file][p.offset as usize..(p.offset + p.len) as usize].to_vec(),
        })
        .collect();
    assert_eq!(mid, all[e.head.len() - 10..e.head.len() + 100].to_vec());
    // The demuxer reads it back: samples from the part before `start`, the gap held by the
    // last sample before it.
    let dir = std::env::temp_dir().join(format!("sluice-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("e.mp4");
    std::fs::write(&path, &all).unwrap();
    let mut d = crate::open(&path).expect("open");
    let mut samples = Vec::new();
    while let Some(s) = d.next_sample().expect("sample") {
        samples.push(s);
    }
    std::fs::remove_dir_all(&dir).ok();
    // Parts are 1 s: from the one holding 1.5 s (1 s..2 s) to the first's end (3 s), then
    // the second's parts starting before 8 s (2 s).
    assert_eq!(samples.len(), 250, "{} samples", samples.len());
    assert_eq!(
        &samples[0].data[..],
        &[0xfc, 0, 0, 50],
        "the part from 1 s on"
    );
    let first_of_second = samples.iter().position(|s| s.data[1] == 1).unwrap();
    let at = samples[first_of_second].dts;
    // Placed by the segments' wall clocks; the demuxer applies the edit list, so times count
    // from `start` (1.5 s): the second segment (6 s) is at 4.5 s.
    let from_start = segs[1].1.start_wall.duration_since(start).unwrap();
    assert_eq!(at, (from_start.as_secs_f64() * 48_000.0).round() as i64);
    assert_eq!(at, 216_000);
    // The whole file, as an HLS VOD would list it.
    let pl = vod_playlist(&[VodPart {
        uri: "f".into(),
        offset: 10,
        len: 20,
        duration: Duration::from_millis(1000),
        wall: t0,
        init: ("f".into(), 10),
        discontinuity: false,
    }]);
    assert!(
        pl.contains("#EXT-X-MAP:URI=\"f\",BYTERANGE=\"10@0\""),
        "{pl}"
    );
    assert!(pl.contains("#EXT-X-BYTERANGE:20@10\nf\n"), "{pl}");
    assert!(pl.ends_with("#EXT-X-ENDLIST\n"));
}

#[test]
fn damaged_headers_are_errors_not_panics() {
    assert_eq!(part_header_len(&[0, 0, 0]).unwrap(), None);
    assert!(part_header_len(&[0, 0, 0, 4, b'm', b'o', b'o', b'f']).is_err());
    let t0 = SystemTime::UNIX_EPOCH;
    assert!(ExportBuilder::new(b"garbage", t0, t0).is_err());
    let segs = segments(&[(t0 + Duration::from_secs(10), 2)]);
    let init_len = segs[0].1.parts[0].offset as usize;
    let mut b =
        ExportBuilder::new(&segs[0].0[..init_len], t0, t0 + Duration::from_secs(20)).expect("init");
    let p = &segs[0].1.parts[0];
    let file = &segs[0].0;
    for cut in 0..(p.len as usize).min(200) {
        let _ = b.push_part(
            0,
            t0,
            p.offset,
            &file[p.offset as usize..p.offset as usize + cut],
        );
    }
}
