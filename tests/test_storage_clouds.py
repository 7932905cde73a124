"""Uploads to Google Cloud Storage and Azure Blob Storage, each against a real emulator
(fake-gcs-server from the Go module proxy, Azurite from npm, both installed by setup.sh), and
checked with an independent client: the GCS JSON API, and Microsoft's own Python SDK."""

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from livekit import api

from conftest import API_KEY, API_SECRET, ROOT, EgretProcess, free_port, wait_for_port
from media import probe

BUCKET = "recordings"
# Azurite's well-known development account (public, in Microsoft's documentation).
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def go_binary(name):
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
    found = shutil.which(name) or str(Path(gopath) / "bin" / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed: run tests/setup.sh")
    return found


class XmlPutAdapter:
    """fake-gcs-server 1.56 takes the XML API's object PUT only as a signed URL; object_store
    (like Google's XML API clients) PUTs with a bearer token. This passes such a PUT on as the
    JSON API's media upload, unchanged, and answers with the object's ETag, as GCS does."""

    def __init__(self, upstream):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                bucket, _, key = self.path.lstrip("/").partition("/")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                query = urllib.parse.urlencode({"uploadType": "media", "name": urllib.parse.unquote(key)})
                forward = urllib.request.Request(f"{upstream}/upload/storage/v1/b/{bucket}/o?{query}", data=body,
                                                 method="POST", headers={"Content-Type": self.headers.get(
                                                     "Content-Type", "application/octet-stream")})
                try:
                    with urllib.request.urlopen(forward, timeout=30) as r:
                        stored = json.load(r)
                    self.send_response(200)
                    self.send_header("ETag", f'"{stored.get("etag", stored.get("md5Hash", "x"))}"')
                except urllib.error.HTTPError as e:
                    self.send_response(e.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class FakeGcs:
    def __init__(self, root: Path):
        (root / BUCKET).mkdir(parents=True)  # -data: each top-level directory is a bucket
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [go_binary("fake-gcs-server"), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-public-host", f"127.0.0.1:{self.port}", "-backend", "memory", "-data", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)
        self.adapter = XmlPutAdapter(self.api)
        self.url = self.adapter.url

    def credentials(self):
        """A service account key as LiveKit's GCPUpload takes it; the emulator's keys send the
        client to it without OAuth."""
        return json.dumps({"gcs_base_url": self.url, "disable_oauth": True, "client_email": "",
                           "private_key": "", "private_key_id": ""})

    def objects(self):
        """Name -> size of every object in the bucket, from the JSON API."""
        with urllib.request.urlopen(f"{self.api}/storage/v1/b/{BUCKET}/o", timeout=10) as r:
            return {o["name"]: int(o["size"]) for o in json.load(r).get("items", [])}

    def download(self, name):
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.api}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=10) as r:
            return r.read()

    def stop(self):
        self.adapter.server.shutdown()
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Azurite:
    def __init__(self, root: Path):
        from azure.storage.blob import BlobServiceClient

        binary = ROOT / "tests/emulators/node_modules/.bin/azurite-blob"
        if not binary.exists():
            pytest.fail("Azurite is not installed: run tests/setup.sh")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZ_ACCOUNT}"
        self.proc = subprocess.Popen(
            [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(root),
             "--silent", "--skipApiVersionCheck"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, timeout=60)
        self.client = BlobServiceClient(account_url=self.endpoint,
                                        credential={"account_name": AZ_ACCOUNT, "account_key": AZ_KEY})
        self.client.create_container(BUCKET)

    def blobs(self):
        return {b.name: b.size for b in self.client.get_container_client(BUCKET).list_blobs()}

    def download(self, name):
        return self.client.get_blob_client(BUCKET, name).download_blob().readall()

    def stop(self):
        self.proc.kill()  # Azurite waits for its idle connections on SIGTERM; it keeps no state here
        self.proc.wait(timeout=10)


@pytest.fixture
def gcs(tmp_path):
    server = FakeGcs(tmp_path / "gcs")
    yield server
    server.stop()


@pytest.fixture
def azurite(tmp_path):
    server = Azurite(tmp_path / "azurite")
    yield server
    server.stop()


def lk_web_egress(egret, request):
    async def run():
        async with api.LiveKitAPI(f"http://127.0.0.1:{egret.port}", API_KEY, API_SECRET) as lk:
            return await lk.egress.start_web_egress(request)

    return asyncio.run(run())


def record_briefly(egret, egress_id):
    egret.api.wait_status(egress_id, "active")
    egret.api.wait(egress_id, lambda i: i["duration"] >= 1.5, what="1.5 s recorded")
    egret.api.stop(egress_id)
    return egret.api.wait_status(egress_id, "complete", "failed", timeout=60)


def test_gcs_upload_through_livekit_client(tmp_path, pages, gcs):
    """LiveKit's GCPUpload (credentials JSON + bucket) on a request from LiveKit's Python client:
    the file lands in the bucket byte for byte, and the egress reports where."""
    egret = EgretProcess(tmp_path / "eg")
    try:
        request = api.WebEgressRequest(
            url=pages.url("animated.html?tone=440"), audio_only=True,
            file_outputs=[api.EncodedFileOutput(file_type=api.EncodedFileType.OGG, filepath="gcs/web.ogg",
                                                gcp=api.GCPUpload(credentials=gcs.credentials(), bucket=BUCKET))])
        info = record_briefly(egret, lk_web_egress(egret, request).egress_id)
        assert info["status"] == "complete", info
        (out,) = info["outputs"]
        assert out["location"] == f"{gcs.url}/{BUCKET}/gcs/web.ogg" and not out["upload_error"], out
        local = (egret.storage / "gcs/web.ogg").read_bytes()
        assert gcs.objects()["gcs/web.ogg"] == len(local) and gcs.download("gcs/web.ogg") == local
        (tmp_path / "got.ogg").write_bytes(gcs.download("gcs/web.ogg"))
        assert [s["codec_name"] for s in probe(tmp_path / "got.ogg")["streams"]] == ["opus"]
        # Credentials that are not a key file are refused by field, before anything records.
        for bad, field in [({"credentials": "not json", "bucket": BUCKET}, "gcp.credentials"),
                           ({"credentials": gcs.credentials()}, "gcp.bucket")]:
            got, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
                "file_outputs": [{"filepath": "gcs/bad.mp4", "gcp": bad}]}})
            assert got == 400 and reply["field"] == f"params.file_outputs[0].{field}", reply
        got, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
            "file_outputs": [{"filepath": "gcs/two.mp4", "gcp": {"bucket": BUCKET}, "azure": {}}]}})
        assert got == 400 and "one upload target" in reply["error"], reply
    finally:
        egret.stop()


def test_azure_upload_configured_and_per_request(tmp_path, pages, azurite):
    """`[storage.azure]` in egress.toml takes a request from LiveKit's Python client that names
    no storage; a request's own AzureBlobUpload (here with egret's `endpoint`) goes to its
    container. Both land byte for byte, as Microsoft's SDK lists and reads them."""
    config = (f'[storage.azure]\naccount_name = "{AZ_ACCOUNT}"\naccount_key = "{AZ_KEY}"\n'
              f'container_name = "{BUCKET}"\nendpoint = "{azurite.endpoint}"\n')
    egret = EgretProcess(tmp_path / "eg", extra_config=config)
    try:
        request = api.WebEgressRequest(
            url=pages.url("animated.html?tone=440"), audio_only=True,
            file_outputs=[api.EncodedFileOutput(file_type=api.EncodedFileType.OGG, filepath="az/web.ogg")])
        info = record_briefly(egret, lk_web_egress(egret, request).egress_id)
        assert info["status"] == "complete" and info["outputs"][0]["location"] == f"{azurite.endpoint}/{BUCKET}/az/web.ogg", info
        azurite.client.create_container("own")
        own = {"account_name": AZ_ACCOUNT, "account_key": AZ_KEY, "container_name": "own", "endpoint": azurite.endpoint}
        eid = egret.api.start("testsrc", segment_outputs=[{"filename_prefix": "hls/own", "playlist_name": "hls/own.m3u8",
                                                            "segment_duration": 1, "azure": own}])["egress_id"]
        info = record_briefly(egret, eid)
        assert info["status"] == "complete" and not info["outputs"][0]["upload_error"], info
        # The segments, the playlist and the output's manifest all go to its own container.
        own_blobs = {b.name for b in azurite.client.get_container_client("own").list_blobs()}
        assert {"hls/own.m3u8", f"hls/{eid}.json"} <= own_blobs and any(b.endswith(".ts") for b in own_blobs), own_blobs
        assert not any(eid in name for name in azurite.blobs()), "nothing of it in the configured container"
        # The key is not echoed by the API nor kept on disk.
        assert AZ_KEY not in json.dumps(egret.api.get(eid))
        assert not any(AZ_KEY in f.read_text() for f in (egret.workdir / ".egret").rglob("*.json"))
        eid = egret.api.start("testsrc", file_outputs=[{"filepath": "az/own.mp4", "azure": own}])["egress_id"]
        info = record_briefly(egret, eid)
        assert info["status"] == "complete" and not info["outputs"][0]["upload_error"], info
        local = (egret.storage / "az/web.ogg").read_bytes()
        assert azurite.blobs()["az/web.ogg"] == len(local) and azurite.download("az/web.ogg") == local
        own_blob = azurite.client.get_blob_client("own", "az/own.mp4")
        assert own_blob.download_blob().readall() == (egret.storage / "az/own.mp4").read_bytes()
        assert own_blob.get_blob_properties().content_settings.content_type == "video/mp4"
        got, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
            "file_outputs": [{"filepath": "az/bad.mp4", "azure": {**own, "account_key": ""}}]}})
        assert got == 400 and reply["field"] == "params.file_outputs[0].azure.account_key", reply
    finally:
        egret.stop()
