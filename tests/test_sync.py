"""A/V sync of room media, measured from the first second: the publisher starts together
with the egress (no warm-up), so a sender still ramping up (pacer, bandwidth estimate,
encoder start) is part of what egret must time right.

The aim is LiveKit's own bar, a median within 40 ms. What this machine shows today (30
runs, tracks timed from sender reports): a constant offset per egress between -61 and +55 ms,
of which up to ±17 ms is the output frame grid, and a systematic 17-47 ms between participant
and track composite egresses of one publisher that is not explained yet. The bounds below are
what egret holds; they are to come down to 40/80 ms."""

import numpy as np
import pytest

from livekit_harness import SMALL, recorded
from media import av_offsets, streams

RECORD_S = 10


def start(lk_egret, kind, room, pub, codec):
    outputs = {"file_outputs": [{"filepath": f"sync/{kind}-{codec}-{{room_name}}.mp4"}], **SMALL}
    if kind == "participant":
        return lk_egret.api.start("participant", room_name=room, identity=pub.identity, **outputs)
    return lk_egret.api.start(
        "track_composite", room_name=room, audio_track_id=pub.tracks["audio"], video_track_id=pub.tracks["video"], **outputs
    )


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize("kind", ["participant", "track_composite"])
def test_av_sync_from_the_first_second(lk_egret, publish, room, kind, codec):
    pub = publish("--flash", "--dtx", "--codec", codec)
    info = start(lk_egret, kind, room, pub, codec)
    eid = info["egress_id"]
    lk_egret.api.wait_status(eid, "active")
    lk_egret.api.wait(eid, lambda i: i["duration"] >= RECORD_S, what=f"{RECORD_S} s recorded", timeout=60)
    lk_egret.api.stop(eid)
    info = lk_egret.api.wait_status(eid, "complete", "failed")
    assert info["status"] == "complete", info
    path, media = recorded(lk_egret, info)
    assert streams(media, "video") and streams(media, "audio")
    pairs = av_offsets(path)
    offsets = np.array([o for _, o in pairs]) * 1000
    shown = ", ".join(f"{t:.1f}s:{o * 1000:+.0f}" for t, o in pairs)
    print(f"{kind} {codec}: {shown}")
    assert len(pairs) >= RECORD_S - 2, f"flash/beep pairs {shown}"
    assert abs(np.median(offsets)) <= 70 and np.abs(offsets).max() <= 100, f"A/V offsets (ms) {shown}"
