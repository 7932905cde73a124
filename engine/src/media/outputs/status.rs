//! What an output reports: its live status, shared with the streaming threads that count
//! its bytes and media time, and the snapshot the APIs show (and the store keeps).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{OutputKind, ResultContext, kind_by_name};

/// What the API shows of one output at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputSnapshot {
    pub location: Option<String>,
    pub backup: Option<String>,
    pub upload_error: Option<String>,
    pub field: String,
    #[serde(deserialize_with = "kind_by_name")]
    pub kind: &'static OutputKind,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_target: Option<String>,
    /// HLS: where segment files start (`<prefix>_00000.ts`), relative to storage; read back to
    /// find the segments of a crashed output that its playlist does not name yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_prefix: Option<String>,
    /// Unix seconds: first byte written, and the end.
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub status: OutputState,
    pub error: Option<String>,
    pub bytes: u64,
    /// Seconds, to the millisecond.
    pub duration: f64,
    pub count: u64,
    /// Reconnections of a stream URL after it failed, and the last one (unix seconds).
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub last_retry_at: Option<f64>,
}

impl OutputSnapshot {
    pub fn duration_ns(&self) -> i64 {
        (self.duration * 1e9) as i64
    }

    /// This output's own start and end (ns), falling back to the egress's.
    pub fn times_ns(&self, ctx: &ResultContext) -> (i64, i64) {
        let ns = |s: Option<f64>| s.map(|s| (s * 1e9) as i64);
        (ns(self.started_at).unwrap_or(ctx.started_at), ns(self.ended_at).unwrap_or(ctx.ended_at))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputState {
    Starting,
    Active,
    Complete,
    Failed,
}

/// What an output reports while it runs and after: shared with streaming threads (probes).
pub struct OutputStatus {
    /// The request field it came from: `file_outputs[0]`, `stream_outputs[0].urls[1]`...
    pub field: String,
    pub kind: &'static OutputKind,
    /// File path relative to storage, playlist path, URL or image prefix.
    pub target: String,
    pub bytes: AtomicU64,
    /// Segments or images written.
    pub count: AtomicU64,
    /// A second location some kinds have (the HLS live playlist), relative like `target`.
    pub live_target: Mutex<Option<String>>,
    pub segment_prefix: Mutex<Option<String>>,
    /// Unix seconds: first byte written, and the end (finalized, removed or failed).
    times: Mutex<(Option<f64>, Option<f64>)>,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    state: Mutex<(OutputState, Option<String>)>,
    upload: Mutex<Option<crate::storage::Upload>>,
    /// Reconnections after a failure (stream URLs) and when the last one was made.
    retries: Mutex<(u32, Option<f64>)>,
}

const NO_PTS: u64 = u64::MAX;

impl OutputStatus {
    pub fn new(field: String, kind: &'static OutputKind, target: String) -> Arc<Self> {
        Arc::new(OutputStatus {
            field,
            kind,
            target,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            live_target: Mutex::new(None),
            segment_prefix: Mutex::new(None),
            times: Mutex::new((None, None)),
            first_pts: AtomicU64::new(NO_PTS),
            last_pts: AtomicU64::new(0),
            state: Mutex::new((OutputState::Starting, None)),
            upload: Mutex::new(None),
            retries: Mutex::new((0, None)),
        })
    }

    pub fn state(&self) -> OutputState {
        self.state.lock().unwrap().0
    }

    /// Moves to `state`; a failure is never overwritten by a later completion.
    pub fn set_state(&self, state: OutputState, error: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.0 != OutputState::Failed {
            *s = (state, error);
            let mut times = self.times.lock().unwrap();
            match state {
                OutputState::Active => times.0 = times.0.or(Some(crate::clock::now())),
                OutputState::Complete | OutputState::Failed => times.1 = times.1.or(Some(crate::clock::now())),
                OutputState::Starting => {}
            }
        }
    }

    /// A failure that a reconnection will follow: the output stays in its state with the
    /// error shown until it is live again.
    pub fn note_retry(&self, error: String) {
        self.state.lock().unwrap().1 = Some(error);
        let mut retries = self.retries.lock().unwrap();
        *retries = (retries.0 + 1, Some(crate::clock::now()));
    }

    /// Live again after a reconnection: active, its error kept (`keep_error`) until the new
    /// connection is proven (SRT takes bytes before its handshake), else cleared.
    pub fn live_again(&self, keep_error: bool) {
        let error = if keep_error { self.state.lock().unwrap().1.clone() } else { None };
        self.set_state(OutputState::Active, error);
    }

    pub fn retries(&self) -> u32 {
        self.retries.lock().unwrap().0
    }

    pub(super) fn see_pts(&self, pts: u64) {
        let _ = self.first_pts.compare_exchange(NO_PTS, pts, Ordering::Relaxed, Ordering::Relaxed);
        self.last_pts.fetch_max(pts.wrapping_add(1), Ordering::Relaxed);
    }

    pub fn set_upload(&self, upload: crate::storage::Upload) {
        *self.upload.lock().unwrap() = Some(upload);
    }

    /// Records an upload result, keeping an earlier failure (its backup) visible.
    pub fn set_upload_unless_failed(&self, upload: crate::storage::Upload) {
        let mut current = self.upload.lock().unwrap();
        if !matches!(*current, Some(crate::storage::Upload::BackedUp { .. })) {
            *current = Some(upload);
        }
    }

    /// The start of the newest buffer seen (ns of running time), 0 before any.
    pub fn last_pts(&self) -> u64 {
        self.last_pts.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Seconds of media that reached this output.
    pub fn duration(&self) -> f64 {
        let (first, last) = (self.first_pts.load(Ordering::Relaxed), self.last_pts.load(Ordering::Relaxed));
        // last_pts holds pts + 1 so that 0 means "none yet".
        if first == NO_PTS || last <= first + 1 { 0.0 } else { (last - 1 - first) as f64 / 1e9 }
    }

    pub fn snapshot(&self) -> OutputSnapshot {
        let (status, error) = self.state.lock().unwrap().clone();
        let (location, backup, upload_error) = match self.upload.lock().unwrap().clone() {
            Some(crate::storage::Upload::Uploaded { location }) => (Some(location), None, None),
            Some(crate::storage::Upload::BackedUp { path, error }) => {
                (None, Some(path.to_string_lossy().to_string()), Some(error))
            }
            None => (None, None, None),
        };
        let (started_at, ended_at) = *self.times.lock().unwrap();
        let (retries, last_retry_at) = *self.retries.lock().unwrap();
        OutputSnapshot {
            retries,
            last_retry_at,
            location,
            backup,
            upload_error,
            field: self.field.clone(),
            kind: self.kind,
            target: self.target.clone(),
            live_target: self.live_target.lock().unwrap().clone(),
            segment_prefix: self.segment_prefix.lock().unwrap().clone(),
            started_at,
            ended_at,
            status,
            error,
            bytes: self.bytes.load(Ordering::Relaxed),
            duration: (self.duration() * 1000.0).round() / 1000.0,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}
