//! GStreamer side of an egress: sources, the encoder and the output branches. Media stays in
//! GStreamer; Lua only asks for these pieces to be built and connected.

pub mod canvas;
pub mod chrome;
pub mod encoder;
pub mod graph;
pub mod outputs;
pub mod slot;
pub mod testsrc;
pub mod thumbnail;
pub mod track;

use anyhow::{Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;

/// What a source offers the encoder: a raw video or audio pad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Video,
    Audio,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
        }
    }
}

/// A raw media pad that a source exposes (the `video` / `audio` fields Lua sees).
#[derive(Debug, Clone)]
pub struct MediaPad {
    pub kind: MediaKind,
    pub pad: gst::Pad,
}

/// Every element factory egress pipelines use; loaded once at startup.
const FACTORIES: &[&str] = &[
    "videotestsrc",
    "audiotestsrc",
    "timeoverlay",
    "capsfilter",
    "queue",
    "tee",
    "videoconvert",
    "videoscale",
    "videorate",
    "audioconvert",
    "audioresample",
    "x264enc",
    "lamemp3enc",
    "xingmux",
    "srtsink",
    "h264parse",
    "vp8enc",
    "avenc_aac",
    "aacparse",
    "opusenc",
    "mp4mux",
    "oggmux",
    "webmmux",
    "filesink",
    "splitmuxsink",
    "mpegtsmux",
    "flvmux",
    "rtmp2sink",
    "jpegenc",
    "appsink",
    // room tracks
    "webrtcbin",
    "rtph264depay",
    "rtpvp8depay",
    "rtpopusdepay",
    "opusparse",
    "avdec_h264",
    "vp8dec",
    "opusdec",
    "compositor",
    "videocrop",
    "textoverlay",
    "imagefreeze",
    "audiomixer",
    "fakesink",
];

/// Loads the plugins up front so the first egress starts as fast as the next ones, and
/// reports the missing ones (a plugin package not installed) before any request comes.
pub fn preload_plugins() -> Vec<&'static str> {
    FACTORIES
        .iter()
        .filter(|name| gst::ElementFactory::find(name).and_then(|f| f.load().ok()).is_none())
        .copied()
        .collect()
}

/// GStreamer for unit tests, which run in parallel threads of one process: plugins loaded
/// once, up front, as `serve` does (two tests loading plugins at the same moment could hang
/// one of them: seen as a stalled audio mixer test beside an MP4 writing one).
#[cfg(test)]
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gst::init().expect("GStreamer starts");
        preload_plugins();
        for extra in ["mp4mux", "h264parse", "aacparse", "opusenc", "opusdec", "rtpopuspay", "filesink", "appsink"] {
            let _ = gst::ElementFactory::find(extra).and_then(|f| f.load().ok());
        }
    });
}

/// Held by the audio slot test and the MP4 repair tests, which must not run at once: while
/// the repair tests spawn ffprobe/ffmpeg, the slot test's track source sometimes stops with
/// "not-linked" just as it joins (about half the runs; never when they run one after the
/// other). Not understood yet: a process spawned during a live pipeline's linking is the lead.
#[cfg(test)]
pub static LIVE_PIPELINE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes an element or says which one is missing (a plugin package not installed).
pub fn make(factory: &str, name: Option<&str>) -> Result<gst::Element> {
    let mut builder = gst::ElementFactory::make(factory);
    if let Some(name) = name {
        builder = builder.name(name);
    }
    builder.build().with_context(|| format!("GStreamer element `{factory}` is missing (install its plugin package)"))
}

/// Adds elements to a bin and links them in order.
pub fn add_chain(bin: &impl IsA<gst::Bin>, elements: &[&gst::Element]) -> Result<()> {
    bin.add_many(elements.iter().copied())?;
    gst::Element::link_many(elements.iter().copied()).context("linking elements")?;
    Ok(())
}

/// A caps filter from a caps string.
pub fn capsfilter(caps: &str) -> Result<gst::Element> {
    let caps: gst::Caps = caps.parse().with_context(|| format!("bad caps `{caps}`"))?;
    Ok(gst::ElementFactory::make("capsfilter").property("caps", caps).build()?)
}

/// A queue bounded by time only. `leaky` drops old data instead of blocking upstream: used
/// before network sinks so a wedged server cannot stall the other outputs.
pub fn queue(max_seconds: u64, leaky: bool) -> Result<gst::Element> {
    let q = make("queue", None)?;
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    q.set_property("max-size-time", max_seconds * 1_000_000_000);
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

/// When the pipeline already runs, new elements must be brought to its state.
pub fn sync_states(elements: &[&gst::Element]) {
    for e in elements.iter().rev() {
        let _ = e.sync_state_with_parent();
    }
}

/// Brings `bin` and everything in it to NULL, each element on its own: a bin stops its state
/// change at the first child that fails (an RTMP sink whose server refused it), leaving the
/// elements upstream PLAYING, and an element finalized while PLAYING leaves its streaming
/// thread running on freed pads.
pub fn stop_all(bin: &gst::Bin) {
    let _ = bin.set_state(gst::State::Null);
    for element in bin.iterate_recurse().into_iter().flatten() {
        if element.current_state() != gst::State::Null {
            let _ = element.set_state(gst::State::Null);
        }
    }
}

/// `stop_all` on a blocking thread, waited for at most `limit`. A state change to NULL waits
/// for every streaming thread to leave its element; one wedged thread would otherwise wedge
/// the caller (an egress stuck "ending" for ever, and a shutdown that never ends). False when
/// the limit passed: the bin is then left as it is, never finalized under a running thread.
pub async fn stop_all_within(bin: &gst::Bin, limit: std::time::Duration) -> bool {
    let bin = bin.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not tokio's blocking pool: a runtime waits for its blocking tasks
    // when it shuts down, so a wedged one would keep egret from exiting.
    let spawned = std::thread::Builder::new().name("egret-stop".into()).spawn(move || {
        stop_all(&bin);
        let _ = done_tx.send(());
    });
    spawned.is_ok() && matches!(tokio::time::timeout(limit, done_rx).await, Ok(Ok(())))
}

/// Sends EOS without waiting: a serialized event waits for the pad's stream lock, which a
/// streaming thread blocked downstream holds; the caller's deadline covers an EOS that never
/// gets through.
pub fn send_eos_detached(target: impl IsA<gst::Object>) {
    let target = target.upcast::<gst::Object>();
    let spawned = std::thread::Builder::new().name("egret-eos".into()).spawn(move || {
        if let Some(element) = target.downcast_ref::<gst::Element>() {
            element.send_event(gst::event::Eos::new());
        } else if let Some(pad) = target.downcast_ref::<gst::Pad>() {
            pad.send_event(gst::event::Eos::new());
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "no thread to send EOS on");
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    /// A streaming thread that never comes back (here a probe waiting for ever) must not wedge
    /// the caller: the stop gives up at its limit and says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // the guard keeps other live-pipeline tests out, across threads
    async fn a_wedged_streaming_thread_does_not_wedge_the_stop() {
        init_for_tests();
        let _live = LIVE_PIPELINE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let pipeline = gst::Pipeline::new();
        let src = make("audiotestsrc", None).unwrap();
        let sink = make("fakesink", None).unwrap();
        add_chain(&pipeline, &[&src, &sink]).unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (_release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv(); // never answered while the test runs
            gst::PadProbeReturn::Ok
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        entered_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("a buffer reached the probe");
        send_eos_detached(pipeline.clone()); // returns at once although the EOS cannot pass
        let started = std::time::Instant::now();
        let stopped = stop_all_within(pipeline.upcast_ref(), std::time::Duration::from_millis(500)).await;
        assert!(!stopped, "NULL cannot be reached under a wedged streaming thread");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        std::mem::forget(pipeline); // its thread stays wedged; the process ends with the test
    }
}
