#!/usr/bin/env bash
# bench/whep.sh — WHEP viewer load: N WebRTC viewers (str0m peers in another process: real ICE,
# DTLS and SRTP over loopback) of one ~600 kb/s path (640x480 30 fps H.264 ~550 kb/s + Opus 48 kb/s,
# encoded live by ffmpeg from lavfi and published over RTSP/TCP); the load client samples the
# server process (utime+stime, VmRSS) over the window and prints one JSON line per case.
#
#   bench/whep.sh                 # 200 and 500 viewers, 20 s windows
#   BENCH_VIEWERS="200" BENCH_SECS=30 bench/whep.sh
#
# Binaries: target/release/{sluice,sluice-bench} (cargo build --release -p sluice -p sluice-bench),
# or SLUICE_BIN / SLUICE_BENCH_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
BENCH_BIN=${SLUICE_BENCH_BIN:-target/release/sluice-bench}
VIEWERS=${BENCH_VIEWERS:-"200 500"}
SECS=${BENCH_SECS:-20}
RTSP=${BENCH_RTSP_PORT:-8754}
HTTP=${BENCH_HTTP_PORT:-8780}
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
udp_port = 0
advertise = ["127.0.0.1"]
max_sessions = 5000
TOML

for n in $VIEWERS; do
  "$SLUICE_BIN" serve --config "$work/sluice.toml" 2>"$work/sluice.log" &
  spid=$!
  sleep 1
  ffmpeg -nostdin -loglevel error -re -f lavfi -i testsrc2=size=640x480:rate=30 \
    -f lavfi -i sine=frequency=440:sample_rate=48000 \
    -c:v libx264 -preset ultrafast -tune zerolatency -profile:v baseline -bf 0 -g 60 \
    -b:v 550k -maxrate 550k -bufsize 550k -pix_fmt yuv420p -c:a libopus -b:a 48k \
    -f rtsp -rtsp_transport tcp "rtsp://127.0.0.1:$RTSP/live" &
  fpid=$!
  sleep 4
  "$BENCH_BIN" whep "http://127.0.0.1:$HTTP/live/whep" --viewers "$n" --duration "$SECS" \
    --server-pid "$spid" --fps 30
  kill "$fpid" 2>/dev/null || true
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  wait "$fpid" 2>/dev/null || true
done
