#!/usr/bin/env bash
# bench/hls.sh — LL-HLS load: N clients (sluice-bench hls: hls.js's live-edge loop, i.e. a blocking
# playlist reload for the next part and a GET of each new part, one keep-alive connection per client)
# of one ~600 kb/s path (640x480 30 fps H.264 ~550 kb/s + AAC 48 kb/s, encoded live by ffmpeg from
# lavfi and published over RTSP/TCP); the load client samples the server process (utime+stime, VmRSS)
# over the window and prints one JSON line per case. Not part of the test command.
#
#   bench/hls.sh                        # 300 clients, 60 s window
#   BENCH_CLIENTS="100 300" BENCH_SECS=30 bench/hls.sh
#
# Binaries: target/release/{sluice,sluice-bench} (cargo build --release -p sluice -p sluice-bench),
# or SLUICE_BIN / SLUICE_BENCH_BIN. Prints the load average before and after each case.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
BENCH_BIN=${SLUICE_BENCH_BIN:-target/release/sluice-bench}
CLIENTS=${BENCH_CLIENTS:-"300"}
SECS=${BENCH_SECS:-60}
RTSP=${BENCH_RTSP_PORT:-8854}
HTTP=${BENCH_HTTP_PORT:-8880}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ulimit -n 65536 2>/dev/null || true

cat >"$work/sluice.toml" <<TOML
[rtsp]
listen = "127.0.0.1:$RTSP"
transports = ["tcp"]
[demo]
enabled = false
[log]
level = "info"
[http]
listen = "127.0.0.1:$HTTP"
[webrtc]
enabled = false
TOML

for n in $CLIENTS; do
  "$SLUICE_BIN" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
  spid=$!
  sleep 1
  ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc2=size=640x480:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 \
    -c:v libx264 -preset ultrafast -tune zerolatency -profile:v baseline -bf 0 -g 30 \
    -b:v 550k -maxrate 550k -bufsize 550k -pix_fmt yuv420p -c:a aac -b:a 48k \
    -f rtsp -rtsp_transport tcp "rtsp://127.0.0.1:$RTSP/live" &
  fpid=$!
  sleep 4
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$BENCH_BIN" hls "http://127.0.0.1:$HTTP/live/index.m3u8" --clients "$n" --duration "$SECS" \
    --server-pid "$spid"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  kill "$fpid" 2>/dev/null || true
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  wait "$fpid" 2>/dev/null || true
done
