//! A start request: recipe params checked against the recipe's declaration, plus the
//! LiveKit-shaped encoding and outputs when the recipe takes outputs.

pub mod encoding;
pub mod fields;
pub mod filepath;
pub mod outputs;

use serde::Serialize;
use serde_json::{Map, Value};

pub use encoding::EncodeSettings;
pub use fields::{FieldError, FieldResult};

/// The type of one declared recipe parameter, written in Lua as `"string"`, `"number?"`...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    Url,
    Table,
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    pub optional: bool,
    /// `number(lo..hi)` / `integer(lo..hi)`: the inclusive bounds of a numeric param.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(f64, f64)>,
}

impl ParamSpec {
    /// Parses `"string"`, `"number?"`, ... as written in a recipe's `params`.
    pub fn parse(name: &str, decl: &str) -> Result<ParamSpec, String> {
        let (base, optional) = match decl.strip_suffix('?') {
            Some(b) => (b, true),
            None => (decl, false),
        };
        // `number(0..3600)`: a numeric type with inclusive bounds.
        let (base, range) = match base.split_once('(') {
            Some((kind @ ("number" | "integer"), bounds)) => {
                let bad = || format!("param `{name}`: `{decl}`: bounds are written `{kind}(low..high)`");
                let (lo, hi) = bounds.strip_suffix(')').and_then(|b| b.split_once("..")).ok_or_else(bad)?;
                let (lo, hi) =
                    (lo.trim().parse::<f64>().map_err(|_| bad())?, hi.trim().parse::<f64>().map_err(|_| bad())?);
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    return Err(bad());
                }
                (kind, Some((lo, hi)))
            }
            _ => (base, None),
        };
        let kind = match base {
            "string" => ParamType::String,
            "number" => ParamType::Number,
            "integer" => ParamType::Integer,
            "boolean" => ParamType::Boolean,
            "url" => ParamType::Url,
            "table" => ParamType::Table,
            "any" => ParamType::Any,
            other => {
                return Err(format!(
                    "param `{name}`: unknown type `{other}` (string, number, integer, boolean, url, table, any; `?` = optional)"
                ));
            }
        };
        Ok(ParamSpec { name: name.to_string(), kind, optional, range })
    }

    fn check(&self, value: &Value) -> FieldResult<()> {
        let ok = match self.kind {
            ParamType::String => value.is_string(),
            ParamType::Number => value.is_number(),
            ParamType::Integer => value.as_i64().is_some() || value.as_u64().is_some(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::Url => {
                let s = value.as_str().unwrap_or_default();
                if value.is_string() && !(s.starts_with("http://") || s.starts_with("https://")) {
                    return Err(FieldError::new(&self.name, format!("`{s}` is not an http:// or https:// URL")));
                }
                value.is_string()
            }
            ParamType::Table => value.is_object() || value.is_array(),
            ParamType::Any => true,
        };
        if let (true, Some((lo, hi)), Some(x)) = (ok, self.range, value.as_f64())
            && !(lo..=hi).contains(&x)
        {
            return Err(FieldError::new(&self.name, format!("must be between {lo} and {hi}")));
        }
        if ok {
            Ok(())
        } else {
            Err(FieldError::new(&self.name, format!("must be of type {:?}", self.kind).to_lowercase()))
        }
    }
}

/// A request that passed every check; what a recipe's `start` receives.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The params, snake_case keys, without null values.
    pub params: Value,
    pub settings: EncodeSettings,
    /// Seconds of recording after which the egress ends with "limit reached" (any recipe).
    pub max_duration: Option<f64>,
}

/// Output fields of LiveKit's requests, for the hint when a recipe without outputs gets one.
const KNOWN_OUTPUT_FIELDS: &[&str] =
    &["file_outputs", "segment_outputs", "stream_outputs", "image_outputs", "websocket_url"];

/// The longest `max_duration` taken (a year): beyond it, a number is a mistake.
const MAX_DURATION_S: f64 = 365.0 * 86400.0;

/// Params the engine itself reads, for every recipe that does not declare them itself.
pub const ENGINE_FIELDS: &[&str] = &["max_duration", "webhooks"];

/// Checks params against a recipe's declaration. `output_fields` are the request fields that
/// name outputs when the recipe takes outputs (None when it takes none): they and the encoding
/// fields are accepted only then; everything else undeclared is refused by name. The outputs
/// themselves are read by their kinds (`media::outputs::parse_outputs`).
pub fn validate(params: Value, specs: &[ParamSpec], output_fields: Option<&[&str]>) -> FieldResult<ValidRequest> {
    let takes_outputs = output_fields.is_some();
    let params = match fields::snake_case_keys(params) {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect::<Map<_, _>>()),
        Value::Null => Value::Object(Map::new()),
        _ => return Err(FieldError::new("params", "must be an object")),
    };
    let map = params.as_object().expect("object above");
    let encoding_fields = ["preset", "advanced"];
    for key in map.keys() {
        let declared = specs.iter().any(|s| &s.name == key);
        let output_field = output_fields.is_some_and(|f| f.contains(&key.as_str()))
            || encoding_fields.contains(&key.as_str())
            || KNOWN_OUTPUT_FIELDS.contains(&key.as_str());
        let engine_field = ENGINE_FIELDS.contains(&key.as_str());
        if !(declared || engine_field || takes_outputs && output_field) {
            let hint = if output_field { " (this recipe takes no outputs)" } else { "" };
            return Err(FieldError::new(key, format!("unknown parameter{hint}")));
        }
    }
    for spec in specs {
        match map.get(&spec.name) {
            None if !spec.optional => {
                return Err(FieldError::new(&spec.name, "required parameter is missing"));
            }
            None => {}
            Some(v) => spec.check(v)?,
        }
    }
    let settings = if takes_outputs { EncodeSettings::from_request(&params)? } else { EncodeSettings::default() };
    let declared_max = specs.iter().any(|s| s.name == "max_duration");
    let max_duration = match map.get("max_duration").filter(|_| !declared_max) {
        None => None,
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= MAX_DURATION_S => Some(s),
            _ => {
                let text = format!("must be a positive number of seconds, at most {MAX_DURATION_S}");
                return Err(FieldError::new("max_duration", text));
            }
        },
    };
    Ok(ValidRequest { params, settings, max_duration })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_checked_by_name() {
        let specs = vec![ParamSpec::parse("url", "url").unwrap(), ParamSpec::parse("n", "integer?").unwrap()];
        let ranged = vec![ParamSpec::parse("tone", "number(1..20000)?").unwrap()];
        for bad in [json!(-1), json!(1e308), json!(0)] {
            let err = validate(json!({ "tone": bad }), &ranged, None).unwrap_err();
            assert_eq!((err.field.as_str(), err.message.as_str()), ("tone", "must be between 1 and 20000"));
        }
        assert!(validate(json!({ "tone": 440 }), &ranged, None).is_ok());
        assert!(ParamSpec::parse("x", "number(5..1)").is_err() && ParamSpec::parse("x", "string(1..2)").is_err());
        let err = validate(json!({ "max_duration": 1e308 }), &[], None).unwrap_err();
        assert_eq!(err.field, "max_duration");
        let outputs = Some(&["file_outputs"][..]);
        let ok = json!({"url": "http://x", "fileOutputs": [{"filepath": "a.mp4"}]});
        assert!(validate(ok, &specs, outputs).is_ok());
        assert_eq!(validate(json!({}), &specs, outputs).unwrap_err().field, "url");
        assert_eq!(validate(json!({"url": "ftp://x"}), &specs, outputs).unwrap_err().field, "url");
        assert_eq!(validate(json!({"url": "http://x", "n": 1.5}), &specs, outputs).unwrap_err().field, "n");
        assert_eq!(validate(json!({"url": "http://x", "zzz": 1}), &specs, outputs).unwrap_err().field, "zzz");
        let no_outputs = validate(json!({"url": "http://x", "file_outputs": []}), &specs, None).unwrap_err();
        assert_eq!(no_outputs.field, "file_outputs");
        assert!(ParamSpec::parse("x", "strin").is_err());
    }
}
