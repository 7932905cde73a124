"""Room composite egress against a real livekit-server: egret composes the built-in layouts itself
(a custom template is rendered by Chrome, joined to the room); real publishers of solid colours
and distinct tones. Tile positions of each layout, native and page: test_compositor.py."""

import asyncio
import subprocess
import time

import numpy as np
import pytest
from livekit import api

from conftest import API_KEY, API_SECRET, EgretProcess
from egret_client import ApiError
from livekit_harness import SMALL, recorded
from media import (channel_tone_levels, duration, frame_rgb, frame_times, near, probe, region_color, streams,
                   tone_levels)

RED, GREEN, BLUE = (230, 30, 30), (30, 200, 30), (30, 30, 230)
TONES = {RED: 440.0, GREEN: 660.0, BLUE: 880.0}


def publish_colours(publish):
    """Three publishers in join order red, green, blue, murmuring below LiveKit's speaking level."""
    return {colour: publish("--color", ",".join(map(str, colour)), "--tone", str(TONES[colour]), "--volume", "0.01",
                            "--width", "320", "--height", "180", identity=name)
            for colour, name in ((RED, "red"), (GREEN, "green"), (BLUE, "blue"))}


def test_grid_then_speaker_layout_with_every_voice(lk_egret, publish, room):
    publishers = publish_colours(publish)
    info = lk_egret.api.start("room_composite", room_name=room, layout="grid",
                              file_outputs=[{"filepath": "rc/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    time.sleep(2)  # media time in the grid
    publishers[GREEN].command("volume 0.4")  # green speaks up (not the first tile: the layout must follow)
    time.sleep(2)
    # LiveKit's own Python client, unchanged, switches the layout.
    async def update_layout():
        async with api.LiveKitAPI(f"http://127.0.0.1:{lk_egret.port}", API_KEY, API_SECRET) as lk:
            return await lk.egress.update_layout(api.UpdateLayoutRequest(egress_id=eid, layout="speaker"))

    updated = asyncio.run(update_layout())
    assert updated.egress_id == eid and updated.status == api.EgressStatus.EGRESS_ACTIVE, updated
    time.sleep(4)  # media time in the speaker layout
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete", info
    path, media = recorded(lk_egret, info)
    (video,) = streams(media, "video")
    assert (video["width"], video["height"]) == (640, 360)
    assert duration(media) > 7, media["format"]

    # Grid of 3 at 640x360: two tiles on top, the third centred below, in join order.
    grid = frame_rgb(path, 2.0)
    for (x, y), colour in (((0.25, 0.25), RED), ((0.75, 0.25), GREEN), ((0.5, 0.75), BLUE)):
        rgb = region_color(grid, x - 0.08, y - 0.1, x + 0.08, y + 0.1)
        assert near(rgb, colour), f"grid tile at ({x}, {y}) is {rgb}, expected {colour}"
    assert near(region_color(grid, 0.0, 0.6, 0.2, 0.9), (0, 0, 0)), "the last row is centred on black"

    # Speaker: the active speaker fills the left 4/5, the others sit in the right column.
    speaker = frame_rgb(path, duration(media) - 1.0)
    assert near(region_color(speaker, 0.1, 0.1, 0.7, 0.9), GREEN), region_color(speaker, 0.1, 0.1, 0.7, 0.9)
    side = [region_color(speaker, 0.82, y0, 0.98, y0 + 0.05) for y0 in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    assert any(near(c, RED) for c in side) and any(near(c, BLUE) for c in side), side
    # The switch left no gap: frames follow each other at 30 fps throughout.
    gaps = np.diff(frame_times(path))
    assert gaps.max() < 0.1, f"longest gap between frames {gaps.max():.3f} s"

    # Every voice is in the mix, the quiet ones too.
    levels = tone_levels(path, TONES.values())
    assert levels[660.0] > 0.3, levels
    assert levels[440.0] > 1e-4 and levels[880.0] > 1e-4, levels


def test_audio_only_mixes_the_room_and_ends_with_it(lk_egret, livekit, publish, room):
    livekit.create_room(room, departure_timeout=1)
    a = publish("--no-video", "--tone", "440", identity="a")
    b = publish("--no-video", "--tone", "660", identity="b")
    info = lk_egret.api.start("room_composite", room_name=room, audio_only=True,
                              file_outputs=[{"filepath": "rc-audio/{room_name}.ogg"}])
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    time.sleep(3)  # media time
    assert subprocess.run(["pgrep", "-f", "chromium"], capture_output=True).returncode == 1, "audio only runs no Chrome"
    a.leave()
    b.leave()
    # Everyone left: the server closes the room after its departure timeout, which ends the egress.
    info = lk_egret.api.wait_status(eid, "complete", "failed", "aborted", timeout=60)
    assert info["status"] == "complete" and info["reason"].startswith("room ended"), info
    path, media = recorded(lk_egret, info)
    assert not streams(media, "video") and streams(media, "audio")[0]["codec_name"] == "opus", media
    levels = tone_levels(path, [440.0, 660.0])
    assert levels[440.0] > 0.1 and levels[660.0] > 0.1, levels


@pytest.mark.parametrize("mixing, video", [("DUAL_CHANNEL_AGENT", False), ("DUAL_CHANNEL_ALTERNATE", False),
                                           ("DUAL_CHANNEL_AGENT", True)])
def test_dual_channel_mixing_puts_each_participant_on_its_side(lk_egret, publish, room, mixing, video):
    """LiveKit's audio_mixing: the agent (440 Hz) left and the other participant (660 Hz)
    right; alternating, the first participant heard left and the second right. With video,
    egret composes the picture and mixes the sound."""
    first = publish("--no-video", "--tone", "440", "--kind", "agent" if mixing == "DUAL_CHANNEL_AGENT" else "",
                    identity="first")
    extension, extra = ("mp4", SMALL) if video else ("ogg", {"audio_only": True})
    info = lk_egret.api.start("room_composite", room_name=room, audio_mixing=mixing,
                              file_outputs=[{"filepath": f"rc-dual/{{room_name}}.{extension}"}], **extra)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    lk_egret.api.wait(eid, lambda i: i["duration"] >= 1, what="the first participant heard")
    publish("--no-video", "--tone", "660", identity="second")
    started = lk_egret.api.get(eid)["duration"]
    lk_egret.api.wait(eid, lambda i: i["duration"] >= started + 4, what="both participants heard")
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete")
    path, media = recorded(lk_egret, info)
    (audio,) = streams(media, "audio")
    assert audio["channels"] == 2 and audio["codec_name"] == ("aac" if video else "opus"), audio
    assert bool(streams(media, "video")) == video
    levels = channel_tone_levels(path, [440.0, 660.0])
    print(mixing, levels)
    left, right = levels["left"], levels["right"]
    assert left[440.0] > 0.05 and right[660.0] > 0.05, levels
    assert right[440.0] < left[440.0] / 100 and left[660.0] < right[660.0] / 100, levels


def test_custom_template_is_recorded_until_the_room_is_deleted(lk_egret, livekit, publish, pages, room):
    publish("--no-audio", "--color", "0,0,255", identity="x")
    info = lk_egret.api.start("room_composite", room_name=room, layout="magenta", video_only=True,
                              custom_base_url=pages.url("template.html"),
                              file_outputs=[{"filepath": "rc-custom/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    time.sleep(2)  # media time
    livekit.delete_room(room)
    info = lk_egret.api.wait_status(eid, "complete", "failed", "aborted", timeout=30)
    assert info["status"] == "complete" and info["reason"].startswith("room ended"), info
    path, media = recorded(lk_egret, info)
    assert not streams(media, "audio"), "video_only records no audio"
    # The template got LiveKit's query (url, token, layout) and drew magenta.
    assert near(region_color(frame_rgb(path, 1.0), 0.1, 0.1, 0.9, 0.9), (255, 0, 255)), "template not shown"


@pytest.mark.parametrize(
    "params, field",
    [({"layout": "mosaic"}, "layout"), ({"audio_only": True, "video_only": True}, "video_only"),
     ({"audio_mixing": "TRIPLE_CHANNEL"}, "audio_mixing"),
     ({"audio_mixing": "DUAL_CHANNEL_AGENT", "video_only": True}, "audio_mixing")],
)
def test_bad_room_composite_requests_name_the_field(lk_egret, room, params, field):
    with pytest.raises(ApiError) as e:
        lk_egret.api.start("room_composite", room_name=room, file_outputs=[{"filepath": "x.mp4"}], **params)
    # Checked by the recipe (422, like every refusal of a recipe's start), naming the field.
    assert e.value.status == 422 and e.value.body["field"] == f"params.{field}", e.value.body
    assert "room_composite.lua:" in e.value.body["error"], e.value.body


def test_update_layout_on_an_egress_without_layouts_is_refused(lk_egret, publish, room):
    pub = publish("--no-video")
    info = lk_egret.api.start("track", room_name=room, track_id=pub.tracks["audio"], file_outputs=[{"filepath": "ul/x"}])
    lk_egret.api.wait_status(info["egress_id"], "active")
    status, _, body = lk_egret.api.twirp("UpdateLayout", {"egress_id": info["egress_id"], "layout": "speaker"})
    assert status == 412 and body["code"] == "failed_precondition" and "update_layout" in body["msg"], body
    lk_egret.api.stop(info["egress_id"])


def test_js_server_sdk_track_and_room_composite(lk_egret, publish, room):
    """The npm livekit-server-sdk EgressClient, unchanged: track composite, room composite and
    updateLayout against a real room."""
    import json
    from pathlib import Path

    pub = publish("--codec", "vp8")
    script = Path(__file__).parent / "js" / "room_egress_client.mjs"
    out = subprocess.run(["node", str(script), f"http://127.0.0.1:{lk_egret.port}", API_KEY, API_SECRET, room,
                          pub.tracks["audio"], pub.tracks["video"]], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    tc, rc = summary["trackComposite"], summary["roomComposite"]
    assert (tc["requestCase"], rc["requestCase"]) == ("trackComposite", "roomComposite"), summary
    assert tc["roomName"] == rc["roomName"] == room
    assert rc["during"] == "EGRESS_ACTIVE", summary
    for result in (tc, rc):
        assert len(result["file"]) == 1, summary
        (file_result,) = result["file"]
        media = probe(file_result["location"])
        assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}, media
        assert duration(media) > 2.5, media["format"]


def test_built_in_layouts_need_no_page_bundle(tmp_path, livekit, publish, room):
    """The built-in layouts are composed by egret itself: without the layout page's bundle
    (layouts/build/, made by npm) a grid still records."""
    publish("--no-audio", "--color", "230,30,30", "--width", "320", "--height", "180", identity="red")
    egret = EgretProcess(tmp_path, livekit.config_toml(), layouts=tmp_path / "no-layouts")
    try:
        info = egret.api.start("room_composite", room_name=room, video_only=True,
                               file_outputs=[{"filepath": "nobundle.mp4"}], **SMALL)
        eid = info["egress_id"]
        egret.api.wait_status(eid, "active", timeout=45)
        at = egret.api.get(eid)["duration"] + 2.5
        egret.api.wait(eid, lambda i: i["duration"] >= at + 0.5, what="media time")
        egret.api.stop(eid)
        info = egret.api.wait_status(eid, "complete", "failed")
        path, media = recorded(egret, info)
        assert near(region_color(frame_rgb(path, at), 0.2, 0.2, 0.8, 0.8), (230, 30, 30)), "the red camera fills the grid"
    finally:
        egret.stop()
