"""Webhooks as LiveKit sends them, verified by LiveKit's own WebhookReceiver."""

import http.server
import threading
import time

from livekit import api

from conftest import API_KEY, API_SECRET, EgretProcess


class Receiver:
    """Collects webhook requests; answers 500 to the very first one to exercise retries."""

    def __init__(self):
        self.requests = []
        self.refused = 0
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
