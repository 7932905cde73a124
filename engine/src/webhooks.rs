//! LiveKit-style webhooks: `egress_started`, `egress_updated`, `egress_ended` as WebhookEvent
//! proto3 JSON, POSTed with an `Authorization` JWT (HS256, issuer = API key) whose `sha256`
//! claim is the base64 SHA-256 of the body.
//!
//! Two kinds of receivers, as in LiveKit: the `[webhooks] urls` hear of every egress; a
//! request's own `webhooks` (`[{url, signing_key}]`) hear of that egress only. As in LiveKit,
//! `signing_key` names an API key (its secret signs the events; empty = the default key), it
//! is not a secret itself. Each receiver has its own ordered queue, so an unreachable URL
//! delays nobody else; each event is retried with backoff before the next is sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use livekit_protocol as lk;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::egress::EgressRecord;
use crate::request::FieldError;

const ATTEMPTS: u32 = 4;

/// One receiver: where events go and the key that signs them.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookTarget {
    pub url: String,
    pub api_key: String,
    secret: String,
}

/// The API keys egret knows a secret of (server, LiveKit): what `signing_key` may name.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: Vec<(String, String)>,
    /// The key of an empty `signing_key`: `[webhooks]`'s, else LiveKit's, else the server's.
    default_key: String,
}

impl KeyRing {
    pub fn from_config(config: &Config) -> KeyRing {
        let mut keys = Vec::new();
        if let Some(w) = &config.webhooks {
            keys.push((w.api_key.clone(), w.api_secret.clone()));
        }
        if let Some(l) = &config.livekit {
            keys.push((l.api_key.clone(), l.api_secret.clone()));
        }
        keys.push((config.server.api_key.clone(), config.server.api_secret.clone()));
        keys.retain(|(k, s)| !k.is_empty() && !s.is_empty());
        let default_key = keys.first().map(|(k, _)| k.clone()).unwrap_or_default();
        KeyRing { keys, default_key }
    }

    fn secret_of(&self, key: &str) -> Option<&str> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, s)| s.as_str())
    }

    /// The request's own receivers (`params.webhooks`), each with its signing key resolved.
    /// Errors name the field: `webhooks[1].signing_key`.
    pub fn request_targets(&self, params: &Value) -> Result<Vec<WebhookTarget>, FieldError> {
        let Some(list) = params.get("webhooks").filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
        let list =
            list.as_array().ok_or_else(|| FieldError::new("webhooks", "must be a list of {url, signing_key}"))?;
        let mut targets = Vec::new();
        for (i, hook) in list.iter().enumerate() {
            let field = |name: &str| format!("webhooks[{i}].{name}");
            let Some(hook) = hook.as_object() else {
                return Err(FieldError::new(format!("webhooks[{i}]"), "must be an object {url, signing_key}"));
            };
            if let Some(unknown) = hook.keys().find(|k| !["url", "signing_key"].contains(&k.as_str())) {
                return Err(FieldError::new(field(unknown), "unknown field (a webhook has url and signing_key)"));
            }
            let url = hook.get("url").and_then(Value::as_str).unwrap_or_default();
            let parsed = url.parse::<hyper::Uri>().ok();
            let usable = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !usable {
                return Err(FieldError::new(field("url"), format!("`{url}` is not an http(s) URL")));
            }
            let key = match hook.get("signing_key") {
                None | Some(Value::Null) => "",
                Some(Value::String(key)) => key.as_str(),
                Some(_) => return Err(FieldError::new(field("signing_key"), "must be a string (an API key)")),
            };
            let key = if key.is_empty() { self.default_key.as_str() } else { key };
            let Some(secret) = self.secret_of(key) else {
                let known = self.keys.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                return Err(FieldError::new(
                    field("signing_key"),
                    format!("`{key}` is not an API key egret has a secret for (known: {known})"),
                ));
            };
            targets.push(WebhookTarget { url: url.to_string(), api_key: key.to_string(), secret: secret.to_string() });
        }
        Ok(targets)
    }
}
/// Sends the events of every egress to the configured receivers and to each egress's own.
#[derive(Clone)]
pub struct Notifier {
    keys: KeyRing,
    /// One queue per `[webhooks]` URL, for the life of the server.
    configured: Vec<Queue>,
}

/// An ordered queue of (event name, body) to one receiver.
type Queue = mpsc::UnboundedSender<(String, Arc<Vec<u8>>)>;

fn deliver_in_order(target: WebhookTarget) -> Queue {
    let (queue, mut events) = mpsc::unbounded_channel::<(String, Arc<Vec<u8>>)>();
    let client = crate::http_client::client();
    tokio::spawn(async move {
        let key = EncodingKey::from_secret(target.secret.as_bytes());
        while let Some((event, body)) = events.recv().await {
            deliver(&client, &target, &key, &body, &event).await;
        }
    });
    queue
}

#[derive(Serialize)]
struct WebhookClaims {
    iss: String,
    nbf: u64,
    exp: u64,
    sha256: String,
}

impl Notifier {
    pub fn start(config: &Config) -> Notifier {
        let keys = KeyRing::from_config(config);
        let configured = config
            .webhooks
            .iter()
            .flat_map(|w| {
                w.urls.iter().map(|url| WebhookTarget {
                    url: url.clone(),
                    api_key: w.api_key.clone(),
                    secret: w.api_secret.clone(),
                })
            })
            .map(deliver_in_order)
            .collect();
        Notifier { keys, configured }
    }

    /// Follows one egress: started now, updated on each change a client can see (status,
    /// streams added, removed or failed), ended at the end.
    pub fn follow(&self, record: Arc<EgressRecord>, info: impl Fn(&EgressRecord) -> lk::EgressInfo + Send + 'static) {
        let own = match self.keys.request_targets(&record.params) {
            Ok(targets) => targets,
            Err(e) => {
                // Checked at start; only a changed config makes a kept request's hook unusable.
                tracing::warn!(egress = %record.id, "request webhooks skipped: {}: {}", e.field, e.message);
                Vec::new()
            }
        };
        let mut queues: Vec<Queue> = self.configured.clone();
        queues.extend(own.into_iter().map(deliver_in_order));
        if queues.is_empty() {
            return;
        }
        let send = move |event: &str, info: lk::EgressInfo| {
            let body = Arc::new(event_body(event, info));
            for queue in &queues {
                let _ = queue.send((event.to_string(), body.clone()));
            }
        };
        if record.is_restored() {
            // An egress a restart interrupted: only its end is news.
            send("egress_ended", info(&record));
            return;
        }
        let started = info(&record);
        // What the last event said, but for its time: an update that says nothing new (an
        // output's internal state moved, nothing a client reads) is not sent again.
        let mut told = lk::EgressInfo { updated_at: 0, ..started.clone() };
        send("egress_started", started);
        if record.status().is_terminal() {
            // It ended before its start returned (observers hear of it then).
            send("egress_ended", info(&record));
            return;
        }
        let mut changes = record.watch_updates();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                // The info sent decides the event: the status may change between two looks.
                let now = info(&record);
                let ended = now.status >= lk::EgressStatus::EgressComplete as i32;
                let news = lk::EgressInfo { updated_at: 0, ..now.clone() };
                if !ended && news == told {
                    continue;
                }
                told = news;
                send(if ended { "egress_ended" } else { "egress_updated" }, now);
                if ended {
                    break;
                }
            }
        });
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn event_body(event: &str, info: lk::EgressInfo) -> Vec<u8> {
    let event = lk::WebhookEvent {
        event: event.to_string(),
        id: format!("EV_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        created_at: now() as i64,
        egress_info: Some(info),
        ..Default::default()
    };
    serde_json::to_vec(&event).expect("serializable")
}

async fn deliver(
    client: &crate::http_client::HttpClient,
    target: &WebhookTarget,
    key: &EncodingKey,
    body: &[u8],
    event: &str,
) {
    let url = target.url.as_str();
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
    let claims =
        WebhookClaims { iss: target.api_key.clone(), nbf: now().saturating_sub(1), exp: now() + 300, sha256: digest };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).expect("HS256 encoding");
    for attempt in 1..=ATTEMPTS {
        let request = hyper::Request::post(url)
            .header("content-type", "application/webhook+json")
            .header("authorization", &token)
            .body(Full::new(Bytes::copy_from_slice(body)));
        let outcome = match request {
            Ok(request) => match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => return,
                Ok(Ok(response)) => format!("HTTP {}", response.status()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            },
            Err(e) => {
                tracing::warn!(url, "webhook URL unusable: {e}");
                return;
            }
        };
        tracing::warn!(url, event, attempt, "webhook delivery failed: {outcome}");
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ring() -> KeyRing {
        KeyRing {
            keys: vec![("hooks".into(), "s1".into()), ("devkey".into(), "secret".into())],
            default_key: "hooks".into(),
        }
    }

    #[test]
    fn a_signing_key_names_a_known_api_key() {
        let params = json!({ "webhooks": [
            { "url": "http://127.0.0.1:9/a", "signing_key": "devkey" },
            { "url": "https://h.example/b" },
            { "url": "https://h.example/c", "signing_key": "" },
        ]});
        let targets = ring().request_targets(&params).unwrap();
        let keys: Vec<(&str, &str)> = targets.iter().map(|t| (t.api_key.as_str(), t.secret.as_str())).collect();
        assert_eq!(keys, [("devkey", "secret"), ("hooks", "s1"), ("hooks", "s1")]);
        assert!(ring().request_targets(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_request_webhooks_are_refused_by_field() {
        for (hooks, field) in [
            (json!("http://x"), "webhooks"),
            (json!([3]), "webhooks[0]"),
            (json!([{ "url": "ftp://x/y" }]), "webhooks[0].url"),
            (json!([{ "url": "http://x/y" }, { "url": "" }]), "webhooks[1].url"),
            (json!([{ "url": "http://x/y", "signing_key": "nobody" }]), "webhooks[0].signing_key"),
            (json!([{ "url": "http://x/y", "signing_key": 5 }]), "webhooks[0].signing_key"),
            (json!([{ "url": "http://x/y", "secret": "x" }]), "webhooks[0].secret"),
        ] {
            let err = ring().request_targets(&json!({ "webhooks": hooks })).unwrap_err();
            assert_eq!(err.field, field, "{hooks}: {}", err.message);
        }
    }
}
