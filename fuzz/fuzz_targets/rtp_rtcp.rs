//! Fuzz target `rtp_rtcp`: see `sluice_rtp::fuzzing::rtp_rtcp`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_rtp::fuzzing::rtp_rtcp(data);
});
