"""Room composite's built-in layouts drawn by egret's own compositor (no browser) against a real
livekit-server, and the same layouts drawn by the layout page in Chrome: both must put every
participant's tile where the expectations below say, for 1, 2, 3, 5 and 9 participants.

Each publisher sends one solid colour; a tile is found as the bounding box of its colour in a
frame of the recording, so the check is of positions (± a few pixels), not of pixels."""

import subprocess
import time

import numpy as np
import pytest

from livekit_harness import SMALL, recorded
from media import duration, frame_rgb, near, region_color, streams

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230),
           (240, 140, 20), (140, 60, 200), (240, 240, 240)]
COUNTS = (1, 2, 3, 5, 9)
TOLERANCE_PX = 4

# Tile rectangles (x, y, w, h) at 640x360, in join order: egret's layout page (layouts/src/arrange.js)
# and the Lua layouts (scripts/layouts/) must both draw these.
EXPECTED = {
    "grid": {
        1: [(0, 0, 640, 360)],
        2: [(0, 0, 320, 360), (320, 0, 320, 360)],
        3: [(0, 0, 320, 180), (320, 0, 320, 180), (160, 180, 320, 180)],
        5: [(0, 0, 213, 180), (213, 0, 213, 180), (426, 0, 213, 180), (107, 180, 213, 180), (320, 180, 213, 180)],
        9: [(x, y, 213, 120) for y in (0, 120, 240) for x in (0, 213, 426)],
    },
    # The first to join is the main tile (nobody speaks); the others in a centred column.
    "speaker": {
        1: [(0, 0, 640, 360)],
        2: [(0, 0, 512, 360), (512, 144, 128, 72)],
        3: [(0, 0, 512, 360), (512, 108, 128, 72), (512, 180, 128, 72)],
        5: [(0, 0, 512, 360)] + [(512, 36 + i * 72, 128, 72) for i in range(4)],
        9: [(0, 0, 512, 360)] + [(512, i * 45, 128, 45) for i in range(8)],
    },
}


def tile_of(frame, colour, tolerance=40):
    """The bounding box (x, y, w, h) of the pixels of `colour`, or None."""
    mask = np.all(np.abs(frame - np.array(colour)) <= tolerance, axis=2)
    ys, xs = np.nonzero(mask)
    if len(xs) < 50:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def record_layout_steps(lk_egret, livekit, publish, room, layout, **extra):
    """Publishers join one by one into a room the egress already records; the frame is read once
    1, 2, 3, 5 and 9 are in. Returns ({count: frame}, probe) from the recording."""
    livekit.create_room(room, departure_timeout=20)
    info = lk_egret.api.start("room_composite", room_name=room, layout=layout, video_only=True,
                              file_outputs=[{"filepath": f"tiles/{{room_name}}-{layout}.mp4"}], **SMALL, **extra)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    marks = {}
    for n, colour in enumerate(COLOURS, start=1):
        publish("--no-audio", "--color", ",".join(map(str, colour)), "--width", "320", "--height", "180",
                "--fps", "10", identity=f"p{n}")
        time.sleep(0.05)  # distinct join times, in order
        if n in COUNTS:
            # Media time for the new tile to show: its subscription, first keyframe and decode.
            at = lk_egret.api.get(eid)["duration"] + 3.0
            lk_egret.api.wait(eid, lambda i: i["duration"] >= at + 0.5, what=f"{n} tiles recorded", timeout=60)
            marks[n] = at
    return stop_and_read(lk_egret, eid, marks)


def stop_and_read(lk_egret, eid, marks):
    """Stops the egress, which must complete with a 640x360 file; returns ({mark: the frame shown
    at that media time}, probe)."""
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete", info
    path, media = recorded(lk_egret, info)
    (video,) = streams(media, "video")
    assert (video["width"], video["height"]) == (640, 360)
    start = float(video.get("start_time", 0) or 0)
    return {name: frame_rgb(path, at - start, width=640, height=360) for name, at in marks.items()}, media


def check_tiles(frames, layout):
    problems = []
    for n, frame in frames.items():
        for i, (colour, expected) in enumerate(zip(COLOURS, EXPECTED[layout][n])):
            found = tile_of(frame, colour)
            if found is None or any(abs(a - b) > TOLERANCE_PX for a, b in zip(found, expected)):
                problems.append(f"{n} participants: tile {i + 1} {colour} at {found}, expected {expected}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", ["grid", "speaker"])
def test_native_layout_puts_every_tile_in_place(lk_egret, livekit, publish, room, layout):
    frames, media = record_layout_steps(lk_egret, livekit, publish, room, layout)
    assert subprocess.run(["pgrep", "-f", "chromium"], capture_output=True).returncode == 1, "no browser"
    check_tiles(frames, layout)
    assert duration(media) > 15


@pytest.mark.parametrize("layout", ["grid", "speaker"])
def test_layout_page_draws_the_same_tiles(lk_egret, livekit, publish, room, layout):
    """The same expectations, drawn by egret's layout page in Chrome (the page path, kept for
    custom templates): the two renderers agree."""
    page = f"http://127.0.0.1:{lk_egret.port}/layouts/"
    frames, _ = record_layout_steps(lk_egret, livekit, publish, room, layout, custom_base_url=page)
    check_tiles(frames, layout)


def test_name_card_speaker_switch_and_screen_share_first(lk_egret, publish, room):
    """A participant without video gets a name card; the active speaker becomes the main tile in
    the speaker layout; a screen share, once published, takes the main tile over; a muted camera
    shows its name card."""
    red, green = COLOURS[0], COLOURS[1]
    red_camera = publish("--color", ",".join(map(str, red)), "--width", "320", "--height", "180", "--volume", "0.01",
            identity="red")
    voice = publish("--no-video", "--volume", "0.01", identity="voice")
    info = lk_egret.api.start("room_composite", room_name=room, layout="speaker",
                              file_outputs=[{"filepath": "tiles/{room_name}-cards.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    first = lk_egret.api.get(eid)["duration"] + 2.5
    lk_egret.api.wait(eid, lambda i: i["duration"] >= first + 0.5, what="the first layout")
    voice.command("volume 0.5")  # the participant without video speaks: its card goes large
    lk_egret.api.wait(eid, lambda i: i["duration"] >= first + 4.5, what="the speaker switch")
    spoke = lk_egret.api.get(eid)["duration"]
    publish("--color", ",".join(map(str, green)), "--width", "320", "--height", "180", "--no-audio",
            "--source", "screen_share", identity="sharer")
    shared = lk_egret.api.get(eid)["duration"] + 3.0
    lk_egret.api.wait(eid, lambda i: i["duration"] >= shared + 0.5, what="the screen share")
    red_camera.command("mute video")
    muted = lk_egret.api.get(eid)["duration"] + 2.0
    lk_egret.api.wait(eid, lambda i: i["duration"] >= muted + 0.5, what="the camera muted")
    frames, _ = stop_and_read(lk_egret, eid, {"before": first, "after": spoke - 0.2, "shared": shared, "muted": muted})
    before, after, shared_frame, muted_frame = (frames[k] for k in ("before", "after", "shared", "muted"))

    assert near(region_color(before, 0.1, 0.1, 0.7, 0.9), red), "red (first to join) is the main tile"
    card = region_color(before, 0.82, 0.42, 0.98, 0.58)
    assert max(card) < 90 and abs(card[0] - card[2]) < 15, f"the voice's side tile is a grey name card: {card}"

    main = region_color(after, 0.05, 0.05, 0.2, 0.2)  # the card's plain background, off the name
    assert max(main) < 90 and abs(main[0] - main[2]) < 15, f"the speaking card is the main tile: {main}"
    assert tile_of(after, red) is not None and tile_of(after, red)[2] <= 132, "red moved to the side"

    assert near(region_color(shared_frame, 0.1, 0.1, 0.7, 0.9), green), "the screen share is the main tile"
    assert tile_of(shared_frame, red) is not None, "red's camera is still shown beside it"
    assert tile_of(muted_frame, red) is None, "a muted camera shows its name card"
    assert near(region_color(muted_frame, 0.1, 0.1, 0.7, 0.9), green)


def test_a_camera_unpublished_and_published_again_mid_recording(lk_egret, publish, room):
    """A participant who stops its camera stays as a name card (the others' tiles reshape
    without the recording failing), and its camera comes back when published again."""
    red, green = COLOURS[0], COLOURS[1]
    red_pub = publish("--no-audio", "--color", ",".join(map(str, red)), "--width", "320", "--height", "180",
                      identity="red")
    publish("--no-audio", "--color", ",".join(map(str, green)), "--width", "320", "--height", "180", identity="green")
    info = lk_egret.api.start("room_composite", room_name=room, layout="grid", video_only=True,
                              file_outputs=[{"filepath": "tiles/{room_name}-unpublish.mp4"}], **SMALL)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active", timeout=45)
    marks = {}
    for step, command in (("both", None), ("card", "unpublish video"), ("back", "publish video")):
        if command:
            red_pub.command(command)
        marks[step] = lk_egret.api.get(eid)["duration"] + 2.5
        lk_egret.api.wait(eid, lambda i, at=marks[step]: i["duration"] >= at + 0.5, what=step)
        assert lk_egret.api.get(eid)["status"] == "active"
    frames, _ = stop_and_read(lk_egret, eid, marks)
    assert tile_of(frames["both"], red) is not None and tile_of(frames["both"], green) is not None
    assert tile_of(frames["card"], red) is None, "red's camera is gone: its name card shows"
    assert near(region_color(frames["card"], 0.6, 0.1, 0.9, 0.9), green), "green keeps its tile"
    assert tile_of(frames["back"], red) is not None, "red's camera is back"
