//! Stream output: one RTMP(S) URL per branch, so each URL has its own status and a failing
//! one is cut off alone. Leaky queues keep a slow server from stalling the other outputs.

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{BranchParts, mux_input};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
use crate::request::encoding::{AudioCodec, VideoCodec};

pub fn build(encoder: &Encoder, url: &str) -> Result<BranchParts> {
    let bin = gst::Bin::new();
    let mux = make("flvmux", None)?;
    mux.set_property("streamable", true);
    let sink = make("rtmp2sink", None)?;
    sink.set_property("location", url);
    sink.set_property("async", false);
    sink.set_property("sync", false);
    bin.add_many([&mux, &sink])?;
    mux.link(&sink)?;
    let mut inputs = Vec::new();
    if encoder.has(MediaKind::Video) {
        inputs.push(mux_input(&bin, &mux, Codec::Video(VideoCodec::H264), "video", true)?);
    }
    if encoder.has(MediaKind::Audio) {
        inputs.push(mux_input(&bin, &mux, Codec::Audio(AudioCodec::Aac), "audio", true)?);
    }
    let measure = sink.static_pad("sink").expect("rtmp2sink sink");
    Ok(BranchParts { bin, inputs, measure, handler: None, file: None })
}
