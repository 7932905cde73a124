"""Hostile recipes: runaway Lua in a handler, a pattern that would backtrack for hours, a
host function fed nonsense. Each fails its own call or egress, with the recipe's file and
line where there is one; the API stays answerable and what was recorded stays playable."""

import threading

from media import duration, probe, streams
from test_recipes import save, wait_listed

HANDLER_LOOP = """
return recipe {
  name = "spin",
  outputs = true,
  start = function(req, egress)
    local src = egress:testsrc {}
    egress:encode { video = src.video, audio = src.audio }:output(req)
    egress:on("active", function()
      egress:after(1.5, function() while true do end end)
    end)
  end,
}
"""


def start_recipe(egret, name, text, params):
    path = egret.recipes / f"{name}.lua"
    save(path, text)
    wait_listed(egret, name)
    return path, egret.api.request("POST", "/v1/egress", {"recipe": name, "params": params})


def test_a_looping_handler_fails_its_egress_while_the_api_answers(egret):
    path, (status, reply) = start_recipe(egret, "spin", HANDLER_LOOP, {"file_outputs": [{"filepath": "hostile/spin.mp4"}]})
    assert status == 201, reply
    eid = reply["egress_id"]
    egret.api.wait_status(eid, "active")
    # While the timer's Lua spins (2 s budget), other requests are answered: each of these
    # answers comes back before the egress is failed by its budget.
    seen = []
    while True:
        info = egret.api.get(eid)
        assert egret.api.request("GET", "/healthz")[0] == 200
        assert egret.api.request("GET", "/v1/egress")[0] == 200
        seen.append(info["status"])
        if info["status"] in ("failed", "complete"):
            break
    assert seen.count("active") >= 2, seen
    info = egret.api.wait_status(eid, "failed")
    assert "exceeded its" in info["error"] and "scripts/spin.lua:9" in info["error"], info
    media = probe(egret.storage / "hostile/spin.mp4")
    assert streams(media, "video") and duration(media) >= 1.0
    path.unlink()


def test_a_hopeless_pattern_errors_instead_of_hanging_egret(egret):
    text = """
return recipe {
  name = "backtrack",
  outputs = true,
  start = function(req, egress)
    local s = string.rep("a", 30) .. "b"
    return s:find(string.rep("a*", 30) .. "c")
  end,
}
"""
    answered = []
    # Another client keeps being served meanwhile.
    probe_thread = threading.Thread(target=lambda: answered.append(egret.api.request("GET", "/healthz")[0]))
    path, (status, reply) = start_recipe(egret, "backtrack", text, {"file_outputs": [{"filepath": "hostile/b.mp4"}]})
    probe_thread.start()
    probe_thread.join(30)
    assert status == 422 and "scripts/backtrack.lua:7" in reply["error"], reply
    assert "30 repetitions over a 31-byte string" in reply["error"], reply
    assert answered == [200]
    path.unlink()


def test_a_host_function_fed_nonsense_is_a_lua_error(egret):
    text = """
return recipe {
  name = "baddate",
  outputs = true,
  start = function(req, egress)
    return os.date("%#z")
  end,
}
"""
    path, (status, reply) = start_recipe(egret, "baddate", text, {"file_outputs": [{"filepath": "hostile/d.mp4"}]})
    assert status == 422 and "scripts/baddate.lua:6" in reply["error"] and "os.date" in reply["error"], reply
    assert egret.api.request("GET", "/healthz")[0] == 200
    path.unlink()
