"""Every output kind, recorded from the test source over HTTP and checked with ffprobe."""

import re
import signal
import socket
import subprocess
import time

import pytest

from media import duration, fps, mean_volume_db, probe, probe_live, streams


def ran_for(info):
    """Seconds the egress was active, as egret reports it."""
    return info["ended_at"] - info["started_at"]


def assert_av(path, width, height, rate, profile="Main", audio_codec="aac", video_codec="h264"):
    info = probe(path)
    (v,) = streams(info, "video")
    (a,) = streams(info, "audio")
    assert v["codec_name"] == video_codec
    if video_codec == "h264":
        assert v["profile"] == profile
        assert v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (width, height)
    assert abs(fps(v) - rate) < 0.5, f"fps {fps(v)}"
    assert a["codec_name"] == audio_codec
    # LiveKit's rates: AAC at the configured frequency (default 44100 Hz), Opus at 48 kHz; stereo.
    assert (int(a["sample_rate"]), a["channels"]) == ({"aac": 44100}.get(audio_codec, 48000), 2), a
    assert mean_volume_db(path) > -40, "audio is silent"
    return info


def test_mp4_default_preset(egret):
    info = egret.api.record("testsrc", 3, file_outputs=[{"filepath": "mp4/{egress_id}"}])
    assert info["status"] == "complete" and info["reason"] == "stopped by API"
    (out,) = info["outputs"]
    path = egret.storage / out["target"]
    assert out["target"] == f"mp4/{info['egress_id']}.mp4"
    media = assert_av(path, 1280, 720, 30)
    assert abs(duration(media) - ran_for(info)) <= 0.5, (duration(media), ran_for(info))
    assert out["status"] == "complete" and out["bytes"] == path.stat().st_size
    # bitrate stays near the preset's 3000 kb/s (LiveKit's check: < 1.05 x target, plus audio)
    assert int(media["format"]["bit_rate"]) < (3000 + 128) * 1000 * 1.05 + 200_000


def test_advanced_options_and_profile(egret):
    advanced = {"width": 640, "height": 360, "framerate": 25, "video_codec": "H264_HIGH", "video_bitrate": 800,
                "audio_codec": "OPUS", "key_frame_interval": 1}
    info = egret.api.record("testsrc", 2, file_outputs=[{"filepath": "adv/a.mp4"}], advanced=advanced)
    assert_av(egret.storage / "adv/a.mp4", 640, 360, 25, profile="High", audio_codec="opus")
    assert info["status"] == "complete"


def test_portrait_preset_baseline(egret):
    info = egret.api.record("testsrc", 2, file_outputs=[{"filepath": "portrait/p.mp4"}], preset="PORTRAIT_H264_720P_30")
    assert_av(egret.storage / "portrait/p.mp4", 720, 1280, 30)
    assert info["status"] == "complete"


def test_ogg_audio_only(egret):
    info = egret.api.record("testsrc", 2, audio_only=True, file_outputs=[{"filepath": "ogg/a.ogg"}])
    media = probe(egret.storage / "ogg/a.ogg")
    assert [s["codec_name"] for s in media["streams"]] == ["opus"]
    assert abs(duration(media) - ran_for(info)) <= 0.5
    assert mean_volume_db(egret.storage / "ogg/a.ogg") > -40


def test_mp3_audio_only(egret):
    """LiveKit's MP3 file type (audio only): LAME, constant bitrate; by name or extension."""
    info = egret.api.record("testsrc", 2, audio_only=True, file_outputs=[{"file_type": "MP3", "filepath": "mp3/a"}],
                            advanced={"audio_bitrate": 96})
    path = egret.storage / "mp3/a.mp3"
    media = probe(path)
    assert [(s["codec_name"], int(s["sample_rate"])) for s in media["streams"]] == [("mp3", 44100)]
    assert abs(int(media["format"]["bit_rate"]) - 96000) < 8000, media["format"]
    assert abs(duration(media) - ran_for(info)) <= 0.5
    assert mean_volume_db(path) > -40
    assert info["outputs"][0]["target"] == "mp3/a.mp3"
    # The requested rate whatever the bitrate (LAME would pick 24 kHz for 64 kb/s stereo).
    egret.api.record("testsrc", 1, audio_only=True, file_outputs=[{"filepath": "mp3/b.mp3"}],
                     advanced={"audio_bitrate": 64, "audio_frequency": 48000})
    (stream,) = probe(egret.storage / "mp3/b.mp3")["streams"]
    assert (stream["codec_name"], int(stream["sample_rate"]), stream["channels"]) == ("mp3", 48000, 2), stream

    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
        "file_outputs": [{"filepath": "mp3/v.mp3"}]}})
    assert status in (400, 422) and "audio only" in reply["error"], reply
    # A browser source with a picture is refused by field before any browser starts (OGG
    # too: LiveKit finds no codec for all outputs).
    for output in [{"filepath": "mp3/w.mp3"}, {"file_type": "MP3", "filepath": "mp3/w"},
                   {"filepath": "mp3/w.ogg"}, {"file_type": "OGG", "filepath": "mp3/w"}]:
        status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "web", "params": {
            "url": "http://127.0.0.1:9/", "file_outputs": [output]}})
        assert status in (400, 422) and reply["field"] == "params.file_outputs[0].file_type", reply
        assert "holds audio only" in reply["error"], reply


def test_webm_vp8_opus(egret):
    info = egret.api.record("testsrc", 2, file_outputs=[{"file_type": "WEBM", "filepath": "webm/w"}])
    path = egret.storage / "webm/w.webm"
    assert_av(path, 1280, 720, 30, audio_codec="opus", video_codec="vp8")
    assert abs(duration(probe(path)) - ran_for(info)) <= 0.5


def test_hls_live_then_ended(egret):
    started = egret.api.start("testsrc", segment_outputs=[{
        "filename_prefix": "hls/seg", "playlist_name": "hls/index.m3u8", "live_playlist_name": "live.m3u8",
        "segment_duration": 2}])
    eid = started["egress_id"]
    playlist = egret.storage / "hls/index.m3u8"
    # While live: an EVENT playlist without ENDLIST, once the first segment closed.
    egret.api.wait(eid, lambda i: i["outputs"][0]["count"] >= 2, what="two segments")
    live = playlist.read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in live and "#EXT-X-ENDLIST" not in live
    time.sleep(2.5)
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    text = playlist.read_text()
    assert text.startswith("#EXTM3U") and text.rstrip().endswith("#EXT-X-ENDLIST")
    segments = re.findall(r"^seg_\d{5}\.ts$", text, re.M)
    extinf = [float(x) for x in re.findall(r"#EXTINF:([\d.]+),", text)]
    assert len(segments) == info["outputs"][0]["count"] == len(extinf)
    assert abs(len(segments) - ran_for(info) / 2) <= 1.01, (segments, ran_for(info))
    assert max(extinf) <= 2.5
    for name in segments:
        assert (egret.storage / "hls" / name).stat().st_size > 0
    media = probe(playlist)
    assert abs(duration(media) - ran_for(info)) <= 0.5
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}
    assert (egret.storage / "hls/live.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_images_every_interval(egret):
    info = egret.api.record("testsrc", 4, image_outputs=[{"capture_interval": 1, "width": 320, "height": 180,
                                                         "filename_prefix": "img/snap"}])
    images = sorted((egret.storage / "img").glob("snap_*.jpeg"))
    assert len(images) == info["outputs"][0]["count"]
    assert abs(len(images) - ran_for(info)) <= 1.5, (len(images), ran_for(info))
    (v,) = streams(probe(images[0]), "video")
    assert (v["codec_name"], v["width"], v["height"]) == ("mjpeg", 320, 180)


def test_rtmp_read_back_from_nginx(egret, nginx):
    url = nginx.url("single")
    started = egret.api.start("testsrc", stream_outputs=[{"urls": [url]}])
    eid = started["egress_id"]
    egret.api.wait(eid, lambda i: i["outputs"][0]["status"] == "active", what="stream active")
    media = probe_live(url)
    v = streams(media, "video")[0]
    assert (v["codec_name"], v["width"], v["height"]) == ("h264", 1280, 720)
    assert streams(media, "audio")[0]["codec_name"] == "aac"
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    assert info["outputs"][0]["status"] == "complete" and info["outputs"][0]["bytes"] > 10_000


def srt_listener(port, received):
    """ffmpeg listening for SRT (an independent implementation), up once its UDP socket is."""
    listener = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", f"srt://127.0.0.1:{port}?mode=listener",
                                 "-c", "copy", "-f", "mpegts", str(received)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while f":{port:04X}" not in open("/proc/net/udp").read():
        assert time.monotonic() < deadline and listener.poll() is None, "ffmpeg did not listen"
        time.sleep(0.05)
    return listener


def test_srt_read_back_by_a_listener(egret, tmp_path):
    """LiveKit's SRT protocol: MPEG-TS over SRT in caller mode, read back by ffmpeg listening
    (an independent SRT implementation); the URL is reported as given."""
    from conftest import free_port

    port = free_port()
    url = f"srt://127.0.0.1:{port}"
    received = tmp_path / "srt.ts"
    listener = srt_listener(port, received)  # up before egret calls
    try:
        started = egret.api.start("testsrc", stream_outputs=[{"protocol": "SRT", "urls": [url]}])
        eid = started["egress_id"]
        egret.api.wait(eid, lambda i: i["outputs"][0]["duration"] >= 3, what="3 s streamed")
        egret.api.stop(eid)
        info = egret.api.wait_status(eid, "complete")
        listener.wait(timeout=30)
    finally:
        listener.kill()
    assert info["outputs"][0]["status"] == "complete" and info["outputs"][0]["target"] == url, info
    media = probe(received)
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}
    assert duration(media) >= 2.5, media["format"]
    _, _, items = egret.api.twirp("ListEgress", {"egressId": eid})
    assert items["items"][0]["streamResults"][0]["url"] == url

    status, reply = egret.api.request("POST", "/v1/egress", {"recipe": "testsrc", "params": {
        "stream_outputs": [{"protocol": "SRT", "urls": ["rtmp://127.0.0.1/live/x"]}]}})
    assert status == 400 and reply["field"].endswith("stream_outputs[0].urls[0]"), reply


@pytest.mark.parametrize("beside_a_file", [True, False])
def test_srt_listener_gone_is_reported_and_reconnected(egret, tmp_path, beside_a_file):
    """An SRT peer that goes away mid-stream (ffmpeg stopped cleanly) is an outage the egress
    reports (retries, the error) and reconnects when the peer is back, as for RTMP, also when
    the stream is the egress's only output; a file beside it goes on."""
    from conftest import free_port

    port = free_port()
    url = f"srt://127.0.0.1:{port}"
    first = srt_listener(port, tmp_path / "first.ts")
    second = None
    files = [{"filepath": "srt-restart/{egress_id}.mp4"}] if beside_a_file else []
    try:
        eid = egret.api.start("testsrc", stream_outputs=[{"protocol": "SRT", "urls": [url]}],
                              file_outputs=files)["egress_id"]
        stream = lambda i: next(o for o in i["outputs"] if o["kind"] == "stream")  # noqa: E731
        egret.api.wait(eid, lambda i: stream(i)["duration"] >= 2, what="2 s streamed")
        first.send_signal(signal.SIGINT)
        first.wait(timeout=10)
        down = egret.api.wait(eid, lambda i: stream(i)["retries"] >= 1, what="the outage seen", timeout=30)
        assert down["status"] == "active" and stream(down)["status"] == "active", down
        assert "reconnecting" in stream(down)["error"], down
        second = srt_listener(port, tmp_path / "second.ts")
        back = egret.api.wait(eid, lambda i: stream(i)["error"] is None, what="stream live again", timeout=40)
        assert back["status"] == "active"
        bytes_back = stream(back)["bytes"]
        egret.api.wait(eid, lambda i: stream(i)["bytes"] > bytes_back + 100_000, what="bytes after the reconnect")
        egret.api.stop(eid)
        info = egret.api.wait_status(eid, "complete")
        second.wait(timeout=30)
    finally:
        for p in (first, second):
            if p:
                p.kill()
    assert info["reason"] == "stopped by API", info
    assert stream(info)["status"] == "complete" and stream(info)["retries"] >= 1, info
    assert {s["codec_name"] for s in probe(tmp_path / "second.ts")["streams"]} == {"h264", "aac"}
    if beside_a_file:
        media = probe(egret.storage / f"srt-restart/{eid}.mp4")
        assert abs(duration(media) - ran_for(info)) <= 0.5, "the file went on throughout"


def test_rtmp_server_restart_reconnects(egret, tmp_path):
    """An RTMP server that goes away and comes back: the stream reconnects with backoff, its
    retries are reported (egret's JSON and LiveKit's StreamInfo), the egress stays active and
    the file beside it goes on."""
    from conftest import Nginx

    server = Nginx(tmp_path)
    url = server.url("comeback")
    started = egret.api.start("testsrc", stream_outputs=[{"urls": [url]}],
                              file_outputs=[{"filepath": "rtmp-restart/f.mp4"}])
    eid = started["egress_id"]
    stream = lambda i: next(o for o in i["outputs"] if o["kind"] == "stream")  # noqa: E731
    egret.api.wait(eid, lambda i: stream(i)["status"] == "active" and stream(i)["bytes"] > 0, what="stream live")
    assert probe_live(url)["streams"]
    server.stop()
    down = egret.api.wait(eid, lambda i: stream(i)["retries"] >= 1, what="a reconnection try")
    assert down["status"] == "active" and stream(down)["status"] == "active", down
    assert "reconnecting" in stream(down)["error"], down
    server = Nginx(tmp_path, port=server.port)
    try:
        media = probe_live(url)
        assert {s["codec_type"] for s in media["streams"]} == {"video", "audio"}
        back = egret.api.wait(eid, lambda i: stream(i)["error"] is None, what="stream live again")
        assert back["status"] == "active" and stream(back)["retries"] >= 1
        _, _, listed = egret.api.twirp("ListEgress", {"egressId": eid})
        (result,) = listed["items"][0]["streamResults"]
        assert result.get("status", "ACTIVE") == "ACTIVE" and int(result["retries"]) >= 1 and int(result["lastRetryAt"]) > 0, result
        egret.api.stop(eid)
        info = egret.api.wait_status(eid, "complete")
    finally:
        server.stop()
    assert stream(info)["status"] == "complete", info
    assert len(info["outputs"]) == 2, "one status per URL however often it reconnected"
    media = probe(egret.storage / "rtmp-restart/f.mp4")
    assert abs(duration(media) - ran_for(info)) <= 0.5, "the file went on throughout"


def test_several_outputs_and_a_bad_rtmp_url(egret, nginx):
    good, bad = nginx.url("multi"), "rtmp://127.0.0.1:9/live/refused"
    log_start = len(egret.log_text())
    started = egret.api.start(
        "testsrc",
        file_outputs=[{"filepath": "multi/f.mp4"}],
        segment_outputs=[{"filename_prefix": "multi/hls/s", "playlist_name": "multi/hls/p.m3u8", "segment_duration": 2}],
        stream_outputs=[{"urls": [good, bad]}],
        image_outputs=[{"capture_interval": 2, "filename_prefix": "multi/img"}],
    )
    eid = started["egress_id"]
    by_field = lambda i: {o["field"]: o for o in i["outputs"]}  # noqa: E731
    info = egret.api.wait(eid, lambda i: i["status"] == "active"
                          and by_field(i)["stream_outputs[0].urls[1]"]["status"] == "failed",
                          what="egress active and bad URL failed")
    assert "stream_outputs[0].urls[1]" in by_field(info)
    assert by_field(info)["stream_outputs[0].urls[1]"]["error"]
    assert probe_live(good)["streams"], "good URL still streams"
    time.sleep(2)
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    outs = by_field(info)
    assert outs["stream_outputs[0].urls[1]"]["status"] == "failed"
    for field in ["file_outputs[0]", "segment_outputs[0]", "stream_outputs[0].urls[0]", "image_outputs[0]"]:
        assert outs[field]["status"] == "complete", outs[field]
    media = assert_av(egret.storage / "multi/f.mp4", 1280, 720, 30)
    assert abs(duration(media) - ran_for(info)) <= 0.5
    assert (egret.storage / "multi/hls/p.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
    assert len(list((egret.storage / "multi").glob("img_*.jpeg"))) >= 2
    # The refused branch is stopped before it is let go: finalized while PLAYING, its queue's
    # thread ran on freed pads, and egret aborted at a later egress's end.
    assert "Trying to dispose" not in egret.log_text()[log_start:], "an element was finalized while playing"


def test_recipe_duration_stops_by_itself(egret):
    started = egret.api.start("testsrc", duration=2, file_outputs=[{"filepath": "dur/d.mp4"}])
    info = egret.api.wait_status(started["egress_id"], "complete")
    assert info["reason"] == "duration reached"
    assert abs(duration(probe(egret.storage / "dur/d.mp4")) - 2.0) <= 0.5


@pytest.mark.parametrize("audio_codec", ["AAC", "OPUS"])
def test_av_sync_offset(egret, audio_codec):
    """AAC's 1024 priming samples and mp4mux's Opus header (written little-endian by
    GStreamer 1.22: ffmpeg then skipped 0.7 s of sound) are accounted for. Measured: AAC
    -9..+11 ms; Opus -32..-36 ms, an open defect (the same encoders and muxer fed by plain
    gst-launch test sources place both exactly, so it is in egret's test-source path)."""
    from media import av_offset

    path = f"sync/s-{audio_codec}.mp4"
    info = egret.api.record("testsrc", 4, av_sync=True, file_outputs=[{"filepath": path}],
                            advanced={"audio_codec": audio_codec})
    assert streams(probe(egret.storage / path), "audio")[0]["codec_name"] == audio_codec.lower()
    offset, pairs = av_offset(egret.storage / path)
    print(f"{audio_codec}: A/V offset {offset * 1000:.1f} ms over {pairs} flash/beep pairs")
    assert abs(offset) <= 0.045 and pairs >= 3, f"A/V offset {offset * 1000:.1f} ms"
    assert info["status"] == "complete"


@pytest.mark.parametrize("how", ["nobody listens", "port taken"])
def test_srt_url_that_cannot_connect_fails_alone(egret, how):
    """An SRT URL that never connects fails (as an RTMP one does) rather than retrying for
    ever (srtsink takes bytes before its handshake, so bytes alone do not mean it connected),
    and one that cannot even open (a listener port in use) fails alone at the start."""
    from conftest import free_port

    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("0.0.0.0", 0))
    url = {"nobody listens": f"srt://127.0.0.1:{free_port()}",
           "port taken": f"srt://:{taken.getsockname()[1]}?mode=listener"}[how]
    try:
        eid = egret.api.start("testsrc", file_outputs=[{"filepath": "srt/alone-{egress_id}.mp4"}],
                              stream_outputs=[{"protocol": "SRT", "urls": [url]}])["egress_id"]
        info = egret.api.wait(eid, lambda i: {o["kind"]: o["status"] for o in i["outputs"]}.get("stream") == "failed",
                              what="the SRT URL failed", timeout=20)
    finally:
        taken.close()
    (stream,) = [o for o in info["outputs"] if o["kind"] == "stream"]
    assert info["status"] in ("starting", "active") and stream["error"] and stream["retries"] == 0, repr(info)
    file_duration = lambda i: next(o for o in i["outputs"] if o["kind"] == "file")["duration"]  # noqa: E731
    egret.api.wait(eid, lambda i: i["status"] == "active" and file_duration(i) >= 1.5, what="the file recording")
    egret.api.stop(eid)
    info = egret.api.wait_status(eid, "complete")
    assert duration(probe(egret.storage / f"srt/alone-{eid}.mp4")) >= 1.5, "the file records on"
