//! Fuzz target `rtsp_headers`: see `sluice_rtsp::fuzzing::headers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::headers(data);
});
