#!/usr/bin/env bash
# scripts/fuzz-smoke.sh — runs every cargo-fuzz target in fuzz/ briefly,
# coverage-guided (libFuzzer), starting from the seed corpora in
# fuzz/corpus/<target>/. Fails on any crash, panic, timeout or OOM.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET] [TARGET...]   (default 20 s, all targets)
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only rustc flags
# (-Z sanitizer/-C passes=sancov-module...), which stable rustc accepts
# with RUSTC_BOOTSTRAP=1. `--sanitizer none`: the crates forbid unsafe
# code, and AddressSanitizer would rebuild everything for little gain.
#
# cargo-fuzz is installed from crates.io into ~/.cargo/bin if missing
# (~35 s on 2 cores). Builds go to $CARGO_TARGET_DIR (default
# target/fuzz, kept between runs). New inputs found go to a scratch
# directory, not into the checked-in seeds; crashes are written to
# fuzz/artifacts/<target>/. The libFuzzer seed is fixed (SLUICE_FUZZ_SEED, default 1) so
# a CI gate is reproducible; scripts/fuzz-long.sh explores with fresh seeds.
# SLUICE_FUZZ_PROFILE=dev (what scripts/test.sh uses) builds without optimizations: half
# the CPU time of the release build (bench/RESULTS.md, "Test command"), for a smoke run
# whose seconds per target matter less than its build; the default is release. (Reproduce with
# `scripts/fuzz-long.sh TARGET 0 fuzz/artifacts/TARGET/crash-...`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CARGO_FUZZ_VERSION=0.13.2
secs=${1:-20}
shift || true

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/fuzz}

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

profile=()
if [ "${SLUICE_FUZZ_PROFILE:-release}" = dev ]; then
    profile=(--dev)
fi

echo "==> cargo fuzz build ${profile[*]}"
cargo fuzz build "${profile[@]}" --sanitizer none

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    echo "==> fuzz $t for ${secs}s"
    mkdir -p "$scratch/$t" "artifacts/$t"
    if ! cargo fuzz run "${profile[@]}" --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -seed="${SLUICE_FUZZ_SEED:-1}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
        failed+=("$t")
        tail -n 40 "$scratch/$t.log"
        echo "!!! $t failed; crashing input(s) in fuzz/artifacts/$t/"
    else
        grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$scratch/$t.log" | tr '\n' ' '
        echo
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz smoke: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz smoke: ${#targets[@]} targets ok"
