//! `[[always_on]]` entries of egress.toml: one entry = one egress that is always running, like a
//! MediaMTX path. Whenever it ends, for any reason but removal from the config, it starts again
//! after a capped exponential backoff. egress.toml is watched: added entries start, changed ones
//! restart, removed ones stop cleanly, the others are untouched; an invalid edit is reported
//! (every error, with its key path) and the running config stays in force.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::AlwaysOnEntry;
use crate::egress::manager::Manager;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// An egress that ran this long counts as healthy: the next retry starts from FIRST_RETRY.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

struct Running {
    entry: AlwaysOnEntry,
    /// Set to the reason when the entry must stop for good.
    stop: watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct AlwaysOn {
    manager: Arc<Manager>,
    running: Mutex<HashMap<String, Running>>,
}

impl AlwaysOn {
    pub fn new(manager: Arc<Manager>) -> Arc<AlwaysOn> {
        Arc::new(AlwaysOn { manager, running: Mutex::new(HashMap::new()) })
    }

    /// Every problem of the entries' params, checked against their recipes' declarations.
    pub fn check(&self, entries: &[AlwaysOnEntry]) -> Vec<String> {
        entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| self.manager.check(&e.recipe, e.params.clone()).err().map(|err| (i, err)))
            .map(|(i, err)| match err.field.as_str() {
                "recipe" => format!("always_on[{i}].recipe: {}", err.message),
                "" => format!("always_on[{i}].params: {}", err.message),
                field => format!("always_on[{i}].params.{field}: {}", err.message),
            })
            .collect()
    }

    /// Brings the running entries in line with `entries`, touching only what changed.
    pub fn apply(&self, entries: Vec<AlwaysOnEntry>) {
        let mut running = self.running.lock().unwrap();
        let wanted: HashMap<String, AlwaysOnEntry> = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        running.retain(|name, r| match wanted.get(name) {
            Some(entry) if *entry == r.entry => true,
            Some(_) => {
                let _ = r.stop.send(Some("changed in egress.toml".into()));
                false
            }
            None => {
                let _ = r.stop.send(Some("removed from egress.toml".into()));
                false
            }
        });
        for (name, entry) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            tracing::info!(always_on = %name, recipe = %entry.recipe, "always-on entry starting");
            let (stop, stopped) = watch::channel(None);
            let task = tokio::spawn(keep_running(self.manager.clone(), entry.clone(), stopped));
            running.insert(name, Running { entry, stop, task });
        }
    }

    /// Engine shutdown: no more restarts; the manager's drain stops the egresses themselves.
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().unwrap().drain() {
            r.task.abort();
        }
    }
}

async fn keep_running(manager: Arc<Manager>, entry: AlwaysOnEntry, mut stop: watch::Receiver<Option<String>>) {
    let mut retry = FIRST_RETRY;
    loop {
        let began = Instant::now();
        match manager
            .start_with(
                &entry.recipe,
                entry.params.clone(),
                crate::egress::manager::StartOptions { always_on: Some(entry.name.clone()), ..Default::default() },
            )
            .await
        {
            Ok(record) => {
                tokio::select! {
                    status = record.finished() => {
                        if record.snapshot().limit_reached() {
                            // max_duration rotates: the next file starts at once, without backoff.
                            tracing::info!(always_on = %entry.name, egress = %record.id, "period over: next file");
                            retry = FIRST_RETRY;
                            continue;
                        }
                        tracing::warn!(always_on = %entry.name, egress = %record.id, ?status, "always-on egress ended");
                    }
                    reason = async { stop.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
                        let reason = reason.ok().flatten().unwrap_or_else(|| "always-on entry dropped".into());
                        let _ = manager.stop(&record.id, &reason).await;
                        record.finished().await;
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(always_on = %entry.name, "always-on egress did not start: {}", e.error),
        }
        if began.elapsed() >= HEALTHY_RUN {
            retry = FIRST_RETRY;
        }
        tracing::info!(always_on = %entry.name, retry_in = ?retry, "restarting");
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(Option::is_some) => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}
