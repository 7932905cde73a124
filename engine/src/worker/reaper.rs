//! No egress stays "active" in livekit-server's view after its worker died (livekit/egress
//! issue 647): each worker keeps a heartbeat key and a hash of its running egresses (their
//! last EgressInfo) in Redis. Every worker, including one restarting, looks for hashes whose
//! heartbeat expired and reports their egresses FAILED through IOInfo.

use std::sync::Arc;
use std::time::Duration;

use livekit_protocol as lk;
use prost::Message;
use redis::aio::ConnectionManager;

use super::io_info::IoInfo;

const HEARTBEAT: Duration = Duration::from_secs(2);
/// A worker silent this long is dead.
const ALIVE_TTL_MS: u64 = 6000;
const PREFIX: &str = "egret:worker:";

#[derive(Clone)]
pub struct Reaper {
    conn: ConnectionManager,
    id: String,
}

fn alive_key(id: &str) -> String {
    format!("{PREFIX}{id}:alive")
}

fn egresses_key(id: &str) -> String {
    format!("{PREFIX}{id}:egresses")
}

impl Reaper {
    pub fn new(conn: ConnectionManager, id: String) -> Self {
        Reaper { conn, id }
    }

    /// Records (or refreshes) a running egress of this worker.
    pub async fn track(&self, info: &lk::EgressInfo) {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<()> = redis::cmd("HSET")
            .arg(egresses_key(&self.id))
            .arg(&info.egress_id)
            .arg(info.encode_to_vec())
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!("reaper: egress not recorded in redis: {e}");
        }
    }

    pub async fn untrack(&self, egress_id: &str) {
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<()> =
            redis::cmd("HDEL").arg(egresses_key(&self.id)).arg(egress_id).query_async(&mut conn).await;
    }

    /// A clean exit: nothing left to reap.
    pub async fn retire(&self) {
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<()> =
            redis::cmd("DEL").arg(alive_key(&self.id)).arg(egresses_key(&self.id)).query_async(&mut conn).await;
    }

    /// Heartbeat, and reap dead workers' egresses, until the process ends.
    pub async fn run(self, io: Arc<IoInfo>) {
        loop {
            let mut conn = self.conn.clone();
            let beat: redis::RedisResult<()> = redis::cmd("SET")
                .arg(alive_key(&self.id))
                .arg(1)
                .arg("PX")
                .arg(ALIVE_TTL_MS)
                .query_async(&mut conn)
                .await;
            if let Err(e) = beat {
                tracing::warn!("reaper: heartbeat failed: {e}");
            }
            if let Err(e) = self.reap(&io).await {
                tracing::warn!("reaper: {e:#}");
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    async fn reap(&self, io: &IoInfo) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{PREFIX}*:egresses")).query_async(&mut conn).await?;
        for key in keys {
            let Some(worker) = key.strip_prefix(PREFIX).and_then(|k| k.strip_suffix(":egresses")) else { continue };
            let alive: bool = redis::cmd("EXISTS").arg(alive_key(worker)).query_async(&mut conn).await?;
            // One reaper per dead worker: whoever sets the lock.
            if alive || worker == self.id {
                continue;
            }
            let lock: Option<String> = redis::cmd("SET")
                .arg(format!("{PREFIX}{worker}:reaping"))
                .arg(&self.id)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await?;
            if lock.is_none() {
                continue;
            }
            let egresses: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?;
            for (egress_id, raw) in egresses {
                let Ok(mut info) = lk::EgressInfo::decode(raw.as_slice()) else { continue };
                let now = super::now_ns();
                info.status = lk::EgressStatus::EgressFailed as i32;
                info.error = format!("egress worker {worker} stopped (no heartbeat for {} s)", ALIVE_TTL_MS / 1000);
                info.ended_at = now;
                info.updated_at = now;
                match io.update_egress(&info).await {
                    Ok(()) => {
                        tracing::warn!(egress = %egress_id, dead = worker, "reaped: reported failed");
                        let _: () = redis::cmd("HDEL").arg(&key).arg(&egress_id).query_async(&mut conn).await?;
                    }
                    // Kept: the lock expires and a later round tries again.
                    Err(e) => tracing::warn!(egress = %egress_id, "reaping failed: {e:#}"),
                }
            }
        }
        Ok(())
    }
}
