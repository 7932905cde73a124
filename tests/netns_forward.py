"""Forwards a TCP port of this machine's loopback into a network namespace's loopback, so a
browser here reaches egret running inside the tests' namespace (the quick start as root).

    python3 tests/netns_forward.py NAMESPACE PORT

Linux joins a network namespace per thread (setns): one thread joins it and opens every
connection to the inside; the copying threads then use those sockets from anywhere."""

import ctypes
import os
import queue
import socket
import sys
import threading

from livekit_harness import pump  # stdlib only: runs with the system's python3

CLONE_NEWNET = 0x40000000


def inside_connector(namespace, port):
    """A thread in the namespace that answers each request with a socket connected inside."""
    requests = queue.Queue()

    def run():
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        try:
            fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        except OSError as e:
            # Said and ended: a forward that cannot reach inside would leave browsers hanging.
            print(f"netns_forward: cannot join network namespace {namespace}: {e}", file=sys.stderr)
            os._exit(1)
        while True:
            reply = requests.get()
            try:
                reply.put(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError as e:
                reply.put(e)

    threading.Thread(target=run, daemon=True).start()

    def connect():
        reply = queue.Queue()
        requests.put(reply)
        return reply.get()

    return connect


def main(namespace, port):
    port = int(port)
    connect = inside_connector(namespace, port)
    server = socket.create_server(("127.0.0.1", port))
    while True:
        outside, _ = server.accept()
        inside = connect()
        if isinstance(inside, OSError):
            outside.close()
            continue
        inside.settimeout(None)
        threading.Thread(target=pump, args=(outside, inside), daemon=True).start()
        threading.Thread(target=pump, args=(inside, outside), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:])
