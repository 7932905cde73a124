"""A delay line for IP packets, in user space: what `tc qdisc ... netem delay D J` does, for a
kernel built without netem (this one).

It opens a TUN device, reads every packet the kernel routes into it, and writes each one back
after D ± J milliseconds (uniform; like netem, packets may overtake each other). Written back to
the same device, a packet is received by the kernel as if it had come in over a network, so the
routing that sends packets here (see `livekit_harness.Jitter`) decides what is delayed.

Usage: netdelay.py DEVICE DELAY_MS JITTER_MS. Prints `ready` once the device exists; ends when
its standard input closes (so it never outlives the test that started it).
"""

import fcntl
import heapq
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main():
    device, delay_ms, jitter_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", device.encode(), IFF_TUN | IFF_NO_PI))
    print("ready", flush=True)
    waiting = []  # (due time, arrival order, packet)
    order = 0
    delayed = 0
    while True:
        timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
        readable, _, _ = select.select([tun, sys.stdin], [], [], timeout)
        if sys.stdin in readable and not sys.stdin.readline():
            break
        if tun in readable:
            packet = os.read(tun, 65536)
            order += 1
            delay = max(0.0, delay_ms + random.uniform(-jitter_ms, jitter_ms)) / 1000
            heapq.heappush(waiting, (time.monotonic() + delay, order, packet))
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            os.write(tun, heapq.heappop(waiting)[2])
            delayed += 1
    print(f"delayed {delayed}", flush=True)


if __name__ == "__main__":
    main()
