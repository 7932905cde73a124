//! Azure Blob Storage with an account name and key, as LiveKit takes them. `endpoint` (egret's
//! own field) points it elsewhere than `https://<account>.blob.core.windows.net`, e.g. at an
//! Azurite emulator (`http://127.0.0.1:10000/<account>`).

use std::sync::Arc;

use anyhow::Result;
use object_store::azure::MicrosoftAzureBuilder;

use super::{Target, client_options, encode_key};

#[derive(Debug, Clone, PartialEq)]
pub struct AzureConfig {
    pub account_name: String,
    pub account_key: String,
    pub container_name: String,
    pub endpoint: Option<String>,
}

impl AzureConfig {
    fn account_url(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => format!("https://{}.blob.core.windows.net", self.account_name),
        }
    }

    pub(super) fn open(&self) -> Result<Target> {
        let account_url = self.account_url();
        let builder = MicrosoftAzureBuilder::new()
            .with_account(&self.account_name)
            .with_access_key(&self.account_key)
            .with_container_name(&self.container_name)
            .with_endpoint(account_url.clone())
            .with_client_options(client_options(&account_url))
            .with_retry(super::no_retries());
        let store = builder.build()?;
        Ok(Target::plain(Arc::new(store), Box::new(self.clone())))
    }
}

impl super::Location for AzureConfig {
    fn url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.account_url(), self.container_name, encode_key(key))
    }
}
