//! LiveKit-style webhooks: `egress_started`, `egress_updated`, `egress_ended` as WebhookEvent
//! proto3 JSON, POSTed to every configured URL with an `Authorization` JWT (HS256, issuer = API
//! key) whose `sha256` claim is the base64 SHA-256 of the body. Events are delivered in order,
//! each retried with backoff before the next is sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use livekit_protocol as lk;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::config::WebhooksConfig;
use crate::egress::{EgressRecord, EgressStatus};

const ATTEMPTS: u32 = 4;

#[derive(Clone)]
pub struct Notifier {
    queue: mpsc::UnboundedSender<(String, lk::EgressInfo)>,
}

#[derive(Serialize)]
struct WebhookClaims {
    iss: String,
    nbf: u64,
    exp: u64,
    sha256: String,
}

impl Notifier {
    /// Starts the delivery task; `None` when no webhooks are configured.
    pub fn start(config: Option<&WebhooksConfig>) -> Option<Notifier> {
        let config = config.filter(|c| !c.urls.is_empty())?.clone();
        let (queue, mut events) = mpsc::unbounded_channel::<(String, lk::EgressInfo)>();
        let client = crate::http_client::client();
        let key = EncodingKey::from_secret(config.api_secret.as_bytes());
        tokio::spawn(async move {
            while let Some((event, info)) = events.recv().await {
                let body = event_body(&event, info);
                for url in &config.urls {
                    deliver(&client, url, &body, &config.api_key, &key, &event).await;
                }
            }
        });
        Some(Notifier { queue })
    }

    /// Follows one egress: started now, updated on each change a client can see (status,
    /// streams added, removed or failed), ended at the end.
    pub fn follow(&self, record: Arc<EgressRecord>, info: impl Fn(&EgressRecord) -> lk::EgressInfo + Send + 'static) {
        let queue = self.queue.clone();
        if record.status().is_terminal() {
            // An egress a restart interrupted: only its end is news.
            let _ = queue.send(("egress_ended".into(), info(&record)));
            return;
        }
        let _ = queue.send(("egress_started".into(), info(&record)));
        let mut changes = record.watch_updates();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                let status: EgressStatus = record.status();
                let event = if status.is_terminal() { "egress_ended" } else { "egress_updated" };
                let _ = queue.send((event.into(), info(&record)));
                if status.is_terminal() {
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
    url: &str,
    body: &[u8],
    api_key: &str,
    key: &EncodingKey,
    event: &str,
) {
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
    let claims =
        WebhookClaims { iss: api_key.to_string(), nbf: now().saturating_sub(1), exp: now() + 300, sha256: digest };
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
