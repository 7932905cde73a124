"""Webhooks as LiveKit sends them, verified by LiveKit's own WebhookReceiver."""

import asyncio
import http.server
import threading
import time

import pytest
from livekit import api

from conftest import API_KEY, API_SECRET, EgretProcess


class Receiver:
    """Collects webhook requests; answers 500 to the very first one to exercise retries
    (unless `refuse_first` is False)."""

    def __init__(self, refuse_first=True):
        self.requests = []
        self.refused = 0 if refuse_first else 1
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.refused == 0:
                    receiver.refused += 1
                    self.send_response(500)
                else:
                    receiver.requests.append((self.headers.get("Content-Type"), self.headers.get("Authorization"), body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def test_egress_webhooks_signed_and_in_order(tmp_path):
    receiver = Receiver()
    egret = EgretProcess(tmp_path, extra_config=f'[webhooks]\nurls = ["{receiver.url}"]\n')
    try:
        started = egret.api.start("testsrc", duration=1, file_outputs=[{"filepath": "hook/h.mp4"}])
        eid = started["egress_id"]
        egret.api.wait_status(eid, "complete")
        verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        deadline = time.monotonic() + 20
        events = []
        while not events or events[-1].event != "egress_ended":
            assert time.monotonic() < deadline, [e.event for e in events]
            time.sleep(0.05)
            events = [verifier.receive(body.decode(), auth) for _, auth, body in receiver.requests]
        assert receiver.refused == 1, "the refused first delivery was retried"
        assert all(ct == "application/webhook+json" for ct, _, _ in receiver.requests)
        names = [e.event for e in events]
        assert names[0] == "egress_started" and names[-1] == "egress_ended"
        assert set(names[1:-1]) <= {"egress_updated"} and len(names) >= 3, names
        assert all(e.egress_info.egress_id == eid for e in events)
        statuses = [e.egress_info.status for e in events]
        assert statuses == sorted(statuses), "statuses only move forward"
        # Each event tells something new (a file egress's first ACTIVE came twice).
        seen = []
        for e in events:
            info = type(e.egress_info)()
            info.CopyFrom(e.egress_info)
            info.updated_at = 0
            assert info not in seen, f"{e.event} said again: {info}"
            seen.append(info)
        final = events[-1].egress_info
        assert final.status == api.EGRESS_COMPLETE and final.file_results[0].size > 0
        # the signature covers the body: a changed body is refused
        _, auth, body = receiver.requests[-1]
        try:
            verifier.receive(body.decode().replace("egress_ended", "egress_endex"), auth)
            raise AssertionError("tampered body accepted")
        except Exception as e:  # noqa: BLE001 - the SDK raises a plain Exception
            assert "sha256" in str(e).lower() or "hash" in str(e).lower(), e
    finally:
        egret.stop()
        receiver.server.shutdown()


def received(receiver, verifier, timeout=20):
    """The verified events once `egress_ended` has arrived."""
    deadline = time.monotonic() + timeout
    events = []
    while not events or events[-1].event != "egress_ended":
        assert time.monotonic() < deadline, [e.event for e in events]
        time.sleep(0.05)
        events = [verifier.receive(body.decode(), auth) for _, auth, body in receiver.requests]
    return events


def test_request_webhooks_through_livekit_client(tmp_path, pages):
    """LiveKit's per-request `webhooks`: each URL hears of that egress only, signed with the
    secret of the API key `signing_key` names (empty = the default key); `[webhooks]` URLs
    still hear of every egress. An unknown signing key is refused by field."""
    configured, default_key, named_key = Receiver(), Receiver(refuse_first=False), Receiver(refuse_first=False)
    egret = EgretProcess(tmp_path, extra_config=f'[webhooks]\nurls = ["{configured.url}"]\n'
                                                 '[livekit]\nurl = "ws://127.0.0.1:9"\napi_key = "lk-key"\n'
                                                 'api_secret = "lk-secret-0123456789-0123456789-0123"\n')

    async def scenario():
        lk = api.LiveKitAPI(url=f"http://127.0.0.1:{egret.port}", api_key=API_KEY, api_secret=API_SECRET)
        try:
            request = api.WebEgressRequest(
                url=pages.url("animated.html?tone=440"), audio_only=True,
                file_outputs=[api.EncodedFileOutput(file_type=api.EncodedFileType.OGG, filepath="hook/req.ogg")],
                webhooks=[api.WebhookConfig(url=default_key.url),
                          api.WebhookConfig(url=named_key.url, signing_key="lk-key")])
            info = await lk.egress.start_web_egress(request)
            bad = api.WebEgressRequest(url=pages.url("animated.html"), audio_only=True,
                                       file_outputs=[api.EncodedFileOutput(filepath="hook/bad.ogg")],
                                       webhooks=[api.WebhookConfig(url=named_key.url, signing_key="nobody")])
            with pytest.raises(api.TwirpError) as refused:
                await lk.egress.start_web_egress(bad)
            return info.egress_id, refused.value
        finally:
            await lk.aclose()

    try:
        eid, refused = asyncio.run(scenario())
        assert refused.status == 400 and "webhooks[0].signing_key" in refused.message, refused.message
        egret.api.wait_status(eid, "active")
        egret.api.stop(eid)
        server_verifier = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        lk_verifier = api.WebhookReceiver(api.TokenVerifier("lk-key", "lk-secret-0123456789-0123456789-0123"))
        for receiver, verifier in [(configured, server_verifier), (default_key, server_verifier),
                                   (named_key, lk_verifier)]:
            events = received(receiver, verifier)
            names = [e.event for e in events]
            assert names[0] == "egress_started" and names[-1] == "egress_ended", names
            assert {e.egress_info.egress_id for e in events} == {eid}, "only its own egress"
            assert events[-1].egress_info.status == api.EGRESS_COMPLETE
        # the named key's receiver cannot be fooled by the server's key, nor the reverse
        _, auth, body = named_key.requests[-1]
        with pytest.raises(Exception):
            server_verifier.receive(body.decode(), auth)
    finally:
        egret.stop()
        for r in (configured, default_key, named_key):
            r.server.shutdown()
