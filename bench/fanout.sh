#!/usr/bin/env bash
# Fan-out load benchmark: Sluice vs gst-rtsp-server on this machine, loopback only.
#
#   bench/fanout.sh            full run: 4 Mb/s stream at N = 100, 400, 1000 and a 200 kb/s stream at
#                              N = 1000, 5000, 10000, over UDP and TCP, on both servers (~15-20 min)
#   bench/fanout.sh --quick    smoke run: one small N per case, 5 s windows (< 2 min once built)
#
# Environment overrides:
#   BENCH_CASES="hi:udp:400 hi:tcp:400"   only these cases (stream hi|lo : transport : readers)
#   BENCH_SERVERS="sluice gst floor"      which servers, in this order (floor: `sluice-bench floor`, the
#                                         kernel's own cost for the same fan-out, no server; see below)
#   BENCH_DURATION=20                     measurement window per run, seconds
#   BENCH_ORDER=interleaved|grouped       interleaved (default): for each case, every server in turn,
#                                         each started fresh; grouped: each server once per stream with
#                                         its cases back to back (fewer restarts, but a row's figures are
#                                         then up to a quarter of an hour apart)
#   BENCH_REPEAT=3                        run every case this many times (default 1); the table shows
#                                         each server's median run and every repetition's S / ⅓ G
#   CARGO_TARGET_DIR=/tmp/target-bench    where sluice and sluice-bench are built (--release)
#   SLUICE_BIN=/path/to/sluice            use this server binary, do not build it
#   SLUICE_BENCH_BIN=/path/to/sluice-bench   use this load client / floor binary (tools/bench), do not build it
#   BENCH_FANOUT_WINDOW=40ms              run Sluice with [rtsp] fanout_window (default: a batch per frame)
#   BENCH_PERF=auto|1|0                   perf-sample each server during the window to split its CPU into
#                                         the loopback receive path and its own work (auto: if perf exists)
#
# Each run is one `sluice-bench load` process (tools/bench: the benchmark tools, not part of the product) (handshakes on current-thread tokio, playing readers
# on one media thread, recvmmsg) that samples the server process's utime+stime and VmRSS itself
# over the window (--server-pid); one JSON line per run goes to bench/out/<stamp>.jsonl; the
# side-by-side table is printed and appended to bench/RESULTS.md. See bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

TARGET=${CARGO_TARGET_DIR:-/tmp/target-bench}
BIN=$TARGET/release/sluice
BENCH_BIN=$TARGET/release/sluice-bench
MEDIA=$ROOT/bench/media
OUTDIR=$ROOT/bench/out
STAMP=$(date +%Y%m%d-%H%M%S)
JSONL=$OUTDIR/$STAMP.jsonl
LOGDIR=$OUTDIR/$STAMP-logs
SLUICE_PORT=8654
SLUICE_RTP=18000
GST_PORT=8601
PY=/usr/bin/python3
GST_PEER=${GST_PEER:-/work/shared/peers/gst_rtsp_server.py}

if [[ $QUICK == 1 ]]; then
  DURATION=${BENCH_DURATION:-5}
  CASES=${BENCH_CASES:-"hi:udp:50 hi:tcp:50 lo:udp:200 lo:tcp:200"}
else
  DURATION=${BENCH_DURATION:-20}
  CASES=${BENCH_CASES:-"hi:udp:100 hi:udp:400 hi:udp:1000 hi:tcp:100 hi:tcp:400 hi:tcp:1000 \
lo:udp:1000 lo:udp:5000 lo:udp:10000 lo:tcp:1000 lo:tcp:5000 lo:tcp:10000"}
fi
SERVERS=${BENCH_SERVERS:-"sluice gst floor"}
ORDER=${BENCH_ORDER:-interleaved}
if [[ $ORDER != interleaved && $ORDER != grouped ]]; then
  echo "BENCH_ORDER must be interleaved or grouped, not '$ORDER'" >&2
  exit 2
fi
REPEAT=${BENCH_REPEAT:-1}
if ! [[ $REPEAT =~ ^[1-9][0-9]?$ ]]; then
  echo "BENCH_REPEAT must be a whole number from 1 to 99, not '$REPEAT'" >&2
  exit 2
fi
REP=1              # the repetition being run (1..REPEAT), recorded in each JSON line

# ---- CPU split (perf) -------------------------------------------------------------------------------
# On loopback the kernel delivers a sent packet to the receiving socket inside the sender's system call
# (the NET_RX softirq runs when the send path re-enables bottom halves), so the load client's kernel
# receive work — TCP input and ACKs, queueing each UDP datagram (and splitting a GSO run into datagrams),
# waking the reader — is counted in the *server's* utime+stime. perf samples the server for a few seconds
# of each window; the share of its samples under net_rx_action is that receive path, the rest is the
# server's own work. Sampling (299 Hz with call chains) costs both servers alike.
PERF=${BENCH_PERF:-auto}
if [[ $PERF == auto ]]; then
  if command -v perf >/dev/null 2>&1 && perf record -q -F 99 -g -o /dev/null -- true >/dev/null 2>&1; then PERF=1; else PERF=0; fi
fi
if [[ $PERF == 1 ]] && ! command -v perf >/dev/null 2>&1; then
  echo "BENCH_PERF=1 but perf is not installed (Debian: apt-get install linux-perf)" >&2
  exit 2
fi
[[ $PERF == 1 ]] || echo "note: no perf: the table's receive-path split columns stay empty (BENCH_PERF=auto found none)" >&2
PERF_SECS=$(( DURATION - 3 < 2 ? 2 : (DURATION - 3 > 10 ? 10 : DURATION - 3) ))

mkdir -p "$MEDIA" "$OUTDIR" "$LOGDIR"

# ---- file descriptors: 10,000 UDP readers are 50,000 sockets in the load client -------------------
NR_OPEN=$(cat /proc/sys/fs/nr_open 2>/dev/null || echo 1048576)
WANT=$(( NR_OPEN < 200000 ? NR_OPEN : 200000 ))
ulimit -Hn "$WANT" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "fd limit: $(ulimit -n) (the servers and the load client inherit it)"
if (( $(ulimit -n) < 60000 )); then
  echo "note: fd limit $(ulimit -n) < 60000 (hard limit, no CAP_SYS_RESOURCE): large UDP cases are split over several load processes" >&2
fi

# ---- build ------------------------------------------------------------------------------------------
# Prebuilt binaries (e.g. while the tree is mid-edit) are used as they are; the rest is built.
BUILD=()
if [[ -n ${SLUICE_BIN:-} ]]; then BIN=$SLUICE_BIN; else BUILD+=(-p sluice); fi
if [[ -n ${SLUICE_BENCH_BIN:-} ]]; then BENCH_BIN=$SLUICE_BENCH_BIN; else BUILD+=(-p sluice-bench); fi
if (( ${#BUILD[@]} > 0 )); then
  echo "building ${BUILD[*]} (release) into $TARGET ..."
  CARGO_TARGET_DIR=$TARGET cargo build --release "${BUILD[@]}" --quiet
fi

# ---- media (PEERS.md commands; cached in bench/media) -----------------------------------------------
gen_media() {
  if [[ ! -s $MEDIA/hi.mp4 ]]; then
    echo "generating $MEDIA/hi.mp4 (1080p30 H.264 4 Mb/s, GOP 2 s, no B-frames + AAC 128k, 60 s) ..."
    ffmpeg -nostdin -loglevel error -y -f lavfi -i testsrc2=size=1920x1080:rate=30 \
      -f lavfi -i sine=frequency=1000:sample_rate=48000 -t 60 -map 0:v -map 1:a \
      -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p \
      -b:v 4M -maxrate 4M -bufsize 8M -g 60 -keyint_min 60 -sc_threshold 0 -bf 0 \
      -c:a aac -b:a 128k -ac 1 -movflags +faststart "$MEDIA/hi.mp4.tmp.mp4"
    mv "$MEDIA/hi.mp4.tmp.mp4" "$MEDIA/hi.mp4"
  fi
  if [[ ! -s $MEDIA/lo.mp4 ]]; then
    echo "generating $MEDIA/lo.mp4 (640x360p30 H.264 168 kb/s, GOP 2 s + AAC 32k: ~200 kb/s, 60 s) ..."
    ffmpeg -nostdin -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=30 \
      -f lavfi -i sine=frequency=1000:sample_rate=48000 -t 60 -map 0:v -map 1:a \
      -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p \
      -b:v 168k -maxrate 168k -bufsize 336k -g 60 -keyint_min 60 -sc_threshold 0 -bf 0 \
      -c:a aac -b:a 32k -ac 1 -movflags +faststart "$MEDIA/lo.mp4.tmp.mp4"
    mv "$MEDIA/lo.mp4.tmp.mp4" "$MEDIA/lo.mp4"
  fi
  for v in hi lo; do
    [[ -s $MEDIA/$v.h264 ]] || ffmpeg -nostdin -loglevel error -y -i "$MEDIA/$v.mp4" -map 0:v -c:v copy \
      -bsf:v h264_mp4toannexb -f h264 "$MEDIA/$v.h264"
    [[ -s $MEDIA/$v.aac ]] || ffmpeg -nostdin -loglevel error -y -i "$MEDIA/$v.mp4" -map 0:a -c:a copy \
      -f adts "$MEDIA/$v.aac"
  done
}
gen_media

# ---- servers ----------------------------------------------------------------------------------------
PIDS=()            # everything this script started, killed by pid on exit
SERVER_PID=""
URL=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT INT TERM

# Waits (bounded) until DESCRIBE on $1 succeeds.
wait_ready() {
  local url=$1
  for _ in $(seq 1 60); do
    if timeout 5 "$BIN" probe "$url" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "server at $url never became ready" >&2
  return 1
}

start_sluice() {
  local variant=$1
  cat >"$LOGDIR/sluice.toml" <<EOF
[rtsp]
listen = "127.0.0.1:$SLUICE_PORT"
rtp_port = $SLUICE_RTP
multicast_rtp_port = $((SLUICE_RTP + 2))
session_timeout = "30s"
fanout_window = "${BENCH_FANOUT_WINDOW:-0ms}"

[limits]                      # the defaults (1,000 connections per IP) would refuse the largest cases
max_connections = 100000
max_connections_per_ip = 100000
max_sessions = 100000
max_readers_per_path = 100000

[demo]
enabled = false

[log]
level = "warn"
EOF
  "$BIN" serve --config "$LOGDIR/sluice.toml" >>"$LOGDIR/sluice-$variant.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  sleep 0.5
  ffmpeg -nostdin -loglevel error -re -stream_loop -1 -i "$MEDIA/$variant.mp4" -c copy \
    -f rtsp -rtsp_transport tcp "rtsp://127.0.0.1:$SLUICE_PORT/live" >>"$LOGDIR/ffmpeg-$variant.log" 2>&1 &
  PIDS+=("$!")
  URL="rtsp://127.0.0.1:$SLUICE_PORT/live"
  wait_ready "$URL"
}

start_gst() {
  local variant=$1
  GST_RTSP_BACKLOG=1024 "$PY" "$GST_PEER" "$GST_PORT" "$MEDIA/$variant.h264" "$MEDIA/$variant.aac" \
    >>"$LOGDIR/gst-$variant.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  URL="rtsp://127.0.0.1:$GST_PORT/live"
  wait_ready "$URL"
  # gst-rtsp-server tears the shared pipeline down when the last reader leaves: keep one reader
  # connected across runs (PEERS.md). Bounded: killed at stop_server, at most 1 h anyway.
  "$BENCH_BIN" load "$URL" --readers 1 --transport tcp --duration 3600 --udp-port-base 62000 \
    >>"$LOGDIR/gst-keeper.log" 2>&1 &
  PIDS+=("$!")
  sleep 2
}

stop_server() {
  cleanup
  sleep 1
}

SUMMARY_PY='
import json, sys
r = json.loads(sys.stdin.read())
s = r.get("server") or {}
k = r["first_keyframe_ms"]
e = r.get("egress_latency_us") or {}
print("   connected %d/%d  server CPU %s %%  RSS %s MiB  %s Mbit/s/reader  loss %s %%  PLAY p99 %s ms  key p50/p99 %s/%s ms  ingest->egress p50/p99 %s/%s us  client CPU %s %%"
      % (r["readers_connected"], r["readers_requested"], s.get("cpu_pct"), s.get("rss_mib_after"), r["mbit_s_per_reader"],
         r["loss_pct"], r["play_reply_ms"]["p99"], k["p50"], k["p99"], e.get("p50"), e.get("p99"), r["client_cpu_pct"]))
if "rx_share_pct" in s:
    print("   perf: %s %% of the server CPU is the loopback receive path; own CPU %s %%/Gbit/s (total %s)" % (s["rx_share_pct"], s["own_cpu_pct_per_gbit"], s["cpu_pct_per_gbit"]))
if r["failures"]: print("   failures:", r["failures"])
if r["ended_early"]: print("   ended early:", r["ended_early"])
'

# Merges the JSON lines of several load processes (one window, aligned by --window-start-unix).
MERGE_PY='
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
label = sys.argv[2]
def pct(v):
    v = sorted(v)
    if not v: return {"n": 0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    at = lambda p: v[min(len(v), max(1, -(-int(p * len(v) * 1000) // 1000))) - 1]
    return {"n": len(v), "p50": round(at(.5), 1), "p90": round(at(.9), 1), "p99": round(at(.99), 1), "max": round(v[-1], 1)}
def merge_counts(key):
    out = {}
    for r in rs:
        for k, n in r[key].items(): out[k] = out.get(k, 0) + n
    return out
S = lambda k: sum(r[k] for r in rs)
smp = lambda k: [x for r in rs for x in r["samples"][k]]
rates = smp("mbit_s"); expected = sum(r["samples"]["expected"] for r in rs)
window = sum(r["window_s"] for r in rs) / len(rs)
egress = S("egress_mbit_s"); wp = S("window_packets")
m = {"label": label, "url": rs[0]["url"], "transport": rs[0]["transport"], "processes": len(rs),
     "window_misalignment_s": round(max(r["window_start_unix"] for r in rs) - min(r["window_start_unix"] for r in rs), 2),
     "readers_requested": S("readers_requested"), "readers_connected": S("readers_connected"), "readers_failed": S("readers_failed"),
     "failures": merge_counts("failures"), "ended_early": merge_counts("ended_early"),
     "ramp_s": max(r["ramp_s"] for r in rs), "window_s": round(window, 2), "packets": S("packets"), "bytes": S("bytes"),
     "window_packets": wp, "egress_mbit_s": round(egress, 2),
     "mbit_s_per_reader": round(sum(rates) / len(rates), 2) if rates else 0, "mbit_s_per_reader_min": round(min(rates), 2) if rates else 0,
     "lost": S("lost"), "loss_pct": round(S("lost") / expected * 100, 3) if expected else 0, "readers_with_loss": S("readers_with_loss"),
     "play_reply_ms": pct(smp("play_reply_ms")), "handshake_ms": pct(smp("handshake_ms")),
     "first_packet_ms": pct(smp("first_packet_ms")), "first_keyframe_ms": pct(smp("first_keyframe_ms")),
     "no_keyframe": S("no_keyframe"), "client_cpu_pct": round(S("client_cpu_pct"), 2), "client_rss_mib": round(S("client_rss_mib"), 2),
     "udp_rcvbuf_errors": max(r["udp_rcvbuf_errors"] for r in rs), "window_start_unix": min(r["window_start_unix"] for r in rs)}
el = [r["egress_latency_us"] for r in rs if r.get("egress_latency_us")]
m["egress_latency_us"] = el[0] if el else None
sv = [r["server"] for r in rs if r.get("server")]
if sv:
    cpu = sum(x["cpu_pct"] for x in sv) / len(sv)
    before = min(x["rss_mib_before"] for x in sv); after = max(x["rss_mib_after"] for x in sv)
    m["server"] = {"pid": sv[0]["pid"], "cpu_pct": round(cpu, 2), "rss_mib_before": before, "rss_mib_after": after,
                   "rss_kib_per_reader": round((after - before) * 1024 / max(1, m["readers_connected"]), 2),
                   "cpu_pct_per_gbit": round(cpu / (egress / 1000), 2) if egress else 0,
                   "us_per_packet": round(cpu / 100 * window * 1e6 / wp, 2) if wp else 0}
print(json.dumps(m))
'

# perf_sample ERRFILE|- START_UNIX|- OUT: waits for the window (the load client's "window:" line in
# ERRFILE, or the common start time), samples the server for PERF_SECS, writes the % of its samples under
# net_rx_action to OUT (nothing on failure).
perf_sample() {
  local err=$1 at=$2 out=$3
  if [[ $at != - ]]; then
    sleep "$("$PY" -c "import time; print(max(0.0, $at - time.time()))")"
  else
    for _ in $(seq 1 6000); do grep -q '^window:' "$err" 2>/dev/null && break; sleep 0.1; done
  fi
  sleep 1
  perf record -q -F 299 -g -p "$SERVER_PID" -o "$out.data" -- sleep "$PERF_SECS" >/dev/null 2>&1 || return 0
  local report
  report=$(perf report -i "$out.data" --children --sort sym --stdio -g none 2>/dev/null) || report=""
  rm -f "$out.data"
  # A report without any symbol line is a failed report: no split (not a 0 % share).
  grep -qE '^ +[0-9.]+%' <<<"$report" || return 0
  awk '$NF == "net_rx_action" { sub("%", "", $1); print $1; found = 1; exit } END { if (!found) print 0 }' \
    <<<"$report" >"$out"
}

# Adds the perf split to a report line: server.rx_share_pct and server.own_cpu_pct_per_gbit.
SPLIT_PY='
import json, sys
r = json.loads(sys.argv[1]); share = open(sys.argv[2]).read().strip()
s = r.get("server")
if s and share:
    s["rx_share_pct"] = round(float(share), 1)
    s["own_cpu_pct_per_gbit"] = round(s["cpu_pct_per_gbit"] * (1 - float(share) / 100), 2)
print(json.dumps(r))
'

# Adds the repetition (1..BENCH_REPEAT) to a report line.
REPEAT_PY='
import json, sys
r = json.loads(sys.argv[1]); r["repeat"] = int(sys.argv[2])
print(json.dumps(r))
'

# Prints the heading of the run labelled $1, naming the repetition when there are several.
heading() {
  echo "== $1 (window ${DURATION}s$( (( REPEAT > 1 )) && echo ", repetition $REP of $REPEAT")) =="
}

# Adds the repetition to report line $1, appends it to the run's JSON lines, and prints it.
record() {
  local tagged
  tagged=$("$PY" -c "$REPEAT_PY" "$1" "$REP") || return
  echo "$tagged" >>"$JSONL"
  echo "$tagged"
}

run_case() {
  local server=$1 variant=$2 transport=$3 n=$4
  local label="$server $variant $transport $n"
  heading "$label"
  # One process's fd limit bounds its readers: UDP takes 5 fds per reader (RTSP connection, RTP and
  # RTCP for 2 tracks), TCP 1. Above that the readers are split over several processes that
  # measure one common window (--window-start-unix) and whose reports are merged.
  local fds=$([[ $transport == udp ]] && echo 5 || echo 1)
  local per=$(( ($(ulimit -n) - 500) / fds ))
  local procs=$(( (n + per - 1) / per ))
  # Bound: ramp (≤ 2×30 s + N/100 s) + settle + window + teardown.
  local limit=$(( DURATION + 150 + n / 50 ))
  local line=""
  local err="$LOGDIR/load-run.err" rxshare="$LOGDIR/rx-share" pp=""
  rm -f "$rxshare"
  if (( procs <= 1 )); then
    : >"$err"
    if [[ $PERF == 1 ]]; then perf_sample "$err" - "$rxshare" & pp=$!; fi
    line=$(timeout "$limit" "$BENCH_BIN" load "$URL" --readers "$n" --transport "$transport" \
      --duration "$DURATION" --server-pid "$SERVER_PID" --label "$label" 2>"$err") || line=""
    cat "$err" >>"$LOGDIR/load.log"
  else
    local share=$(( (n + procs - 1) / procs ))
    local at
    at=$("$PY" -c "import time; print(round(time.time() + 15 + $n / 250, 1))")
    echo "   $procs load processes of ≤ $share readers, $(( 64 / procs )) handshakes at a time each (fd limit $(ulimit -n)); common window at +$(( 15 + n / 250 )) s"
    local parts="$LOGDIR/parts-$server-$variant-$transport-$n.jsonl" left=$n i=0
    : >"$parts"
    if [[ $PERF == 1 ]]; then perf_sample - "$at" "$rxshare" & pp=$!; fi
    local lp=()
    while (( left > 0 )); do
      local k=$(( left < share ? left : share ))
      # The connect storm stays 64 handshakes at a time in all, shared by the processes.
      timeout "$limit" "$BENCH_BIN" load "$URL" --readers "$k" --transport "$transport" --duration "$DURATION" \
        --concurrency $(( 64 / procs > 0 ? 64 / procs : 1 )) --server-pid "$SERVER_PID" --label "$label" --samples --window-start-unix "$at" \
        --udp-port-base $(( 10000 + i * (share * 4 + 64) )) \
        >>"$parts" 2>>"$LOGDIR/load.log" &
      lp+=("$!")
      left=$(( left - k )); i=$(( i + 1 ))
    done
    for p in "${lp[@]}"; do wait "$p" || true; done
    (( $(wc -l <"$parts") == procs )) && line=$("$PY" -c "$MERGE_PY" "$parts" "$label") || line=""
  fi
  if [[ -n $pp ]]; then
    # The sampler ends by itself within the window; if the run failed, it may still wait for it.
    if [[ -z $line ]]; then pkill -P "$pp" 2>/dev/null || true; kill "$pp" 2>/dev/null || true; fi
    wait "$pp" 2>/dev/null || true
  fi
  if [[ -n $line && -s $rxshare ]]; then
    line=$("$PY" -c "$SPLIT_PY" "$line" "$rxshare")
  fi
  if [[ -n $line ]]; then
    line=$(record "$line")
    echo "$line" | "$PY" -c "$SUMMARY_PY" || true
  else
    echo "   load client failed or timed out (see $LOGDIR/load.log)" >&2
  fi
  # Let UDP sessions and sockets wind down before the next run.
  sleep 2
}

# The kernel floor for one case: `sluice-bench floor` sends the same stream shape to N local
# receivers with nothing but the send calls (sendmmsg + GSO per 64 readers, or a writev per reader per
# frame); its CPU per Gbit/s is what loopback charges any sender for that fan-out.
run_floor() {
  local variant=$1 transport=$2 n=$3
  local label="floor $variant $transport $n"
  heading "$label"
  local line
  line=$(timeout $(( DURATION + 120 )) "$BENCH_BIN" floor --transport "$transport" --stream "$variant" --readers "$n" \
    --duration "$DURATION" --label "$label" 2>>"$LOGDIR/floor.log") || line=""
  if [[ -n $line ]]; then
    line=$(record "$line")
    echo "$line" | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.read()); s = r["server"]
l = r["fanout_latency_us"]
print("   sender CPU %s %% (%d threads)  %s Mbit/s  %s %%/Gbit/s  %s us/pkt  %s calls/s  fan-out p50/p99 %s/%s us  received %s of %s  receiver CPU %s %%"
      % (s["cpu_pct"], r["sender_threads"], r["egress_mbit_s"], s["cpu_pct_per_gbit"], s["us_per_packet"], r["send_calls_per_s"],
         l["p50"], l["p99"], r["received"], r["sent"], r["receiver_cpu_pct"]))'
  else
    echo "   floor failed (see $LOGDIR/floor.log)" >&2
  fi
  sleep 1
}

# Cases of stream $1 ("transport:readers" each), in $CASES order.
cases_of() {
  local c v t n
  for c in $CASES; do
    IFS=: read -r v t n <<<"$c"
    [[ $v == "$1" ]] && echo "$t:$n"
  done
  return 0
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if [[ $ORDER == grouped ]]; then
  # Each server once per stream, its cases back to back; the whole sequence once per repetition.
  for REP in $(seq 1 "$REPEAT"); do
  for server in $SERVERS; do
    for variant in hi lo; do
      mapfile -t cases < <(cases_of "$variant")
      (( ${#cases[@]} )) || continue
      echo "### $server, stream $variant"
      if [[ $server == floor ]]; then
        for c in "${cases[@]}"; do
          IFS=: read -r t n <<<"$c"
          run_floor "$variant" "$t" "$n"
        done
        continue
      fi
      if [[ $server == sluice ]]; then start_sluice "$variant"; else start_gst "$variant"; fi
      for c in "${cases[@]}"; do
        IFS=: read -r t n <<<"$c"
        run_case "$server" "$variant" "$t" "$n"
      done
      stop_server
    done
  done
  done
else
  # Interleaved: every server runs a case, freshly started, before the next case, so the
  # figures compared in a row were taken minutes apart, not a quarter of an hour.
  for variant in hi lo; do
    mapfile -t cases < <(cases_of "$variant")
    for c in "${cases[@]}"; do
      IFS=: read -r t n <<<"$c"
      echo "### $variant $t $n"
      for REP in $(seq 1 "$REPEAT"); do
      for server in $SERVERS; do
        if [[ $server == floor ]]; then
          run_floor "$variant" "$t" "$n"
          continue
        fi
        if [[ $server == sluice ]]; then start_sluice "$variant"; else start_gst "$variant"; fi
        run_case "$server" "$variant" "$t" "$n"
        stop_server
      done
      done
    done
  done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- table ------------------------------------------------------------------------------------------
MODE="$([[ $QUICK == 1 ]] && echo "quick" || echo "full"), $ORDER$( (( REPEAT > 1 )) && echo ", $REPEAT repetitions")"
TABLE=$("$PY" - "$JSONL" "$MODE" "$DURATION" "$LOAD_START" "$LOAD_END" "$REPEAT" <<'EOF'
import json, sys, platform, os, subprocess
path, mode, duration, l0, l1, repeat = sys.argv[1:7]
repeat = int(repeat)
runs = {}
for line in open(path):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    server, variant, transport, n = r["label"].split()
    runs.setdefault((variant, transport, int(n)), {}).setdefault(server, []).append(r)

def per_gbit(r):
    return (r.get("server") or {}).get("cpu_pct_per_gbit")

def median_run(rs):
    # The run with the median CPU per Gbit/s (the lower middle one of an even count), so that
    # every column of a row comes from one real run, not a mix.
    measured = sorted((r for r in rs if per_gbit(r) is not None), key=per_gbit)
    return measured[(len(measured) - 1) // 2] if measured else rs[0]

rows = {case: {server: median_run(rs) for server, rs in d.items()} for case, d in runs.items()}

def each_repeat(d):
    # S / (G / 3) of each repetition, Sluice and gst paired by repetition.
    by = lambda server: {r.get("repeat", 1): per_gbit(r) for r in d.get(server, [])}
    s, gg = by("sluice"), by("gst")
    out = [f"{s[k] / (gg[k] / 3):.2f}" if s.get(k) and gg.get(k) else "—" for k in sorted(set(s) | set(gg))]
    return ", ".join(out) if out else "—"

def cpu_model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return "?"
mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
def ver(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except Exception:
        return "?"
print(f"## Run {os.path.basename(path)[:-6]} ({mode}, {duration} s windows)\n")
gst = ver(["/usr/bin/python3", "-c", "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; Gst.init(None); print(Gst.version_string())"])
ff = ver(["ffmpeg", "-version"])
commit = ver(["git", "describe", "--always", "--dirty"])
print(f"Machine: {os.cpu_count()} vCPU {cpu_model()}, {int(mem)/1048576:.1f} GiB, kernel {platform.release()}; {ff}; {gst}; "
      f"sluice at {commit}. Load average before/after: {l0} / {l1}.")
window = os.environ.get("BENCH_FANOUT_WINDOW", "")
if window and window not in ("0", "0ms", "0s"):
    print(f"\nSluice ran with `[rtsp] fanout_window = \"{window}\"` (readers get up to {window} of media per send).")
if repeat > 1:
    print(f"\nEvery case ran {repeat} times (each repetition every server in turn). Each server's columns show its run "
          "with the median CPU per Gbit/s (the lower middle one for an even count); 'S / ⅓ G each' gives every "
          "repetition's Sluice figure against a third of that repetition's gst figure, in order.")
print()
print("CPU = server utime+stime over the window, % of one core. RSS = VmRSS at the end of the window "
      "(growth per connected reader from before the first connect). ingest→egress = Sluice's own histogram: "
      "packet received → the send call carrying it to a reader returned, per packet and reader, bucket upper "
      "bounds (empty until the server's metrics endpoint exports it: bench/README.md). key = PLAY sent → first keyframe packet; "
      "PLAY = PLAY sent → reply. S = Sluice, G = gst-rtsp-server; ratio = S / G (lower is better for Sluice). "
      "rx path = % of the server's perf samples under net_rx_action: the receivers' kernel work that loopback "
      "runs inside the server's send calls; own CPU = CPU × (1 − rx path), the server's own work per Gbit/s. "
      "floor = `sluice-bench floor`'s sender: the same stream shape sent to as many local receivers with nothing "
      "but the send calls (no server), the CPU per Gbit/s that loopback charges any sender for this fan-out; "
      "⅓ G = the issue's target, a third of gst's CPU per Gbit/s. floor fan-out = its sender threads' (one per core) "
      "time from a frame's due time to the send call that carried it to a reader, per packet and reader: "
      "the ingest→egress latency of a server that did nothing but send. floor rx = the floor's receiver thread "
      "(epoll + recvmmsg of 64-byte heads, or 128 KiB reads): what reading the same packets costs a bare client.\n")
print("| stream | transport | readers | connected S / G | CPU % S / G | CPU ratio | CPU %/Gbit/s S / G "
      "| floor %/Gbit/s | ⅓ G | S / floor | rx path % S / G | own CPU %/Gbit/s S / G | own ratio | µs/pkt S / G "
      "| RSS MiB S / G | RSS ratio | KiB/reader S / G | Mbit/s/reader S / G | loss % S / G | PLAY p50/p99 ms S ; G "
      "| key p50/p99 ms S ; G | ingest→egress p50/p99 µs S | floor fan-out p50/p99 µs | client CPU % S / G / floor rx |"
      + (" S / ⅓ G each |" if repeat > 1 else ""))
print("|" + "---|" * (25 if repeat > 1 else 24))
def g(r, *k):
    for key in k:
        if r is None:
            return None
        r = r.get(key)
    return r
def f(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"
def ratio(a, b):
    return f"{a/b:.2f}" if a is not None and b else "—"
def lat(r, key="egress_latency_us"):
    e = g(r, key)
    return "—" if not e or not e.get("count") else f"{e['p50']:,.0f}/{e['p99']:,.0f}"
names = {"hi": "4 Mb/s", "lo": "200 kb/s"}
for (variant, transport, n) in sorted(rows, key=lambda k: (k[0] != "hi", k[1], k[2])):
    d = rows[(variant, transport, n)]
    s, gg, fl = d.get("sluice"), d.get("gst"), d.get("floor")
    fcpu, gcpu = g(fl, "server", "cpu_pct_per_gbit"), g(gg, "server", "cpu_pct_per_gbit")
    def pair(*k, nd=1):
        return f"{f(g(s,*k),nd)} / {f(g(gg,*k),nd)}"
    def pct(r, key):
        p = g(r, key)
        return "—" if p is None or not p.get("n") else f"{p['p50']:,.0f}/{p['p99']:,.0f}"
    print(f"| {names.get(variant, variant)} | {transport.upper()} | {n:,} "
          f"| {pair('readers_connected')} | {pair('server','cpu_pct')} | {ratio(g(s,'server','cpu_pct'), g(gg,'server','cpu_pct'))} "
          f"| {pair('server','cpu_pct_per_gbit')} | {f(fcpu)} | {f(gcpu / 3 if gcpu else None)} "
          f"| {ratio(g(s,'server','cpu_pct_per_gbit'), fcpu)} | {pair('server','rx_share_pct')} | {pair('server','own_cpu_pct_per_gbit')} "
          f"| {ratio(g(s,'server','own_cpu_pct_per_gbit'), g(gg,'server','own_cpu_pct_per_gbit'))} | {pair('server','us_per_packet', nd=2)} "
          f"| {pair('server','rss_mib_after')} | {ratio(g(s,'server','rss_mib_after'), g(gg,'server','rss_mib_after'))} "
          f"| {pair('server','rss_kib_per_reader')} | {pair('mbit_s_per_reader', nd=2)} | {pair('loss_pct', nd=3)} "
          f"| {pct(s,'play_reply_ms')} ; {pct(gg,'play_reply_ms')} | {pct(s,'first_keyframe_ms')} ; {pct(gg,'first_keyframe_ms')} "
          f"| {lat(s)} | {lat(fl, 'fanout_latency_us')} | {pair('client_cpu_pct')} / {f(g(fl, 'receiver_cpu_pct'))} |"
          + (f" {each_repeat(runs[(variant, transport, n)])} |" if repeat > 1 else ""))
fails = []
for (variant, transport, n), d in sorted(runs.items()):
    for server, r in ((server, r) for server, rs in d.items() for r in rs):
        which = f" (repetition {r.get('repeat', 1)})" if repeat > 1 else ""
        if server == "floor":
            if r["received"] != r["sent"] or r["short_writes"]:
                fails.append(f"- floor {variant} {transport} {n}{which}: received {r['received']} of {r['sent']}, short writes {r['short_writes']}")
            continue
        if r["failures"] or r["ended_early"] or r.get("udp_rcvbuf_errors"):
            fails.append(f"- {server} {variant} {transport} {n}{which}: failures {r['failures']}, ended early {r['ended_early']}, "
                         f"client-side UDP rcvbuf drops {r.get('udp_rcvbuf_errors')}")
if fails:
    print("\nFailures and drops:\n")
    print("\n".join(fails))
print(f"\nRaw JSON lines: bench/out/{os.path.basename(path)} (not committed).\n")
EOF
)
echo
echo "$TABLE"
{ echo; echo "$TABLE"; } >>"$ROOT/bench/RESULTS.md"
echo "appended to bench/RESULTS.md"
