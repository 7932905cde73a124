//! S3 and S3-compatible servers (AWS, MinIO, versitygw, R2, and Alibaba OSS through its S3
//! endpoint), through `object_store`'s S3 client.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use object_store::aws::AmazonS3Builder;
use object_store::{Attribute, AttributeValue, Attributes, TagSet};

use super::{Target, client_options, encode_key};

#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// `http(s)://host:port`; virtual-hosted style puts the bucket in the host name.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret: String,
    pub force_path_style: bool,
    /// Temporary credentials' token (`x-amz-security-token`).
    pub session_token: Option<String>,
    /// User metadata (`x-amz-meta-<key>`), tags (a URL query string, as LiveKit takes it)
    /// and `Content-Disposition`, for every object.
    pub metadata: BTreeMap<String, String>,
    pub tagging: Option<String>,
    pub content_disposition: Option<String>,
    /// Neither region nor endpoint was given: AWS, in the bucket's own region, which is asked
    /// of AWS before the first upload (LiveKit asks GetBucketLocation); us-east-1 until then.
    pub find_region: bool,
}

impl S3Config {
    /// A target with LiveKit's defaults for everything else (virtual-hosted, no token, no
    /// per-object options).
    pub fn new(endpoint: String, region: String, bucket: String, access_key: String, secret: String) -> Self {
        S3Config {
            endpoint,
            region,
            bucket,
            access_key,
            secret,
            force_path_style: false,
            session_token: None,
            metadata: BTreeMap::new(),
            tagging: None,
            content_disposition: None,
            find_region: false,
        }
    }

    /// This target in its bucket's region when that is to be found (`find_region`): AWS
    /// names it in `x-amz-bucket-region` even to an unsigned HEAD. If AWS cannot be asked,
    /// the target stays as it is and the upload says what went wrong.
    pub(super) async fn with_found_region(&self) -> S3Config {
        if !self.find_region {
            return self.clone();
        }
        let options = client_options("https://");
        let ask = object_store::aws::resolve_bucket_region(&self.bucket, &options);
        match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
            Ok(Ok(region)) => {
                S3Config { endpoint: Self::aws_endpoint(&region), region, find_region: false, ..self.clone() }
            }
            Ok(Err(e)) => {
                tracing::warn!(bucket = %self.bucket, "bucket region not found, trying {}: {e}", self.region);
                self.clone()
            }
            Err(_) => {
                tracing::warn!(bucket = %self.bucket, "AWS did not say the bucket's region within 10 s");
                self.clone()
            }
        }
    }

    /// AWS's own endpoint for `region` (LiveKit's default when none is given).
    pub fn aws_endpoint(region: &str) -> String {
        format!("https://s3.{region}.amazonaws.com")
    }

    /// The endpoint object_store is given: with virtual-hosted style it must already hold the
    /// bucket (`https://bucket.s3.region.amazonaws.com`); it only appends keys.
    fn client_endpoint(&self) -> String {
        let endpoint = self.endpoint.trim_end_matches('/');
        if self.path_style() {
            return endpoint.to_string();
        }
        let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
        format!("{scheme}://{}.{host}", self.bucket)
    }

    /// Path style when asked, or when the endpoint is an IP address or `localhost`: a bucket
    /// cannot go in front of those (AWS's SDKs switch the same way).
    fn path_style(&self) -> bool {
        let host = self.endpoint.split("://").last().unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
        let bracketed = self.endpoint.split("://").last().unwrap_or_default().starts_with('[');
        self.force_path_style || bracketed || host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
    }

    pub(super) fn open(&self) -> Result<Target> {
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(self.client_endpoint())
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret)
            .with_virtual_hosted_style_request(!self.path_style())
            .with_client_options(client_options(&self.endpoint))
            .with_retry(super::no_retries());
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build()?;
        let mut attributes = Attributes::new();
        // LiveKit's uploads say `inline` unless asked otherwise.
        let disposition = self.content_disposition.clone().unwrap_or_else(|| "inline".into());
        attributes.insert(Attribute::ContentDisposition, AttributeValue::from(disposition));
        for (key, value) in &self.metadata {
            attributes
                .insert(Attribute::Metadata(key.to_ascii_lowercase().into()), AttributeValue::from(value.clone()));
        }
        let mut tags = TagSet::default();
        for (key, value) in self.tagging.iter().flat_map(|t| url::form_urlencoded::parse(t.as_bytes())) {
            tags.push(&key, &value);
        }
        Ok(Target { store: Arc::new(store), attributes, tags, location: Box::new(self.clone()) })
    }
}

impl super::Location for S3Config {
    /// Where an object lives (what the egress reports as its location).
    fn url(&self, key: &str) -> String {
        if self.path_style() {
            format!("{}/{}/{}", self.endpoint.trim_end_matches('/'), self.bucket, encode_key(key))
        } else {
            format!("{}/{}", self.client_endpoint(), encode_key(key))
        }
    }
}
