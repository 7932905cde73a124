//! The task that owns one egress: runs the recipe's `start`, plays the pipeline, reacts to
//! bus messages, commands and recipe timers, and finalizes every output on the way out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use mlua::{Function, Lua, LuaSerdeExt};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::Instant;

mod outputs;

use super::stream_retry::StreamRetries;
use super::{Command, EgressRecord, EgressStatus, reason};
use crate::errors::{Error, ErrorKind};
use crate::lua::api::{EgressCtx, EgressHandle, find_field_error};
use crate::lua::error_text;
use crate::media::outputs::{MediaEvent, OutputState};

/// How long a source error waits before it fails the egress. A room track that is unpublished
/// breaks its webrtcbin stream a moment before the room says so; the recipe's clean stop on
/// that news must win over the error (LiveKit completes such an egress).
const SOURCE_ERROR_GRACE: Duration = Duration::from_millis(1500);

/// How long outputs get to finalize after EOS without writing a byte before the egress is
/// failed anyway. While they keep writing (a saturated machine encoding its backlog), they get
/// up to `FINALIZE_LIMIT`: the file is then whole rather than cut.
const FINALIZE_TIMEOUT: Duration = Duration::from_secs(10);
const FINALIZE_LIMIT: Duration = Duration::from_secs(40);
/// How long the pipeline gets to reach NULL once finalized (or given up on).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The most an ending takes before the egress has its terminal status (uploads aside).
pub(super) const ENDING_BOUND: Duration = Duration::from_secs(FINALIZE_LIMIT.as_secs() + STOP_TIMEOUT.as_secs());

pub(super) struct Supervisor {
    pub record: Arc<EgressRecord>,
    pub ctx: Arc<EgressCtx>,
    pub lua: Lua,
    pub commands: UnboundedReceiver<Command>,
    pub media: UnboundedReceiver<MediaEvent>,
    pub media_tx: UnboundedSender<MediaEvent>,
    pub uploader: Option<Arc<crate::storage::Uploader>>,
    /// The queue of live pieces (segments, playlists, snapshots), drained before the end.
    pub upload_task: Option<crate::media::outputs::uploads::UploadTask>,
    /// A source failed (text, when the egress fails for it unless it ends cleanly first).
    pub source_error: Option<(String, Instant)>,
    /// Stream URLs reconnecting after a failure.
    pub streams: Mutex<StreamRetries>,
}

/// How the egress will end once its outputs have finalized.
struct Ending {
    status: EgressStatus,
    reason: String,
    error: Option<String>,
    deadline: Instant,
    /// When the ending began, and the bytes the outputs had written by the last deadline.
    began: Instant,
    written: u64,
}

impl Ending {
    fn now(status: EgressStatus, reason: String, error: Option<String>) -> Self {
        let now = Instant::now();
        Ending { status, reason, error, deadline: now, began: now, written: 0 }
    }
}

fn bytes_of(graph: &crate::media::graph::Graph) -> u64 {
    graph.outputs.iter().map(|o| o.status.bytes.load(std::sync::atomic::Ordering::Relaxed)).sum()
}

fn reply(answer: &mut Option<oneshot::Sender<Result<(), Error>>>, result: Result<(), Error>) {
    if let Some(tx) = answer.take() {
        let _ = tx.send(result);
    }
}

/// A failed `start` as the caller sees it: a typed error a primitive raised (a room that does
/// not exist: NotFound), else the recipe's failure with the request field when a primitive
/// named one, and the recipe's file:line.
fn start_error(e: &mlua::Error) -> Error {
    if let Some(typed) = find_typed_error(e) {
        return typed;
    }
    let text = error_text(e);
    match find_field_error(e) {
        Some(fe) => {
            // `scripts/x.lua:12: ...` → the recipe's file:line, once.
            let first = text.lines().next().unwrap_or("");
            let at = first.find(".lua:").map(|i| {
                let digits = first[i + 5..].chars().take_while(char::is_ascii_digit).count();
                &first[..i + 5 + digits]
            });
            let kind = if fe.conflict { ErrorKind::AlreadyExists } else { ErrorKind::RecipeFailed };
            Error::new(kind, fe.field, format!("{} ({})", fe.message, at.unwrap_or(first)))
        }
        None => Error::new(ErrorKind::RecipeFailed, "", text),
    }
}

fn find_typed_error(err: &mlua::Error) -> Option<Error> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => find_typed_error(cause),
        mlua::Error::ExternalError(inner) => inner.downcast_ref::<Error>().cloned(),
        _ => None,
    }
}

impl Supervisor {
    /// Runs the egress to its end. `started` is answered when `start` returned and the
    /// pipeline plays, or as soon as `start` waits on the outside world (a page loading).
    pub async fn run(mut self, start: Function, started: oneshot::Sender<Result<(), Error>>) {
        let mut answer = Some(started);
        let request = self.lua.to_value(&self.ctx.request.params);
        let handle = EgressHandle(self.ctx.clone());
        crate::lua::budget::enter(&self.lua);
        let start_call = async move { start.call_async::<()>((request?, handle)).await };
        tokio::pin!(start_call);
        let mut starting = true;
        let bus = self.pipeline().bus().expect("pipeline has a bus");
        let mut messages = bus.stream();
        let mut ending: Option<Ending> = None;
        loop {
            let deadline =
                ending.as_ref().map(|e| e.deadline).unwrap_or_else(|| Instant::now() + Duration::from_secs(86400));
            tokio::select! {
                result = &mut start_call, if starting => {
                    starting = false;
                    match result.map_err(|e| start_error(&e)).and_then(|()| self.play(&mut ending)) {
                        Ok(()) => {
                            self.ctx.expect("its first media", self.ctx.start_timeout);
                            reply(&mut answer, Ok(()))
                        }
                        Err(e) => {
                            self.record.set_failure(e.kind);
                            let end = Ending::now(EgressStatus::Failed, e.message.clone(), Some(e.to_string()));
                            // Ended first: the caller's answer shows the egress failed.
                            self.finish(end).await;
                            reply(&mut answer, Err(e));
                            return;
                        }
                    }
                }
                _ = self.ctx.suspended.notified(), if starting && answer.is_some() => reply(&mut answer, Ok(())),
                Some(command) = self.commands.recv() => match command {
                    // Before `start` returned nothing records yet: end at once.
                    Command::Stop { reason } if starting => {
                        self.finish(Ending::now(EgressStatus::Aborted, reason, None)).await;
                        return reply(&mut answer, Ok(()));
                    }
                    Command::Fail { reason } if starting => {
                        self.finish(Ending::now(EgressStatus::Failed, reason.clone(), Some(reason.clone()))).await;
                        return reply(&mut answer, Err(Error::new(ErrorKind::RecipeFailed, "", reason)));
                    }
                    Command::Stop { reason } => {
                        let broken = self.source_error.is_some();
                        self.begin_ending(&mut ending, None, reason, None, broken)
                    }
                    Command::Fail { reason } => {
                        self.begin_ending(&mut ending, Some(EgressStatus::Failed), reason.clone(), Some(reason), false)
                    }
                    Command::Timer { id } => {
                        self.ctx.run_timer(&self.lua, id);
                        self.publish_outputs();
                    }
                    Command::Console { text } => {
                        self.ctx.fire_console(&self.lua, &text);
                        self.publish_outputs();
                    }
                    Command::Room { event, data } => {
                        match event.as_str() {
                            // A track back in another codec needs a new connection too; the
                            // network is fine, and the details say so.
                            "reconnecting" => self.record.set_details(format!(
                                "{} since {}: {}",
                                if data["cause"] == "codec" {
                                    "moving to a new LiveKit connection"
                                } else {
                                    "reconnecting to LiveKit"
                                },
                                chrono::Utc::now().format("%H:%M:%S UTC"),
                                data["reason"].as_str().unwrap_or_default()
                            )),
                            "reconnected" => self.record.set_details(format!(
                                "{} at {} after {:.1} s",
                                if data["cause"] == "codec" {
                                    "moved to a new LiveKit connection"
                                } else {
                                    "reconnected to LiveKit"
                                },
                                chrono::Utc::now().format("%H:%M:%S UTC"),
                                data["seconds"].as_f64().unwrap_or_default()
                            )),
                            _ => {}
                        }
                        self.ctx.fire_room(&self.lua, &event, data);
                        self.publish_outputs();
                    }
                    Command::UpdateStream { add, remove, reply } => {
                        // Published before the answer: the caller's EgressInfo shows the change.
                        let result = self.update_stream(&add, &remove);
                        self.publish_outputs();
                        let none_left = result.is_ok() && self.live_outputs() == 0;
                        let _ = reply.send(result);
                        if none_left {
                            // LiveKit ends an egress whose last stream was removed, complete.
                            self.begin_ending(&mut ending, Some(EgressStatus::Complete), reason::ALL_STREAMS_STOPPED.into(), None, false);
                            // Done once the removed branch is out of the pipeline (below): tearing
                            // the pipeline down while its unlink is under way crashes GStreamer.
                        }
                    }
                    Command::Picture { reply } => {
                        let _ = reply.send(self.ctx.graph.lock().unwrap().raw_video_pad());
                    }
                    Command::UpdateLayout { layout, reply } => {
                        let result = match self.ctx.fire_update(&self.lua, "update_layout", &layout).await {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(Error::new(ErrorKind::FailedPrecondition, "", format!(
                                "recipe `{}` has no layout to change (no update_layout handler)", self.ctx.recipe
                            ))),
                            Err(e) => Err(Error::new(ErrorKind::InvalidArgument, "layout", e)),
                        };
                        let _ = reply.send(result);
                    }
                },
                Some(event) = self.media.recv() => {
                    self.on_media_event(event, &mut ending);
                    if ending.is_some() && self.all_outputs_ended() && !self.unlinking() {
                        break; // nothing left that an EOS could finalize
                    }
                }
                Some(message) = messages.next(), if !starting => {
                    // (A branch still leaving the pipeline finishes first: see Unlinked above.)
                    if self.on_message(&message, &mut ending) && !self.unlinking() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(self.source_error.as_ref().map_or(deadline, |e| e.1)), if ending.is_none() && self.source_error.is_some() => {
                    let (text, _) = self.source_error.take().expect("guarded");
                    self.begin_ending(&mut ending, Some(EgressStatus::Failed), text.clone(), Some(text), true);
                }
                _ = tokio::time::sleep_until(self.ctx.start_wait().until), if ending.is_none() && self.record.status() == EgressStatus::Starting => {
                    // Woken by a bound that a later wait may have pushed back: check it again.
                    let wait = self.ctx.start_wait();
                    if Instant::now() < wait.until {
                        continue;
                    }
                    let text = self.start_timeout_text(&wait.what, starting);
                    tracing::warn!(egress = %self.record.id, "{text}");
                    if starting {
                        // `start` never came back: it is dropped with this task.
                        self.finish(Ending::now(EgressStatus::Failed, text.clone(), Some(text.clone()))).await;
                        return reply(&mut answer, Err(Error::new(ErrorKind::RecipeFailed, "", text)));
                    }
                    self.begin_ending(&mut ending, Some(EgressStatus::Failed), text.clone(), Some(text), false);
                }
                _ = tokio::time::sleep_until(deadline), if ending.is_some() => {
                    let e = ending.as_mut().expect("guarded");
                    let written = self.bytes_written();
                    if written > e.written && e.began.elapsed() < FINALIZE_LIMIT {
                        // Still writing: slow, not stuck.
                        e.written = written;
                        e.deadline = (Instant::now() + FINALIZE_TIMEOUT).min(e.began + FINALIZE_LIMIT);
                        continue;
                    }
                    e.status = EgressStatus::Failed;
                    let waited = e.began.elapsed().as_secs();
                    e.error.get_or_insert_with(|| format!("outputs did not finalize within {waited}s"));
                    break;
                }
            }
        }
        let end = ending.unwrap_or_else(|| Ending::now(EgressStatus::Complete, reason::SOURCE_ENDED.into(), None));
        self.finish(end).await;
    }

    /// Why a starting egress failed its start bound, naming what it waited for (and, once
    /// playing, which outputs never got media).
    fn start_timeout_text(&self, what: &str, starting: bool) -> String {
        let mut what = what.to_string();
        if !starting {
            let graph = self.ctx.graph.lock().unwrap();
            let silent: Vec<_> = graph
                .outputs
                .iter()
                .filter(|o| o.attached && o.status.state() != OutputState::Active)
                .map(|o| o.status.field.clone())
                .collect();
            if !silent.is_empty() {
                what = format!("{what} on {}", silent.join(", "));
            }
        }
        let waited = (crate::clock::now() - self.record.created_at).max(0.0);
        format!("not active after {waited:.0} s: still waiting for {what}")
    }

    pub fn pipeline(&self) -> gst::Pipeline {
        self.ctx.graph.lock().unwrap().pipeline.clone()
    }

    /// After `start` returned: the recipe built its outputs, so the pipeline may play.
    fn play(&mut self, ending: &mut Option<Ending>) -> Result<(), Error> {
        if self.ctx.graph.lock().unwrap().outputs.is_empty() {
            let text = format!("recipe `{}` built no output", self.ctx.recipe);
            return Err(Error::new(ErrorKind::RecipeFailed, "", text));
        }
        self.publish_outputs();
        let pipeline = self.pipeline();
        if pipeline.set_state(gst::State::Playing).is_err() && !self.drop_unreachable_streams(ending)? {
            return Err(Error::new(ErrorKind::RecipeFailed, "", "pipeline refused to play"));
        }
        Ok(())
    }

    /// The API reads output statuses from the record; outputs may be added by handlers.
    fn publish_outputs(&self) {
        let (statuses, room_id) = {
            let graph = self.ctx.graph.lock().unwrap();
            // A reconnected stream URL has a branch per connection on one status: shown once.
            let mut statuses: Vec<Arc<crate::media::outputs::OutputStatus>> = Vec::new();
            for output in &graph.outputs {
                if !statuses.iter().any(|s| Arc::ptr_eq(s, &output.status)) {
                    statuses.push(output.status.clone());
                }
            }
            (statuses, graph.template.get("room_id").map(str::to_string))
        };
        self.record.set_outputs(statuses);
        self.record.set_room_id(room_id);
    }

    /// Outputs linked and not failed, and stream URLs between reconnections.
    fn live_outputs(&self) -> usize {
        self.ctx.graph.lock().unwrap().live_outputs() + self.streams.lock().unwrap().waiting()
    }

    /// A removed output is still leaving the pipeline (its pads not yet released).
    fn unlinking(&self) -> bool {
        self.ctx.graph.lock().unwrap().outputs.iter().any(|o| o.unlinking())
    }

    fn all_outputs_ended(&self) -> bool {
        self.ctx.graph.lock().unwrap().outputs.iter().filter(|o| o.attached).all(|o| o.ended())
    }

    fn on_media_event(&mut self, event: MediaEvent, ending: &mut Option<Ending>) {
        match event {
            MediaEvent::Active => {
                if self.record.status() == EgressStatus::Starting
                    && self.record.set_status(EgressStatus::Active, None, None)
                {
                    if let Some(limit) = self.ctx.request.max_duration {
                        let commands = self.ctx.commands.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(crate::clock::seconds(limit)).await;
                            let _ = commands.send(Command::Stop { reason: reason::LIMIT_REACHED.into() });
                        });
                    }
                    self.ctx.fire(&self.lua, "active", mlua::Value::Nil);
                }
            }
            MediaEvent::Unlinked(i) => {
                let mut graph = self.ctx.graph.lock().unwrap();
                let pipeline = graph.pipeline.clone();
                graph.outputs[i].remove(&pipeline);
            }
            MediaEvent::Reconnect(url) => {
                let Some(status) = self.streams.lock().unwrap().take_due(&url) else { return };
                let built = self.ctx.graph.lock().unwrap().reconnect_stream(0, status.clone());
                if let Err(e) = built {
                    let retrying = self.streams.lock().unwrap().on_failure(&status, &e.message, &self.media_tx);
                    if !retrying {
                        status.set_state(OutputState::Failed, Some(e.message.clone()));
                        if self.live_outputs() == 0 && ending.is_none() {
                            let reason = format!("all outputs failed; last: {}: {}", status.field, e.message);
                            *ending = Some(Ending::now(EgressStatus::Failed, reason.clone(), Some(reason)));
                        }
                    }
                }
                self.publish_outputs();
            }
        }
    }

    /// Starts finalizing: EOS through the whole pipeline (clean stop), or straight into the
    /// outputs when the source side is broken (`error`).
    fn begin_ending(
        &self,
        ending: &mut Option<Ending>,
        status: Option<EgressStatus>,
        reason: String,
        error: Option<String>,
        broken_source: bool,
    ) {
        if ending.is_some() {
            return;
        }
        let status = status.unwrap_or(if self.record.status() == EgressStatus::Starting {
            EgressStatus::Aborted
        } else {
            EgressStatus::Complete
        });
        self.record.set_status(EgressStatus::Ending, Some(reason.clone()), error.clone());
        self.streams.lock().unwrap().give_up();
        self.ctx.fire(&self.lua, "stop", mlua::Value::String(self.lua.create_string(&reason).expect("lua string")));
        self.ctx.end_sources();
        let graph = self.ctx.graph.lock().unwrap();
        if broken_source {
            graph.outputs.iter().filter(|o| o.attached).for_each(|o| o.push_eos());
        } else {
            crate::media::send_eos_detached(graph.pipeline.clone());
        }
        let written = bytes_of(&graph);
        drop(graph);
        let began = Instant::now();
        *ending = Some(Ending { status, reason, error, deadline: began + FINALIZE_TIMEOUT, began, written });
    }

    /// Returns true when the egress is done (all outputs finalized or none left).
    fn on_message(&mut self, message: &gst::Message, ending: &mut Option<Ending>) -> bool {
        use gst::MessageView;
        match message.view() {
            // Removing a pipeline's last sink makes it post EOS (no sink is left that is not
            // at EOS): a lone stream being reconnected is not the end of the source.
            MessageView::Eos(_) => {
                let reconnecting = ending.is_none()
                    && self.ctx.graph.lock().unwrap().live_outputs() == 0
                    && self.streams.lock().unwrap().waiting() > 0;
                if reconnecting {
                    tracing::debug!(egress = %self.record.id, "EOS of a pipeline left without sinks: not an end");
                }
                !reconnecting
            }
            MessageView::Error(err) => {
                let text = format!("{}", err.error());
                let detail = err.debug().map(|d| d.to_string()).unwrap_or_default();
                let source = message.src().cloned();
                if source.as_ref().is_some_and(crate::livekit::is_data_channel_error) {
                    tracing::debug!(egress = %self.record.id, error = %text, "data channel transport error ignored");
                    return false;
                }
                let output = source.as_ref().and_then(|s| self.ctx.graph.lock().unwrap().output_of(s));
                tracing::warn!(egress = %self.record.id, error = %text, %detail, "pipeline error");
                match output {
                    Some(i) => self.fail_output(i, text, ending),
                    None => {
                        // A source or encoder error: keep what was recorded, then fail. Once
                        // a clean stop is under way (a room that ended tears its connection
                        // down), sources failing no longer matter: outputs are finalized.
                        if let Some(e) = ending.as_mut() {
                            if e.error.is_none() {
                                if e.status != EgressStatus::Complete {
                                    e.status = EgressStatus::Failed;
                                    e.error = Some(text);
                                }
                                // The pipeline's EOS may never come now: push it into the outputs.
                                self.ctx
                                    .graph
                                    .lock()
                                    .unwrap()
                                    .outputs
                                    .iter()
                                    .filter(|o| o.attached)
                                    .for_each(|o| o.push_eos());
                            }
                        } else if self.source_error.is_none() {
                            // Failed after a grace, unless the egress ends cleanly meanwhile.
                            self.source_error = Some((text, Instant::now() + SOURCE_ERROR_GRACE));
                        }
                        false
                    }
                }
            }
            // Pieces added to a playing pipeline (room tracks, outputs) change its latency.
            MessageView::Latency(_) => {
                let _ = self.pipeline().recalculate_latency();
                false
            }
            MessageView::Element(el) => {
                if let (Some(s), Some(src)) = (el.structure(), message.src()) {
                    let mut graph = self.ctx.graph.lock().unwrap();
                    if let Some(i) = graph.output_of(src) {
                        let forwarded = s.get::<gst::Message>("message").ok().filter(|_| s.name() == "GstBinForwarded");
                        match forwarded {
                            Some(inner) if inner.type_() == gst::MessageType::Eos => graph.outputs[i].set_ended(),
                            Some(_) => {}
                            None => graph.outputs[i].on_element_message(s),
                        }
                    }
                }
                // Every output finalized: done, even if some source never sent EOS (webrtcbin's
                // own sinks, for one, never get it).
                ending.is_some() && self.all_outputs_ended()
            }
            _ => false,
        }
    }

    /// One output failed: cut it off; the egress goes on while any other output lives.
    fn fail_output(&mut self, index: usize, error: String, ending: &mut Option<Ending>) -> bool {
        let (field, remaining) = {
            let mut graph = self.ctx.graph.lock().unwrap();
            let output = &mut graph.outputs[index];
            if !output.attached {
                return false;
            }
            let status = output.status.clone();
            if ending.is_none() && self.streams.lock().unwrap().on_failure(&status, &error, &self.media_tx) {
                output.unlink_broken(index, self.media_tx.clone());
                drop(graph);
                self.publish_outputs();
                return false;
            }
            output.status.set_state(OutputState::Failed, Some(error.clone()));
            output.unlink(index, self.media_tx.clone());
            (output.status.field.clone(), graph.live_outputs() + self.streams.lock().unwrap().waiting())
        };
        let info = self.lua.to_value(&json!({ "field": field, "error": error })).unwrap_or(mlua::Value::Nil);
        self.ctx.fire(&self.lua, "output_failed", info);
        if remaining == 0 {
            let reason = format!("all outputs failed; last: {field}: {error}");
            *ending = Some(Ending::now(EgressStatus::Failed, reason.clone(), Some(reason)));
            return true;
        }
        false
    }

    /// Bytes every output has written so far (takes the graph's lock).
    fn bytes_written(&self) -> u64 {
        bytes_of(&self.ctx.graph.lock().unwrap())
    }

    async fn finish(mut self, mut end: Ending) {
        self.streams.lock().unwrap().give_up();
        let pipeline = self.pipeline();
        let stopped = crate::media::stop_all_within(pipeline.upcast_ref(), STOP_TIMEOUT).await;
        self.record.set_media_stopped();
        if !stopped {
            let text =
                format!("the pipeline did not stop within {}s (a streaming thread is stuck)", STOP_TIMEOUT.as_secs());
            tracing::error!(egress = %self.record.id, "{text}; its elements and processes are left running");
            end.status = EgressStatus::Failed;
            end.error.get_or_insert(text);
        }
        {
            let mut graph = self.ctx.graph.lock().unwrap();
            for output in graph.outputs.iter_mut() {
                output.finish(OutputState::Complete);
            }
            // Elements go before the processes they talk to: an X client still connected
            // when its Xvfb dies would make Xlib end this whole process. A pipeline that
            // would not stop keeps both: leaking them is better than ending egret.
            if stopped {
                graph.dispose();
            }
        }
        if stopped {
            self.ctx.release();
        } else {
            self.ctx.leak_resources();
        }
        self.upload_files().await;
        if let Some(task) = self.upload_task.take() {
            task.drain().await;
        }
        self.publish_outputs();
        self.write_manifests().await;
        self.record.set_status(end.status, Some(end.reason.clone()), end.error.clone());
        let info =
            self.lua.to_value(&json!({ "status": end.status, "reason": end.reason })).unwrap_or(mlua::Value::Nil);
        self.ctx.fire(&self.lua, "ended", info);
    }
}
