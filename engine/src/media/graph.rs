//! One egress's pipeline: its sources, encoders and output branches, built on request of the
//! recipe and changed while it runs (outputs added, failed ones cut off).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::MediaPad;
use super::encoder::Encoder;
use super::outputs::uploads::UploadQueue;
use super::outputs::{BranchParts, BuildTarget, MediaEvent, Output, OutputBranch, OutputStatus, stream};
use super::testsrc::{self, TestSourceOptions};
use crate::request::FieldResult;
use crate::request::encoding::EncodeSettings;
use crate::request::filepath::{self, PathClaim, Template};
use crate::storage::{UploadConfig, Uploader};

pub struct Graph {
    pub pipeline: gst::Pipeline,
    storage: PathBuf,
    crash_safe_mp4: bool,
    pub template: Template,
    encoders: Vec<Encoder>,
    /// Always-on inputs that room tracks are attached to (`egress:slot`).
    pub slots: Vec<super::slot::Slot>,
    pub outputs: Vec<OutputBranch>,
    events: UnboundedSender<MediaEvent>,
    /// Live pieces (segments, playlists, snapshots) go up as they are written.
    uploads: Option<UploadQueue>,
    backup_dir: PathBuf,
    /// Paths this egress writes, held from other egresses until the graph is dropped.
    claims: Vec<PathClaim>,
}

impl Graph {
    /// The first encoder's raw picture (see `media::thumbnail`); None for copies and sound.
    pub fn raw_video_pad(&self) -> Option<gst::Pad> {
        self.encoders.iter().find_map(|e| e.raw_tee(super::MediaKind::Video)).and_then(|tee| tee.static_pad("sink"))
    }

    pub fn new(
        name: &str,
        storage: &Path,
        crash_safe_mp4: bool,
        template: Template,
        events: UnboundedSender<MediaEvent>,
        uploads: Option<UploadQueue>,
        backup_dir: &Path,
    ) -> Self {
        Graph {
            pipeline: gst::Pipeline::with_name(name),
            storage: storage.to_path_buf(),
            crash_safe_mp4,
            template,
            encoders: Vec::new(),
            slots: Vec::new(),
            outputs: Vec::new(),
            events,
            uploads,
            backup_dir: backup_dir.to_path_buf(),
            claims: Vec::new(),
        }
    }

    pub fn add_testsrc(&mut self, opts: &TestSourceOptions) -> Result<Vec<MediaPad>> {
        testsrc::build(&self.pipeline, opts)
    }

    /// An encoder over the given raw pads; returns its index for `add_outputs`.
    pub fn add_encoder(&mut self, settings: EncodeSettings, inputs: &[MediaPad]) -> Result<usize> {
        self.encoders.push(Encoder::new(&self.pipeline, settings, inputs)?);
        Ok(self.encoders.len() - 1)
    }

    /// Streams copied without transcoding (room tracks); returns the index for `add_outputs`.
    pub fn add_copy(
        &mut self,
        settings: EncodeSettings,
        inputs: &[(super::encoder::Codec, gst::Pad)],
    ) -> Result<usize> {
        self.encoders.push(Encoder::copy(&self.pipeline, settings, inputs)?);
        Ok(self.encoders.len() - 1)
    }

    pub fn encoder_settings(&self, encoder: usize) -> EncodeSettings {
        self.encoders[encoder].settings.clone()
    }

    /// Builds and links every output; errors name the request field of the output.
    pub fn add_outputs(&mut self, encoder: usize, outputs: &[Output]) -> FieldResult<()> {
        for output in outputs {
            output.spec.build(&output.field, self, encoder)?;
        }
        Ok(())
    }

    /// One more stream URL on a running egress (UpdateStream).
    pub fn add_stream_url(&mut self, encoder: usize, field: &str, url: &str) -> FieldResult<()> {
        stream::add_url(self, encoder, field, url)
    }

    /// A new connection for a stream URL that failed (same status, a new branch).
    pub fn reconnect_stream(&mut self, encoder: usize, status: Arc<OutputStatus>) -> FieldResult<()> {
        stream::reconnect(self, encoder, status)
    }

    /// The output whose bin holds `object` (bus messages come from elements inside).
    pub fn output_of(&self, object: &gst::Object) -> Option<usize> {
        let mut current = Some(object.clone());
        while let Some(obj) = current {
            if let Some(i) = self.outputs.iter().position(|b| b.bin.upcast_ref::<gst::Object>() == &obj) {
                return Some(i);
            }
            current = obj.parent();
        }
        None
    }

    /// Removes every element so each is finalized now (closing its connections), whoever
    /// still holds a pad of it.
    pub fn dispose(&mut self) {
        // An output taken out of the pipeline (failed, removed by UpdateStream, waiting to
        // reconnect) is not reached by the pipeline's stop: one left PLAYING (a refused RTMP
        // branch) was finalized with its queue's thread running, and egret aborted at the
        // next egress's end ("g_mutex_clear() called on ... locked mutex").
        for output in &self.outputs {
            super::stop_all(&output.bin);
        }
        self.encoders.clear();
        self.slots.clear();
        for child in self.pipeline.children() {
            let _ = self.pipeline.remove(&child);
        }
    }

    pub fn has_encoder(&self) -> bool {
        !self.encoders.is_empty()
    }

    /// The live stream output sending to `url`.
    pub fn stream_output(&self, url: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.attached && *o.status.kind == stream::KIND && o.status.target == url)
    }

    /// Outputs still linked and not failed.
    pub fn live_outputs(&self) -> usize {
        self.outputs.iter().filter(|o| o.attached).count()
    }
}

impl BuildTarget for Graph {
    fn storage(&self) -> &Path {
        &self.storage
    }

    fn template(&self) -> &Template {
        &self.template
    }

    fn claim(&mut self, path: &Path, series: bool, field: &str) -> FieldResult<()> {
        self.claims.push(filepath::claim(path, series, field)?);
        Ok(())
    }

    fn encoder(&self, index: usize) -> &Encoder {
        &self.encoders[index]
    }

    fn crash_safe_mp4(&self) -> bool {
        self.crash_safe_mp4
    }

    fn attach(
        &mut self,
        encoder: usize,
        parts: BranchParts,
        status: Arc<OutputStatus>,
        uploader: Option<Arc<Uploader>>,
    ) -> Result<()> {
        let index = self.outputs.len();
        let mut branch = OutputBranch::attach(
            &self.pipeline,
            &mut self.encoders[encoder],
            parts,
            status,
            index,
            self.events.clone(),
        )?;
        branch.uploader = uploader;
        self.outputs.push(branch);
        Ok(())
    }

    fn uploader(&self, target: &Option<UploadConfig>) -> Option<Arc<Uploader>> {
        target.clone().map(|c| Arc::new(Uploader::new(c, &self.storage, &self.backup_dir)))
    }

    fn queue_for(&self, target: &Option<UploadConfig>) -> Option<UploadQueue> {
        self.uploads.as_ref().and_then(|q| q.for_output(self.uploader(target)))
    }
}
