"""Every bad input gets its 4xx with a JSON message naming the field; auth as LiveKit does it."""

import time

import jwt
import pytest

from conftest import API_KEY, API_SECRET
from egret_client import livekit_token

GOOD_FILE = [{"filepath": "api/x.mp4"}]


@pytest.mark.parametrize(
    "body, status, field, words",
    [
        ({"recipe": "nope", "params": {}}, 404, "recipe", "unknown recipe"),
        ({"params": {}}, 400, "recipe", "required"),
        ({"recipe": "testsrc", "params": {}, "extra": 1}, 400, "extra", "unknown field"),
        ({"recipe": "testsrc", "params": {}}, 400, "params.file_outputs", "no output"),
        ({"recipe": "testsrc", "params": {"file_outputs": [{"filepath": "../../etc/x.mp4"}]}}, 400,
         "params.file_outputs[0].filepath", "escapes the storage directory"),
        ({"recipe": "testsrc", "params": {"file_outputs": [{"filepath": "/tmp/x.mp4"}]}}, 400,
         "params.file_outputs[0].filepath", "absolute"),
        ({"recipe": "testsrc", "params": {"file_outputs": [{"filepath": "z/" + "b" * 300 + ".mp4"}]}}, 400,
         "params.file_outputs[0].filepath", "longer than 255 bytes"),
        ({"recipe": "testsrc", "params": {"file_outputs": [{"filepath": "d/" * 100 + "x.mp4"}]}}, 400,
         "params.file_outputs[0].filepath", "deeper than 32 folders"),
        ({"recipe": "testsrc", "params": {"stream_outputs": [{"urls": ["rtmp://127.0.0.1:1/x\u0000y"]}]}}, 400,
         "params.stream_outputs[0].urls[0]", "control character"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "advanced": {"video_bitrate": 999999999999}}},
         400, "params.advanced.video_bitrate", "out of range"),
        ({"recipe": "testsrc", "params": {"file_outputs": [{"file_type": "OGG"}], "advanced": {"audio_codec": "AAC"}}},
         400, "params.file_outputs[0].file_type", "OGG cannot hold Aac"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "advanced": {"video_codec": "VP8"}}}, 400,
         "params.file_outputs[0].file_type", "MP4 cannot hold Vp8"),
        ({"recipe": "testsrc", "params": {"stream_outputs": [{"urls": ["http://x/y"]}]}}, 400,
         "params.stream_outputs[0].urls[0]", "not an rtmp"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "preset": "H264_4K"}}, 400, "params.preset",
         "must be one of"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "advanced": {"width": 1281}}}, 400,
         "params.advanced.width", "even"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "tone": "loud"}}, 400, "params.tone", "number"),
        # Absurd numbers are refused before anything starts (the recipe declares each number's range).
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "duration": -1}}, 400, "params.duration",
         "must be between"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "duration": 1e308}}, 400, "params.duration",
         "must be between"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "tone": 2 ** 70}}, 400, "params.tone",
         "must be between"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "max_duration": 1e308}}, 400,
         "params.max_duration", "positive number of seconds"),
        ({"recipe": "web", "params": {"url": "http://127.0.0.1:9/", "start_signal_timeout": 1e308,
                                      "file_outputs": GOOD_FILE}}, 400, "params.start_signal_timeout", "must be between"),
        ({"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE, "colour": "red"}}, 400, "params.colour",
         "unknown parameter"),
        # OGG holds audio only: known once the recipe built its video source, so 422 from start.
        ({"recipe": "testsrc", "params": {"file_outputs": [{"filepath": "api/v.ogg"}]}}, 422,
         "params.file_outputs[0]", "OGG holds audio only"),
    ],
)
def test_bad_requests_name_their_field(egret, body, status, field, words):
    got, reply = egret.api.request("POST", "/v1/egress", body)
    assert got == status, reply
    assert reply["field"] == field, reply
    assert words in reply["error"], reply


def test_malformed_json(egret):
    status, reply = egret.api.request("POST", "/v1/egress", raw=b'{"recipe": "testsrc",')
    assert status == 400 and reply["field"] == "body" and "malformed JSON" in reply["error"]


def test_auth_like_livekit(egret):
    body = {"recipe": "testsrc", "params": {"file_outputs": GOOD_FILE}}
    assert egret.api.request("GET", "/v1/egress", token="")[0] == 401
    wrong_secret = livekit_token(API_KEY, "another-secret-0123456789abcdef-x")
    assert egret.api.request("GET", "/v1/egress", token=wrong_secret)[0] == 401
    wrong_key = livekit_token("someone-else", API_SECRET)
    assert egret.api.request("GET", "/v1/egress", token=wrong_key)[0] == 401
    expired = jwt.encode({"iss": API_KEY, "exp": 1000, "video": {"roomRecord": True}}, API_SECRET, algorithm="HS256")
    assert egret.api.request("GET", "/v1/egress", token=expired)[0] == 401
    no_grant = livekit_token(API_KEY, API_SECRET, room_record=False)
    status, reply = egret.api.request("POST", "/v1/egress", body, token=no_grant)
    assert status == 403 and "roomRecord" in reply["error"]
    assert egret.api.request("GET", "/healthz", token="")[0] == 200


def test_unknown_egress_and_double_stop(egret):
    assert egret.api.request("GET", "/v1/egress/EG_nothere")[0] == 404
    assert egret.api.request("POST", "/v1/egress/EG_nothere/stop")[0] == 404
    started = egret.api.start("testsrc", file_outputs=[{"filepath": "api/stop.mp4"}])
    egret.api.wait_status(started["egress_id"], "active")
    egret.api.stop(started["egress_id"])
    egret.api.wait_status(started["egress_id"], "complete")
    status, reply = egret.api.request("POST", f"/v1/egress/{started['egress_id']}/stop")
    assert status == 409 and "already ended" in reply["error"]


def test_list_shows_status_duration_bytes_outputs(egret):
    started = egret.api.start("testsrc", file_outputs=[{"filepath": "api/list.mp4"}])
    eid = started["egress_id"]
    assert started["status"] in ("starting", "active")
    egret.api.wait(eid, lambda i: i["bytes"] > 0 and i["duration"] > 0.5, what="bytes and duration grow")
    listed = {e["egress_id"]: e for e in egret.api.ok("GET", "/v1/egress")["egresses"]}
    assert listed[eid]["status"] == "active"
    assert listed[eid]["outputs"][0]["status"] == "active"
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    assert info["outputs"][0]["bytes"] == (egret.storage / "api/list.mp4").stat().st_size
    assert info["duration"] > 0.5 and info["ended_at"] >= info["started_at"]


def test_max_duration_limit_reached(egret):
    started = egret.api.start("testsrc", max_duration=2, file_outputs=[{"filepath": "api/limit.mp4"}])
    info = egret.api.wait_status(started["egress_id"], "complete", "failed")
    assert info["status"] == "complete" and info["reason"] == "limit reached"
    from media import duration, probe

    assert abs(duration(probe(egret.storage / "api/limit.mp4")) - 2.0) <= 0.5
    # LiveKit's view of it: EGRESS_LIMIT_REACHED
    _, _, listed = egret.api.twirp("ListEgress", {"egressId": started["egress_id"]})
    (item,) = listed["items"]
    assert item["status"] == "EGRESS_LIMIT_REACHED"
    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
        "max_duration": -1, "file_outputs": [{"filepath": "api/x.mp4"}]}})
    assert status == 400 and reply["field"] == "params.max_duration"


def test_a_half_sent_request_does_not_hold_its_connection(egret):
    """A client that never finishes its header is cut off (header timeout), and the API still
    answers everyone else meanwhile."""
    import socket

    slow = socket.create_connection(("127.0.0.1", egret.port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    slow.settimeout(30)
    assert egret.api.request("GET", "/healthz")[0] == 200
    started = time.monotonic()
    answer = b""
    while chunk := slow.recv(1024):  # until egret closes it (a socket timeout fails the test)
        answer += chunk
    closed_after = time.monotonic() - started
    slow.close()
    assert closed_after < 20, f"held for {closed_after:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer


def test_storage_never_overwritten_nor_left_through_links(egret, tmp_path):
    """A recording never replaces another (409 naming the field), never follows a symbolic
    link out of storage, and a path with a control character is refused."""
    def start(**params):
        return egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": params})

    first = egret.api.start("testsrc", file_outputs=[{"filepath": "safe/one.mp4"}])
    status, reply = start(file_outputs=[{"filepath": "safe/one.mp4"}])
    assert status == 409 and reply["field"] == "params.file_outputs[0].filepath", reply
    assert "another egress is writing" in reply["error"], reply
    egret.api.wait(first["egress_id"], lambda i: i["bytes"] > 0, what="bytes written")
    egret.api.stop(first["egress_id"])
    egret.api.wait_status(first["egress_id"], "complete")
    size = (egret.storage / "safe/one.mp4").stat().st_size
    status, reply = start(file_outputs=[{"filepath": "safe/one"}])  # the extension is added
    assert status == 409 and "already exists" in reply["error"], reply
    assert (egret.storage / "safe/one.mp4").stat().st_size == size

    (egret.storage / "safe/hls_00000.ts").write_bytes(b"earlier")
    status, reply = start(segment_outputs=[{"filename_prefix": "safe/hls", "playlist_name": "other.m3u8"}])
    assert status == 409 and reply["field"] == "params.segment_outputs[0].filename_prefix", reply

    outside = tmp_path / "outside"
    outside.mkdir()
    (egret.storage / "link").symlink_to(outside)
    status, reply = start(file_outputs=[{"filepath": "link/x.mp4"}])
    assert 400 <= status < 500 and reply["field"] == "params.file_outputs[0].filepath", reply
    assert "symbolic link" in reply["error"], reply
    victim = outside / "victim.mp4"
    victim.write_bytes(b"keep me")
    (egret.storage / "safe/victim.mp4").symlink_to(victim)
    status, reply = start(file_outputs=[{"filepath": "safe/victim.mp4"}])
    assert status == 409, reply
    assert victim.read_bytes() == b"keep me" and list(outside.iterdir()) == [victim]

    for bad in ["safe/a\u0000b.mp4", "safe/a\nb.mp4"]:
        status, reply = start(file_outputs=[{"filepath": bad}])
        assert status == 400 and "control character" in reply["error"], reply

    # Refused before the recipe runs anything (no room joined, no page loaded), whatever it is.
    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "room_composite", "params": {
        "room_name": "nowhere", "file_outputs": [{"filepath": "safe/one.mp4"}]}})
    assert status == 409 and reply["field"] == "params.file_outputs[0].filepath", reply
    assert "already exists" in reply["error"] and ".lua:" not in reply["error"], reply

    # A refused start holds nothing: the same request is refused for the same reason again.
    for _ in range(2):
        status, reply = start(file_outputs=[{"filepath": "safe/v.ogg"}])
        assert status == 422 and "OGG holds audio only" in reply["error"], reply


@pytest.mark.parametrize("trickle", [False, True])
def test_an_idle_or_trickling_client_is_cut_off(egret, trickle):
    """A connection that sends nothing, or a header and then only part of its body, is closed
    (408 for the body) instead of holding its connection for ever."""
    import socket

    sent = b""
    if trickle:
        sent = (f"POST /v1/egress HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {egret.api.token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"re").encode()

    conn = socket.create_connection(("127.0.0.1", egret.port))
    conn.sendall(sent)
    conn.settimeout(40)
    started = time.monotonic()
    answer = b""
    while chunk := conn.recv(1024):
        answer += chunk
    held = time.monotonic() - started
    conn.close()
    assert held < 30, f"held for {held:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer


def test_manifest_beside_outputs_unless_disabled(egret):
    """LiveKit's manifest: `<egress_id>.json` beside each file output, unless disable_manifest."""
    import json

    kept = egret.api.start("testsrc", duration=1, file_outputs=[{"filepath": "manifest/a/x.mp4"}],
                           segment_outputs=[{"filename_prefix": "manifest/b/seg", "playlist_name": "p.m3u8"}])
    skipped = egret.api.start("testsrc", duration=1,
                              file_outputs=[{"filepath": "manifest/c/y.mp4", "disable_manifest": True}])
    for started in (kept, skipped):
        egret.api.wait_status(started["egress_id"], "complete")
    eid = kept["egress_id"]
    for folder in ("a", "b"):
        manifest = json.loads((egret.storage / f"manifest/{folder}/{eid}.json").read_text())
        assert manifest["egress_id"] == eid
    assert manifest["files"][0]["filename"] == "manifest/a/x.mp4"
    (playlist,) = manifest["playlists"]
    assert playlist["segments"] and all(s["filename"].startswith("manifest/b/seg_") for s in playlist["segments"])
    assert egret.api.get(eid)["manifest_location"].endswith(f"manifest/a/{eid}.json")
    assert not list((egret.storage / "manifest/c").glob("*.json")), "disable_manifest: none written"
