//! Output branches: each output is one bin fed from the encoder's tees, with its own status.
//! A failing branch is cut off alone; the others and the encoder keep running.

pub mod file;
pub mod images;
pub mod segments;
pub mod stream;
pub mod uploads;
pub mod websocket;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::encoder::{Codec, Encoder};
use super::{MediaKind, make, queue, sync_states};
use crate::request::encoding::{AudioCodec, VideoCodec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    Starting,
    Active,
    Complete,
    Failed,
}

/// What an output reports while it runs and after: shared with streaming threads (probes).
pub struct OutputStatus {
    /// The request field it came from: `file_outputs[0]`, `stream_outputs[0].urls[1]`...
    pub field: String,
    pub kind: &'static str,
    /// File path relative to storage, playlist path, URL or image prefix.
    pub target: String,
    pub bytes: AtomicU64,
    /// Segments or images written.
    pub count: AtomicU64,
    first_pts: AtomicU64,
    last_pts: AtomicU64,
    state: Mutex<(OutputState, Option<String>)>,
    upload: Mutex<Option<crate::storage::Upload>>,
}

const NO_PTS: u64 = u64::MAX;

impl OutputStatus {
    pub fn new(field: String, kind: &'static str, target: String) -> Arc<Self> {
        Arc::new(OutputStatus {
            field,
            kind,
            target,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            first_pts: AtomicU64::new(NO_PTS),
            last_pts: AtomicU64::new(0),
            state: Mutex::new((OutputState::Starting, None)),
            upload: Mutex::new(None),
        })
    }

    pub fn state(&self) -> OutputState {
        self.state.lock().unwrap().0
    }

    /// Marks the end; a failure is never overwritten by a later completion.
    pub fn set_state(&self, state: OutputState, error: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.0 != OutputState::Failed {
            *s = (state, error);
        }
    }

    fn see_pts(&self, pts: u64) {
        let _ = self.first_pts.compare_exchange(NO_PTS, pts, Ordering::Relaxed, Ordering::Relaxed);
        self.last_pts.fetch_max(pts.wrapping_add(1), Ordering::Relaxed);
    }

    pub fn set_upload(&self, upload: crate::storage::Upload) {
        *self.upload.lock().unwrap() = Some(upload);
    }

    /// Records an upload result, keeping an earlier failure (its backup) visible.
    pub fn set_upload_unless_failed(&self, upload: crate::storage::Upload) {
        let mut current = self.upload.lock().unwrap();
        if !matches!(*current, Some(crate::storage::Upload::BackedUp { .. })) {
            *current = Some(upload);
        }
    }

    /// The start of the newest buffer seen (ns of running time), 0 before any.
    pub fn last_pts(&self) -> u64 {
        self.last_pts.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Seconds of media that reached this output.
    pub fn duration(&self) -> f64 {
        let (first, last) = (self.first_pts.load(Ordering::Relaxed), self.last_pts.load(Ordering::Relaxed));
        // last_pts holds pts + 1 so that 0 means "none yet".
        if first == NO_PTS || last <= first + 1 { 0.0 } else { (last - 1 - first) as f64 / 1e9 }
    }

    pub fn to_json(&self) -> Value {
        let (state, error) = self.state.lock().unwrap().clone();
        let (location, backup, upload_error) = match self.upload.lock().unwrap().clone() {
            Some(crate::storage::Upload::Uploaded { location }) => (Some(location), None, None),
            Some(crate::storage::Upload::BackedUp { path, error }) => {
                (None, Some(path.to_string_lossy().to_string()), Some(error))
            }
            None => (None, None, None),
        };
        json!({
            "location": location,
            "backup": backup,
            "upload_error": upload_error,
            "field": self.field,
            "kind": self.kind,
            "target": self.target,
            "status": format!("{state:?}").to_lowercase(),
            "error": error,
            "bytes": self.bytes.load(Ordering::Relaxed),
            "duration": (self.duration() * 1000.0).round() / 1000.0,
            "count": self.count.load(Ordering::Relaxed),
        })
    }
}

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
        parts.measure.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, move |_, info| {
            let size = match &info.data {
                Some(gst::PadProbeData::Buffer(b)) => b.size(),
                Some(gst::PadProbeData::BufferList(l)) => l.calculate_size(),
                _ => 0,
            };
            if bytes_status.bytes.fetch_add(size as u64, Ordering::Relaxed) == 0 && size > 0 {
                bytes_status.set_state(OutputState::Active, None);
                let _ = events.send(MediaEvent::Active);
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
            ended,
        })
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn set_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
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

    /// After `unlink` completed: releases tee pads and drops the bin, telling it the stream
    /// ended first (an RTMP server sees a clean unpublish).
    pub fn remove(&mut self, pipeline: &gst::Pipeline) {
        for (tee, src) in self.links.drain(..) {
            tee.release_request_pad(&src);
        }
        self.push_eos();
        let _ = self.bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&self.bin);
    }

    /// Sends EOS straight into the branch, to finalize it when its source is broken.
    pub fn push_eos(&self) {
        for pad in self.bin.sink_pads() {
            pad.send_event(gst::event::Eos::new());
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

/// Makes a ghost sink pad on `bin` for `target`'s sink pad.
pub fn ghost_sink(bin: &gst::Bin, target: &gst::Element, name: &str) -> Result<gst::Pad> {
    let pad = target.static_pad("sink").ok_or_else(|| anyhow::anyhow!("{} has no sink pad", target.name()))?;
    let ghost = gst::GhostPad::builder_with_target(&pad)?.name(name).build();
    bin.add_pad(&ghost)?;
    Ok(ghost.upcast())
}
