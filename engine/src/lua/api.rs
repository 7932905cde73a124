//! What a recipe's `start(req, egress)` can call. Every method builds or drives GStreamer
//! pieces in Rust; Lua holds only handles (`egress`, sources' `video`/`audio`, encoders).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::{Function, Lua, LuaSerdeExt, RegistryKey, Table, UserData, UserDataFields, UserDataMethods, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use crate::egress::Command;
use crate::media::chrome::console_matches;
use crate::media::graph::Graph;
use crate::media::testsrc::TestSourceOptions;
use crate::media::{MediaKind, MediaPad};
use crate::request::outputs::parse_outputs;
use crate::request::{EncodeSettings, FieldError, ValidRequest};

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
            resources: Mutex::new(Vec::new()),
            livekit: config.livekit.clone(),
            layouts_url: config.recipes.layouts_url.clone(),
            layouts_dir: config.recipes.layouts.clone(),
            announced: Mutex::new(Default::default()),
            enders: Mutex::new(Vec::new()),
        })
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
            if let Err(e) = f.call::<()>(arg.clone()) {
                tracing::error!(egress = %self.id, event, "recipe handler failed: {}", super::error_text(&e));
            }
        }
    }

    /// An update call (UpdateLayout) for the recipe: its handlers run to the end, so the
    /// caller learns whether it took. Ok(false) when the recipe has no handler for it.
    pub async fn fire_update(&self, lua: &Lua, event: &str, value: &str) -> Result<bool, String> {
        let handlers = self.handlers_for(lua, event, |_| true);
        for f in &handlers {
            f.call_async::<()>(value).await.map_err(|e| super::error_text(&e))?;
        }
        Ok(!handlers.is_empty())
    }

    /// Runs and forgets a due `egress:after` timer.
    pub fn run_timer(&self, lua: &Lua, id: u64) {
        let key = self.timers.lock().unwrap().remove(&id);
        if let Some(f) = key.and_then(|k| lua.registry_value::<Function>(&k).ok())
            && let Err(e) = f.call::<()>(())
        {
            tracing::error!(egress = %self.id, "recipe timer failed: {}", super::error_text(&e));
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

fn field_error(e: FieldError) -> mlua::Error {
    mlua::Error::external(e)
}

fn runtime(e: anyhow::Error) -> mlua::Error {
    mlua::Error::runtime(format!("{e:#}"))
}

impl UserData for MediaHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("kind", |_, this| Ok(this.0.kind.name()));
    }
}

impl UserData for EgressHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, this| Ok(this.0.id.clone()));
        fields.add_field_method_get("recipe", |_, this| Ok(this.0.recipe.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // egress:testsrc { video = true, audio = true, av_sync = false, tone = 440 }
        methods.add_method("testsrc", |lua, this, opts: Option<Table>| {
            let opts = opts.unwrap_or(lua.create_table()?);
            let options = TestSourceOptions {
                video: opts.get::<Option<bool>>("video")?.unwrap_or(true),
                audio: opts.get::<Option<bool>>("audio")?.unwrap_or(true),
                av_sync: opts.get::<Option<bool>>("av_sync")?.unwrap_or(false),
                tone_hz: opts.get::<Option<f64>>("tone")?.unwrap_or(440.0),
            };
            if !options.video && !options.audio {
                return Err(mlua::Error::runtime("testsrc: video and audio are both off"));
            }
            let pads = this.0.graph.lock().unwrap().add_testsrc(&options).map_err(runtime)?;
            let source = lua.create_table()?;
            for pad in pads {
                source.set(pad.kind.name(), MediaHandle(pad))?;
            }
            Ok(source)
        });

        // egress:encode { video = src.video, audio = src.audio [, preset = ..., advanced = ...] }
        methods.add_method("encode", |lua, this, opts: Table| {
            let mut inputs = Vec::new();
            for kind in [MediaKind::Video, MediaKind::Audio] {
                match opts.get::<Value>(kind.name())? {
                    Value::Nil | Value::Boolean(false) => {}
                    Value::UserData(ud) => {
                        let media = match ud.borrow::<super::room::SlotHandle>() {
                            Ok(slot) => slot.media.clone(),
                            Err(_) => ud.borrow::<MediaHandle>()?.clone(),
                        };
                        if media.0.kind != kind {
                            return Err(mlua::Error::runtime(format!(
                                "encode: `{}` was given {} media",
                                kind.name(),
                                media.0.kind.name()
                            )));
                        }
                        inputs.push(media.0.clone());
                    }
                    _ => {
                        return Err(mlua::Error::runtime(format!("encode: `{}` must be a source's {0}", kind.name())));
                    }
                }
            }
            if inputs.is_empty() {
                return Err(mlua::Error::runtime("encode: give `video`, `audio` or both"));
            }
            let settings = if opts.contains_key("preset")? || opts.contains_key("advanced")? {
                let preset: serde_json::Value = lua.from_value(opts.get::<Value>("preset")?)?;
                let advanced: serde_json::Value = lua.from_value(opts.get::<Value>("advanced")?)?;
                let only = serde_json::json!({ "preset": preset, "advanced": advanced });
                let only = crate::request::fields::snake_case_keys(strip_nulls(only));
                EncodeSettings::from_request(&only).map_err(field_error)?
            } else {
                this.0.request.settings.clone()
            };
            let index = this.0.graph.lock().unwrap().add_encoder(settings, &inputs).map_err(runtime)?;
            Ok(EncoderHandle { ctx: this.0.clone(), index })
        });

        // egress:join(room), egress:copy { video = track }, egress:slot(kind)
        super::room::add_egress_methods(methods);

        // egress:chrome { url = ..., video = true, audio = true }: a page captured with its sound.
        methods.add_async_method("chrome", |_, this, opts: Table| async move {
            super::page::open(this.0.clone(), opts).await
        });

        // egress:fail(reason): ends the egress as failed; what was recorded is finalized.
        methods.add_method("fail", |_, this, reason: String| {
            let _ = this.0.commands.send(Command::Fail { reason });
            Ok(())
        });

        // egress:stop(reason): ends the egress; files are finalized.
        methods.add_method("stop", |_, this, reason: Option<String>| {
            let reason = reason.unwrap_or_else(|| "stopped by recipe".into());
            let _ = this.0.commands.send(Command::Stop { reason });
            Ok(())
        });

        // egress:on("stop", fn)
        methods.add_method("on", |lua, this, (event, f): (String, Function)| {
            if !EVENTS.contains(&event.as_str()) {
                return Err(mlua::Error::runtime(format!(
                    "on: unknown event `{event}` (known: {})",
                    EVENTS.join(", ")
                )));
            }
            this.0.add_handler(lua, &event, None, f)
        });

        // egress:after(seconds, fn): runs fn once, later, unless the egress ended.
        methods.add_method("after", |lua, this, (seconds, f): (f64, Function)| {
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(mlua::Error::runtime("after: seconds must be a non-negative number"));
            }
            let id = this.0.next_timer.fetch_add(1, Ordering::Relaxed);
            this.0.timers.lock().unwrap().insert(id, lua.create_registry_value(f)?);
            let commands = this.0.commands.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                let _ = commands.send(Command::Timer { id });
            });
            Ok(id)
        });

        // egress:set_var("room_name", "lobby"): a value for `{room_name}` in output paths.
        methods.add_method("set_var", |_, this, (name, value): (String, String)| {
            this.0.graph.lock().unwrap().template.set(&name, &value);
            Ok(())
        });
    }
}

impl UserData for EncoderHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // encoder:output(req): every output the table names (file_outputs, stream_outputs...).
        methods.add_method("output", |lua, this, spec: Table| {
            let json: serde_json::Value = lua.from_value(Value::Table(spec))?;
            let json = crate::request::fields::snake_case_keys(strip_nulls(json));
            let mut graph = this.ctx.graph.lock().unwrap();
            let settings = graph.encoder_settings(this.index);
            let outputs = parse_outputs(&json, &settings).map_err(field_error)?;
            graph.add_outputs(this.index, &outputs).map_err(field_error)?;
            Ok(this.clone())
        });
    }
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Finds a request-field error inside a Lua error (raised by a primitive during `start`).
/// mlua's `source()` stops at callback errors, so the variants are walked here.
pub fn find_field_error(err: &mlua::Error) -> Option<FieldError> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => find_field_error(cause),
        mlua::Error::ExternalError(inner) => inner.downcast_ref::<FieldError>().cloned(),
        _ => None,
    }
}
