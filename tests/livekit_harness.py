"""A real LiveKit server (livekit-server + redis-server) and real WebRTC publishers.

Both run inside the tests' network namespace (tests/netns.sh), where the only address besides
loopback is NODE_IP on a veth the namespace owns: ICE never touches this machine's addresses.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

NODE_IP = os.environ.get("EGRET_TEST_NODE_IP", "10.99.0.1")
LK_KEY = "egret-lk-key"
LK_SECRET = "egret-lk-secret-0123456789abcdef0123456789"
HERE = Path(__file__).resolve().parent
SERVER = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "livekit-server"



def pump(src, dst):
    """Copies one direction of a TCP connection until either side closes, then closes both
    (the tests' proxy, and the quick start's forward out of the namespace)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

class PcmReceiver:
    """A websocket server on 127.0.0.1 that keeps what a track egress sends it (binary messages)
    and the request's headers; `with PcmReceiver() as rx:` gives `rx.url(path)`."""

    def __enter__(self):
        from websockets.sync.server import serve

        self.received = bytearray()
        self.headers = {}  # lower-cased names
        self.closed = threading.Event()

        def handler(ws):
            self.headers.update({k.lower(): v for k, v in ws.request.headers.items()})
            for message in ws:
                if isinstance(message, bytes):
                    self.received.extend(message)
            self.closed.set()

        self.server = serve(handler, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path):
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}{path}"

    def __exit__(self, *exc):
        self.server.shutdown()

    def seconds(self):
        """Seconds of s16le mono 48 kHz received."""
        return len(self.received) / 96000


class SignalProxy:
    """A TCP proxy on 127.0.0.1 in front of livekit-server's signalling port: egret's
    websocket (and RoomService calls) go through it, media does not. `cut(seconds)` drops every
    connection and refuses new ones for that long, as a network blip would."""

    def __init__(self, server):
        self.upstream = ("127.0.0.1", server.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.open_until = 0.0  # monotonic time the cut ends
        self.lock = threading.Lock()
        self.connections = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.open_until:
                client.close()  # refused while cut
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    def cut(self, seconds):
        """Drops every connection now; refuses new ones for `seconds`."""
        self.open_until = time.monotonic() + seconds
        self.cuts += 1
        with self.lock:
            dropped, self.connections = self.connections, []
        for s in dropped:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def config_toml(self, extra=""):
        return f'[livekit]\nurl = "{self.url}"\napi_key = "{LK_KEY}"\napi_secret = "{LK_SECRET}"\n{extra}'

    def close(self):
        self.listener.close()
        self.cut(0)


def redacted(url):
    """A stream URL as LiveKit shows it in EgressInfo: the RTMP stream key cut to its ends."""
    scheme, sep, rest = url.partition("://")
    head, _, key = rest.rpartition("/")
    if scheme not in ("rtmp", "rtmps") or "/" not in head or not key:
        return url
    keep = 3 if len(key) >= 9 else 2 if len(key) >= 6 else 1 if len(key) >= 3 else 0
    shown = f"{{{key[:keep]}...{key[-keep:]}}}" if keep else "{...}"
    return f"{scheme}{sep}{head}/{shown}"


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def check_network():
    """The namespace's own address must exist, else ICE would pick this machine's."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((NODE_IP, 0))
    except OSError as e:
        raise RuntimeError(
            f"{NODE_IP} is not on this host ({e}): run the tests through tests/run.sh, which creates the "
            "tests' network namespace (tests/netns.sh) and runs them inside it"
        ) from e


# Room egresses in the tests encode at 640x360: a 720p x264 next to the publishers' own
# encoders saturates the 2 cores, and a starved publisher delays or drops frames by itself.
SMALL = {"advanced": {"width": 640, "height": 360, "framerate": 30}}


def stop_and_measure(egret, egress_id):
    """Stops the egress and reads its single file: (path, probe, flash/beep pairs, the pairs as
    text "t:±ms, ..."). The egress must complete with audio and video in the file."""
    from media import av_offsets, streams

    egret.api.stop(egress_id)
    info = egret.api.wait_status(egress_id, "complete", "failed")
    assert info["status"] == "complete", info
    path, media = recorded(egret, info)
    assert streams(media, "video") and streams(media, "audio")
    pairs = av_offsets(path)
    shown = ", ".join(f"{t:.1f}s:{o * 1000:+.0f}" for t, o in pairs)
    return path, media, pairs, shown


def recorded(egret, info):
    """The egress's single file output (it must have completed), as a path, with its probe."""
    from media import probe

    (out,) = [o for o in info["outputs"] if o["kind"] == "file"]
    assert out["status"] == "complete", info
    path = egret.storage / out["target"]
    return path, probe(path)


class LiveKitServer:
    def __init__(self, workdir: Path, free_port, wait_for_port):
        check_network()
        self.workdir = workdir
        self.redis_port = free_port()
        self.port = free_port()
        self.udp_port = free_udp_port()  # all media, muxed on one port
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.wait_for_port = wait_for_port
        self.start_redis()
        config = workdir / "livekit.yaml"
        config.write_text(
            f"""
port: {self.port}
bind_addresses: ["127.0.0.1"]
rtc:
  udp_port: {self.udp_port}
  tcp_port: {free_port()}
  node_ip: {NODE_IP}
  use_external_ip: false
redis:
  address: 127.0.0.1:{self.redis_port}
keys:
  {LK_KEY}: {LK_SECRET}
room:
  empty_timeout: 30
  departure_timeout: 20
logging:
  level: info
"""
        )
        self.log = open(workdir / "livekit.log", "w")
        self.proc = subprocess.Popen([str(SERVER), "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        deadline = time.monotonic() + 20
        while True:  # the HTTP port opens before the server answers
            try:
                with urllib.request.urlopen(self.http_url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("livekit-server did not become ready")
            time.sleep(0.05)

    def start_redis(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=open(self.workdir / "redis.log", "a"),
            stderr=subprocess.STDOUT,
        )
        self.wait_for_port(self.redis_port, self.redis)

    def restart_redis(self):
        """Redis goes away and comes back empty on the same port (an operator's restart)."""
        self.redis.terminate()
        self.redis.wait(timeout=10)
        self.start_redis()

    def config_toml(self):
        """egret's [livekit] section for this server."""
        return f'[livekit]\nurl = "{self.url}"\napi_key = "{LK_KEY}"\napi_secret = "{LK_SECRET}"\n'

    def call(self, call):
        """Runs `call(lk)` against this server's API (LiveKit's own Python client)."""
        import asyncio

        from livekit import api

        async def go():
            async with api.LiveKitAPI(self.http_url, LK_KEY, LK_SECRET) as lk:
                return await call(lk)

        return asyncio.run(go())

    def room_service(self, call):
        return self.call(lambda lk: call(lk.room))

    def egress_status(self, egress_id):
        """This server's view of an egress (its ListEgress)."""
        from livekit import api

        try:
            items = self.call(lambda lk: lk.egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items
        except api.TwirpError as e:
            if e.code != "not_found":
                raise
            return None  # started on egret's own API: the server hears of it a moment later
        return items[0] if items else None

    def wait_egress(self, egress_id, *statuses, timeout=30.0):
        """Polls this server's ListEgress until the egress has one of `statuses` (names)."""
        from livekit import api

        deadline = time.monotonic() + timeout
        while True:
            info = self.egress_status(egress_id)
            if info is not None and api.EgressStatus.Name(info.status) in statuses:
                return info
            if time.monotonic() > deadline:
                seen = api.EgressStatus.Name(info.status) if info else None
                raise TimeoutError(f"{egress_id}: still {seen} in livekit-server, wanted {statuses}")
            time.sleep(0.2)

    def worker_config(self, extra=""):
        """egret's config to be one of this server's egress workers."""
        return self.config_toml() + f'[redis]\naddress = "127.0.0.1:{self.redis_port}"\n' + extra

    def delete_room(self, room):
        from livekit import api

        self.room_service(lambda rooms: rooms.delete_room(api.DeleteRoomRequest(room=room)))

    def create_room(self, room, departure_timeout):
        from livekit import api

        self.room_service(lambda rooms: rooms.create_room(api.CreateRoomRequest(name=room, departure_timeout=departure_timeout)))

    def stop(self):
        for p in (self.proc, self.redis):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


class Publisher:
    """tests/publisher.py in its own process; its JSON events are read by a thread."""

    def __init__(self, server: LiveKitServer, room: str, identity: str, *args: str):
        self.identity = identity
        self.events = queue.Queue()
        self.tracks = {}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "publisher.py"), "--url", server.url, "--room", room, "--identity", identity,
             "--api-key", LK_KEY, "--api-secret", LK_SECRET, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_event("ready")

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "exited"})

    def wait_event(self, name, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"publisher: no `{name}` event") from None
            if event["event"] == "published":
                self.tracks[event["kind"]] = event["sid"]
            if event["event"] == name:
                return event
            if event["event"] == "exited":
                raise RuntimeError(f"publisher exited while waiting for `{name}`")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.wait_event("done")

    def leave(self):
        """Disconnects cleanly and waits for the process to end."""
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PacketLoss:
    """Drops a share (percent, 100 = all) of the media livekit-server sends (UDP from its port)
    inside the tests' network namespace, with nftables (the kernel here has no netem, so no
    jitter)."""

    TABLE = "egret_loss"

    def __init__(self, livekit, percent):
        import subprocess

        self.run = lambda *args: subprocess.run(["nft", *args], check=True, capture_output=True)
        self.run("add", "table", "inet", self.TABLE)
        self.run("add", "chain", "inet", self.TABLE, "out", "{ type filter hook output priority 0 ; }")
        share = [] if percent >= 100 else ["numgen", "random", "mod", "100", "<", str(percent)]
        self.run("add", "rule", "inet", self.TABLE, "out", "udp", "sport", str(livekit.udp_port), *share,
                 "counter", "drop")

    def dropped(self):
        import re
        import subprocess

        listing = subprocess.run(["nft", "list", "table", "inet", self.TABLE], capture_output=True, text=True).stdout
        found = re.search(r"counter packets (\d+)", listing)
        return int(found.group(1)) if found else 0

    def close(self):
        import subprocess

        subprocess.run(["nft", "delete", "table", "inet", self.TABLE], capture_output=True)


class Jitter:
    """Delays every packet livekit-server sends from its media port by `delay_ms` ± `jitter_ms`
    (uniform, reordering allowed), inside the tests' namespace: netem's `delay D J`, for a kernel
    without netem. A policy rule routes those packets (locally sent, UDP from the port) into a
    TUN device whose other end is tests/netdelay.py, which writes each back after its delay; the
    kernel then delivers it as received. Stacks with PacketLoss (its drop comes first)."""

    DEVICE = "egJitter"
    TABLE = "4242"
    RULE = "10"

    def __init__(self, livekit, delay_ms, jitter_ms):
        self.line = subprocess.Popen(
            [sys.executable, str(HERE / "netdelay.py"), self.DEVICE, str(delay_ms), str(jitter_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.line.stdout.readline().strip() != "ready":
            raise RuntimeError("netdelay.py did not start")
        ip = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True)
        ip("link", "set", self.DEVICE, "up")
        # Packets written back carry one of the namespace's own addresses as their source:
        # accepted only with accept_local, and without reverse-path filtering.
        for key in (f"{self.DEVICE}/accept_local", f"{self.DEVICE}/rp_filter", "all/rp_filter"):
            Path(f"/proc/sys/net/ipv4/conf/{key}").write_text("0" if key.endswith("rp_filter") else "1")
        ip("route", "add", "default", "dev", self.DEVICE, "table", self.TABLE)
        ip("rule", "add", "pref", self.RULE, "iif", "lo", "ipproto", "udp", "sport", str(livekit.udp_port),
           "lookup", self.TABLE)
        # The `local` table's rule comes first (pref 0) and would deliver the packets directly:
        # it moves behind ours for as long as the delay lasts.
        ip("rule", "add", "pref", "100", "lookup", "local")
        ip("rule", "del", "pref", "0")

    def close(self):
        ip = lambda *args: subprocess.run(["ip", *args], capture_output=True)
        ip("rule", "add", "pref", "0", "lookup", "local")
        ip("rule", "del", "pref", "100")
        ip("rule", "del", "pref", self.RULE)
        ip("route", "flush", "table", self.TABLE)
        self.line.stdin.close()
        try:
            self.line.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.line.kill()
        return self.line.stdout.read().strip()

