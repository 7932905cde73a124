//! Output paths: LiveKit's filepath templates, always resolved inside the storage directory.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::fields::{FieldError, FieldResult};

/// Refuses a path that could leave the storage directory: `..` anywhere, or an absolute path.
pub fn check_relative(path: &str, field: &str) -> FieldResult<()> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(FieldError::new(
            field,
            format!("`{path}` is absolute; paths are relative to the storage directory"),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(FieldError::new(field, format!("`{path}` escapes the storage directory (`..`)")));
    }
    Ok(())
}

/// Values for `{name}` placeholders. Values are made path-safe so a room or participant name
/// can never add directories.
#[derive(Debug, Clone, Default)]
pub struct Template {
    vars: BTreeMap<String, String>,
}

impl Template {
    pub fn new(egress_id: &str, recipe: &str) -> Self {
        let now = chrono::Local::now();
        let mut t = Template::default();
        t.set("egress_id", egress_id);
        t.set("recipe", recipe);
        t.set("time", &now.format("%Y-%m-%dT%H%M%S").to_string());
        t.set("utc", &now.with_timezone(&chrono::Utc).format("%Y%m%d%H%M%S").to_string());
        t
    }

    pub fn set(&mut self, name: &str, value: &str) {
        let safe: String =
            value.chars().map(|c| if c.is_alphanumeric() || "-_.@+=".contains(c) { c } else { '_' }).collect();
        self.vars.insert(name.to_string(), safe.replace("..", "_"));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Replaces known placeholders; unknown ones stay as written, as LiveKit does.
    pub fn expand(&self, template: &str) -> String {
        let mut out = template.to_string();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    /// The name used when a request gives no path: `{room_name}-{time}` as in LiveKit,
    /// or `{recipe}-{time}` when the request names no room.
    pub fn default_stem(&self) -> String {
        let base = self.get("room_name").or(self.get("recipe")).unwrap_or("egress");
        format!("{base}-{}", self.get("time").unwrap_or_default())
    }
}

/// A file path from a template: default name when empty or a directory (`dir/`), the
/// extension appended when missing, parent directories created.
pub fn resolve_file(
    storage: &Path,
    template: &Template,
    raw: &str,
    extension: &str,
    field: &str,
) -> FieldResult<PathBuf> {
    let mut rel = template.expand(raw);
    if rel.is_empty() || rel.ends_with('/') {
        rel.push_str(&template.default_stem());
    }
    if !rel.to_ascii_lowercase().ends_with(extension) {
        rel.push_str(extension);
    }
    inside(storage, &rel, field)
}

/// Joins a relative path to the storage directory after checking it again (templates were
/// expanded since the request was validated) and creates its parent directory.
pub fn inside(storage: &Path, rel: &str, field: &str) -> FieldResult<PathBuf> {
    check_relative(rel, field)?;
    let path = storage.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| FieldError::new(field, format!("cannot create {}: {e}", parent.display())))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_safely() {
        let mut t = Template::new("EG_abc", "testsrc");
        t.set("room_name", "../../etc/passwd");
        let dir = std::env::temp_dir().join("egret-filepath-test");
        let p = resolve_file(&dir, &t, "{room_name}/{egress_id}", ".mp4", "f").unwrap();
        assert!(p.starts_with(&dir));
        assert!(p.to_string_lossy().ends_with("/EG_abc.mp4"), "{}", p.display());
        let p = resolve_file(&dir, &t, "rec/", ".ogg", "f").unwrap();
        assert!(
            p.file_name().unwrap().to_string_lossy().starts_with("_.._etc_passwd-")
                || p.to_string_lossy().contains("_etc_passwd-")
        );
        assert!(check_relative("a/../../b", "f").is_err());
    }
}
