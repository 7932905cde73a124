"""Engine lifecycle: SIGTERM drains and finalizes, SIGKILL leaves a playable file."""

import signal
import subprocess
import time

from media import duration, probe, streams


def test_sigterm_drains_every_egress(fresh_egret):
    api = fresh_egret.api
    a = api.start("testsrc", file_outputs=[{"filepath": "drain/a.mp4"}])
    b = api.start("testsrc", audio_only=True, file_outputs=[{"filepath": "drain/b.ogg"}])
    for e in (a, b):
        api.wait_status(e["egress_id"], "active")
    time.sleep(2)
    assert fresh_egret.stop(signal.SIGTERM) == 0
    log = fresh_egret.log_text()
    assert "all egresses finalized" in log
    assert log.count("status=Complete") == 2, log
    media = probe(fresh_egret.storage / "drain/a.mp4")
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}
    assert duration(media) >= 1.5
    assert streams(probe(fresh_egret.storage / "drain/b.ogg"), "audio")[0]["codec_name"] == "opus"


def test_sigkill_leaves_a_playable_mp4(fresh_egret):
    """mp4mux's crash-safe layout (each fragment's data before its index) is safe on disk but
    no player reads it; the next egret repairs it in place: every sample decodes, and the
    duration it reports is the file's."""
    api = fresh_egret.api
    # The HLS output's first segment is still open at the kill: its playlist names nothing yet.
    e = api.start("testsrc", file_outputs=[{"filepath": "killed/k.mp4"}],
                  segment_outputs=[{"filename_prefix": "killed/hls/part", "playlist_name": "list.m3u8",
                                    "segment_duration": 8}],
                  advanced={"key_frame_interval": 1})
    eid = e["egress_id"]
    api.wait(eid, lambda i: i["outputs"][0]["duration"] >= 3.0, what="3 s recorded")
    fresh_egret.proc.kill()
    fresh_egret.proc.wait()

    fresh_egret.restart()
    path = fresh_egret.storage / "killed/k.mp4"
    media = probe(path)
    (v,) = streams(media, "video")
    assert (v["codec_name"], v["width"], v["height"]) == ("h264", 1280, 720)
    assert streams(media, "audio")[0]["codec_name"] == "aac"
    assert duration(media) >= 2.5, "every fragment written before the kill is there"
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
                             capture_output=True, text=True, timeout=60)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
    output = api.get(eid)["outputs"][0]
    assert abs(output["duration"] - duration(media)) < 0.1, (output, duration(media))
    assert output["bytes"] == path.stat().st_size

    playlist = fresh_egret.storage / "killed/hls/list.m3u8"
    assert "part_00000.ts" in playlist.read_text(), playlist.read_text()
    # splitmuxsink holds back the current keyframe interval (1 s here): what reached the disk
    # is there, and the playlist says exactly that much.
    hls = api.get(eid)["outputs"][1]
    assert hls["count"] == 1 and abs(duration(probe(playlist)) - hls["duration"]) < 0.1, hls
    assert hls["duration"] >= 1.5, hls


def test_a_restart_reports_what_a_crash_interrupted_and_closes_its_playlist(fresh_egret):
    """After SIGKILL, the next egret lists every egress of the earlier run: the ones it was
    running are failed ("egret restarted"), their HLS playlist lists every segment on disk
    and ends; what ended before stays as it ended."""
    api = fresh_egret.api
    done = api.record("testsrc", 1, file_outputs=[{"filepath": "restart/done.mp4"}])
    running = api.start("testsrc", file_outputs=[{"filepath": "restart/r.mp4"}],
                        segment_outputs=[{"filename_prefix": "restart/hls/seg", "playlist_name": "p.m3u8",
                                          "segment_duration": 2}])
    eid = running["egress_id"]
    api.wait(eid, lambda i: i["outputs"][1]["count"] >= 2, what="two segments closed")
    fresh_egret.proc.kill()
    fresh_egret.proc.wait()
    playlist = fresh_egret.storage / "restart/hls/p.m3u8"
    assert "#EXT-X-ENDLIST" not in playlist.read_text()
    before = sorted(p.name for p in playlist.parent.glob("seg_*.ts"))

    fresh_egret.restart()
    info = api.get(eid)
    assert info["status"] == "failed" and info["reason"] == "egret restarted", info
    assert [o["status"] for o in info["outputs"]] == ["failed", "failed"], info
    assert info["outputs"][0]["bytes"] == (fresh_egret.storage / "restart/r.mp4").stat().st_size
    assert info["outputs"][0]["duration"] >= 2.5, info["outputs"][0]
    assert abs(duration(probe(fresh_egret.storage / "restart/r.mp4")) - info["outputs"][0]["duration"]) < 0.1
    assert info["ended_at"] >= info["started_at"] and info["duration"] >= 3.0, info
    listed = {e["egress_id"]: e for e in api.ok("GET", "/v1/egress")["egresses"]}
    assert listed[done["egress_id"]]["status"] == "complete" and listed[eid]["status"] == "failed"
    _, _, items = api.twirp("ListEgress", {"egressId": eid})
    assert items["items"][0]["status"] == "EGRESS_FAILED" and "egret restarted" in items["items"][0]["error"]
    status, reply = api.request("POST", f"/v1/egress/{eid}/stop")
    assert status == 409 and "already ended" in reply["error"], reply

    text = playlist.read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST"), text
    listed_segments = [line for line in text.splitlines() if line.endswith(".ts")]
    on_disk = sorted(p.name for p in playlist.parent.glob("seg_*.ts"))
    assert listed_segments == on_disk, (listed_segments, on_disk)
    # Only a segment opened as egret died, with no media in it yet, may have gone.
    assert before[: len(before) - 1] == on_disk[: len(before) - 1] and len(on_disk) >= len(before) - 1, (before, on_disk)
    assert info["outputs"][1]["count"] == len(on_disk)
    media = probe(playlist)
    assert abs(duration(media) - info["outputs"][1]["duration"]) < 0.5, (duration(media), info["outputs"][1])


def test_a_clean_restart_keeps_how_each_egress_ended(fresh_egret):
    """Egresses that ended (by themselves, or stopped) read back the same after a SIGTERM and a
    restart: a record saved while ending must not be taken for one a crash interrupted."""
    egret = fresh_egret
    ids = [egret.api.start("testsrc", duration=0.5 + i * 0.1, file_outputs=[{"filepath": f"clean/{i}.mp4"}])["egress_id"]
           for i in range(4)]
    stopped = egret.api.start("testsrc", file_outputs=[{"filepath": "clean/stopped.mp4"}])["egress_id"]
    egret.api.wait_status(stopped, "active")
    egret.api.stop(stopped)
    before = {eid: egret.api.wait_status(eid, "complete", "failed")["status"] for eid in ids + [stopped]}
    assert set(before.values()) == {"complete"}, before
    egret.proc.send_signal(signal.SIGTERM)
    assert egret.proc.wait(timeout=30) == 0
    egret.restart()
    after = {eid: (egret.api.get(eid)["status"], egret.api.get(eid)["reason"]) for eid in ids + [stopped]}
    assert all(status == "complete" for status, _ in after.values()), after
    assert after[stopped][1] == "stopped by API", after
