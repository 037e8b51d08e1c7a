#!/usr/bin/env bash
# bench/idle.sh — idle ingest: server CPU and RSS with N publishers of bench/media/hi.mp4 (4 Mb/s,
# -c copy, RTSP/TCP) and no reader, i.e. what the per-stream sinks (RTSP reader group, HLS tap, WebRTC
# feed) cost a path nobody watches. Runs each binary in turn, twice:
#
#   BEFORE=target/sluice-before AFTER=target/release/sluice bench/idle.sh
#
# (the third variant runs AFTER with [hls] disabled: the HLS tap's share). Media: bench/fanout.sh makes it.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-4}
BEFORE=${BEFORE:-target/sluice-before}
AFTER=${AFTER:-target/release/sluice}
work=$(mktemp -d)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() {
  local bin=$1 extra=$2 label=$3
  cat >"$work/s.toml" <<TOML
[rtsp]
listen = "127.0.0.1:8954"
rtp_port = 19000
multicast_rtp_port = 19002
[demo]
enabled = false
[log]
level = "warn"
[http]
listen = "127.0.0.1:8980"
[webrtc]
udp_port = 0
$extra
TOML
  "$bin" serve --config "$work/s.toml" >"$work/log" 2>&1 &
  local spid=$!
  sleep 1
  local pubs=()
  for i in $(seq 1 $N); do
    ffmpeg -nostdin -loglevel error -re -stream_loop -1 -i bench/media/hi.mp4 -c copy -f rtsp -rtsp_transport tcp "rtsp://127.0.0.1:8954/live$i" &
    pubs+=($!)
  done
  sleep 5
  local l0=$(cut -d' ' -f1 /proc/loadavg) c0=$(cpu $spid) t0=$(date +%s.%N)
  sleep 20
  local c1=$(cpu $spid) t1=$(date +%s.%N) l1=$(cut -d' ' -f1 /proc/loadavg)
  local rss=$(awk '/VmRSS/{print $2}' /proc/$spid/status)
  echo "$label: server CPU $(echo "($c1-$c0)/($t1-$t0)" | bc -l | xargs printf '%.2f') % of a core, RSS $((rss/1024)) MiB, $N publishers x 4 Mb/s, no reader; load $l0 -> $l1"
  kill "${pubs[@]}" 2>/dev/null; kill $spid; wait 2>/dev/null
  sleep 1
}
for round in 1 2; do
  run "$BEFORE" "" "before"
  run "$AFTER" "" "after"
  run "$AFTER" $'[hls]\nenabled = false' "after, [hls] off"
done
rm -rf "$work"
