"""Worker mode: egret as livekit-server's egress worker over psrpc on the server's Redis. Every
request goes to livekit-server through LiveKit's own Python client, never to egret."""

import signal
import time

import pytest
from livekit import api

from conftest import EgretProcess
from livekit_harness import redacted
from media import duration, frame_rgb, near, probe, probe_live, region_color, streams


@pytest.fixture
def workers(tmp_path, livekit):
    """Starts egret workers joined to the tests' livekit-server; stops them at the end."""
    started = []

    def start(name, extra=""):
        (tmp_path / name).mkdir()
        worker = EgretProcess(tmp_path / name, livekit.worker_config(extra))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.stop()


def assert_plays(result, codecs=("h264", "aac")):
    """A file result livekit-server reports: the file is there and holds the expected media."""
    media = probe(result.location)
    assert sorted(st["codec_name"] for st in media["streams"]) == sorted(codecs), media
    assert duration(media) > 1, media["format"]


def holder(egress_id, *candidates):
    """The worker whose own API lists the egress."""
    owners = [w for w in candidates if any(e["egress_id"] == egress_id for e in w.api.ok("GET", "/v1/egress")["egresses"])]
    assert len(owners) == 1, f"{egress_id} is on {len(owners)} workers"
    return owners[0]


def test_livekit_server_dispatches_web_and_participant_egress(livekit, workers, pages, publish, room, nginx):
    # About dispatch, not admission: room for both egresses even while Chrome starts (its
    # measured CPU and its 15 s reservation both count on a 2-core machine).
    worker = workers("w", "[worker]\ncpus = 4\n")
    publish("--codec", "h264", identity="pat")
    a, b = nginx.url("worker-a"), nginx.url("worker-b")
    web = livekit.call(lambda lk: lk.egress.start_web_egress(api.WebEgressRequest(
        url=pages.url("animated.html?tone=440"), file_outputs=[api.EncodedFileOutput(filepath="wk/web.mp4")],
        stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.RTMP, urls=[a])])))
    participant = livekit.call(lambda lk: lk.egress.start_participant_egress(api.ParticipantEgressRequest(
        room_name=room, identity="pat", file_outputs=[api.EncodedFileOutput(filepath="wk/participant.mp4")])))
    assert web.status == participant.status == api.EgressStatus.EGRESS_STARTING
    for info in (web, participant):
        livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=45)
    # Both views: egret's own API lists what livekit-server dispatched, under the same ids.
    mine = {e["egress_id"]: e["recipe"] for e in worker.api.ok("GET", "/v1/egress")["egresses"]}
    assert mine == {web.egress_id: "web", participant.egress_id: "participant"}

    # UpdateStream through livekit-server reaches the worker running the egress.
    updated = livekit.call(lambda lk: lk.egress.update_stream(api.UpdateStreamRequest(
        egress_id=web.egress_id, add_output_urls=[b], remove_output_urls=[a])))
    assert {s.url: s.status for s in updated.stream_results} == {
        redacted(a): api.StreamInfo.Status.FINISHED, redacted(b): api.StreamInfo.Status.ACTIVE}, updated.stream_results
    assert streams(probe_live(b), "video"), "the added stream plays"
    # The server's own view follows (LiveKit sends an update after every UpdateStream).
    deadline = time.monotonic() + 10
    while {s.url: s.status for s in livekit.egress_status(web.egress_id).stream_results} != {
            redacted(a): api.StreamInfo.Status.FINISHED, redacted(b): api.StreamInfo.Status.ACTIVE}:
        assert time.monotonic() < deadline, livekit.egress_status(web.egress_id).stream_results
        time.sleep(0.2)

    for info in (web, participant):
        livekit.call(lambda lk, i=info: lk.egress.stop_egress(api.StopEgressRequest(egress_id=i.egress_id)))
    for info, name in ((web, "wk/web.mp4"), (participant, "wk/participant.mp4")):
        done = livekit.wait_egress(info.egress_id, "EGRESS_COMPLETE", "EGRESS_FAILED")
        assert done.status == api.EgressStatus.EGRESS_COMPLETE, done
        (result,) = done.file_results
        assert result.filename == name and result.size > 0, done
        assert_plays(result)


def test_two_workers_share_requests_by_admission(livekit, workers, pages, nginx):
    # Each worker may fill 0.8 of one CPU and a web egress costs 0.5 of one: one each.
    small = "[worker]\ncpus = 1\n[worker.costs]\nweb = 0.5\n"
    first, second = workers("w1", small), workers("w2", small)

    def start_web(i, streams=()):
        return livekit.call(lambda lk: lk.egress.start_web_egress(api.WebEgressRequest(
            url=pages.url("animated.html"), file_outputs=[api.EncodedFileOutput(filepath=f"share/{i}.mp4")],
            stream_outputs=[api.StreamOutput(urls=list(streams))] if streams else [])))

    # The second streams too, so UpdateStream has a stream output to add to (as LiveKit,
    # egret refuses UpdateStream on an egress that does not stream).
    one, two = start_web(1), start_web(2, streams=[nginx.url("shared-first")])
    assert {holder(one.egress_id, first, second), holder(two.egress_id, first, second)} == {first, second}
    # Both are saturated: nobody claims a third.
    with pytest.raises(api.TwirpError) as refused:
        start_web(3)
    assert refused.value.code in ("unavailable", "deadline_exceeded", "internal"), refused.value
    for info in (one, two):
        livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=45)
    # An UpdateStream through livekit-server reaches the worker holding that egress, only it.
    url = nginx.url("shared-two")
    livekit.call(lambda lk: lk.egress.update_stream(api.UpdateStreamRequest(egress_id=two.egress_id,
                                                                            add_output_urls=[url])))
    owner = holder(two.egress_id, first, second)
    (shown,) = [e for e in owner.api.ok("GET", "/v1/egress")["egresses"] if e["egress_id"] == two.egress_id]
    assert url in [o.get("target") for o in shown["outputs"]], shown["outputs"]
    for info in (one, two):
        livekit.call(lambda lk, i=info: lk.egress.stop_egress(api.StopEgressRequest(egress_id=i.egress_id)))
        assert_plays(livekit.wait_egress(info.egress_id, "EGRESS_COMPLETE").file_results[0])


def test_killed_worker_leaves_a_failed_egress_not_an_active_one(livekit, workers, publish, room):
    survivor, doomed = workers("alive"), workers("doomed")
    pub = publish("--no-video")
    # Admission favours the emptier worker: load the survivor so the doomed one takes it.
    survivor.api.start("testsrc", file_outputs=[{"filepath": "busy.mp4"}])
    info = livekit.call(lambda lk: lk.egress.start_track_egress(api.TrackEgressRequest(
        room_name=room, track_id=pub.tracks["audio"], file=api.DirectFileOutput(filepath="killed/a.ogg"))))
    livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE")
    assert holder(info.egress_id, survivor, doomed) is doomed
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait()
    # The survivor's reaper sees the dead worker's heartbeat expire and reports the egress.
    failed = livekit.wait_egress(info.egress_id, "EGRESS_FAILED", timeout=30)
    assert "stopped" in failed.error and failed.ended_at > 0, failed


def test_egret_api_egress_shows_in_livekit_server_and_drains_complete(livekit, workers):
    worker = workers("w")
    started = worker.api.start("testsrc", file_outputs=[{"filepath": "api/t.mp4"}])
    eid = started["egress_id"]
    info = livekit.wait_egress(eid, "EGRESS_ACTIVE")
    assert info.egress_id == eid
    time.sleep(2)  # media time
    # SIGTERM: the worker stops claiming, finalizes the egress and reports it before exiting.
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    done = livekit.wait_egress(eid, "EGRESS_COMPLETE", "EGRESS_FAILED")
    assert done.status == api.EgressStatus.EGRESS_COMPLETE, done
    assert_plays(done.file_results[0])


def test_room_composite_layout_follows_livekit_servers_update_layout(livekit, workers, publish, room):
    """LiveKit's own UpdateLayout (it sets the recorder participant's metadata) reaches the page."""
    workers("w")
    for colour, name in (("230,30,30", "red"), ("30,30,230", "blue")):
        publish("--no-audio", "--color", colour, "--width", "320", "--height", "180", identity=name)
    info = livekit.call(lambda lk: lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
        room_name=room, layout="grid", video_only=True,
        advanced=api.EncodingOptions(width=640, height=360, framerate=30),
        file_outputs=[api.EncodedFileOutput(filepath="wk/rc.mp4")])))
    livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=45)
    time.sleep(2)  # media time in the grid
    livekit.call(lambda lk: lk.egress.update_layout(api.UpdateLayoutRequest(egress_id=info.egress_id,
                                                                            layout="single-speaker")))
    time.sleep(2)  # media time in single-speaker
    livekit.call(lambda lk: lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id)))
    done = livekit.wait_egress(info.egress_id, "EGRESS_COMPLETE", "EGRESS_FAILED")
    assert_plays(done.file_results[0], codecs=("h264",))
    path = done.file_results[0].location
    # Grid: red left, blue right. Single speaker: the first tile (red) fills the frame.
    assert near(region_color(frame_rgb(path, 1.0), 0.6, 0.2, 0.9, 0.8), (30, 30, 230))
    end = duration(probe(path)) - 0.5
    assert near(region_color(frame_rgb(path, end), 0.6, 0.2, 0.9, 0.8), (230, 30, 30))


def test_worker_serves_again_after_a_redis_restart(tmp_path, pages):
    from conftest import free_port, wait_for_port
    from livekit_harness import LiveKitServer

    (tmp_path / "lk").mkdir()
    (tmp_path / "w").mkdir()
    server = LiveKitServer(tmp_path / "lk", free_port, wait_for_port)
    worker = EgretProcess(tmp_path / "w", server.worker_config())
    try:
        server.restart_redis()
        # livekit-server and the worker both reconnect on their own; dispatch works again.
        deadline = time.monotonic() + 60
        while True:
            try:
                info = server.call(lambda lk: lk.egress.start_web_egress(api.WebEgressRequest(
                    url=pages.url("animated.html"), file_outputs=[api.EncodedFileOutput(filepath="redis/after.mp4")])))
                break
            except api.TwirpError:
                assert time.monotonic() < deadline, "no worker took the request after the Redis restart"
        server.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=45)
        time.sleep(2)  # media time
        server.call(lambda lk: lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id)))
        assert_plays(server.wait_egress(info.egress_id, "EGRESS_COMPLETE").file_results[0])
        assert "redis subscription restored" in worker.log_text()
    finally:
        worker.stop()
        server.stop()


def test_a_request_the_recipe_refuses_is_an_error_through_the_server(livekit, workers, publish, room):
    """A bad layout reaches the worker's recipe: the caller gets invalid_argument and no egress
    is left in the server's list (LiveKit validates before it answers)."""
    workers("w")
    publish(identity="lay")
    with pytest.raises(api.TwirpError) as failure:
        livekit.call(lambda lk: lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=room, layout="nosuchlayout", file_outputs=[api.EncodedFileOutput(filepath="wk/bad.mp4")])))
    assert failure.value.code == "invalid_argument" and "unknown layout" in failure.value.message, failure.value
    listed = livekit.call(lambda lk: lk.egress.list_egress(api.ListEgressRequest(room_name=room))).items
    assert not listed, listed
