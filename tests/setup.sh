#!/usr/bin/env bash
# Installs everything egret and its tests need on Debian 12, then builds egret.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build
  pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  # media runtime
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  gstreamer1.0-libav gstreamer1.0-nice gstreamer1.0-tools gstreamer1.0-x gstreamer1.0-plugins-base-apps
  # chrome capture (web and room composite egress): a browser, a virtual display, a sound server
  chromium xvfb pulseaudio pulseaudio-utils fonts-dejavu-core
  # tests: ffprobe/ffmpeg to check media, nginx-rtmp as a real RTMP server
  ffmpeg nginx libnginx-mod-rtmp curl
  # packet loss inside the tests' network namespace (the kernel has no netem)
  nftables
  # LiveKit rooms for room/track/participant egress: livekit-server (go install below) needs redis
  redis-server
  # the tests' Python environment, and network namespaces
  python3-venv iproute2
)

# Toolchains Debian 12 does not ship recent enough: said up front, with where to get them.
need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: $1 is missing: $2" >&2; exit 1; }; }
need cargo "install Rust 1.95 or later from https://rustup.rs"
need go "install Go 1.26 or later from https://go.dev/dl (livekit-server needs it; Debian 12 ships 1.19)"
need npm "install Node.js 20 and npm (https://nodejs.org, or Debian's nodejs + npm from bookworm-backports)"

# Each step says what it does, so a first run (minutes of downloads and builds) is not silent.
step() { echo "setup: [$1/8] $2"; }

step 1 "Debian packages (GStreamer, chromium, Xvfb, PulseAudio, ffmpeg, nginx-rtmp, redis)"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  # -q keeps apt's per-package lines (Get:, Unpacking, Setting up): progress, not silence.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  echo "setup: installed ${#missing[@]} packages"
fi
# Debian starts nginx on port 80 when installed; the tests run their own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi

# Python: pytest, and LiveKit's own client (livekit-api) as an independent token/API client.
step 2 "Python venv (.venv: pytest, livekit, livekit-api, numpy, prometheus-client)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pytest, livekit.api, livekit.rtc, numpy, websockets, prometheus_client, azure.storage.blob" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

# S3: versitygw, a real S3-compatible server (posix backend), for the upload tests.
step 3 "storage emulators for the upload tests (versitygw, fake-gcs-server, Azurite)"
GOBIN_DIR="$(go env GOPATH)/bin"
if [ ! -x "$GOBIN_DIR/versitygw" ]; then
  echo "setup: building versitygw (go install, pinned)"
  go install -v github.com/versity/versitygw/cmd/versitygw@v1.8.0 2>&1 | sed -u 's/^/  go: /' 
fi
# GCS and Azure: fake-gcs-server (Go module proxy) and Microsoft's Azurite (npm, pinned by
# tests/emulators/package-lock.json).
if [ ! -x "$GOBIN_DIR/fake-gcs-server" ]; then
  echo "setup: building fake-gcs-server (go install, pinned)"
  go install -v github.com/fsouza/fake-gcs-server@v1.56.1 2>&1 | sed -u 's/^/  go: /'
fi
if [ ! -x tests/emulators/node_modules/.bin/azurite-blob ]; then
  echo "setup: installing Azurite (npm ci)"
  npm ci --prefix tests/emulators --no-audit --no-fund --loglevel=error
fi

# LiveKit: the real server, pinned (the module's binary is called `server`).
step 4 "livekit-server"
if [ ! -x "$GOBIN_DIR/livekit-server" ]; then
  echo "setup: building livekit-server (go install, pinned)"
  go install -v github.com/livekit/livekit-server/cmd/server@v1.13.5 2>&1 | sed -u 's/^/  go: /' 
  mv "$GOBIN_DIR/server" "$GOBIN_DIR/livekit-server"
fi

# psrpc's .proto files (its envelopes), which build.rs compiles for the worker mode.
step 5 "psrpc protocol files (worker mode)"
PSRPC_DIR="$(go env GOMODCACHE)/github.com/livekit/psrpc@v0.7.2"
if [ ! -f "$PSRPC_DIR/internal/internal.proto" ]; then
  (cd /tmp && go mod download github.com/livekit/psrpc@v0.7.2)
fi

# JS: LiveKit's server SDK (pinned by tests/js/package-lock.json) as a second API client.
step 6 "LiveKit's JS server SDK (tests)"
if [ ! -d tests/js/node_modules/livekit-server-sdk ]; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi

# Layouts: the room composite pages' livekit-client (pinned by layouts/package-lock.json),
# bundled by esbuild into layouts/build/ (not committed); rebuilt when a source changed.
step 7 "room composite layout pages (livekit-client bundled by esbuild)"
if [ ! -d layouts/node_modules/livekit-client ]; then
  npm ci --prefix layouts --no-audit --no-fund --loglevel=error
fi
if [ ! -f layouts/build/layout.js ] || [ -n "$(find layouts/src layouts/package-lock.json -newer layouts/build/layout.js)" ]; then
  npm run --prefix layouts --silent build >/dev/null
fi

step 8 "building egret (cargo build --release; several minutes the first time)"
# cargo's own "Compiling ..." lines on a terminal; a log (CI) gets its errors only.
if [ -t 1 ]; then cargo build --release; else cargo build --release --quiet; fi
echo "setup: done ($(./target/release/egret --help | head -1))"
