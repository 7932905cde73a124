//! Uploads of finished recordings to S3-compatible storage. Local-first: a file is written to
//! the storage directory, uploaded once finalized, and retried; if every attempt fails it is
//! moved to the backup directory and the egress says where. Nothing is deleted that was not
//! confirmed uploaded (and by default nothing is deleted at all).

pub mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use s3::S3Client;
pub use s3::S3Config;

const ATTEMPTS: u32 = 3;

/// Where one finished file ended up.
#[derive(Debug, Clone, PartialEq)]
pub enum Upload {
    Uploaded {
        location: String,
    },
    /// Every attempt failed: the file is kept at `path`.
    BackedUp {
        path: PathBuf,
        error: String,
    },
}

pub struct Uploader {
    client: S3Client,
    storage_dir: PathBuf,
    backup_dir: PathBuf,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "ogg" => "audio/ogg",
        "ts" => "video/mp2t",
        "m3u8" => "application/vnd.apple.mpegurl",
        "jpeg" | "jpg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

impl Uploader {
    pub fn new(config: S3Config, storage_dir: &Path, backup_dir: &Path) -> Self {
        Uploader {
            client: S3Client::new(config),
            storage_dir: storage_dir.to_path_buf(),
            backup_dir: backup_dir.to_path_buf(),
        }
    }

    /// Uploads `local` under its path relative to the storage directory. On failure a finished
    /// file moves to the backup directory; a live piece (`keep_local`: a segment, playlist or
    /// snapshot still referenced locally) is copied there.
    pub async fn upload(&self, local: &Path, keep_local: bool) -> Upload {
        let key = local.strip_prefix(&self.storage_dir).unwrap_or(local).to_string_lossy().to_string();
        let mut error = String::new();
        match tokio::fs::read(local).await {
            Ok(body) => {
                let body = Bytes::from(body);
                for attempt in 1..=ATTEMPTS {
                    match self.client.put(&key, body.clone(), content_type(local)).await {
                        Ok(location) => {
                            crate::metrics::upload("uploaded");
                            return Upload::Uploaded { location };
                        }
                        Err(e) => {
                            crate::metrics::upload("attempt_failed");
                            error = format!("{e:#}");
                            tracing::warn!(file = %local.display(), attempt, "upload failed: {error}");
                        }
                    }
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                    }
                }
            }
            Err(e) => error = format!("cannot read {}: {e}", local.display()),
        }
        self.back_up(local, &key, error, keep_local)
    }

    /// Moves a file whose upload failed into the backup directory (same relative path).
    fn back_up(&self, local: &Path, key: &str, error: String, keep_local: bool) -> Upload {
        crate::metrics::upload("backed_up");
        let target = self.backup_dir.join(key);
        let copy = || std::fs::copy(local, &target).map(|_| ());
        let moved = target
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| if keep_local { copy() } else { std::fs::rename(local, &target).or_else(|_| copy()) });
        match moved {
            Ok(()) => Upload::BackedUp { path: target, error },
            // Could not move it: it stays where it was written, which is still a backup.
            Err(e) => {
                Upload::BackedUp { path: local.to_path_buf(), error: format!("{error}; not moved to backup: {e}") }
            }
        }
    }
}
