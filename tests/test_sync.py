"""A/V sync of room media, measured from the first second: the publisher starts together
with the egress (no warm-up), so a sender still ramping up (pacer, bandwidth estimate,
encoder start) is part of what egret must time right.

Bounds: median within 40 ms, every pair within 80 ms. Measured here (8 runs, VP8 and H.264,
both kinds): steady offsets -7..+32 ms, about +12 on average; the file's 30 fps grid alone moves
a flash by up to half a frame (17 ms) either way. The publisher hands audio over as a
microphone does (each 10 ms chunk once complete); libwebrtc then stamps a 20 ms Opus packet
20 ms after its first sample, which egret's timeline takes off."""

import numpy as np
import pytest

from livekit_harness import SMALL, Jitter, stop_and_measure
from media import beeps

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
    _, _, pairs, shown = stop_and_measure(lk_egret, eid)
    offsets = np.array([o for _, o in pairs]) * 1000
    print(f"{kind} {codec}: {shown}")
    assert len(pairs) >= RECORD_S - 2, f"flash/beep pairs {shown}"
    assert abs(np.median(offsets)) <= 40 and np.abs(offsets).max() <= 80, f"A/V offsets (ms) {shown}"


JITTER_RECORD_S = 20


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize("kind", ["participant", "track_composite"])
def test_av_sync_under_network_delay_and_jitter(lk_egret, livekit, publish, room, kind, codec):
    """livekit-server's packets delayed 50 ± 30 ms (reordered; tests/netdelay.py) from before
    the publisher starts: every flash/beep pair after the start's first second within 60 ms
    (the issue's bar under network trouble), no drift. Before the fixes of 2026-12-01 the
    sound drifted 1.5 ms a second (the resampler in front of AAC lost 1.5 ms at every change
    between the mixer's GAP silence and sound) and the first seconds were 40-60 ms out.
    Measured (12 runs, 3 of each): every pair after the first second within 38 ms; the first
    pair up to +57 ms (a beep cut by the track's start). A CI run then read +79 ms at 2 s: with
    a 200 ms jitter buffer, a beep's first packets overtaken by the next ones were thrown away
    (`JITTER_LATENCY_MS`); the beeps after the first are now whole in every run."""
    jitter = Jitter(livekit, 50, 30)
    try:
        pub = publish("--flash", "--dtx", "--codec", codec)
        info = start(lk_egret, kind, room, pub, codec)
        eid = info["egress_id"]
        lk_egret.api.wait_status(eid, "active")
        lk_egret.api.wait(eid, lambda i: i["duration"] >= JITTER_RECORD_S, what=f"{JITTER_RECORD_S} s recorded",
                          timeout=60)
    finally:
        delayed = jitter.close()
    path, _, pairs, shown = stop_and_measure(lk_egret, eid)
    print(f"{kind} {codec} ({delayed}): {shown}")
    # The first second is the start's: under the delay the tracks can come after its flash or
    # in the middle of its beep.
    offsets = np.array([o for t, o in pairs if t > 1.5]) * 1000
    assert len(offsets) >= JITTER_RECORD_S - 3, f"flash/beep pairs {shown}"
    assert abs(np.median(offsets)) <= 40 and np.abs(offsets).max() <= 60, f"A/V offsets (ms) {shown}"
    # Each beep lasts 100 ms; one after the start cut shorter lost its first packets.
    cut = [f"{t:.2f}s:{length * 1000:.0f}ms" for t, length in beeps(path) if t > 1.5 and length < 0.09]
    assert not cut, f"beeps cut short: {cut}"
