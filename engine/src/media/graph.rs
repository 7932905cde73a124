//! One egress's pipeline: its sources, encoders and output branches, built on request of the
//! recipe and changed while it runs (outputs added, failed ones cut off).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use super::encoder::Encoder;
use super::outputs::uploads::UploadQueue;
use super::outputs::{MediaEvent, OutputBranch, OutputStatus, file, images, segments, stream, websocket};
use super::testsrc::{self, TestSourceOptions};
use super::{MediaKind, MediaPad};
use crate::request::encoding::EncodeSettings;
use crate::request::filepath::{Template, check_relative, inside, resolve_file};
use crate::request::outputs::{Output, OutputSpec, SegmentOutput};
use crate::request::{FieldError, FieldResult};

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
}

impl Graph {
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
            self.add_output(encoder, output)?;
        }
        Ok(())
    }

    /// An output's own upload target, from its request `s3` fields.
    fn uploader(&self, target: &Option<crate::storage::S3Config>) -> Option<Arc<crate::storage::Uploader>> {
        target.clone().map(|c| Arc::new(crate::storage::Uploader::new(c, &self.storage, &self.backup_dir)))
    }

    /// The upload queue bound to an output's target (its own, else `[storage.s3]`).
    fn queue_for(&self, target: &Option<crate::storage::S3Config>) -> Option<UploadQueue> {
        self.uploads.as_ref().and_then(|q| q.for_output(self.uploader(target)))
    }

    fn add_output(&mut self, encoder: usize, output: &Output) -> FieldResult<()> {
        let field = output.field.as_str();
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        match &output.spec {
            OutputSpec::File(f) => {
                let path = resolve_file(
                    &self.storage,
                    &self.template,
                    &f.filepath,
                    f.file_type.extension(),
                    &format!("{field}.filepath"),
                )?;
                let parts =
                    file::build(&self.encoders[encoder], f.file_type, &path, self.crash_safe_mp4).map_err(fail)?;
                self.attach(encoder, parts, OutputStatus::new(field.into(), "file", self.relative(&path)))
                    .map_err(fail)?;
                let own = self.uploader(&f.upload);
                self.outputs.last_mut().expect("just attached").uploader = own;
                Ok(())
            }
            OutputSpec::Segments(s) => {
                let paths = self.segment_paths(s, field)?;
                let status = OutputStatus::new(field.into(), "segments", self.relative(&paths.playlist));
                let parts = segments::build(&self.encoders[encoder], paths, status.clone(), self.queue_for(&s.upload))
                    .map_err(fail)?;
                self.attach(encoder, parts, status).map_err(fail)
            }
            OutputSpec::Stream(s) => {
                for (i, url) in s.urls.iter().enumerate() {
                    self.add_stream_url(encoder, &format!("{field}.urls[{i}]"), url)?;
                }
                Ok(())
            }
            OutputSpec::Websocket(url) => {
                let parts = websocket::build(&self.encoders[encoder], url).map_err(fail)?;
                self.attach(encoder, parts, OutputStatus::new(field.into(), "websocket", url.clone())).map_err(fail)
            }
            OutputSpec::Images(spec) => {
                let enc = &self.encoders[encoder];
                if !enc.has(MediaKind::Video) {
                    return Err(FieldError::new(field, "image outputs need video, and this egress has none"));
                }
                let raw = if spec.filename_prefix.is_empty() {
                    self.template.default_stem()
                } else {
                    self.template.expand(&spec.filename_prefix)
                };
                let prefix = inside(&self.storage, &raw, &format!("{field}.filename_prefix"))?;
                let status = OutputStatus::new(field.into(), "images", self.relative(&prefix));
                let size = (enc.settings.width, enc.settings.height);
                let parts =
                    images::build(spec, size, prefix, status.clone(), self.queue_for(&spec.upload)).map_err(fail)?;
                self.attach(encoder, parts, status).map_err(fail)
            }
        }
    }

    /// One RTMP URL; also used to add a URL to a running egress.
    pub fn add_stream_url(&mut self, encoder: usize, field: &str, url: &str) -> FieldResult<()> {
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        let parts = stream::build(&self.encoders[encoder], url).map_err(fail)?;
        self.attach(encoder, parts, OutputStatus::new(field.into(), "stream", url.into())).map_err(fail)
    }

    fn attach(&mut self, encoder: usize, parts: super::outputs::BranchParts, status: Arc<OutputStatus>) -> Result<()> {
        let index = self.outputs.len();
        let branch = OutputBranch::attach(
            &self.pipeline,
            &mut self.encoders[encoder],
            parts,
            status,
            index,
            self.events.clone(),
        )?;
        self.outputs.push(branch);
        Ok(())
    }

    /// LiveKit's naming rules: playlist and prefix default to each other, then to
    /// `{room_name}-{time}`; the live playlist sits beside the main one.
    fn segment_paths(&self, s: &SegmentOutput, field: &str) -> FieldResult<segments::SegmentPaths> {
        let strip = |name: String| name.strip_suffix(".m3u8").map(str::to_string).unwrap_or(name);
        let mut playlist = strip(self.template.expand(&s.playlist_name));
        let mut prefix = self.template.expand(&s.filename_prefix);
        if playlist.is_empty() || playlist.ends_with('/') {
            let stem = if prefix.is_empty() { self.template.default_stem() } else { file_name(&prefix) };
            playlist.push_str(&stem);
        }
        if prefix.is_empty() {
            prefix = playlist.clone();
        } else if !prefix.contains('/')
            && let Some((dir, _)) = playlist.rsplit_once('/')
        {
            // A bare prefix lives beside the playlist.
            prefix = format!("{dir}/{prefix}");
        }
        let playlist_path = inside(&self.storage, &format!("{playlist}.m3u8"), &format!("{field}.playlist_name"))?;
        let live_playlist = match &s.live_playlist_name {
            Some(live) => {
                let live = strip(self.template.expand(live));
                check_relative(&live, &format!("{field}.live_playlist_name"))?;
                let path = playlist_path.with_file_name(format!("{live}.m3u8"));
                if path == playlist_path {
                    return Err(FieldError::new(
                        format!("{field}.live_playlist_name"),
                        "must differ from playlist_name",
                    ));
                }
                Some(path)
            }
            None => None,
        };
        Ok(segments::SegmentPaths {
            playlist: playlist_path,
            live_playlist,
            prefix: inside(&self.storage, &prefix, &format!("{field}.filename_prefix"))?,
            segment_duration: s.segment_duration,
            timestamp_suffix: s.timestamp_suffix,
        })
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.storage).unwrap_or(path).to_string_lossy().to_string()
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
        self.outputs.iter().position(|o| o.attached && o.status.kind == "stream" && o.status.target == url)
    }

    /// Outputs still linked and not failed.
    pub fn live_outputs(&self) -> usize {
        self.outputs.iter().filter(|o| o.attached).count()
    }
}

fn file_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}
