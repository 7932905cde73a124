#!/usr/bin/env bash
# Quick start on Debian 12, one command: installs what is missing, builds egret, starts a
# local livekit-server and egret (the shipped egress.toml), puts two synthetic publishers in a
# room, records that room as a grid room composite to MP4 + HLS for about 10 s through LiveKit's
# own API client, then shows what was written (ffprobe) and where the status page is.
# Run from anywhere: examples/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=7
step() { echo; echo "== [$1/$STEPS] $2"; }
work=$(mktemp -d /tmp/egret-quickstart.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step 1 "installing what is missing and building egret (tests/setup.sh; the first run takes minutes)"
bash tests/setup.sh

# WebRTC needs an address that is not loopback. As root, everything runs in the tests' own
# network namespace (10.99.0.1), so nothing is exposed on this machine's network; otherwise
# livekit-server uses this machine's address, as `livekit-server --dev` does.
step 2 "network"
RUN=()
NODE_IP=""
if [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null; then
  bash tests/netns.sh up
  RUN=(ip netns exec egret-test)
  NODE_IP="10.99.0.1"
  echo "running inside network namespace egret-test (node IP $NODE_IP)"
else
  echo "running on this machine's network (livekit-server picks its node IP)"
fi

step 3 "livekit-server on 127.0.0.1:7880 (keys devkey/secret, as egress.toml's [livekit] section)"
LKS="$(go env GOPATH)/bin/livekit-server"
cat > "$work/livekit.yaml" <<EOF
port: 7880
bind_addresses: ["127.0.0.1"]
rtc:
  udp_port: 7882
  tcp_port: 7881
  use_external_ip: false
${NODE_IP:+  node_ip: $NODE_IP}
keys:
  devkey: secret
room:
  empty_timeout: 30
logging:
  level: warn
EOF
"${RUN[@]}" "$LKS" --config "$work/livekit.yaml" >"$work/livekit.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "${RUN[@]}" curl -sf http://127.0.0.1:7880 >/dev/null && break; sleep 0.1; done
"${RUN[@]}" curl -sf http://127.0.0.1:7880 >/dev/null || { echo "livekit-server did not start:"; cat "$work/livekit.log"; exit 1; }
echo "livekit-server ready (log: $work/livekit.log)"

step 4 "egret with egress.toml"
EGRET=./target/release/egret
RUST_LOG=warn $EGRET --config egress.toml check
"${RUN[@]}" $EGRET --config egress.toml serve >"$work/egret.log" 2>&1 &
pids+=($!)
listen=$(sed -n 's/^listen *= *"\(.*\)"/\1/p' egress.toml)
for _ in $(seq 200); do "${RUN[@]}" curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.1; done
echo "egret ready at http://$listen (log: $work/egret.log)"

step 5 "two synthetic publishers in room 'quickstart' (red + 440 Hz, blue + 660 Hz)"
for who in "alice 255,64,64 440" "bob 64,64,255 660"; do
  set -- $who
  "${RUN[@]}" .venv/bin/python tests/publisher.py --url ws://127.0.0.1:7880 --room quickstart --identity "$1" \
    --api-key devkey --api-secret secret --color "$2" --tone "$3" >"$work/$1.log" 2>&1 &
  pids+=($!)
done
for who in alice bob; do
  for _ in $(seq 300); do grep -q '"ready"' "$work/$who.log" 2>/dev/null && break; sleep 0.1; done
  grep -q '"ready"' "$work/$who.log" || { echo "publisher $who did not join:"; cat "$work/$who.log"; exit 1; }
  echo "$who is publishing"
done

step 6 "grid room composite to MP4 + HLS for ~10 s, through LiveKit's Python client (Twirp)"
key=$(sed -n '/^\[server\]/,/^\[/s/^api_key *= *"\(.*\)"/\1/p' egress.toml)
secret=$(sed -n '/^\[server\]/,/^\[/s/^api_secret *= *"\(.*\)"/\1/p' egress.toml)
"${RUN[@]}" .venv/bin/python - "http://$listen" "$key" "$secret" >"$work/outputs.txt" <<'PY'
import asyncio, sys, time
from livekit import api

async def main(url, key, secret):
    async with api.LiveKitAPI(url, key, secret) as lk:
        info = await lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name="quickstart", layout="grid",
            # {time}: every run writes new files (egret never overwrites a recording).
            file_outputs=[api.EncodedFileOutput(filepath="quickstart/room-{time}.mp4")],
            segment_outputs=[api.SegmentedFileOutput(filename_prefix="quickstart/hls-{time}/room",
                                                     playlist_name="room.m3u8", segment_duration=2)]))
        print(f"started {info.egress_id}", file=sys.stderr)
        began = None
        while True:
            (info,) = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items
            if info.status == api.EGRESS_ACTIVE and began is None:
                began = time.monotonic()
            if info.status >= api.EGRESS_COMPLETE:
                sys.exit(f"the egress ended early: {api.EgressStatus.Name(info.status)} {info.error}")
            if began is not None:
                size = sum(f.size for f in info.file_results)
                print(f"  recording {time.monotonic() - began:4.1f} s, {size} bytes", file=sys.stderr)
                if time.monotonic() - began >= 10:
                    break
            await asyncio.sleep(1)
        await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        while info.status < api.EGRESS_COMPLETE:
            await asyncio.sleep(0.5)
            (info,) = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items
        print(f"ended {api.EgressStatus.Name(info.status)} {info.details}", file=sys.stderr)
        for f in info.file_results:
            print(f.location)
        for s in info.segment_results:
            print(s.playlist_location)

asyncio.run(main(*sys.argv[1:]))
PY

step 7 "what was written"
while read -r output; do
  echo "-- ffprobe $output"
  ffprobe -v error -show_entries format=duration:stream=codec_name,width,height,avg_frame_rate,channels \
    -of compact "$output"
done <"$work/outputs.txt"
echo
"${RUN[@]}" $EGRET --config egress.toml list
echo
echo "Status page: http://$listen/?token=$($EGRET --config egress.toml token --ttl 86400)"
if [ -t 0 ] && [ ${#RUN[@]} -gt 0 ]; then
  # egret runs inside the namespace: its port is forwarded to this machine's loopback meanwhile.
  python3 tests/netns_forward.py egret-test "${listen##*:}" &
  pids+=($!)
  echo "  (egret runs inside network namespace egret-test; its port ${listen##*:} is forwarded to this"
  echo "   machine's 127.0.0.1 until you press Enter: from another machine, ssh -L ${listen##*:}:127.0.0.1:${listen##*:})"
fi
if [ -t 0 ]; then
  # On a terminal, everything stays up to be looked at; a script or CI just ends here.
  read -r -p "egret, livekit-server and the publishers run until you press Enter... " _
fi
