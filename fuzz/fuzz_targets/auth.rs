//! Fuzz target `auth`: see `sluice_rtsp::fuzzing::auth`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::auth(data);
});
