#!/usr/bin/env bash
# Regenerates crates/server/assets/demo.mp4, the clip behind the built-in rtsp://HOST:8554/demo
# stream (embedded in the binary with include_bytes!). Needs Debian's ffmpeg.
#
# 10 s, 426x240 at 25 fps, H.264 constrained baseline (GOP 1 s, no B-frames) with a 440 Hz
# tone as AAC-LC mono 48 kHz; moov first so it is cheap to open. About 200 KB.
set -euo pipefail
cd "$(dirname "$0")/.."
out=crates/server/assets/demo.mp4
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=426x240:rate=25" \
  -f lavfi -i "sine=frequency=440:sample_rate=48000" \
  -t 10 -map 0:v -map 1:a \
  -c:v libx264 -profile:v baseline -preset veryslow -b:v 120k -maxrate 160k -bufsize 320k \
  -g 25 -keyint_min 25 -sc_threshold 0 -bf 0 -pix_fmt yuv420p \
  -c:a aac -b:a 32k -ac 1 \
  -movflags +faststart -metadata title="Sluice demo" "$out"
ls -l "$out"
