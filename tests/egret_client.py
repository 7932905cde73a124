"""A small client of egret's HTTP API; tokens come from LiveKit's own Python SDK."""

import json
import time
import urllib.error
import urllib.request

from livekit import api as lkapi


def livekit_token(key, secret, room_record=True, ttl_seconds=3600):
    """A token made by livekit-api's AccessToken, exactly as LiveKit users make them."""
    from datetime import timedelta

    token = lkapi.AccessToken(key, secret).with_identity("egret-tests").with_ttl(timedelta(seconds=ttl_seconds))
    return token.with_grants(lkapi.VideoGrants(room_record=room_record)).to_jwt()


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Egret:
    def __init__(self, base_url, key, secret):
        self.base_url = base_url
        self.key = key
        self.secret = secret
        self.token = livekit_token(key, secret)

    def request(self, method, path, body=None, token=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        token = self.token if token is None else token
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ok(self, method, path, body=None):
        status, reply = self.request(method, path, body)
        if status >= 300:
            raise ApiError(status, reply)
        return reply

    def twirp(self, method, body, token=None):
        """LiveKit's Egress API over proto3 JSON: (status, content type, decoded body)."""
        req = urllib.request.Request(
            f"{self.base_url}/twirp/livekit.Egress/{method}",
            data=body if isinstance(body, bytes) else json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.token if token is None else token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.headers["content-type"], json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers["content-type"], json.loads(e.read())

    def start(self, recipe, **params):
        return self.ok("POST", "/v1/egress", {"recipe": recipe, "params": params})

    def get(self, egress_id):
        return self.ok("GET", f"/v1/egress/{egress_id}")

    def stop(self, egress_id):
        return self.ok("POST", f"/v1/egress/{egress_id}/stop")

    def recipes(self):
        return {r["name"]: r for r in self.ok("GET", "/v1/recipes")["recipes"]}

    def wait(self, egress_id, predicate, timeout=30.0, what="condition"):
        """Polls the egress until predicate(info) holds; egret has no push channel (yet)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get(egress_id)
            if predicate(info):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached: {info}")
            time.sleep(0.05)

    def wait_status(self, egress_id, *statuses, timeout=30.0):
        return self.wait(egress_id, lambda i: i["status"] in statuses, timeout, f"status in {statuses}")

    def record(self, recipe, seconds, **params):
        """Starts, waits until active, lets it run `seconds`, stops, waits until it ended."""
        info = self.start(recipe, **params)
        self.wait_status(info["egress_id"], "active")
        time.sleep(seconds)  # the recording itself: media time can only pass
        self.stop(info["egress_id"])
        return self.wait_status(info["egress_id"], "complete", "failed", "aborted")
