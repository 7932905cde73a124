//! A small S3 client: PUT Object signed with AWS Signature V4, for any S3-compatible server
//! (AWS, MinIO, versitygw, R2...). Only what uploading recordings needs.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    /// `http://host:port`; virtual-hosted style puts the bucket in the host name.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret: String,
    pub force_path_style: bool,
    /// Temporary credentials' token (`x-amz-security-token`).
    pub session_token: Option<String>,
    /// User metadata (`x-amz-meta-<key>`), tags (`x-amz-tagging`, a URL query string as
    /// LiveKit takes it) and `Content-Disposition` for every object.
    pub metadata: std::collections::BTreeMap<String, String>,
    pub tagging: Option<String>,
    pub content_disposition: Option<String>,
}

pub struct S3Client {
    config: S3Config,
    http: crate::http_client::HttpClient,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding of each path segment, as SigV4 wants it.
fn uri_encode_path(path: &str) -> String {
    path.split('/').map(crate::http_client::uri_encode).collect::<Vec<_>>().join("/")
}

impl S3Client {
    pub fn new(config: S3Config) -> Self {
        S3Client { config, http: crate::http_client::client() }
    }

    /// Where an object lives (also what the egress reports as its location).
    pub fn url(&self, key: &str) -> String {
        let c = &self.config;
        let endpoint = c.endpoint.trim_end_matches('/');
        if c.force_path_style {
            format!("{endpoint}/{}/{}", c.bucket, uri_encode_path(key))
        } else {
            let (scheme, host) = endpoint.split_once("://").unwrap_or(("http", endpoint));
            format!("{scheme}://{}.{host}/{}", c.bucket, uri_encode_path(key))
        }
    }

    pub async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<String> {
        let c = &self.config;
        let url = self.url(key);
        let Some((_, without_scheme)) = url.split_once("://") else {
            bail!("S3 endpoint `{url}` has no http:// or https:// scheme");
        };
        let (host, path) =
            without_scheme.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((without_scheme, "/".into()));
        let now = chrono::Utc::now();
        let (amz_date, date) = (now.format("%Y%m%dT%H%M%SZ").to_string(), now.format("%Y%m%d").to_string());
        let payload_hash = hex(&Sha256::digest(&body));
        // Every header sent is signed: lower-case names, sorted, values trimmed.
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("content-type".to_string(), content_type.to_string());
        headers.insert("host".to_string(), host.to_string());
        headers.insert("x-amz-content-sha256".to_string(), payload_hash.clone());
        headers.insert("x-amz-date".to_string(), amz_date.clone());
        if let Some(token) = &c.session_token {
            headers.insert("x-amz-security-token".into(), token.clone());
        }
        for (key, value) in &c.metadata {
            headers.insert(format!("x-amz-meta-{}", key.to_ascii_lowercase()), value.trim().to_string());
        }
        if let Some(tagging) = &c.tagging {
            headers.insert("x-amz-tagging".into(), tagging.clone());
        }
        if let Some(disposition) = &c.content_disposition {
            headers.insert("content-disposition".into(), disposition.clone());
        }
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
        let canonical_request = format!("PUT\n{path}\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
        let scope = format!("{date}/{}/s3/aws4_request", c.region);
        let string_to_sign =
            format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));
        let key_date = hmac_sha256(format!("AWS4{}", c.secret).as_bytes(), &date);
        let signing_key = hmac_sha256(&hmac_sha256(&hmac_sha256(&key_date, &c.region), "s3"), "aws4_request");
        let signature = hex(&hmac_sha256(&signing_key, &string_to_sign));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            c.access_key
        );
        let mut request = hyper::Request::put(&url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.header("authorization", authorization).body(Full::new(body))?;
        let response = tokio::time::timeout(Duration::from_secs(60), self.http.request(request))
            .await
            .context("S3 PUT timed out")?
            .with_context(|| format!("S3 PUT {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            bail!(
                "S3 PUT {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&text).chars().take(300).collect::<String>()
            );
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_key_matches_aws_example() {
        // AWS's documented SigV4 key derivation example (secret, date, region, service).
        let k = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215");
        let k = hmac_sha256(&hmac_sha256(&hmac_sha256(&k, "us-east-1"), "iam"), "aws4_request");
        assert_eq!(hex(&k), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
        assert_eq!(uri_encode_path("a b/c+d.mp4"), "a%20b/c%2Bd.mp4");
    }
}
