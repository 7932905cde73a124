//! Egress records on disk, so that a restart, even after a crash, forgets no egress.
//!
//! Each change a client can see is written to `<state_dir>/egresses/<id>.json` (written
//! aside, synced, then renamed, so a record is whole or absent). At start the records of the
//! earlier runs are read back: the egresses they left running are ended as failed ("egret
//! restarted"), what their outputs left on disk is finished (HLS playlists closed), and every
//! record is listed again as it ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::manager::Observer;
use super::{EgressRecord, EgressSnapshot, EgressStatus, reason};
use crate::errors::ErrorKind;
use crate::media::outputs::OutputState;

/// Ended records kept; older ones are deleted at start (a 24/7 rotation makes many).
const KEEP: usize = 5000;

#[derive(Serialize, Deserialize)]
struct Stored {
    egress: EgressSnapshot,
    #[serde(default)]
    livekit_request: Option<Value>,
    /// Not part of egret's JSON, but LiveKit's error_code shows it.
    #[serde(default)]
    failure: Option<ErrorKind>,
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(state_dir: &Path) -> anyhow::Result<Arc<Store>> {
        let dir = state_dir.join("egresses");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        Ok(Arc::new(Store { dir }))
    }

    /// The egresses of earlier runs, oldest first, each with whether it was left unfinished
    /// (and is ended now).
    pub fn restore(&self, storage: &Path) -> Vec<(EgressRecord, bool)> {
        let mut stored: Vec<Stored> = std::fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|path| match std::fs::read(&path).map(|b| serde_json::from_slice::<Stored>(&b)) {
                Ok(Ok(stored)) => Some(stored),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), "unreadable egress record left alone: {e}");
                    None
                }
                Err(_) => None,
            })
            .collect();
        stored.sort_by(|a, b| a.egress.created_at.total_cmp(&b.egress.created_at));
        let excess = stored.len().saturating_sub(KEEP);
        for old in stored.drain(..excess) {
            let _ = std::fs::remove_file(self.path_of(&old.egress.egress_id));
        }
        stored
            .into_iter()
            .map(|mut stored| {
                let unfinished = !stored.egress.status.is_terminal();
                if unfinished {
                    interrupted(&mut stored.egress, storage);
                    tracing::warn!(egress = %stored.egress.egress_id, "egress interrupted by a restart: failed");
                    self.write(&stored);
                }
                stored.egress.failure = stored.failure;
                (EgressRecord::restored(stored.egress, stored.livekit_request), unfinished)
            })
            .collect()
    }

    /// Follows every new egress, writing its record at each visible change until it ends.
    pub fn observer(self: &Arc<Self>) -> Observer {
        let store = self.clone();
        Arc::new(move |record| {
            let (store, record) = (store.clone(), record.clone());
            let mut changes = record.watch_updates();
            if store.save(&record).is_terminal() {
                return;
            }
            tokio::spawn(async move {
                // Done once a terminal state is on disk: the status may turn terminal between
                // a snapshot and a look at the record, so the saved snapshot decides.
                while changes.changed().await.is_ok() {
                    changes.borrow_and_update();
                    if store.save(&record).is_terminal() {
                        return;
                    }
                }
                store.save(&record); // the record went away: keep its last state
            });
        })
    }

    /// Writes the record's state now; returns the status written.
    pub fn save(&self, record: &EgressRecord) -> super::EgressStatus {
        let egress = record.snapshot();
        let status = egress.status;
        self.write(&Stored { failure: egress.failure, egress, livekit_request: record.livekit_request.clone() });
        status
    }

    fn path_of(&self, id: &str) -> PathBuf {
        // Ids come from egret or livekit-server; never let one name a path elsewhere.
        let safe: String =
            id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        self.dir.join(format!("{safe}.json"))
    }

    fn write(&self, stored: &Stored) {
        let path = self.path_of(&stored.egress.egress_id);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(stored).map_err(std::io::Error::other).and_then(|bytes| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "egress record not saved: {e}");
        }
    }
}

/// Ends an egress that egret died under: failed, each unfinished output finished as far as
/// its kind can be from disk and failed with it, the end time its last write.
fn interrupted(egress: &mut EgressSnapshot, storage: &Path) {
    let mut last_write = egress.updated_at;
    let egress_started = egress.started_at;
    for output in &mut egress.outputs {
        if output.ended_at.is_some() {
            continue;
        }
        // Its last write before recovery touches it (closing a playlist writes it again).
        let written = std::fs::metadata(storage.join(&output.target))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|at| at.as_secs_f64());
        if let Some(at) = written {
            last_write = last_write.max(at);
            // A file's media ran from its first byte to its last write (what was last
            // published is older than the crash).
            // (an output's own start may postdate the last saved change: the egress's then).
            if output.kind.name == "file"
                && let Some(started) = output.started_at.or(egress_started)
            {
                output.duration = ((at - started).max(output.duration) * 1000.0).round() / 1000.0;
            }
        }
        // Last: a kind that can read the media's own duration (a repaired MP4) says it.
        (output.kind.recover)(output, storage);
        output.status = OutputState::Failed;
        output.error = Some(reason::RESTARTED.to_string());
    }
    for output in &mut egress.outputs {
        // Never before its own start (which may postdate every write a crash left).
        output.ended_at = output.ended_at.or(Some(last_write.max(output.started_at.unwrap_or(0.0))));
        if output.duration <= 0.0 {
            output.duration = 0.0; // also -0.0, from rounding an empty sum
        }
    }
    egress.status = EgressStatus::Failed;
    egress.reason = Some(reason::RESTARTED.to_string());
    egress.error = Some(reason::RESTARTED.to_string());
    egress.ended_at = Some(last_write);
    egress.updated_at = crate::clock::now();
    egress.details = None;
    if let Some(started) = egress.started_at {
        egress.duration = ((last_write - started).max(0.0) * 1000.0).round() / 1000.0;
    }
    egress.bytes = egress.outputs.iter().map(|o| o.bytes).sum();
}
