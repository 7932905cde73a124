//! Stream output (`stream_outputs`, LiveKit's StreamOutput): one RTMP(S) or SRT URL per
//! branch, so each URL has its own status and a failing one is cut off alone. Leaky queues
//! keep a slow server from stalling the other outputs. RTMP carries FLV; SRT carries MPEG-TS
//! (caller mode, or listener with `?mode=listener`, as srtsink reads its URL).

use std::sync::Arc;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use livekit_protocol as lk;
use serde_json::Value;

use super::{BranchParts, BuildTarget, Output, OutputKind, OutputSnapshot, OutputSpec, OutputState, OutputStatus};
use super::{ResultContext, mux_input};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
use crate::request::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use crate::request::fields::{FieldError, FieldResult, Obj};
use crate::request::outputs::{check_codecs, check_stream_url};

pub static KIND: OutputKind = OutputKind {
    name: "stream",
    request_fields: &["stream_outputs"],
    unified_key: Some("stream"),
    parse,
    livekit_result,
    recover: super::recover_nothing,
};

#[derive(Debug, Clone, PartialEq)]
pub struct StreamOutput {
    pub urls: Vec<String>,
}

fn parse(request: &mut Obj, settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut outputs = Vec::new();
    for (i, v) in request.array("stream_outputs")?.iter().enumerate() {
        let field = format!("stream_outputs[{i}]");
        outputs.push(Output::new(field.clone(), parse_one(v, &field, settings)?));
    }
    Ok(outputs)
}

fn parse_one(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<StreamOutput> {
    let mut o = Obj::new(v, field)?;
    let protocol = o.enumeration("protocol", &["DEFAULT_PROTOCOL", "RTMP", "SRT"])?;
    let mut urls = Vec::new();
    for (i, u) in o.array("urls")?.iter().enumerate() {
        let path = format!("{field}.urls[{i}]");
        let url = u.as_str().ok_or_else(|| FieldError::new(&path, "must be a string"))?;
        check_stream_url(url, &path)?;
        // As LiveKit: every URL of an output is of its protocol (RTMP unless it says SRT).
        let srt = url.starts_with("srt://");
        match protocol {
            Some(2) if !srt => {
                return Err(FieldError::new(&path, format!("`{url}` is not an srt:// URL (protocol SRT)")));
            }
            Some(1) if srt => return Err(FieldError::new(&path, format!("`{url}` is an SRT URL (protocol RTMP)"))),
            _ => {}
        }
        urls.push(url.to_string());
    }
    if urls.is_empty() {
        return Err(FieldError::new(o.field_path("urls"), "at least one rtmp://, rtmps:// or srt:// URL is required"));
    }
    check_codecs(settings, &[VideoCodec::H264], &[AudioCodec::Aac], field, "a stream (FLV or MPEG-TS)")?;
    o.finish(&[])?;
    Ok(StreamOutput { urls })
}

impl OutputSpec for StreamOutput {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()> {
        for (i, url) in self.urls.iter().enumerate() {
            add_url(target, encoder, &format!("{field}.urls[{i}]"), url)?;
        }
        Ok(())
    }
}

/// One URL as its own output; also how UpdateStream adds a URL to a running egress.
pub fn add_url(target: &mut dyn BuildTarget, encoder: usize, field: &str, url: &str) -> FieldResult<()> {
    reconnect(target, encoder, OutputStatus::new(field.into(), &KIND, url.into()))
}

/// A new connection for a stream URL whose earlier one failed: a new branch on its status.
pub fn reconnect(target: &mut dyn BuildTarget, encoder: usize, status: Arc<OutputStatus>) -> FieldResult<()> {
    let fail = |e: anyhow::Error| FieldError::new(&status.field, format!("{e:#}"));
    let parts = build(target.encoder(encoder), &status.target).map_err(fail)?;
    target.attach(encoder, parts, status.clone(), None).map_err(fail)
}

/// A StreamInfo per URL (RTMP with its key redacted; websocket and SRT URLs verbatim, as LiveKit).
pub(super) fn livekit_result(output: &OutputSnapshot, ctx: &ResultContext, info: &mut lk::EgressInfo) {
    let (_, ended_at) = output.times_ns(ctx);
    // LiveKit: 0 until this URL's first bytes go out; one that never started, its end.
    let started_at = match output.started_at {
        Some(s) => (s * 1e9) as i64,
        None if ended_at > 0 => ended_at,
        None => 0,
    };
    info.stream_results.push(lk::StreamInfo {
        url: redact_stream_url(&output.target),
        started_at,
        ended_at,
        duration: if ended_at > 0 { ended_at - started_at } else { output.duration_ns() },
        status: match output.status {
            OutputState::Failed => lk::stream_info::Status::Failed,
            OutputState::Complete => lk::stream_info::Status::Finished,
            _ => lk::stream_info::Status::Active,
        } as i32,
        error: output.error.clone().unwrap_or_default(),
        retries: output.retries,
        last_retry_at: output.last_retry_at.map(|t| (t * 1e9) as i64).unwrap_or(0),
    });
}

/// `rtmp://host/app/streamkey` → `rtmp://host/app/{str...key}`, as LiveKit shows stream URLs.
pub fn redact_stream_url(url: &str) -> String {
    let Some(rest) = url.strip_prefix("rtmp://").or_else(|| url.strip_prefix("rtmps://")) else {
        return url.to_string();
    };
    let scheme = &url[..url.len() - rest.len()];
    let Some((head, key)) = rest.rsplit_once('/') else { return url.to_string() };
    if !head.contains('/') || key.is_empty() {
        return url.to_string();
    }
    let chars: Vec<char> = key.chars().collect();
    let keep = match chars.len() {
        n if n >= 9 => 3,
        n if n >= 6 => 2,
        n if n >= 3 => 1,
        _ => 0,
    };
    let shown = if keep == 0 {
        "{...}".to_string()
    } else {
        let (a, b): (String, String) = (chars[..keep].iter().collect(), chars[chars.len() - keep..].iter().collect());
        format!("{{{a}...{b}}}")
    };
    format!("{scheme}{head}/{shown}")
}

fn build(encoder: &Encoder, url: &str) -> Result<BranchParts> {
    let bin = gst::Bin::new();
    let srt = url.starts_with("srt://");
    let (mux, sink) = if srt {
        let mux = make("mpegtsmux", None)?;
        // Whole 7-packet groups: SRT sends 1316-byte payloads.
        mux.set_property("alignment", 7i32);
        let sink = make("srtsink", None)?;
        // A lost peer is an error, so the stream is reconnected and reported like RTMP's
        // (srtsink's own reconnect is silent: the outage never showed). Set before the URI,
        // whose own `auto-reconnect` wins.
        sink.set_property("auto-reconnect", false);
        // A listener does not hold the pipeline until a peer connects.
        sink.set_property("wait-for-connection", false);
        sink.set_property("uri", url);
        (mux, sink)
    } else {
        let mux = make("flvmux", None)?;
        mux.set_property("streamable", true);
        let sink = make("rtmp2sink", None)?;
        sink.set_property("location", url);
        (mux, sink)
    };
    sink.set_property("async", false);
    sink.set_property("sync", false);
    bin.add_many([&mux, &sink])?;
    mux.link(&sink)?;
    let mut inputs = Vec::new();
    if encoder.has(MediaKind::Video) {
        let pad = if srt { "sink_%d" } else { "video" };
        inputs.push(mux_input(&bin, &mux, Codec::Video(VideoCodec::H264), pad, true)?);
    }
    if encoder.has(MediaKind::Audio) {
        let pad = if srt { "sink_%d" } else { "audio" };
        inputs.push(mux_input(&bin, &mux, Codec::Audio(AudioCodec::Aac), pad, true)?);
    }
    super::align_video_to_aac(&inputs, encoder.settings.audio_frequency);
    let measure = sink.static_pad("sink").expect("stream sink");
    Ok(BranchParts { bin, inputs, measure, handler: None, file: None })
}
