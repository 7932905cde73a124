//! The LiveKit face of an egress: which recipe serves each of LiveKit's egress requests, how
//! a request becomes recipe params, and how an egress reads back as LiveKit's `EgressInfo`.
//! The Twirp API, livekit-server's dispatch (worker mode) and webhooks all read it from here.

use std::path::Path;

use livekit_protocol as lk;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{EgressSnapshot, EgressStatus};
use crate::errors::{Error, ErrorKind};
use crate::media::outputs::ResultContext;

/// A request body as it arrived: LiveKit's clients send protobuf or proto3 JSON.
#[derive(Clone, Copy)]
pub enum Body<'a> {
    Protobuf(&'a [u8]),
    Json(&'a [u8]),
}

impl Body<'_> {
    pub fn decode<T: Message + Default + DeserializeOwned>(self) -> Result<T, Error> {
        let malformed = |e: String| Error::new(ErrorKind::Malformed, "", e);
        match self {
            Body::Protobuf(bytes) => T::decode(bytes).map_err(|e| malformed(format!("bad protobuf body: {e}"))),
            Body::Json(bytes) => {
                let bytes = if bytes.is_empty() { b"{}".as_slice() } else { bytes };
                serde_json::from_slice(bytes).map_err(|e| malformed(format!("bad JSON body: {e}")))
            }
        }
    }
}

type DispatchedRequest = crate::proto::rpc::start_egress_request::Request;

/// One of LiveKit's egress request types and the recipe that serves it.
pub struct EgressKind {
    /// The Twirp method (`livekit.Egress/<method>`).
    pub method: &'static str,
    pub recipe: &'static str,
    pub source_type: lk::EgressSourceType,
    /// Cores one egress of this kind costs (worker admission), over egret's bench figures.
    pub cost: f64,
    /// The `StartEgress` (v2) source field that selects this kind, if any.
    pub unified_source: Option<&'static str>,
    /// The request body as recipe params.
    pub params: fn(Body) -> Result<Value, Error>,
    /// The same, for a request livekit-server dispatched (None: another kind).
    pub dispatched: fn(&DispatchedRequest) -> Option<Value>,
    /// The request echoed in EgressInfo, from the params.
    pub echo: fn(Value) -> Option<lk::egress_info::Request>,
}

/// Every LiveKit request type egret serves: the one table all mappings read.
pub static KINDS: &[EgressKind] = &[
    EgressKind {
        method: "StartRoomCompositeEgress",
        recipe: "room_composite",
        source_type: lk::EgressSourceType::Web,
        cost: 1.0,
        unified_source: Some("template"),
        params: |b| Ok(params_of(&b.decode::<lk::RoomCompositeEgressRequest>()?)),
        dispatched: |r| match r {
            DispatchedRequest::RoomComposite(r) => Some(params_of(r)),
            _ => None,
        },
        echo: |p| serde_json::from_value(p).ok().map(lk::egress_info::Request::RoomComposite),
    },
    EgressKind {
        method: "StartWebEgress",
        recipe: "web",
        source_type: lk::EgressSourceType::Web,
        cost: 1.0,
        unified_source: Some("web"),
        params: |b| Ok(params_of(&b.decode::<lk::WebEgressRequest>()?)),
        dispatched: |r| match r {
            DispatchedRequest::Web(r) => Some(params_of(r)),
            _ => None,
        },
        echo: |p| serde_json::from_value(p).ok().map(lk::egress_info::Request::Web),
    },
    EgressKind {
        method: "StartParticipantEgress",
        recipe: "participant",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.6,
        unified_source: None,
        params: |b| Ok(params_of(&b.decode::<lk::ParticipantEgressRequest>()?)),
        dispatched: |r| match r {
            DispatchedRequest::Participant(r) => Some(params_of(r)),
            _ => None,
        },
        echo: |p| serde_json::from_value(p).ok().map(lk::egress_info::Request::Participant),
    },
    EgressKind {
        method: "StartTrackCompositeEgress",
        recipe: "track_composite",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.6,
        unified_source: Some("media"),
        params: |b| Ok(params_of(&b.decode::<lk::TrackCompositeEgressRequest>()?)),
        dispatched: |r| match r {
            DispatchedRequest::TrackComposite(r) => Some(params_of(r)),
            _ => None,
        },
        echo: |p| serde_json::from_value(p).ok().map(lk::egress_info::Request::TrackComposite),
    },
    EgressKind {
        method: "StartTrackEgress",
        recipe: "track",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.1,
        unified_source: None,
        params: |b| Ok(params_of(&b.decode::<lk::TrackEgressRequest>()?)),
        dispatched: |r| match r {
            DispatchedRequest::Track(r) => Some(params_of(r)),
            _ => None,
        },
        echo: |p| serde_json::from_value(p).ok().map(lk::egress_info::Request::Track),
    },
];

/// The unified request (LiveKit's `StartEgress`, v2).
pub const UNIFIED_METHOD: &str = "StartEgress";

pub fn by_method(method: &str) -> Option<&'static EgressKind> {
    KINDS.iter().find(|k| k.method == method)
}

pub fn by_recipe(recipe: &str) -> Option<&'static EgressKind> {
    KINDS.iter().find(|k| k.recipe == recipe)
}

/// The recipe and params of a Start call (any Start method, or the unified StartEgress).
pub fn start_request(method: &str, body: Body) -> Result<(&'static str, Value), Error> {
    if method == UNIFIED_METHOD {
        return unified(params_of(&body.decode::<lk::StartEgressRequest>()?));
    }
    let kind =
        by_method(method).ok_or_else(|| Error::new(ErrorKind::UnknownRecipe, "", format!("no method {method}")))?;
    Ok((kind.recipe, (kind.params)(body)?))
}

/// The recipe and params of a request livekit-server dispatched to this worker.
pub fn dispatched_request(request: &DispatchedRequest) -> Result<(&'static str, Value), Error> {
    if let DispatchedRequest::Egress(unified_request) = request {
        return unified(params_of(unified_request));
    }
    KINDS
        .iter()
        .find_map(|k| (k.dispatched)(request).map(|params| (k.recipe, params)))
        .ok_or_else(|| Error::new(ErrorKind::UnknownRecipe, "", "this kind of egress is not supported"))
}

/// The unified StartEgress: its `source` picks the kind, its source's fields become params
/// and its `outputs` are sorted into the output lists the recipes take.
fn unified(request: Value) -> Result<(&'static str, Value), Error> {
    let invalid = |field: &str, message: &str| Error::new(ErrorKind::InvalidArgument, field, message);
    let Value::Object(mut request) = request else {
        return Err(Error::new(ErrorKind::Malformed, "", "StartEgress body must be an object"));
    };
    let sources: Vec<&str> = KINDS.iter().filter_map(|k| k.unified_source).collect();
    let (kind, source) = KINDS
        .iter()
        .find_map(|k| k.unified_source.and_then(|key| request.remove(key)).map(|source| (k, source)))
        .ok_or_else(|| invalid("source", &format!("one of {} is required", sources.join(", "))))?;
    let mut params = serde_json::Map::new();
    if let Value::Object(fields) = source {
        params.extend(fields);
    }
    for (key, value) in request {
        match key.as_str() {
            "outputs" => {
                for (i, output) in value.as_array().into_iter().flatten().enumerate() {
                    if output.get("storage").is_some() {
                        return Err(invalid(&format!("outputs[{i}].storage"), "uploads are not supported yet"));
                    }
                    let (list, config) = [
                        ("file", "file_outputs"),
                        ("stream", "stream_outputs"),
                        ("segments", "segment_outputs"),
                        ("images", "image_outputs"),
                    ]
                    .into_iter()
                    .find_map(|(k, list)| output.get(k).map(|c| (list, c.clone())))
                    .ok_or_else(|| invalid(&format!("outputs[{i}]"), "file, stream, segments or images"))?;
                    if let Some(list) = params.entry(list).or_insert_with(|| json!([])).as_array_mut() {
                        list.push(config);
                    }
                }
            }
            "storage" => return Err(invalid("storage", "uploads are not supported yet")),
            _ => {
                params.insert(key, value);
            }
        }
    }
    if kind.source_type == lk::EgressSourceType::Web && kind.recipe == "web" {
        params.remove("room_name"); // the web source is not tied to a room
    }
    Ok((kind.recipe, Value::Object(params)))
}

/// A LiveKit request message as recipe params: its proto3 JSON with snake_case keys, the
/// deprecated single-output fields (`file`, `stream`, `segments`) moved into the output lists.
pub fn params_of<T: Serialize>(request: &T) -> Value {
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

/// EgressInfo as LiveKit fills it, from egret's view of the egress.
pub fn egress_info(snapshot: &EgressSnapshot, storage: &Path) -> lk::EgressInfo {
    let kind = by_recipe(&snapshot.recipe);
    let ctx = ResultContext { started_at: nanos(snapshot.started_at), ended_at: nanos(snapshot.ended_at), storage };
    let param = |name: &str| snapshot.params.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut info = lk::EgressInfo {
        egress_id: snapshot.egress_id.clone(),
        room_name: param("room_name"),
        source_type: kind.map_or(lk::EgressSourceType::Web, |k| k.source_type) as i32,
        status: status(snapshot) as i32,
        started_at: ctx.started_at,
        ended_at: ctx.ended_at,
        updated_at: nanos(Some(super::now())),
        error: snapshot.error.clone().unwrap_or_default(),
        details: snapshot.reason.clone().unwrap_or_default(),
        request: kind.and_then(|k| (k.echo)(snapshot.params.clone())),
        ..Default::default()
    };
    for output in &snapshot.outputs {
        info.backup_storage_used |= output.backup.is_some();
        (output.kind.livekit_result)(output, &ctx, &mut info);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_output_given_both_ways_is_kept_once() {
        let body = br#"{"roomName":"r","file":{"filepath":"a.mp4"},"fileOutputs":[{"filepath":"a.mp4"}],
                        "streamOutputs":[{"urls":["rtmp://x/y"]}]}"#;
        let (recipe, params) = start_request("StartTrackCompositeEgress", Body::Json(body)).unwrap();
        assert_eq!(recipe, "track_composite");
        assert_eq!(params["file_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert_eq!(params["stream_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert!(params.get("file").is_none());
    }

    #[test]
    fn every_start_method_reaches_its_recipe_in_both_encodings() {
        for kind in KINDS {
            let (recipe, _) = start_request(kind.method, Body::Json(b"{}")).unwrap();
            assert_eq!(recipe, kind.recipe);
            let (recipe, _) = start_request(kind.method, Body::Protobuf(b"")).unwrap();
            assert_eq!(recipe, kind.recipe);
        }
        let unknown = start_request("StartReplayEgress", Body::Json(b"{}")).unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::UnknownRecipe);
        let malformed = start_request("StartWebEgress", Body::Json(b"{")).unwrap_err();
        assert_eq!(malformed.kind, ErrorKind::Malformed);
    }

    #[test]
    fn unified_requests_pick_the_kind_by_source() {
        let body = br#"{"web":{"url":"https://x"},"roomName":"r","outputs":[{"file":{"filepath":"a.mp4"}},
                        {"stream":{"urls":["rtmp://h/a/k"]}}]}"#;
        let (recipe, params) = start_request(UNIFIED_METHOD, Body::Json(body)).unwrap();
        assert_eq!(recipe, "web");
        assert_eq!(params["url"], "https://x");
        assert!(params.get("room_name").is_none(), "{params}");
        assert_eq!(params["file_outputs"][0]["filepath"], "a.mp4");
        assert_eq!(params["stream_outputs"][0]["urls"][0], "rtmp://h/a/k");
        let (recipe, _) = start_request(UNIFIED_METHOD, Body::Json(br#"{"template":{"layout":"grid"}}"#)).unwrap();
        assert_eq!(recipe, "room_composite");
        let none = start_request(UNIFIED_METHOD, Body::Json(br#"{"roomName":"r"}"#)).unwrap_err();
        assert_eq!((none.kind, none.field.as_str()), (ErrorKind::InvalidArgument, "source"));
        let storage = start_request(UNIFIED_METHOD, Body::Json(br#"{"web":{},"outputs":[{"storage":{}}]}"#));
        assert_eq!(storage.unwrap_err().field, "outputs[0].storage");
    }

    #[test]
    fn dispatched_requests_use_the_same_table() {
        let request = DispatchedRequest::Participant(lk::ParticipantEgressRequest {
            room_name: "r".into(),
            identity: "alice".into(),
            ..Default::default()
        });
        let (recipe, params) = dispatched_request(&request).unwrap();
        assert_eq!(recipe, "participant");
        assert_eq!(params["identity"], "alice");
    }

    #[test]
    fn egress_info_reads_the_snapshot() {
        use crate::media::outputs::{OutputSnapshot, OutputState, file, stream};
        let output = |kind, target: &str, status| OutputSnapshot {
            location: None,
            backup: None,
            upload_error: None,
            field: "x".into(),
            kind,
            target: target.into(),
            status,
            error: None,
            bytes: 1000,
            duration: 2.5,
            count: 0,
        };
        let snapshot = EgressSnapshot {
            egress_id: "EG_1".into(),
            recipe: "track_composite".into(),
            recipe_version: 1,
            always_on: None,
            status: EgressStatus::Complete,
            reason: Some(super::super::LIMIT_REACHED.into()),
            error: None,
            created_at: 1.0,
            started_at: Some(2.0),
            ended_at: Some(4.5),
            duration: 2.5,
            bytes: 1000,
            params: json!({"room_name": "r", "audio_track_id": "TR_a"}),
            outputs: vec![
                output(&file::KIND, "r/a.mp4", OutputState::Complete),
                output(&stream::KIND, "rtmp://h/a/k", OutputState::Failed),
            ],
        };
        let info = egress_info(&snapshot, Path::new("/s"));
        assert_eq!(info.status, lk::EgressStatus::EgressLimitReached as i32);
        assert_eq!(info.room_name, "r");
        assert_eq!(info.source_type, lk::EgressSourceType::Sdk as i32);
        assert_eq!((info.started_at, info.ended_at), (2_000_000_000, 4_500_000_000));
        assert_eq!(info.file_results[0].location, "/s/r/a.mp4");
        assert_eq!(info.file_results[0].duration, 2_500_000_000);
        assert_eq!(info.stream_results[0].status, lk::stream_info::Status::Failed as i32);
        match info.request {
            Some(lk::egress_info::Request::TrackComposite(r)) => assert_eq!(r.audio_track_id, "TR_a"),
            other => panic!("request echo: {other:?}"),
        }
    }
}
