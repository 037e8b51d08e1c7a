//! Fuzz target `interleaved`: see `sluice_rtsp::fuzzing::interleaved`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::interleaved(data);
});
