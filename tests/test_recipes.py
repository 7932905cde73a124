"""Recipes while the server runs: add, edit, break, fix; running egresses keep their version."""

import os
import time

from media import probe, streams

RECIPE_V1 = """
return recipe {
  name = "hot",
  params = { tone = "number?" },
  outputs = true,
  start = function(req, egress)
    local src = egress:testsrc { video = false, tone = req.tone }
    egress:encode { audio = src.audio }:output(req)
  end,
}
"""

# v2 adds video and a parameter; the request shape changes with it.
RECIPE_V2 = RECIPE_V1.replace('params = { tone = "number?" }', 'params = { tone = "number?", small = "boolean" }').replace(
    "local src = egress:testsrc { video = false, tone = req.tone }\n    egress:encode { audio = src.audio }:output(req)",
    "local src = egress:testsrc { tone = req.tone }\n"
    "    egress:encode { video = src.video, audio = src.audio,\n"
    "                    advanced = req.small and { width = 320, height = 240 } or nil }:output(req)",
)

BROKEN = RECIPE_V1.replace("outputs = true,", "outputs = true,\n  start = = nil,")


def save(path, text):
    """Writes like an editor does: a temporary file renamed over the recipe."""
    tmp = path.with_suffix(".lua.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_recipe(egret, predicate, what, timeout=5.0):
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        recipe = egret.api.recipes().get("hot")
        if recipe and predicate(recipe):
            print(f"{what}: live after {(time.monotonic() - started) * 1000:.0f} ms")
            return recipe
        time.sleep(0.02)
    raise TimeoutError(f"{what}: {egret.api.recipes().get('hot')}")


def test_add_edit_break_fix_while_running(egret):
    path = egret.recipes / "hot.lua"
    save(path, RECIPE_V1)
    v1 = wait_recipe(egret, lambda r: r["version"] == 1, "new recipe")
    assert [p["name"] for p in v1["params"]] == ["tone"]

    long_running = egret.api.start("hot", file_outputs=[{"filepath": "hot/a.ogg"}])
    assert long_running["recipe_version"] == 1
    egret.api.wait_status(long_running["egress_id"], "active")

    save(path, RECIPE_V2)
    v2 = wait_recipe(egret, lambda r: r["version"] == 2, "edited recipe")
    assert sorted(p["name"] for p in v2["params"]) == ["small", "tone"]
    # the running egress keeps the version it started with
    running = egret.api.get(long_running["egress_id"])
    assert running["status"] == "active" and running["recipe_version"] == 1

    info = egret.api.record("hot", 1, small=True, file_outputs=[{"filepath": "hot/b.mp4"}])
    assert info["recipe_version"] == 2
    (v,) = streams(probe(egret.storage / "hot/b.mp4"), "video")
    assert (v["width"], v["height"]) == (320, 240)

    save(path, BROKEN)
    broken = wait_recipe(egret, lambda r: r["last_error"] is not None, "broken save reported")
    assert "scripts/hot.lua:" in broken["last_error"], broken["last_error"]
    assert broken["version"] == 2, "the previous version stays live"
    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "hot", "params": {"small": True}})
    assert status == 400 and reply["field"] == "params.file_outputs", "still served by v2's declaration"
    assert "recipe failed to load" in egret.log_text()

    save(path, RECIPE_V1)
    fixed = wait_recipe(egret, lambda r: r["last_error"] is None and r["version"] == 3, "fixed recipe")
    assert [p["name"] for p in fixed["params"]] == ["tone"]

    egret.api.stop(long_running["egress_id"])
    ended = egret.api.wait_status(long_running["egress_id"], "complete")
    assert ended["recipe_version"] == 1
    assert [s["codec_name"] for s in probe(egret.storage / "hot/a.ogg")["streams"]] == ["opus"]
    path.unlink()
    wait_recipe_gone(egret)


def wait_listed(egret, *names, timeout=5.0):
    """Waits until the watcher picked up every named recipe; returns the listing."""
    deadline = time.monotonic() + timeout
    while not all(n in (recipes := egret.api.recipes()) for n in names):
        assert time.monotonic() < deadline, f"{names} not listed: {list(recipes)}"
        time.sleep(0.02)
    return recipes


def wait_recipe_gone(egret, timeout=5.0):
    deadline = time.monotonic() + timeout
    while "hot" in egret.api.recipes():
        assert time.monotonic() < deadline, "deleted recipe still listed"
        time.sleep(0.02)


def test_recipe_errors_reach_the_caller_with_file_and_line(egret):
    path = egret.recipes / "raises.lua"
    save(path, 'return recipe {\n  outputs = true,\n  start = function(req, egress)\n    error("no luck")\n  end,\n}\n')
    wait_listed(egret, "raises")
    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "raises", "params": {
        "file_outputs": [{"filepath": "r.mp4"}]}})
    assert status == 422
    assert "scripts/raises.lua:4: no luck" in reply["error"], reply
    assert reply["egress"]["status"] == "failed"
    path.unlink()


def test_sandbox_blocks_io_and_os(egret):
    path = egret.recipes / "escape.lua"
    save(path, 'return recipe {\n  outputs = true,\n  start = function(req, egress)\n'
               '    os.execute("touch /tmp/egret-escaped")\n  end,\n}\n')
    wait_listed(egret, "escape")
    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "escape", "params": {
        "file_outputs": [{"filepath": "e.mp4"}]}})
    assert status == 422 and "scripts/escape.lua:4:" in reply["error"], reply
    assert not os.path.exists("/tmp/egret-escaped")
    path.unlink()


def test_example_recipes_load(egret):
    """Every recipe under examples/recipes loads as shipped (copied in, as a user would)."""
    import shutil

    from conftest import ROOT

    names = []
    for example in sorted((ROOT / "examples" / "recipes").glob("*.lua")):
        shutil.copy(example, egret.recipes / example.name)
        names.append(example.stem)
    recipes = wait_listed(egret, *names)
    for n in names:
        assert recipes[n]["last_error"] is None, recipes[n]
    info = egret.api.start("guarded_restream", max_seconds=1, file_outputs=[{"filepath": "guarded/g.mp4"}])
    done = egret.api.wait_status(info["egress_id"], "complete")
    assert done["reason"] == "limit reached"
    assert probe(egret.storage / "guarded/g.mp4")["streams"]
    for n in names:
        (egret.recipes / f"{n}.lua").unlink()


def test_a_runaway_recipe_saved_while_running_is_loaded_once(egret):
    """A recipe whose top level loops for ever is stopped by its budget once per save: loading
    reads the file, and that read used to count as a change (reloaded for ever, the API slowed
    to seconds per request)."""
    path = egret.recipes / "runaway.lua"
    before = egret.log_text().count("recipe=runaway")
    save(path, 'while true do end\nreturn recipe { name = "runaway", start = function() end }\n')
    deadline = time.monotonic() + 10
    while egret.log_text().count("recipe=runaway") == before:
        assert time.monotonic() < deadline, "the runaway recipe was never reported"
        time.sleep(0.1)
    started = time.monotonic()
    assert egret.api.request("GET", "/v1/recipes")[0] == 200
    assert time.monotonic() - started < 1.0, "the API waits on a recipe load"
    # Its budget is 2 s: three budgets later it has still been loaded only once.
    reported = egret.log_text().count("recipe=runaway")
    time.sleep(6)
    assert egret.log_text().count("recipe=runaway") == reported, "loaded again without a save"
    os.remove(path)
