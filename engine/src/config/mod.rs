//! `egress.toml`: parsed against a fixed schema so that every problem is reported at once, each
//! with its key path, and unknown keys are errors (a typo must never be silently ignored).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

mod upload;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub recipes: RecipesConfig,
    pub webhooks: Option<WebhooksConfig>,
    /// Egresses that always run, restarted whenever they end (`[[always_on]]`).
    pub always_on: Vec<AlwaysOnEntry>,
    /// Read by the recipes that join LiveKit rooms (room, participant, track egress).
    #[allow(dead_code)]
    pub livekit: Option<LiveKitConfig>,
    /// Worker mode: `[redis]` (livekit-server's) and `[worker]` admission.
    pub worker: Option<WorkerConfig>,
}

/// egret as one of livekit-server's egress workers (psrpc over its Redis).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `redis://[:password@]host:port/db`, from `[redis] address`, `password`, `db`.
    pub redis_url: String,
    /// CPUs this worker may fill to 0.8 of (default: the machine's).
    pub cpus: f64,
    /// Cores each recipe costs, over egret's defaults (`[worker.costs]`).
    pub costs: std::collections::HashMap<String, f64>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_key: String,
    pub api_secret: String,
    /// How long an egress may take to become active beyond its recipe's own bounded waits
    /// (`start_timeout`, seconds; default 30).
    pub start_timeout: std::time::Duration,
    /// Where egress records are kept across restarts (`state_dir`, default `.egret` beside
    /// this file).
    pub state_dir: PathBuf,
    /// How long a stream URL that was live keeps reconnecting after it failed
    /// (`stream_reconnect_timeout`, seconds, default 60; 0 fails it at once).
    pub stream_reconnect_timeout: std::time::Duration,
    /// `GET /metrics` without a token (`metrics_public`, default true: whoever reaches
    /// `listen`, which is loopback in the shipped config).
    pub metrics_public: bool,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Every output path is resolved inside this directory.
    pub dir: PathBuf,
    /// Fragmented MP4: each fragment is playable on its own, so a file survives SIGKILL.
    pub crash_safe_mp4: bool,
    /// Finished files are uploaded here when set (`[storage.s3]`, `[storage.gcp]` or
    /// `[storage.azure]`).
    pub upload: Option<crate::storage::UploadConfig>,
    /// Where a file goes when its upload failed every attempt.
    pub backup_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RecipesConfig {
    pub dir: PathBuf,
    /// The room composite pages, served at `/layouts/` (default: `layouts/` next to the config).
    pub layouts: PathBuf,
    /// Where Chrome loads them from: set once the HTTP server is bound.
    pub layouts_url: String,
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct LiveKitConfig {
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    /// How long a room egress keeps trying to rejoin after losing its connection
    /// (`[livekit] reconnect_timeout`, seconds, default 60; 0 fails at once).
    pub reconnect_timeout: std::time::Duration,
}

/// One `[[always_on]]` entry: a named egress of `recipe` with `params`, kept running.
#[derive(Debug, Clone, PartialEq)]
pub struct AlwaysOnEntry {
    pub name: String,
    pub recipe: String,
    /// The same params as `POST /v1/egress`.
    pub params: serde_json::Value,
}

/// Where egress_started / egress_updated / egress_ended events are POSTed, as LiveKit does.
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub urls: Vec<String>,
    /// The key whose secret signs each event (default: server.api_key).
    pub api_key: String,
    pub api_secret: String,
}

/// All problems found in one config file, one per line: `key.path: message`.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} config error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
    /// A non-negative number (integer or float).
    Number,
    /// A table of any keys whose values are numbers.
    NumberTable,
    StrList,
    Section,
    /// An array of tables, checked entry by entry by its own reader.
    TableList,
}

/// Every key egret knows. Anything else in the file is reported as unknown.
const SCHEMA: &[(&str, Kind, bool)] = &[
    ("server", Kind::Section, true),
    ("server.listen", Kind::Str, true),
    ("server.api_key", Kind::Str, true),
    ("server.api_secret", Kind::Str, true),
    ("server.start_timeout", Kind::Number, false),
    ("server.state_dir", Kind::Str, false),
    ("server.stream_reconnect_timeout", Kind::Number, false),
    ("server.metrics_public", Kind::Bool, false),
    ("storage", Kind::Section, true),
    ("storage.dir", Kind::Str, true),
    ("storage.crash_safe_mp4", Kind::Bool, false),
    ("storage.backup_dir", Kind::Str, false),
    ("storage.s3", Kind::Section, false),
    ("storage.s3.endpoint", Kind::Str, false),
    ("storage.s3.region", Kind::Str, true),
    ("storage.s3.bucket", Kind::Str, true),
    ("storage.s3.access_key", Kind::Str, true),
    ("storage.s3.secret", Kind::Str, true),
    ("storage.s3.force_path_style", Kind::Bool, false),
    ("storage.s3.session_token", Kind::Str, false),
    ("storage.gcp", Kind::Section, false),
    ("storage.gcp.bucket", Kind::Str, true),
    ("storage.gcp.credentials", Kind::Str, false),
    ("storage.gcp.credentials_file", Kind::Str, false),
    ("storage.azure", Kind::Section, false),
    ("storage.azure.account_name", Kind::Str, true),
    ("storage.azure.account_key", Kind::Str, true),
    ("storage.azure.container_name", Kind::Str, true),
    ("storage.azure.endpoint", Kind::Str, false),
    ("recipes", Kind::Section, true),
    ("recipes.dir", Kind::Str, true),
    ("recipes.layouts", Kind::Str, false),
    ("always_on", Kind::TableList, false),
    ("webhooks", Kind::Section, false),
    ("webhooks.urls", Kind::StrList, true),
    ("webhooks.api_key", Kind::Str, false),
    ("livekit", Kind::Section, false),
    ("livekit.url", Kind::Str, true),
    ("livekit.api_key", Kind::Str, true),
    ("livekit.api_secret", Kind::Str, true),
    ("livekit.reconnect_timeout", Kind::Number, false),
    ("redis", Kind::Section, false),
    ("redis.address", Kind::Str, true),
    ("redis.password", Kind::Str, false),
    ("redis.db", Kind::Number, false),
    ("worker", Kind::Section, false),
    ("worker.cpus", Kind::Number, false),
    ("worker.costs", Kind::NumberTable, false),
];

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Relative directories are resolved against `base` (the config file's directory).
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let root: Table = text.parse().map_err(|e: toml::de::Error| ConfigErrors(vec![format!("syntax: {e}")]))?;
        let mut errors = Vec::new();
        check_keys(&root, "", &mut errors);
        check_schema(&root, &mut errors);

        let reader = Reader { root: &root };
        let listen = reader.str("server.listen");
        let listen = match listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) if !listen.is_empty() => {
                errors.push(format!("server.listen: `{listen}` is not an address like 127.0.0.1:7980"));
                None
            }
            Err(_) => None,
        };
        for key in ["server.api_key", "server.api_secret"] {
            if root_has(&root, key) && reader.str(key).is_empty() {
                errors.push(format!("{key}: must not be empty (auth is always on)"));
            }
        }
        // A short HMAC key can be guessed offline from one token; LiveKit asks for 32 characters.
        let secret = reader.str("server.api_secret");
        if !secret.is_empty() && secret.len() < 32 {
            tracing::warn!(
                "server.api_secret is {} characters: anyone holding one token can guess it offline; use 32 or more",
                secret.len()
            );
        }
        let start_timeout = lookup(&root, "server.start_timeout").and_then(number).unwrap_or(30.0);
        if !(1.0..=3600.0).contains(&start_timeout) {
            errors.push(format!("server.start_timeout: {start_timeout} is not between 1 and 3600 seconds"));
        }
        let stream_reconnect_timeout =
            lookup(&root, "server.stream_reconnect_timeout").and_then(number).unwrap_or(60.0);
        if !(0.0..=86400.0).contains(&stream_reconnect_timeout) {
            errors.push(format!(
                "server.stream_reconnect_timeout: {stream_reconnect_timeout} is not between 0 and 86400 seconds"
            ));
        }
        let reconnect_timeout = lookup(&root, "livekit.reconnect_timeout").and_then(number).unwrap_or(60.0);
        if !(0.0..=86400.0).contains(&reconnect_timeout) {
            errors.push(format!("livekit.reconnect_timeout: {reconnect_timeout} is not between 0 and 86400 seconds"));
        }
        let livekit = root.get("livekit").map(|_| LiveKitConfig {
            url: reader.str("livekit.url"),
            api_key: reader.str("livekit.api_key"),
            api_secret: reader.str("livekit.api_secret"),
            reconnect_timeout: std::time::Duration::from_secs_f64(reconnect_timeout.clamp(0.0, 86400.0)),
        });
        if let Some(lk) = &livekit
            && !lk.url.is_empty()
            && !["ws://", "wss://", "http://", "https://"].iter().any(|s| lk.url.starts_with(s))
        {
            errors.push(format!("livekit.url: `{}` must start with ws://, wss://, http:// or https://", lk.url));
        }
        let always_on = parse_always_on(&root, &mut errors);
        let worker = root.get("redis").map(|_| {
            let password = reader.str("redis.password");
            let auth = if password.is_empty() { String::new() } else { format!(":{password}@") };
            let db = lookup(&root, "redis.db").and_then(number).unwrap_or(0.0) as u64;
            let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
            WorkerConfig {
                redis_url: format!("redis://{auth}{}/{db}", reader.str("redis.address")),
                cpus: lookup(&root, "worker.cpus").and_then(number).unwrap_or(cpus),
                costs: lookup(&root, "worker.costs")
                    .and_then(Value::as_table)
                    .map(|t| t.iter().filter_map(|(k, v)| Some((k.clone(), number(v)?))).collect())
                    .unwrap_or_default(),
            }
        });
        if worker.is_some() && livekit.is_none() {
            errors.push("redis: worker mode needs the [livekit] section of the same server".into());
        }
        let webhooks = root.get("webhooks").map(|_| {
            let urls: Vec<String> = lookup(&root, "webhooks.urls")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for (i, url) in urls.iter().enumerate() {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    errors.push(format!("webhooks.urls[{i}]: `{url}` is not an http(s) URL"));
                }
            }
            // The signing key must be one egret has the secret of: the server's or LiveKit's.
            let key = reader.str("webhooks.api_key");
            let known = [("server.api_key", "server.api_secret"), ("livekit.api_key", "livekit.api_secret")];
            let pairs: Vec<(String, String)> =
                known.iter().map(|(k, s)| (reader.str(k), reader.str(s))).filter(|(k, _)| !k.is_empty()).collect();
            let (api_key, api_secret) = match pairs.iter().find(|(k, _)| key.is_empty() || *k == key) {
                Some(pair) => pair.clone(),
                None => {
                    errors.push(format!(
                        "webhooks.api_key: `{key}` has no known secret (use server.api_key or livekit.api_key)"
                    ));
                    (String::new(), String::new())
                }
            };
            WebhooksConfig { urls, api_key, api_secret }
        });
        let upload = upload::upload_target(&root, &reader, base, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            server: ServerConfig {
                listen: listen.expect("checked above"),
                api_key: reader.str("server.api_key"),
                api_secret: reader.str("server.api_secret"),
                start_timeout: std::time::Duration::from_secs_f64(start_timeout),
                stream_reconnect_timeout: std::time::Duration::from_secs_f64(
                    stream_reconnect_timeout.clamp(0.0, 86400.0),
                ),
                metrics_public: reader.bool("server.metrics_public").unwrap_or(true),
                state_dir: match reader.str("server.state_dir") {
                    dir if dir.is_empty() => base.join(".egret"),
                    dir => base.join(dir),
                },
            },
            storage: StorageConfig {
                dir: base.join(reader.str("storage.dir")),
                crash_safe_mp4: reader.bool("storage.crash_safe_mp4").unwrap_or(true),
                upload,
                backup_dir: match reader.str("storage.backup_dir") {
                    dir if dir.is_empty() => base.join(reader.str("storage.dir")).join("backup"),
                    dir => base.join(dir),
                },
            },
            recipes: RecipesConfig {
                dir: base.join(reader.str("recipes.dir")),
                layouts: match reader.str("recipes.layouts") {
                    dir if dir.is_empty() => base.join("layouts"),
                    dir => base.join(dir),
                },
                layouts_url: String::new(),
            },
            webhooks,
            always_on,
            livekit,
            worker,
        })
    }
}

fn parse_always_on(root: &Table, errors: &mut Vec<String>) -> Vec<AlwaysOnEntry> {
    let Some(value) = root.get("always_on") else { return Vec::new() };
    let Some(list) = value.as_array() else {
        errors.push("always_on: must be a list of tables ([[always_on]])".into());
        return Vec::new();
    };
    let mut entries: Vec<AlwaysOnEntry> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("always_on[{i}]");
        let Some(table) = item.as_table() else {
            errors.push(format!("{path}: must be a table"));
            continue;
        };
        for key in table.keys().filter(|k| !["name", "recipe", "params"].contains(&k.as_str())) {
            errors.push(format!("{path}.{key}: unknown key"));
        }
        let text = |key: &str| match table.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None => Err(format!("{path}.{key}: missing")),
            Some(other) => Err(format!("{path}.{key}: must be a string, found {}", other.type_str())),
        };
        let (name, recipe) = (text("name"), text("recipe"));
        if let Ok(n) = &name {
            if names.contains(n) {
                errors.push(format!("{path}.name: `{n}` is used by another entry"));
            }
            names.push(n.clone());
        }
        let params = match table.get("params") {
            None => Ok(serde_json::json!({})),
            Some(Value::Table(t)) => serde_json::to_value(t).map_err(|e| format!("{path}.params: {e}")),
            Some(other) => Err(format!("{path}.params: must be a table, found {}", other.type_str())),
        };
        match (name, recipe, params) {
            (Ok(name), Ok(recipe), Ok(params)) => entries.push(AlwaysOnEntry { name, recipe, params }),
            (name, recipe, params) => errors.extend([name.err(), recipe.err(), params.err()].into_iter().flatten()),
        }
    }
    entries
}

fn number(value: &Value) -> Option<f64> {
    value.as_float().or_else(|| value.as_integer().map(|i| i as f64))
}

fn kind_of(path: &str) -> Option<(Kind, bool)> {
    SCHEMA.iter().find(|(p, _, _)| *p == path).map(|(_, k, r)| (*k, *r))
}

fn check_keys(table: &Table, prefix: &str, errors: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match kind_of(&path) {
            None => errors.push(format!("{path}: unknown key")),
            Some((Kind::Section, _)) => match value {
                Value::Table(t) => check_keys(t, &path, errors),
                _ => errors.push(format!("{path}: must be a table ([{path}])")),
            },
            Some((Kind::Str, _)) if !value.is_str() => {
                errors.push(format!("{path}: must be a string, found {}", value.type_str()))
            }
            Some((Kind::Bool, _)) if !value.is_bool() => {
                errors.push(format!("{path}: must be true or false, found {}", value.type_str()))
            }
            Some((Kind::StrList, _)) if !value.as_array().is_some_and(|a| a.iter().all(Value::is_str)) => {
                errors.push(format!("{path}: must be a list of strings"))
            }
            Some((Kind::Number, _)) if number(value).is_none_or(|n| n < 0.0) => {
                errors.push(format!("{path}: must be a number >= 0, found {value}"))
            }
            Some((Kind::NumberTable, _)) => match value.as_table() {
                Some(t) => {
                    for (k, v) in t.iter().filter(|(_, v)| number(v).is_none_or(|n| n < 0.0)) {
                        errors.push(format!("{path}.{k}: must be a number >= 0, found {v}"));
                    }
                }
                None => errors.push(format!("{path}: must be a table of numbers")),
            },
            Some(_) => {}
        }
    }
}

/// Required keys of every present section (and required sections) must be there.
fn check_schema(root: &Table, errors: &mut Vec<String>) {
    let present: BTreeSet<&str> =
        SCHEMA.iter().filter(|(p, k, _)| *k == Kind::Section && root_has(root, p)).map(|(p, _, _)| *p).collect();
    for (path, kind, required) in SCHEMA {
        if !required || root_has(root, path) {
            continue;
        }
        match path.rsplit_once('.') {
            None if *kind == Kind::Section => errors.push(format!("{path}: missing section [{path}]")),
            Some((section, _)) if present.contains(section) => errors.push(format!("{path}: missing")),
            _ => {}
        }
    }
}

fn root_has(root: &Table, path: &str) -> bool {
    lookup(root, path).is_some()
}

fn lookup<'a>(root: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = root.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

struct Reader<'a> {
    root: &'a Table,
}

impl Reader<'_> {
    fn str(&self, path: &str) -> String {
        lookup(self.root, path).and_then(Value::as_str).unwrap_or_default().to_string()
    }
    fn bool(&self, path: &str) -> Option<bool> {
        lookup(self.root, path).and_then(Value::as_bool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const GOOD: &str = r#"
[server]
listen = "127.0.0.1:7980"
api_key = "k"
api_secret = "s"
[storage]
dir = "out"
[recipes]
dir = "scripts"
"#;

    #[test]
    fn parses_good_config() {
        let c = Config::parse(GOOD, Path::new("/base")).unwrap();
        assert_eq!(c.storage.dir, Path::new("/base/out"));
        assert!(c.storage.crash_safe_mp4);
        assert!(c.livekit.is_none());
    }

    #[test]
    fn reconnect_and_state_keys() {
        let text = GOOD.replace("[server]\n", "[server]\nstream_reconnect_timeout = 5\nstate_dir = \"st\"\n")
            + "[livekit]\nurl = \"ws://h\"\napi_key = \"k\"\napi_secret = \"s\"\nreconnect_timeout = 7\n";
        let c = Config::parse(&text, Path::new("/base")).unwrap();
        assert_eq!(c.server.stream_reconnect_timeout.as_secs(), 5);
        assert_eq!(c.server.state_dir, Path::new("/base/st"));
        assert_eq!(c.livekit.unwrap().reconnect_timeout.as_secs(), 7);
    }

    #[test]
    fn always_on_entries() {
        let text = format!(
            "{GOOD}[[always_on]]\nname = \"a\"\nrecipe = \"web\"\nparams = {{ url = \"http://x\", stream_outputs = [{{ urls = [\"rtmp://h/a/b\"] }}] }}\n"
        );
        let c = Config::parse(&text, Path::new(".")).unwrap();
        assert_eq!(c.always_on[0].params["stream_outputs"][0]["urls"][0], "rtmp://h/a/b");
        let bad =
            format!("{GOOD}[[always_on]]\nname = \"a\"\ncolour = 1\n[[always_on]]\nname = \"a\"\nrecipe = \"web\"\n");
        let errs = Config::parse(&bad, Path::new(".")).unwrap_err().0.join("\n");
        for expected in
            ["always_on[0].colour: unknown key", "always_on[0].recipe: missing", "always_on[1].name: `a` is used"]
        {
            assert!(errs.contains(expected), "{expected} not in {errs}");
        }
    }

    #[test]
    fn nested_s3_section() {
        let text = format!("{GOOD}[storage.s3]\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"b\"\n");
        let errs = Config::parse(&text, Path::new(".")).unwrap_err().0.join("\n");
        for missing in ["storage.s3.region: missing", "storage.s3.access_key: missing", "storage.s3.secret: missing"] {
            assert!(errs.contains(missing), "{missing} not in {errs}");
        }
        assert!(Config::parse(GOOD, Path::new(".")).unwrap().storage.upload.is_none());
    }

    #[test]
    fn webhooks_are_checked() {
        let ok = Config::parse(&format!("{GOOD}[webhooks]\nurls = [\"http://127.0.0.1:9/hook\"]\n"), Path::new("."))
            .unwrap();
        assert_eq!(ok.webhooks.unwrap().urls, ["http://127.0.0.1:9/hook"]);
        let errs =
            Config::parse(&format!("{GOOD}[webhooks]\nurls = [\"ftp://x\", 3]\n"), Path::new(".")).unwrap_err().0;
        assert!(errs.iter().any(|e| e.starts_with("webhooks.urls: must be a list of strings")), "{errs:?}");
    }

    #[test]
    fn reports_every_error_with_its_key_path() {
        let text = r#"
[server]
listen = "nope"
api_key = 5
colour = "blue"
[storage]
dir = "out"
[livekit]
url = "ftp://x"
"#;
        let errs = Config::parse(text, Path::new(".")).unwrap_err().0;
        let joined = errs.join("\n");
        for expected in [
            "server.listen: `nope`",
            "server.api_key: must be a string",
            "server.colour: unknown key",
            "server.api_secret: missing",
            "recipes: missing section",
            "livekit.api_key: missing",
            "livekit.url: `ftp://x`",
        ] {
            assert!(joined.contains(expected), "missing {expected:?} in:\n{joined}");
        }
    }
}
