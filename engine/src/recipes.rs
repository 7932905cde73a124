//! The recipe registry: every `<recipes>/*.lua` file, loaded in a sandbox to read its
//! declaration, and reloaded when saved. A broken save keeps the last good version live and
//! records the error (file:line) for the log and `GET /v1/recipes`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde_json::{Value, json};

use crate::lua::{self, RecipeDecl};

/// A loaded version of a recipe: what a new egress runs. Running egresses keep theirs.
#[derive(Debug, Clone)]
pub struct RecipeVersion {
    pub version: u64,
    pub source: Arc<str>,
    pub decl: RecipeDecl,
    pub chunk: String,
    pub loaded_at: f64,
}

#[derive(Debug, Default)]
struct Entry {
    current: Option<RecipeVersion>,
    last_error: Option<String>,
}

pub struct Recipes {
    dir: PathBuf,
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl Recipes {
    pub fn load(dir: &Path) -> Arc<Recipes> {
        let recipes = Arc::new(Recipes { dir: dir.to_path_buf(), entries: RwLock::new(BTreeMap::new()) });
        recipes.reload_all();
        recipes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn reload_all(&self) {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            tracing::error!(dir = %self.dir.display(), "recipes directory cannot be read");
            return;
        };
        let mut files: Vec<PathBuf> =
            read.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_recipe(&self.dir, p)).collect();
        files.sort();
        for file in files {
            self.reload(&file);
        }
    }

    /// Loads one recipe file again (or forgets it if it is gone).
    pub fn reload(&self, path: &Path) {
        let Some(name) = path.file_stem().map(|s| s.to_string_lossy().to_string()) else {
            return;
        };
        if !path.exists() {
            if self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(&name).is_some() {
                tracing::info!(recipe = %name, "recipe removed");
            }
            return;
        }
        let chunk = lua::chunk_name(&self.dir, path);
        // The recipe's top level runs with no lock held (it is user code, under its budget), and
        // a panic in it is a load error like any other, not a crash.
        let loaded = std::panic::catch_unwind(|| load_declaration(&self.dir, path, &name, &chunk))
            .unwrap_or_else(|_| Err(format!("{chunk}: the recipe made egret panic while loading")));
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(name.clone()).or_default();
        match loaded {
            Ok((source, decl)) => {
                if entry.current.as_ref().is_some_and(|c| *c.source == *source) && entry.last_error.is_none() {
                    return; // saved without change
                }
                let version = entry.current.as_ref().map_or(1, |c| c.version + 1);
                tracing::info!(recipe = %name, version, "recipe loaded");
                entry.current =
                    Some(RecipeVersion { version, source: source.into(), decl, chunk, loaded_at: crate::clock::now() });
                entry.last_error = None;
            }
            Err(error) => {
                let kept = entry.current.as_ref().map(|c| c.version);
                tracing::error!(recipe = %name, kept_version = ?kept, "recipe failed to load: {error}");
                crate::metrics::recipe_load_failed();
                entry.last_error = Some(error);
            }
        }
    }

    /// The live version of a recipe, or why there is none.
    pub fn get(&self, name: &str) -> Result<RecipeVersion, RecipeLookupError> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.get(name) {
            None => Err(RecipeLookupError::Unknown(entries.keys().cloned().collect())),
            Some(Entry { current: Some(v), .. }) => Ok(v.clone()),
            Some(Entry { last_error, .. }) => Err(RecipeLookupError::Broken(last_error.clone().unwrap_or_default())),
        }
    }

    pub fn to_json(&self) -> Value {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        Value::Array(
            entries
                .iter()
                .map(|(name, e)| {
                    json!({
                        "name": name,
                        "description": e.current.as_ref().map(|c| c.decl.description.clone()),
                        "params": e.current.as_ref().map(|c| c.decl.params.clone()),
                        "outputs": e.current.as_ref().map(|c| c.decl.outputs),
                        "version": e.current.as_ref().map(|c| c.version),
                        "loaded_at": e.current.as_ref().map(|c| c.loaded_at),
                        "file": e.current.as_ref().map(|c| c.chunk.clone()),
                        "last_error": e.last_error,
                    })
                })
                .collect(),
        )
    }

    /// Watches the directory; saves are live for new egresses well within a second.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only writes, creations, removals and renames: loading a recipe reads it, and a
            // read must not trigger another load (a broken recipe was reloaded for ever).
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        let recipes = self.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Editors write in several steps: let a burst settle, then reload once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut paths = vec![first];
                while let Ok(p) = rx.try_recv() {
                    paths.push(p);
                }
                let module_changed =
                    paths.iter().any(|p| p.extension().is_some_and(|e| e == "lua") && !is_recipe(&recipes.dir, p));
                // Off the async workers: a recipe's top level may run for its whole budget.
                let recipes = recipes.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if module_changed {
                        recipes.reload_all(); // a shared module may break or fix any recipe
                        return;
                    }
                    paths.sort();
                    paths.dedup();
                    for path in paths.iter().filter(|p| is_recipe(&recipes.dir, p)) {
                        recipes.reload(path);
                    }
                })
                .await;
            }
        });
        Ok(watcher)
    }
}

#[derive(Debug)]
pub enum RecipeLookupError {
    Unknown(Vec<String>),
    Broken(String),
}

/// Recipes are the `.lua` files directly in the directory; subdirectories hold modules.
fn is_recipe(dir: &Path, path: &Path) -> bool {
    path.parent() == Some(dir) && path.extension().is_some_and(|e| e == "lua")
}

fn load_declaration(dir: &Path, path: &Path, name: &str, chunk: &str) -> Result<(String, RecipeDecl), String> {
    let source = std::fs::read_to_string(path).map_err(|e| format!("{chunk}: {e}"))?;
    let state = lua::sandbox(dir).map_err(|e| e.to_string())?;
    let table = lua::eval_recipe(&state, &source, chunk).map_err(|e| lua::error_text(&e))?;
    let decl = lua::declaration(&table, name, chunk)?;
    Ok((source, decl))
}
