//! Truncated, corrupted and randomly mutated files: errors or early ends, never panics.

mod common;

use common::*;
use proptest::prelude::*;

const TINY: [&str; 4] = ["tiny.mp4", "tiny_frag.mp4", "tiny.mkv", "tiny.webm"];

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).expect("read")
}

#[test]
fn tiny_files_open() {
    for name in TINY {
        let data = read(&tiny(name));
        assert!(data.len() < 20_000, "{name} is {} bytes", data.len());
        assert!(exercise(data), "{name} should open");
    }
}

#[test]
fn truncated_files_never_panic() {
    let files = [
        media(&MP4),
        media(&MP4_FASTSTART),
        media(&FMP4),
        media(&MKV_HEVC),
        media(&WEBM),
        media(&MKV_H264),
    ];
    for path in files {
        let data = read(&path);
        let mut cuts: Vec<usize> = vec![0, 1, 4, 8, 12, 16, 40, 100, 1000, 4096];
        cuts.extend((1..20).map(|k| data.len() * k / 20));
        cuts.push(data.len() - 1);
        for cut in cuts {
            exercise(data[..cut.min(data.len())].to_vec());
        }
        // A file cut in its sample data still opens and ends early.
        let half = data[..data.len() / 2].to_vec();
        let moov_at_end = path.ends_with("h264_aac.mp4");
        assert_eq!(exercise(half), !moov_at_end, "{}", path.display());
    }
}

#[test]
fn corrupted_files_never_panic() {
    let files = [
        media(&MP4_FASTSTART),
        media(&FMP4),
        media(&MKV_HEVC),
        media(&WEBM),
    ];
    for path in files {
        let data = read(&path);
        // xorshift: deterministic positions, denser in the headers.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..40 {
            let mut m = data.clone();
            for _ in 0..(1 + round % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let span = if round % 2 == 0 {
                    4096.min(m.len())
                } else {
                    m.len()
                };
                let i = (x as usize) % span;
                m[i] ^= (x >> 32) as u8 | 1;
            }
            exercise(m);
        }
    }
}

#[test]
fn hostile_lengths_are_bounded() {
    // A moov claiming 4 GiB, an mdat with largesize, EBML elements of huge size.
    let mut mp4 = b"\0\0\0\x10ftypisom\0\0\0\0".to_vec();
    mp4.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xF0]);
    mp4.extend_from_slice(b"moov");
    assert!(!exercise(mp4));
    let mut big = b"\0\0\0\x01mdat".to_vec();
    big.extend_from_slice(&u64::MAX.to_be_bytes());
    assert!(!exercise(big));
    let mkv = vec![
        0x1A, 0x45, 0xDF, 0xA3, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0x42, 0x82,
    ];
    assert!(!exercise(mkv));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn random_mutations_never_panic(
        file in 0usize..TINY.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut data = read(&tiny(TINY[file]));
        for (i, b) in edits {
            let i = i.index(data.len());
            data[i] = b;
        }
        if let Some(c) = cut {
            data.truncate(c.index(data.len()));
        }
        exercise(data);
    }
}

#[test]
fn fuzz_seed_corpus_opens() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/demux");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let opened = exercise(read(&path));
        // `regress-*` seeds are inputs that once broke the demuxer: they must be handled
        // (here: refused) without panic or runaway allocation; the others are valid files.
        let regression = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("regress-"));
        assert!(opened || regression, "{} should open", path.display());
        n += 1;
    }
    assert!(n >= 2);
}
