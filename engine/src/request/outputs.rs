//! What every output kind's request spec shares: LiveKit's upload target fields, the
//! codec/container check, stream URL rules. Each kind reads the rest itself
//! (`media/outputs/<kind>.rs`).

use serde_json::Value;

use super::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use super::fields::{FieldError, FieldResult, Obj};
use crate::storage::S3Config;

/// The upload target of one output: LiveKit's `s3` (S3Upload) fields. Other clouds and the
/// S3 options egret cannot honour (role assumption, a proxy) are refused by name rather than
/// ignored.
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
    for key in ["assume_role_arn", "assume_role_external_id", "proxy"] {
        let given = s3.get(key).is_some_and(|v| !(v.is_null() || v == &Value::String(String::new())));
        if given {
            return Err(FieldError::new(s3.field_path(key), "not supported yet"));
        }
    }
    let text = |s3: &mut Obj, key: &'static str| -> FieldResult<Option<String>> {
        Ok(s3.string(key)?.filter(|v| !v.is_empty()))
    };
    let session_token = text(&mut s3, "session_token")?;
    let tagging = text(&mut s3, "tagging")?;
    let content_disposition = text(&mut s3, "content_disposition")?;
    if let Some(bad) = [&session_token, &tagging, &content_disposition]
        .into_iter()
        .flatten()
        .find(|v| v.chars().any(|c| c.is_control()))
    {
        return Err(FieldError::new(s3.field_path("tagging"), format!("`{bad}` holds a control character")));
    }
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(given) = s3.get("metadata").filter(|m| !m.is_null()) {
        let field = s3.field_path("metadata");
        let map = given.as_object().ok_or_else(|| FieldError::new(&field, "must be an object of strings"))?;
        for (key, value) in map {
            let Some(value) = value.as_str() else {
                return Err(FieldError::new(format!("{field}.{key}"), "must be a string"));
            };
            let usable = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !usable || value.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(FieldError::new(
                    format!("{field}.{key}"),
                    "keys are letters, digits, - and _; values printable ASCII",
                ));
            }
            metadata.insert(key.clone(), value.to_string());
        }
    }
    s3.finish(&[])?;
    Ok(Some(S3Config {
        endpoint,
        region,
        bucket,
        access_key,
        secret,
        force_path_style,
        session_token,
        metadata,
        tagging,
        content_disposition,
    }))
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
