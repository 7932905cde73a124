//! One egress: a record the API reads, and a supervisor task that owns its Lua state and
//! pipeline and moves it through starting → active → ending → complete | failed | aborted.

pub mod livekit;
pub mod manager;
pub mod manifest;
pub mod store;
mod stream_retry;
mod supervisor;

pub use reason::LIMIT_REACHED;

/// The end reasons the engine itself gives (recipes add their own with `egress:stop(reason)`);
/// the LiveKit face turns them into LiveKit's "End reason: …".
pub mod reason {
    pub const STOPPED_BY_API: &str = "stopped by API";
    /// `max_duration` reached (LiveKit's EGRESS_LIMIT_REACHED).
    pub const LIMIT_REACHED: &str = "limit reached";
    /// The last output was removed by UpdateStream.
    pub const ALL_STREAMS_STOPPED: &str = "all streams stopped";
    /// SIGTERM: egret drains.
    pub const SHUTDOWN: &str = "engine shutting down";
    /// The pipeline ended by itself.
    pub const SOURCE_ENDED: &str = "source ended";
    /// egret died while it ran (found unfinished in the store at the next start).
    pub const RESTARTED: &str = "egret restarted";
}

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::media::outputs::{self, OutputSnapshot, OutputStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressStatus {
    Starting,
    Active,
    Ending,
    Complete,
    Failed,
    Aborted,
}

impl EgressStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, EgressStatus::Complete | EgressStatus::Failed | EgressStatus::Aborted)
    }
}

pub use crate::lua::ctx::Command;

struct Lifecycle {
    status: EgressStatus,
    /// Why it ended (or is ending): "stopped by API", "source ended", an error text.
    reason: Option<String>,
    error: Option<String>,
    /// The catalogue's kind of a failure that has one (a room, participant or track not found).
    failure: Option<crate::errors::ErrorKind>,
    started_at: Option<f64>,
    ended_at: Option<f64>,
}

/// What the API shows of an egress; shared by the supervisor and HTTP handlers.
pub struct EgressRecord {
    pub id: String,
    pub recipe: String,
    pub recipe_version: u64,
    pub params: Value,
    /// The `[[always_on]]` entry this egress runs for, if any.
    pub always_on: Option<String>,
    /// The LiveKit request as it arrived (proto3 JSON), when it came through LiveKit's API:
    /// EgressInfo echoes it.
    pub livekit_request: Option<Value>,
    pub created_at: f64,
    lifecycle: Mutex<Lifecycle>,
    outputs: Mutex<Vec<Arc<OutputStatus>>>,
    /// The LiveKit room joined, once known.
    room_id: Mutex<Option<String>>,
    commands: mpsc::UnboundedSender<Command>,
    status_tx: watch::Sender<EgressStatus>,
    /// Bumped on every change a client can see (status, outputs added, ended or failed).
    revision: watch::Sender<u64>,
    /// The outputs as last published (field, target, state): what a change is measured against
    /// (the statuses themselves are shared with the pipeline and change in place).
    published: Mutex<Vec<(String, String, outputs::OutputState, u32)>>,
    /// Unix seconds of the last change a client can see (LiveKit's updated_at).
    updated_at: Mutex<f64>,
    /// What a client should know while it runs ("reconnecting to LiveKit: ..."): EgressInfo's
    /// details until it ends.
    details: Mutex<Option<String>>,
    /// Where its manifest went (LiveKit's `manifest_location`), once written at the end.
    manifest_location: Mutex<Option<String>>,
    /// An egress of an earlier run, read back from the store: shown as it was left.
    frozen: Option<EgressSnapshot>,
    /// Set once its pipeline stopped (or was given up on): all that is left is async work
    /// (uploads, the manifest), which cannot wedge a thread.
    media_stopped: watch::Sender<bool>,
}

pub use crate::clock::now;

impl EgressRecord {
    fn new(
        id: String,
        recipe: String,
        recipe_version: u64,
        params: Value,
        always_on: Option<String>,
        livekit_request: Option<Value>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        EgressRecord {
            id,
            recipe,
            recipe_version,
            params,
            always_on,
            livekit_request,
            room_id: Mutex::new(None),
            revision: watch::channel(0).0,
            published: Mutex::new(Vec::new()),
            updated_at: Mutex::new(now()),
            details: Mutex::new(None),
            manifest_location: Mutex::new(None),
            created_at: now(),
            lifecycle: Mutex::new(Lifecycle {
                status: EgressStatus::Starting,
                reason: None,
                error: None,
                failure: None,
                started_at: None,
                ended_at: None,
            }),
            outputs: Mutex::new(Vec::new()),
            commands,
            status_tx: watch::channel(EgressStatus::Starting).0,
            frozen: None,
            media_stopped: watch::channel(false).0,
        }
    }

    /// An ended egress of an earlier run, as the store kept it.
    pub fn restored(snapshot: EgressSnapshot, livekit_request: Option<Value>) -> Self {
        let (commands, _) = mpsc::unbounded_channel();
        let mut record = EgressRecord::new(
            snapshot.egress_id.clone(),
            snapshot.recipe.clone(),
            snapshot.recipe_version,
            snapshot.params.clone(),
            snapshot.always_on.clone(),
            livekit_request,
            commands,
        );
        record.created_at = snapshot.created_at;
        {
            let l = record.lifecycle.get_mut().unwrap();
            l.status = snapshot.status;
            l.reason = snapshot.reason.clone();
            l.error = snapshot.error.clone();
            l.failure = snapshot.failure;
            l.started_at = snapshot.started_at;
            l.ended_at = snapshot.ended_at;
        }
        record.status_tx.send_replace(snapshot.status);
        record.frozen = Some(snapshot);
        record
    }

    pub fn status(&self) -> EgressStatus {
        self.lifecycle.lock().unwrap().status
    }

    /// An egress of an earlier run, read back from the store.
    pub fn is_restored(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Moves to `status`; terminal states are final. Returns false if nothing changed.
    fn set_status(&self, status: EgressStatus, reason: Option<String>, error: Option<String>) -> bool {
        let mut l = self.lifecycle.lock().unwrap();
        if l.status.is_terminal() || l.status == status {
            return false;
        }
        l.status = status;
        if reason.is_some() {
            l.reason = reason;
        }
        if error.is_some() {
            l.error = error;
        }
        match status {
            EgressStatus::Active => l.started_at = Some(now()),
            s if s.is_terminal() => l.ended_at = Some(now()),
            _ => {}
        }
        let reason = l.reason.clone().unwrap_or_default();
        drop(l);
        self.status_tx.send_replace(status);
        self.bump();
        tracing::info!(egress = %self.id, ?status, %reason, "egress status");
        true
    }

    /// Records the kind of the failure about to end the egress (LiveKit's error_code shows it).
    pub(super) fn set_failure(&self, kind: crate::errors::ErrorKind) {
        self.lifecycle.lock().unwrap().failure = Some(kind);
    }

    /// The outputs as they are now; a change a client can see (one added, one ended)
    /// counts as an update.
    fn set_outputs(&self, outputs: Vec<Arc<OutputStatus>>) {
        let shape: Vec<_> =
            outputs.iter().map(|o| (o.field.clone(), o.target.clone(), o.state(), o.retries())).collect();
        *self.outputs.lock().unwrap() = outputs;
        let changed = {
            let mut published = self.published.lock().unwrap();
            let changed = *published != shape;
            *published = shape;
            changed
        };
        if changed {
            self.bump();
        }
    }

    /// Tells clients what is going on while it runs (a reconnect): a visible change.
    pub fn set_manifest_location(&self, location: String) {
        *self.manifest_location.lock().unwrap() = Some(location);
    }

    pub fn set_details(&self, details: String) {
        *self.details.lock().unwrap() = Some(details);
        self.bump();
    }

    /// A change a client can see: observers (worker, webhooks) are told, updated_at moves.
    fn bump(&self) {
        *self.updated_at.lock().unwrap() = now();
        self.revision.send_modify(|r| *r += 1);
    }

    fn set_room_id(&self, room_id: Option<String>) {
        if room_id.is_some() {
            *self.room_id.lock().unwrap() = room_id;
        }
    }

    /// Every update a client can see from now on (worker reports, webhooks).
    pub fn watch_updates(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Waits until the egress is ending or ended.
    pub async fn leaving(&self) {
        let mut rx = self.status_tx.subscribe();
        let _ = rx.wait_for(|s| *s == EgressStatus::Ending || s.is_terminal()).await;
    }

    pub(super) fn set_media_stopped(&self) {
        self.media_stopped.send_replace(true);
    }

    /// Waits until its pipeline stopped, or the egress ended.
    pub(super) async fn media_stopped(&self) {
        let mut stopped = self.media_stopped.subscribe();
        let mut status = self.status_tx.subscribe();
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => {}
            _ = status.wait_for(|s| s.is_terminal()) => {}
        }
    }

    /// Waits until the egress reaches a terminal state.
    pub async fn finished(&self) -> EgressStatus {
        let mut rx = self.status_tx.subscribe();
        *rx.wait_for(|s| s.is_terminal()).await.expect("sender lives in self")
    }

    /// What the API shows of this egress now.
    pub fn snapshot(&self) -> EgressSnapshot {
        if let Some(frozen) = &self.frozen {
            return frozen.clone();
        }
        let l = self.lifecycle.lock().unwrap();
        let outputs: Vec<OutputSnapshot> = self.outputs.lock().unwrap().iter().map(|o| o.snapshot()).collect();
        let duration = match (l.started_at, l.ended_at) {
            (Some(s), Some(e)) => e - s,
            (Some(s), None) => now() - s,
            _ => 0.0,
        };
        EgressSnapshot {
            egress_id: self.id.clone(),
            recipe: self.recipe.clone(),
            recipe_version: self.recipe_version,
            always_on: self.always_on.clone(),
            room_id: self.room_id.lock().unwrap().clone(),
            status: l.status,
            reason: l.reason.clone(),
            error: l.error.clone(),
            failure: l.failure,
            created_at: self.created_at,
            updated_at: *self.updated_at.lock().unwrap(),
            started_at: l.started_at,
            ended_at: l.ended_at,
            duration: (duration * 1000.0).round() / 1000.0,
            details: self.details.lock().unwrap().clone(),
            manifest_location: self.manifest_location.lock().unwrap().clone(),
            bytes: outputs.iter().map(|o| o.bytes).sum(),
            params: livekit::info::redact_secrets(self.params.clone()),
            outputs,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.snapshot()).expect("serializable")
    }
}

/// One egress at one moment, as every API shows it (egret's JSON is this, serialized).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressSnapshot {
    pub egress_id: String,
    pub recipe: String,
    pub recipe_version: u64,
    pub always_on: Option<String>,
    pub room_id: Option<String>,
    pub status: EgressStatus,
    /// Why it ended (or is ending): "stopped by API", "source ended", an error text.
    pub reason: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<crate::errors::ErrorKind>,
    /// Unix seconds.
    pub created_at: f64,
    /// The last change a client can see (status, an output added, ended or failed).
    pub updated_at: f64,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// Seconds active, to the millisecond.
    pub duration: f64,
    /// News while it runs (a LiveKit reconnect), see `EgressRecord::set_details`.
    pub details: Option<String>,
    /// Where the manifest went (see `manifest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_location: Option<String>,
    pub bytes: u64,
    pub params: Value,
    pub outputs: Vec<OutputSnapshot>,
}

impl EgressSnapshot {
    /// Ended by its `max_duration` (LiveKit's EGRESS_LIMIT_REACHED).
    pub fn limit_reached(&self) -> bool {
        self.status == EgressStatus::Complete && self.reason.as_deref() == Some(LIMIT_REACHED)
    }
}
