//! The test source: a moving pattern with a visible clock and a tone, or the A/V-sync mode, a
//! white flash and a 1 kHz beep together once per second (100 ms each), for offset checks.

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;

use super::{MediaKind, MediaPad, add_chain, capsfilter, make};

#[derive(Debug, Clone)]
pub struct TestSourceOptions {
    pub video: bool,
    pub audio: bool,
    pub av_sync: bool,
    /// Tone frequency in Hz for the pattern mode.
    pub tone_hz: f64,
}

const FLASH_NS: u64 = 100_000_000;
const SECOND_NS: u64 = 1_000_000_000;

/// Adds the test source to the pipeline; returns its raw pads.
pub fn build(pipeline: &gst::Pipeline, opts: &TestSourceOptions) -> Result<Vec<MediaPad>> {
    let mut pads = Vec::new();
    if opts.video {
        let src = make("videotestsrc", None)?;
        src.set_property("is-live", true);
        // I420 is what the encoder wants; size and rate follow the encoder's caps.
        let caps = capsfilter("video/x-raw,format=I420")?;
        let last = if opts.av_sync {
            src.set_property_from_str("pattern", "black");
            add_chain(pipeline, &[&src, &caps])?;
            add_flash_probe(&src.static_pad("src").expect("videotestsrc has src"));
            caps
        } else {
            src.set_property_from_str("pattern", "smpte");
            src.set_property("horizontal-speed", 4i32);
            let clock = make("timeoverlay", None)?;
            clock.set_property("font-desc", "Sans Bold 48");
            clock.set_property_from_str("halignment", "center");
            clock.set_property_from_str("valignment", "center");
            add_chain(pipeline, &[&src, &caps, &clock])?;
            clock
        };
        pads.push(MediaPad { kind: MediaKind::Video, pad: last.static_pad("src").expect("src pad") });
    }
    if opts.audio {
        let src = make("audiotestsrc", None)?;
        src.set_property("is-live", true);
        if opts.av_sync {
            src.set_property_from_str("wave", "ticks");
            src.set_property("freq", 1000.0f64);
            // 100 periods of 1 kHz = 100 ms, starting on every whole second like the flash.
            src.set_property("sine-periods-per-tick", 100u32);
            src.set_property("volume", 0.8f64);
        } else {
            src.set_property_from_str("wave", "sine");
            src.set_property("freq", opts.tone_hz);
            src.set_property("volume", 0.3f64);
        }
        pipeline.add(&src)?;
        pads.push(MediaPad { kind: MediaKind::Audio, pad: src.static_pad("src").expect("src pad") });
    }
    Ok(pads)
}

/// Paints white the frames of the first 100 ms of every second. A frame belongs to the time
/// of its centre, so the first white frame is the one nearest the whole second, where the
/// beep starts, whatever the phase of the source's frame clock.
fn add_flash_probe(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let (Some(pts), Some(duration)) = (buffer.pts(), buffer.duration()) else {
            return gst::PadProbeReturn::Ok;
        };
        let centre = pts.nseconds() + duration.nseconds() / 2;
        if centre % SECOND_NS >= FLASH_NS {
            return gst::PadProbeReturn::Ok;
        }
        let Some(video_info) = pad.current_caps().and_then(|c| gst_video::VideoInfo::from_caps(&c).ok()) else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(buffer) = info.buffer_mut()
            && let Ok(mut frame) = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer.make_mut(), &video_info)
            && let Ok(luma) = frame.plane_data_mut(0)
        {
            luma.fill(235);
        }
        gst::PadProbeReturn::Ok
    });
}
