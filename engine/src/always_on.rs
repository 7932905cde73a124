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

/// What an operator sees of one entry (`GET /v1/always_on`, the status page).
#[derive(Default, Clone, serde::Serialize)]
pub struct EntryState {
    pub name: String,
    pub recipe: String,
    /// Egresses started for it.
    pub starts: u64,
    /// Starts after an end that was not a `max_duration` rotation (a failure, a stop, a
    /// source gone): what an operator counts as restarts.
    pub restarts: u64,
    /// Periods over (`max_duration`): the next file starts at once, by design.
    pub rotations: u64,
    /// Runs that failed: an egress that ended failed or aborted, or a start refused.
    pub failures: u64,
    pub egress_id: Option<String>,
    pub last_error: Option<String>,
}

struct Running {
    entry: AlwaysOnEntry,
    state: Arc<Mutex<EntryState>>,
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

    /// Every problem of the entries' params, checked against their recipes' declarations. An
    /// entry whose recipe file does not load now is let through (with a warning): it fails
    /// and retries like any failing source until the file is fixed, as at run time.
    pub fn check(&self, entries: &[AlwaysOnEntry]) -> Vec<String> {
        entries
            .iter()
            .enumerate()
            .filter(|(i, e)| match self.manager.recipes().get(&e.recipe) {
                Err(crate::recipes::RecipeLookupError::Broken(error)) => {
                    tracing::warn!(always_on = %e.name, "always_on[{i}]: recipe `{}` does not load: {error}", e.recipe);
                    false
                }
                _ => true,
            })
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
            let state = Arc::new(Mutex::new(EntryState {
                name: name.clone(),
                recipe: entry.recipe.clone(),
                ..Default::default()
            }));
            let task = tokio::spawn(keep_running(self.manager.clone(), entry.clone(), stopped, state.clone()));
            running.insert(name, Running { entry, state, stop, task });
        }
    }

    /// Every entry's state, by name.
    pub fn states(&self) -> Vec<EntryState> {
        let mut states: Vec<EntryState> =
            self.running.lock().unwrap().values().map(|r| r.state.lock().unwrap().clone()).collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Engine shutdown: no more restarts; the manager's drain stops the egresses themselves.
    pub fn stop_all(&self) {
        for (_, r) in self.running.lock().unwrap().drain() {
            r.task.abort();
        }
    }
}

async fn keep_running(
    manager: Arc<Manager>,
    entry: AlwaysOnEntry,
    mut stop: watch::Receiver<Option<String>>,
    state: Arc<Mutex<EntryState>>,
) {
    let mut retry = FIRST_RETRY;
    let mut first = true;
    let mut rotated = false;
    loop {
        let began = Instant::now();
        if !first && !rotated {
            state.lock().unwrap().restarts += 1;
        }
        first = false;
        rotated = false;
        match manager
            .start_with(
                &entry.recipe,
                entry.params.clone(),
                crate::egress::manager::StartOptions { always_on: Some(entry.name.clone()), ..Default::default() },
            )
            .await
        {
            Ok(record) => {
                {
                    let mut state = state.lock().unwrap();
                    state.starts += 1;
                    state.egress_id = Some(record.id.clone());
                }
                tokio::select! {
                    status = record.finished() => {
                        if record.snapshot().limit_reached() {
                            // max_duration rotates: the next file starts at once, without backoff.
                            tracing::info!(always_on = %entry.name, egress = %record.id, "period over: next file");
                            state.lock().unwrap().rotations += 1;
                            retry = FIRST_RETRY;
                            rotated = true;
                            continue;
                        }
                        tracing::warn!(always_on = %entry.name, egress = %record.id, ?status, "always-on egress ended");
                        let mut state = state.lock().unwrap();
                        state.last_error = record.snapshot().error;
                        if status != crate::egress::EgressStatus::Complete {
                            state.failures += 1;
                        }
                    }
                    reason = async { stop.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
                        let reason = reason.ok().flatten().unwrap_or_else(|| "always-on entry dropped".into());
                        let _ = manager.stop(&record.id, &reason).await;
                        record.finished().await;
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(always_on = %entry.name, "always-on egress did not start: {}", e.error);
                let mut state = state.lock().unwrap();
                state.failures += 1;
                state.last_error = Some(e.error.to_string());
            }
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
