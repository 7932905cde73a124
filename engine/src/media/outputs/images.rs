//! Image output (`image_outputs`, LiveKit's ImageOutput): a JPEG snapshot every
//! `capture_interval` seconds, taken from the raw video.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use livekit_protocol as lk;
use serde_json::Value;

use super::uploads::UploadQueue;
use super::{BranchParts, BuildTarget, Input, Output, OutputKind, OutputSnapshot, OutputSpec, OutputStatus};
use super::{ResultContext, ghost_sink};
use crate::media::{MediaKind, capsfilter, make, queue};
use crate::request::encoding::EncodeSettings;
use crate::request::fields::{FieldError, FieldResult, Obj};
use crate::request::filepath::{check_relative, inside};
use crate::request::outputs::upload_target;
use crate::storage::UploadConfig;

pub static KIND: OutputKind = OutputKind {
    name: "images",
    request_fields: &["image_outputs"],
    unified_key: Some("images"),
    parse,
    livekit_result,
    recover: super::recover_nothing,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSuffix {
    Index,
    Timestamp,
    Overwrite,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageOutput {
    pub capture_interval: u32,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub filename_prefix: String,
    pub suffix: ImageSuffix,
    pub upload: Option<UploadConfig>,
}

fn parse(request: &mut Obj, _settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut outputs = Vec::new();
    for (i, v) in request.array("image_outputs")?.iter().enumerate() {
        let field = format!("image_outputs[{i}]");
        outputs.push(Output::new(field.clone(), parse_one(v, &field)?));
    }
    Ok(outputs)
}

fn parse_one(v: &Value, field: &str) -> FieldResult<ImageOutput> {
    let mut o = Obj::new(v, field)?;
    let capture_interval = match o.uint("capture_interval")? {
        None | Some(0) => {
            return Err(FieldError::new(o.field_path("capture_interval"), "required: seconds between snapshots"));
        }
        Some(n) => n,
    };
    let width = o.uint("width")?.filter(|w| *w > 0);
    let height = o.uint("height")?.filter(|h| *h > 0);
    for (key, value) in [("width", width), ("height", height)] {
        if let Some(n) = value
            && (n % 2 != 0 || !(16..=3840).contains(&n))
        {
            return Err(FieldError::new(o.field_path(key), "must be even, within 16..=3840"));
        }
    }
    let filename_prefix = o.string("filename_prefix")?.unwrap_or_default();
    check_relative(&filename_prefix, &o.field_path("filename_prefix"))?;
    let suffix = match o.enumeration(
        "filename_suffix",
        &["IMAGE_SUFFIX_INDEX", "IMAGE_SUFFIX_TIMESTAMP", "IMAGE_SUFFIX_NONE_OVERWRITE"],
    )? {
        Some(1) => ImageSuffix::Timestamp,
        Some(2) => ImageSuffix::Overwrite,
        _ => ImageSuffix::Index,
    };
    o.enumeration("image_codec", &["IC_DEFAULT", "IC_JPEG"])?; // JPEG either way
    let upload = upload_target(&mut o)?;
    o.finish(&[])?;
    Ok(ImageOutput { capture_interval, width, height, filename_prefix, suffix, upload })
}

impl OutputSpec for ImageOutput {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()> {
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        let enc = target.encoder(encoder);
        if !enc.has(MediaKind::Video) {
            return Err(FieldError::new(field, "image outputs need video, and this egress has none"));
        }
        let size = (enc.settings.width, enc.settings.height);
        let raw = if self.filename_prefix.is_empty() {
            target.template().default_stem()
        } else {
            target.template().expand(&self.filename_prefix)
        };
        let prefix = inside(target.storage(), &raw, &format!("{field}.filename_prefix"))?;
        target.claim(&prefix, true, &format!("{field}.filename_prefix"))?;
        if self.suffix == ImageSuffix::Overwrite {
            let name = format!("{}.jpeg", prefix.display());
            target.claim(Path::new(&name), false, &format!("{field}.filename_prefix"))?;
        }
        let status = OutputStatus::new(field.into(), &KIND, target.relative(&prefix));
        let parts = build(self, size, prefix, status.clone(), target.queue_for(&self.upload)).map_err(fail)?;
        // Its pieces go through the upload queue; the uploader is where its manifest goes.
        target.attach(encoder, parts, status, target.uploader(&self.upload)).map_err(fail)
    }
}

fn livekit_result(output: &OutputSnapshot, ctx: &ResultContext, info: &mut lk::EgressInfo) {
    info.image_results.push(lk::ImagesInfo {
        filename_prefix: output.target.clone(),
        image_count: output.count as i64,
        started_at: ctx.started_at,
        ended_at: ctx.ended_at,
    });
}

fn build(
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
    // Never prerolls: see segments.rs (a prerolling sink stalls a playing pipeline).
    sink.set_property("async", false);
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
