use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue};
use sluice_media::archive::{PartRecord, SegmentRecord};

use super::*;

fn t(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

#[test]
fn the_timeline_merges_touching_spans_and_names_the_gaps() {
    let spans = [(t(0), t(10), 100), (t(10), t(20), 100), (t(30), t(40), 50)];
    let tl = build_timeline("cam", t(5), t(50), &spans);
    let s: Vec<(String, String)> = tl
        .spans
        .iter()
        .map(|s| (s.start.clone(), s.end.clone()))
        .collect();
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(tl.spans[0].start, rfc3339(t(5)), "clipped to the range");
    assert_eq!(tl.spans[0].end, rfc3339(t(20)));
    assert_eq!(tl.spans[0].bytes, 200);
    let g: Vec<(String, String)> = tl
        .gaps
        .iter()
        .map(|g| (g.start.clone(), g.end.clone()))
        .collect();
    assert_eq!(
        g,
        [
            (rfc3339(t(20)), rfc3339(t(30))),
            (rfc3339(t(40)), rfc3339(t(50)))
        ]
    );
}

fn range(v: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let mut h = HeaderMap::new();
    h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
    byte_range(&h, len)
}

#[test]
fn single_byte_ranges_are_read_and_others_refused_or_ignored() {
    assert_eq!(range("bytes=0-99", 1000), Ok(Some((0, 100))));
    assert_eq!(range("bytes=900-", 1000), Ok(Some((900, 1000))));
    assert_eq!(range("bytes=-10", 1000), Ok(Some((990, 1000))));
    assert_eq!(range("bytes=990-5000", 1000), Ok(Some((990, 1000))));
    assert_eq!(range("bytes=1000-", 1000), Err(()));
    assert_eq!(range("bytes=5-1", 1000), Err(()));
    assert_eq!(
        range("bytes=0-1,5-6", 1000),
        Ok(None),
        "several: the whole file"
    );
    assert_eq!(byte_range(&HeaderMap::new(), 10), Ok(None));
}

fn part(offset: u64, s: u64, keyframe: bool) -> PartRecord {
    PartRecord {
        offset,
        len: 100,
        media_start: Duration::from_secs(s),
        media_end: Duration::from_secs(s + 1),
        wall_start: t(s),
        keyframe,
    }
}

/// A 4 s segment file `path` starting at `t(start)` (four 1 s parts, keyframes in the
/// first and third) on a decode timeline from `base` seconds, of init `init_id`.
fn seg(start: u64, path: &str, base: u64, init_id: u64) -> SegmentRecord {
    SegmentRecord {
        path: path.into(),
        init_id,
        start_wall: t(start),
        end_wall: t(start + 4),
        media_end: Duration::from_secs(4),
        media_base: Duration::from_secs(base),
        bytes: 900,
        recovered: false,
        parts: (0..4)
            .map(|i| {
                let mut p = part(500 + 100 * i, i, i % 2 == 0);
                p.wall_start = t(start + i);
                p
            })
            .collect(),
    }
}

#[test]
fn vod_segments_run_from_keyframe_to_keyframe_and_break_only_where_media_does() {
    let parts = vod_parts(
        "a b",
        &[
            seg(0, "x", 0, 1),
            // Continues x: same init, abutting, its decode times going on from x's end.
            seg(4, "y", 4, 1),
            // A gap.
            seg(10, "z", 8, 1),
            // Abutting, but a new decode timeline (the recorder restarted).
            seg(14, "r", 0, 1),
            // Abutting and continuing, but new codec parameters.
            seg(18, "n", 4, 2),
        ],
        t(1),
        t(30),
    );
    let v: Vec<(u64, u64, bool)> = parts
        .iter()
        .map(|p| (p.offset, p.len, p.discontinuity))
        .collect();
    // File x from its keyframe part at 0 s: [0,1] and [2,3]; the other files likewise.
    let file = |d: bool| [(500, 200, d), (700, 200, false)];
    let want: Vec<(u64, u64, bool)> =
        [file(false), file(false), file(true), file(true), file(true)].concat();
    assert_eq!(v, want);
    assert!(parts[0].uri.starts_with("segment.mp4?path=a%20b&segment="));
    assert_eq!(parts[0].init.1, 500);
    assert_eq!(parts[0].duration, Duration::from_secs(2));
    // Byte-identical inits share x's map; the new parameters bring their own.
    assert!(parts[..8].iter().all(|p| p.init == parts[0].init));
    assert_eq!(parts[8].init.0, parts[8].uri);
    assert_ne!(parts[8].uri, parts[0].uri);
    let text = vod_playlist(&parts);
    assert_eq!(text.matches("#EXT-X-MAP:").count(), 2, "{text}");
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 3, "{text}");
}
