"""The conformance matrix: every LiveKit request type with every output kind it takes, started
through livekit-server (egret as its egress worker) with LiveKit's Python client, and checked as
livekit/egress's own tests check them: by the EgressInfo livekit-server reports and by ffprobe on
what was written. Each request type asks for all its output kinds at once (LiveKit's "multi"
case), so one egress covers one row. The whole matrix runs twice in a row (`round`): a second
pass over the same worker catches state left behind by the first."""

import time

import numpy as np
import pytest
from livekit import api

from conftest import EgretProcess
from livekit_harness import PcmReceiver, redacted
from media import duration, probe, probe_live, streams

SIZE = {"width": 640, "height": 360}
ADVANCED = api.EncodingOptions(framerate=30, **SIZE)
MEDIA_S = 4  # seconds of media each egress records after its stream plays


@pytest.fixture(scope="module")
def matrix_worker(tmp_path_factory, livekit):
    """One worker for the whole matrix: both rounds reuse it."""
    worker = EgretProcess(tmp_path_factory.mktemp("matrix"), livekit.worker_config("[worker]\ncpus = 4\n"))
    yield worker
    worker.stop()


def encoded_outputs(prefix, nginx):
    """File, segments, stream and images: the outputs of a transcoding egress."""
    url = nginx.url(f"{prefix.replace('/', '-')}-key0123")
    return url, {
        "file_outputs": [api.EncodedFileOutput(filepath=f"{prefix}/file.mp4")],
        "segment_outputs": [api.SegmentedFileOutput(filename_prefix=f"{prefix}/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)],
        "stream_outputs": [api.StreamOutput(protocol=api.StreamProtocol.RTMP, urls=[url])],
        "image_outputs": [api.ImageOutput(capture_interval=1, filename_prefix=f"{prefix}/img/i", **SIZE)],
    }


def request_for(kind, outputs, room, pub, pages):
    """(start call, expected source type, echoed request field) for one row of the matrix."""
    common = {"advanced": ADVANCED, **outputs}
    if kind == "room_composite":
        req = api.RoomCompositeEgressRequest(room_name=room, layout="grid", **common)
        return (lambda lk: lk.egress.start_room_composite_egress(req)), api.EgressSourceType.EGRESS_SOURCE_TYPE_WEB
    if kind == "web":
        req = api.WebEgressRequest(url=pages.url("animated.html?tone=440"), **common)
        return (lambda lk: lk.egress.start_web_egress(req)), api.EgressSourceType.EGRESS_SOURCE_TYPE_WEB
    if kind == "participant":
        req = api.ParticipantEgressRequest(room_name=room, identity=pub.identity, **common)
        return (lambda lk: lk.egress.start_participant_egress(req)), api.EgressSourceType.EGRESS_SOURCE_TYPE_SDK
    req = api.TrackCompositeEgressRequest(room_name=room, audio_track_id=pub.tracks["audio"],
                                          video_track_id=pub.tracks["video"], **common)
    return (lambda lk: lk.egress.start_track_composite_egress(req)), api.EgressSourceType.EGRESS_SOURCE_TYPE_SDK


def check_ended(info, kind, room):
    """What livekit/egress's tests check on every EgressInfo (verifyFile and friends)."""
    assert info.status == api.EGRESS_COMPLETE, info
    assert info.error == "" and info.details == "End reason: StopEgress API", info
    assert info.started_at > 0 and info.ended_at >= info.started_at, info
    assert info.WhichOneof("request") == kind, info
    if kind == "web":
        assert info.room_name == "" and info.room_id == "", info
    else:
        assert info.room_name == room and info.room_id.startswith("RM_"), info


def check_file(info):
    (result,) = info.file_results
    assert result.size > 0 and result.duration > 0 and "{" not in result.filename, result
    media = probe(result.location)
    assert sorted(s["codec_name"] for s in media["streams"]) == ["aac", "h264"], media["streams"]
    (video,) = streams(media, "video")
    assert (video["width"], video["height"]) == (SIZE["width"], SIZE["height"]), video
    (audio,) = streams(media, "audio")
    assert audio["channels"] == 2, audio
    assert abs(duration(media) - result.duration / 1e9) <= 5, (duration(media), result)  # LiveKit's ±5 s


def check_segments(info):
    (result,) = info.segment_results
    assert result.size > 0 and result.duration > 0 and result.segment_count >= 2, result
    assert "{" not in result.playlist_name and result.playlist_name.endswith("/hls/index.m3u8"), result
    playlist = open(result.playlist_location).read()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist and playlist.rstrip().endswith("#EXT-X-ENDLIST"), playlist
    assert playlist.count("#EXTINF") == result.segment_count, playlist
    media = probe(result.playlist_location)
    assert {s["codec_name"] for s in media["streams"]} == {"h264", "aac"}, media["streams"]
    assert abs(np.ceil(duration(media) / 2) - result.segment_count) <= 1, (duration(media), result)


def check_stream(info, url):
    (result,) = info.stream_results
    assert result.url == redacted(url) and result.status == api.StreamInfo.FINISHED, result
    assert result.started_at > 0 and result.ended_at > result.started_at and result.duration > 0, result


def check_images(info, storage):
    (result,) = info.image_results
    assert result.image_count >= 2, result
    for n in range(result.image_count):
        path = storage / f"{result.filename_prefix}_{n:05d}.jpeg"
        (picture,) = streams(probe(path), "video")
        assert picture["codec_name"] == "mjpeg" and (picture["width"], picture["height"]) == (640, 360), picture


@pytest.mark.parametrize("round", [1, 2])
@pytest.mark.parametrize("kind", ["room_composite", "web", "participant", "track_composite"])
def test_encoded_request_to_every_output(matrix_worker, livekit, nginx, pages, publish, room, kind, round):
    pub = publish("--codec", "h264", identity=f"matrix-{round}")
    url, outputs = encoded_outputs(f"matrix/{kind}-{round}", nginx)
    start, source_type = request_for(kind, outputs, room, pub, pages)
    info = livekit.call(start)
    assert info.status == api.EGRESS_STARTING and info.source_type == source_type, info
    livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=60)
    assert streams(probe_live(url), "video"), "the stream plays"
    time.sleep(MEDIA_S)  # media time
    livekit.call(lambda lk: lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id)))
    final = livekit.wait_egress(info.egress_id, "EGRESS_COMPLETE", "EGRESS_FAILED", "EGRESS_ABORTED", timeout=60)
    check_ended(final, kind, room)
    assert final.source_type == source_type, final
    check_file(final)
    check_segments(final)
    check_stream(final, url)
    check_images(final, matrix_worker.storage)


@pytest.mark.parametrize("round", [1, 2])
def test_track_request_to_file_and_websocket(matrix_worker, livekit, publish, room, round):
    """Track egress takes a file (no transcoding: the track's own codec) or a websocket (raw PCM)."""
    pub = publish("--codec", "h264", identity=f"matrix-track-{round}")
    file_request = api.TrackEgressRequest(room_name=room, track_id=pub.tracks["video"],
                                          file=api.DirectFileOutput(filepath=f"matrix/track-{round}/{{track_id}}"))
    with PcmReceiver() as rx:
        ws_url = rx.url("/pcm")
        ws_request = api.TrackEgressRequest(room_name=room, track_id=pub.tracks["audio"], websocket_url=ws_url)
        started = [livekit.call(lambda lk, r=r: lk.egress.start_track_egress(r)) for r in (file_request, ws_request)]
        for info in started:
            assert info.source_type == api.EgressSourceType.EGRESS_SOURCE_TYPE_SDK, info
            livekit.wait_egress(info.egress_id, "EGRESS_ACTIVE", timeout=60)
        time.sleep(MEDIA_S)  # media time
        for info in started:
            livekit.call(lambda lk, i=info: lk.egress.stop_egress(api.StopEgressRequest(egress_id=i.egress_id)))
        finals = [livekit.wait_egress(i.egress_id, "EGRESS_COMPLETE", "EGRESS_FAILED", timeout=60) for i in started]
        assert rx.closed.wait(10), "the websocket was not closed at the end"
    for final in finals:
        check_ended(final, "track", room)
    file_final, ws_final = finals
    # A track egress fills the legacy single result too.
    assert file_final.WhichOneof("result") == "file" and file_final.file.size > 0, file_final
    media = probe(file_final.file.location)
    assert [s["codec_name"] for s in media["streams"]] == ["h264"], media["streams"]
    assert duration(media) > MEDIA_S - 1, media["format"]
    (stream,) = ws_final.stream_results
    assert stream.url == ws_url and stream.status == api.StreamInfo.FINISHED, stream
    seconds = rx.seconds()
    assert abs(seconds - stream.duration / 1e9) < 4.1 and seconds > MEDIA_S - 1, (seconds, stream)
