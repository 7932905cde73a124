"""How egresses end, as LiveKit's clients see it (LiveKit's Python client over egret's Twirp API,
against a real livekit-server and real WebRTC publishers): track unpublished or publisher
gone, participant gone for good or never there, last stream removed; and EgressInfo as LiveKit
fills it (details "End reason: ...", the legacy single result, room_id, the request echoed
with its secrets and stream keys redacted)."""

import asyncio
import time

import pytest
from livekit import api

from conftest import API_KEY, API_SECRET
from livekit_harness import SMALL, recorded, redacted
from media import duration, probe


def lk_call(egret, body):
    async def run():
        async with api.LiveKitAPI(f"http://127.0.0.1:{egret.port}", API_KEY, API_SECRET) as lk:
            return await body(lk)

    return asyncio.run(run())


def info_of(egret, egress_id):
    async def body(lk):
        (info,) = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items
        return info

    return lk_call(egret, body)


def wait_info(egret, egress_id, predicate, timeout=45.0):
    deadline = time.monotonic() + timeout
    while True:
        info = info_of(egret, egress_id)
        if predicate(info):
            return info
        assert time.monotonic() < deadline, f"not reached: {info}"
        time.sleep(0.2)


ENDED = (api.EGRESS_COMPLETE, api.EGRESS_FAILED, api.EGRESS_ABORTED, api.EGRESS_LIMIT_REACHED)


@pytest.mark.parametrize("kind, how", [("video", "unpublish"), ("audio", "unpublish"), ("video", "leave")])
def test_track_egress_completes_when_its_track_goes(lk_egret, publish, room, kind, how):
    pub = publish("--codec", "vp8")
    request = api.TrackEgressRequest(room_name=room, track_id=pub.tracks[kind],
                                     file=api.DirectFileOutput(filepath="conf/track-{track_id}"))
    info = lk_call(lk_egret, lambda lk: lk.egress.start_track_egress(request))
    eid = info.egress_id
    wait_info(lk_egret, eid, lambda i: i.status == api.EGRESS_ACTIVE)
    time.sleep(2)  # media time
    if how == "unpublish":
        pub.command(f"unpublish {kind}")
    else:
        pub.leave()
    final = wait_info(lk_egret, eid, lambda i: i.status in ENDED)
    assert final.status == api.EGRESS_COMPLETE, final
    assert final.details == "End reason: Source closed" and final.error == "", final
    # A track egress always fills the legacy single result, and echoes its request as sent.
    assert final.WhichOneof("result") == "file" and final.file.size > 0, final
    assert final.WhichOneof("request") == "track" and final.track.file.filepath == "conf/track-{track_id}", final
    assert final.room_id.startswith("RM_"), final
    media = probe(final.file.location)
    assert duration(media) > 1.5


def test_participant_egress_fails_when_the_participant_never_comes(lk_egret, room, publish):
    publish(identity="someone-else")
    request = api.ParticipantEgressRequest(room_name=room, identity="nobody",
                                           file_outputs=[api.EncodedFileOutput(filepath="conf/nobody.mp4")])
    started = time.monotonic()
    info = lk_call(lk_egret, lambda lk: lk.egress.start_participant_egress(request))
    assert info.status == api.EGRESS_STARTING, info
    assert time.monotonic() - started < 5, "the start is answered while it waits"
    final = wait_info(lk_egret, info.egress_id, lambda i: i.status in ENDED, timeout=60)
    assert final.status == api.EGRESS_FAILED, final
    assert final.error == "participant nobody not found" and final.error_code == 404, final
    assert final.details == "End reason: Failure", final
    assert 25 <= (time.monotonic() - started) <= 50


def test_participant_egress_completes_when_the_participant_leaves_for_good(lk_egret, room, publish):
    pub = publish(identity="dave")
    info = lk_egret.api.start("participant", room_name=room, identity="dave", rejoin_grace=1,
                              file_outputs=[{"filepath": "conf/dave.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    time.sleep(2)  # media time
    pub.leave()
    final = lk_egret.api.wait_status(eid, "complete", "failed", "aborted", timeout=30)
    assert final["status"] == "complete" and final["reason"] == "participant left", final
    lk_info = info_of(lk_egret, eid)
    assert lk_info.details == "End reason: Source closed", lk_info
    path, media = recorded(lk_egret, final)
    assert duration(media) > 1.5


def test_egress_info_reads_as_livekit_fills_it(lk_egret, room, publish, nginx):
    """Stop by API, the request echoed with secrets and stream keys redacted, per-URL stream
    times, the live playlist, and no legacy result when outputs of two kinds are asked."""
    pub = publish()
    stream = nginx.url("conf-key-0123456789")
    request = api.TrackCompositeEgressRequest(
        room_name=room, audio_track_id=pub.tracks["audio"], video_track_id=pub.tracks["video"],
        stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.RTMP, urls=[stream])],
        segment_outputs=[api.SegmentedFileOutput(filename_prefix="conf/hls/seg", playlist_name="index.m3u8",
                                                 live_playlist_name="live.m3u8", segment_duration=2)],
    )
    info = lk_call(lk_egret, lambda lk: lk.egress.start_track_composite_egress(request))
    eid = info.egress_id
    active = wait_info(lk_egret, eid, lambda i: i.status == api.EGRESS_ACTIVE and i.stream_results
                       and i.stream_results[0].started_at > 0)
    assert active.WhichOneof("result") is None, "two kinds of output: no legacy result"
    echoed = active.track_composite.stream_outputs[0].urls[0]
    assert echoed.endswith("/{con...789}") and "conf-key-0123456789" not in echoed, echoed
    time.sleep(3)
    lk_call(lk_egret, lambda lk: lk.egress.stop_egress(api.StopEgressRequest(egress_id=eid)))
    final = wait_info(lk_egret, eid, lambda i: i.status in ENDED)
    assert final.status == api.EGRESS_COMPLETE and final.details == "End reason: StopEgress API", final
    (segments,) = final.segment_results
    # A playlist without a folder goes beside the segments (LiveKit's naming rule).
    assert segments.playlist_name == "conf/hls/index.m3u8", segments
    assert segments.live_playlist_name == "conf/hls/live.m3u8", segments
    assert (lk_egret.storage / "conf/hls/live.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
    (result,) = final.stream_results
    assert result.url == redacted(stream), "stream results show the key redacted, as LiveKit does"
    assert result.started_at >= final.started_at - 1e9 and result.ended_at >= result.started_at, result
    assert result.duration > 1e9, result


@pytest.mark.parametrize("outputs", [
    {"segment_outputs": [{"filename_prefix": "conf/rc-hls/s", "playlist_name": "conf/rc-hls/p.m3u8", "segment_duration": 2}]},
    {"image_outputs": [{"capture_interval": 1, "filename_prefix": "conf/rc-img/i"}],
     "file_outputs": [{"filepath": "conf/rc-img/f.mp4"}]},
])
def test_room_composite_to_segments_and_images_starts(lk_egret, room, publish, outputs):
    publish(identity="eve")
    info = lk_egret.api.start("room_composite", room_name=room, layout="grid", **SMALL, **outputs)
    eid = info["egress_id"]
    lk_egret.api.wait(eid, lambda i: i["outputs"] and all(o["status"] == "active" for o in i["outputs"]), timeout=45,
                      what="every output active")
    time.sleep(3)  # media time
    lk_egret.api.stop(eid)
    final = lk_egret.api.wait_status(eid, "complete", "failed", "aborted")
    assert final["status"] == "complete", final
    for output in final["outputs"]:
        assert output["bytes"] > 0 and output["status"] == "complete", output


MISSING_ROOM_REQUESTS = {
    "room_composite": lambda lk, room: lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
        room_name=room, layout="grid", file_outputs=[api.EncodedFileOutput(filepath="conf/missing.mp4")])),
    "participant": lambda lk, room: lk.egress.start_participant_egress(api.ParticipantEgressRequest(
        room_name=room, identity="x", file_outputs=[api.EncodedFileOutput(filepath="conf/missing.mp4")])),
    "track_composite": lambda lk, room: lk.egress.start_track_composite_egress(api.TrackCompositeEgressRequest(
        room_name=room, audio_track_id="TR_a", file_outputs=[api.EncodedFileOutput(filepath="conf/missing.ogg")])),
    "track": lambda lk, room: lk.egress.start_track_egress(api.TrackEgressRequest(
        room_name=room, track_id="TR_a", file=api.DirectFileOutput(filepath="conf/missing"))),
}


@pytest.mark.parametrize("kind", sorted(MISSING_ROOM_REQUESTS))
def test_egress_for_a_room_that_does_not_exist_is_not_found(lk_egret, livekit, room, kind):
    """LiveKit refuses it at once (NotFound "requested room does not exist"); joining would
    have created the room and recorded it empty."""
    async def start(lk):
        with pytest.raises(api.TwirpError) as failure:
            await MISSING_ROOM_REQUESTS[kind](lk, room)
        return failure.value

    error = lk_call(lk_egret, start)
    assert (error.code, error.status, error.message) == ("not_found", 404, "requested room does not exist"), error
    rooms = livekit.room_service(lambda rooms: rooms.list_rooms(api.ListRoomsRequest(names=[room])))
    assert not rooms.rooms, "the room was not created"
    listed = lk_call(lk_egret, lambda lk: lk.egress.list_egress(api.ListEgressRequest(room_name=room))).items
    assert not listed, "a refused start leaves no egress behind"


def wait_published(livekit, room, sid, timeout=15.0):
    """Until the server lists the track (its first packets reached it)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = livekit.room_service(lambda rooms: rooms.list_participants(api.ListParticipantsRequest(room=room)))
        if any(t.sid == sid for p in answer.participants for t in p.tracks):
            return
        assert time.monotonic() < deadline, f"track {sid} not listed"
        time.sleep(0.1)


def test_an_egress_that_never_gets_media_fails_naming_what_it_waited_for(tmp_path, livekit, publish, room):
    """The start bound ([server] start_timeout): a publisher frozen right after publishing leaves
    its track in the room with no media; the egress does not stay starting for ever but fails in
    bounded time, naming what it waited for."""
    import signal

    from conftest import EgretProcess

    egret = EgretProcess(tmp_path, livekit.config_toml(), server="start_timeout = 2")
    pub = publish("--codec", "vp8")
    wait_published(livekit, room, pub.tracks["video"])
    pub.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        info = egret.api.start("track", room_name=room, track_id=pub.tracks["video"],
                               file_outputs=[{"filepath": "conf/frozen"}])
        final = egret.api.wait_status(info["egress_id"], "failed", "complete", "aborted", timeout=40)
        took = time.monotonic() - started
    finally:
        pub.proc.send_signal(signal.SIGCONT)
        egret.stop()
    summary = {k: final[k] for k in ("status", "reason", "error")}
    assert final["status"] == "failed", summary
    assert final["reason"].startswith("not active after") and "file_outputs[0]" in final["reason"], summary
    assert took < 20, f"failed after {took:.1f} s"
