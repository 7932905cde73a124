//! psrpc's Redis transport: PUBLISH of a `Msg` envelope (type URL + protobuf value) on
//! `Service|Method|topic|KIND` channels; queue-type requests are taken by whoever first sets a
//! 5 s `SET NX` lock on the message's SHA-256 (psrpc v0.7.2, `internal/bus/bus_redis.go`).

use anyhow::{Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::proto::internal::Msg;

const QUEUE_LOCK_MS: u64 = 5000;

#[derive(Clone)]
pub struct Bus {
    /// Reconnects by itself after Redis restarts or the link drops.
    conn: redis::aio::ConnectionManager,
}

/// A message received on a subscribed channel: the channel and the envelope's payload.
pub struct Received {
    pub channel: String,
    pub type_url: String,
    pub value: Vec<u8>,
    /// The raw message, what queue locks hash.
    pub raw: Vec<u8>,
}

impl Bus {
    /// Connects for commands and subscribes to `channels` and `patterns`; received messages
    /// arrive on the returned queue. A lost subscription is made again (with backoff).
    pub async fn connect(
        url: &str,
        channels: &[String],
        patterns: &[String],
    ) -> Result<(Bus, mpsc::UnboundedReceiver<Received>)> {
        let client = redis::Client::open(url).with_context(|| format!("redis URL `{url}`"))?;
        let conn = client.get_connection_manager().await.with_context(|| format!("connecting to {url}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // The first subscription is made before returning: a request published right after
        // start must not be missed.
        let first = subscribe(&client, channels, patterns).await.with_context(|| format!("subscribing on {url}"))?;
        let (channels, patterns) = (channels.to_vec(), patterns.to_vec());
        tokio::spawn(async move {
            let mut pubsub = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(active) = pubsub.take() {
                    forward(active, &tx).await;
                    if tx.is_closed() {
                        return;
                    }
                    tracing::error!("redis subscription lost; subscribing again");
                }
                tokio::time::sleep(backoff).await;
                match subscribe(&client, &channels, &patterns).await {
                    Ok(again) => {
                        tracing::info!("redis subscription restored");
                        pubsub = Some(again);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!("redis: {e}");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok((Bus { conn }, rx))
    }

    /// Publishes `message` (of protobuf type `full_name`, e.g. `internal.Request`).
    pub async fn publish(&self, channel: &str, full_name: &str, message: &impl Message) -> Result<()> {
        let envelope = Msg {
            type_url: format!("type.googleapis.com/{full_name}"),
            value: message.encode_to_vec(),
            channel: String::new(),
        };
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(envelope.encode_to_vec())
            .query_async(&mut conn)
            .await
            .with_context(|| format!("publishing on {channel}"))?;
        Ok(())
    }

    /// The queue lock: true for the one subscriber that takes this message.
    pub async fn take(&self, raw: &[u8]) -> bool {
        let key = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(raw));
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(rand_value())
            .arg("NX")
            .arg("PX")
            .arg(QUEUE_LOCK_MS)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        set.is_some()
    }

    pub fn conn(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }
}

async fn subscribe(
    client: &redis::Client,
    channels: &[String],
    patterns: &[String],
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    for channel in channels {
        pubsub.subscribe(channel).await?;
    }
    for pattern in patterns {
        pubsub.psubscribe(pattern).await?;
    }
    Ok(pubsub)
}

/// Forwards psrpc messages until the subscription ends.
async fn forward(pubsub: redis::aio::PubSub, tx: &mpsc::UnboundedSender<Received>) {
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let raw: Vec<u8> = message.get_payload_bytes().to_vec();
        let Ok(envelope) = Msg::decode(raw.as_slice()) else {
            tracing::debug!(channel = message.get_channel_name(), "not a psrpc message");
            continue;
        };
        let received = Received {
            channel: message.get_channel_name().to_string(),
            type_url: envelope.type_url,
            value: envelope.value,
            raw,
        };
        if tx.send(received).is_err() {
            return;
        }
    }
}

fn rand_value() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
