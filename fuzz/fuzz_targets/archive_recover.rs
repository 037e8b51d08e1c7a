//! Recovers arbitrary bytes as an archive segment left open by a crash, and rebuilds its
//! index record: never panics, keeps a prefix of the input that recovers to itself, and
//! the record's encoding round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_media::archive::{recover, reindex, SegmentRecord};

fuzz_target!(|data: &[u8]| {
    let r = recover(data);
    assert!(r.valid_len <= data.len() as u64);
    let kept = &data[..r.valid_len as usize];
    let again = recover(kept);
    assert_eq!(again.valid_len, r.valid_len);
    assert_eq!(again.parts.len(), r.parts.len());
    let _ = r.media_base();
    if let Some((start, end)) = r.media_range() {
        // Media time from the segment's start: its first part starts it.
        assert_eq!(start, std::time::Duration::ZERO);
        assert!(end >= start);
    }
    let _ = r.wall_range();
    if let Ok(record) = reindex("fuzz.mp4", data) {
        assert_eq!(record.bytes, r.valid_len);
        let bytes = record.encode();
        let _ = SegmentRecord::decode(&bytes);
    }
    let _ = SegmentRecord::decode(data);
});
