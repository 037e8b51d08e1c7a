//! Hand-built Matroska files: lacing, unknown sizes, BlockGroups, A_MS/ACM.

use std::io::Cursor;
use std::time::Duration;

use crate::params::Codec;

/// An element with an 8-byte size.
fn el(id: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.push(0x01);
    v.extend_from_slice(&(payload.len() as u64).to_be_bytes()[1..]);
    v.extend_from_slice(payload);
    v
}

/// An element with the unknown-size marker.
fn el_unknown(id: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = id.to_vec();
    v.push(0xFF);
    v.extend_from_slice(payload);
    v
}

fn uint(id: &[u8], v: u64) -> Vec<u8> {
    el(id, &v.to_be_bytes())
}

fn file(tracks: &[Vec<u8>], clusters: &[Vec<u8>]) -> Vec<u8> {
    let mut f = el(&[0x1A, 0x45, 0xDF, 0xA3], &el(&[0x42, 0x82], b"matroska"));
    let mut seg = el(
        &[0x15, 0x49, 0xA9, 0x66],
        &uint(&[0x2A, 0xD7, 0xB1], 1_000_000),
    );
    seg.extend(el(&[0x16, 0x54, 0xAE, 0x6B], &tracks.concat()));
    for c in clusters {
        seg.extend_from_slice(c);
    }
    f.extend(el_unknown(&[0x18, 0x53, 0x80, 0x67], &seg));
    f
}

fn track(number: u64, codec: &str, private: &[u8]) -> Vec<u8> {
    let mut t = uint(&[0xD7], number);
    t.extend(el(&[0x86], codec.as_bytes()));
    if !private.is_empty() {
        t.extend(el(&[0x63, 0xA2], private));
    }
    t.extend(uint(&[0x23, 0xE3, 0x83], 20_000_000));
    t.extend(el(&[0xE1], &el(&[0xB5], &48_000f64.to_be_bytes())));
    el(&[0xAE], &t)
}

fn block(track: u8, rel: i16, flags: u8, lace: &[u8], frames: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![0x80 | track];
    b.extend_from_slice(&rel.to_be_bytes());
    b.push(flags);
    b.extend_from_slice(lace);
    for f in frames {
        b.extend_from_slice(f);
    }
    b
}

#[test]
fn lacing_and_unknown_sizes() {
    let a = [1u8; 300];
    let b = [2u8; 10];
    let c = [3u8; 7];
    // Xiph: 3 frames, sizes 300 (255+45) and 10, last implied.
    let xiph = block(1, 0, 0x80 | 0x02, &[2, 255, 45, 10], &[&a, &b, &c]);
    // EBML: sizes 300 (0x412C), then -290 (signed vint, 2 bytes: bias 8191), last implied.
    let d = (8191i32 - 290) as u16 | 0x4000;
    let ebml_lace = block(
        1,
        100,
        0x80 | 0x06,
        &[2, 0x41, 0x2C, (d >> 8) as u8, d as u8],
        &[&a, &b, &c],
    );
    // Fixed: 2 frames of 5.
    let fixed = block(1, 200, 0x80 | 0x04, &[1], &[&[4u8; 5], &[5u8; 5]]);
    let mut cl = uint(&[0xE7], 0);
    for blk in [xiph, ebml_lace, fixed] {
        cl.extend(el(&[0xA3], &blk));
    }
    // A BlockGroup without ReferenceBlock on an A_MS/ACM µ-law track.
    let mut wav = vec![7, 0, 1, 0];
    wav.extend_from_slice(&8000u32.to_le_bytes());
    let grp = el(&[0xA1], &block(2, 0, 0, &[], &[&[9u8; 160]]));
    cl.extend(el(&[0xA0], &grp));
    let cluster = el_unknown(&[0x1F, 0x43, 0xB6, 0x75], &cl);
    let mut cl2 = uint(&[0xE7], 1000);
    let mut grp2 = el(&[0xA1], &block(2, 0, 0, &[], &[&[8u8; 160]]));
    grp2.extend(uint(&[0xFB], 0));
    cl2.extend(el(&[0xA0], &grp2));
    let cluster2 = el(&[0x1F, 0x43, 0xB6, 0x75], &cl2);
    let data = file(
        &[
            track(1, "A_OPUS", b"OpusHead"),
            track(2, "A_MS/ACM", &wav),
            track(3, "S_TEXT/UTF8", &[]),
        ],
        &[cluster, cluster2],
    );
    let mut d = crate::open_reader(Cursor::new(data)).expect("open");
    assert_eq!(d.info().tracks.len(), 2);
    assert_eq!(d.info().tracks[1].params.codec, Codec::Pcmu);
    assert_eq!(d.info().tracks[1].params.sample_rate, Some(8000));
    assert_eq!(d.skipped_tracks().len(), 1, "{:?}", d.skipped_tracks());
    let mut got = Vec::new();
    while let Some(s) = d.next_sample().expect("sample") {
        got.push((s.track, s.pts, s.keyframe, s.data.len(), s.data[0]));
    }
    let opus: Vec<_> = got
        .iter()
        .filter(|g| g.0 == 0)
        .map(|g| (g.1, g.3, g.4))
        .collect();
    assert_eq!(
        opus,
        [
            (0, 300, 1),
            (20, 10, 2),
            (40, 7, 3),
            (100, 300, 1),
            (120, 10, 2),
            (140, 7, 3),
            (200, 5, 4),
            (220, 5, 5)
        ]
    );
    let pcm: Vec<_> = got
        .iter()
        .filter(|g| g.0 == 1)
        .map(|g| (g.1, g.2))
        .collect();
    assert_eq!(pcm, [(0, true), (1000, false)]);
    // Audio-only: seek lands on the sample at or before t.
    assert_eq!(
        d.seek(Duration::from_millis(130)).expect("seek"),
        Duration::ZERO
    );
    assert!(d.keyframe_times().is_empty());
}

#[test]
fn rejects_other_doc_types() {
    let data = el(&[0x1A, 0x45, 0xDF, 0xA3], &el(&[0x42, 0x82], b"nonsense"));
    assert!(matches!(
        crate::open_reader(Cursor::new(data)),
        Err(crate::MediaError::Unsupported(_))
    ));
}
