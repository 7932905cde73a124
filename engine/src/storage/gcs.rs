//! Google Cloud Storage, with a service account's credentials JSON as LiveKit takes it (its
//! `gcs_base_url` and `disable_oauth` keys point it at an emulator such as fake-gcs-server).

use std::sync::Arc;

use anyhow::{Context, Result};
use object_store::gcp::GoogleCloudStorageBuilder;

use super::{Target, client_options, encode_key};

#[derive(Debug, Clone, PartialEq)]
pub struct GcsConfig {
    pub bucket: String,
    /// A service account key file's JSON; empty: the machine's default credentials.
    pub credentials: String,
}

impl GcsConfig {
    /// Where requests go: the credentials' `gcs_base_url`, else Google's.
    fn base_url(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.credentials)
            .ok()
            .and_then(|v| v.get("gcs_base_url").and_then(|u| u.as_str()).map(|u| u.trim_end_matches('/').to_string()))
            .unwrap_or_else(|| "https://storage.googleapis.com".into())
    }

    pub(super) fn open(&self) -> Result<Target> {
        // No key given: the environment's (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, the
        // metadata server), as Google's own clients look for them.
        let mut builder = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&self.bucket)
            .with_client_options(client_options(&self.base_url()))
            .with_retry(super::no_retries());
        if !self.credentials.is_empty() {
            serde_json::from_str::<serde_json::Value>(&self.credentials).context("credentials are not JSON")?;
            builder = builder.with_service_account_key(&self.credentials);
        }
        let store = builder.build()?;
        Ok(Target::plain(Arc::new(store), Box::new(self.clone())))
    }
}

impl super::Location for GcsConfig {
    fn url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.base_url(), self.bucket, encode_key(key))
    }
}
