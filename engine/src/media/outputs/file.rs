//! File output: MP4 (H.264 + AAC/Opus; fragmented when crash-safe), OGG (Opus), WebM (VP8 + Opus).

use std::path::Path;

use anyhow::{Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{BranchParts, Input, ghost_sink};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make, queue};
use crate::request::encoding::{AudioCodec, VideoCodec};
use crate::request::outputs::FileType;

pub fn build(encoder: &Encoder, file_type: FileType, path: &Path, crash_safe: bool) -> Result<BranchParts> {
    let s = &encoder.settings;
    let (video, audio) = match file_type {
        FileType::Mp4 => (Some(VideoCodec::H264), s.audio_codec.or(Some(AudioCodec::Aac))),
        FileType::Ogg => (None, Some(AudioCodec::Opus)),
        FileType::Webm => (Some(VideoCodec::Vp8), Some(AudioCodec::Opus)),
    };
    let video = video.filter(|_| encoder.has(MediaKind::Video));
    let audio = audio.filter(|_| encoder.has(MediaKind::Audio));
    if file_type == FileType::Ogg && encoder.has(MediaKind::Video) {
        bail!("OGG holds audio only, and this egress has video (ask for audio only)");
    }
    if video.is_none() && audio.is_none() {
        bail!("this egress has no media that a {file_type:?} file can hold");
    }

    let bin = gst::Bin::new();
    let mux = match file_type {
        FileType::Mp4 => {
            let m = make("mp4mux", None)?;
            if crash_safe {
                // Each fragment is complete on disk: the file plays even after SIGKILL. Short
                // fragments also matter for start latency: nothing is written before the first.
                m.set_property("fragment-duration", 250u32);
            }
            m
        }
        FileType::Ogg => make("oggmux", None)?,
        FileType::Webm => make("webmmux", None)?,
    };
    let sink = make("filesink", None)?;
    sink.set_property("location", path.to_string_lossy().to_string());
    sink.set_property("async", false);
    bin.add_many([&mux, &sink])?;
    mux.link(&sink)?;

    let mut inputs = Vec::new();
    if let Some(v) = video {
        let q = queue(3, false)?;
        let mut chain = vec![q.clone()];
        if v == VideoCodec::H264 {
            chain.push(make("h264parse", None)?);
        }
        link_input(&bin, &chain, &mux, "video_%u")?;
        inputs.push((Input::Encoded(Codec::Video(v)), ghost_sink(&bin, &q, "video")?));
    }
    if let Some(a) = audio {
        let q = queue(3, false)?;
        let mut chain = vec![q.clone()];
        if a == AudioCodec::Aac {
            chain.push(make("aacparse", None)?);
        }
        link_input(&bin, &chain, &mux, "audio_%u")?;
        inputs.push((Input::Encoded(Codec::Audio(a)), ghost_sink(&bin, &q, "audio")?));
    }
    let measure = sink.static_pad("sink").expect("filesink sink");
    Ok(BranchParts { bin, inputs, measure, handler: None, file: Some(path.to_path_buf()) })
}

/// Links a chain of elements into a request pad of the muxer.
pub fn link_input(bin: &gst::Bin, chain: &[gst::Element], mux: &gst::Element, template: &str) -> Result<()> {
    bin.add_many(chain)?;
    gst::Element::link_many(chain)?;
    let mux_pad =
        mux.request_pad_simple(template).ok_or_else(|| anyhow::anyhow!("{} refused a {template} pad", mux.name()))?;
    chain.last().expect("non-empty chain").static_pad("src").expect("src").link(&mux_pad)?;
    Ok(())
}
