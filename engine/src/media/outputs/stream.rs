//! Stream output: one RTMP(S) URL per branch, so each URL has its own status and a failing
//! one is cut off alone. Leaky queues keep a slow server from stalling the other outputs.

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{BranchParts, Input, file::link_input, ghost_sink};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make, queue};
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
        let q = queue(2, true)?;
        link_input(&bin, &[q.clone(), make("h264parse", None)?], &mux, "video")?;
        inputs.push((Input::Encoded(Codec::Video(VideoCodec::H264)), ghost_sink(&bin, &q, "video")?));
    }
    if encoder.has(MediaKind::Audio) {
        let q = queue(2, true)?;
        link_input(&bin, &[q.clone(), make("aacparse", None)?], &mux, "audio")?;
        inputs.push((Input::Encoded(Codec::Audio(AudioCodec::Aac)), ghost_sink(&bin, &q, "audio")?));
    }
    let measure = sink.static_pad("sink").expect("rtmp2sink sink");
    Ok(BranchParts { bin, inputs, measure, handler: None, file: None })
}
