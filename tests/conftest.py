"""Fixtures: a real egret process, a real nginx-rtmp server, and LiveKit-issued tokens."""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from egret_client import Egret

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "egret"
API_KEY = "egret-test-key"
API_SECRET = "egret-test-secret-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


class EgretProcess:
    """egret with its own config, storage and a private copy of the recipes."""

    def __init__(self, workdir: Path, extra_config: str = "", layouts: Path = ROOT / "layouts", server: str = ""):
        self.workdir = workdir
        self.server_extra = server
        self.layouts = layouts
        self.storage = workdir / "out"
        self.recipes = workdir / "scripts"
        shutil.copytree(ROOT / "scripts", self.recipes)
        self.port = free_port()
        self.config = workdir / "egress.toml"
        self.write_config(extra_config)
        self.log = open(workdir / "egret.log", "w")
        self.launch()
        self.api = Egret(f"http://127.0.0.1:{self.port}", API_KEY, API_SECRET)

    def launch(self):
        self.log.flush()
        log_start = (self.workdir / "egret.log").stat().st_size
        self.proc = subprocess.Popen(
            [str(BINARY), "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("EGRET_LOG", "info,chromiumoxide=error")},
        )
        wait_for_port(self.port, self.proc)
        # The port is bound before egret watches its config: wait until everything is up.
        deadline = time.monotonic() + 20
        while "egret ready" not in self.log_text()[log_start:]:
            assert self.proc.poll() is None and time.monotonic() < deadline, "egret did not get ready"
            time.sleep(0.05)

    def restart(self):
        """The same egret (config, storage, state, port) started again after it ended."""
        assert self.proc.poll() is not None, "still running"
        self.launch()

    def write_config(self, extra=""):
        """The test config plus `extra` TOML; written whole then renamed, as editors do."""
        text = f"""
[server]
listen = "127.0.0.1:{self.port}"
api_key = "{API_KEY}"
api_secret = "{API_SECRET}"
{self.server_extra}
[storage]
dir = "out"
[recipes]
dir = "scripts"
layouts = "{self.layouts}"
{extra}
"""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=timeout)
        self.log.close()
        return self.proc.returncode

    def log_text(self):
        return (self.workdir / "egret.log").read_text()


@pytest.fixture(scope="session")
def egret(tmp_path_factory):
    proc = EgretProcess(tmp_path_factory.mktemp("egret"))
    yield proc
    proc.stop()


@pytest.fixture
def fresh_egret(tmp_path):
    """An egret of the test's own, for tests that kill or signal it."""
    proc = EgretProcess(tmp_path)
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


class Nginx:
    def __init__(self, workdir: Path, port=None):
        self.port = port or free_port()
        self.workdir = workdir
        module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
        (workdir / "logs").mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"""
load_module {module};
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/logs/error.log info;
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{self.port};
    application live {{ live on; record off; }}
  }}
}}
"""
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(workdir), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc)

    def url(self, stream):
        return f"rtmp://127.0.0.1:{self.port}/live/{stream}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    server = Nginx(tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


class Pages:
    """Serves tests/pages on 127.0.0.1 from a thread."""

    def __init__(self):
        import functools
        import http.server
        import threading

        handler = functools.partial(QuietHandler, directory=str(Path(__file__).parent / "pages"))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}/{path}"


def _quiet_handler():
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    return Handler


QuietHandler = _quiet_handler()


@pytest.fixture(scope="session")
def pages():
    served = Pages()
    yield served
    served.server.shutdown()


@pytest.fixture(scope="session")
def livekit(tmp_path_factory):
    """A real livekit-server with redis, on the tests' network namespace."""
    from livekit_harness import LiveKitServer

    server = LiveKitServer(tmp_path_factory.mktemp("livekit"), free_port, wait_for_port)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lk_egret(tmp_path_factory, livekit):
    """egret configured to join rooms on that server."""
    proc = EgretProcess(tmp_path_factory.mktemp("egret-lk"), livekit.config_toml())
    yield proc
    proc.stop()


@pytest.fixture
def room(request):
    """A room name of the test's own."""
    return "r-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[:40] + "-" + os.urandom(3).hex()


@pytest.fixture
def publish(livekit, room):
    """Starts publishers (tests/publisher.py) in the test's room; they leave at the end."""
    from livekit_harness import Publisher

    started = []

    def start(*args, identity="alice", room_name=None):
        p = Publisher(livekit, room_name or room, identity, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.leave()
