"""Room, track, track composite and participant egress against a real livekit-server, with
real WebRTC publishers (PyPI `livekit`) sending synthetic video and audio."""

import asyncio
import time

import numpy as np
import pytest
from livekit import api

from conftest import API_KEY, API_SECRET
from egret_client import ApiError
from livekit_harness import SMALL, PcmReceiver, recorded
from media import av_offset, duration, fps, frame_times, frames_differ, mean_volume_db, onsets, probe, probe_live, streams, video_luma

RECORD_S = 4
# Files keep where audio and video start, and AAC's priming is accounted for; see test_sync.py.
AV_BOUND_S = 0.040


@pytest.mark.parametrize(
    "codec, kind, container, codec_name",
    [("h264", "video", "mp4", "h264"), ("vp8", "video", "webm", "vp8"), ("vp9", "video", "webm", "vp9"),
     ("vp8", "audio", "ogg", "opus")],
)
def test_track_is_copied_without_transcoding(lk_egret, publish, room, codec, kind, container, codec_name):
    pub = publish("--codec", codec, "--width", "640", "--height", "360")
    info = lk_egret.api.record(
        "track", RECORD_S, room_name=room, track_id=pub.tracks[kind], file_outputs=[{"filepath": "track/{track_id}"}]
    )
    assert info["status"] == "complete", info
    path, media = recorded(lk_egret, info)
    assert path.name == f"{pub.tracks[kind]}.{container}"
    (stream,) = media["streams"]
    assert stream["codec_name"] == codec_name
    if kind == "video":
        # The publisher's own stream: its size, its rate, no scaling to a preset.
        assert (stream["width"], stream["height"]) == (640, 360)
        # Counted from the frames: ffprobe's own estimate for WebM is at times 0/0.
        times = frame_times(path)
        assert 27 <= (len(times) - 1) / (times[-1] - times[0]) <= 31, stream
        assert frames_differ(path)
    else:
        assert mean_volume_db(path) > -30
    assert abs(duration(media) - RECORD_S) < 1.0, media["format"]


def test_track_audio_goes_to_a_websocket_as_pcm(lk_egret, publish, room):
    pub = publish("--no-video")
    with PcmReceiver() as rx:
        url = rx.url(f"/egress?track={pub.tracks['audio']}")
        info = lk_egret.api.record("track", RECORD_S, room_name=room, track_id=pub.tracks["audio"], websocket_url=url)
        assert info["status"] == "complete", info
        assert rx.closed.wait(10), "the websocket was not closed at the end"
    assert rx.headers.get("content-type") == "audio/x-raw"
    received = rx.received
    (out,) = info["outputs"]
    assert out["kind"] == "websocket" and out["status"] == "complete"
    # s16le mono 48 kHz: 96000 bytes a second, as long as the egress says it ran.
    seconds = rx.seconds()
    assert abs(seconds - out["duration"]) < 0.3 and seconds > RECORD_S - 0.5, (seconds, out)
    pcm = np.frombuffer(bytes(received), np.int16).astype(np.float32) / 32768
    spectrum = np.abs(np.fft.rfft(pcm)) ** 2
    peak = np.fft.rfftfreq(len(pcm), 1 / 48000)[spectrum.argmax()]
    assert abs(peak - 440) < 5, peak  # the publisher's tone


def test_track_composite_is_synced(lk_egret, publish, room):
    pub = publish("--flash", "--dtx")
    # The sender's bandwidth estimate starts low and its pacer holds video back while it
    # ramps up; measured from the start, that is the publisher's offset, not egret's.
    time.sleep(3)
    info = lk_egret.api.start(
        "track_composite",
        room_name=room,
        audio_track_id=pub.tracks["audio"],
        video_track_id=pub.tracks["video"],
        file_outputs=[{"filepath": "tc/{room_name}.mp4"}],
        **SMALL,
    )
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    time.sleep(6)  # media time: at least five flash/beep pairs
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    path, media = recorded(lk_egret, info)
    (video,) = streams(media, "video")
    (audio,) = streams(media, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
    assert 29 <= fps(video) <= 31 and audio["codec_name"] == "aac"
    offset, pairs = av_offset(path)
    assert abs(offset) <= AV_BOUND_S, f"A/V offset {offset * 1000:.1f} ms over {pairs} flashes"


def test_track_composite_goes_to_every_output_at_once(lk_egret, publish, room, nginx):
    pub = publish("--codec", "h264")
    rtmp = nginx.url(f"tc-{room}")
    info = lk_egret.api.start(
        "track_composite",
        room_name=room,
        audio_track_id=pub.tracks["audio"],
        video_track_id=pub.tracks["video"],
        file_outputs=[{"filepath": "tc-all/{room_name}.mp4"}],
        segment_outputs=[{"filename_prefix": "tc-all/hls", "playlist_name": "tc-all/index.m3u8", "segment_duration": 2}],
        stream_outputs=[{"urls": [rtmp]}],
        image_outputs=[{"capture_interval": 2, "filename_prefix": "tc-all/img"}],
    )
    eid = info["egress_id"]
    lk_egret.api.wait(eid, lambda i: all(o["status"] == "active" for o in i["outputs"]), what="all outputs active")
    live = probe_live(rtmp)
    assert {s["codec_type"] for s in live["streams"]} == {"video", "audio"}
    time.sleep(4)  # media time: two segments and images
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete" and all(o["status"] == "complete" for o in info["outputs"]), info
    media = probe(lk_egret.storage / "tc-all" / f"{room}.mp4")
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"} and frames_differ(media["format"]["filename"])
    assert (lk_egret.storage / "tc-all" / "index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
    assert sorted((lk_egret.storage / "tc-all").glob("img*.jpeg"))


def test_participant_is_followed_through_leave_and_rejoin(lk_egret, livekit, publish, room):
    # Started before the participant is in the (existing) room: it waits for bob (LiveKit waits
    # 30 s), then records.
    livekit.create_room(room, departure_timeout=20)
    info = lk_egret.api.start("participant", room_name=room, identity="bob", file_outputs=[{"filepath": "p/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    assert info["status"] == "starting", info
    first = publish("--flash", "--dtx", identity="bob")
    lk_egret.api.wait_status(eid, "active")
    time.sleep(RECORD_S)  # media time
    first.leave()
    time.sleep(1.5)  # gone for a while, within the rejoin grace: black and silence
    publish("--flash", "--dtx", identity="bob")
    time.sleep(RECORD_S)
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete", info

    path, media = recorded(lk_egret, info)
    (video,) = streams(media, "video")
    assert (video["width"], video["height"]) == (640, 360) and streams(media, "audio")
    # One file over the whole time, both visits in it.
    assert duration(media) > 2 * RECORD_S + 1.5, media["format"]
    offset, pairs = av_offset(path)
    assert pairs >= 2 * RECORD_S - 2, pairs
    assert abs(offset) <= AV_BOUND_S, f"A/V offset {offset * 1000:.1f} ms over {pairs} flashes"


def test_participant_track_unpublished_and_published_again(lk_egret, publish, room):
    pub = publish("--flash", "--dtx", identity="carol")
    info = lk_egret.api.start("participant", room_name=room, identity="carol", file_outputs=[{"filepath": "p2/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    time.sleep(3)
    pub.command("unpublish video")
    time.sleep(1)
    pub.command("publish video")
    time.sleep(3)
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    path, media = recorded(lk_egret, info)
    # The republished video is in the file: flashes in its last seconds, not only before.
    times, luma = video_luma(path)
    flashes = onsets(times, luma, 128, 0.5)
    assert flashes and flashes[-1] > duration(media) - 2.0, (flashes, duration(media))
    offset, pairs = av_offset(path)
    assert pairs >= 4 and abs(offset) <= AV_BOUND_S, (offset, pairs)


def test_video_republished_with_another_codec(lk_egret, publish, room):
    """A camera unpublished and published again as H.264 after VP8: the server may carry it
    on the same m-line with another codec; the participant's file goes on with the new one."""
    pub = publish("--flash", "--codec", "vp8", identity="dora")
    info = lk_egret.api.start("participant", room_name=room, identity="dora",
                              file_outputs=[{"filepath": "p3/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    lk_egret.api.wait(eid, lambda i: i["duration"] >= 3, what="3 s recorded")
    pub.command("unpublish video")
    pub.command("codec h264")
    pub.command("publish video")
    republished = lk_egret.api.get(eid)["duration"]
    lk_egret.api.wait(eid, lambda i: i["duration"] >= republished + 4, what="4 s more recorded")
    # A new connection may take the track over: the network is fine, and the details say so.
    details = lk_egret.api.get(eid).get("details") or ""
    print(f"details: {details}")
    assert "reconnect" not in details, details
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete", info
    path, media = recorded(lk_egret, info)
    times, luma = video_luma(path)
    flashes = onsets(times, luma, 128, 0.5)
    assert flashes and flashes[-1] > duration(media) - 2.0, (flashes, duration(media))


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_track_egress_completes_when_its_track_is_unpublished(lk_egret, publish, room, codec):
    """As LiveKit: the egress ends complete ("track unpublished") with a playable file.
    livekit-server ends the track with tiny blank keyframes (2x2 for H.264): the MP4 writer
    refused that change of picture size and the egress failed."""
    pub = publish("--codec", codec)
    info = lk_egret.api.start("track", room_name=room, track_id=pub.tracks["video"],
                              file_outputs=[{"filepath": "unpub/{track_id}"}])
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    lk_egret.api.wait(eid, lambda i: i["duration"] >= 2, what="2 s recorded")
    pub.command("unpublish video")
    info = lk_egret.api.wait_status(eid, "complete", "failed", "aborted")
    assert info["status"] == "complete" and info["reason"] == "track unpublished", info
    path, media = recorded(lk_egret, info)
    (video,) = streams(media, "video")
    assert duration(media) > 1.5 and video["width"] > 16, video


def test_room_deleted_completes_the_egress(lk_egret, livekit, publish, room):
    pub = publish("--codec", "vp8")
    info = lk_egret.api.start("track", room_name=room, track_id=pub.tracks["video"], file_outputs=[{"filepath": "del/x"}])
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    time.sleep(2)  # media time
    livekit.delete_room(room)
    info = lk_egret.api.wait_status(eid, "complete", "failed", "aborted")
    # The server first reports the publisher gone (the recipe stops on its track's unpublish),
    # then the room: either way the egress completes.
    assert info["status"] == "complete", info
    assert info["reason"] in ("track unpublished", "room ended (room_deleted)"), info
    path, media = recorded(lk_egret, info)
    assert duration(media) > 1.5


def test_unknown_track_fails_clearly(lk_egret, publish, room):
    """As LiveKit: the start is answered (starting), then the egress fails `track X not found`
    (error_code 404) once the track did not show within its wait."""
    publish("--no-audio")
    started = time.monotonic()
    info = lk_egret.api.start("track", room_name=room, track_id="TR_doesnotexist", file_outputs=[{"filepath": "x"}])
    assert info["status"] == "starting", info
    final = lk_egret.api.wait_status(info["egress_id"], "failed", "complete", "aborted", timeout=20)
    assert final["status"] == "failed", final
    assert "track TR_doesnotexist not found" in final["error"] and room in final["error"], final
    assert time.monotonic() - started < 15


def test_track_composite_through_livekit_python_client(lk_egret, publish, room):
    pub = publish("--codec", "vp8")

    async def scenario():
        async with api.LiveKitAPI(f"http://127.0.0.1:{lk_egret.port}", API_KEY, API_SECRET) as lk:
            info = await lk.egress.start_track_composite_egress(
                api.TrackCompositeEgressRequest(
                    room_name=room,
                    audio_track_id=pub.tracks["audio"],
                    video_track_id=pub.tracks["video"],
                    preset=api.EncodingOptionsPreset.H264_720P_30,
                    file_outputs=[api.EncodedFileOutput(file_type=api.EncodedFileType.MP4, filepath="sdk/tc.mp4")],
                )
            )
            assert info.room_name == room and info.WhichOneof("request") == "track_composite"
            deadline = time.monotonic() + 30
            while (await lk.egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items[0].status != api.EGRESS_ACTIVE:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # media time
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
            while True:
                (ended,) = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items
                if ended.status not in (api.EGRESS_ACTIVE, api.EGRESS_ENDING):
                    return ended
                await asyncio.sleep(0.1)

    ended = asyncio.run(scenario())
    assert ended.status == api.EGRESS_COMPLETE, ended
    (file,) = ended.file_results
    assert file.duration > 2e9 and file.size > 0
    media = probe(lk_egret.storage / "sdk" / "tc.mp4")
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}


def test_an_unreachable_stream_url_fails_alone(lk_egret, publish, room):
    """As LiveKit: a stream URL nobody listens at fails, the egress starts and records the
    rest. (The URL's connection used to fail the whole start now and then, when it was
    refused before the pipeline played.)"""
    pub = publish("--no-video")
    for attempt in range(4):
        info = lk_egret.api.start("track_composite", room_name=room, audio_track_id=pub.tracks["audio"],
                                  file_outputs=[{"filepath": f"unreachable/{attempt}.ogg"}],
                                  stream_outputs=[{"urls": ["rtmp://127.0.0.1:9/live/nobody"]}])
        eid = info["egress_id"]
        info = lk_egret.api.wait(eid, lambda i: i["status"] != "starting" and {
            o["kind"]: o["status"] for o in i["outputs"]}.get("stream") == "failed", what="active, the URL failed")
        assert info["status"] == "active", info
        lk_egret.api.stop(eid)
        assert lk_egret.api.wait_status(eid, "complete")["status"] == "complete"


def test_a_slow_publishers_picture_is_held_between_its_frames(lk_egret, publish, room):
    """A camera sending 5 frames a second: each picture stays on screen until the next, with
    no black (or missing) output frame between them, in a 30 fps recording."""
    egret = lk_egret
    pub = publish("--fps", "5")
    info = egret.api.start("participant", room_name=room, identity=pub.identity,
                           file_outputs=[{"filepath": "slow/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    egret.api.wait_status(eid, "active")
    egret.api.wait(eid, lambda i: i["duration"] >= 5, what="5 s recorded")
    egret.api.stop(eid)
    done = egret.api.wait_status(eid, "complete", "failed")
    path, media = recorded(egret, done)
    _, luma = video_luma(path)
    lit = np.flatnonzero(luma > 20)
    assert len(lit), "no picture at all"
    # (From the first picture to the last: how a recording starts and stops is not the point.)
    dark = int((luma[lit[0]:lit[-1]] < 20).sum())
    print(f"{len(luma)} frames, pictures from frame {lit[0]} to {lit[-1]}, {dark} dark between")
    assert dark == 0, f"{dark} dark frames between the publisher's pictures"
