"""Bounded random requests against egret's API and LiveKit's Twirp API: every answer is 2xx or
4xx with a JSON error, never 5xx, a hang or a crash. Seeded, so a failure can be replayed
(the seed and the request are in the assertion message)."""

import http.client
import json
import random
import struct

import pytest

REQUESTS = 1000  # per seed

RECIPES = ["testsrc", "web", "room_composite", "participant", "track", "track_composite", "nope", "", "../x"]
TWIRP_METHODS = [
    "StartRoomCompositeEgress", "StartWebEgress", "StartParticipantEgress", "StartTrackCompositeEgress",
    "StartTrackEgress", "StartEgress", "UpdateLayout", "UpdateStream", "ListEgress", "StopEgress", "Nope", "",
]
FIELDS = [
    "file_outputs", "segment_outputs", "stream_outputs", "image_outputs", "preset", "advanced", "duration",
    "max_duration", "tone", "audio_only", "url", "room_name", "layout", "identity", "track_id", "audio_track_id",
    "video_track_id", "filepath", "file_type", "urls", "protocol", "filename_prefix", "playlist_name",
    "segment_duration", "capture_interval", "width", "height", "framerate", "video_codec", "audio_codec",
    "start_signal_timeout", "websocket_url", "s3", "egress_id", "add_output_urls", "remove_output_urls",
    "roomName", "fileOutputs", "streamOutputs", "segmentOutputs", "web", "room_composite", "outputs", "file",
    "stream", "segments", "template", "custom_base_url", "audio_mixing", "webhooks", "storage",
]
STRINGS = [
    "", "x", "a/b.mp4", "../../etc/passwd", "/abs.mp4", "a\u0000b", "\n", "rtmp://127.0.0.1:9/live/k",
    "srt://127.0.0.1:9", "http://127.0.0.1:9/", "ws://127.0.0.1:9/", "H264_720P_30", "MP4", "OGG", "WEBM",
    "grid", "speaker", "{egress_id}", "{room_name}/{time}", "\u202e\u00e9\U0001f600", "%s%n%x", "1e999",
    "-1", "NaN", "x" * 5000, "EG_nothere", "AAC", "OPUS", "VP8", "H264_HIGH", "SRT", "RTMP",
]


def rand_value(rng, depth=0):
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 30, 1 << 31, 1 << 63, -(1 << 63), 10 ** 30])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e308, 3.14, 1e-300])
    if kind in (4, 5):
        return rng.choice(STRINGS)
    if kind in (6, 7):
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return rand_object(rng, depth + 1)


def rand_object(rng, depth=0):
    return {rng.choice(FIELDS): rand_value(rng, depth) for _ in range(rng.randrange(6))}


def plausible_params(rng):
    """Mostly-valid params with one or two things wrong (finds deeper checks than pure noise)."""
    params = {"file_outputs": [{"filepath": f"fuzz/{rng.randrange(10 ** 9)}.mp4"}]}
    for _ in range(rng.randrange(1, 3)):
        target = params
        if rng.random() < 0.4:
            target = params["file_outputs"][0]
        target[rng.choice(FIELDS)] = rand_value(rng)
    return params


def rand_body(rng):
    choice = rng.randrange(8)
    if choice == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if choice == 1:
        return json.dumps(rand_value(rng)).encode()
    if choice == 2:
        text = json.dumps({"recipe": "testsrc", "params": plausible_params(rng)})
        cut = rng.randrange(len(text))
        return text[:cut].encode()
    if choice == 3:
        return json.dumps({"recipe": "testsrc", "params": plausible_params(rng)}).encode()
    if choice == 4:
        return b"[" * 10000 + b"]" * 10000
    return json.dumps({"recipe": rng.choice(RECIPES), "params": rand_object(rng)}).encode()


def rand_protobuf(rng):
    """Bytes shaped like protobuf fields (tags, varints, lengths that lie)."""
    out = b""
    for _ in range(rng.randrange(8)):
        field, wire = rng.randrange(1, 20), rng.choice([0, 1, 2, 5, 3, 7])
        out += bytes([(field << 3 | wire) & 0x7F])
        if wire == 0:
            out += bytes([0xFF] * rng.randrange(11)) + b"\x01"
        elif wire == 2:
            payload = rng.choice([b"", b"x" * 3, json.dumps(rand_value(rng)).encode()])
            out += bytes([rng.choice([min(len(payload), 127), 0x7F, 100])]) + payload
        elif wire == 1:
            out += struct.pack("<d", rng.random())
        else:
            out += b"\x00\x00"
    return out


class Client:
    def __init__(self, port, token):
        self.port, self.token = port, token

    def send(self, method, path, body, content_type="application/json", auth=True):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": content_type}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def check(status, payload, what):
    assert status < 500, f"{status} for {what}: {payload[:300]!r}"
    if status >= 400:
        reply = json.loads(payload)
        assert reply.get("error") or reply.get("msg"), f"no error message for {what}: {reply}"


def stop_if_started(egret, status, payload):
    if 200 <= status < 300:
        try:
            reply = json.loads(payload)
        except ValueError:
            return
        eid = reply.get("egress_id") or reply.get("egressId")
        if eid:
            egret.api.request("POST", f"/v1/egress/{eid}/stop")


def stop_all_running(egret):
    """Whatever the noise started (a protobuf start answers in protobuf) ends here, so the
    tests after these do not share the machine with it."""
    for e in egret.api.ok("GET", "/v1/egress")["egresses"]:
        if e["status"] in ("starting", "active"):
            egret.api.request("POST", f"/v1/egress/{e['egress_id']}/stop")
    for e in egret.api.ok("GET", "/v1/egress")["egresses"]:
        if e["status"] not in ("complete", "failed", "aborted"):
            egret.api.wait_status(e["egress_id"], "complete", "failed", "aborted")


@pytest.mark.parametrize("seed", [1, 2])
def test_random_requests_to_egrets_api(egret, seed):
    rng = random.Random(seed)
    client = Client(egret.port, egret.api.token)
    paths = ["/v1/egress", "/v1/egress/EG_x", "/v1/egress/EG_x/stop", "/v1/recipes", "/v1/egress/%00",
             "/v1/egress/" + "a" * 3000, "/v1//egress", "/healthz", "/layouts/../../etc/passwd", "/v2", "/"]
    for i in range(REQUESTS):
        method = rng.choice(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH"])
        path = rng.choice(paths) if rng.random() < 0.3 else "/v1/egress"
        body = rand_body(rng)
        status, payload = client.send(method, path, body, auth=rng.random() > 0.05)
        what = f"seed {seed} #{i}: {method} {path} {body[:200]!r}"
        check(status, payload, what)
        stop_if_started(egret, status, payload)
    assert client.send("GET", "/healthz", None)[0] == 200
    stop_all_running(egret)


@pytest.mark.parametrize("seed", [3, 4])
def test_random_requests_to_the_twirp_api(egret, seed):
    rng = random.Random(seed)
    client = Client(egret.port, egret.api.token)
    for i in range(REQUESTS):
        method = rng.choice(TWIRP_METHODS)
        if rng.random() < 0.3:
            content_type, body = "application/protobuf", rand_protobuf(rng)
        else:
            content_type, body = "application/json", json.dumps(rand_object(rng)).encode()
        status, payload = client.send("POST", f"/twirp/livekit.Egress/{method}", body, content_type)
        what = f"seed {seed} #{i}: {method} {content_type} {body[:200]!r}"
        assert status < 500, f"{status} for {what}: {payload[:300]!r}"
        if status >= 400 and content_type == "application/json":
            reply = json.loads(payload)
            assert reply.get("msg") or reply.get("error"), f"no error message for {what}: {reply}"
        if content_type == "application/json":
            stop_if_started(egret, status, payload)
    assert client.send("GET", "/healthz", None)[0] == 200
    stop_all_running(egret)
    stop_all_running(egret)
