//! An egress read back as LiveKit's `EgressInfo`: status, end reason and error code, the
//! results of each output, and the request echoed with its secrets redacted.

use std::path::Path;

use livekit_protocol as lk;
use serde_json::{Value, json};

use super::by_recipe;
use crate::egress::{EgressSnapshot, EgressStatus};
use crate::errors::ErrorKind;
use crate::media::outputs::ResultContext;
use crate::media::outputs::stream::redact_stream_url;

fn nanos(seconds: Option<f64>) -> i64 {
    seconds.map(|s| (s * 1e9) as i64).unwrap_or(0)
}

/// LiveKit's status for an egress status.
pub fn status(snapshot: &EgressSnapshot) -> lk::EgressStatus {
    match snapshot.status {
        EgressStatus::Starting => lk::EgressStatus::EgressStarting,
        EgressStatus::Active => lk::EgressStatus::EgressActive,
        EgressStatus::Ending => lk::EgressStatus::EgressEnding,
        EgressStatus::Complete if snapshot.limit_reached() => lk::EgressStatus::EgressLimitReached,
        EgressStatus::Complete => lk::EgressStatus::EgressComplete,
        EgressStatus::Failed => lk::EgressStatus::EgressFailed,
        EgressStatus::Aborted => lk::EgressStatus::EgressAborted,
    }
}

/// An egress as LiveKit's EgressInfo, now.
pub fn info_of(record: &crate::egress::EgressRecord, storage: &Path) -> lk::EgressInfo {
    egress_info(&record.snapshot(), record.livekit_request.as_ref(), storage)
}

/// The EgressInfo a start request is answered with. LiveKit answers every start STARTING (its
/// handler has only launched the pipeline then); egret answers once the recipe's start returned,
/// when media may already flow, so a client that checks the answer sees the same status.
pub fn start_answer(record: &crate::egress::EgressRecord, storage: &Path) -> lk::EgressInfo {
    let mut info = info_of(record, storage);
    if !record.status().is_terminal() {
        info.status = lk::EgressStatus::EgressStarting as i32;
    }
    info
}

/// EgressInfo as LiveKit fills it, from egret's view of the egress.
pub fn egress_info(snapshot: &EgressSnapshot, original: Option<&Value>, storage: &Path) -> lk::EgressInfo {
    let kind = by_recipe(&snapshot.recipe);
    let ctx = ResultContext { started_at: nanos(snapshot.started_at), ended_at: nanos(snapshot.ended_at), storage };
    let param = |name: &str| snapshot.params.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let (details, error) = end_reason(snapshot);
    // As it came through LiveKit's API, else (egret's own API) from the params.
    let echoed = original.cloned().or_else(|| kind.map(|k| json!({ k.recipe: snapshot.params })));
    let echo = echoed.and_then(|r| serde_json::from_value::<lk::EgressInfo>(redact(r)).ok()).and_then(|i| i.request);
    let mut info = lk::EgressInfo {
        egress_id: snapshot.egress_id.clone(),
        room_id: snapshot.room_id.clone().unwrap_or_default(),
        room_name: param("room_name"),
        source_type: kind.map_or(lk::EgressSourceType::Web, |k| k.source_type) as i32,
        status: status(snapshot) as i32,
        // LiveKit: when the request was taken, never changed (outputs carry media times).
        started_at: nanos(Some(snapshot.created_at)),
        ended_at: ctx.ended_at,
        updated_at: nanos(Some(snapshot.updated_at)),
        error,
        error_code: error_code(snapshot),
        details,
        request: echo,
        manifest_location: snapshot.manifest_location.clone().unwrap_or_default(),
        ..Default::default()
    };
    for output in &snapshot.outputs {
        info.backup_storage_used |= output.backup.is_some();
        (output.kind.livekit_result)(output, &ctx, &mut info);
    }
    info.result = legacy_result(&info, snapshot.recipe == "track");
    info
}

/// The deprecated single result, as LiveKit still fills it: when the egress has exactly one
/// kind of output besides images (a track egress always).
#[allow(deprecated)]
fn legacy_result(info: &lk::EgressInfo, track: bool) -> Option<lk::egress_info::Result> {
    use lk::egress_info::Result as R;
    let kinds = [!info.file_results.is_empty(), !info.stream_results.is_empty(), !info.segment_results.is_empty()];
    let single = kinds.iter().filter(|k| **k).count() == 1 && (info.image_results.is_empty() || track);
    if !single {
        return None;
    }
    if let Some(file) = info.file_results.first() {
        Some(R::File(file.clone()))
    } else if let Some(segments) = info.segment_results.first() {
        Some(R::Segments(segments.clone()))
    } else {
        Some(R::Stream(lk::StreamInfoList { info: info.stream_results.clone() }))
    }
}

/// LiveKit's `details` ("End reason: …") and `error` for how an egress ended. egret's own
/// reasons stay in its API; LiveKit's clients get LiveKit's words, without recipe file:line.
fn end_reason(snapshot: &EgressSnapshot) -> (String, String) {
    let reason = snapshot.reason.as_deref().unwrap_or_default();
    let error = snapshot.error.as_deref().map(without_recipe_location).unwrap_or_default();
    let named = match reason {
        // Still running: what it is going through (a reconnect), if anything.
        "" => return (snapshot.details.clone().unwrap_or_default(), error),
        crate::egress::reason::STOPPED_BY_API => "StopEgress API",
        crate::egress::reason::LIMIT_REACHED => "Session limit reached",
        crate::egress::reason::ALL_STREAMS_STOPPED => "All streams stopped",
        crate::egress::reason::SHUTDOWN => "Process killed",
        // Ending on its way to failing (what it recorded being finalized) says so already.
        _ if snapshot.status == EgressStatus::Failed
            || (snapshot.status == EgressStatus::Ending && !error.is_empty()) =>
        {
            "Failure"
        }
        _ => "Source closed",
    };
    let error = match snapshot.status {
        EgressStatus::Complete if snapshot.limit_reached() => "Session limit reached".to_string(),
        EgressStatus::Aborted if error.is_empty() => "Start signal not received".to_string(),
        _ => error,
    };
    (format!("End reason: {named}"), error)
}

/// LiveKit's error code for an ended egress (HTTP-like, 0 when none).
fn error_code(snapshot: &EgressSnapshot) -> i32 {
    match snapshot.status {
        EgressStatus::Aborted => 412,
        EgressStatus::Complete if snapshot.limit_reached() => 413,
        EgressStatus::Failed => match snapshot.failure {
            Some(ErrorKind::NotFound) => 404,
            Some(ErrorKind::InvalidArgument) => 400,
            _ => 500,
        },
        _ => 0,
    }
}

/// `scripts/x.lua:12: msg` or `msg (scripts/x.lua:12)` → `msg`: the file:line is for the
/// recipe's author (egret's log and API), not for LiveKit's clients.
pub fn without_recipe_location(text: &str) -> String {
    let mut out = text.lines().next().unwrap_or_default().to_string();
    while let Some(at) = out.find(".lua:") {
        let start = out[..at].rfind([' ', '(']).map_or(0, |i| i + 1);
        let digits = out[at + 5..].chars().take_while(char::is_ascii_digit).count();
        let mut end = at + 5 + digits;
        if out[end..].starts_with(": ") {
            end += 2;
        }
        let open = start > 0 && out.as_bytes()[start - 1] == b'(';
        if open && out[end..].starts_with(')') {
            end += 1;
        }
        let start = if open { start - 1 } else { start };
        out.replace_range(start..end, "");
    }
    out.trim().to_string()
}

/// The request as LiveKit echoes it: storage secrets replaced by placeholders and RTMP
/// stream keys shortened (`{abc...xyz}`), so EgressInfo never carries a credential.
pub fn redact(value: Value) -> Value {
    redact_with(value, true)
}

/// Storage credentials replaced by placeholders, everything else as given: what egret's own
/// API shows and its store keeps of a request (the running egress has its own copy).
pub fn redact_secrets(value: Value) -> Value {
    redact_with(value, false)
}

fn redact_with(value: Value, stream_keys: bool) -> Value {
    const SECRETS: &[(&str, &str)] = &[
        ("access_key", "{access_key}"),
        ("accessKey", "{access_key}"),
        ("secret", "{secret}"),
        ("session_token", "{session_token}"),
        ("sessionToken", "{session_token}"),
        ("assume_role_external_id", "{external_id}"),
        ("assumeRoleExternalId", "{external_id}"),
        ("credentials", "{credentials}"),
        ("account_name", "{account_name}"),
        ("accountName", "{account_name}"),
        ("account_key", "{account_key}"),
        ("accountKey", "{account_key}"),
    ];
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, v)| {
                    let secret = SECRETS.iter().find(|(k, _)| *k == key).map(|(_, placeholder)| *placeholder);
                    let v = match (secret, v) {
                        (Some(placeholder), Value::String(s)) if !s.is_empty() => Value::String(placeholder.into()),
                        (_, Value::String(s)) if stream_keys && (key == "urls" || key == "url") => {
                            Value::String(redact_stream_url(&s))
                        }
                        (_, Value::Array(items)) if stream_keys && (key == "urls" || key == "addOutputUrls") => {
                            Value::Array(
                                items
                                    .into_iter()
                                    .map(|u| u.as_str().map_or(u.clone(), |s| redact_stream_url(s).into()))
                                    .collect(),
                            )
                        }
                        (_, v) => redact_with(v, stream_keys),
                    };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| redact_with(v, stream_keys)).collect()),
        other => other,
    }
}
