//! All egresses of this engine: starting one from a recipe, listing, stopping, draining.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use mlua::Function;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::supervisor::Supervisor;
use super::{Command, EgressRecord};
use crate::config::Config;
use crate::errors::{Error, ErrorKind};
use crate::lua::api::EgressCtx;
use crate::lua::{self, error_text};
use crate::media::graph::Graph;
use crate::recipes::{RecipeLookupError, Recipes};
use crate::request::filepath::Template;
use crate::request::{self, FieldError};

/// Why a start was refused, with the egress when it got far enough to have one.
#[derive(Debug)]
pub struct StartError {
    pub error: Error,
    pub egress: Option<Value>,
}

impl StartError {
    fn new(kind: ErrorKind, field: &str, message: impl Into<String>) -> Self {
        StartError { error: Error::new(kind, field, message), egress: None }
    }
}

/// Where a start comes from, beyond its recipe and params.
#[derive(Default)]
pub struct StartOptions {
    /// The always-on entry the egress runs for.
    pub always_on: Option<String>,
    /// An id chosen by the caller (livekit-server picks it for the workers it dispatches to).
    pub egress_id: Option<String>,
    /// The LiveKit request it came as (proto3 JSON), echoed in EgressInfo.
    pub livekit_request: Option<Value>,
}

/// Called with every new egress, however it was started (webhooks, the worker mode's reports).
pub type Observer = Arc<dyn Fn(&Arc<EgressRecord>) + Send + Sync>;

pub struct Manager {
    config: Arc<Config>,
    observers: RwLock<Vec<Observer>>,
    uploader: Option<Arc<crate::storage::Uploader>>,
    recipes: Arc<Recipes>,
    egresses: RwLock<Vec<Arc<EgressRecord>>>,
    draining: AtomicBool,
}

/// A panic in an egress's task (a bug in a primitive a recipe called) ends that egress alone:
/// its outputs get EOS and a few seconds to finalize, then it is failed with the panic's text.
async fn survive_panic(task: tokio::task::JoinHandle<()>, record: Arc<EgressRecord>, pipeline: gstreamer::Pipeline) {
    use gstreamer::prelude::*;
    tokio::spawn(fail_if_stuck_ending(record.clone()));
    let Err(e) = task.await else { return };
    if !e.is_panic() {
        return;
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(egress = %record.id, panic = %text, "egress task panicked; finalizing its outputs");
    pipeline.send_event(gstreamer::event::Eos::new());
    if let Some(bus) = pipeline.bus() {
        let until = gstreamer::ClockTime::from_seconds(5);
        let _ = tokio::task::spawn_blocking(move || {
            bus.timed_pop_filtered(until, &[gstreamer::MessageType::Eos, gstreamer::MessageType::Error])
        })
        .await;
    }
    crate::media::stop_all_within(pipeline.upcast_ref(), std::time::Duration::from_secs(10)).await;
    record.set_media_stopped();
    let reason = format!("internal error: {text}");
    record.set_status(super::EgressStatus::Failed, Some(reason.clone()), Some(reason));
}

/// The last guard of a clean end: an egress whose task is stuck (a call into GStreamer that
/// never returns) is failed once every bound of its own ending has passed, so its clients, the
/// store and a shutdown waiting for it all see it end. Uploads after the pipeline stopped are
/// not bounded here: they retry by design.
async fn fail_if_stuck_ending(record: Arc<EgressRecord>) {
    record.leaving().await;
    let bound = super::supervisor::ENDING_BOUND + std::time::Duration::from_secs(10);
    if tokio::time::timeout(bound, record.media_stopped()).await.is_err() {
        let text = format!("stuck while ending for {}s (an internal call never returned)", bound.as_secs());
        tracing::error!(egress = %record.id, "{text}");
        record.set_status(super::EgressStatus::Failed, Some(text.clone()), Some(text));
    }
}

fn new_egress_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("EG_{}", &hex[..12])
}

impl Manager {
    pub fn new(config: Arc<Config>, recipes: Arc<Recipes>) -> Arc<Manager> {
        let storage = &config.storage;
        let uploader = storage
            .upload
            .clone()
            .map(|t| Arc::new(crate::storage::Uploader::new(t, &storage.dir, &storage.backup_dir)));
        Arc::new(Manager {
            config,
            observers: RwLock::new(Vec::new()),
            uploader,
            recipes,
            egresses: RwLock::new(Vec::new()),
            draining: AtomicBool::new(false),
        })
    }

    pub fn recipes(&self) -> &Arc<Recipes> {
        &self.recipes
    }

    /// Checks a request against its recipe without starting anything (always-on entries).
    pub fn check(&self, recipe: &str, params: Value) -> Result<(), FieldError> {
        self.validate(recipe, params).map(|_| ()).map_err(|e| e.error.field_error())
    }

    fn validate(
        &self,
        recipe: &str,
        params: Value,
    ) -> Result<(crate::recipes::RecipeVersion, request::ValidRequest), StartError> {
        let version = self.recipes.get(recipe).map_err(|e| match e {
            RecipeLookupError::Unknown(known) => {
                let known = known.join(", ");
                StartError::new(
                    ErrorKind::UnknownRecipe,
                    "recipe",
                    format!("unknown recipe `{recipe}` (known: {known})"),
                )
            }
            RecipeLookupError::Broken(err) => {
                StartError::new(ErrorKind::RecipeFailed, "recipe", format!("recipe `{recipe}` failed to load: {err}"))
            }
        })?;
        let invalid = |e: FieldError| StartError { error: Error::invalid(e), egress: None };
        let output_fields: Vec<&str> = crate::media::outputs::request_fields().collect();
        let outputs = version.decl.outputs.then_some(output_fields.as_slice());
        let request = request::validate(params, &version.decl.params, outputs).map_err(invalid)?;
        crate::webhooks::KeyRing::from_config(&self.config).request_targets(&request.params).map_err(invalid)?;
        if version.decl.outputs {
            // Checked now so a bad output is a 400 before anything starts; the recipe builds it.
            crate::media::outputs::parse_outputs(&request.params, &request.settings).map_err(invalid)?;
        }
        Ok((version, request))
    }

    /// Lists the egresses of earlier runs again; observers hear of those that a restart
    /// interrupted (now failed), so webhooks and livekit-server learn how they ended.
    pub fn restore(&self, records: Vec<(EgressRecord, bool)>) {
        for (record, interrupted) in records {
            let record = Arc::new(record);
            self.egresses.write().unwrap().push(record.clone());
            if interrupted {
                self.tell_observers(&record);
            }
        }
    }

    fn tell_observers(&self, record: &Arc<EgressRecord>) {
        for observe in self.observers.read().unwrap().iter() {
            observe(record);
        }
    }

    pub fn observe(&self, observer: Observer) {
        self.observers.write().unwrap().push(observer);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Validates the request, runs the recipe's `start`, and returns once the pipeline plays.
    pub async fn start(&self, recipe: &str, params: Value) -> Result<Arc<EgressRecord>, StartError> {
        self.start_with(recipe, params, StartOptions::default()).await
    }

    pub async fn start_with(
        &self,
        recipe: &str,
        params: Value,
        options: StartOptions,
    ) -> Result<Arc<EgressRecord>, StartError> {
        if self.is_draining() {
            return Err(StartError::new(ErrorKind::Unavailable, "", "egret is shutting down"));
        }
        let (version, request) = self.validate(recipe, params)?;
        let id = match options.egress_id {
            Some(id) if self.get(&id).is_some() => {
                return Err(StartError::new(
                    ErrorKind::AlreadyExists,
                    "egress_id",
                    format!("egress {id} exists already"),
                ));
            }
            Some(id) => id,
            None => new_egress_id(),
        };
        let always_on = options.always_on;
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let record = Arc::new(EgressRecord::new(
            id.clone(),
            recipe.to_string(),
            version.version,
            request.params.clone(),
            always_on,
            options.livekit_request,
            command_tx.clone(),
        ));

        let internal = |e: mlua::Error| StartError::new(ErrorKind::Internal, "", error_text(&e));
        let state = lua::sandbox(self.recipes.dir()).map_err(internal)?;
        let table = lua::eval_recipe(&state, &version.source, &version.chunk).map_err(internal)?;
        let start: Function = table.get("start").map_err(internal)?;

        let mut template = Template::new(&id, recipe);
        if let Some(params) = request.params.as_object() {
            for (key, value) in params {
                if let Some(s) = value.as_str() {
                    template.set(key, s);
                }
            }
        }
        let storage = &self.config.storage;
        // A file that exists already is refused now, before any room is joined or page
        // loaded; the output's own claim (when the recipe builds it) stays the real guard.
        if let Some(e) = existing_file(&request.params, &template, &storage.dir) {
            return Err(StartError { error: Error::invalid(e), egress: None });
        }
        let upload_task = crate::media::outputs::uploads::UploadQueue::start(self.uploader.clone());
        let uploads = Some(upload_task.queue());
        let graph = Graph::new(
            &id,
            &storage.dir,
            storage.crash_safe_mp4,
            template,
            media_tx.clone(),
            uploads,
            &storage.backup_dir,
        );
        let ctx = EgressCtx::new(id.clone(), recipe.to_string(), request, graph, command_tx, &self.config);
        self.egresses.write().unwrap().push(record.clone());
        let supervisor = Supervisor {
            record: record.clone(),
            ctx,
            lua: state,
            commands: command_rx,
            media: media_rx,
            media_tx,
            uploader: self.uploader.clone(),
            upload_task: Some(upload_task),
            source_error: None,
            streams: std::sync::Mutex::new(super::stream_retry::StreamRetries::new(
                self.config.server.stream_reconnect_timeout,
            )),
        };
        let (started_tx, started_rx) = oneshot::channel();
        let pipeline = supervisor.pipeline();
        let task = tokio::spawn(supervisor.run(start, started_tx));
        tokio::spawn(survive_panic(task, record.clone(), pipeline));
        let refused = |error| {
            // The caller has its answer: like LiveKit, a refused start leaves no egress behind
            // (nothing listed, no webhook, nothing told to livekit-server).
            self.egresses.write().unwrap().retain(|e| e.id != id);
            Err(StartError { error, egress: Some(record.to_json()) })
        };
        // The supervisor answers within start_timeout by itself, unless a recipe is stuck where
        // no budget reaches (inside a built-in C function): the caller is answered regardless.
        let answer_limit = self.config.server.start_timeout + std::time::Duration::from_secs(10);
        let Ok(answer) = tokio::time::timeout(answer_limit, started_rx).await else {
            tracing::error!(egress_id = %id, "the recipe's start never returned: the egress is abandoned");
            return refused(Error::new(
                ErrorKind::RecipeFailed,
                "",
                format!("the recipe's start did not return within {} s", answer_limit.as_secs()),
            ));
        };
        match answer {
            Ok(Ok(())) => {
                self.tell_observers(&record);
                Ok(record.clone())
            }
            Ok(Err(error)) => refused(error),
            Err(_) => refused(Error::new(
                ErrorKind::RecipeFailed,
                "",
                "the egress failed inside egret during start (see its log)",
            )),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<EgressRecord>> {
        self.egresses.read().unwrap().iter().find(|e| e.id == id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<EgressRecord>> {
        self.egresses.read().unwrap().clone()
    }

    /// Stops an egress; answers once it is ending (its outputs finalizing), as LiveKit does.
    pub async fn stop(&self, id: &str, reason: &str) -> crate::errors::Result<Arc<EgressRecord>> {
        let record = self.get(id).ok_or_else(|| Error::egress_not_found(id))?;
        let status = record.status();
        if status.is_terminal() || !record.send(Command::Stop { reason: reason.to_string() }) {
            return Err(Error::already_ended(id, status));
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), record.leaving()).await;
        Ok(record)
    }

    pub fn storage_dir(&self) -> std::path::PathBuf {
        self.config.storage.dir.clone()
    }

    /// Adds and removes stream URLs of a running egress; its other outputs are untouched.
    pub async fn update_stream(
        &self,
        id: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> crate::errors::Result<Arc<EgressRecord>> {
        let record = self.get(id).ok_or_else(|| Error::egress_not_found(id))?;
        for (i, url) in add.iter().enumerate() {
            crate::request::outputs::check_stream_url(url, &format!("add_output_urls[{i}]"))?;
        }
        let ended = || Error::already_ended(id, record.status());
        if record.status().is_terminal() {
            return Err(ended());
        }
        let (reply, answer) = oneshot::channel();
        if !record.send(Command::UpdateStream { add, remove, reply }) {
            return Err(ended());
        }
        answer.await.map_err(|_| ended())??;
        Ok(record)
    }

    /// A JPEG still of a running egress's picture, `width` pixels wide.
    pub async fn picture(&self, id: &str, width: u32) -> crate::errors::Result<Vec<u8>> {
        let record = self.get(id).ok_or_else(|| Error::egress_not_found(id))?;
        let ended = || Error::already_ended(id, record.status());
        if record.status().is_terminal() {
            return Err(ended());
        }
        let (reply, answer) = oneshot::channel();
        if !record.send(Command::Picture { reply }) {
            return Err(ended());
        }
        let pad = answer.await.map_err(|_| ended())?.ok_or_else(|| {
            Error::new(
                ErrorKind::FailedPrecondition,
                "",
                format!("egress {id} encodes no picture (sound only, or copied)"),
            )
        })?;
        crate::media::thumbnail::jpeg(pad, width)
            .await
            .map_err(|e| Error::new(ErrorKind::FailedPrecondition, "", format!("no picture of {id}: {e:#}")))
    }

    /// Switches the layout of a running egress whose recipe handles `update_layout`.
    pub async fn update_layout(&self, id: &str, layout: String) -> crate::errors::Result<Arc<EgressRecord>> {
        let record = self.get(id).ok_or_else(|| Error::egress_not_found(id))?;
        if layout.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "layout", "must not be empty"));
        }
        let ended = || Error::already_ended(id, record.status());
        if record.status().is_terminal() {
            return Err(ended());
        }
        let (reply, answer) = oneshot::channel();
        if !record.send(Command::UpdateLayout { layout, reply }) {
            return Err(ended());
        }
        answer.await.map_err(|_| ended())??;
        Ok(record)
    }

    /// SIGTERM: refuse new egresses, stop every running one, wait for all to finalize.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let running: Vec<_> = self.list().into_iter().filter(|e| !e.status().is_terminal()).collect();
        tracing::info!(count = running.len(), "draining: stopping running egresses");
        for record in &running {
            record.send(Command::Stop { reason: super::reason::SHUTDOWN.into() });
        }
        for record in running {
            record.finished().await;
        }
    }
}

/// The first `file_outputs[i].filepath` that names an existing file once expanded (paths
/// whose name is only known later, with a placeholder left or no extension yet, are let be).
fn existing_file(params: &Value, template: &Template, storage: &std::path::Path) -> Option<FieldError> {
    let outputs = params.get("file_outputs")?.as_array()?;
    outputs.iter().enumerate().find_map(|(i, output)| {
        let raw = output.get("filepath")?.as_str()?;
        let rel = template.expand(raw);
        let named = !rel.contains('{') && std::path::Path::new(&rel).extension().is_some();
        let field = format!("file_outputs[{i}].filepath");
        if !named || crate::request::filepath::check_relative(&rel, &field).is_err() {
            return None;
        }
        crate::request::filepath::check_free(&storage.join(&rel), false, &field).err()
    })
}
