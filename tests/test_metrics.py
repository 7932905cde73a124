"""GET /metrics: OpenMetrics text read by the Prometheus project's own parser, its values
checked against a running egress (bytes growing, bitrate, status), its end, a broken recipe
and a runaway handler."""

import time
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import EgretProcess
from egret_client import livekit_token

SPIN = """
return recipe {
  name = "spin",
  outputs = true,
  start = function(req, egress)
    egress:encode { video = egress:testsrc { video = true }.video }:output(req)
    egress:after(0.5, function() while true do end end)
  end,
}
"""


def scrape(egret, token=None):
    request = urllib.request.Request(f"http://127.0.0.1:{egret.port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text"), reply.headers
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def matching(samples, name, **labels):
    return {k: v for k, v in samples.items() if k[0] == name and set(labels.items()) <= set(k[1])}


def test_metrics_follow_egresses_recipes_and_the_process(tmp_path):
    egret = EgretProcess(tmp_path)
    try:
        (egret.recipes / "broken.lua").write_text("return recipe {")
        (egret.recipes / "spin.lua").write_text(SPIN)
        deadline = time.monotonic() + 10
        while not {"broken", "spin"} <= set(egret.api.recipes()):
            assert time.monotonic() < deadline, egret.api.recipes().keys()
            time.sleep(0.02)
        eid = egret.api.start("testsrc", file_outputs=[{"filepath": "metrics/a.mp4"}])["egress_id"]
        egret.api.wait(eid, lambda i: i["status"] == "active" and i["bytes"] > 0 and i["duration"] > 1.5,
                       what="recording")
        first = scrape(egret)
        assert value(first, "egret_egresses", recipe="testsrc", status="active") == 1
        assert value(first, "egret_egress_starts_total", recipe="testsrc") == 1
        (bytes_key,) = matching(first, "egret_output_bytes", egress_id=eid)
        assert dict(bytes_key[1])["kind"] == "file" and dict(bytes_key[1])["output"].startswith("file_outputs")
        egret.api.wait(eid, lambda i: i["bytes"] > first[bytes_key] + 10_000, what="more bytes")
        second = scrape(egret)
        assert second[bytes_key] > first[bytes_key], "bytes grow between scrapes"
        (rate,) = matching(second, "egret_output_bitrate_bps", egress_id=eid).values()
        assert 100_000 < rate < 20_000_000, rate
        assert value(second, "egret_available") == 1 and value(second, "egret_draining") == 0
        assert value(second, "egret_recipes_broken") == 1 and value(second, "egret_recipe_load_failures_total") >= 1
        assert value(second, "egret_process_resident_memory_bytes") > 5_000_000
        assert value(second, "egret_process_cpu_seconds_total") > 0

        egret.api.stop(eid)
        egret.api.wait_status(eid, "complete")
        spin = egret.api.start("spin", file_outputs=[{"filepath": "metrics/spin.mp4"}])["egress_id"]
        egret.api.wait_status(spin, "failed", timeout=30)
        done = scrape(egret)
        assert value(done, "egret_egress_ends_total", recipe="testsrc", status="complete", reason="stopped_by_api") == 1
        assert value(done, "egret_egresses", recipe="testsrc", status="complete") == 1
        assert not matching(done, "egret_output_bytes", egress_id=eid), "ended egresses leave the live figures"
        assert value(done, "egret_lua_budget_hits_total") >= 1
        (failed,) = matching(done, "egret_egress_ends_total", recipe="spin", status="failed").values()
        assert failed == 1
    finally:
        egret.stop()


def test_metrics_can_require_the_api_token(tmp_path):
    egret = EgretProcess(tmp_path, server="metrics_public = false")
    try:
        try:
            scrape(egret)
            raise AssertionError("scraped without a token")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        assert value(scrape(egret, token=egret.api.token), "egret_available") == 1
    finally:
        egret.stop()
