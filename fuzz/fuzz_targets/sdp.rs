//! Fuzz target `sdp`: see `sluice_server::fuzzing::sdp`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_server::fuzzing::sdp(data);
});
