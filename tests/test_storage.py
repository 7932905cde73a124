"""Uploads to a real S3-compatible server (versitygw, posix backend) and the local backup."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EgretProcess, free_port, wait_for_port
from media import duration, probe

ACCESS, SECRET, BUCKET = "egretkey", "egretsecret0123456789", "recordings"


def versitygw_binary():
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
    found = shutil.which("versitygw") or str(Path(gopath) / "bin" / "versitygw")
    if not Path(found).exists():
        pytest.fail("versitygw is not installed: run tests/setup.sh")
    return found


def sigv4_get(port, path, query):
    """A GET signed with AWS Signature V4 (stdlib only), as any S3 client sends it."""
    return sigv4_request(port, path, query)[1]


def sigv4_request(port, path, query, method="GET"):
    """(headers, body) of a request signed with AWS Signature V4 (stdlib only)."""
    import datetime
    import hashlib
    import hmac
    import urllib.request

    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host, payload = f"127.0.0.1:{port}", hashlib.sha256(b"").hexdigest()
    headers = f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n"
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = f"{method}\n{path}\n{query}\n{headers}\n{signed}\n{payload}"
    scope = f"{date}/us-east-1/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{SECRET}".encode()
    for part in (date, "us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://{host}{path}?{query}", method=method, headers={
        "x-amz-date": amz_date, "x-amz-content-sha256": payload,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS}/{scope}, SignedHeaders={signed}, Signature={signature}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers, resp.read()


def list_objects(port):
    """Key -> size of every object in the bucket, from the server's ListObjectsV2."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(sigv4_get(port, f"/{BUCKET}", "list-type=2"))
    ns = {"s3": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    find = (lambda e, t: e.find(f"s3:{t}", ns)) if ns else (lambda e, t: e.find(t))
    contents = root.findall("s3:Contents", ns) if ns else root.findall("Contents")
    return {find(c, "Key").text: int(find(c, "Size").text) for c in contents}


class S3Server:
    def __init__(self, root: Path):
        self.root = root
        (root / BUCKET).mkdir(parents=True)  # posix backend: top-level directories are buckets
        self.port = free_port()
        self.proc = subprocess.Popen(
            [versitygw_binary(), "--port", f"127.0.0.1:{self.port}", "--access", ACCESS, "--secret", SECRET,
             "--region", "us-east-1", "posix", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def config(self):
        return (f'[storage.s3]\nendpoint = "http://127.0.0.1:{self.port}"\nregion = "us-east-1"\n'
                f'bucket = "{BUCKET}"\naccess_key = "{ACCESS}"\nsecret = "{SECRET}"\n')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "gw")
    yield server
    server.stop()


@pytest.fixture
def egret_s3(tmp_path, s3):
    """egret with [storage.s3] pointing at the test's S3 server."""
    egret = EgretProcess(tmp_path / "eg", extra_config=s3.config())
    yield egret
    egret.stop()


def test_upload_options_as_livekit_takes_them(tmp_path, s3):
    """A request's own S3 target with LiveKit's metadata, tagging and content disposition: the
    object carries them. Through StartEgress v2's `storage` too (every output's target)."""
    egret = EgretProcess(tmp_path / "eg")
    try:
        target = {"access_key": ACCESS, "secret": SECRET, "bucket": BUCKET, "region": "us-east-1",
                  "endpoint": f"http://127.0.0.1:{s3.port}", "force_path_style": True,
                  "metadata": {"recorded-by": "egret", "room": "lobby"}, "tagging": "team=media&kind=test",
                  "content_disposition": 'attachment; filename="talk.mp4"'}
        started = egret.api.start("testsrc", duration=1, file_outputs=[{"filepath": "opts/a.mp4", "s3": target}])
        info = egret.api.wait_status(started["egress_id"], "complete", "failed")
        assert info["status"] == "complete" and info["outputs"][0]["location"].endswith("/opts/a.mp4"), info
        headers, body = sigv4_request(s3.port, f"/{BUCKET}/opts/a.mp4", "")
        assert body == (egret.storage / "opts/a.mp4").read_bytes()
        assert headers["x-amz-meta-recorded-by"] == "egret" and headers["x-amz-meta-room"] == "lobby", dict(headers)
        assert headers["Content-Disposition"] == 'attachment; filename="talk.mp4"', dict(headers)
        _, tags = sigv4_request(s3.port, f"/{BUCKET}/opts/a.mp4", "tagging=")
        assert b"<Key>team</Key>" in tags and b"<Value>media</Value>" in tags, tags

        status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
            "file_outputs": [{"filepath": "opts/b.mp4", "s3": {**target, "assume_role_arn": "arn:x"}}]}})
        assert status == 400 and reply["field"] == "params.file_outputs[0].s3.assume_role_arn", reply
    finally:
        egret.stop()


def test_finished_files_are_uploaded(egret_s3, s3):
    egret = egret_s3
    started = egret.api.start("testsrc", duration=2, file_outputs=[{"filepath": "up/{egress_id}.mp4"}])
    info = egret.api.wait_status(started["egress_id"], "complete", "failed")
    (out,) = info["outputs"]
    key = out["target"]
    assert out["location"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/{key}" and out["backup"] is None
    # LiveKit's manifest goes beside it: `<egress_id>.json`, naming the file where it went.
    manifest_key = f"up/{started['egress_id']}.json"
    local_manifest = egret.storage / manifest_key
    assert list_objects(s3.port) == {key: (egret.storage / key).stat().st_size,
                                     manifest_key: local_manifest.stat().st_size}, "listed by the S3 server"
    manifest = json.loads(local_manifest.read_text())
    assert manifest["egress_id"] == started["egress_id"] and manifest["files"] == [
        {"filename": key, "location": out["location"]}], manifest
    assert manifest["ended_at"] >= manifest["started_at"] > 0
    _, _, listed = egret.api.twirp("ListEgress", {"egressId": started["egress_id"]})
    assert listed["items"][0]["manifestLocation"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/{manifest_key}", listed
    stored = s3.root / BUCKET / key
    assert stored.read_bytes() == (egret.storage / key).read_bytes(), "the object is the recorded file"
    assert abs(duration(probe(stored)) - 2.0) <= 0.5



def test_segments_playlists_and_snapshots_go_up_as_written(egret_s3, s3):
    egret = egret_s3
    started = egret.api.start(
        "testsrc",
        segment_outputs=[{"filename_prefix": "live/seg", "playlist_name": "live/index.m3u8", "segment_duration": 1}],
        image_outputs=[{"capture_interval": 1, "width": 320, "height": 180, "filename_prefix": "snaps/s"}],
    )
    eid = started["egress_id"]
    bucket = s3.root / BUCKET
    # while live: segments and a playlist naming them are already in the bucket
    def live_playlist():
        p = bucket / "live/index.m3u8"
        return p.exists() and "seg_00001.ts" in p.read_text()
    deadline = time.monotonic() + 30
    while not live_playlist():
        assert time.monotonic() < deadline, "no live playlist uploaded"
        time.sleep(0.1)
    text = (bucket / "live/index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" not in text
    for name in [line for line in text.splitlines() if line.endswith(".ts")]:
        assert (bucket / "live" / name).exists(), f"{name} named before it was uploaded"
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    final = (bucket / "live/index.m3u8").read_text()
    assert final.rstrip().endswith("#EXT-X-ENDLIST") and final == (egret.storage / "live/index.m3u8").read_text()
    segments = sorted((egret.storage / "live").glob("seg_*.ts"))
    assert segments and all((bucket / "live" / s.name).read_bytes() == s.read_bytes() for s in segments)
    listed = list_objects(s3.port)
    local = {str(p.relative_to(egret.storage)): p.stat().st_size
             for p in list((egret.storage / "live").iterdir()) + list((egret.storage / "snaps").iterdir())
             if not p.name.endswith(".tmp")}
    assert listed == local, "every segment, playlist and snapshot is listed by the S3 server"
    snaps = sorted((egret.storage / "snaps").glob("s_*.jpeg"))
    assert snaps and all((bucket / "snaps" / s.name).read_bytes() == s.read_bytes() for s in snaps)
    by_kind = {o["kind"]: o for o in info["outputs"]}
    assert by_kind["segments"]["location"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/live/index.m3u8"
    assert by_kind["images"]["location"].startswith(f"http://127.0.0.1:{s3.port}/{BUCKET}/snaps/s_")
    # LiveKit's manifest names each segment where it went, beside its playlist.
    (playlist,) = json.loads((bucket / f"live/{eid}.json").read_text())["playlists"]
    assert playlist["location"] == by_kind["segments"]["location"] and playlist["segments"], playlist
    for segment in playlist["segments"]:
        name = segment["filename"].rsplit("/", 1)[-1]
        assert segment["location"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/live/{name}", segment



def test_s3_down_keeps_a_backup_and_says_where(egret_s3, s3):
    egret = egret_s3
    started = egret.api.start("testsrc", file_outputs=[{"filepath": "down/{egress_id}.mp4"}],
                              segment_outputs=[{"filename_prefix": "down/hls/seg", "playlist_name": "down/hls/p.m3u8",
                                                "segment_duration": 2}])
    eid = started["egress_id"]
    egret.api.wait_status(eid, "active")
    s3.stop()  # the storage goes away during the recording
    time.sleep(2)
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete", "failed", timeout=60)
    out, hls = sorted(info["outputs"], key=lambda o: o["kind"])
    assert info["status"] == "complete" and out["location"] is None and out["upload_error"]
    # The HLS output's backup is named by its playlist (what a player opens), not a segment.
    assert hls["backup"] and hls["backup"].endswith("down/hls/p.m3u8") and hls["upload_error"], hls
    assert Path(hls["backup"]).read_text().rstrip().endswith("#EXT-X-ENDLIST")
    backup = Path(out["backup"])
    assert backup.is_relative_to(egret.storage / "backup") and backup.exists()
    assert duration(probe(backup)) >= 1.5, "the recording is kept, playable"
    assert not (egret.storage / out["target"]).exists(), "moved, not copied, to the backup directory"
    _, _, listed = egret.api.twirp("ListEgress", {"egressId": eid})
    (item,) = listed["items"]
    assert item["backupStorageUsed"] is True and item["fileResults"][0]["location"] == str(backup)



def test_per_request_s3_as_livekit_sends_it(tmp_path, pages, s3):
    """No [storage.s3] in egress.toml: the request's own S3Upload fields decide (LiveKit JSON)."""
    egret = EgretProcess(tmp_path / "eg")
    try:
        target = {"accessKey": ACCESS, "secret": SECRET, "region": "us-east-1", "bucket": BUCKET,
                  "endpoint": f"http://127.0.0.1:{s3.port}", "forcePathStyle": True}
        status, _, info = egret.api.twirp("StartWebEgress", {
            "url": pages.url("animated.html?tone=440"), "audioOnly": True,
            "fileOutputs": [{"fileType": "OGG", "filepath": "req/web.ogg", "s3": target}]})
        assert status == 200, info
        eid = info["egressId"]
        egret.api.wait_status(eid, "active")
        time.sleep(1)
        egret.api.twirp("StopEgress", {"egressId": eid})
        egret.api.wait_status(eid, "complete")
        _, _, listed = egret.api.twirp("ListEgress", {"egressId": eid})
        (result,) = listed["items"][0]["fileResults"]
        assert result["location"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/req/web.ogg"
        stored = s3.root / BUCKET / "req/web.ogg"
        assert stored.read_bytes() == (egret.storage / "req/web.ogg").read_bytes()
        assert [st["codec_name"] for st in probe(stored)["streams"]] == ["opus"]
        for bad, field in [({**target, "endpoint": "ftp://s3.example"}, "file_outputs[0].s3.endpoint"),
                           ({**target, "assumeRoleArn": "arn:x"}, "file_outputs[0].s3.assume_role_arn")]:
            got, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
                "file_outputs": [{"filepath": "req/y.mp4", "s3": bad}]}})
            assert got == 400 and reply["field"] == f"params.{field}", reply
        got, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
            "file_outputs": [{"filepath": "req/z.mp4", "s3": target, "gcp": {"bucket": "b"}}]}})
        assert got == 400 and "one upload target" in reply["error"], reply
    finally:
        egret.stop()
