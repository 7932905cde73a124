//! LiveKit's Egress API as a drop-in: `POST /twirp/livekit.Egress/<Method>`, protobuf or
//! proto3 JSON (camelCase or snake_case), answered in the request's encoding. Every Start
//! method runs the recipe of the same name through the native API's path, so an edited
//! recipe serves LiveKit's SDKs too.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use livekit_protocol as lk;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{AuthError, Verifier};
use crate::egress::EgressRecord;
use crate::egress::manager::{Manager, UpdateError};

type Reply = Response<Full<Bytes>>;

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// A Twirp error: `{"code": "...", "msg": "..."}` with the code's HTTP status.
#[derive(Debug)]
struct TwirpError {
    code: &'static str,
    msg: String,
}

fn err(code: &'static str, msg: impl Into<String>) -> TwirpError {
    TwirpError { code, msg: msg.into() }
}

impl TwirpError {
    fn reply(&self) -> Reply {
        let status = match self.code {
            "invalid_argument" | "malformed" => 400,
            "unauthenticated" => 401,
            "permission_denied" => 403,
            "not_found" | "bad_route" => 404,
            "failed_precondition" => 412,
            "unimplemented" => 501,
            "unavailable" => 503,
            _ => 500,
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json!({ "code": self.code, "msg": self.msg }).to_string())))
            .expect("valid response")
    }
}

/// The recipe serving each LiveKit Start method.
fn recipe_for(method: &str) -> Option<&'static str> {
    Some(match method {
        "StartRoomCompositeEgress" => "room_composite",
        "StartWebEgress" => "web",
        "StartParticipantEgress" => "participant",
        "StartTrackCompositeEgress" => "track_composite",
        "StartTrackEgress" => "track",
        _ => return None,
    })
}

pub async fn handle(
    manager: &Manager,
    verifier: &Verifier,
    method: &str,
    content_type: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let encoding = if content_type.starts_with("application/protobuf") {
        Encoding::Protobuf
    } else if content_type.starts_with("application/json") {
        Encoding::Json
    } else {
        return err("malformed", format!("unsupported content type `{content_type}`")).reply();
    };
    match verifier.check_header(auth) {
        Ok(_) => {}
        Err(AuthError::Unauthenticated(m)) => return err("unauthenticated", m).reply(),
        Err(AuthError::PermissionDenied(m)) => return err("permission_denied", m).reply(),
    }
    let storage = manager.storage_dir();
    let result = match method {
        _ if recipe_for(method).is_some() || method == "StartEgress" => {
            start(manager, method, encoding, body, &storage).await
        }
        "ListEgress" => decode::<lk::ListEgressRequest>(encoding, body).map(|req| {
            let items = manager
                .list()
                .iter()
                .filter(|e| req.egress_id.is_empty() || e.id == req.egress_id)
                .filter(|e| {
                    req.room_name.is_empty()
                        || e.params.get("room_name").and_then(Value::as_str) == Some(&req.room_name)
                })
                .filter(|e| !req.active || !e.status().is_terminal())
                .map(|e| egress_info(e, &storage))
                .collect();
            encode(encoding, &lk::ListEgressResponse { items, next_page_token: None })
        }),
        "StopEgress" => match decode::<lk::StopEgressRequest>(encoding, body) {
            Ok(req) => match manager.stop(&req.egress_id, "stopped by API").await {
                Ok(e) => Ok(encode(encoding, &egress_info(&e, &storage))),
                Err(e) => Err(livekit_error(e.livekit(&req.egress_id))),
            },
            Err(e) => Err(e),
        },
        "UpdateStream" => match decode::<lk::UpdateStreamRequest>(encoding, body) {
            Ok(req) => updated(
                manager.update_stream(&req.egress_id, req.add_output_urls, req.remove_output_urls).await,
                &req.egress_id,
            )
            .map(|e| encode(encoding, &egress_info(&e, &storage))),
            Err(e) => Err(e),
        },
        "UpdateLayout" => match decode::<lk::UpdateLayoutRequest>(encoding, body) {
            Ok(req) => updated(manager.update_layout(&req.egress_id, req.layout).await, &req.egress_id)
                .map(|e| encode(encoding, &egress_info(&e, &storage))),
            Err(e) => Err(e),
        },
        other => Err(err("bad_route", format!("no method livekit.Egress/{other}"))),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => e.reply(),
    }
}

/// An UpdateStream/UpdateLayout outcome as Twirp sees it.
fn updated<T>(result: Result<T, UpdateError>, id: &str) -> Result<T, TwirpError> {
    result.map_err(|e| livekit_error(e.livekit(id)))
}

fn livekit_error((code, msg): (&'static str, String)) -> TwirpError {
    err(code, msg)
}

async fn start(
    manager: &Manager,
    method: &str,
    encoding: Encoding,
    body: &[u8],
    storage: &Path,
) -> Result<Reply, TwirpError> {
    let (recipe, params) = match method {
        "StartEgress" => unified_params(encoding, body)?,
        _ => (recipe_for(method).expect("checked by caller"), legacy_params(method, encoding, body)?),
    };
    match manager.start(recipe, params).await {
        Ok(record) => Ok(encode(encoding, &egress_info(&record, storage))),
        Err(e) => {
            let code = match e.status {
                400 | 422 => "invalid_argument",
                404 if e.error.field == "recipe" => "unimplemented",
                404 => "not_found",
                503 => "unavailable",
                _ => "internal",
            };
            Err(err(code, e.error.to_string()))
        }
    }
}

fn legacy_params(method: &str, encoding: Encoding, body: &[u8]) -> Result<Value, TwirpError> {
    match method {
        "StartRoomCompositeEgress" => request_params::<lk::RoomCompositeEgressRequest>(encoding, body),
        "StartWebEgress" => request_params::<lk::WebEgressRequest>(encoding, body),
        "StartParticipantEgress" => request_params::<lk::ParticipantEgressRequest>(encoding, body),
        "StartTrackCompositeEgress" => request_params::<lk::TrackCompositeEgressRequest>(encoding, body),
        _ => request_params::<lk::TrackEgressRequest>(encoding, body),
    }
}

/// The unified StartEgress: its `source` picks the recipe, its source's fields become params
/// and its `outputs` are sorted into the output lists the recipes take.
fn unified_params(encoding: Encoding, body: &[u8]) -> Result<(&'static str, Value), TwirpError> {
    unified_recipe(request_params::<lk::StartEgressRequest>(encoding, body)?)
}

/// The recipe and params of a unified StartEgressRequest given as params.
fn unified_recipe(request: Value) -> Result<(&'static str, Value), TwirpError> {
    let Value::Object(mut request) = request else {
        return Err(err("malformed", "StartEgress body must be an object"));
    };
    let (recipe, source) = [("web", "web"), ("template", "room_composite"), ("media", "track_composite")]
        .into_iter()
        .find_map(|(key, recipe)| request.remove(key).map(|source| (recipe, source)))
        .ok_or_else(|| err("invalid_argument", "source: one of web, template, media is required"))?;
    let mut params = serde_json::Map::new();
    if let Value::Object(fields) = source {
        params.extend(fields);
    }
    for (key, value) in request {
        match key.as_str() {
            "outputs" => {
                for (i, output) in value.as_array().into_iter().flatten().enumerate() {
                    if output.get("storage").is_some() {
                        return Err(err(
                            "invalid_argument",
                            format!("outputs[{i}].storage: uploads are not supported yet"),
                        ));
                    }
                    let (kind, config) = ["file", "stream", "segments", "images"]
                        .into_iter()
                        .find_map(|k| output.get(k).map(|c| (k, c.clone())))
                        .ok_or_else(|| {
                            err("invalid_argument", format!("outputs[{i}]: file, stream, segments or images"))
                        })?;
                    let list = match kind {
                        "file" => "file_outputs",
                        "stream" => "stream_outputs",
                        "segments" => "segment_outputs",
                        _ => "image_outputs",
                    };
                    if let Some(list) = params.entry(list).or_insert_with(|| json!([])).as_array_mut() {
                        list.push(config);
                    }
                }
            }
            "storage" => return Err(err("invalid_argument", "storage: uploads are not supported yet")),
            _ => {
                params.insert(key, value);
            }
        }
    }
    if recipe == "web" {
        params.remove("room_name"); // the web source is not tied to a room
    }
    Ok((recipe, Value::Object(params)))
}

fn decode<T: Message + Default + DeserializeOwned>(encoding: Encoding, body: &[u8]) -> Result<T, TwirpError> {
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| err("malformed", format!("bad protobuf body: {e}"))),
        Encoding::Json => {
            let body = if body.is_empty() { b"{}".as_slice() } else { body };
            serde_json::from_slice(body).map_err(|e| err("malformed", format!("bad JSON body: {e}")))
        }
    }
}

fn encode<T: Message + Serialize>(encoding: Encoding, message: &T) -> Reply {
    let (content_type, body) = match encoding {
        Encoding::Protobuf => ("application/protobuf", message.encode_to_vec()),
        Encoding::Json => ("application/json", serde_json::to_vec(message).expect("serializable")),
    };
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid")
}

/// A LiveKit request as recipe params: its proto3 JSON, with the deprecated single-output
/// fields (`file`, `stream`, `segments`) moved into the output lists.
fn request_params<T: Message + Default + DeserializeOwned + Serialize>(
    encoding: Encoding,
    body: &[u8],
) -> Result<Value, TwirpError> {
    let request: T = decode(encoding, body)?;
    Ok(params_of(&request))
}

/// The recipe and params of a request livekit-server dispatched to this worker (psrpc).
pub fn dispatched_params(
    request: &crate::worker::proto::rpc::start_egress_request::Request,
) -> Result<(&'static str, Value), String> {
    use crate::worker::proto::rpc::start_egress_request::Request as R;
    match request {
        R::RoomComposite(r) => Ok(("room_composite", params_of(r))),
        R::Web(r) => Ok(("web", params_of(r))),
        R::Participant(r) => Ok(("participant", params_of(r))),
        R::TrackComposite(r) => Ok(("track_composite", params_of(r))),
        R::Track(r) => Ok(("track", params_of(r))),
        R::Egress(r) => unified_recipe(params_of(r)).map_err(|e| e.msg),
        R::Replay(_) => Err("replay export is not supported".into()),
    }
}

/// A LiveKit request message as recipe params (see `request_params`).
fn params_of<T: Serialize>(request: &T) -> Value {
    let mut params = crate::request::fields::snake_case_keys(serde_json::to_value(request).expect("serializable"));
    if let Value::Object(map) = &mut params {
        for (single, list) in [("file", "file_outputs"), ("stream", "stream_outputs"), ("segments", "segment_outputs")]
        {
            // LiveKit's JS SDK sends one output both ways (`file` and `fileOutputs`): once.
            if let Some(output) = map.remove(single)
                && let Some(list) = map.entry(list).or_insert_with(|| json!([])).as_array_mut()
                && !list.contains(&output)
            {
                list.push(output);
            }
        }
        // Per-request webhooks are not supported yet: drop rather than refuse LiveKit's own field.
        if map.remove("webhooks").is_some() {
            tracing::warn!("request webhooks are ignored");
        }
    }
    params
}

fn nanos(seconds: Option<f64>) -> i64 {
    seconds.map(|s| (s * 1e9) as i64).unwrap_or(0)
}

/// EgressInfo as LiveKit fills it, from egret's view of the egress.
pub fn egress_info(record: &EgressRecord, storage: &Path) -> lk::EgressInfo {
    let snapshot = record.to_json();
    let status = match snapshot["status"].as_str().unwrap_or_default() {
        "starting" => lk::EgressStatus::EgressStarting,
        "active" => lk::EgressStatus::EgressActive,
        "ending" => lk::EgressStatus::EgressEnding,
        "complete" if snapshot["reason"] == crate::egress::LIMIT_REACHED => lk::EgressStatus::EgressLimitReached,
        "complete" => lk::EgressStatus::EgressComplete,
        "failed" => lk::EgressStatus::EgressFailed,
        _ => lk::EgressStatus::EgressAborted,
    };
    let (started, ended) = (nanos(snapshot["started_at"].as_f64()), nanos(snapshot["ended_at"].as_f64()));
    let mut info = lk::EgressInfo {
        egress_id: record.id.clone(),
        room_name: record.params.get("room_name").and_then(Value::as_str).unwrap_or_default().to_string(),
        source_type: if matches!(record.recipe.as_str(), "web" | "room_composite") {
            lk::EgressSourceType::Web as i32
        } else {
            lk::EgressSourceType::Sdk as i32
        },
        status: status as i32,
        started_at: started,
        ended_at: ended,
        updated_at: nanos(Some(crate::egress::now())),
        error: snapshot["error"].as_str().unwrap_or_default().to_string(),
        details: snapshot["reason"].as_str().unwrap_or_default().to_string(),
        request: original_request(&record.recipe, &record.params),
        ..Default::default()
    };
    for output in snapshot["outputs"].as_array().into_iter().flatten() {
        let target = output["target"].as_str().unwrap_or_default().to_string();
        let duration = (output["duration"].as_f64().unwrap_or(0.0) * 1e9) as i64;
        let size = output["bytes"].as_i64().unwrap_or(0);
        let location = output["location"]
            .as_str()
            .or(output["backup"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| storage.join(&target).to_string_lossy().to_string());
        info.backup_storage_used |= output["backup"].is_string();
        match output["kind"].as_str().unwrap_or_default() {
            "file" => info.file_results.push(lk::FileInfo {
                filename: target,
                started_at: started,
                ended_at: ended,
                duration,
                size,
                location,
            }),
            "segments" => info.segment_results.push(lk::SegmentsInfo {
                playlist_name: target,
                duration,
                size,
                playlist_location: location,
                segment_count: output["count"].as_i64().unwrap_or(0),
                started_at: started,
                ended_at: ended,
                ..Default::default()
            }),
            "stream" => info.stream_results.push(lk::StreamInfo {
                url: target,
                started_at: started,
                ended_at: ended,
                duration,
                status: match output["status"].as_str().unwrap_or_default() {
                    "failed" => lk::stream_info::Status::Failed,
                    "complete" => lk::stream_info::Status::Finished,
                    _ => lk::stream_info::Status::Active,
                } as i32,
                error: output["error"].as_str().unwrap_or_default().to_string(),
                ..Default::default()
            }),
            "images" => info.image_results.push(lk::ImagesInfo {
                filename_prefix: target,
                image_count: output["count"].as_i64().unwrap_or(0),
                started_at: started,
                ended_at: ended,
            }),
            // A track's websocket has no result type in LiveKit's EgressInfo.
            _ => {}
        }
    }
    info
}

/// The request echoed in EgressInfo, for the recipes that stand for a LiveKit request.
fn original_request(recipe: &str, params: &Value) -> Option<lk::egress_info::Request> {
    use lk::egress_info::Request;
    let p = params.clone();
    match recipe {
        "web" => serde_json::from_value(p).ok().map(Request::Web),
        "room_composite" => serde_json::from_value(p).ok().map(Request::RoomComposite),
        "participant" => serde_json::from_value(p).ok().map(Request::Participant),
        "track_composite" => serde_json::from_value(p).ok().map(Request::TrackComposite),
        "track" => serde_json::from_value(p).ok().map(Request::Track),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_output_given_both_ways_is_kept_once() {
        let body = br#"{"roomName":"r","file":{"filepath":"a.mp4"},"fileOutputs":[{"filepath":"a.mp4"}],
                        "streamOutputs":[{"urls":["rtmp://x/y"]}]}"#;
        let params = legacy_params("StartTrackCompositeEgress", Encoding::Json, body).unwrap();
        assert_eq!(params["file_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert_eq!(params["stream_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert!(params.get("file").is_none());
    }
}
