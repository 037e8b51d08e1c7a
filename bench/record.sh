#!/usr/bin/env bash
# bench/record.sh — how many 4 Mb/s streams one core records with fsync = "part".
#
# Publishes BENCH_STREAMS (default 8) copies of a generated 4 Mb/s H.264 + AAC stream
# (ffmpeg -re -c copy, RTSP over TCP) to a release `sluice`, twice: once recording every
# path (1 s parts, fdatasync after each), once not recording. Each run measures the
# server's CPU time (utime + stime from /proc) over BENCH_SECS (default 30) after a 5 s
# warm-up. The recorder's cost is the difference; streams per core = streams / (recorder
# CPU seconds per wall second). Drops and write errors come from /metrics.
#
# Usage: bench/record.sh [--no-build]    (env: BENCH_STREAMS, BENCH_SECS, BENCH_DIR)
# Prints a Markdown table row set to append to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${BENCH_STREAMS:-8}
SECS=${BENCH_SECS:-30}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/sluice-rec-bench.XXXXXX)}
[ "${1:-}" = "--no-build" ] || cargo build --release -p sluice >&2
BIN=target/release/sluice
SRC="$WORK/4mbps.mp4"
if [ ! -f "$SRC" ]; then
  ffmpeg -nostdin -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=1280x720:rate=25" -f lavfi -i "sine=frequency=440:sample_rate=48000" \
    -t 20 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -b:v 4M -maxrate 4M -bufsize 8M \
    -g 50 -pix_fmt yuv420p -c:a aac -b:a 64k "$SRC"
fi
HZ=$(getconf CLK_TCK)

run() { # $1: record|live
  local mode=$1 port=18654 http=18680 dir="$WORK/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  {
    printf '[rtsp]\nlisten = "127.0.0.1:%s"\ntransports = ["tcp"]\nrtp_port = 18600\n' "$port"
    printf '[http]\nlisten = "127.0.0.1:%s"\n[webrtc]\nudp_port = 0\n[hls]\nenabled = false\n[demo]\nenabled = false\n' "$http"
    if [ "$mode" = record ]; then
      printf '[record]\ndir = "%s/rec"\npaths = ["~^s"]\nfsync = "part"\npart_duration = "1s"\nsegment_duration = "60s"\n' "$dir"
    fi
  } >"$dir/s.toml"
  RUST_LOG=warn "$BIN" serve --config "$dir/s.toml" 2>"$dir/server.log" &
  local spid=$!
  sleep 1
  local pubs=()
  for i in $(seq 1 "$STREAMS"); do
    ffmpeg -nostdin -hide_banner -loglevel error -re -stream_loop -1 -i "$SRC" -c copy \
      -f rtsp -rtsp_transport tcp "rtsp://127.0.0.1:$port/s$i" 2>"$dir/pub$i.log" &
    pubs+=($!)
  done
  sleep 5
  local t0 c0 t1 c1
  t0=$(date +%s.%N); c0=$(awk '{print $14+$15}' "/proc/$spid/stat")
  sleep "$SECS"
  t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' "/proc/$spid/stat")
  local metrics
  metrics=$(curl -s "http://127.0.0.1:$http/metrics" || true)
  kill "${pubs[@]}" 2>/dev/null || true
  kill "$spid" 2>/dev/null || true
  wait 2>/dev/null || true
  local cpu wall
  cpu=$(echo "($c1 - $c0) / $HZ" | bc -l); wall=$(echo "$t1 - $t0" | bc -l)
  local drops errors fsync_sum fsync_n bytes
  drops=$(grep -E '^sluice_record_dropped_total' <<<"$metrics" | awk '{s+=$2} END {print s+0}')
  errors=$(grep -E '^sluice_record_write_errors_total' <<<"$metrics" | awk '{s+=$2} END {print s+0}')
  bytes=$(grep -E '^sluice_record_bytes_total' <<<"$metrics" | awk '{s+=$2} END {print s+0}')
  fsync_sum=$(grep -E '^sluice_record_fsync_seconds_sum' <<<"$metrics" | awk '{print $2+0}')
  fsync_n=$(grep -E '^sluice_record_fsync_seconds_count' <<<"$metrics" | awk '{print $2+0}')
  echo "$mode $cpu $wall ${drops:-0} ${errors:-0} ${bytes:-0} ${fsync_sum:-0} ${fsync_n:-0}"
}

R=$(run record); L=$(run live)
read -r _ rcpu rwall drops errors bytes fsum fn <<<"$R"
read -r _ lcpu lwall _ _ _ _ _ <<<"$L"
rec_share=$(echo "$rcpu / $rwall" | bc -l)
live_share=$(echo "$lcpu / $lwall" | bc -l)
diff=$(echo "$rec_share - $live_share" | bc -l)
per_core=$(echo "if ($diff > 0) $STREAMS / $diff else 0" | bc -l)
mbps=$(echo "$bytes * 8 / ($rwall + 5) / 1000000 / $STREAMS" | bc -l)
fsync_ms=$(echo "if ($fn > 0) 1000 * $fsum / $fn else 0" | bc -l)
printf '| %s | %d × %.1f Mb/s | %.0f s | %.1f %% | %.1f %% | %.1f %% | **%.0f** | %.2f ms | %s | %s |\n' \
  "$(date -u +%Y%m%d-%H%M%S)" "$STREAMS" "$mbps" "$SECS" "$(echo "100*$rec_share" | bc -l)" \
  "$(echo "100*$live_share" | bc -l)" "$(echo "100*$diff" | bc -l)" "$per_core" "$fsync_ms" "$drops" "$errors"
