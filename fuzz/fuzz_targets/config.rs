//! Fuzz target `config`: see `sluice_server::fuzzing::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_server::fuzzing::config(data);
});
