#!/usr/bin/env bash
# scripts/check-house-rules.sh — the architecture's house rules that a machine can see
# (docs/ARCHITECTURE.md, "House rules"). scripts/test.sh runs it; it exits 1 naming every
# breach. Rules that rustc and clippy enforce ([workspace.lints]: missing_docs,
# unreachable_pub, undocumented unsafe blocks) are not repeated here.
#
#   1. The sans-IO crates depend directly on no runtime, socket or OS crate
#      (tokio, mio, libc, socket2, io-uring).
#   2. The sans-IO crates read no clock outside tests: no `Instant::now()` / `SystemTime::now()`
#      in their src/ before the file's `#[cfg(test)]` (fuzzing helpers, compiled only
#      with the `fuzzing` feature, count as tests).
#   3. `unsafe` appears only in the net crate and tools/ (UNSAFE_ALLOWED); every other
#      library crate root says `#![forbid(unsafe_code)]`.
#   4. A server module folder (crates/server/src/<module>/) imports no other module folder
#      and never the composition root (server.rs)
#      (config and auth are shared by all; http's public route types — HttpRoutes,
#      StreamTarget, HttpAuth — are what modules serving HTTP routes build on).
#   5. Commit subjects since this script came in are at most 72 characters.
set -euo pipefail
cd "$(dirname "$0")/.."

SANS_IO=(rtsp rtp codec media hub)
FORBIDDEN_DEPS='^(tokio|mio|libc|socket2|io-uring) '
UNSAFE_ALLOWED=(crates/net tools)
fail=0
breach() { echo "house rule: $*" >&2; fail=1; }

for c in "${SANS_IO[@]}"; do
  [ -d "crates/$c" ] || continue
  pkg=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "crates/$c/Cargo.toml" | head -n 1)
  deps=$(cargo tree -q -p "$pkg" -e normal --depth 1 --prefix none 2>/dev/null | tail -n +2 || true)
  bad=$(grep -E "$FORBIDDEN_DEPS" <<<"$deps" || true)
  [ -z "$bad" ] || breach "$pkg is sans-IO but depends on: $(tr '\n' ' ' <<<"$bad")"

  while IFS= read -r f; do
    case "$f" in */tests.rs | */tests/* | */fuzzing.rs) continue ;; esac
    hits=$(awk '/^#\[cfg\(test\)\]/ { exit } /^[[:space:]]*\/\// { next } /(Instant|SystemTime)::now\(\)/ { print FILENAME ":" FNR ": " $0 }' "$f")
    [ -z "$hits" ] || breach "clock read in sans-IO code (pass the time in): $hits"
  done < <(find "crates/$c/src" -name '*.rs')
done

allowed() {
  local f=$1 a
  for a in "${UNSAFE_ALLOWED[@]}"; do [[ $f == "$a"/* ]] && return 0; done
  return 1
}
while IFS= read -r hit; do
  f=${hit%%:*}
  allowed "$f" && continue
  breach "unsafe outside the crates allowed it: $hit"
done < <(grep -rnE '\bunsafe\b *(\{|fn|impl)' crates tools --include=*.rs 2>/dev/null | grep -v '^crates/[^/]*/tests/' || true)
for root in crates/*/src/lib.rs crates/sluice/src/main.rs; do
  allowed "$root" && continue
  grep -q '^#!\[forbid(unsafe_code)\]' "$root" || breach "$root lacks #![forbid(unsafe_code)]"
done

for dir in crates/server/src/*/; do
  [ -d "$dir" ] || continue
  m=$(basename "$dir")
  for other in crates/server/src/*/; do
    o=$(basename "$other")
    case "$o" in "$m" | config | auth | http) continue ;; esac
    hits=$(grep -rnE "(crate|super)::$o\b" "$dir" --include=*.rs || true)
    [ -z "$hits" ] || breach "module $m imports module $o: $hits"
  done
  # The composition root names the modules; a module never names it back.
  hits=$(grep -rnE "(crate|super)::server\b" "$dir" --include=*.rs || true)
  [ -z "$hits" ] || breach "module $m imports the composition root: $hits"
done

rules_base=$(git log --format=%H --diff-filter=A -1 -- scripts/check-house-rules.sh 2>/dev/null || true)
if [ -n "$rules_base" ]; then
  long=$(git log --format='%s' "$rules_base..HEAD" | awk 'length($0) > 72')
  [ -z "$long" ] || breach "commit subjects over 72 characters: $long"
fi

if [ "$fail" -ne 0 ]; then
  echo "house rules: broken (see above)" >&2
  exit 1
fi
echo "house rules: kept"
