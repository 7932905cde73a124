//! egress.toml saved while egret runs: what can change live is applied (always-on entries, the
//! API key pair), and every other changed key is logged as an error naming it, since it keeps
//! its old value until a restart. A file with errors is not applied at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::always_on::AlwaysOn;
use crate::auth::Verifier;
use crate::config::Config;

pub struct Reloader {
    /// The config as last applied (keys needing a restart keep the values egret started with).
    running: Mutex<Config>,
    always_on: Arc<AlwaysOn>,
    verifier: Arc<RwLock<Verifier>>,
}

impl Reloader {
    pub fn new(config: Config, always_on: Arc<AlwaysOn>, verifier: Arc<RwLock<Verifier>>) -> Arc<Reloader> {
        Arc::new(Reloader { running: Mutex::new(config), always_on, verifier })
    }

    /// Reloads egress.toml when it is saved (editors replace the file: watch its directory).
    pub fn watch(self: &Arc<Self>, config_path: &Path) -> notify::Result<notify::RecommendedWatcher> {
        // Loaded by the path egret was given (relative paths in it resolve as at start).
        let load_path = config_path.to_path_buf();
        let path = config_path.canonicalize().unwrap_or_else(|_| config_path.to_path_buf());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let file_name = path.file_name().map(|n| n.to_os_string());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only writes and renames: reading the file (reload does) must not trigger a reload.
            if let Ok(event) = event
                && !matches!(event.kind, notify::EventKind::Access(_))
                && event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
            {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let this = self.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                this.reload(&load_path);
            }
        });
        Ok(watcher)
    }

    fn reload(&self, path: &Path) {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                tracing::error!("egress.toml not applied, the running config stays: {errors}");
                return;
            }
        };
        let problems = self.always_on.check(&new.always_on);
        if !problems.is_empty() {
            tracing::error!(
                "egress.toml not applied, the running config stays: {} error(s):\n  {}",
                problems.len(),
                problems.join("\n  ")
            );
            return;
        }
        let mut running = self.running.lock().unwrap();
        let mut applied = vec![format!("always_on ({} entries)", new.always_on.len())];
        if (&running.server.api_key, &running.server.api_secret) != (&new.server.api_key, &new.server.api_secret) {
            *self.verifier.write().unwrap() = Verifier::new(&new.server.api_key, &new.server.api_secret);
            running.server.api_key = new.server.api_key.clone();
            running.server.api_secret = new.server.api_secret.clone();
            applied.push("server.api_key/api_secret".into());
        }
        self.always_on.apply(new.always_on.clone());
        running.always_on = new.always_on.clone();
        let pending = needs_restart(&running, &new);
        tracing::info!(applied = %applied.join(", "), "egress.toml reloaded");
        if !pending.is_empty() {
            tracing::error!(
                "egress.toml: {} changed but only take effect after a restart; the running values stay",
                pending.join(", ")
            );
        }
    }
}

/// Keys whose value differs between what runs and the file, among those read only at start.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let checks: [(&'static str, bool); 9] = [
        ("server.listen", running.server.listen != new.server.listen),
        ("server.start_timeout", running.server.start_timeout != new.server.start_timeout),
        ("server.state_dir", running.server.state_dir != new.server.state_dir),
        (
            "server.stream_reconnect_timeout",
            running.server.stream_reconnect_timeout != new.server.stream_reconnect_timeout,
        ),
        ("storage", differs(&running.storage, &new.storage)),
        ("recipes", differs(&running.recipes, &new.recipes)),
        ("webhooks", differs(&running.webhooks, &new.webhooks)),
        ("livekit", differs(&running.livekit, &new.livekit)),
        ("redis/worker", differs(&running.worker, &new.worker)),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_at_start_are_named() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\napi_key = \"k\"\napi_secret = \"s\"\n[storage]\ndir = \"out\"\n[recipes]\ndir = \"scripts\"\n";
        let a = Config::parse(text, Path::new("/b")).unwrap();
        let b = Config::parse(&text.replace(":1", ":2").replace("\"out\"", "\"o2\""), Path::new("/b")).unwrap();
        assert_eq!(needs_restart(&a, &b), vec!["server.listen", "storage"]);
        let c = Config::parse(&text.replace("\"s\"", "\"s2\""), Path::new("/b")).unwrap();
        assert!(needs_restart(&a, &c).is_empty(), "the key pair is applied live");
    }
}
