#!/usr/bin/env bash
# The tests' own network: a namespace with loopback and one veth pair whose end egA holds 10.99.0.1,
# so WebRTC (livekit-server, egret's webrtcbin, the Python publishers) never sees this machine's
# own addresses. `tests/netns.sh up` (idempotent) prints nothing; `tests/netns.sh down` removes it.
set -euo pipefail
NS=${EGRET_NETNS:-egret-test}
case "${1:-up}" in
  up)
    if ! ip netns list | grep -qw "$NS"; then
      ip netns add "$NS"
    fi
    ip netns exec "$NS" ip link set lo up
    if ! ip netns exec "$NS" ip link show egA >/dev/null 2>&1; then
      ip netns exec "$NS" ip link add egA type veth peer name egB
      ip netns exec "$NS" ip addr add 10.99.0.1/24 dev egA
    fi
    ip netns exec "$NS" ip link set egA up
    ip netns exec "$NS" ip link set egB up
    ;;
  down)
    ip netns del "$NS" 2>/dev/null || true
    ;;
  *)
    echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
