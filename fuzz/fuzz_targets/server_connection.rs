//! Fuzz target `server_connection`: see `sluice_rtsp::fuzzing::server_connection`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::server_connection(data);
});
