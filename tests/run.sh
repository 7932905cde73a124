#!/usr/bin/env bash
# Runs every test: Rust unit tests, then the integration tests against real GStreamer,
# nginx-rtmp and ffprobe. `tests/setup.sh` first installs what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo test --release --quiet
exec .venv/bin/python -m pytest -q tests "$@"
