//! Fuzz target `rtsp_response`: see `sluice_rtsp::fuzzing::responses`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::responses(data);
});
