//! File output: MP4 (H.264 + AAC/Opus; fragmented when crash-safe), OGG (Opus), WebM (VP8 + Opus).

use std::path::Path;

use anyhow::{Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{BranchParts, mux_input};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
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
    // Straight to the kernel: a 64 KB stdio buffer would delay the first byte by a second on
    // calm content and lose its contents if egret were killed.
    sink.set_property_from_str("buffer-mode", "unbuffered");
    bin.add_many([&mux, &sink])?;
    mux.link(&sink)?;

    let mut inputs = Vec::new();
    if let Some(v) = video {
        inputs.push(mux_input(&bin, &mux, Codec::Video(v), "video_%u", false)?);
    }
    if let Some(a) = audio {
        inputs.push(mux_input(&bin, &mux, Codec::Audio(a), "audio_%u", false)?);
    }
    let measure = sink.static_pad("sink").expect("filesink sink");
    Ok(BranchParts { bin, inputs, measure, handler: None, file: Some(path.to_path_buf()) })
}
