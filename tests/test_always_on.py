"""[[always_on]] entries: restarted after failures, and egress.toml edits applied live."""

import signal
import time

from conftest import EgretProcess, Nginx
from media import probe, probe_live, streams


def always_on(egret, name):
    return [e for e in egret.api.ok("GET", "/v1/egress")["egresses"] if e["always_on"] == name]


def wait_for(what, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not reached"
        time.sleep(0.1)


def active_one(egret, name, not_id=None):
    """The running egress of an entry (optionally a newer one than `not_id`), once active."""
    def find():
        for e in always_on(egret, name):
            if e["status"] == "active" and e["egress_id"] != not_id and all(o["status"] == "active" for o in e["outputs"]):
                return e
        return None
    return wait_for(f"{name} active", find)


def entry(name, params):
    return f'[[always_on]]\nname = "{name}"\nrecipe = "testsrc"\nparams = {params}\n'


def test_restream_comes_back_after_rtmp_outage(tmp_path):
    (tmp_path / "ng").mkdir()
    nginx = Nginx(tmp_path / "ng")
    url = nginx.url("always")
    # The stream itself reconnects for 2 s; past that its egress fails and the entry restarts it.
    egret = EgretProcess(tmp_path / "eg", extra_config=entry("pattern", f'{{ stream_outputs = [{{ urls = ["{url}"] }}] }}'),
                         server="stream_reconnect_timeout = 2")
    try:
        first = active_one(egret, "pattern")
        assert streams(probe_live(url), "video")[0]["codec_name"] == "h264"
        nginx.stop()  # the RTMP server goes away...
        wait_for("egress failed", lambda: egret.api.get(first["egress_id"])["status"] == "failed")
        time.sleep(3)  # ...stays away while egret keeps retrying...
        (tmp_path / "ng2").mkdir()
        nginx = Nginx(tmp_path / "ng2", port=nginx.port)  # ...and comes back
        again = active_one(egret, "pattern", not_id=first["egress_id"])
        assert again["egress_id"] != first["egress_id"]
        assert streams(probe_live(url), "video")[0]["codec_name"] == "h264"
        assert "restarting" in egret.log_text()
    finally:
        egret.stop()
        nginx.stop()


def test_config_edits_add_change_remove_break(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    a = entry("a", '{ audio_only = true, file_outputs = [{ filepath = "a/{egress_id}.ogg" }] }')
    b = entry("b", '{ audio_only = true, file_outputs = [{ filepath = "b/{egress_id}.ogg" }] }')
    egret = EgretProcess(tmp_path, extra_config=a)
    try:
        first_a = active_one(egret, "a")

        egret.write_config(a + b)  # added: b starts, a untouched
        first_b = active_one(egret, "b")
        assert egret.api.get(first_a["egress_id"])["status"] == "active"

        changed_a = a.replace("audio_only = true", "audio_only = true, tone = 660")
        egret.write_config(changed_a + b)  # changed: a restarts, b untouched
        second_a = active_one(egret, "a", not_id=first_a["egress_id"])
        old_a = egret.api.wait_status(first_a["egress_id"], "complete")
        assert old_a["reason"] == "changed in egress.toml"
        assert second_a["params"]["tone"] == 660
        assert egret.api.get(first_b["egress_id"])["status"] == "active"

        egret.write_config(changed_a)  # removed: b stops cleanly and stays stopped
        old_b = egret.api.wait_status(first_b["egress_id"], "complete")
        assert old_b["reason"] == "removed from egress.toml"
        assert streams(probe(egret.storage / old_b["outputs"][0]["target"]), "audio")[0]["codec_name"] == "opus"

        egret.write_config(changed_a + "[server2]\nx = 1\n" + entry("c", "{ colour = 1 }"))  # broken
        wait_for("errors reported", lambda: "not applied" in egret.log_text())
        log = egret.log_text()
        assert "server2: unknown key" in log
        time.sleep(0.5)
        egret.write_config(changed_a + entry("c", "{ colour = 1 }"))  # valid TOML, bad params
        wait_for("param errors reported", lambda: "always_on[1].params.colour" in egret.log_text())
        time.sleep(1)
        assert [e["egress_id"] for e in always_on(egret, "b") if e["status"] == "active"] == []
        assert always_on(egret, "c") == []
        assert egret.api.get(second_a["egress_id"])["status"] == "active", "the running config stays"
    finally:
        egret.stop()


def test_max_duration_rotates_always_on_files(tmp_path):
    rotating = entry("rot", '{ max_duration = 2, file_outputs = [{ filepath = "rot/{egress_id}.mp4" }] }')
    egret = EgretProcess(tmp_path, extra_config=rotating)
    try:
        done = wait_for("two periods", lambda: [e for e in always_on(egret, "rot") if e["status"] == "complete"][:2]
                        if len([e for e in always_on(egret, "rot") if e["status"] == "complete"]) >= 2 else None)
        for period in done:
            assert period["reason"] == "limit reached"
            media = probe(egret.storage / period["outputs"][0]["target"])
            assert abs(float(media["format"]["duration"]) - 2.0) <= 0.5
        first, second = sorted(done, key=lambda e: e["started_at"])
        gap = second["started_at"] - first["ended_at"]
        print(f"rotation gap {gap * 1000:.0f} ms")
        assert gap < 1.0, "the next file starts at once, without backoff"
    finally:
        egret.stop()


def test_config_edit_applies_the_key_pair_and_names_what_needs_a_restart(fresh_egret):
    """A new api_secret is applied live (old tokens refused, new ones accepted); a new listen
    address is logged as waiting for a restart, and the API stays where it was."""
    from conftest import API_KEY, API_SECRET, free_port
    from egret_client import livekit_token

    egret = fresh_egret
    new_secret = "rotated-secret-0123456789-abcdefghij"
    text = egret.config.read_text()
    text = text.replace(API_SECRET, new_secret).replace(f"127.0.0.1:{egret.port}", f"127.0.0.1:{free_port()}")
    tmp = egret.config.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(egret.config)
    wait_for("reload logged", lambda: "after a restart" in egret.log_text())
    log = egret.log_text()
    assert "egress.toml: server.listen changed but only take effect after a restart" in log, log
    assert "server.api_key/api_secret" in log
    old = egret.api.request("GET", "/v1/egress")
    assert old[0] == 401, old
    new = egret.api.request("GET", "/v1/egress", token=livekit_token(API_KEY, new_secret))
    assert new[0] == 200, new


def test_an_entry_whose_recipe_does_not_load_waits_for_the_fix(tmp_path):
    """egret starts even when an always-on entry's recipe file is broken (as at run time, the
    entry fails and retries); fixing the file brings the entry up."""
    egret = EgretProcess(tmp_path, extra_config=entry("pattern", '{ file_outputs = [{ filepath = "fix/{time}.mp4" }] }'))
    try:
        active_one(egret, "pattern")
        good = (egret.recipes / "testsrc.lua").read_text()
        (egret.recipes / "testsrc.lua").write_text("return recipe {")
        egret.proc.send_signal(signal.SIGTERM)
        assert egret.proc.wait(timeout=30) == 0
        egret.restart()  # must come up despite the broken recipe
        assert "does not load" in egret.log_text()
        assert not [e for e in always_on(egret, "pattern") if e["status"] == "active"]
        (egret.recipes / "testsrc.lua").write_text(good)
        active_one(egret, "pattern")
    finally:
        egret.stop()
