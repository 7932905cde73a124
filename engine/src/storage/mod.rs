//! Uploads of finished recordings to object storage: S3 and S3-compatible servers (Alibaba
//! OSS among them), Google Cloud Storage and Azure Blob Storage, all through `object_store`.
//! Local-first: a file is written to the storage directory, uploaded once finalized, and
//! retried; if every attempt fails it is moved to the backup directory and the egress says
//! where. Nothing is deleted that was not confirmed uploaded (and by default nothing is
//! deleted at all).

pub mod azure;
pub mod gcs;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use object_store::{Attribute, AttributeValue, Attributes, ClientOptions, ObjectStore, RetryConfig, TagSet};

pub use azure::AzureConfig;
pub use gcs::GcsConfig;
pub use s3::S3Config;

const ATTEMPTS: u32 = 3;
/// Files larger than this go up in parts (several at once), not in one request.
const PART_BYTES: usize = 16 << 20;

/// Where one output's files go.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadConfig {
    S3(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
}

impl UploadConfig {
    /// The store for this target; fails on what can be told without a request (credentials
    /// that are not JSON, a malformed endpoint).
    pub fn open(&self) -> Result<Target> {
        match self {
            UploadConfig::S3(c) => c.open(),
            UploadConfig::Gcs(c) => c.open(),
            UploadConfig::Azure(c) => c.open(),
        }
    }

    /// What is only known by asking the store (an AWS bucket's region) filled in.
    async fn found(&self) -> UploadConfig {
        match self {
            UploadConfig::S3(c) => UploadConfig::S3(c.with_found_region().await),
            other => other.clone(),
        }
    }
}

/// What the egress reports as an uploaded object's location.
pub trait Location: Send + Sync {
    fn url(&self, key: &str) -> String;
}

/// An opened storage target: the store and what every object put there carries.
pub struct Target {
    store: Arc<dyn ObjectStore>,
    attributes: Attributes,
    tags: TagSet,
    location: Box<dyn Location>,
}

impl Target {
    /// A store whose objects carry nothing beyond their content type.
    fn plain(store: Arc<dyn ObjectStore>, location: Box<dyn Location>) -> Self {
        Target { store, attributes: Attributes::new(), tags: TagSet::default(), location }
    }
}

/// Shared client settings: plain HTTP only when the endpoint asks for it (an emulator, a
/// server on the local network), and a bound on every request.
fn client_options(endpoint: &str) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(endpoint.starts_with("http://"))
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
}

/// The uploader retries whole files itself (and then backs them up): the client does not.
fn no_retries() -> RetryConfig {
    RetryConfig { max_retries: 0, retry_timeout: Duration::from_secs(120), ..RetryConfig::default() }
}

/// A key as it appears in a URL: each path segment percent-encoded.
fn encode_key(key: &str) -> String {
    key.split('/').map(crate::http_client::uri_encode).collect::<Vec<_>>().join("/")
}

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
    config: UploadConfig,
    /// Opened at the first upload (an AWS bucket's region is asked for then).
    target: tokio::sync::OnceCell<Result<Target, String>>,
    storage_dir: PathBuf,
    backup_dir: PathBuf,
    /// Until when each upload is tried once: a file just went to the backup, so the store is
    /// likely down, and retrying every piece would hold the egress's end for long (LiveKit
    /// sends every later upload straight to the backup; egret still tries each once, so a
    /// store that comes back is used again).
    degraded_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long uploads stay at one attempt after a file went to the backup.
const DEGRADED_FOR: Duration = Duration::from_secs(60);

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "ogg" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "ts" => "video/mp2t",
        "m3u8" => "application/vnd.apple.mpegurl",
        "jpeg" | "jpg" => "image/jpeg",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

impl Uploader {
    pub fn new(config: UploadConfig, storage_dir: &Path, backup_dir: &Path) -> Self {
        Uploader {
            config,
            target: tokio::sync::OnceCell::new(),
            storage_dir: storage_dir.to_path_buf(),
            backup_dir: backup_dir.to_path_buf(),
            degraded_until: std::sync::Mutex::new(None),
        }
    }

    /// Uploads `local` under its path relative to the storage directory. On failure a finished
    /// file moves to the backup directory; a live piece (`keep_local`: a segment, playlist or
    /// snapshot still referenced locally) is copied there.
    pub async fn upload(&self, local: &Path, keep_local: bool) -> Upload {
        let key = local.strip_prefix(&self.storage_dir).unwrap_or(local).to_string_lossy().to_string();
        // Requests check that their target opens (a 400 naming the field); a config file's
        // target that cannot open backs every file up with the reason.
        let opened =
            self.target.get_or_init(|| async { self.config.found().await.open().map_err(|e| format!("{e:#}")) });
        let target = match opened.await {
            Ok(target) => target,
            Err(e) => return self.back_up(local, &key, format!("storage cannot be used: {e}"), keep_local),
        };
        let degraded = self.degraded_until.lock().unwrap().is_some_and(|until| std::time::Instant::now() < until);
        let attempts = if degraded { 1 } else { ATTEMPTS };
        let mut error = String::new();
        for attempt in 1..=attempts {
            match put_file(target, local, &key).await {
                Ok(()) => {
                    crate::metrics::upload("uploaded");
                    *self.degraded_until.lock().unwrap() = None;
                    return Upload::Uploaded { location: target.location.url(&key) };
                }
                Err(failure) => {
                    crate::metrics::upload("attempt_failed");
                    error = failure.message;
                    tracing::warn!(file = %local.display(), attempt, "upload failed: {error}");
                    if failure.permanent {
                        // Refused credentials, a missing bucket: the same request is refused
                        // again; the file goes to the backup at once.
                        break;
                    }
                }
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
        *self.degraded_until.lock().unwrap() = Some(std::time::Instant::now() + DEGRADED_FOR);
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

/// Why a put failed, and whether sending it again can help.
struct PutFailure {
    message: String,
    /// The store refused the request itself (credentials, permissions, no such bucket, a
    /// malformed request): another attempt would be refused the same way.
    permanent: bool,
}

impl PutFailure {
    fn local(what: &str, local: &Path, e: std::io::Error) -> Self {
        PutFailure { message: format!("cannot {what} {}: {e}", local.display()), permanent: false }
    }

    /// object_store's own text already holds its causes: one level, not the chain (which
    /// repeats it three times over).
    fn store(e: object_store::Error) -> Self {
        PutFailure { permanent: refused(&e), message: format!("upload: {e}") }
    }
}

/// Whether the store refused the request for good: 401, 403, 404 (the bucket or container),
/// 409, 412, and other 4xx but a timeout (408) or throttling (429).
fn refused(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotImplemented => true,
        // The other statuses are only in the text ("non-2xx status code: 400 Bad Request").
        E::Generic { source, .. } => {
            let text = source.to_string();
            text.split("status code: ")
                .nth(1)
                .and_then(|rest| rest.get(..3))
                .is_some_and(|code| code.starts_with('4') && code != "408" && code != "429")
        }
        _ => false,
    }
}

/// Parts in flight at once for a large file.
const PARTS_AT_ONCE: usize = 4;

/// Streams one file into the store: a single request when small, parts when large (a long
/// recording is never held in memory whole). A multipart upload that fails is aborted, so
/// no half-uploaded parts are left billed in the bucket.
async fn put_file(target: &Target, local: &Path, key: &str) -> Result<(), PutFailure> {
    use object_store::{PutMultipartOptions, PutOptions, WriteMultipart};
    use tokio::io::AsyncReadExt;

    let mut file = tokio::fs::File::open(local).await.map_err(|e| PutFailure::local("read", local, e))?;
    let size = file.metadata().await.map_err(|e| PutFailure::local("read", local, e))?.len();
    let mut attributes = target.attributes.clone();
    attributes.insert(Attribute::ContentType, AttributeValue::from(content_type(local)));
    let path = object_store::path::Path::from(key);
    if size <= PART_BYTES as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).await.map_err(|e| PutFailure::local("read", local, e))?;
        let options = PutOptions { attributes, tags: target.tags.clone(), ..Default::default() };
        return target.store.put_opts(&path, bytes.into(), options).await.map(|_| ()).map_err(PutFailure::store);
    }
    let options = PutMultipartOptions { attributes, tags: target.tags.clone(), ..Default::default() };
    let upload = target.store.put_multipart_opts(&path, options).await.map_err(PutFailure::store)?;
    let mut write = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut chunk = vec![0u8; 1 << 20];
    let failure = loop {
        if let Err(e) = write.wait_for_capacity(PARTS_AT_ONCE).await {
            break PutFailure::store(e);
        }
        match file.read(&mut chunk).await {
            Ok(0) => match write.wait_for_capacity(0).await {
                // Every part is up: completing aborts by itself if it fails.
                Ok(()) => return write.finish().await.map(|_| ()).map_err(PutFailure::store),
                Err(e) => break PutFailure::store(e),
            },
            Ok(n) => write.write(&chunk[..n]),
            Err(e) => break PutFailure::local("read", local, e),
        }
    };
    if let Err(e) = write.abort().await {
        tracing::warn!(key, "a failed multipart upload could not be aborted: {e}");
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::refused;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic { store: "S3", source: text.to_string().into() }
    }

    #[test]
    fn refusals_are_told_from_trouble() {
        let denied = object_store::Error::PermissionDenied { path: "k".into(), source: "403".to_string().into() };
        assert!(refused(&denied));
        assert!(refused(&generic(
            "Error performing PUT in 3ms - Server returned non-2xx status code: 400 Bad Request: "
        )));
        assert!(!refused(&generic("Server returned non-2xx status code: 429 Too Many Requests: slow down")));
        assert!(!refused(&generic("Server returned non-2xx status code: 503 Service Unavailable: ")));
        assert!(!refused(&generic("error sending request: connection refused")));
    }
}
