//! What every output kind's request spec shares: LiveKit's upload target fields, the
//! codec/container check, stream URL rules. Each kind reads the rest itself
//! (`media/outputs/<kind>.rs`).

use serde_json::Value;

use super::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use super::fields::{FieldError, FieldResult, Obj};
use crate::storage::S3Config;

/// The upload target of one output: LiveKit's `s3` (S3Upload) fields. Other clouds and the
/// S3 options egret cannot honour yet are refused by name rather than ignored.
pub fn upload_target(o: &mut Obj) -> FieldResult<Option<S3Config>> {
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

/// An unsupported codec/container pair is a request error, named at the container's field.
pub fn check_codecs(
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

pub fn check_stream_url(url: &str, field: &str) -> FieldResult<()> {
    if url.chars().any(char::is_control) {
        return Err(FieldError::new(field, "holds a control character; URLs are plain text"));
    }
    if let Some(rest) = url.strip_prefix("srt://") {
        // srt://host:port[?streamid=...&mode=...], or srt://:port?mode=listener
        let authority = rest.split(['?', '/']).next().unwrap_or_default();
        let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).filter(|p| *p > 0);
        if port.is_none() {
            return Err(FieldError::new(field, format!("`{url}` needs a port (srt://host:port)")));
        }
        return Ok(());
    }
    let rest = url
        .strip_prefix("rtmp://")
        .or_else(|| url.strip_prefix("rtmps://"))
        .ok_or_else(|| FieldError::new(field, format!("`{url}` is not an rtmp://, rtmps:// or srt:// URL")))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !rest.contains('/') {
        return Err(FieldError::new(field, format!("`{url}` needs a host and an application path")));
    }
    Ok(())
}
