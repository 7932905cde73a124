//! The LiveKit face of an egress: which recipe serves each of LiveKit's egress requests, how
//! a request becomes recipe params, and how an egress reads back as LiveKit's `EgressInfo`.
//! The Twirp API, livekit-server's dispatch (worker mode) and webhooks all read it from here.
//! Requests are here; `info` reads an egress back.

pub(crate) mod info;
mod oneofs;

pub use info::{info_of, start_answer, without_recipe_location};

use livekit_protocol as lk;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::errors::{Error, ErrorKind};

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
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                    oneofs::check(&value)?;
                }
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
    /// The request body, decoded.
    pub decode: fn(Body) -> Result<LiveKitRequest, Error>,
    /// The same, for a request livekit-server dispatched (None: another kind).
    pub dispatched: fn(&DispatchedRequest) -> Option<Result<LiveKitRequest, Error>>,
}

/// A LiveKit request as egret runs it: its recipe's params, and the request as it came
/// (proto3 JSON, echoed in EgressInfo).
#[derive(Debug)]
pub struct LiveKitRequest {
    pub recipe: &'static str,
    pub params: Value,
    pub original: Value,
}

impl LiveKitRequest {
    fn of<T: Serialize>(recipe: &'static str, request: &T) -> Result<LiveKitRequest, Error> {
        let value = as_json(request)?;
        // Keyed by its field in EgressInfo's `request` oneof, which is the recipe's name.
        Ok(LiveKitRequest { recipe, params: params_from(value.clone()), original: json!({ recipe: value }) })
    }
}

/// Every LiveKit request type egret serves: the one table all mappings read.
pub static KINDS: &[EgressKind] = &[
    EgressKind {
        method: "StartRoomCompositeEgress",
        recipe: "room_composite",
        source_type: lk::EgressSourceType::Web,
        cost: 1.0,
        unified_source: Some("template"),
        decode: |b| LiveKitRequest::of("room_composite", &b.decode::<lk::RoomCompositeEgressRequest>()?),
        dispatched: |r| match r {
            DispatchedRequest::RoomComposite(r) => Some(LiveKitRequest::of("room_composite", r)),
            _ => None,
        },
    },
    EgressKind {
        method: "StartWebEgress",
        recipe: "web",
        source_type: lk::EgressSourceType::Web,
        cost: 1.0,
        unified_source: Some("web"),
        decode: |b| LiveKitRequest::of("web", &b.decode::<lk::WebEgressRequest>()?),
        dispatched: |r| match r {
            DispatchedRequest::Web(r) => Some(LiveKitRequest::of("web", r)),
            _ => None,
        },
    },
    EgressKind {
        method: "StartParticipantEgress",
        recipe: "participant",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.6,
        unified_source: None,
        decode: |b| LiveKitRequest::of("participant", &b.decode::<lk::ParticipantEgressRequest>()?),
        dispatched: |r| match r {
            DispatchedRequest::Participant(r) => Some(LiveKitRequest::of("participant", r)),
            _ => None,
        },
    },
    EgressKind {
        method: "StartTrackCompositeEgress",
        recipe: "track_composite",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.6,
        unified_source: None,
        decode: |b| LiveKitRequest::of("track_composite", &b.decode::<lk::TrackCompositeEgressRequest>()?),
        dispatched: |r| match r {
            DispatchedRequest::TrackComposite(r) => Some(LiveKitRequest::of("track_composite", r)),
            _ => None,
        },
    },
    EgressKind {
        // Only through StartEgress (v2): LiveKit's MediaSource.
        method: UNIFIED_METHOD,
        recipe: "media",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.6,
        unified_source: Some("media"),
        decode: |b| unified_body(b),
        dispatched: |_| None,
    },
    EgressKind {
        method: "StartTrackEgress",
        recipe: "track",
        source_type: lk::EgressSourceType::Sdk,
        cost: 0.1,
        unified_source: None,
        decode: |b| LiveKitRequest::of("track", &b.decode::<lk::TrackEgressRequest>()?),
        dispatched: |r| match r {
            DispatchedRequest::Track(r) => Some(LiveKitRequest::of("track", r)),
            _ => None,
        },
    },
];

/// The unified request (LiveKit's `StartEgress`, v2).
pub const UNIFIED_METHOD: &str = "StartEgress";

/// `EncodingOptionsPreset.PASSTHROUGH` (newer than the protocol crate): copy, do not encode.
const PASSTHROUGH_PRESET: i32 = 8;

pub fn by_method(method: &str) -> Option<&'static EgressKind> {
    KINDS.iter().find(|k| k.method == method)
}

pub fn by_recipe(recipe: &str) -> Option<&'static EgressKind> {
    KINDS.iter().find(|k| k.recipe == recipe)
}

/// A Start call (any Start method, or the unified StartEgress) as egret runs it.
pub fn start_request(method: &str, body: Body) -> Result<LiveKitRequest, Error> {
    if method == UNIFIED_METHOD {
        return unified_body(body);
    }
    let kind =
        by_method(method).ok_or_else(|| Error::new(ErrorKind::UnknownRecipe, "", format!("no method {method}")))?;
    (kind.decode)(body)
}

/// A request livekit-server dispatched to this worker, as egret runs it.
pub fn dispatched_request(request: &DispatchedRequest) -> Result<LiveKitRequest, Error> {
    if let DispatchedRequest::Egress(unified_request) = request {
        return unified(unified_request);
    }
    KINDS
        .iter()
        .find_map(|k| (k.dispatched)(request))
        .ok_or_else(|| Error::new(ErrorKind::UnknownRecipe, "", "this kind of egress is not supported"))?
}

fn unified(request: &lk::StartEgressRequest) -> Result<LiveKitRequest, Error> {
    let mut request = request.clone();
    let passthrough = request.encoding == Some(lk::start_egress_request::Encoding::Preset(PASSTHROUGH_PRESET));
    if passthrough {
        request.encoding = None;
    }
    let value = as_json(&request)?;
    let (recipe, mut params) = unified_params(params_from(value.clone()))?;
    if passthrough {
        if recipe != "media" {
            return Err(Error::new(ErrorKind::InvalidArgument, "preset", "PASSTHROUGH takes a media source only"));
        }
        params["passthrough"] = json!(true);
    }
    Ok(LiveKitRequest { recipe, params, original: json!({ "egress": value }) })
}

/// A StartEgress body. Its JSON may name the PASSTHROUGH preset, which the protocol crate
/// does not know yet: read as its number.
fn unified_body(body: Body) -> Result<LiveKitRequest, Error> {
    let Body::Json(bytes) = body else { return unified(&body.decode::<lk::StartEgressRequest>()?) };
    let mut request = match serde_json::from_slice::<Value>(if bytes.is_empty() { b"{}" } else { bytes }) {
        Ok(Value::Object(map)) => map,
        _ => return unified(&body.decode::<lk::StartEgressRequest>()?), // its own error
    };
    let passthrough = matches!(request.get("preset"), Some(p) if p == "PASSTHROUGH" || p == PASSTHROUGH_PRESET);
    if passthrough {
        request.remove("preset");
    }
    let bytes = serde_json::to_vec(&request).expect("serializable");
    let mut decoded = Body::Json(&bytes).decode::<lk::StartEgressRequest>()?;
    if passthrough {
        decoded.encoding = Some(lk::start_egress_request::Encoding::Preset(PASSTHROUGH_PRESET));
    }
    unified(&decoded)
}

/// The unified StartEgress: its `source` picks the kind, its source's fields become params
/// and its `outputs` are sorted into the output lists the recipes take.
fn unified_params(request: Value) -> Result<(&'static str, Value), Error> {
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
    // The request's `storage` is every output's upload target unless an output has its own.
    let shared_storage = match request.remove("storage") {
        Some(storage) if !storage.is_null() => Some(upload_of(&storage, "storage")?),
        _ => None,
    };
    for (key, value) in request {
        match key.as_str() {
            "outputs" => {
                for (i, output) in value.as_array().into_iter().flatten().enumerate() {
                    let (list, mut config) = crate::media::outputs::KINDS
                        .iter()
                        .find_map(|k| Some((k.request_fields[0], output.get(k.unified_key?)?.clone())))
                        .ok_or_else(|| invalid(&format!("outputs[{i}]"), "file, stream, segments or images"))?;
                    let own = match output.get("storage") {
                        Some(storage) if !storage.is_null() => {
                            Some(upload_of(storage, &format!("outputs[{i}].storage"))?)
                        }
                        _ => None,
                    };
                    if let (Some(target), Value::Object(config)) = (own.or(shared_storage.clone()), &mut config)
                        && list != "stream_outputs"
                    {
                        config.insert(target.0.into(), target.1);
                    }
                    if let Some(list) = params.entry(list).or_insert_with(|| json!([])).as_array_mut() {
                        list.push(config);
                    }
                }
            }
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

/// A StorageConfig's one upload target as an output field (`s3`, `gcp`, `azure`, `ali_oss`,
/// as the per-output upload fields are named); the outputs then check it like their own.
fn upload_of(storage: &Value, field: &str) -> Result<(&'static str, Value), Error> {
    // proto3 JSON names it `aliOSS`; egret's own API `ali_oss`.
    let given: Vec<&'static str> = ["s3", "gcp", "azure", "aliOSS", "ali_oss"]
        .into_iter()
        .filter(|k| storage.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    match given.as_slice() {
        [one] => Ok((*one, storage[*one].clone())),
        _ => Err(Error::new(ErrorKind::InvalidArgument, field, "give one of s3, gcp, azure or ali_oss")),
    }
}

/// A decoded protobuf as proto3 JSON; an enum number the proto does not define (protobuf
/// bytes may carry any) has no JSON form and is refused.
fn as_json<T: Serialize>(request: &T) -> Result<Value, Error> {
    serde_json::to_value(request)
        .map_err(|e| Error::new(ErrorKind::InvalidArgument, "", format!("the request cannot be read: {e}")))
}

/// A LiveKit request message as recipe params: its proto3 JSON with snake_case keys, the
/// deprecated single-output fields (`file`, `stream`, `segments`) moved into the output lists.
fn params_from(request: Value) -> Value {
    let mut params = crate::request::fields::snake_case_keys(request);
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
    }
    params
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::info::{egress_info, redact};
    use super::*;
    use crate::egress::{EgressSnapshot, EgressStatus};
    use crate::media::outputs::stream::redact_stream_url;

    #[test]
    fn an_undefined_enum_number_in_protobuf_is_refused() {
        use prost::Message;
        let request = lk::WebEgressRequest {
            url: "http://x".into(),
            options: Some(lk::web_egress_request::Options::Preset(-1)),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let kind = KINDS.iter().find(|k| k.method == "StartWebEgress").unwrap();
        let err = (kind.decode)(Body::Protobuf(&bytes)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    }

    #[test]
    fn one_output_given_both_ways_is_kept_once() {
        let body = br#"{"roomName":"r","file":{"filepath":"a.mp4"},"fileOutputs":[{"filepath":"a.mp4"}],
                        "streamOutputs":[{"urls":["rtmp://x/y"]}]}"#;
        let LiveKitRequest { recipe, params, original } =
            start_request("StartTrackCompositeEgress", Body::Json(body)).unwrap();
        assert_eq!(recipe, "track_composite");
        assert_eq!(original["track_composite"]["file"]["filepath"], "a.mp4", "echoed as sent: {original}");
        assert_eq!(params["file_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert_eq!(params["stream_outputs"].as_array().unwrap().len(), 1, "{params}");
        assert!(params.get("file").is_none());
    }

    #[test]
    fn every_start_method_reaches_its_recipe_in_both_encodings() {
        for kind in KINDS.iter().filter(|k| k.method != UNIFIED_METHOD) {
            assert_eq!(start_request(kind.method, Body::Json(b"{}")).unwrap().recipe, kind.recipe);
            assert_eq!(start_request(kind.method, Body::Protobuf(b"")).unwrap().recipe, kind.recipe);
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
        let LiveKitRequest { recipe, params, original } = start_request(UNIFIED_METHOD, Body::Json(body)).unwrap();
        assert_eq!(recipe, "web");
        assert_eq!(original["egress"]["web"]["url"], "https://x");
        assert_eq!(params["url"], "https://x");
        assert!(params.get("room_name").is_none(), "{params}");
        assert_eq!(params["file_outputs"][0]["filepath"], "a.mp4");
        assert_eq!(params["stream_outputs"][0]["urls"][0], "rtmp://h/a/k");
        let template = start_request(UNIFIED_METHOD, Body::Json(br#"{"template":{"layout":"grid"}}"#)).unwrap();
        assert_eq!(template.recipe, "room_composite");
        let none = start_request(UNIFIED_METHOD, Body::Json(br#"{"roomName":"r"}"#)).unwrap_err();
        assert_eq!((none.kind, none.field.as_str()), (ErrorKind::InvalidArgument, "source"));
        let storage = start_request(UNIFIED_METHOD, Body::Json(br#"{"web":{},"outputs":[{"file":{},"storage":{}}]}"#));
        assert_eq!(storage.unwrap_err().field, "outputs[0].storage");
        let shared = br#"{"web":{},"storage":{"s3":{"bucket":"b"}},"outputs":[{"file":{"filepath":"a.mp4"}},
                          {"segments":{},"storage":{"s3":{"bucket":"own"}}},{"stream":{"urls":["rtmp://h/a/k"]}}]}"#;
        let params = start_request(UNIFIED_METHOD, Body::Json(shared)).unwrap().params;
        assert_eq!(params["file_outputs"][0]["s3"]["bucket"], "b", "{params}");
        assert_eq!(params["segment_outputs"][0]["s3"]["bucket"], "own", "{params}");
        assert!(params["stream_outputs"][0].get("s3").is_none(), "{params}");
    }

    #[test]
    fn livekit_clients_get_no_recipe_file_and_line() {
        assert_eq!(
            without_recipe_location("scripts/track.lua:17: track `TR_x` is not published"),
            "track `TR_x` is not published"
        );
        assert_eq!(
            without_recipe_location("layout: unknown layout (scripts/room_composite.lua:40)"),
            "layout: unknown layout"
        );
        assert_eq!(without_recipe_location("plain"), "plain");
    }

    #[test]
    fn requests_are_echoed_without_secrets_or_stream_keys() {
        let request = json!({"track_composite": {"room_name": "r",
            "stream_outputs": [{"urls": ["rtmp://h/live/abcdefghijkl", "rtmps://h/app/k"]}],
            "file_outputs": [{"filepath": "x.mp4", "s3": {"access_key": "AK", "secret": "S", "bucket": "b"}}]}});
        let r = redact(request);
        let tc = &r["track_composite"];
        assert_eq!(tc["stream_outputs"][0]["urls"][0], "rtmp://h/live/{abc...jkl}");
        assert_eq!(tc["stream_outputs"][0]["urls"][1], "rtmps://h/app/{...}");
        assert_eq!(tc["file_outputs"][0]["s3"]["secret"], "{secret}");
        assert_eq!(tc["file_outputs"][0]["s3"]["access_key"], "{access_key}");
        assert_eq!(tc["file_outputs"][0]["s3"]["bucket"], "b");
        assert_eq!(redact_stream_url("rtmp://h/live/abcdefgh"), "rtmp://h/live/{ab...gh}");
    }

    #[test]
    fn dispatched_requests_use_the_same_table() {
        let request = DispatchedRequest::Participant(lk::ParticipantEgressRequest {
            room_name: "r".into(),
            identity: "alice".into(),
            ..Default::default()
        });
        let started = dispatched_request(&request).unwrap();
        assert_eq!(started.recipe, "participant");
        assert_eq!(started.params["identity"], "alice");
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
            live_target: None,
            segment_prefix: None,
            started_at: Some(2.0),
            ended_at: Some(4.5),
            status,
            error: None,
            bytes: 1000,
            duration: 2.5,
            count: 0,
            retries: 0,
            last_retry_at: None,
        };
        let snapshot = EgressSnapshot {
            egress_id: "EG_1".into(),
            recipe: "track_composite".into(),
            recipe_version: 1,
            always_on: None,
            room_id: Some("RM_1".into()),
            status: EgressStatus::Complete,
            reason: Some(super::super::LIMIT_REACHED.into()),
            error: None,
            failure: None,
            created_at: 1.0,
            updated_at: 4.5,
            started_at: Some(2.0),
            ended_at: Some(4.5),
            duration: 2.5,
            details: None,
            manifest_location: None,
            bytes: 1000,
            params: json!({"room_name": "r", "audio_track_id": "TR_a"}),
            outputs: vec![
                output(&file::KIND, "r/a.mp4", OutputState::Complete),
                output(&stream::KIND, "rtmp://h/app/streamkey", OutputState::Failed),
            ],
        };
        let info = egress_info(&snapshot, None, Path::new("/s"));
        assert_eq!(info.status, lk::EgressStatus::EgressLimitReached as i32);
        assert_eq!(
            (info.details.as_str(), info.error.as_str()),
            ("End reason: Session limit reached", "Session limit reached")
        );
        assert_eq!((info.room_id.as_str(), info.error_code), ("RM_1", 413));
        assert!(info.result.is_none(), "a file and a stream: no legacy result");
        assert_eq!(info.room_name, "r");
        assert_eq!(info.source_type, lk::EgressSourceType::Sdk as i32);
        assert_eq!((info.started_at, info.ended_at), (1_000_000_000, 4_500_000_000), "started_at: the request's time");
        assert_eq!(info.file_results[0].location, "/s/r/a.mp4");
        assert_eq!(info.file_results[0].duration, 2_500_000_000);
        assert_eq!(info.stream_results[0].status, lk::stream_info::Status::Failed as i32);
        assert_eq!(info.stream_results[0].url, "rtmp://h/app/{str...key}", "stream keys are not shown");
        let mut failed = snapshot.clone();
        (failed.status, failed.failure) = (EgressStatus::Failed, Some(ErrorKind::NotFound));
        assert_eq!(egress_info(&failed, None, Path::new("/s")).error_code, 404, "participant/track not found");
        let mut failing = snapshot.clone();
        (failing.status, failing.reason, failing.error) =
            (EgressStatus::Ending, Some("lost the room".into()), Some("lost the room".into()));
        assert_eq!(
            egress_info(&failing, None, Path::new("/s")).details,
            "End reason: Failure",
            "finalizing before it fails: not 'Source closed'"
        );
        match info.request {
            Some(lk::egress_info::Request::TrackComposite(r)) => assert_eq!(r.audio_track_id, "TR_a"),
            other => panic!("request echo: {other:?}"),
        }
    }
}
