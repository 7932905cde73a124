//! The config's one upload target: `[storage.s3]`, `[storage.gcp]` or `[storage.azure]`.

use std::path::Path;

use toml::Table;

use super::{Reader, root_has};
use crate::storage::{AzureConfig, GcsConfig, S3Config, UploadConfig};

/// The one `[storage.*]` upload target, if any (a second one is an error: every file goes to
/// one place).
pub(super) fn upload_target(
    root: &Table,
    reader: &Reader,
    base: &Path,
    errors: &mut Vec<String>,
) -> Option<UploadConfig> {
    let given: Vec<&str> =
        ["s3", "gcp", "azure"].into_iter().filter(|k| root_has(root, &format!("storage.{k}"))).collect();
    if given.len() > 1 {
        errors.push(format!("storage: give one upload target, not {}", given.join(" and ")));
        return None;
    }
    let target = match *given.first()? {
        "s3" => {
            let region = reader.str("storage.s3.region");
            let endpoint = match reader.str("storage.s3.endpoint") {
                none if none.is_empty() => S3Config::aws_endpoint(&region),
                endpoint => endpoint,
            };
            UploadConfig::S3(S3Config {
                force_path_style: reader.bool("storage.s3.force_path_style").unwrap_or(true),
                session_token: Some(reader.str("storage.s3.session_token")).filter(|t| !t.is_empty()),
                ..S3Config::new(
                    endpoint,
                    region,
                    reader.str("storage.s3.bucket"),
                    reader.str("storage.s3.access_key"),
                    reader.str("storage.s3.secret"),
                )
            })
        }
        "gcp" => {
            let mut credentials = reader.str("storage.gcp.credentials");
            let file = reader.str("storage.gcp.credentials_file");
            if !file.is_empty() {
                match std::fs::read_to_string(base.join(&file)) {
                    Ok(text) => credentials = text,
                    Err(e) => errors.push(format!("storage.gcp.credentials_file: cannot read `{file}`: {e}")),
                }
            }
            UploadConfig::Gcs(GcsConfig { bucket: reader.str("storage.gcp.bucket"), credentials })
        }
        _ => UploadConfig::Azure(AzureConfig {
            account_name: reader.str("storage.azure.account_name"),
            account_key: reader.str("storage.azure.account_key"),
            container_name: reader.str("storage.azure.container_name"),
            endpoint: Some(reader.str("storage.azure.endpoint")).filter(|e| !e.is_empty()),
        }),
    };
    let endpoint = match &target {
        UploadConfig::S3(c) => Some(c.endpoint.as_str()),
        UploadConfig::Azure(c) => c.endpoint.as_deref(),
        UploadConfig::Gcs(_) => None,
    };
    if let Some(e) = endpoint.filter(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
        errors.push(format!("storage.{}.endpoint: `{e}` must be an http:// or https:// URL", given[0]));
    } else if let Err(e) = target.open() {
        errors.push(format!("storage.{}: {e:#}", given[0]));
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::config::tests::GOOD;

    #[test]
    fn one_upload_target_of_any_cloud() {
        let azure = "[storage.azure]\naccount_name = \"a\"\naccount_key = \"a2V5\"\ncontainer_name = \"c\"\n";
        let parsed = Config::parse(&format!("{GOOD}{azure}"), Path::new(".")).unwrap();
        assert!(matches!(parsed.storage.upload, Some(crate::storage::UploadConfig::Azure(_))));
        let gcp = "[storage.gcp]\nbucket = \"b\"\ncredentials = \"not json\"\n";
        let errs = Config::parse(&format!("{GOOD}{gcp}"), Path::new(".")).unwrap_err().0.join("\n");
        assert!(errs.contains("storage.gcp: credentials are not JSON"), "{errs}");
        let both = format!("{GOOD}{azure}[storage.gcp]\nbucket = \"b\"\n");
        let errs = Config::parse(&both, Path::new(".")).unwrap_err().0.join("\n");
        assert!(errs.contains("storage: give one upload target, not gcp and azure"), "{errs}");
    }
}
