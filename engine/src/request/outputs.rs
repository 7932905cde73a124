//! What every output kind's request spec shares: LiveKit's upload target fields, the
//! codec/container check, stream URL rules. Each kind reads the rest itself
//! (`media/outputs/<kind>.rs`).

use serde_json::Value;

use super::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use super::fields::{FieldError, FieldResult, Obj};
use crate::storage::{AzureConfig, GcsConfig, S3Config, UploadConfig};

/// The upload target of one output: LiveKit's `s3`, `gcp`, `azure` or `ali_oss` fields (one
/// of them). What egret cannot honour (role assumption, a proxy) is refused by name rather
/// than ignored; a target that cannot even be opened (credentials that are not JSON) is a
/// request error too.
pub fn upload_target(o: &mut Obj) -> FieldResult<Option<UploadConfig>> {
    o.get("disable_manifest");
    let given: Vec<&'static str> =
        ["s3", "gcp", "azure", "ali_oss"].into_iter().filter(|k| o.get(k).is_some_and(|v| !v.is_null())).collect();
    if given.len() > 1 {
        return Err(FieldError::new(
            o.field_path(given[1]),
            format!("give one upload target, not {}", given.join(" and ")),
        ));
    }
    let Some(&kind) = given.first() else { return Ok(None) };
    let path = o.field_path(kind);
    let mut spec = Obj::new(o.get(kind).expect("given"), &path)?;
    let target = match kind {
        "s3" => UploadConfig::S3(s3_target(&mut spec)?),
        "gcp" => UploadConfig::Gcs(gcs_target(&mut spec)?),
        "azure" => UploadConfig::Azure(azure_target(&mut spec)?),
        _ => UploadConfig::S3(ali_oss_target(&mut spec)?),
    };
    spec.finish(&[])?;
    if let Err(e) = target.open() {
        return Err(FieldError::new(path, format!("{e:#}")));
    }
    Ok(Some(target))
}

fn required(o: &mut Obj, key: &'static str) -> FieldResult<String> {
    o.string(key)?.filter(|v| !v.is_empty()).ok_or_else(|| FieldError::new(o.field_path(key), "required"))
}

fn text(o: &mut Obj, key: &'static str) -> FieldResult<Option<String>> {
    Ok(o.string(key)?.filter(|v| !v.is_empty()))
}

/// Fields LiveKit has that egret cannot honour yet: refused when given a value.
fn refuse(o: &mut Obj, keys: &[&'static str]) -> FieldResult<()> {
    for key in keys {
        let given = o
            .get(key)
            .is_some_and(|v| !(v.is_null() || v == &Value::String(String::new()) || v == &serde_json::json!({})));
        if given {
            return Err(FieldError::new(o.field_path(key), "not supported yet"));
        }
    }
    Ok(())
}

fn http_url(o: &Obj, key: &str, url: &str) -> FieldResult<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(FieldError::new(o.field_path(key), "must be an http:// or https:// URL"))
    }
}

fn s3_target(s3: &mut Obj) -> FieldResult<S3Config> {
    let access_key = required(s3, "access_key")?;
    let secret = required(s3, "secret")?;
    let bucket = required(s3, "bucket")?;
    let given_region = text(s3, "region")?;
    let given_endpoint = text(s3, "endpoint")?;
    // Neither: AWS, in the bucket's own region (found before the first upload), as LiveKit.
    let find_region = given_region.is_none() && given_endpoint.is_none();
    let region = given_region.unwrap_or_else(|| "us-east-1".into());
    // No endpoint: AWS itself, as in LiveKit.
    let endpoint = match given_endpoint {
        None => S3Config::aws_endpoint(&region),
        // A bare host, as LiveKit's configs often give it: https.
        Some(host) if !host.contains("://") => format!("https://{host}"),
        Some(url) => url,
    };
    http_url(s3, "endpoint", &endpoint)?;
    let force_path_style = s3.bool("force_path_style")?.unwrap_or(false);
    refuse(s3, &["assume_role_arn", "assume_role_external_id", "proxy"])?;
    let session_token = text(s3, "session_token")?;
    let tagging = text(s3, "tagging")?;
    let content_disposition = text(s3, "content_disposition")?;
    for (key, value) in
        [("session_token", &session_token), ("tagging", &tagging), ("content_disposition", &content_disposition)]
    {
        if value.as_ref().is_some_and(|v| v.chars().any(|c| c.is_control())) {
            return Err(FieldError::new(s3.field_path(key), "holds a control character"));
        }
    }
    let mut metadata = std::collections::BTreeMap::new();
    if let Some(given) = s3.get("metadata").filter(|m| !m.is_null()) {
        let field = s3.field_path("metadata");
        let map = given.as_object().ok_or_else(|| FieldError::new(&field, "must be an object of strings"))?;
        for (key, value) in map {
            let Some(value) = value.as_str() else {
                return Err(FieldError::new(format!("{field}.{key}"), "must be a string"));
            };
            let usable = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !usable || value.chars().any(|c| c.is_control() || !c.is_ascii()) {
                return Err(FieldError::new(
                    format!("{field}.{key}"),
                    "keys are letters, digits, -, _ and .; values printable ASCII",
                ));
            }
            metadata.insert(key.clone(), value.to_string());
        }
    }
    Ok(S3Config {
        force_path_style,
        session_token,
        metadata,
        tagging,
        content_disposition,
        find_region,
        ..S3Config::new(endpoint, region, bucket, access_key, secret)
    })
}

/// Alibaba OSS through its S3-compatible API: virtual-hosted buckets on `endpoint`
/// (`oss-<region>.aliyuncs.com` when none is given).
fn ali_oss_target(oss: &mut Obj) -> FieldResult<S3Config> {
    let access_key = required(oss, "access_key")?;
    let secret = required(oss, "secret")?;
    let bucket = required(oss, "bucket")?;
    // LiveKit goes by the endpoint alone (`oss-<region>.aliyuncs.com`): the region is read
    // from it when not given.
    let given_endpoint = text(oss, "endpoint")?;
    let region = match text(oss, "region")? {
        Some(region) => region,
        None => given_endpoint
            .as_deref()
            .and_then(|e| e.split("://").last()?.strip_prefix("oss-")?.split('.').next().map(str::to_string))
            .ok_or_else(|| FieldError::new(oss.field_path("region"), "required (or an oss-<region> endpoint)"))?,
    };
    let endpoint = match given_endpoint {
        Some(e) if e.contains("://") => e,
        Some(host) => format!("https://{host}"),
        None => format!("https://oss-{region}.aliyuncs.com"),
    };
    http_url(oss, "endpoint", &endpoint)?;
    Ok(S3Config::new(endpoint, region, bucket, access_key, secret))
}

fn gcs_target(gcp: &mut Obj) -> FieldResult<GcsConfig> {
    let bucket = required(gcp, "bucket")?;
    refuse(gcp, &["proxy"])?;
    let credentials = text(gcp, "credentials")?.unwrap_or_default();
    if !credentials.is_empty() && serde_json::from_str::<serde_json::Map<String, Value>>(&credentials).is_err() {
        return Err(FieldError::new(gcp.field_path("credentials"), "must be a service account key file's JSON"));
    }
    Ok(GcsConfig { bucket, credentials })
}

fn azure_target(azure: &mut Obj) -> FieldResult<AzureConfig> {
    let account_name = required(azure, "account_name")?;
    let account_key = required(azure, "account_key")?;
    {
        use base64::Engine;
        if base64::engine::general_purpose::STANDARD.decode(&account_key).is_err() {
            return Err(FieldError::new(azure.field_path("account_key"), "must be the account's key (base64)"));
        }
    }
    let container_name = required(azure, "container_name")?;
    let endpoint = text(azure, "endpoint")?;
    if let Some(e) = &endpoint {
        http_url(azure, "endpoint", e)?;
    }
    Ok(AzureConfig { account_name, account_key, container_name, endpoint })
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
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                check_srt_option(key, value).map_err(|why| FieldError::new(field, format!("`{url}`: {why}")))?;
            }
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

/// One `key=value` of an SRT URL, as srtsink reads it: it ignores keys it does not know and
/// values it cannot parse, so a typo would silently stream with defaults (or fail only once
/// connecting).
fn check_srt_option(key: &str, value: &str) -> Result<(), String> {
    let number = |max: u64| value.parse::<u64>().ok().filter(|n| *n <= max).is_some();
    let ok = match key {
        "mode" => ["caller", "listener", "rendezvous"].contains(&value),
        "latency" | "rcvlatency" | "peerlatency" | "poll-timeout" => number(i32::MAX as u64),
        "localport" => number(u16::MAX as u64),
        "pbkeylen" => ["0", "16", "24", "32"].contains(&value),
        // libsrt's bounds: 10 to 79 characters.
        "passphrase" => (10..=79).contains(&value.chars().count()),
        "streamid" | "localaddress" => true,
        "authentication" | "auto-reconnect" | "keep-listening" | "wait-for-connection" => {
            ["true", "false", "1", "0"].contains(&value)
        }
        _ => {
            return Err(format!(
                "unknown SRT option `{key}` (known: mode, latency, rcvlatency, peerlatency, passphrase, pbkeylen, \
                 streamid, localaddress, localport, poll-timeout, authentication, auto-reconnect, keep-listening, \
                 wait-for-connection)"
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        let wanted = match key {
            "mode" => "caller, listener or rendezvous",
            "pbkeylen" => "0, 16, 24 or 32",
            "passphrase" => "10 to 79 characters",
            "localport" => "a port number",
            "authentication" | "auto-reconnect" | "keep-listening" | "wait-for-connection" => "true or false",
            _ => "a number of milliseconds",
        };
        Err(format!("SRT option `{key}` must be {wanted}, not `{value}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Location;
    use serde_json::json;

    fn target(output: Value) -> FieldResult<Option<UploadConfig>> {
        let output = crate::request::fields::snake_case_keys(output);
        let mut o = Obj::new(&output, "file_outputs[0]")?;
        upload_target(&mut o)
    }

    /// Virtual-hosted style (LiveKit's default) puts the bucket in the host, for AWS and any
    /// endpoint; Alibaba OSS as LiveKit SDKs send it (`aliOSS`, a bare endpoint, no region).
    #[test]
    fn buckets_go_where_each_cloud_wants_them() {
        let aws = json!({"s3": {"accessKey": "a", "secret": "s", "bucket": "rec", "region": "eu-west-1"}});
        let Some(UploadConfig::S3(s3)) = target(aws).unwrap() else { panic!("an S3 target") };
        assert_eq!(s3.url("a/b c.mp4"), "https://rec.s3.eu-west-1.amazonaws.com/a/b%20c.mp4");
        let oss = json!({"aliOSS": {"accessKey": "a", "secret": "s", "bucket": "rec", "endpoint": "oss-cn-hangzhou.aliyuncs.com"}});
        let Some(UploadConfig::S3(oss)) = target(oss).unwrap() else { panic!("an OSS target") };
        assert_eq!(oss.region, "cn-hangzhou");
        assert_eq!(oss.url("x.mp4"), "https://rec.oss-cn-hangzhou.aliyuncs.com/x.mp4");
        let path_style = json!({"s3": {"accessKey": "a", "secret": "s", "bucket": "rec", "endpoint": "http://127.0.0.1:9000", "forcePathStyle": true}});
        let Some(UploadConfig::S3(local)) = target(path_style).unwrap() else { panic!("an S3 target") };
        assert_eq!(local.url("x.mp4"), "http://127.0.0.1:9000/rec/x.mp4");
        // An IP endpoint cannot take the bucket in front: path style, whatever was asked.
        let ip = json!({"s3": {"accessKey": "a", "secret": "s", "bucket": "rec", "endpoint": "http://127.0.0.1:9000"}});
        let Some(UploadConfig::S3(ip)) = target(ip).unwrap() else { panic!("an S3 target") };
        assert_eq!(ip.url("x.mp4"), "http://127.0.0.1:9000/rec/x.mp4");
        let err = target(json!({"aliOSS": {"accessKey": "a", "secret": "s", "bucket": "rec"}})).unwrap_err();
        assert_eq!(err.field, "file_outputs[0].ali_oss.region");
    }

    #[test]
    fn srt_options_are_checked_by_name_and_value() {
        assert!(check_stream_url("srt://10.0.0.1:9000?streamid=a/b&latency=200&mode=caller", "u").is_ok());
        assert!(check_stream_url("srt://:9000?mode=listener&passphrase=0123456789&pbkeylen=16", "u").is_ok());
        for bad in [
            "srt://h:1?mode=bogus",
            "srt://h:1?latency=abc",
            "srt://h:1?passphrase=short",
            "srt://h:1?pbkeylen=7",
            "srt://h:1?latancy=20",
        ] {
            let err = check_stream_url(bad, "stream_outputs[0].urls[0]").unwrap_err();
            assert_eq!(err.field, "stream_outputs[0].urls[0]", "{bad}");
        }
    }
}
