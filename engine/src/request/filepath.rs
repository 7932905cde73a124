//! Output paths: LiveKit's filepath templates, always resolved inside the storage directory.

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use super::fields::{FieldError, FieldResult};

/// Refuses a path that could leave the storage directory (`..` anywhere, or an absolute path)
/// or that a file system would store under another name (NUL, control characters).
pub fn check_relative(path: &str, field: &str) -> FieldResult<()> {
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(FieldError::new(field, format!("holds the control character {:?}; paths are plain text", c)));
    }
    let p = Path::new(path);
    // What file systems take: names of at most 255 bytes, and a bounded depth (folders are
    // created one by one, and a refused path must not leave thousands behind).
    if let Some(long) = p.components().find(|c| c.as_os_str().len() > 255) {
        let shown: String = long.as_os_str().to_string_lossy().chars().take(20).collect();
        return Err(FieldError::new(field, format!("`{shown}...` is longer than 255 bytes")));
    }
    if p.components().count() > 32 || path.len() > 1024 {
        return Err(FieldError::new(field, "is deeper than 32 folders or longer than 1024 bytes"));
    }
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
/// expanded since the request was validated) and creates its parent directories beneath
/// storage, refusing any that is a symbolic link: a link planted in storage must not lead a
/// recording elsewhere.
pub fn inside(storage: &Path, rel: &str, field: &str) -> FieldResult<PathBuf> {
    check_relative(rel, field)?;
    let rel = Path::new(rel);
    let mut dir = storage.to_path_buf();
    let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
    for component in parents {
        let Component::Normal(name) = component else { continue };
        dir.push(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FieldError::new(
                    field,
                    format!("`{}` is a symbolic link; egret never writes through links", shown(storage, &dir)),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(FieldError::new(field, format!("`{}` is not a directory", shown(storage, &dir))));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() && !dir.is_symlink() => {}
                Err(e) => return Err(FieldError::new(field, format!("cannot create `{}`: {e}", shown(storage, &dir)))),
            },
            Err(e) => return Err(FieldError::new(field, format!("cannot use `{}`: {e}", shown(storage, &dir)))),
        }
    }
    Ok(storage.join(rel))
}

fn shown(storage: &Path, path: &Path) -> String {
    path.strip_prefix(storage).unwrap_or(path).display().to_string()
}

/// Paths that running egresses are writing (a file, a playlist, a segment prefix).
static WRITING: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// A path held by one output until it is dropped (with its egress's pipeline), so no other
/// egress can write there meanwhile.
#[derive(Debug)]
pub struct PathClaim(PathBuf);

impl Drop for PathClaim {
    fn drop(&mut self) {
        WRITING.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Claims a new path for one output: refused (a conflict naming `field`) when another egress
/// is writing there or something already exists there (a file, a link, or, for a series
/// like HLS segments and snapshots, a file named `<name>_...`). egret never overwrites a
/// recording.
pub fn claim(path: &Path, series: bool, field: &str) -> FieldResult<PathClaim> {
    let mut writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = taken(&writing, path, series, field) {
        return Err(e);
    }
    writing.insert(path.to_path_buf());
    Ok(PathClaim(path.to_path_buf()))
}

/// Why `path` cannot be written now (as `claim` would refuse it), without claiming it.
pub fn check_free(path: &Path, series: bool, field: &str) -> FieldResult<()> {
    match taken(&WRITING.lock().unwrap_or_else(|e| e.into_inner()), path, series, field) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn taken(writing: &HashSet<PathBuf>, path: &Path, series: bool, field: &str) -> Option<FieldError> {
    let shown = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let exists = |name: &str| {
        FieldError::conflict(field, format!("`{name}` already exists; egret never overwrites a recording"))
    };
    if writing.contains(path) {
        Some(FieldError::conflict(field, format!("another egress is writing `{shown}`")))
    } else if std::fs::symlink_metadata(path).is_ok() {
        Some(exists(&shown))
    } else if series {
        first_of_series(path).map(|existing| exists(&existing))
    } else {
        None
    }
}

/// A file beside `path` named `<name>_...`, if any.
fn first_of_series(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().to_string();
    let entries = std::fs::read_dir(path.parent()?).ok()?;
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.strip_prefix(&name).is_some_and(|rest| rest.starts_with('_')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_safely() {
        let mut t = Template::new("EG_abc", "testsrc");
        t.set("room_name", "../../etc/passwd");
        let dir = std::env::temp_dir().join("egret-filepath-test");
        std::fs::create_dir_all(&dir).unwrap(); // the storage directory exists (egret makes it at start)
        let p = resolve_file(&dir, &t, "{room_name}/{egress_id}", ".mp4", "f").unwrap();
        assert!(p.starts_with(&dir));
        assert!(p.to_string_lossy().ends_with("/EG_abc.mp4"), "{}", p.display());
        let p = resolve_file(&dir, &t, "rec/", ".ogg", "f").unwrap();
        assert!(
            p.file_name().unwrap().to_string_lossy().starts_with("_.._etc_passwd-")
                || p.to_string_lossy().contains("_etc_passwd-")
        );
        assert!(check_relative("a/../../b", "f").is_err());
        assert!(check_relative("a\0b.mp4", "f").is_err());
        assert!(check_relative("a\nb.mp4", "f").is_err());
    }

    #[test]
    fn links_and_existing_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("egret-claim-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("link")).unwrap();
        let err = inside(&dir, "link/x.mp4", "f").unwrap_err();
        assert!(err.message.contains("symbolic link"), "{err}");
        let path = inside(&dir, "real/new/x.mp4", "f").unwrap();
        assert!(dir.join("real/new").is_dir());
        let held = claim(&path, false, "f").unwrap();
        assert!(claim(&path, false, "f").unwrap_err().conflict);
        drop(held);
        std::fs::write(&path, b"x").unwrap();
        assert!(claim(&path, false, "f").unwrap_err().conflict);
        std::fs::write(dir.join("real/seg_00000.ts"), b"x").unwrap();
        assert!(claim(&dir.join("real/seg"), true, "f").unwrap_err().conflict);
        assert!(claim(&dir.join("real/se"), true, "f").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
