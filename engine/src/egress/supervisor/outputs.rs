//! The supervisor's work on its outputs once they exist: stream URLs refused at play time,
//! UpdateStream, uploads of finished files and LiveKit's manifest at the end.

use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::{Ending, Supervisor};
use crate::errors::{Error, ErrorKind};
use crate::media::outputs::OutputState;

/// Every element not held out of the pipeline's state changes is PLAYING.
fn everything_plays(pipeline: &gst::Pipeline) -> bool {
    let held = |e: &gst::Element| {
        std::iter::successors(Some(e.clone()), |e| e.parent().and_then(|p| p.downcast::<gst::Element>().ok()))
            .any(|e| e.is_locked_state())
    };
    pipeline.iterate_recurse().into_iter().flatten().all(|e| e.current_state() == gst::State::Playing || held(&e))
}

impl Supervisor {
    /// A stream sink that could not connect (nothing listening at its URL, a host that does
    /// not resolve, a listener port in use) fails the state change of the whole pipeline; as
    /// LiveKit does, that URL fails and the rest plays. A failed branch is known by its state
    /// or, when nothing says which, by being left unstarted. Its error message, if it posted
    /// one, reaches the supervisor's bus stream like any other and fails that output there.
    /// Returns whether the pipeline plays now; Err when no output is left.
    pub(super) fn drop_unreachable_streams(&mut self, ending: &mut Option<Ending>) -> Result<bool, Error> {
        let pipeline = self.pipeline();
        if everything_plays(&pipeline) {
            // An element posted an ERROR while the state change ran (an RTMP server refusing
            // the connection the moment it was asked): a bin then reports the change failed,
            // though every element reached PLAYING. The error itself is on the bus and fails
            // its own output; setting the state again clears the bins' failure flag, which
            // would otherwise keep them from completing later asynchronous changes.
            tracing::debug!(egress = %self.record.id, "an error was posted while the pipeline started; all of it plays");
            let _ = pipeline.set_state(gst::State::Playing);
            return Ok(true);
        }
        let failed: Vec<(usize, gst::Bin, String)> = {
            let graph = self.ctx.graph.lock().unwrap();
            let streams =
                || graph.outputs.iter().enumerate().filter(|(_, o)| o.attached && o.status.kind.name == "stream");
            let refused: Vec<(usize, gst::Bin, String)> = streams()
                .filter(|(_, o)| o.bin.state(gst::ClockTime::ZERO).0.is_err())
                .map(|(i, o)| (i, o.bin.clone(), "could not connect to the stream URL".to_string()))
                .collect();
            if refused.is_empty() {
                // Nothing said which: a branch the pipeline left unstarted failed (srtsink
                // opening a port in use, rtmp2sink refused at once, roll the whole bin back).
                streams()
                    .filter(|(_, o)| o.bin.current_state() == gst::State::Null)
                    .map(|(i, o)| (i, o.bin.clone(), "could not start the stream URL".to_string()))
                    .collect()
            } else {
                refused
            }
        };
        if failed.is_empty() {
            // For whoever reads the log: how each output stood when nothing could be blamed.
            let graph = self.ctx.graph.lock().unwrap();
            let states: Vec<_> =
                graph.outputs.iter().map(|o| (o.status.field.clone(), o.bin.state(gst::ClockTime::ZERO))).collect();
            tracing::warn!(egress = %self.record.id, ?states, "the pipeline refused to play");
            return Ok(false);
        }
        for (index, bin, why) in failed {
            // Out of the pipeline's state changes from now on; its unlink removes it.
            bin.set_locked_state(true);
            // Each element on its own: the bin's own change to NULL stops at the refused sink
            // and leaves the queue and parser upstream PLAYING, finalized later with their
            // thread still running (a GStreamer-CRITICAL, then an abort of the whole server
            // at the next egress's end: "g_mutex_clear() called on ... locked mutex").
            crate::media::stop_all(&bin);
            self.fail_output(index, why, ending);
        }
        if let Some(end) = ending.take() {
            return Err(Error::new(ErrorKind::RecipeFailed, "", end.reason));
        }
        Ok(pipeline.set_state(gst::State::Playing).is_ok() || everything_plays(&pipeline))
    }

    pub(super) fn update_stream(&self, add: &[String], remove: &[String]) -> crate::errors::Result<()> {
        let mut graph = self.ctx.graph.lock().unwrap();
        if !graph.has_encoder() {
            return Err(Error::new(ErrorKind::FailedPrecondition, "", "the egress is not encoding yet"));
        }
        // Everything is checked before anything changes, with LiveKit's answers.
        let streams: Vec<String> = graph
            .outputs
            .iter()
            .filter(|o| *o.status.kind == crate::media::outputs::stream::KIND)
            .map(|o| o.status.target.clone())
            .collect();
        if streams.is_empty() && !add.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "", "UpdateStream called on non-streaming egress"));
        }
        let is_srt = |url: &str| url.to_ascii_lowercase().starts_with("srt://");
        for (i, url) in add.iter().enumerate() {
            let field = format!("add_output_urls[{i}]");
            let live = graph.stream_output(url).is_some() || self.streams.lock().unwrap().is_waiting(url);
            if live || add[..i].contains(url) {
                return Err(Error::new(ErrorKind::InvalidArgument, field, format!("`{url}` is streamed already")));
            }
            if let Some(first) = streams.first()
                && is_srt(first) != is_srt(url)
            {
                let protocol = if is_srt(first) { "SRT" } else { "RTMP" };
                return Err(Error::new(ErrorKind::InvalidArgument, field, format!("this egress streams {protocol}")));
            }
        }
        for (i, url) in remove.iter().enumerate() {
            if graph.stream_output(url).is_none() && !self.streams.lock().unwrap().is_waiting(url) {
                let field = format!("remove_output_urls[{i}]");
                return Err(Error::new(ErrorKind::NotFound, field, format!("stream {url} not found")));
            }
        }
        let mut removing = Vec::new();
        for url in remove {
            if self.streams.lock().unwrap().remove(url) {
                continue; // it was waiting to reconnect: finished
            }
            removing.extend(graph.stream_output(url));
        }
        for index in removing {
            let output = &mut graph.outputs[index];
            output.status.set_state(OutputState::Complete, None);
            output.unlink(index, self.media_tx.clone());
        }
        for url in add {
            let field = format!("stream_outputs[+{}]", graph.outputs.len());
            graph.add_stream_url(0, &field, url)?;
        }
        Ok(())
    }

    /// Finished files go to S3 (the egress is still `ending` meanwhile); a file whose upload
    /// fails every attempt is kept in the backup directory.
    pub(super) async fn upload_files(&self) {
        let files: Vec<_> = {
            let graph = self.ctx.graph.lock().unwrap();
            graph
                .outputs
                .iter()
                .filter_map(|o| {
                    let uploader = o.uploader.clone().or_else(|| self.uploader.clone())?;
                    o.file().filter(|f| f.exists()).map(|f| (uploader, o.status.clone(), f.clone()))
                })
                .collect()
        };
        for (uploader, status, file) in files {
            status.set_upload(uploader.upload(&file, false).await);
        }
    }

    /// LiveKit's manifest beside each file, segment and image output that wants one
    /// (`super::manifest`), uploaded where that output uploads.
    pub(super) async fn write_manifests(&self) {
        use crate::media::outputs::BuildTarget;
        let (storage, publisher, places) = {
            let graph = self.ctx.graph.lock().unwrap();
            let mut places: Vec<(std::path::PathBuf, Option<Arc<crate::storage::Uploader>>)> = Vec::new();
            for o in &graph.outputs {
                let wanted = ["file", "segments", "images"].contains(&o.status.kind.name)
                    && !crate::egress::manifest::disabled(&self.record.params, &o.status.field);
                let dir =
                    std::path::Path::new(&o.status.target).parent().unwrap_or(std::path::Path::new("")).to_path_buf();
                if wanted && !places.iter().any(|(d, _)| *d == dir) {
                    places.push((dir, o.uploader.clone().or_else(|| self.uploader.clone())));
                }
            }
            let publisher = graph.template.get("publisher_identity").map(str::to_string);
            (graph.storage().to_path_buf(), publisher, places)
        };
        if places.is_empty() {
            return;
        }
        let text =
            crate::egress::manifest::manifest(&self.record.snapshot(), &storage, publisher.as_deref()).to_string();
        let mut first = None;
        for (dir, uploader) in places {
            let path = storage.join(&dir).join(format!("{}.json", self.record.id));
            if let Err(e) = std::fs::write(&path, &text) {
                tracing::warn!(egress = %self.record.id, path = %path.display(), "manifest not written: {e}");
                continue;
            }
            let location = match uploader {
                Some(uploader) => match uploader.upload(&path, true).await {
                    crate::storage::Upload::Uploaded { location } => location,
                    crate::storage::Upload::BackedUp { path, .. } => path.to_string_lossy().to_string(),
                },
                None => path.to_string_lossy().to_string(),
            };
            first.get_or_insert(location);
        }
        if let Some(location) = first {
            self.record.set_manifest_location(location);
        }
    }
}
