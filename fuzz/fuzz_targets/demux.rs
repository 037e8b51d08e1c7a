//! Opens arbitrary bytes as a media file and drains samples (bounded), seeking once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut demuxer) = sluice_media::open_reader(std::io::Cursor::new(data.to_vec())) else {
        return;
    };
    let _ = demuxer.info();
    let _ = demuxer.keyframe_times();
    for round in 0..2 {
        for _ in 0..10_000 {
            match demuxer.next_sample() {
                Ok(Some(s)) => assert!(s.data.len() <= data.len()),
                _ => break,
            }
        }
        if round == 0 && demuxer.seek(std::time::Duration::from_millis(500)).is_err() {
            break;
        }
    }
});
