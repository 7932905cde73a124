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

use super::{BranchParts, Input, ghost_sink};
use crate::media::encoder::Encoder;
use crate::media::{MediaKind, add_chain, capsfilter, make, queue};

pub const PCM_CAPS: &str = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=1";

pub fn build(encoder: &Encoder, url: &str) -> Result<BranchParts> {
    if encoder.raw_tee(MediaKind::Audio).is_none() {
        bail!("websocket outputs carry decoded audio, and this egress has none");
    }
    let bin = gst::Bin::new();
    let q = queue(2, true)?;
    let sink = gst_app::AppSink::builder().sync(false).build();
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
