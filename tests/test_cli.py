"""The `egret` client commands against a running server, as a script would use them: output
to parse, exit codes to branch on, errors naming the field."""

import json
import subprocess
import time

from conftest import BINARY, EgretProcess
from media import duration, probe


def egret_cli(server, *args, url=None):
    command = [str(BINARY), "--config", str(server.config)] + (["--url", url] if url else []) + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


def wait_installed(server, name, timeout=10):
    """A recipe file written to a running server, once it is live (the watcher is async)."""
    deadline = time.monotonic() + timeout
    while name not in server.api.recipes():
        assert time.monotonic() < deadline, f"recipe {name} not loaded"
        time.sleep(0.02)


def test_start_list_show_watch_stop_with_exit_codes(tmp_path):
    server = EgretProcess(tmp_path)
    try:
        done = egret_cli(server, "start", "testsrc", "duration=2", 'file_outputs=[{"filepath": "cli/a.mp4"}]', "--wait")
        assert done.returncode == 0, done.stderr
        first = done.stdout.strip()
        assert first.startswith("EG_") and "complete" in done.stderr
        assert abs(duration(probe(server.storage / "cli/a.mp4")) - 2.0) <= 0.5

        (tmp_path / "req.json").write_text(json.dumps({"recipe": "testsrc", "params": {
            "file_outputs": [{"filepath": "cli/b.mp4"}]}}))
        started = subprocess.run([str(BINARY), "--config", str(server.config), "start", "testsrc", "--json", "-"],
                                 input=(tmp_path / "req.json").read_text(), capture_output=True, text=True, timeout=90)
        assert started.returncode == 0, started.stderr
        running = started.stdout.strip()
        server.api.wait(running, lambda i: i["status"] == "active" and i["bytes"] > 0, what="recording")

        listed = egret_cli(server, "list")
        assert listed.returncode == 0
        header, *rows = listed.stdout.splitlines()
        assert header.split()[:3] == ["ID", "RECIPE", "STATUS"]
        assert any(r.split()[:3] == [running, "testsrc", "active"] for r in rows), listed.stdout
        assert any(r.split()[:3] == [first, "testsrc", "complete"] for r in rows), listed.stdout
        listed_json = json.loads(egret_cli(server, "list", "--json").stdout)["egresses"]
        assert {e["egress_id"] for e in listed_json} >= {first, running}

        shown = egret_cli(server, "show", running)
        assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "active"

        watched = egret_cli(server, "watch", "--count", "2", "--interval", "0.3")
        assert watched.returncode == 0 and watched.stdout.count(running) == 2, watched.stdout

        # A second of media before the stop (the steps above may all take less).
        server.api.wait(running, lambda i: i["duration"] >= 1.0, what="a second recorded")
        stopped = egret_cli(server, "stop", running)
        assert stopped.returncode == 0 and stopped.stdout.strip() == "complete", stopped.stderr
        assert duration(probe(server.storage / "cli/b.mp4")) > 0.5

        # Script-usable failures: refused (1, naming the field), usage (2), unreachable (3).
        refused = egret_cli(server, "start", "testsrc", "bogus=1")
        assert refused.returncode == 1 and "bogus" in refused.stderr and "HTTP 400" in refused.stderr, refused.stderr
        unknown = egret_cli(server, "show", "EG_missing")
        assert unknown.returncode == 1 and "404" in unknown.stderr
        again = egret_cli(server, "stop", running)
        assert again.returncode == 1 and "409" in again.stderr, again.stderr
        usage = egret_cli(server, "start")
        assert usage.returncode == 2 and "RECIPE" in usage.stderr
        unreachable = egret_cli(server, "list", url="127.0.0.1:9")
        assert unreachable.returncode == 3 and "Connection refused" in unreachable.stderr, unreachable.stderr
        for typo in (["list", "--jsn"], ["list", "extra"], ["stop", running, "--force"],
                     ["start", "testsrc", "duration=1", "duration=2"]):
            wrong = egret_cli(server, *typo)
            assert wrong.returncode == 2, (typo, wrong.stderr)
        assert "params.bogus: unknown parameter" in refused.stderr and "bogus: bogus" not in refused.stderr
    finally:
        server.stop()


def test_an_egress_that_fails_exits_4(tmp_path):
    server = EgretProcess(tmp_path)
    try:
        (server.recipes / "doomed.lua").write_text("""
return recipe {
  name = "doomed", outputs = true,
  start = function(req, egress)
    egress:encode { video = egress:testsrc { video = true }.video }:output(req)
    egress:after(0.5, function() egress:fail("the source went away") end)
  end,
}""")
        wait_installed(server, "doomed")
        result = egret_cli(server, "start", "doomed", 'file_outputs=[{"filepath": "cli/d.mp4"}]', "--wait")
        assert result.returncode == 4 and "the source went away" in result.stderr, result.stderr
    finally:
        server.stop()
