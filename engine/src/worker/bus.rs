//! psrpc's Redis transport: PUBLISH of a `Msg` envelope (type URL + protobuf value) on
//! `Service|Method|topic|KIND` channels; queue-type requests are taken by whoever first sets a
//! 5 s `SET NX` lock on the message's SHA-256 (psrpc v0.7.2, `internal/bus/bus_redis.go`).

use anyhow::{Context, Result};
use base64::Engine;
use futures_util::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::proto::internal::Msg;

const QUEUE_LOCK_MS: u64 = 5000;

#[derive(Clone)]
pub struct Bus {
    conn: redis::aio::MultiplexedConnection,
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
    /// Connects twice (commands, and a subscriber for `channels` and `patterns`); received
    /// messages arrive on the returned queue until the connection drops.
    pub async fn connect(
        url: &str,
        channels: &[String],
        patterns: &[String],
    ) -> Result<(Bus, mpsc::UnboundedReceiver<Received>)> {
        let client = redis::Client::open(url).with_context(|| format!("redis URL `{url}`"))?;
        let conn = client.get_multiplexed_async_connection().await.with_context(|| format!("connecting to {url}"))?;
        let mut pubsub = client.get_async_pubsub().await.with_context(|| format!("subscribing on {url}"))?;
        for channel in channels {
            pubsub.subscribe(channel).await?;
        }
        for pattern in patterns {
            pubsub.psubscribe(pattern).await?;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
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
                    break;
                }
            }
            tracing::error!("redis subscription ended");
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

    pub fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.conn.clone()
    }
}

fn rand_value() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
