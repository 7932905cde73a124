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
    uploader: Arc<Uploader>,
    status: Arc<OutputStatus>,
    /// The piece whose URL the output reports as its location (playlist, snapshot).
    reported: bool,
}

/// What outputs push pieces into. Weak: callbacks may outlive the pipeline, and the queue must
/// end once the egress drains it.
#[derive(Clone)]
pub struct UploadQueue {
    tx: mpsc::WeakUnboundedSender<Piece>,
    /// Where this queue's pieces go: an output's own `s3`, else `[storage.s3]`.
    uploader: Option<Arc<Uploader>>,
}

pub struct UploadTask {
    tx: Option<mpsc::UnboundedSender<Piece>>,
    default: Option<Arc<Uploader>>,
    task: JoinHandle<()>,
}

impl UploadQueue {
    pub fn start(default: Option<Arc<Uploader>>) -> UploadTask {
        let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
        let task = tokio::spawn(async move {
            while let Some(piece) = rx.recv().await {
                let result = piece.uploader.upload(&piece.path, true).await;
                match (&result, piece.reported) {
                    // The reported piece (the playlist) names where the output is, backed up
                    // or not: its backup is what a user opens.
                    (Upload::BackedUp { .. }, true) => piece.status.set_upload(result),
                    // Any other failure stays reported even if later pieces go up.
                    (Upload::BackedUp { .. }, false) | (Upload::Uploaded { .. }, true) => {
                        piece.status.set_upload_unless_failed(result)
                    }
                    (Upload::Uploaded { .. }, false) => {}
                }
            }
        });
        UploadTask { tx: Some(tx), default, task }
    }

    /// This queue bound to an output's own target, or to the default; None if neither.
    pub fn for_output(&self, own: Option<Arc<Uploader>>) -> Option<UploadQueue> {
        let uploader = own.or_else(|| self.uploader.clone())?;
        Some(UploadQueue { tx: self.tx.clone(), uploader: Some(uploader) })
    }

    pub fn push(&self, path: PathBuf, status: &Arc<OutputStatus>, reported: bool) {
        if let (Some(tx), Some(uploader)) = (self.tx.upgrade(), self.uploader.clone()) {
            let _ = tx.send(Piece { path, uploader, status: status.clone(), reported });
        }
    }
}

impl UploadTask {
    pub fn queue(&self) -> UploadQueue {
        UploadQueue { tx: self.tx.as_ref().expect("live until drained").downgrade(), uploader: self.default.clone() }
    }

    /// Waits until every piece queued so far is uploaded or backed up.
    pub async fn drain(mut self) {
        self.tx.take();
        let _ = self.task.await;
    }
}
