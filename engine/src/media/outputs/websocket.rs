//! Websocket output: the audio as raw PCM (s16le, 48 kHz, mono) in binary messages, the way
//! LiveKit's track egress feeds transcription services. The connection is made when the
//! output starts; a refused or broken connection fails this output alone.

use anyhow::{Result, bail};
use futures_util::SinkExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{BranchParts, BuildTarget, Input, Output, OutputKind, OutputSpec, OutputStatus, ghost_sink};
use crate::media::encoder::Encoder;
use crate::media::{MediaKind, add_chain, capsfilter, make, queue};
use crate::request::encoding::EncodeSettings;
use crate::request::fields::{FieldError, FieldResult, Obj};

/// A track's websocket has no result type in LiveKit's EgressInfo.
pub static KIND: OutputKind = OutputKind {
    name: "websocket",
    request_fields: &["websocket_url"],
    unified_key: None,
    parse,
    // LiveKit reports a websocket as a stream (StreamInfo with the URL as given).
    livekit_result: super::stream::livekit_result,
    recover: super::recover_nothing,
};

pub const PCM_CAPS: &str = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=1";

/// Raw PCM (s16le, 48 kHz, mono) in binary websocket messages, as LiveKit's track egress.
#[derive(Debug, Clone, PartialEq)]
pub struct WebsocketOutput {
    pub url: String,
}

fn parse(request: &mut Obj, _settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let Some(url) = request.string("websocket_url")?.filter(|u| !u.is_empty()) else { return Ok(Vec::new()) };
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(FieldError::new("websocket_url", format!("`{url}` is not a ws:// or wss:// URL")));
    }
    Ok(vec![Output::new("websocket_url".into(), WebsocketOutput { url })])
}

impl OutputSpec for WebsocketOutput {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()> {
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        let parts = build(target.encoder(encoder), &self.url).map_err(fail)?;
        let status = OutputStatus::new(field.into(), &KIND, self.url.clone());
        target.attach(encoder, parts, status, None).map_err(fail)
    }
}

fn build(encoder: &Encoder, url: &str) -> Result<BranchParts> {
    if encoder.raw_tee(MediaKind::Audio).is_none() {
        bail!("websocket outputs carry decoded audio, and this egress has none");
    }
    let bin = gst::Bin::new();
    let q = queue(2, true)?;
    let sink = gst_app::AppSink::builder().sync(false).build();
    sink.set_property("async", false); // see segments.rs: no sink of an output prerolls
    let elements = [&q, &make("audioconvert", None)?, &make("audioresample", None)?, &capsfilter(PCM_CAPS)?];
    add_chain(&bin, &elements)?;
    bin.add(&sink)?;
    elements[3].link(&sink)?;

    let (tx, rx) = mpsc::unbounded_channel::<bytes::Bytes>();
    let tx = std::sync::Mutex::new(Some(tx));
    let tx = std::sync::Arc::new(tx);
    let eos_tx = tx.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok())
                    && let Some(tx) = tx.lock().unwrap().as_ref()
                {
                    let _ = tx.send(bytes::Bytes::copy_from_slice(map.as_slice()));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .eos(move |_| {
                // The end of the egress: the writer closes the connection once it has sent all.
                eos_tx.lock().unwrap().take();
            })
            .build(),
    );
    tokio::spawn(send(url.to_string(), rx, sink.downgrade()));
    let input = ghost_sink(&bin, &q, "audio")?;
    let measure = sink.static_pad("sink").expect("appsink sink");
    Ok(BranchParts { bin, inputs: vec![(Input::Raw(MediaKind::Audio), input)], measure, handler: None, file: None })
}

async fn send(url: String, mut pcm: mpsc::UnboundedReceiver<bytes::Bytes>, sink: gst::glib::WeakRef<gst_app::AppSink>) {
    let fail = |text: String| {
        if let Some(sink) = sink.upgrade() {
            let message = gst::message::Error::builder(gst::ResourceError::Write, &text).src(&sink).build();
            let _ = sink.post_message(message);
        }
    };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return fail(format!("bad websocket URL `{url}`: {e}")),
    };
    request.headers_mut().insert("Content-Type", "audio/x-raw".parse().expect("static header"));
    let mut ws = match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(e) => return fail(format!("websocket {url}: {e}")),
    };
    while let Some(chunk) = pcm.recv().await {
        if let Err(e) = ws.send(Message::Binary(chunk)).await {
            return fail(format!("websocket {url}: {e}"));
        }
    }
    let _ = ws.close(None).await;
}
