//! Fuzz target `client_session`: see `sluice_rtsp::fuzzing::client_session`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::client_session(data);
});
