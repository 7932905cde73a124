//! Output branches: each output is one bin fed from the encoder's tees, with its own status.
//! A failing branch is cut off alone; the others and the encoder keep running.
//!
//! Each kind of output is one module (its request spec, validation, build and LiveKit
//! result) exposing an [`OutputKind`]; [`KINDS`] registers them. Adding a kind is one module
//! plus one line there.

pub mod file;
mod hls_recovery;
pub mod images;
mod mp4_boxes;
mod mp4_repair;
pub mod segments;
mod status;
pub mod stream;
pub mod uploads;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use livekit_protocol as lk;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::encoder::{Codec, Encoder};
use super::{MediaKind, make, queue, sync_states};
use crate::request::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use crate::request::fields::{FieldError, FieldResult, Obj};
use crate::request::filepath::Template;
use crate::storage::{UploadConfig, Uploader};
pub use status::{OutputSnapshot, OutputState, OutputStatus};
use uploads::UploadQueue;

/// One kind of output, as registered in [`KINDS`].
pub struct OutputKind {
    /// Its name in egret's API (`"file"`, `"segments"`...).
    pub name: &'static str,
    /// The request fields it reads (`file_outputs`): only requests of recipes that take
    /// outputs may carry them.
    pub request_fields: &'static [&'static str],
    /// Its key in a StartEgress (v2) `outputs[]` entry (`file`), if LiveKit has one.
    pub unified_key: Option<&'static str>,
    /// Reads this kind's outputs from a request, each error naming its field.
    pub parse: fn(&mut Obj, &EncodeSettings) -> FieldResult<Vec<Output>>,
    /// Adds what one output of this kind reached to LiveKit's EgressInfo.
    pub livekit_result: fn(&OutputSnapshot, &ResultContext, &mut lk::EgressInfo),
    /// Finishes what an output left on disk when egret died under it (read back from the
    /// store at the next start): sizes from disk, an HLS playlist closed.
    pub recover: fn(&mut OutputSnapshot, &Path),
}

/// An interrupted output's bytes as they are on disk (a file; nothing for a stream).
/// Repairs one MP4 a crash cut off (`egret repair`): the seconds of media it holds, or
/// `None` when it needed nothing.
pub fn repair_mp4(path: &Path) -> anyhow::Result<Option<f64>> {
    Ok(mp4_repair::repair(path)?.map(|r| r.duration))
}

/// A crash-safe MP4 is also rewritten so that players read it (see `mp4_repair`).
pub fn recover_file(output: &mut OutputSnapshot, storage: &Path) {
    let path = storage.join(&output.target);
    let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    if is_file && output.target.to_ascii_lowercase().ends_with(".mp4") {
        match mp4_repair::repair(&path) {
            Ok(Some(repaired)) => {
                tracing::info!(path = %path.display(), duration = repaired.duration, "interrupted MP4 repaired");
                output.duration = (repaired.duration * 1000.0).round() / 1000.0;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %path.display(), "interrupted MP4 not repaired: {e:#}"),
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        output.bytes = meta.len();
    }
}

/// An interrupted stream left nothing behind to finish.
pub fn recover_nothing(_: &mut OutputSnapshot, _: &Path) {}

impl PartialEq for OutputKind {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl std::fmt::Debug for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Serialize for OutputKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// An output kind read back by its name (stored egress records).
fn kind_by_name<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<&'static OutputKind, D::Error> {
    let name = String::deserialize(d)?;
    KINDS
        .iter()
        .copied()
        .find(|k| k.name == name)
        .ok_or_else(|| serde::de::Error::custom(format!("no output kind {name}")))
}

/// Every output kind, in the order a request's outputs are built.
pub static KINDS: &[&OutputKind] = &[&file::KIND, &segments::KIND, &stream::KIND, &images::KIND, &websocket::KIND];

/// Every request field that names outputs.
pub fn request_fields() -> impl Iterator<Item = &'static str> {
    KINDS.iter().flat_map(|k| k.request_fields.iter().copied())
}

/// A parsed output of some kind: it knows how to build itself into a pipeline.
pub trait OutputSpec: std::fmt::Debug + Send + Sync {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()>;
}

/// One output of a request, with the request field it came from (for errors and status).
#[derive(Debug)]
pub struct Output {
    pub field: String,
    pub spec: Box<dyn OutputSpec>,
}

impl Output {
    pub fn new(field: String, spec: impl OutputSpec + 'static) -> Output {
        Output { field, spec: Box::new(spec) }
    }
}

/// Reads every output of a request (fields of [`request_fields`]). At least one is required.
pub fn parse_outputs(request: &Value, settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut obj = Obj::new(request, "")?;
    let mut outputs = Vec::new();
    for kind in KINDS {
        outputs.extend((kind.parse)(&mut obj, settings)?);
    }
    if outputs.is_empty() {
        let names: Vec<&str> = request_fields().collect();
        return Err(FieldError::new("file_outputs", format!("no output: give at least one of {}", names.join(", "))));
    }
    Ok(outputs)
}

/// What an output needs of the pipeline it is built into (the egress's graph).
pub trait BuildTarget {
    fn storage(&self) -> &Path;
    fn template(&self) -> &Template;
    fn encoder(&self, index: usize) -> &Encoder;
    fn crash_safe_mp4(&self) -> bool;
    /// Holds a path this egress will write for as long as its pipeline lives; refused when it
    /// exists or another egress writes there (see `filepath::claim`).
    fn claim(&mut self, path: &Path, series: bool, field: &str) -> FieldResult<()>;
    /// Adds a built branch to the pipeline, linked to the encoder's tees.
    fn attach(
        &mut self,
        encoder: usize,
        parts: BranchParts,
        status: Arc<OutputStatus>,
        uploader: Option<Arc<Uploader>>,
    ) -> Result<()>;
    /// An output's own upload target, from its request `s3` fields.
    fn uploader(&self, target: &Option<UploadConfig>) -> Option<Arc<Uploader>>;
    /// The live upload queue bound to an output's target (its own, else `[storage.s3]`).
    fn queue_for(&self, target: &Option<UploadConfig>) -> Option<UploadQueue>;
    /// A path under storage as the API shows it.
    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.storage()).unwrap_or(path).to_string_lossy().to_string()
    }
}

/// What every output's LiveKit result shares: the egress's times (ns) and storage dir.
pub struct ResultContext<'a> {
    pub started_at: i64,
    pub ended_at: i64,
    pub storage: &'a Path,
}

impl ResultContext<'_> {
    /// Where an output ended up: its upload, its backup, else its local path.
    pub fn location(&self, output: &OutputSnapshot) -> String {
        output
            .location
            .clone()
            .or(output.backup.clone())
            .unwrap_or_else(|| self.storage.join(&output.target).to_string_lossy().to_string())
    }
}

/// How long a reconnected SRT branch carries bytes before its connection counts as made
/// (srtsink gives up a handshake after about 3 s).
const SRT_PROOF: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a branch takes its media from.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    Encoded(Codec),
    Raw(MediaKind),
}

/// Hooks for outputs that do more than write a stream (HLS playlists).
pub trait BranchHandler: Send {
    fn on_element_message(&mut self, _message: &gst::StructureRef, _status: &OutputStatus) {}
    fn on_finish(&mut self, _status: &OutputStatus) {}
}

/// What an output builder returns: a bin with one ghost sink pad per input.
pub struct BranchParts {
    pub bin: gst::Bin,
    pub inputs: Vec<(Input, gst::Pad)>,
    /// Buffers crossing this pad count as written bytes; the first marks the output active.
    pub measure: gst::Pad,
    pub handler: Option<Box<dyn BranchHandler>>,
    /// A file whose size on disk is the output's size (files only).
    pub file: Option<PathBuf>,
}

/// Events from the output branches' streaming threads to the egress supervisor: the first
/// byte written, cut off, finalized.
#[derive(Debug)]
pub enum MediaEvent {
    Active,
    Unlinked(usize),
    /// A failed stream URL's wait is over: connect it again.
    Reconnect(String),
}

pub struct OutputBranch {
    pub status: Arc<OutputStatus>,
    pub bin: gst::Bin,
    links: Vec<(gst::Element, gst::Pad)>,
    handler: Option<Box<dyn BranchHandler>>,
    file: Option<PathBuf>,
    /// The output's own upload target (its request `s3`), if any.
    pub uploader: Option<Arc<crate::storage::Uploader>>,
    pub attached: bool,
    /// Its connection broke and it is dropped without EOS (see `remove`).
    broken: bool,
    /// EOS reached the sink (set from its streaming thread).
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl OutputBranch {
    /// Adds the bin to the pipeline and links it to the tees it needs.
    pub fn attach(
        pipeline: &gst::Pipeline,
        encoder: &mut Encoder,
        parts: BranchParts,
        status: Arc<OutputStatus>,
        index: usize,
        events: UnboundedSender<MediaEvent>,
    ) -> Result<OutputBranch> {
        let mut tees = Vec::new();
        for (input, _) in &parts.inputs {
            tees.push(match input {
                Input::Encoded(codec) => encoder.encoded_tee(pipeline, *codec)?,
                Input::Raw(kind) => encoder
                    .raw_tee(*kind)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("this egress has no {}", kind.name()))?,
            });
        }
        parts.bin.set_property("name", format!("out{index}"));
        pipeline.add(&parts.bin)?;
        // Running before it is linked: a tee pushing into a stopped branch gets FLUSHING back
        // and would stop the encoder with it (outputs added to a playing pipeline).
        sync_states(&[parts.bin.upcast_ref()]);
        let mut links = Vec::new();
        for ((_, ghost), tee) in parts.inputs.iter().zip(tees) {
            let pts_status = status.clone();
            ghost.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                if let Some(running) = info.buffer().and_then(|b| b.pts()).and_then(|pts| running_time(pad, pts)) {
                    pts_status.see_pts(running.nseconds());
                }
                gst::PadProbeReturn::Ok
            });
            let src = tee.request_pad_simple("src_%u").expect("tee src pad");
            src.link(ghost)?;
            links.push((tee, src));
        }
        // The bin tells when its sink got EOS (a bin keeps that to itself otherwise): then
        // this output is finalized, whatever the sources do.
        parts.bin.set_property("message-forward", true);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bytes_status = status.clone();
        // Once the first bytes are out (a network sink has connected), ask for a keyframe
        // again: the one asked for at attach may have been dropped by a leaky queue while
        // the connection was made, and the next would be a whole GOP away.
        let key_pads: Vec<gst::Pad> = links.iter().map(|(_, src)| src.clone()).collect();
        // Per branch: a stream URL reconnected after a failure is a new branch on the same status.
        let first_bytes = std::sync::atomic::AtomicBool::new(false);
        // srtsink takes bytes before its handshake: a reconnected SRT URL keeps showing its
        // outage until its new connection has carried bytes for longer than a failed
        // handshake takes.
        let unproven = std::sync::atomic::AtomicBool::new(false);
        let first_bytes_at = std::sync::OnceLock::new();
        let is_srt = status.target.to_ascii_lowercase().starts_with("srt://");
        parts.measure.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, move |_, info| {
            let size = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.size(),
                Some(gst::PadProbeData::BufferList(l)) => l.calculate_size(),
                _ => 0,
            };
            bytes_status.bytes.fetch_add(size as u64, Ordering::Relaxed);
            if unproven.load(Ordering::Relaxed)
                && first_bytes_at.get().is_some_and(|t: &std::time::Instant| t.elapsed() >= SRT_PROOF)
            {
                unproven.store(false, Ordering::Relaxed);
                bytes_status.live_again(false);
            }
            if size > 0 && !first_bytes.swap(true, Ordering::Relaxed) {
                let retried = is_srt && bytes_status.retries() > 0;
                let _ = first_bytes_at.set(std::time::Instant::now());
                unproven.store(retried, Ordering::Relaxed);
                bytes_status.live_again(retried);
                let _ = events.send(MediaEvent::Active);
                for pad in &key_pads {
                    pad.send_event(gstreamer_video::UpstreamForceKeyUnitEvent::builder().all_headers(true).build());
                }
            }
            gst::PadProbeReturn::Ok
        });
        // A branch joining a running encoder starts at the next keyframe: ask for one now.
        for (_, src) in &links {
            let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder().all_headers(true).build();
            src.send_event(event);
        }
        Ok(OutputBranch {
            status,
            bin: parts.bin,
            links,
            handler: parts.handler,
            file: parts.file,
            uploader: None,
            attached: true,
            broken: false,
            ended,
        })
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn set_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Like `unlink`, for a branch whose connection broke (a stream URL that will reconnect):
    /// it is dropped without EOS, which would only reach the pipeline (as the end of all
    /// media, when it was the last output) and never its server.
    pub fn unlink_broken(&mut self, index: usize, events: UnboundedSender<MediaEvent>) {
        self.broken = true;
        self.unlink(index, events);
    }

    /// Cuts the branch off its tees once they are idle; the supervisor then removes it.
    pub fn unlink(&mut self, index: usize, events: UnboundedSender<MediaEvent>) {
        if !self.attached {
            return;
        }
        self.attached = false;
        let remaining = Arc::new(AtomicU64::new(self.links.len() as u64));
        for (_, src) in &self.links {
            let (remaining, events) = (remaining.clone(), events.clone());
            src.add_probe(gst::PadProbeType::IDLE, move |pad, _| {
                if let Some(peer) = pad.peer() {
                    let _ = pad.unlink(&peer);
                }
                if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                    let _ = events.send(MediaEvent::Unlinked(index));
                }
                gst::PadProbeReturn::Remove
            });
        }
    }

    /// Unlinked from the encoder but not yet removed from the pipeline.
    pub fn unlinking(&self) -> bool {
        !self.attached && !self.links.is_empty()
    }

    /// After `unlink` completed: releases tee pads and drops the bin, telling it the stream
    /// ended first (an RTMP server sees a clean unpublish).
    pub fn remove(&mut self, pipeline: &gst::Pipeline) {
        for (tee, src) in self.links.drain(..) {
            tee.release_request_pad(&src);
        }
        if !self.broken {
            // Unlinked: no streaming thread holds these pads, so this EOS goes through at once
            // and before the bin stops.
            for pad in self.bin.sink_pads() {
                pad.send_event(gst::event::Eos::new());
            }
        }
        crate::media::stop_all(self.bin.upcast_ref());
        let _ = pipeline.remove(&self.bin);
    }

    /// Sends EOS straight into the branch, to finalize it when its source is broken (without
    /// waiting: the caller's finalize deadline covers an EOS that never gets through).
    pub fn push_eos(&self) {
        for pad in self.bin.sink_pads() {
            super::send_eos_detached(pad);
        }
    }

    /// The file this output wrote, if it writes one.
    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    pub fn on_element_message(&mut self, message: &gst::StructureRef) {
        if let Some(h) = self.handler.as_mut() {
            h.on_element_message(message, &self.status);
        }
    }

    /// The egress ended: final sizes, playlists closed, state settled.
    pub fn finish(&mut self, state: OutputState) {
        if let Some(path) = &self.file
            && let Ok(meta) = std::fs::metadata(path)
        {
            self.status.bytes.store(meta.len(), Ordering::Relaxed);
        }
        if let Some(h) = self.handler.as_mut() {
            h.on_finish(&self.status);
        }
        let state = if self.status.state() == OutputState::Starting && state == OutputState::Complete {
            OutputState::Failed
        } else {
            state
        };
        let error = (state == OutputState::Failed).then(|| "no media reached this output".to_string());
        self.status.set_state(state, error);
    }
}

/// A buffer time as running time: encoders shift PTS (x264 by 1000 h), running time is
/// what every output and splitmuxsink agree on.
fn running_time(pad: &gst::Pad, pts: gst::ClockTime) -> Option<gst::ClockTime> {
    let event = pad.sticky_event::<gst::event::Segment>(0)?;
    event.segment().downcast_ref::<gst::ClockTime>()?.to_running_time(pts)
}

/// One input of a muxing branch: queue → parser (where the codec needs one) → the muxer's
/// `template` pad, exposed as a ghost pad named after its kind. Network branches use leaky
/// queues so a stalled server drops its own data instead of blocking the shared encoder.
pub fn mux_input(
    bin: &gst::Bin,
    mux: &gst::Element,
    codec: Codec,
    template: &str,
    leaky: bool,
) -> Result<(Input, gst::Pad)> {
    let q = if leaky { queue(2, true)? } else { queue(3, false)? };
    let mut chain = vec![q.clone()];
    match codec {
        Codec::Video(VideoCodec::H264) => chain.push(make("h264parse", None)?),
        Codec::Audio(AudioCodec::Aac) => chain.push(make("aacparse", None)?),
        _ => {}
    }
    bin.add_many(&chain)?;
    gst::Element::link_many(&chain)?;
    let mux_pad =
        mux.request_pad_simple(template).ok_or_else(|| anyhow::anyhow!("{} refused a {template} pad", mux.name()))?;
    chain.last().expect("non-empty chain").static_pad("src").expect("src").link(&mux_pad)?;
    let name = match codec {
        Codec::Video(_) => "video",
        Codec::Audio(_) => "audio",
    };
    Ok((Input::Encoded(codec), ghost_sink(bin, &q, name)?))
}

/// ffmpeg's AAC encoder (avenc_aac) starts every stream with 1024 samples of priming, and no
/// container written here says so (mp4mux writes no edit for it; TS and FLV cannot): players
/// play the priming, so every sound came 21.3 ms (at 48 kHz) after its picture. The video of
/// an output with AAC sound is held back as much instead, which no timestamp can underflow.
pub fn align_video_to_aac(inputs: &[(Input, gst::Pad)], audio_rate: u32) {
    const AAC_PRIMING_SAMPLES: u64 = 1024;
    if !inputs.iter().any(|(i, _)| matches!(i, Input::Encoded(Codec::Audio(AudioCodec::Aac)))) {
        return;
    }
    let priming = AAC_PRIMING_SAMPLES * 1_000_000_000 / audio_rate.max(1) as u64;
    for (input, pad) in inputs {
        if matches!(input, Input::Encoded(Codec::Video(_))) {
            pad.set_offset(priming as i64);
        }
    }
}

/// Makes a ghost sink pad on `bin` for `target`'s sink pad.
pub fn ghost_sink(bin: &gst::Bin, target: &gst::Element, name: &str) -> Result<gst::Pad> {
    let pad = target.static_pad("sink").ok_or_else(|| anyhow::anyhow!("{} has no sink pad", target.name()))?;
    let ghost = gst::GhostPad::builder_with_target(&pad)?.name(name).build();
    bin.add_pad(&ghost)?;
    Ok(ghost.upcast())
}

#[cfg(test)]
mod tests;
