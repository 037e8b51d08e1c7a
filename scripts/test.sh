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
#   4. scripts/fuzz-smoke.sh 3        every fuzz target 3 s (SLUICE_FUZZ_SECS)
#   5. cargo test --workspace        unit tests + real-peer integration tests
#                                    (crates/sluice/tests: ffmpeg/GStreamer/
#                                    retina publishers and readers against the
#                                    real `sluice` binary; multicast tests run
#                                    in private network namespaces and need root)
#
# Extra arguments are passed to `cargo test` (e.g. `scripts/test.sh -- --nocapture`).
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
bash scripts/fuzz-smoke.sh "${SLUICE_FUZZ_SECS:-3}"

echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: a failing binary never hides the results of the others.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one result line per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
