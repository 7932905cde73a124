//! `egret start | list | show | stop | watch`: a client of a running server, reached at the
//! config's `listen` address (or `--url` / `EGRET_URL`) with a token minted from the config's
//! key pair, so whoever can read egress.toml can drive the server.
//!
//! Exit codes a script can rely on: 0 done; 1 the server refused (4xx: its message, naming
//! the field, on stderr); 2 usage; 3 the server cannot be reached or failed (5xx); 4 the
//! egress ended failed or aborted (`stop`, `start --wait`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use crate::config::Config;

pub const USAGE: &str = "client commands (against a running egret; --url or EGRET_URL overrides the config's listen):
  start RECIPE [key=value ...] [--json FILE] [--wait]
          start an egress; values are JSON when they parse (3, true, [..], {..}), else text;
          dotted keys nest (advanced.width=640); prints the egress id (--wait: until it ends)
  list [--json]      every egress: id, recipe, status, duration, bytes, outputs
  show ID            one egress as JSON
  stop ID [--no-wait] stop it; waits until its files are finalized and prints how it ended
  watch [--interval SECONDS] [--count N]   the list, refreshed (durations and bytes growing)
exit codes: 0 ok, 1 refused by the server (message on stderr), 2 usage, 3 server unreachable
or failing, 4 the egress ended failed or aborted";

pub const COMMANDS: &[&str] = &["start", "list", "show", "stop", "watch"];

/// Why a command failed, and its exit code.
struct Failure(u8, String);

type Outcome = Result<(), Failure>;

pub fn run(config: &Config, command: &str, args: &[String], url: Option<String>) -> ExitCode {
    // `egret start --help`: the usage, not a recipe named `--help`.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let base = url.or_else(|| std::env::var("EGRET_URL").ok()).map(|u| {
        // `host:port`, as `listen` is written, means http.
        if u.contains("://") { u } else { format!("http://{u}") }
    });
    let base = base.unwrap_or_else(|| {
        let listen = config.server.listen;
        let host = if listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { listen.ip().to_string() };
        format!("http://{host}:{}", listen.port())
    });
    let token = crate::auth::Verifier::new(&config.server.api_key, &config.server.api_secret).mint("egret-cli", 600);
    let client = Client { base: base.trim_end_matches('/').to_string(), token, http: crate::http_client::client() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        match command {
            "start" => start(&client, args).await,
            "list" => list(&client, args).await,
            "show" => show(&client, args).await,
            "stop" => stop(&client, args).await,
            "watch" => watch(&client, args).await,
            _ => Err(Failure(2, format!("unknown command `{command}`"))),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("egret {command}: {message}");
            if code == 2 {
                eprintln!("{USAGE}");
            }
            ExitCode::from(code)
        }
    }
}

struct Client {
    base: String,
    token: String,
    http: crate::http_client::HttpClient,
}

impl Client {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .map_err(|e| Failure(2, format!("bad URL {url}: {e}")))?;
        let unreachable = |e: String| Failure(3, format!("cannot reach egret at {}: {e}", self.base));
        let response = tokio::time::timeout(Duration::from_secs(60), self.http.request(request))
            .await
            .map_err(|_| unreachable("no answer within 60 s".into()))?
            .map_err(|e| unreachable(root_cause(&e)))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match status {
            200..=299 => Ok(value),
            400..=499 => Err(Failure(1, refusal(status, &value))),
            _ => Err(Failure(3, refusal(status, &value))),
        }
    }

    async fn egress(&self, id: &str) -> Result<Value, Failure> {
        self.call("GET", &format!("/v1/egress/{}", crate::http_client::uri_encode(id)), None).await
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// "HTTP 400: params.url: must be an http(s) URL" (the field once, however the server put it).
fn refusal(status: u16, body: &Value) -> String {
    let message = body["error"].as_str().unwrap_or("(no message)");
    let Some(field) = body["field"].as_str().filter(|f| !f.is_empty()) else {
        return format!("HTTP {status}: {message}");
    };
    let last = field.rsplit('.').next().unwrap_or(field);
    let message = [field, last]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix).and_then(|m| m.strip_prefix(": ")))
        .unwrap_or(message);
    format!("HTTP {status}: {field}: {message}")
}

/// Refuses arguments a command does not take (a typo must not pass for a default).
fn no_more(args: impl IntoIterator<Item = impl AsRef<str>>) -> Outcome {
    match args.into_iter().next() {
        Some(extra) => Err(Failure(2, format!("unexpected argument `{}`", extra.as_ref()))),
        None => Ok(()),
    }
}

/// `key=value` pairs as params: JSON values where they parse, dotted keys nested.
fn params_from_pairs(pairs: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut params = Map::new();
    for pair in pairs {
        let Some((key, text)) = pair.split_once('=') else {
            return Err(Failure(2, format!("`{pair}` is not key=value")));
        };
        let value = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
        let mut path: Vec<&str> = key.split('.').collect();
        let last = path.pop().filter(|k| !k.is_empty()).ok_or_else(|| Failure(2, format!("empty key in `{pair}`")))?;
        let mut at = &mut params;
        for part in path {
            let slot = at.entry(part.to_string()).or_insert_with(|| json!({}));
            at = slot.as_object_mut().ok_or_else(|| Failure(2, format!("`{key}`: `{part}` is not an object")))?;
        }
        if at.insert(last.to_string(), value).is_some() {
            return Err(Failure(2, format!("`{key}` is given twice")));
        }
    }
    Ok(params)
}

async fn start(client: &Client, args: &[String]) -> Outcome {
    let (mut recipe, mut pairs, mut file, mut wait) = (None, Vec::new(), None, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => file = Some(args.next().ok_or_else(|| Failure(2, "--json needs a file".into()))?),
            "--wait" => wait = true,
            _ if recipe.is_none() && !arg.contains('=') => recipe = Some(arg.clone()),
            _ => pairs.push(arg.clone()),
        }
    }
    let recipe = recipe.ok_or_else(|| Failure(2, "name the recipe: egret start RECIPE ...".into()))?;
    let mut params = match file {
        Some(path) => {
            let text = if path == "-" {
                std::io::read_to_string(std::io::stdin()).map_err(|e| Failure(2, format!("stdin: {e}")))?
            } else {
                std::fs::read_to_string(path).map_err(|e| Failure(2, format!("{path}: {e}")))?
            };
            match serde_json::from_str::<Value>(&text).map_err(|e| Failure(2, format!("{path}: {e}")))? {
                // Either the params alone or a whole `POST /v1/egress` body.
                Value::Object(mut o) if o.contains_key("params") && o.len() <= 2 => match o.remove("params") {
                    Some(Value::Object(p)) => p,
                    _ => return Err(Failure(2, format!("{path}: `params` must be an object"))),
                },
                Value::Object(o) => o,
                _ => return Err(Failure(2, format!("{path}: must hold a JSON object"))),
            }
        }
        None => Map::new(),
    };
    params.extend(params_from_pairs(&pairs)?);
    let started = client.call("POST", "/v1/egress", Some(json!({ "recipe": recipe, "params": params }))).await?;
    let id = started["egress_id"].as_str().unwrap_or_default().to_string();
    println!("{id}");
    if wait { wait_for_end(client, &id).await } else { Ok(()) }
}

async fn wait_for_end(client: &Client, id: &str) -> Outcome {
    loop {
        let info = client.egress(id).await?;
        let status = info["status"].as_str().unwrap_or_default();
        if ["complete", "failed", "aborted"].contains(&status) {
            if status != "complete" {
                return Err(Failure(4, ended_text(&info)));
            }
            eprintln!("{id}: complete ({})", info["reason"].as_str().unwrap_or(""));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ended_text(info: &Value) -> String {
    format!(
        "{} {}: {}",
        info["egress_id"].as_str().unwrap_or("?"),
        info["status"].as_str().unwrap_or("?"),
        info["error"].as_str().or(info["reason"].as_str()).unwrap_or("")
    )
}

async fn show(client: &Client, args: &[String]) -> Outcome {
    let [id] = args else { return Err(Failure(2, "give one egress id".into())) };
    if id.starts_with('-') {
        return Err(Failure(2, format!("unexpected option `{id}`")));
    }
    let info = client.egress(id).await?;
    println!("{}", serde_json::to_string_pretty(&info).expect("JSON"));
    Ok(())
}

async fn stop(client: &Client, args: &[String]) -> Outcome {
    let no_wait = args.iter().any(|a| a == "--no-wait");
    no_more(args.iter().filter(|a| a.starts_with('-') && *a != "--no-wait"))?;
    let ids: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let [id] = ids.as_slice() else { return Err(Failure(2, "give one egress id".into())) };
    let path = format!("/v1/egress/{}/stop", crate::http_client::uri_encode(id));
    let info = client.call("POST", &path, None).await?;
    if no_wait {
        println!("{}", info["status"].as_str().unwrap_or_default());
        return Ok(());
    }
    let outcome = wait_for_end(client, id).await;
    let info = client.egress(id).await?;
    println!("{}", info["status"].as_str().unwrap_or_default());
    outcome
}

async fn list(client: &Client, args: &[String]) -> Outcome {
    let json = args.iter().any(|a| a == "--json");
    no_more(args.iter().filter(|a| *a != "--json"))?;
    let listed = client.call("GET", "/v1/egress", None).await?;
    if json {
        // As the API answers it: {"egresses": [...]}.
        println!("{}", serde_json::to_string_pretty(&listed).expect("JSON"));
    } else {
        print!("{}", table(&listed["egresses"]));
    }
    Ok(())
}

async fn watch(client: &Client, args: &[String]) -> Outcome {
    let mut interval = 1.0f64;
    let mut count: Option<u64> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let number = |v: Option<&String>| v.and_then(|v| v.parse::<f64>().ok()).filter(|v| *v > 0.0);
        match arg.as_str() {
            "--interval" => interval = number(args.next()).ok_or_else(|| Failure(2, "--interval SECONDS".into()))?,
            "--count" => count = Some(number(args.next()).ok_or_else(|| Failure(2, "--count N".into()))? as u64),
            other => return Err(Failure(2, format!("unknown argument `{other}`"))),
        }
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut shown = 0u64;
    loop {
        // A server that restarts or is away for a while is waited for, not given up on.
        let shown_list = match client.call("GET", "/v1/egress", None).await {
            Ok(listed) => table(&listed["egresses"]),
            Err(Failure(3, message)) => format!("{message} (retrying)\n"),
            Err(other) => return Err(other),
        };
        let mut out = std::io::stdout().lock();
        if terminal {
            let _ = write!(out, "\x1b[H\x1b[2J"); // home, clear
        }
        let now = chrono::Local::now().format("%H:%M:%S");
        let _ = write!(out, "egret at {} — {now}\n{shown_list}", client.base);
        if !terminal {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    }
}

/// The egress list as aligned columns, newest first.
fn table(egresses: &Value) -> String {
    let mut rows = vec![["ID", "RECIPE", "STATUS", "DURATION", "BYTES", "OUTPUTS"].map(String::from).to_vec()];
    let mut list: Vec<&Value> = egresses.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    list.sort_by(|a, b| {
        b["created_at"].as_f64().partial_cmp(&a["created_at"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
    });
    for e in list {
        let outputs: Vec<String> = e["outputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| format!("{}:{}", o["kind"].as_str().unwrap_or("?"), o["status"].as_str().unwrap_or("?")))
            .collect();
        rows.push(vec![
            e["egress_id"].as_str().unwrap_or("?").to_string(),
            e["recipe"].as_str().unwrap_or("?").to_string(),
            e["status"].as_str().unwrap_or("?").to_string(),
            format!("{:.1}s", e["duration"].as_f64().unwrap_or(0.0)),
            human_bytes(e["bytes"].as_u64().unwrap_or(0)),
            outputs.join(" "),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_params() {
        let pairs: Vec<String> =
            ["duration=3", "tone=a", "advanced.width=640", "file_outputs=[{\"filepath\":\"x.mp4\"}]"]
                .map(String::from)
                .to_vec();
        let params = Value::Object(params_from_pairs(&pairs).unwrap_or_else(|e| panic!("{}", e.1)));
        assert_eq!(
            params,
            json!({"duration": 3, "tone": "a", "advanced": {"width": 640},
                                  "file_outputs": [{"filepath": "x.mp4"}]})
        );
        assert_eq!(params_from_pairs(&["novalue".to_string()]).err().map(|f| f.0), Some(2));
    }
}
