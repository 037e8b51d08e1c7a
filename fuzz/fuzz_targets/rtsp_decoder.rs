//! Fuzz target `rtsp_decoder`: see `sluice_rtsp::fuzzing::decoder_roundtrip`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtsp::fuzzing::decoder_roundtrip(data);
});
