//! Image output: a JPEG snapshot every `capture_interval` seconds, taken from the raw video.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::uploads::UploadQueue;
use super::{BranchParts, Input, OutputStatus, ghost_sink};
use crate::media::{MediaKind, capsfilter, make, queue};
use crate::request::outputs::{ImageOutput, ImageSuffix};

pub fn build(
    spec: &ImageOutput,
    default_size: (u32, u32),
    prefix: PathBuf,
    status: Arc<OutputStatus>,
    uploads: Option<UploadQueue>,
) -> Result<BranchParts> {
    let bin = gst::Bin::new();
    let q = queue(2, true)?;
    let rate = make("videorate", None)?;
    // Snapshots are sparse: drop frames, never duplicate them.
    rate.set_property("drop-only", true);
    let (width, height) = (spec.width.unwrap_or(default_size.0), spec.height.unwrap_or(default_size.1));
    let caps = capsfilter(&format!(
        "video/x-raw,format=I420,width={width},height={height},pixel-aspect-ratio=1/1,framerate=1/{}",
        spec.capture_interval
    ))?;
    let (scale, convert, jpeg) = (make("videoscale", None)?, make("videoconvert", None)?, make("jpegenc", None)?);
    let sink = gst_app::AppSink::builder().sync(false).build();
    let suffix = spec.suffix;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let index = status.count.load(Ordering::Relaxed);
                let name = match suffix {
                    ImageSuffix::Index => format!("{}_{index:05}.jpeg", prefix.display()),
                    ImageSuffix::Timestamp => {
                        format!("{}_{}.jpeg", prefix.display(), chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
                    }
                    ImageSuffix::Overwrite => format!("{}.jpeg", prefix.display()),
                };
                // Written whole then renamed, so a reader never sees half a JPEG.
                let tmp = format!("{name}.tmp");
                std::fs::write(&tmp, map.as_slice()).and_then(|_| std::fs::rename(&tmp, &name)).map_err(|e| {
                    gst::element_error!(sink, gst::ResourceError::Write, ["cannot write {name}: {e}"]);
                    gst::FlowError::Error
                })?;
                status.count.fetch_add(1, Ordering::Relaxed);
                if let Some(uploads) = &uploads {
                    uploads.push(PathBuf::from(&name), &status, true);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let sink: gst::Element = sink.upcast();
    let chain = [&q, &rate, &scale, &convert, &caps, &jpeg, &sink];
    bin.add_many(chain)?;
    gst::Element::link_many(chain)?;
    let input = ghost_sink(&bin, &q, "video")?;
    let measure = sink.static_pad("sink").expect("appsink sink");
    Ok(BranchParts { bin, inputs: vec![(Input::Raw(MediaKind::Video), input)], measure, handler: None, file: None })
}
