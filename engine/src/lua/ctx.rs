//! The per-egress state every Lua handle points into, and the handle types themselves
//! (their methods live with their primitives: api.rs, room.rs, page.rs).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mlua::{Function, Lua, LuaSerdeExt, RegistryKey, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, oneshot};

use crate::media::MediaPad;
use crate::media::chrome::console_matches;
use crate::media::graph::Graph;
use crate::request::ValidRequest;

/// What a running egress's supervisor is asked to do: by Lua handles (stop, timers, page
/// and room events) and by the APIs (UpdateStream, UpdateLayout).
#[derive(Debug)]
pub enum Command {
    Stop {
        reason: String,
    },
    /// Ends the egress as failed (a recipe's `egress:fail`, chromium dying): outputs are
    /// finalized first.
    Fail {
        reason: String,
    },
    /// A Lua timer (`egress:after`) is due.
    Timer {
        id: u64,
    },
    /// A page this egress captures logged to its console.
    Console {
        text: String,
    },
    /// Something happened in a LiveKit room this egress joined (`track_published`...).
    Room {
        event: String,
        data: serde_json::Value,
    },
    /// LiveKit's UpdateStream: stream URLs added and removed while it runs.
    UpdateStream {
        add: Vec<String>,
        remove: Vec<String>,
        reply: oneshot::Sender<crate::errors::Result<()>>,
    },
    /// The status page wants a still: where the raw picture flows, if there is one.
    Picture {
        reply: oneshot::Sender<Option<gstreamer::Pad>>,
    },
    /// LiveKit's UpdateLayout: handed to the recipe's `update_layout` handlers.
    UpdateLayout {
        layout: String,
        reply: oneshot::Sender<crate::errors::Result<()>>,
    },
}

/// The per-egress state Lua handles point into.
pub struct EgressCtx {
    pub id: String,
    pub recipe: String,
    pub request: ValidRequest,
    pub graph: Mutex<Graph>,
    pub commands: UnboundedSender<Command>,
    /// (event, filter, function): the filter is the console text for `console` handlers.
    handlers: Mutex<Vec<(String, Option<String>, RegistryKey)>>,
    timers: Mutex<HashMap<u64, RegistryKey>>,
    next_timer: AtomicU64,
    /// Told when `start` waits on the outside world (a page loading, a start signal): the
    /// HTTP call is answered then rather than when `start` returns.
    pub suspended: Notify,
    /// What a starting egress waits on, and the latest it may still be starting.
    start_wait: Mutex<StartWait>,
    /// How long it may take to become active beyond its recipe's bounded waits (each
    /// `wait_*` and page load extends the bound by its own timeout): `[server] start_timeout`.
    pub start_timeout: std::time::Duration,
    /// What lives as long as the egress (a chrome session); released when it ends.
    resources: Mutex<Vec<Box<dyn Any + Send>>>,
    /// The `[livekit]` server that `egress:join` connects to.
    pub livekit: Option<crate::config::LiveKitConfig>,
    /// egret's own `/layouts/` URL, the default room composite page, and its folder.
    pub layouts_url: String,
    pub layouts_dir: std::path::PathBuf,
    /// Tracks and participants the recipe was told about (`track:TR_..`, `participant:PA_..`):
    /// a handler registered late gets the current ones at once, and no event twice.
    announced: Mutex<std::collections::HashSet<String>>,
    /// Sources that do not end on the pipeline's EOS (room tracks) end through these.
    enders: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

/// Slack over a wait's own timeout, so the recipe's own error (naming the wait) comes first.
const START_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// What a starting egress is waiting on (named in its failure if it never becomes active).
#[derive(Debug, Clone)]
pub struct StartWait {
    pub what: String,
    pub until: tokio::time::Instant,
}

/// Events a recipe can subscribe to with `egress:on(name, fn)`; pages add `console`.
/// `update_layout` handlers receive LiveKit's UpdateLayout calls (without one, they are refused).
pub const EVENTS: &[&str] = &["active", "stop", "output_failed", "ended", "update_layout"];

impl EgressCtx {
    pub fn new(
        id: String,
        recipe: String,
        request: ValidRequest,
        graph: Graph,
        commands: UnboundedSender<Command>,
        config: &crate::config::Config,
    ) -> Arc<Self> {
        Arc::new(EgressCtx {
            id,
            recipe,
            request,
            graph: Mutex::new(graph),
            commands,
            handlers: Mutex::new(Vec::new()),
            timers: Mutex::new(HashMap::new()),
            next_timer: AtomicU64::new(1),
            suspended: Notify::new(),
            start_wait: Mutex::new(StartWait {
                what: "the recipe's start".into(),
                until: tokio::time::Instant::now() + config.server.start_timeout,
            }),
            start_timeout: config.server.start_timeout,
            resources: Mutex::new(Vec::new()),
            livekit: config.livekit.clone(),
            layouts_url: config.recipes.layouts_url.clone(),
            layouts_dir: config.recipes.layouts.clone(),
            announced: Mutex::new(Default::default()),
            enders: Mutex::new(Vec::new()),
        })
    }

    /// `start` waits on the outside world for up to `timeout`: the caller is answered now
    /// (the egress shows starting), and the start bound makes room for the wait.
    pub fn waiting_for(&self, what: impl Into<String>, timeout: std::time::Duration) {
        self.suspended.notify_one();
        self.expect(what, timeout);
    }

    /// Names what the egress waits on next, and moves the start bound to `timeout` from now:
    /// each step of a start is bounded by its own wait, not by the sum of all.
    pub fn expect(&self, what: impl Into<String>, timeout: std::time::Duration) {
        let mut wait = self.start_wait.lock().unwrap();
        wait.what = what.into();
        wait.until = tokio::time::Instant::now() + timeout + START_MARGIN;
    }

    pub fn start_wait(&self) -> StartWait {
        self.start_wait.lock().unwrap().clone()
    }

    pub fn keep(&self, resource: Box<dyn Any + Send>) {
        self.resources.lock().unwrap().push(resource);
    }

    /// Runs `f` when the egress starts ending, before EOS goes through the pipeline.
    pub fn on_ending(&self, f: Box<dyn FnOnce() + Send>) {
        self.enders.lock().unwrap().push(f);
    }

    pub fn end_sources(&self) {
        let enders = std::mem::take(&mut *self.enders.lock().unwrap());
        for end in enders {
            end();
        }
    }

    /// Stops what the egress kept alive (chromium, Xvfb...), after its pipeline stopped.
    pub fn release(&self) {
        self.resources.lock().unwrap().clear();
    }

    /// Keeps what the egress kept alive running for the life of the process: its pipeline
    /// did not stop, and killing Xvfb under a connected X client ends this process.
    pub fn leak_resources(&self) {
        std::mem::forget(std::mem::take(&mut *self.resources.lock().unwrap()));
    }

    pub fn add_handler(&self, lua: &Lua, event: &str, filter: Option<String>, f: Function) -> mlua::Result<()> {
        self.handlers.lock().unwrap().push((event.to_string(), filter, lua.create_registry_value(f)?));
        Ok(())
    }

    /// Calls every handler of `event`; a failing handler is logged with its file:line.
    pub fn fire(&self, lua: &Lua, event: &str, arg: Value) {
        self.fire_matching(lua, event, |_| true, arg)
    }

    /// Marks a track or participant as told about; false if it already was.
    pub fn announce(&self, key: String) -> bool {
        self.announced.lock().unwrap().insert(key)
    }

    /// A room event from the signalling task. Appearances already replayed to the handlers
    /// (see `announce`) are not told twice; disappearances only of what was told.
    pub fn fire_room(&self, lua: &Lua, event: &str, data: serde_json::Value) {
        let key = |prefix: &str| format!("{prefix}:{}", data["sid"].as_str().unwrap_or_default());
        let tell = match event {
            "track_published" => self.announce(key("track")),
            "participant_joined" => self.announce(key("participant")),
            "track_unpublished" => self.announced.lock().unwrap().remove(&key("track")),
            "participant_left" => self.announced.lock().unwrap().remove(&key("participant")),
            _ => true,
        };
        if tell {
            let arg = lua.to_value(&data).unwrap_or(Value::Nil);
            self.fire(lua, event, arg);
        }
    }

    /// Calls the console handlers whose pattern the message matches.
    pub fn fire_console(&self, lua: &Lua, text: &str) {
        let arg = lua.create_string(text).map(Value::String).unwrap_or(Value::Nil);
        self.fire_matching(lua, "console", |pattern| console_matches(text, pattern), arg)
    }

    /// The handlers of `event` whose filter (if any) `matches`, taken out of the lock.
    fn handlers_for(&self, lua: &Lua, event: &str, matches: impl Fn(&str) -> bool) -> Vec<Function> {
        self.handlers
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, filter, _)| name == event && filter.as_deref().is_none_or(&matches))
            .filter_map(|(_, _, key)| lua.registry_value::<Function>(key).ok())
            .collect()
    }

    fn fire_matching(&self, lua: &Lua, event: &str, matches: impl Fn(&str) -> bool, arg: Value) {
        for f in self.handlers_for(lua, event, matches) {
            super::budget::enter(lua);
            if let Err(e) = f.call::<()>(arg.clone()) {
                self.handler_failed(event, &e);
            }
        }
    }

    /// A handler's error is logged; a runaway handler (over its CPU or memory budget) fails
    /// the egress: its outputs are finalized, and it cannot keep burning a runtime thread.
    fn handler_failed(&self, what: &str, e: &mlua::Error) {
        tracing::error!(egress = %self.id, what, "recipe handler failed: {}", super::error_text(e));
        if let Some(reason) = super::budget::runaway(e) {
            let _ = self.commands.send(Command::Fail { reason });
        }
    }

    /// An update call (UpdateLayout) for the recipe: its handlers run to the end, so the
    /// caller learns whether it took. Ok(false) when the recipe has no handler for it.
    pub async fn fire_update(&self, lua: &Lua, event: &str, value: &str) -> Result<bool, String> {
        let handlers = self.handlers_for(lua, event, |_| true);
        for f in &handlers {
            super::budget::enter(lua);
            f.call_async::<()>(value).await.map_err(|e| {
                if let Some(reason) = super::budget::runaway(&e) {
                    let _ = self.commands.send(Command::Fail { reason });
                }
                super::error_text(&e)
            })?;
        }
        Ok(!handlers.is_empty())
    }

    /// Runs and forgets a due `egress:after` timer.
    pub fn run_timer(&self, lua: &Lua, id: u64) {
        let key = self.timers.lock().unwrap().remove(&id);
        super::budget::enter(lua);
        if let Some(f) = key.and_then(|k| lua.registry_value::<Function>(&k).ok())
            && let Err(e) = f.call::<()>(())
        {
            self.handler_failed("timer", &e);
        }
    }
}

/// `egress` in Lua.
#[derive(Clone)]
pub struct EgressHandle(pub Arc<EgressCtx>);

#[derive(Clone)]
pub struct MediaHandle(pub MediaPad);

#[derive(Clone)]
pub struct EncoderHandle {
    pub ctx: Arc<EgressCtx>,
    pub index: usize,
}

impl EgressCtx {
    /// A new `egress:after` timer id for `f`.
    pub(super) fn add_timer(&self, lua: &Lua, f: Function) -> mlua::Result<u64> {
        let id = self.next_timer.fetch_add(1, Ordering::Relaxed);
        self.timers.lock().unwrap().insert(id, lua.create_registry_value(f)?);
        Ok(id)
    }
}
