//! Output kinds read from a request: every registered kind, in order, each error naming its field.

use super::*;
use serde_json::json;

fn parse(v: Value) -> FieldResult<Vec<Output>> {
    let settings = EncodeSettings::from_request(&v)?;
    parse_outputs(&v, &settings)
}

#[test]
fn every_kind_parses() {
    let outs = parse(json!({
        "file_outputs": [{"filepath": "a/{egress_id}.webm"}],
        "segment_outputs": [{"filename_prefix": "hls/seg", "playlist_name": "hls/index.m3u8"}],
        "stream_outputs": [{"urls": ["rtmp://127.0.0.1/live/a", "rtmps://h/app/key"]}],
        "image_outputs": [{"capture_interval": 2, "width": 320, "height": 180}],
        "websocket_url": "ws://127.0.0.1:9/pcm",
    }))
    .unwrap();
    let fields: Vec<&str> = outs.iter().map(|o| o.field.as_str()).collect();
    assert_eq!(
        fields,
        ["file_outputs[0]", "segment_outputs[0]", "stream_outputs[0]", "image_outputs[0]", "websocket_url"]
    );
    assert!(format!("{:?}", outs[0].spec).contains("file_type: Webm"), "{:?}", outs[0].spec);
}

#[test]
fn every_registered_field_is_read_by_its_kind() {
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    assert_eq!(names, ["file", "segments", "stream", "images", "websocket"]);
    let fields: Vec<&str> = request_fields().collect();
    assert_eq!(fields, ["file_outputs", "segment_outputs", "stream_outputs", "image_outputs", "websocket_url"]);
}

#[test]
fn errors_name_their_field() {
    let cases = [
        (json!({}), "file_outputs"),
        (json!({"file_outputs": [{"filepath": "../x.mp4"}]}), "file_outputs[0].filepath"),
        (json!({"file_outputs": [{"filepath": "/etc/x.mp4"}]}), "file_outputs[0].filepath"),
        (
            json!({"file_outputs": [{"file_type": "OGG"}], "advanced": {"audio_codec": "AAC"}}),
            "file_outputs[0].file_type",
        ),
        (
            json!({"file_outputs": [{"filepath": "x.mp4"}], "advanced": {"video_codec": "VP8"}}),
            "file_outputs[0].file_type",
        ),
        (json!({"stream_outputs": [{"urls": ["http://x/y"]}]}), "stream_outputs[0].urls[0]"),
        (json!({"image_outputs": [{}]}), "image_outputs[0].capture_interval"),
        (json!({"file_outputs": [{"filepath": "x.mp4", "colour": 1}]}), "file_outputs[0].colour"),
        (json!({"websocket_url": "http://x"}), "websocket_url"),
    ];
    for (request, field) in cases {
        assert_eq!(parse(request.clone()).unwrap_err().field, field, "{request}");
    }
}
