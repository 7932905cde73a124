//! LiveKit's per-egress manifest: when an egress ends, `<egress_id>.json` is written beside
//! the files of every file, segment and image output that does not set `disable_manifest`
//! (uploaded with that output when it uploads), and EgressInfo's `manifest_location` names
//! the first. The fields are LiveKit's (livekit/egress `config.Manifest`): ids, room, times in
//! ns, and each output's files with their locations.

use std::path::Path;

use serde_json::{Value, json};

use super::EgressSnapshot;
use crate::media::outputs::{OutputSnapshot, ResultContext};

/// The manifest's text for an egress as it ended.
pub fn manifest(snapshot: &EgressSnapshot, storage: &Path, publisher: Option<&str>) -> Value {
    let param = |name: &str| snapshot.params.get(name).and_then(Value::as_str).map(str::to_string);
    let ns = |s: Option<f64>| s.map(|s| (s * 1e9) as i64);
    let where_to = ResultContext { started_at: 0, ended_at: 0, storage };
    let location = |o: &OutputSnapshot| where_to.location(o);
    let of_kind = |kind: &'static str| snapshot.outputs.iter().filter(move |o| o.kind.name == kind);
    let files: Vec<Value> = of_kind("file").map(|o| json!({ "filename": o.target, "location": location(o) })).collect();
    let playlists: Vec<Value> = of_kind("segments")
        .map(|o| {
            let dir = Path::new(&o.target).parent().unwrap_or(Path::new("")).to_path_buf();
            let playlist = location(o);
            // Segments lie beside their playlist wherever it went (uploaded: its URL's folder;
            // backed up or local: its folder), named as the playlist names them.
            let beside = playlist.rsplit_once('/').map(|(folder, _)| folder.to_string()).unwrap_or_default();
            let segments: Vec<Value> = std::fs::read_to_string(storage.join(&o.target))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|name| {
                    let rel = dir.join(name).to_string_lossy().to_string();
                    json!({ "filename": rel, "location": format!("{beside}/{name}") })
                })
                .collect();
            json!({ "location": playlist, "segments": segments })
        })
        .collect();
    let images: Vec<Value> =
        of_kind("images").map(|o| json!({ "filename": o.target, "location": location(o) })).collect();
    let mut m = json!({
        "egress_id": snapshot.egress_id,
        "room_id": snapshot.room_id,
        "room_name": param("room_name"),
        "url": param("url"),
        "started_at": ns(snapshot.started_at),
        "ended_at": ns(snapshot.ended_at.or(Some(crate::clock::now()))),
        "publisher_identity": publisher.map(str::to_string).or(param("identity")),
        "track_id": param("track_id"),
        "audio_track_id": param("audio_track_id"),
        "video_track_id": param("video_track_id"),
        "files": files,
        "playlists": playlists,
        "images": images,
    });
    // As LiveKit's JSON: empty fields left out.
    if let Value::Object(map) = &mut m {
        map.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty) || v == ""));
    }
    m
}

/// Whether the request asked the output named `field` (`file_outputs[0]`...) for no manifest.
pub fn disabled(params: &Value, field: &str) -> bool {
    let Some((list, index)) = field.split_once('[') else { return false };
    let index: usize = index.split(']').next().and_then(|i| i.parse().ok()).unwrap_or(usize::MAX);
    params
        .get(list)
        .and_then(|l| l.get(index))
        .and_then(|o| o.get("disable_manifest"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}
