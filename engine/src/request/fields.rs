//! Reading JSON request objects field by field, so that each error names its field path
//! (`file_outputs[0].filepath`) and unknown fields are refused rather than ignored.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// A bad request: what is wrong, and the request field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// The request is well formed but collides with what exists (a path already written):
    /// a conflict (409) rather than a bad argument.
    pub conflict: bool,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), conflict: false }
    }

    pub fn conflict(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { conflict: true, ..FieldError::new(field, message) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

pub type FieldResult<T> = Result<T, FieldError>;

/// LiveKit clients send proto3 JSON in camelCase; egret's own API uses snake_case. Both are
/// accepted by turning every object key into snake_case once, at the edge.
/// The keys of a user's own map (S3 object metadata) are data, not field names: kept as sent.
pub fn snake_case_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = to_snake(&k);
                    let v = if USER_MAPS.contains(&key.as_str()) { v } else { snake_case_keys(v) };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(snake_case_keys).collect()),
        other => other,
    }
}

const USER_MAPS: &[&str] = &["metadata"];

pub fn to_snake(key: &str) -> String {
    // The proto's one field name with a run of capitals (`aliOSS`, LiveKit's AliOSSUpload).
    if key == "aliOSS" {
        return "ali_oss".into();
    }
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One JSON object being read; `finish` refuses the fields nobody asked for.
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Obj<'a> {
    pub fn new(value: &'a Value, path: &str) -> FieldResult<Self> {
        match value {
            Value::Object(map) => Ok(Obj { map, path: path.to_string(), used: BTreeSet::new() }),
            _ => Err(FieldError::new(path, "must be an object")),
        }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    /// The value, treating JSON null like an absent field (proto3 JSON may send either).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn string(&mut self, key: &'static str) -> FieldResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(FieldError::new(self.field_path(key), "must be a string")),
        }
    }

    pub fn bool(&mut self, key: &'static str) -> FieldResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(FieldError::new(self.field_path(key), "must be true or false")),
        }
    }

    /// A non-negative number; proto3 JSON may send 64-bit integers as strings.
    pub fn number(&mut self, key: &'static str) -> FieldResult<Option<f64>> {
        let path = self.field_path(key);
        let n = match self.get(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.parse::<f64>().ok(),
            Some(_) => None,
        };
        match n {
            Some(n) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => Err(FieldError::new(path, "must be a non-negative number")),
        }
    }

    pub fn uint(&mut self, key: &'static str) -> FieldResult<Option<u32>> {
        match self.number(key)? {
            None => Ok(None),
            Some(n) if n.fract() == 0.0 && n <= u32::MAX as f64 => Ok(Some(n as u32)),
            Some(n) if n.fract() == 0.0 => {
                Err(FieldError::new(self.field_path(key), format!("{n} is out of range (at most {})", u32::MAX)))
            }
            Some(_) => Err(FieldError::new(self.field_path(key), "must be a whole number")),
        }
    }

    /// A protobuf enum: its name or its number. `names[i]` is the name of value `i`.
    pub fn enumeration(&mut self, key: &'static str, names: &[&str]) -> FieldResult<Option<usize>> {
        let path = self.field_path(key);
        let index = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => names.iter().position(|n| n.eq_ignore_ascii_case(s)),
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).filter(|n| *n < names.len()),
            Some(_) => None,
        };
        index.map(Some).ok_or_else(|| FieldError::new(path, format!("must be one of {}", names.join(", "))))
    }

    pub fn array(&mut self, key: &'static str) -> FieldResult<&'a [Value]> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(FieldError::new(self.field_path(key), "must be an array")),
        }
    }

    /// Refuses fields that were never read, unless `allowed` names them (read elsewhere).
    pub fn finish(self, allowed: &[&str]) -> FieldResult<()> {
        for key in self.map.keys() {
            if !self.used.contains(key.as_str()) && !allowed.contains(&key.as_str()) {
                let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
                return Err(FieldError::new(path, "unknown field"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn camel_case_becomes_snake_case() {
        let v = snake_case_keys(json!({"fileOutputs": [{"filePath": "x", "file_type": 1}]}));
        assert_eq!(v, json!({"file_outputs": [{"file_path": "x", "file_type": 1}]}));
    }

    #[test]
    fn user_maps_and_ali_oss_keep_their_names() {
        let v = snake_case_keys(json!({"s3": {"metadata": {"recordedBy": "x", "X-App": "y"}}, "aliOSS": {}}));
        assert_eq!(v, json!({"s3": {"metadata": {"recordedBy": "x", "X-App": "y"}}, "ali_oss": {}}));
    }

    #[test]
    fn enums_by_name_or_number() {
        let v = json!({"a": "mp4", "b": 2, "c": "nope"});
        let mut o = Obj::new(&v, "x").unwrap();
        assert_eq!(o.enumeration("a", &["DEFAULT", "MP4", "OGG"]).unwrap(), Some(1));
        assert_eq!(o.enumeration("b", &["DEFAULT", "MP4", "OGG"]).unwrap(), Some(2));
        assert_eq!(o.enumeration("c", &["DEFAULT", "MP4"]).unwrap_err().field, "x.c");
    }
}
