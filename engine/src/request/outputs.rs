//! The outputs of a request, named as in LiveKit's egress requests: `file_outputs`,
//! `segment_outputs`, `stream_outputs`, `image_outputs`. Checked before anything starts.

use serde_json::Value;

use super::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use super::fields::{FieldError, FieldResult, Obj};
use super::filepath::check_relative;
use crate::storage::S3Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Mp4,
    Ogg,
    Webm,
}

impl FileType {
    pub fn extension(self) -> &'static str {
        match self {
            FileType::Mp4 => ".mp4",
            FileType::Ogg => ".ogg",
            FileType::Webm => ".webm",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileOutput {
    pub file_type: FileType,
    /// A filepath template (`{egress_id}`, `{time}`...), relative to the storage directory.
    pub filepath: String,
    pub upload: Option<S3Config>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOutput {
    pub filename_prefix: String,
    pub playlist_name: String,
    pub live_playlist_name: Option<String>,
    pub segment_duration: u32,
    pub timestamp_suffix: bool,
    pub upload: Option<S3Config>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutput {
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSuffix {
    Index,
    Timestamp,
    Overwrite,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageOutput {
    pub capture_interval: u32,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub filename_prefix: String,
    pub suffix: ImageSuffix,
    pub upload: Option<S3Config>,
}

/// One output of any kind, with the request field it came from (for errors and status).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputSpec {
    File(FileOutput),
    Segments(SegmentOutput),
    Stream(StreamOutput),
    Images(ImageOutput),
    /// Raw PCM (s16le, 48 kHz, mono) in binary websocket messages, as LiveKit's track egress.
    Websocket(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub field: String,
    pub spec: OutputSpec,
}

pub const OUTPUT_FIELDS: &[&str] =
    &["file_outputs", "segment_outputs", "stream_outputs", "image_outputs", "websocket_url"];

const FILE_TYPES: &[&str] = &["DEFAULT_FILETYPE", "MP4", "OGG", "MP3", "WEBM"];

/// Reads every output of a request. At least one is required.
pub fn parse_outputs(request: &Value, settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut obj = Obj::new(request, "")?;
    let mut outputs = Vec::new();
    for (i, v) in obj.array("file_outputs")?.iter().enumerate() {
        let field = format!("file_outputs[{i}]");
        outputs.push(Output { spec: OutputSpec::File(parse_file(v, &field, settings)?), field });
    }
    for (i, v) in obj.array("segment_outputs")?.iter().enumerate() {
        let field = format!("segment_outputs[{i}]");
        outputs.push(Output { spec: OutputSpec::Segments(parse_segments(v, &field, settings)?), field });
    }
    for (i, v) in obj.array("stream_outputs")?.iter().enumerate() {
        let field = format!("stream_outputs[{i}]");
        outputs.push(Output { spec: OutputSpec::Stream(parse_stream(v, &field, settings)?), field });
    }
    for (i, v) in obj.array("image_outputs")?.iter().enumerate() {
        let field = format!("image_outputs[{i}]");
        outputs.push(Output { spec: OutputSpec::Images(parse_images(v, &field)?), field });
    }
    if let Some(url) = obj.string("websocket_url")?.filter(|u| !u.is_empty()) {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(FieldError::new("websocket_url", format!("`{url}` is not a ws:// or wss:// URL")));
        }
        outputs.push(Output { spec: OutputSpec::Websocket(url), field: "websocket_url".into() });
    }
    if outputs.is_empty() {
        return Err(FieldError::new(
            "file_outputs",
            "no output: give at least one of file_outputs, segment_outputs, stream_outputs, image_outputs, websocket_url",
        ));
    }
    Ok(outputs)
}

/// The upload target of one output: LiveKit's `s3` (S3Upload) fields. Other clouds and the
/// S3 options egret cannot honour yet are refused by name rather than ignored.
fn upload_target(o: &mut Obj) -> FieldResult<Option<S3Config>> {
    o.get("disable_manifest");
    for key in ["gcp", "azure", "ali_oss", "alioss"] {
        if o.get(key).is_some() {
            return Err(FieldError::new(o.field_path(key), "only s3 uploads are supported"));
        }
    }
    let path = o.field_path("s3");
    let Some(value) = o.get("s3") else { return Ok(None) };
    let mut s3 = Obj::new(value, &path)?;
    let required = |s3: &mut Obj, key: &'static str| -> FieldResult<String> {
        s3.string(key)?.filter(|v| !v.is_empty()).ok_or_else(|| FieldError::new(s3.field_path(key), "required"))
    };
    let access_key = required(&mut s3, "access_key")?;
    let secret = required(&mut s3, "secret")?;
    let bucket = required(&mut s3, "bucket")?;
    let endpoint = required(&mut s3, "endpoint")?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(FieldError::new(s3.field_path("endpoint"), "must be an http:// or https:// URL"));
    }
    let region = s3.string("region")?.filter(|r| !r.is_empty()).unwrap_or_else(|| "us-east-1".into());
    let force_path_style = s3.bool("force_path_style")?.unwrap_or(false);
    for key in
        ["session_token", "assume_role_arn", "assume_role_external_id", "tagging", "content_disposition", "proxy"]
    {
        if s3.get(key).is_some_and(|v| v != &Value::String(String::new())) {
            return Err(FieldError::new(s3.field_path(key), "not supported yet"));
        }
    }
    if s3.get("metadata").is_some_and(|m| m.as_object().is_some_and(|m| !m.is_empty())) {
        return Err(FieldError::new(s3.field_path("metadata"), "not supported yet"));
    }
    s3.finish(&[])?;
    Ok(Some(S3Config { endpoint, region, bucket, access_key, secret, force_path_style }))
}

fn parse_file(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<FileOutput> {
    let mut o = Obj::new(v, field)?;
    let filepath = o.string("filepath")?.unwrap_or_default();
    let from_extension = [FileType::Mp4, FileType::Ogg, FileType::Webm]
        .into_iter()
        .find(|t| filepath.to_ascii_lowercase().ends_with(t.extension()));
    let file_type = match o.enumeration("file_type", FILE_TYPES)? {
        None | Some(0) => from_extension.unwrap_or(FileType::Mp4),
        Some(1) => FileType::Mp4,
        Some(2) => FileType::Ogg,
        Some(4) => FileType::Webm,
        Some(_) => {
            return Err(FieldError::new(o.field_path("file_type"), "MP3 is not supported; use MP4, OGG or WEBM"));
        }
    };
    check_relative(&filepath, &o.field_path("filepath"))?;
    let upload = upload_target(&mut o)?;
    let (video_ok, audio_ok): (&[VideoCodec], &[AudioCodec]) = match file_type {
        FileType::Mp4 => (&[VideoCodec::H264], &[AudioCodec::Aac, AudioCodec::Opus]),
        FileType::Ogg => (&[], &[AudioCodec::Opus]),
        FileType::Webm => (&[VideoCodec::Vp8], &[AudioCodec::Opus]),
    };
    check_codecs(settings, video_ok, audio_ok, &format!("{field}.file_type"), container_name(file_type))?;
    o.finish(&[])?;
    Ok(FileOutput { file_type, filepath, upload })
}

fn container_name(t: FileType) -> &'static str {
    match t {
        FileType::Mp4 => "MP4",
        FileType::Ogg => "OGG",
        FileType::Webm => "WEBM",
    }
}

/// An unsupported codec/container pair is a request error, named at the container's field.
fn check_codecs(
    settings: &EncodeSettings,
    video_ok: &[VideoCodec],
    audio_ok: &[AudioCodec],
    field: &str,
    container: &str,
) -> FieldResult<()> {
    if let Some(v) = settings.video_codec
        && !video_ok.contains(&v)
    {
        let allowed = if video_ok.is_empty() { "no video".to_string() } else { format!("{video_ok:?}") };
        return Err(FieldError::new(field, format!("{container} cannot hold {v:?} video (allowed: {allowed})")));
    }
    if let Some(a) = settings.audio_codec
        && !audio_ok.contains(&a)
    {
        return Err(FieldError::new(field, format!("{container} cannot hold {a:?} audio (allowed: {audio_ok:?})")));
    }
    Ok(())
}

fn parse_segments(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<SegmentOutput> {
    let mut o = Obj::new(v, field)?;
    if let Some(p) = o.enumeration("protocol", &["DEFAULT_SEGMENTED_FILE_PROTOCOL", "HLS_PROTOCOL"])? {
        let _ = p; // both mean HLS
    }
    let filename_prefix = o.string("filename_prefix")?.unwrap_or_default();
    let playlist_name = o.string("playlist_name")?.unwrap_or_default();
    let live_playlist_name = o.string("live_playlist_name")?.filter(|s| !s.is_empty());
    for (key, value) in [("filename_prefix", &filename_prefix), ("playlist_name", &playlist_name)] {
        check_relative(value, &o.field_path(key))?;
    }
    if let Some(live) = &live_playlist_name {
        check_relative(live, &o.field_path("live_playlist_name"))?;
        if live.contains('/') {
            return Err(FieldError::new(
                o.field_path("live_playlist_name"),
                "must be a file name beside playlist_name",
            ));
        }
    }
    let segment_duration = match o.uint("segment_duration")? {
        None | Some(0) => 4,
        Some(d) if d <= 60 => d,
        Some(_) => {
            return Err(FieldError::new(o.field_path("segment_duration"), "must be at most 60 seconds"));
        }
    };
    let timestamp_suffix = o.enumeration("filename_suffix", &["INDEX", "TIMESTAMP"])? == Some(1);
    let upload = upload_target(&mut o)?;
    check_codecs(settings, &[VideoCodec::H264], &[AudioCodec::Aac], field, "HLS (MPEG-TS)")?;
    o.finish(&[])?;
    Ok(SegmentOutput { filename_prefix, playlist_name, live_playlist_name, segment_duration, timestamp_suffix, upload })
}

fn parse_stream(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<StreamOutput> {
    let mut o = Obj::new(v, field)?;
    if o.enumeration("protocol", &["DEFAULT_PROTOCOL", "RTMP", "SRT"])? == Some(2) {
        return Err(FieldError::new(o.field_path("protocol"), "SRT is not supported yet; use RTMP"));
    }
    let mut urls = Vec::new();
    for (i, u) in o.array("urls")?.iter().enumerate() {
        let path = format!("{field}.urls[{i}]");
        let url = u.as_str().ok_or_else(|| FieldError::new(&path, "must be a string"))?;
        check_stream_url(url, &path)?;
        urls.push(url.to_string());
    }
    if urls.is_empty() {
        return Err(FieldError::new(o.field_path("urls"), "at least one rtmp:// or rtmps:// URL is required"));
    }
    check_codecs(settings, &[VideoCodec::H264], &[AudioCodec::Aac], field, "RTMP (FLV)")?;
    o.finish(&[])?;
    Ok(StreamOutput { urls })
}

pub fn check_stream_url(url: &str, field: &str) -> FieldResult<()> {
    let rest = url
        .strip_prefix("rtmp://")
        .or_else(|| url.strip_prefix("rtmps://"))
        .ok_or_else(|| FieldError::new(field, format!("`{url}` is not an rtmp:// or rtmps:// URL")))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !rest.contains('/') {
        return Err(FieldError::new(field, format!("`{url}` needs a host and an application path")));
    }
    Ok(())
}

fn parse_images(v: &Value, field: &str) -> FieldResult<ImageOutput> {
    let mut o = Obj::new(v, field)?;
    let capture_interval = match o.uint("capture_interval")? {
        None | Some(0) => {
            return Err(FieldError::new(o.field_path("capture_interval"), "required: seconds between snapshots"));
        }
        Some(n) => n,
    };
    let width = o.uint("width")?.filter(|w| *w > 0);
    let height = o.uint("height")?.filter(|h| *h > 0);
    for (key, value) in [("width", width), ("height", height)] {
        if let Some(n) = value
            && (n % 2 != 0 || !(16..=3840).contains(&n))
        {
            return Err(FieldError::new(o.field_path(key), "must be even, within 16..=3840"));
        }
    }
    let filename_prefix = o.string("filename_prefix")?.unwrap_or_default();
    check_relative(&filename_prefix, &o.field_path("filename_prefix"))?;
    let suffix = match o.enumeration(
        "filename_suffix",
        &["IMAGE_SUFFIX_INDEX", "IMAGE_SUFFIX_TIMESTAMP", "IMAGE_SUFFIX_NONE_OVERWRITE"],
    )? {
        Some(1) => ImageSuffix::Timestamp,
        Some(2) => ImageSuffix::Overwrite,
        _ => ImageSuffix::Index,
    };
    o.enumeration("image_codec", &["IC_DEFAULT", "IC_JPEG"])?; // JPEG either way
    let upload = upload_target(&mut o)?;
    o.finish(&[])?;
    Ok(ImageOutput { capture_interval, width, height, filename_prefix, suffix, upload })
}

#[cfg(test)]
mod tests {
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
        }))
        .unwrap();
        assert_eq!(outs.len(), 4);
        assert!(matches!(&outs[0].spec, OutputSpec::File(f) if f.file_type == FileType::Webm));
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
        ];
        for (request, field) in cases {
            assert_eq!(parse(request.clone()).unwrap_err().field, field, "{request}");
        }
    }
}
