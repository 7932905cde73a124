//! Uploads of live pieces as they are written: HLS segments, then the playlists naming them,
//! and snapshots. One queue per egress keeps their order (a playlist never goes up before its
//! segments); the egress waits for it to drain before it completes.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::OutputStatus;
use crate::storage::{Upload, Uploader};

struct Piece {
    path: PathBuf,
    status: Arc<OutputStatus>,
    /// The piece whose URL the output reports as its location (playlist, snapshot).
    reported: bool,
}

/// What outputs push pieces into. Weak: callbacks may outlive the pipeline, and the queue must
/// end once the egress drains it.
#[derive(Clone)]
pub struct UploadQueue {
    tx: mpsc::WeakUnboundedSender<Piece>,
}

pub struct UploadTask {
    tx: Option<mpsc::UnboundedSender<Piece>>,
    task: JoinHandle<()>,
}

impl UploadQueue {
    pub fn start(uploader: Arc<Uploader>) -> UploadTask {
        let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
        let task = tokio::spawn(async move {
            while let Some(piece) = rx.recv().await {
                let result = uploader.upload(&piece.path, true).await;
                // A failure stays reported even if later pieces of the output go up.
                let failed = matches!(result, Upload::BackedUp { .. });
                if failed || piece.reported {
                    piece.status.set_upload_unless_failed(result);
                }
            }
        });
        UploadTask { tx: Some(tx), task }
    }

    pub fn push(&self, path: PathBuf, status: &Arc<OutputStatus>, reported: bool) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(Piece { path, status: status.clone(), reported });
        }
    }
}

impl UploadTask {
    pub fn queue(&self) -> UploadQueue {
        UploadQueue { tx: self.tx.as_ref().expect("live until drained").downgrade() }
    }

    /// Waits until every piece queued so far is uploaded or backed up.
    pub async fn drain(mut self) {
        self.tx.take();
        let _ = self.task.await;
    }
}
