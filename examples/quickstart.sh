#!/usr/bin/env bash
# Quick start on a fresh Debian 12: installs what is missing, builds egret, starts it with the
# shipped egress.toml, records 5 s of the test source to MP4 over the HTTP API, and shows
# what was written (ffprobe). Run from anywhere: examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

EGRET=./target/release/egret
$EGRET --config egress.toml check
$EGRET --config egress.toml serve &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
listen=$(sed -n 's/^listen *= *"\(.*\)"/\1/p' egress.toml)
for _ in $(seq 100); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.1; done

TOKEN=$($EGRET --config egress.toml token)
api() { curl -sS -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== POST /v1/egress (testsrc, 5 s, MP4 + JPEG snapshots)"
reply=$(api -X POST "http://$listen/v1/egress" -d @examples/requests/quickstart.json)
echo "$reply"
id=$(echo "$reply" | field "['egress_id']")
while [ "$(api "http://$listen/v1/egress/$id" | field "['status']")" != "complete" ]; do sleep 0.5; done
info=$(api "http://$listen/v1/egress/$id")
echo "== GET /v1/egress/$id"; echo "$info"
file="out/$(echo "$info" | field "['outputs'][0]['target']")"
echo "== ffprobe $file"
ffprobe -v error -show_entries format=duration:stream=codec_name,profile,width,height,avg_frame_rate -of compact "$file"
