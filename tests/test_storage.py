"""Uploads to a real S3-compatible server (versitygw, posix backend) and the local backup."""

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
        self.proc.kill()
        self.proc.wait()


def test_finished_files_are_uploaded(tmp_path):
    s3 = S3Server(tmp_path / "gw")
    egret = EgretProcess(tmp_path / "eg", extra_config=s3.config())
    try:
        started = egret.api.start("testsrc", duration=2, file_outputs=[{"filepath": "up/{egress_id}.mp4"}])
        info = egret.api.wait_status(started["egress_id"], "complete", "failed")
        (out,) = info["outputs"]
        key = out["target"]
        assert out["location"] == f"http://127.0.0.1:{s3.port}/{BUCKET}/{key}" and out["backup"] is None
        stored = s3.root / BUCKET / key
        assert stored.read_bytes() == (egret.storage / key).read_bytes(), "the object is the recorded file"
        assert abs(duration(probe(stored)) - 2.0) <= 0.5
    finally:
        egret.stop()
        s3.stop()


def test_s3_down_keeps_a_backup_and_says_where(tmp_path):
    s3 = S3Server(tmp_path / "gw")
    egret = EgretProcess(tmp_path / "eg", extra_config=s3.config())
    try:
        started = egret.api.start("testsrc", file_outputs=[{"filepath": "down/{egress_id}.mp4"}])
        eid = started["egress_id"]
        egret.api.wait_status(eid, "active")
        s3.stop()  # the storage goes away during the recording
        time.sleep(2)
        egret.api.stop(eid)
        info = egret.api.wait_status(eid, "complete", "failed", timeout=60)
        (out,) = info["outputs"]
        assert info["status"] == "complete" and out["location"] is None and out["upload_error"]
        backup = Path(out["backup"])
        assert backup.is_relative_to(egret.storage / "backup") and backup.exists()
        assert duration(probe(backup)) >= 1.5, "the recording is kept, playable"
        assert not (egret.storage / out["target"]).exists(), "moved, not copied, to the backup directory"
        _, _, listed = egret.api.twirp("ListEgress", {"egressId": eid})
        (item,) = listed["items"]
        assert item["backupStorageUsed"] is True and item["fileResults"][0]["location"] == str(backup)
    finally:
        egret.stop()
