"""The status page at `/`, in a real headless Chromium: the egresses with their live pictures,
the always-on entries with their restarts, the recipes with their load errors; the login form
without a token. Also the picture endpoint it uses."""

import subprocess
import time
import urllib.request

from conftest import EgretProcess
from media import probe

CHROMIUM = "/usr/bin/chromium"


def chromium(url, tmp_path, screenshot=None, budget_ms=9000):
    """The page's DOM after `budget_ms` of its own (virtual) time, and optionally a screenshot."""
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
            f"--virtual-time-budget={budget_ms}"]
    if screenshot:
        subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True, timeout=90, check=True)
    return subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=90, check=True).stdout


def test_status_page_shows_egresses_pictures_always_on_and_recipes(tmp_path):
    egret = EgretProcess(tmp_path, extra_config='[[always_on]]\nname = "pattern"\nrecipe = "testsrc"\n'
                                                'params = { duration = 1, file_outputs = [{ filepath = "page/loop-{time}.mp4" }] }\n')
    try:
        (egret.recipes / "broken.lua").write_text("return recipe {")
        # A stream whose server refuses it: a long error on the page, and a key not to show.
        eid = egret.api.start("testsrc", file_outputs=[{"filepath": "page/a.mp4"}],
                              stream_outputs=[{"urls": ["rtmp://127.0.0.1:9/live/sk_secret_0123"]}])["egress_id"]
        egret.api.wait(eid, lambda i: i["status"] == "active" and i["bytes"] > 0, what="recording")
        deadline = time.monotonic() + 30
        while egret.api.ok("GET", "/v1/always_on")["entries"][0]["starts"] < 2 or "broken" not in egret.api.recipes():
            assert time.monotonic() < deadline, egret.api.ok("GET", "/v1/always_on")
            time.sleep(0.1)

        # The picture the page shows: a JPEG of the requested width.
        request = urllib.request.Request(f"http://127.0.0.1:{egret.port}/v1/egress/{eid}/picture.jpg?width=320",
                                         headers={"Authorization": f"Bearer {egret.api.token}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.headers["Content-Type"] == "image/jpeg"
            (tmp_path / "still.jpg").write_bytes(reply.read())
        (still,) = probe(tmp_path / "still.jpg")["streams"]
        assert still["codec_name"] == "mjpeg" and still["width"] == 320 and 170 <= still["height"] <= 190, still

        url = f"http://127.0.0.1:{egret.port}/?token={egret.api.token}"
        dom = chromium(url, tmp_path, screenshot=tmp_path / "page.png")
        assert f'data-egress="{eid}" data-status="active"' in dom, dom[:3000]
        assert f'<img class="thumb" alt="" data-egress="{eid}" src="blob:' in dom, "the live picture is shown"
        assert 'data-always-on="pattern"' in dom and 'data-recipe="broken"' in dom
        assert "class=\"stop\"" in dom and "class=\"empty\">No egress yet" not in dom
        assert "sk_secret_0123" not in dom and "rtmp://127.0.0.1:9/live/{sk_...123}" in dom, "stream keys hidden"
        assert (tmp_path / "page.png").stat().st_size > 20_000, "a rendered page, not a blank one"

        # Without a token: the login form, and no data.
        login = chromium(f"http://127.0.0.1:{egret.port}/", tmp_path, budget_ms=2000)
        assert '<form id="login">' in login and 'id="view" hidden' in login, login[:2000]
    finally:
        egret.stop()


def test_picture_of_an_egress_without_one_is_refused(tmp_path):
    egret = EgretProcess(tmp_path)
    try:
        eid = egret.api.start("testsrc", audio_only=True, file_outputs=[{"filepath": "page/sound.ogg"}])["egress_id"]
        egret.api.wait_status(eid, "active")
        status, body = egret.api.request("GET", f"/v1/egress/{eid}/picture.jpg")
        assert status == 412 and "no picture" in body["error"], body
        status, body = egret.api.request("GET", "/v1/egress/EG_none/picture.jpg")
        assert status == 404, body
    finally:
        egret.stop()
