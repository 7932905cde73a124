"""Engine lifecycle: SIGTERM drains and finalizes, SIGKILL leaves a playable file."""

import signal
import time

from media import duration, probe, streams


def test_sigterm_drains_every_egress(fresh_egret):
    api = fresh_egret.api
    a = api.start("testsrc", file_outputs=[{"filepath": "drain/a.mp4"}])
    b = api.start("testsrc", audio_only=True, file_outputs=[{"filepath": "drain/b.ogg"}])
    for e in (a, b):
        api.wait_status(e["egress_id"], "active")
    time.sleep(2)
    assert fresh_egret.stop(signal.SIGTERM) == 0
    log = fresh_egret.log_text()
    assert "all egresses finalized" in log
    assert log.count("status=Complete") == 2, log
    media = probe(fresh_egret.storage / "drain/a.mp4")
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}
    assert duration(media) >= 1.5
    assert streams(probe(fresh_egret.storage / "drain/b.ogg"), "audio")[0]["codec_name"] == "opus"


def test_sigkill_leaves_a_playable_mp4(fresh_egret):
    api = fresh_egret.api
    e = api.start("testsrc", file_outputs=[{"filepath": "killed/k.mp4"}])
    api.wait(e["egress_id"], lambda i: i["outputs"][0]["duration"] >= 3.0, what="3 s recorded")
    fresh_egret.proc.kill()
    fresh_egret.proc.wait()
    media = probe(fresh_egret.storage / "killed/k.mp4")
    (v,) = streams(media, "video")
    assert (v["codec_name"], v["width"], v["height"]) == ("h264", 1280, 720)
    assert duration(media) >= 2.0, "fragments written before the kill are readable"
