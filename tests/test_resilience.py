"""Room egress through network trouble: egret's signalling connection to livekit-server cut
for a while (a proxy in between drops it and refuses new connections). egret rejoins as a new
hidden participant while the old connection still delivers media, so nothing is lost."""

import time

import numpy as np
import pytest

from conftest import ROOT, EgretProcess
from livekit_harness import SMALL, Jitter, PacketLoss, SignalProxy, recorded, stop_and_measure
from media import audio_samples, duration, longest_still, onsets, packet_times, probe, streams, video_luma

CUT_S = 3


@pytest.fixture
def proxied(tmp_path, livekit):
    proxy = SignalProxy(livekit)
    egret = EgretProcess(tmp_path, proxy.config_toml())
    yield egret, proxy
    egret.stop()
    proxy.close()


def record_through_a_cut(egret, proxy, eid):
    """Waits for 3 s of recording, cuts egret's signalling for CUT_S seconds, waits until egret
    says it reconnected; returns the recorded duration then."""
    egret.api.wait_status(eid, "active")
    egret.api.wait(eid, lambda i: i["duration"] >= 3, what="3 s recorded")
    proxy.cut(CUT_S)
    egret.api.wait(eid, lambda i: "reconnected" in (i.get("details") or ""), what="reconnected", timeout=60)
    return egret.api.get(eid)["duration"]


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_signalling_cut_keeps_the_recording_going(proxied, publish, room, codec):
    """A participant egress (decoded) through a cut. With H.264 the takeover made FFmpeg's
    decoder drain and flush (a new stream-start) and draw grey until the next keyframe."""
    egret, proxy = proxied
    pub = publish("--flash", "--dtx", "--codec", codec)
    info = egret.api.start("participant", room_name=room, identity=pub.identity, file_outputs=[{"filepath": "cut/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    before = record_through_a_cut(egret, proxy, eid)
    egret.api.wait(eid, lambda i: i["duration"] >= before + 3, what="3 s more recorded")
    _, media, pairs, shown = stop_and_measure(egret, eid)
    times = [t for t, _ in pairs]
    # A flash and a beep every second, throughout: no second of the cut is missing.
    print(f"after the cut: {egret.api.get(eid)['details']}; pairs {shown}")
    assert len(pairs) >= duration(media) - 2 and max(np.diff(times)) < 1.5, f"flash/beep pairs {shown}"
    # One timeline across the rejoin: A/V as before the cut (within a frame). Before the mixer
    # was given 1 ms frames, the picture came a frame early after the takeover, in 1 run of 3.
    offsets = [o for _, o in pairs]
    assert max(offsets) - min(offsets) <= 0.045, f"flash/beep pairs {shown}"


def test_a_recipe_hears_the_reconnect(proxied, publish, room):
    """`room:on("reconnecting")` and `room:on("reconnected")` in a recipe of one's own (the
    participant recipe with two handlers), through a 3 s cut."""
    egret, proxy = proxied
    text = (ROOT / "scripts" / "participant.lua").read_text()
    join = "local room = egress:join(req.room_name)\n"
    assert text.count(join) == 1 and text.count('name = "participant"') == 1
    handlers = ('room:on("reconnecting", function(e) log("heard reconnecting: " .. e.cause) end)\n'
                'room:on("reconnected", function(e) log("heard reconnected after " .. e.attempts .. " attempt(s)") end)\n')
    text = text.replace(join, join + handlers).replace('name = "participant"', 'name = "watched"')
    (egret.recipes / "watched.lua").write_text(text)
    deadline = time.monotonic() + 10
    while "watched" not in egret.api.recipes():
        assert time.monotonic() < deadline, "the new recipe was not loaded"
        time.sleep(0.05)
    pub = publish("--flash")
    info = egret.api.start("watched", room_name=room, identity=pub.identity,
                           file_outputs=[{"filepath": "watched/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    record_through_a_cut(egret, proxy, eid)
    egret.api.stop(eid)
    assert egret.api.wait_status(eid, "complete", "failed")["status"] == "complete"
    log = (egret.workdir / "egret.log").read_text()
    assert "heard reconnecting: lost" in log and "heard reconnected after " in log, "the handlers did not run"


def test_a_room_lost_for_good_fails_with_what_it_recorded(tmp_path, livekit, publish, room):
    """The signalling cut for longer than `reconnect_timeout`: the egress fails, says what it
    tried (LiveKit's clients: "End reason: Failure", while it finalized too), and its file
    plays up to the cut."""
    proxy = SignalProxy(livekit)
    egret = EgretProcess(tmp_path, proxy.config_toml("reconnect_timeout = 4\n"))
    try:
        pub = publish("--flash", "--dtx")
        info = egret.api.start("participant", room_name=room, identity=pub.identity,
                               file_outputs=[{"filepath": "lost/{room_name}.mp4"}], **SMALL)
        eid = info["egress_id"]
        egret.api.wait_status(eid, "active")
        egret.api.wait(eid, lambda i: i["duration"] >= 3, what="3 s recorded")
        proxy.cut(30)
        done = egret.api.wait_status(eid, "complete", "failed", timeout=30)
        print(f"error: {done['error']}")
        assert done["status"] == "failed", done
        assert "could not rejoin within 4 s" in done["error"] and "attempts" in done["error"], done["error"]
        status, _, listed = egret.api.twirp("ListEgress", {"egress_id": eid})
        (lk_info,) = listed["items"]
        assert (lk_info["status"], lk_info["details"]) == ("EGRESS_FAILED", "End reason: Failure"), lk_info
        (out,) = done["outputs"]
        path = egret.storage / out["target"]
        media = probe(path)
        assert streams(media, "video") and streams(media, "audio")
        assert duration(media) >= 3, media["format"]
    finally:
        egret.stop()
        proxy.close()


@pytest.mark.parametrize("kind", ["video", "h264", "audio"])
def test_a_copied_track_goes_on_through_a_rejoin_without_repeats(proxied, publish, room, kind):
    """Track egress (no transcoding) through a 3 s signalling cut: the new connection takes
    over where the old one stopped. Before, it repeated the last 200 ms of video with
    timestamps going back (players and remuxers choke on that) and moved the sound by 40 ms.
    `video` is VP8 (to WebM), `h264` H.264 (to MP4)."""
    egret, proxy = proxied
    pub = publish("--flash", "--dtx", *(["--codec", "h264"] if kind == "h264" else []))
    track = pub.tracks["audio" if kind == "audio" else "video"]
    kind = "audio" if kind == "audio" else "video"
    info = egret.api.start("track", room_name=room, track_id=track,
                           file_outputs=[{"filepath": "cut/{track_id}"}])
    eid = info["egress_id"]
    before = record_through_a_cut(egret, proxy, eid)
    # Past the new connection's first sender report (every 3 s), when it takes over.
    egret.api.wait(eid, lambda i: i["duration"] >= before + 6, what="6 s more recorded")
    egret.api.stop(eid)
    done = egret.api.wait_status(eid, "complete", "failed")
    path, media = recorded(egret, done)
    times = packet_times(path, "v:0" if kind == "video" else "a:0")
    steps = np.diff(times)
    print(f"{kind}: {len(times)} packets, smallest step {steps.min() * 1000:.1f} ms, largest {steps.max() * 1000:.0f} ms")
    assert steps.min() > 0 if kind == "video" else steps.min() >= 0, f"timestamps go back by {-steps.min():.3f} s"
    # Not a frame or a packet lost at the takeover: until the new connection spliced its
    # packets into the old stream (same SSRC, sequence numbers going on) the depayloader took
    # the change for a loss and dropped frames until the next keyframe (67-101 ms gaps).
    assert steps.max() < (0.050 if kind == "video" else 0.021), f"a gap of {steps.max() * 1000:.0f} ms"
    if kind == "video":
        flashes = onsets(*video_luma(path), 128, 0.5)
    else:
        samples, start = audio_samples(path)
        energy = np.abs(samples[: len(samples) // 48 * 48]).reshape(-1, 48).max(axis=1)
        flashes = onsets(start + np.arange(len(energy)) / 1000, energy, 0.2, 0.5)
    # One flash (or beep) a second, on the same grid before and after the rejoin: within the
    # publisher's frame interval for flashes. An OGG file counts samples, so a beep moves by a
    # whole packet (20 ms) or not at all: it moved once in a CI run, when the new connection
    # was placed from its fastest arrivals; paired packet by packet, 0-1 ms in 8 runs of 8.
    # (The first may be cut short by the file's start: the grid is taken from the second.)
    phases = [(f - flashes[1]) % 1.0 for f in flashes[1:]]
    drift = max(min(p, 1 - p) for p in phases)
    print(f"{kind} onsets {[round(f, 3) for f in flashes]}")
    assert len(flashes) >= duration(media) - 2, f"onsets {flashes}"
    assert drift <= (0.035 if kind == "video" else 0.003), f"onsets {flashes}"


def test_packet_loss_and_jitter_keep_sync_and_motion(lk_egret, livekit, publish, room):
    """livekit-server's packets delayed 50 ± 30 ms (uniform, reordered; tests/netdelay.py, a
    user-space netem: this kernel has none) from before the egress starts, and 5 % of them
    dropped for 30 s once it runs (nftables): lost packets are asked for again (NACK) in time
    for the jitter buffer, a broken frame asks for a keyframe (PLI), the flash and the beep of
    each second stay together, and the picture never freezes for a second.
    Before egret sent its feedback at once, NACKs left after the buffer had given their packet
    up and the video froze 2-3 s at a time. Before the delay was part of this test, the sound
    of a DTX publisher drifted 1.5 ms a second from its picture (silence left the audio mixer
    flagged GAP, and the resampler for AAC lost 1.5 ms at each GAP/sound change), and the
    first seconds were 40-60 ms out (timed by the jitter buffer's smoothing of arrival)."""
    egret = lk_egret
    pub = publish("--flash", "--ticker", "--dtx")
    jitter = Jitter(livekit, 50, 30)
    loss = None
    try:
        info = egret.api.start("participant", room_name=room, identity=pub.identity,
                               file_outputs=[{"filepath": "loss/{room_name}.mp4"}], **SMALL)
        eid = info["egress_id"]
        egret.api.wait_status(eid, "active")
        loss = PacketLoss(livekit, 5)
        egret.api.wait(eid, lambda i: i["duration"] >= 32, what="30 s under loss", timeout=60)
        dropped = loss.dropped()
    finally:
        if loss:
            loss.close()
        delayed = jitter.close()
    path, media, pairs, shown = stop_and_measure(egret, eid)
    still = longest_still(path)
    print(f"{delayed}; dropped {dropped} packets; longest still picture {still:.2f} s; pairs {shown}")
    assert dropped > 40, f"only {dropped} packets dropped"
    assert int(delayed.split()[-1]) > 1000, f"the delay line passed too little: {delayed}"
    # The first second is the start's: under 50 ms of delay the tracks can arrive after its
    # flash, or in the middle of its beep (read as +100 ms).
    pairs = [(t, o) for t, o in pairs if t > 1.5]
    times = [t for t, _ in pairs]
    # Every second after the start has its pair, 2 aside. In 10 runs of this code one second
    # lacked it, the second one, at the start; before the jitter buffer kept asking for a missing packet for 400 ms
    # (livekit::rtcp), flashes and beeps whose first packets were lost for good were missing
    # (up to 4 a run) or late (-80 to +94 ms).
    assert len(pairs) >= duration(media) - 4 and max(np.diff(times)) < 2.5, f"flash/beep pairs {shown}"
    # The bar, 60 ms for every pair (in those runs: within 44 ms), median 40 ms.
    offsets = [abs(o) for _, o in pairs]
    assert max(offsets) <= 0.060 and float(np.median(offsets)) <= 0.040, f"flash/beep pairs {shown}"
    assert still <= 1.0, f"the picture stood still for {still:.2f} s"


MEDIA_CUT_S = 20


def test_media_cut_recovers(lk_egret, livekit, publish, room):
    """All of livekit-server's UDP dropped for 20 s while signalling stays up (a media path that
    dies and comes back): the egress stays active, the picture and sound come back in step
    when the path does, and the file keeps one timeline (the cut is held, not cut out)."""
    egret = lk_egret
    pub = publish("--flash", "--ticker", "--dtx")
    info = egret.api.start("participant", room_name=room, identity=pub.identity,
                           file_outputs=[{"filepath": "mediacut/{room_name}.mp4"}], **SMALL)
    eid = info["egress_id"]
    egret.api.wait_status(eid, "active")
    egret.api.wait(eid, lambda i: i["duration"] >= 3, what="3 s recorded")
    cut = PacketLoss(livekit, 100)
    try:
        egret.api.wait(eid, lambda i: i["duration"] >= 3 + MEDIA_CUT_S, what="the cut", timeout=60)
        assert egret.api.get(eid)["status"] == "active"
    finally:
        cut.close()
    restored = egret.api.get(eid)["duration"]
    egret.api.wait(eid, lambda i: i["duration"] >= restored + 6, what="6 s more recorded", timeout=60)
    path, media, pairs, shown = stop_and_measure(egret, eid)
    print(f"media back at {restored:.1f} s; pairs {shown}")
    assert duration(media) >= restored + 5, "the cut was taken out of the file's timeline"
    after = [(t, o) for t, o in pairs if t > restored]
    assert len(after) >= 4 and after[0][0] < restored + 2.5, f"media did not come back: pairs {shown}"
    assert max(abs(o) for _, o in after) <= 0.080, f"flash/beep pairs {shown}"
