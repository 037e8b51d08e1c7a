#!/usr/bin/env bash
# scripts/test.sh — THE test command for Sluice (the README advertises it and
# .ci/run calls it).
#
#   1. scripts/install-test-deps.sh  external peers for the integration tests
#                                    (ffmpeg, GStreamer, iproute2, ...); a fast
#                                    no-op when already installed
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#      cargo doc --workspace --no-deps   with rustdoc warnings as errors
#      scripts/check-house-rules.sh  the architecture's house rules a script can
#                                    see (sans-IO crates, unsafe, module imports)
#   4. scripts/fuzz-smoke.sh 3        every fuzz target 3 s (SLUICE_FUZZ_SECS),
#                                    built without optimizations (faster to build)
#   5. scripts/run-tests.py          `cargo test --workspace`, three test binaries
#                                    at a time: unit tests + real-peer integration
#                                    tests (crates/sluice/tests: ffmpeg/GStreamer/
#                                    retina publishers and readers against the
#                                    real `sluice` binary; multicast tests run
#                                    in private network namespaces and need root)
#
# Extra arguments are passed to `cargo test` (e.g. `scripts/test.sh -- --nocapture`);
# SLUICE_TEST_JOBS=1 runs the test binaries one after another.
# Integration test logs (server stderr, peer output) are kept under
# target/tmp/sluice-it/; SLUICE_TEST_LOG sets the server's RUST_LOG (default debug).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "==> house rules"
bash scripts/check-house-rules.sh

# Coverage-guided fuzzing, briefly: every cargo-fuzz target from its seed corpus
# (scripts/fuzz-long.sh runs one for long). SLUICE_FUZZ_SECS sets the time per target.
echo "==> fuzz smoke"
SLUICE_FUZZ_PROFILE=${SLUICE_FUZZ_PROFILE:-dev} bash scripts/fuzz-smoke.sh "${SLUICE_FUZZ_SECS:-3}"

echo "==> cargo test"
# Builds every test binary, then runs three at a time (the machine-measuring ones alone),
# then the doc tests; a failing binary never hides the results of the others.
exec python3 scripts/run-tests.py "$@"
