//! LiveKit's proto3 JSON sets a `oneof` by naming one of its fields; a body naming two fails
//! the protobuf decoder with a bare "duplicate field". This finds such a body first and
//! names the field, as every other request error does.

use serde_json::Value;

use crate::errors::{Error, ErrorKind};
use crate::request::fields::to_snake;

/// The `oneof` groups of LiveKit's egress requests, by their fields' snake_case names.
const GROUPS: &[&[&str]] = &[
    &["s3", "gcp", "azure", "ali_oss"],
    &["preset", "advanced"],
    &["file", "stream", "segments", "images"],
    &["template", "web", "media"],
    &["video_track_id", "participant_video"],
];

/// The first object (depth first) that sets two fields of one `oneof`, named by its path.
pub fn check(body: &Value) -> Result<(), Error> {
    walk(body, "")
}

fn walk(value: &Value, path: &str) -> Result<(), Error> {
    match value {
        Value::Object(map) => {
            let set: Vec<String> = map.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| to_snake(k)).collect();
            for group in GROUPS {
                let given: Vec<&str> = group.iter().copied().filter(|f| set.iter().any(|s| s == f)).collect();
                if given.len() > 1 {
                    let field = join(path, given[1]);
                    let message = format!("give one of {}, not {}", group.join(", "), given.join(" and "));
                    return Err(Error::new(ErrorKind::InvalidArgument, &field, &message));
                }
            }
            for (key, child) in map {
                walk(child, &join(path, &to_snake(key)))?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| walk(item, &format!("{path}[{i}]"))),
        _ => Ok(()),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn two_fields_of_one_oneof_are_named() {
        let body = json!({"roomName": "r", "fileOutputs": [{"filepath": "a.mp4"}, {"s3": {"bucket": "b"}, "aliOSS": {"bucket": "c"}}]});
        let err = super::check(&body).unwrap_err();
        assert_eq!(err.field, "file_outputs[1].ali_oss");
        assert!(err.message.contains("not s3 and ali_oss"), "{}", err.message);
        let fine =
            json!({"roomName": "r", "fileOutputs": [{"s3": {"bucket": "b"}}], "segmentOutputs": [{}], "preset": 1});
        assert!(super::check(&fine).is_ok());
    }
}
