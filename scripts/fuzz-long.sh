#!/usr/bin/env bash
# scripts/fuzz-long.sh TARGET [SECONDS] [-- LIBFUZZER_ARGS...]
#
# Runs one fuzz target for SECONDS (default 3600; 0 = until stopped) on the
# stable toolchain (RUSTC_BOOTSTRAP=1, see scripts/fuzz-smoke.sh), one
# libFuzzer job per core. The growing corpus is kept in fuzz/corpus-long/TARGET
# (not checked in) and seeded from fuzz/corpus/TARGET; crashes land in
# fuzz/artifacts/TARGET/. Examples:
#
#   scripts/fuzz-long.sh rtsp_decoder 3600
#   scripts/fuzz-long.sh sdp 0 -- -max_len=8192
#   scripts/fuzz-long.sh auth -- fuzz/artifacts/auth/crash-XXXX   # reproduce one input
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz cmin --sanitizer none TARGET corpus-long/TARGET  # minimise
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${1:?usage: scripts/fuzz-long.sh TARGET [SECONDS] [-- LIBFUZZER_ARGS...]}
shift
secs=3600
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    secs=$1
    shift
fi
[ "${1:-}" = "--" ] && shift

CARGO_FUZZ_VERSION=0.13.2
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/fuzz}

cd fuzz
# A single input file to reproduce: run it once.
if [ $# -gt 0 ] && [ -f "$1" ]; then
    exec cargo fuzz run --sanitizer none "$target" "$@"
fi
mkdir -p "corpus-long/$target" "artifacts/$target"
jobs=$(nproc)
exec cargo fuzz run --sanitizer none --jobs "$jobs" "$target" "corpus-long/$target" "corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
