#!/usr/bin/env bash
# scripts/test.sh — THE test command for Sluice (the README advertises it and
# .ci/run calls it).
#
#   1. scripts/install-test-deps.sh  external peers for the integration tests
#                                    (ffmpeg, GStreamer, iproute2, ...); a fast
#                                    no-op when already installed
#   2. cargo fmt --all -- --check
#   3. cargo clippy --workspace --all-targets -- -D warnings
#   4. cargo test --workspace        unit tests + real-peer integration tests
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

echo "==> cargo test"
cargo test --workspace "$@"
