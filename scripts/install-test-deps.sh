#!/usr/bin/env bash
# install-test-deps.sh — install the external peers Sluice's integration tests
# drive (ffmpeg/ffprobe, GStreamer with the RTSP client/server plugins, iproute2
# for `ip netns`, the Python GStreamer RTSP server bindings used by the
# pull-source tests, Prometheus's `promtool` for the metrics test, and
# schemathesis (PyPI, pinned, in a venv at $SCHEMATHESIS_VENV) for the HTTP API test),
# Debian's chromium and playwright-core (npm, pinned by crates/sluice/tests/browser's
# package-lock.json, in $SLUICE_TEST_NODE) for the browser tests.
#
# Idempotent and non-interactive: when every package is already installed it
# is a fast no-op (no `apt-get update`). Needs root (or passwordless sudo) only
# when something is missing. Safe under CI=true with no stdin.
set -euo pipefail

PACKAGES=(
  ffmpeg
  gstreamer1.0-tools
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-rtsp
  iproute2
  gir1.2-gst-rtsp-server-1.0
  python3-gi
  python3-gst-1.0
  prometheus
  python3-venv
  chromium
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

# Belt and braces: the binaries the tests exec must be on PATH.
for cmd in ffmpeg ffprobe gst-launch-1.0 gst-inspect-1.0 ip promtool chromium node npm; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    case "$cmd" in
      ffmpeg|ffprobe) want=ffmpeg ;;
      gst-*) want=gstreamer1.0-tools ;;
      ip) want=iproute2 ;;
      promtool) want=prometheus ;;
      chromium) want=chromium ;;
      node) want=nodejs ;;
      npm) want=npm ;; # Debian's; NodeSource's nodejs brings its own npm
    esac
    [[ " ${missing[*]-} " == *" $want "* ]] || missing+=("$want")
  fi
done

# schemathesis: pinned, in its own venv (the HTTP API test runs $SCHEMATHESIS_VENV/bin/schemathesis).
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=${SCHEMATHESIS_VENV:-/opt/sluice-test-venv}
install_schemathesis() {
  if "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "install-test-deps: schemathesis $SCHEMATHESIS_VERSION present"
    return
  fi
  echo "install-test-deps: installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
  /usr/bin/python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" </dev/null
}

# m3u8: pinned, in the same venv (the HLS test parses every playlist with it).
M3U8_VERSION=6.0.0
install_m3u8() {
  if "$SCHEMATHESIS_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('m3u8') == '$M3U8_VERSION'" 2>/dev/null; then
    echo "install-test-deps: m3u8 $M3U8_VERSION present"
    return
  fi
  echo "install-test-deps: installing m3u8 $M3U8_VERSION into $SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q "m3u8==$M3U8_VERSION" </dev/null
}

# playwright-core: pinned by the committed package-lock.json, installed with `npm ci` into
# $SLUICE_TEST_NODE (the browser tests run node with NODE_PATH there). A no-op when the
# installed lock equals the committed one.
SLUICE_TEST_NODE=${SLUICE_TEST_NODE:-/opt/sluice-test-node}
BROWSER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/crates/sluice/tests/browser"
install_playwright() {
  if [[ -d "$SLUICE_TEST_NODE/node_modules/playwright-core" ]] \
    && cmp -s "$BROWSER_DIR/package-lock.json" "$SLUICE_TEST_NODE/package-lock.json"; then
    echo "install-test-deps: playwright-core present in $SLUICE_TEST_NODE"
    return
  fi
  echo "install-test-deps: installing playwright-core into $SLUICE_TEST_NODE"
  mkdir -p "$SLUICE_TEST_NODE"
  cp "$BROWSER_DIR/package.json" "$BROWSER_DIR/package-lock.json" "$SLUICE_TEST_NODE/"
  (cd "$SLUICE_TEST_NODE" && npm ci --no-audit --no-fund --ignore-scripts </dev/null)
}

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-test-deps: all Debian test dependencies present"
  install_schemathesis
  install_m3u8
  install_playwright
  exit 0
fi

echo "install-test-deps: installing: ${missing[*]}"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-test-deps: need root to install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" </dev/null
install_schemathesis
install_m3u8
install_playwright
echo "install-test-deps: done"
