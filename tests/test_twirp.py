"""LiveKit's Egress API served by egret, driven by LiveKit's own Python client (protobuf) and by
raw proto3 JSON (camelCase and snake_case, defaults left out, as the JS SDK sends it)."""

import asyncio
import json
import time

import pytest
from livekit import api

from conftest import API_KEY, API_SECRET
from egret_client import livekit_token
from livekit_harness import redacted
from media import duration, probe, probe_live, streams


def run(coro):
    return asyncio.run(coro)


async def with_client(egret, body):
    lk = api.LiveKitAPI(url=f"http://127.0.0.1:{egret.port}", api_key=API_KEY, api_secret=API_SECRET)
    try:
        return await body(lk)
    finally:
        await lk.aclose()


async def wait_info(lk, egress_id, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        (info,) = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items
        if predicate(info):
            return info
        assert time.monotonic() < deadline, f"not reached: {info}"
        await asyncio.sleep(0.1)


def test_python_client_start_list_update_stream_stop(egret, pages, nginx):
    first, second = nginx.url("twirp-a"), nginx.url("twirp-b")

    async def scenario(lk):
        request = api.WebEgressRequest(
            url=pages.url("animated.html?tone=440"),
            file_outputs=[api.EncodedFileOutput(file_type=api.EncodedFileType.MP4, filepath="twirp/web.mp4")],
            stream_outputs=[api.StreamOutput(protocol=api.StreamProtocol.RTMP, urls=[first])],
        )
        info = await lk.egress.start_web_egress(request)
        assert info.status == api.EGRESS_STARTING, info  # as LiveKit answers every start
        assert info.WhichOneof("request") == "web" and info.web.url == request.url
        assert info.source_type == api.EgressSourceType.EGRESS_SOURCE_TYPE_WEB
        eid = info.egress_id

        active = await wait_info(lk, eid, lambda i: i.status == api.EGRESS_ACTIVE)
        listed = (await lk.egress.list_egress(api.ListEgressRequest(active=True))).items
        assert eid in [i.egress_id for i in listed]
        assert active.started_at > 0 and [s.url for s in active.stream_results] == [redacted(first)]

        updated = await lk.egress.update_stream(api.UpdateStreamRequest(egress_id=eid, add_output_urls=[second]))
        assert sorted(s.url for s in updated.stream_results) == sorted([redacted(first), redacted(second)])
        await wait_info(lk, eid, lambda i: all(s.status == api.StreamInfo.ACTIVE and s.duration > 0 for s in i.stream_results))
        live = probe_live(second)
        assert {s["codec_name"] for s in live["streams"]} == {"h264", "aac"}

        removed = await lk.egress.update_stream(api.UpdateStreamRequest(egress_id=eid, remove_output_urls=[first]))
        by_url = {s.url: s for s in removed.stream_results}
        assert by_url[redacted(first)].status == api.StreamInfo.FINISHED
        assert by_url[redacted(second)].status == api.StreamInfo.ACTIVE

        stopped = await lk.egress.stop_egress(api.StopEgressRequest(egress_id=eid))
        assert stopped.status in (api.EGRESS_ENDING, api.EGRESS_COMPLETE)
        return await wait_info(lk, eid, lambda i: i.status == api.EGRESS_COMPLETE)

    final = run(with_client(egret, scenario))
    (file_result,) = final.file_results
    assert file_result.filename == "twirp/web.mp4" and file_result.size > 0 and file_result.duration > 1e9
    media = probe(file_result.location)
    assert abs(duration(media) - file_result.duration / 1e9) <= 0.5
    assert streams(media, "video")[0]["width"] == 1280
    assert final.ended_at >= final.started_at > 0


def post_json(egret, method, body, token=None):
    return egret.api.twirp(method, body, token)


@pytest.mark.parametrize("body", [
    # camelCase, enums by name, default values left out: what the JS SDK posts
    lambda url: {"url": url, "audioOnly": True, "fileOutputs": [{"fileType": "OGG", "filepath": "twirp/camel.ogg"}]},
    # snake_case, the deprecated single `file` output, an enum by number
    lambda url: {"url": url, "audio_only": True, "file": {"file_type": 2, "filepath": "twirp/snake.ogg"}},
])
def test_json_requests_in_either_case(egret, pages, body):
    status, content_type, info = post_json(egret, "StartWebEgress", body(pages.url("animated.html?tone=660")))
    assert status == 200 and content_type == "application/json", info
    eid = info["egressId"]
    # proto3 JSON leaves default values out: no "status" means EGRESS_STARTING (enum 0)
    assert "status" not in info, info  # STARTING, as LiveKit answers every start
    assert info["web"]["audioOnly"] is True
    egret.api.wait_status(eid, "active")
    time.sleep(1)
    status, _, stopped = post_json(egret, "StopEgress", {"egressId": eid})
    assert status == 200 and stopped["egressId"] == eid
    egret.api.wait_status(eid, "complete")
    status, _, listed = post_json(egret, "ListEgress", {"egress_id": eid})
    (item,) = listed["items"]
    assert item["status"] == "EGRESS_COMPLETE"
    (result,) = item["fileResults"]
    assert [s["codec_name"] for s in probe(result["location"])["streams"]] == ["opus"]


def test_twirp_errors(egret, pages):
    web = {"url": pages.url("animated.html"), "fileOutputs": [{"filepath": "twirp/e.mp4"}]}
    cases = [
        (post_json(egret, "StartWebEgress", web, token=""), 401, "unauthenticated"),
        (post_json(egret, "StartWebEgress", web, token=livekit_token(API_KEY, "wrong-secret-0123456789abcdefgh")), 401,
         "unauthenticated"),
        (post_json(egret, "StartWebEgress", web, token=livekit_token(API_KEY, API_SECRET, room_record=False)), 403,
         "permission_denied"),
        (post_json(egret, "StartWebEgress", b'{"url": '), 400, "malformed"),
        (post_json(egret, "StartWebEgress", {**web, "url": "ftp://x/y"}), 400, "invalid_argument"),
        (post_json(egret, "StartWebEgress", {"url": web["url"]}), 400, "invalid_argument"),
        (post_json(egret, "StopEgress", {"egressId": "EG_missing"}), 404, "not_found"),
        (post_json(egret, "StartRoomCompositeEgress", {"roomName": "r", "layout": "mosaic",
                                                        "fileOutputs": [{"filepath": "x.mp4"}]}), 400, "invalid_argument"),
        (post_json(egret, "NoSuchMethod", {}), 404, "bad_route"),
    ]
    for (status, content_type, body), want_status, want_code in cases:
        assert (status, body["code"]) == (want_status, want_code), body
        assert content_type == "application/json" and body["msg"]


def test_twirp_errors_name_the_field(egret, pages):
    """What LiveKit's decoder would only call a "duplicate field", a key that cannot be an
    Azure key and a page token egret never gave are each refused with the field named."""
    web = {"url": pages.url("animated.html")}
    s3 = {"accessKey": "a", "secret": "s", "bucket": "b", "endpoint": "http://127.0.0.1:9"}
    cases = [
        ("StartWebEgress", {**web, "fileOutputs": [{"filepath": "x.mp4", "s3": s3, "gcp": {"bucket": "b"}}]},
         "file_outputs[0].gcp"),
        ("StartWebEgress", {**web, "fileOutputs": [{"filepath": "x.mp4", "azure": {
            "accountName": "a", "accountKey": "not a key!", "containerName": "c"}}]},
         "file_outputs[0].azure.account_key"),
        ("StartWebEgress", {**web, "preset": "H264_720P_30", "advanced": {"width": 640},
                            "fileOutputs": [{"filepath": "x.mp4"}]}, "advanced"),
        ("ListEgress", {"pageToken": {"token": "EG_not_a_token"}}, "page_token"),
    ]
    for method, body, field in cases:
        status, _, reply = post_json(egret, method, body)
        assert (status, reply["code"]) == (400, "invalid_argument") and field in reply["msg"], (field, reply)
    # A token egret gave pages on, the empty one starts at the first page.
    status, _, listed = post_json(egret, "ListEgress", {"pageToken": {"token": ""}})
    assert status == 200 and "nextPageToken" not in listed, listed


def test_python_client_sees_twirp_errors(egret):
    async def scenario(lk):
        with pytest.raises(api.TwirpError) as failure:
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id="EG_missing"))
        return failure.value

    error = run(with_client(egret, scenario))
    assert error.code == "not_found" and error.status == 404


def test_unified_start_egress_runs_the_web_recipe(egret, pages):
    body = {"web": {"url": pages.url("animated.html?tone=440"), "audioOnly": True},
            "outputs": [{"file": {"fileType": "OGG", "filepath": "twirp/unified.ogg"}}]}
    status, _, info = post_json(egret, "StartEgress", body)
    assert status == 200, info
    eid = info["egressId"]
    egret.api.wait_status(eid, "active")
    post_json(egret, "StopEgress", {"egressId": eid})
    done = egret.api.wait_status(eid, "complete")
    assert done["recipe"] == "web"
    assert [s["codec_name"] for s in probe(egret.storage / "twirp/unified.ogg")["streams"]] == ["opus"]
    status, _, refused = post_json(egret, "StartEgress", {"outputs": []})
    assert (status, refused["code"]) == (400, "invalid_argument") and "source" in refused["msg"]


def test_js_server_sdk_egress_client(egret, pages, nginx):
    """The npm livekit-server-sdk EgressClient (proto3 JSON, camelCase), unchanged."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent / "js" / "egress_client.mjs"
    a, b = nginx.url("js-a"), nginx.url("js-b")
    out = subprocess.run(["node", str(script), f"http://127.0.0.1:{egret.port}", API_KEY, API_SECRET,
                          pages.url("animated.html"), a, b], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["requestCase"] == "web" and summary["listedActive"]
    streams_after = {s["url"]: s["status"] for s in summary["streamsAfterUpdate"]}
    assert streams_after == {redacted(a): 1, redacted(b): 0}, streams_after  # StreamInfo.Status: ACTIVE=0, FINISHED=1
    assert summary["stoppedStatus"] in ("EGRESS_ENDING", "EGRESS_COMPLETE")
    assert summary["finalStatus"] == "EGRESS_COMPLETE"
    (file_result,) = summary["file"]
    assert file_result["filename"] == "js/web.mp4" and file_result["size"] > 0
    assert {s["codec_name"] for s in probe(file_result["location"])["streams"]} == {"h264", "aac"}


def test_removing_the_last_stream_completes_the_egress(egret, nginx):
    """LiveKit ends a stream-only egress whose last URL is removed, complete; egret does too,
    whatever the recipe (here the test source, started on egret's own API)."""
    url = nginx.url("twirp-last")
    eid = egret.api.start("testsrc", stream_outputs=[{"urls": [url]}])["egress_id"]
    egret.api.wait(eid, lambda i: i["outputs"][0]["status"] == "active", what="stream active")

    status, _, removed = egret.api.twirp("UpdateStream", {"egressId": eid, "removeOutputUrls": [url]})
    assert status == 200, removed
    assert removed["streamResults"][0]["status"] == "FINISHED"

    final = egret.api.wait_status(eid, "complete", "failed", "aborted")
    assert final["status"] == "complete" and final["reason"] == "all streams stopped", final
    assert final["outputs"][0]["status"] == "complete" and final["outputs"][0]["bytes"] > 0
    status, _, again = egret.api.twirp("StopEgress", {"egressId": eid})
    assert status == 412 and again["code"] == "failed_precondition"


def test_update_stream_answers_as_livekit(egret, nginx):
    """UpdateStream checks everything before it changes anything: no streams to update, a URL
    streamed already or of the other protocol, a URL to remove that is not there."""
    files_only = egret.api.start("testsrc", file_outputs=[{"filepath": "twirp/us-file.mp4"}])["egress_id"]
    status, _, body = egret.api.twirp("UpdateStream", {"egressId": files_only, "addOutputUrls": [nginx.url("us-x")]})
    assert status == 400 and "non-streaming" in body["msg"], body
    url = nginx.url("us-a")
    eid = egret.api.start("testsrc", stream_outputs=[{"urls": [url]}])["egress_id"]
    egret.api.wait_status(eid, "active")
    for change, code, words in [
        ({"addOutputUrls": [url]}, 400, "streamed already"),
        ({"addOutputUrls": ["srt://127.0.0.1:9999"]}, 400, "streams RTMP"),
        ({"removeOutputUrls": [nginx.url("us-nobody")]}, 404, "not found"),
        ({"addOutputUrls": [nginx.url("us-b")], "removeOutputUrls": [nginx.url("us-nobody")]}, 404, "not found"),
    ]:
        status, _, body = egret.api.twirp("UpdateStream", {"egressId": eid, **change})
        assert status == code and words in body["msg"], (change, body)
    info = egret.api.get(eid)
    assert [o["target"] for o in info["outputs"]] == [url], "a refused update changed nothing"
    for e in (eid, files_only):
        egret.api.stop(e)
