"""LiveKit's StartEgress (v2) with a MediaSource, through LiveKit's Python client: a video track
or a participant's video, room audio routed to channels by track id, identity or participant
kind (capture_all for the rest), and the PASSTHROUGH preset that copies one track."""

import asyncio

import pytest
from livekit import api

from conftest import API_KEY, API_SECRET
from livekit_harness import recorded
from media import channel_tone_levels, duration, streams

SMALL = api.EncodingOptions(width=640, height=360, framerate=30)


def lk_call(egret, body):
    async def run():
        async with api.LiveKitAPI(f"http://127.0.0.1:{egret.port}", API_KEY, API_SECRET) as lk:
            return await body(lk)

    return asyncio.run(run())


def start(egret, **fields):
    return lk_call(egret, lambda lk: lk.egress.start_egress(api.StartEgressRequest(**fields)))


def record_a_while(egret, egress_id, seconds=4):
    egret.api.wait_status(egress_id, "active", timeout=45)
    egret.api.wait(egress_id, lambda i: i["duration"] >= seconds, what=f"{seconds} s recorded")
    egret.api.stop(egress_id)
    return egret.api.wait_status(egress_id, "complete", "failed")


def test_video_track_and_audio_routed_by_kind_and_identity(lk_egret, publish, room):
    agent = publish("--tone", "440", "--kind", "agent", identity="agent")
    publish("--no-video", "--tone", "660", identity="bob")
    publish("--no-video", "--tone", "880", identity="carol")  # matched by no route: not recorded
    media = api.MediaSource(
        video_track_id=agent.tracks["video"],
        audio=api.AudioConfig(routes=[
            api.AudioRoute(participant_kind=api.ParticipantInfo.Kind.AGENT, channel=api.AudioChannel.AUDIO_CHANNEL_LEFT),
            api.AudioRoute(participant_identity="bob", channel=api.AudioChannel.AUDIO_CHANNEL_RIGHT),
        ]))
    info = start(lk_egret, room_name=room, media=media, advanced=SMALL,
                 outputs=[api.Output(file=api.FileOutput(filepath="media/{room_name}.mp4"))])
    assert info.source_type == api.EgressSourceType.EGRESS_SOURCE_TYPE_SDK, info
    final = record_a_while(lk_egret, info.egress_id)
    assert final["status"] == "complete", final
    path, probed = recorded(lk_egret, final)
    assert streams(probed, "video")[0]["width"] == 640 and streams(probed, "audio")[0]["channels"] == 2
    levels = channel_tone_levels(path, [440.0, 660.0, 880.0])
    print(levels)
    left, right = levels["left"], levels["right"]
    assert left[440.0] > 0.05 and right[660.0] > 0.05, levels
    assert right[440.0] < left[440.0] / 100 and left[660.0] < right[660.0] / 100, levels
    assert left[880.0] + right[880.0] < 0.001, f"an unrouted participant was recorded: {levels}"


def test_participant_video_and_capture_all(lk_egret, publish, room):
    alice = publish("--tone", "440", identity="alice")
    publish("--no-video", "--tone", "660", identity="bob")
    media = api.MediaSource(participant_video=api.ParticipantVideo(identity="alice"),
                            audio=api.AudioConfig(capture_all=True))
    info = start(lk_egret, room_name=room, media=media, advanced=SMALL,
                 outputs=[api.Output(file=api.FileOutput(filepath="media/{room_name}-all.mp4"))])
    egress_id = info.egress_id
    lk_egret.api.wait_status(egress_id, "active", timeout=45)
    lk_egret.api.wait(egress_id, lambda i: i["duration"] >= 4, what="4 s recorded")
    alice.leave()  # followed participant gone: the egress completes after its grace
    final = lk_egret.api.wait_status(egress_id, "complete", "failed", timeout=40)
    assert final["status"] == "complete" and "participant left" in final["reason"], final
    path, probed = recorded(lk_egret, final)
    assert streams(probed, "video") and duration(probed) >= 4
    levels = channel_tone_levels(path, [440.0, 660.0])
    for side in ("left", "right"):
        assert levels[side][440.0] > 0.02 and levels[side][660.0] > 0.02, levels


def test_passthrough_copies_one_track(lk_egret, publish, room):
    pub = publish("--codec", "h264", identity="p")
    info = start(lk_egret, room_name=room, media=api.MediaSource(video_track_id=pub.tracks["video"]),
                 preset=api.EncodingOptionsPreset.PASSTHROUGH,
                 outputs=[api.Output(file=api.FileOutput(filepath="media/{room_name}-copy"))])
    final = record_a_while(lk_egret, info.egress_id, seconds=3)
    assert final["status"] == "complete", final
    path, probed = recorded(lk_egret, final)
    assert path.suffix == ".mp4" and [s["codec_name"] for s in probed["streams"]] == ["h264"], probed
    assert duration(probed) >= 2.5


@pytest.mark.parametrize("fields, field", [
    (dict(media=api.MediaSource(), preset=api.EncodingOptionsPreset.PASSTHROUGH), "video_track_id"),
    (dict(media=api.MediaSource(audio=api.AudioConfig(capture_all=True)),
          preset=api.EncodingOptionsPreset.PASSTHROUGH), "audio.capture_all"),
    (dict(web=api.WebSource(url="http://127.0.0.1:9/"), preset=api.EncodingOptionsPreset.PASSTHROUGH), "preset"),
    (dict(media=api.MediaSource()), "audio"),
    (dict(media=api.MediaSource(audio=api.AudioConfig(routes=[api.AudioRoute()]))), "audio.routes[0]"),
])
def test_bad_media_requests_name_the_field(lk_egret, room, fields, field):
    with pytest.raises(api.TwirpError) as refused:
        start(lk_egret, room_name=room, outputs=[api.Output(file=api.FileOutput(filepath="media/bad.mp4"))],
              **fields)
    assert refused.value.status in (400, 412) and field in refused.value.message, refused.value.message
