//! A consumer handed from one connection's pad to another's (a rejoin while the old
//! connection still delivers) without its timeline stepping back or forth.
//!
//! Both connections carry the same publisher stream, but each under its own SSRC, and a new
//! SSRC is timed by arrival until its first sender report: tens of ms off the old stream's
//! place (40 ms measured for audio), and its first reports alone still leave it up to 15 ms
//! off. Switched at once, a copied track wrote 200 ms of video twice with timestamps going
//! back, and its sound moved by 40 ms. So while the old stream still delivers, the new pad
//! waits until its stream has inherited the old one's timing (`Timeline::inherit`), and the
//! consumer drops what the new one repeats of what it already had.

use std::sync::Mutex;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::timeline::Timeline;

/// Whether `pad` may take `sink` over now: at once unless `sink` is fed by another stream
/// that still delivers while `pad`'s stream is not yet placed the same way (`pad`'s stream
/// inherits the other's timing once half a second of both can be compared, or is placed from
/// its own sender reports).
pub fn may_take_over(pad: &gst::Pad, sink: &gst::Pad, timeline: &Timeline) -> bool {
    let Some(current) = sink.peer() else { return true };
    if current == *pad {
        return true;
    }
    match (ssrc_of(&current), ssrc_of(pad)) {
        (Some(old), Some(new)) if old != new => {
            !timeline.is_delivering(old) || timeline.inherit(new, old) || timeline.is_timed(new)
        }
        _ => true,
    }
}

fn ssrc_of(pad: &gst::Pad) -> Option<u32> {
    pad.current_caps()?.structure(0)?.get::<u32>("ssrc").ok()
}

/// Makes `sink` drop, after each change of the pad feeding it, the buffers that do not come
/// after the last one it had (by running time): the new connection starts with what the old
/// one already delivered.
pub fn drop_repeats(sink: &gst::Pad) {
    #[derive(Default)]
    struct Seen {
        source: Option<gst::Pad>,
        last: Option<gst::ClockTime>,
        /// Set at a change of source: buffers up to here are repeats.
        floor: Option<gst::ClockTime>,
    }
    let seen = Mutex::new(Seen::default());
    sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else { return gst::PadProbeReturn::Ok };
        let Some(segment) = pad.sticky_event::<gst::event::Segment>(0) else { return gst::PadProbeReturn::Ok };
        let Some(running) = segment.segment().downcast_ref::<gst::ClockTime>().and_then(|s| s.to_running_time(pts))
        else {
            return gst::PadProbeReturn::Ok;
        };
        let source = pad.peer();
        let mut seen = seen.lock().unwrap();
        if seen.source != source {
            seen.floor = seen.last;
            seen.source = source;
        }
        if let Some(floor) = seen.floor {
            if running <= floor {
                return gst::PadProbeReturn::Drop;
            }
            seen.floor = None;
            tracing::debug!(pad = %pad.name(), "a new connection carries on from its predecessor");
        }
        seen.last = Some(seen.last.map_or(running, |last| last.max(running)));
        gst::PadProbeReturn::Ok
    });
}
