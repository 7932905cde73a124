//! Capturing a page in step with its rendering. Chrome draws at its own phase; a capture at the
//! same rate but another phase catches some frames twice and misses others whenever a draw
//! lands near a capture instant (1–13 % repeats measured at 30 Hz). So the window is sampled at
//! twice the output rate and each new picture is given the next output slot: every picture
//! Chrome drew reaches the file once, as long as it draws at least at the output rate.

use std::sync::Mutex;

use gstreamer as gst;
use gstreamer::prelude::*;

/// Output slots a picture may be placed before its capture time: one frame of headroom lets
/// a late draw followed by an early one keep a slot each.
const LEAD_SLOTS: i64 = 1;

struct Cadence {
    /// The last picture let through (compared with each capture).
    shown: Option<gst::Buffer>,
    /// Its output slot (pts = slot × frame).
    slot: i64,
}

/// Where a capture goes: `Some(slot)` to be shown in that output slot, `None` to be dropped.
/// `ideal` is the slot of its capture time, `last` the slot of the picture shown before.
fn place(ideal: i64, last: Option<i64>, new_picture: bool) -> Option<i64> {
    let Some(last) = last else { return Some(ideal) };
    if new_picture {
        // The next slot, unless that runs ahead of time (Chrome drawing faster than the output).
        let slot = (last + 1).max(ideal - LEAD_SLOTS);
        (slot <= ideal).then_some(slot)
    } else if ideal > last + 2 {
        // The page stands still: its picture again now and then keeps the stream flowing
        // (the encoder's videorate fills the slots between).
        Some(ideal - LEAD_SLOTS)
    } else {
        None
    }
}

fn same_picture(a: &gst::BufferRef, b: &gst::BufferRef) -> bool {
    match (a.map_readable(), b.map_readable()) {
        (Ok(a), Ok(b)) => a.as_slice() == b.as_slice(),
        _ => false,
    }
}

/// Installs the cadence on `pad`, whose buffers are captures at 2 × `fps`.
pub fn keep_in_step(pad: &gst::Pad, fps: u32) {
    let frame = 1_000_000_000u64 / u64::from(fps.max(1));
    let state = Mutex::new(Cadence { shown: None, slot: 0 });
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let mut state = state.lock().unwrap();
        let ideal = ((pts.nseconds() + frame / 2) / frame) as i64;
        let new_picture = state.shown.as_ref().is_none_or(|shown| !same_picture(shown, buffer));
        let last = state.shown.as_ref().map(|_| state.slot);
        let Some(slot) = place(ideal, last, new_picture) else { return gst::PadProbeReturn::Drop };
        let Some(buffer) = info.buffer_mut() else { return gst::PadProbeReturn::Ok };
        {
            // Metadata only: a shared buffer is copied without its pixels.
            let writable = buffer.make_mut();
            writable.set_pts(gst::ClockTime::from_nseconds(slot.max(0) as u64 * frame));
            writable.set_duration(gst::ClockTime::from_nseconds(frame));
        }
        state.slot = slot;
        state.shown = Some(buffer.clone());
        gst::PadProbeReturn::Ok
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captures at twice the rate of a page drawn at the output rate, at a phase that puts some
    /// draws right on a capture instant (captured once or three times): every picture gets a
    /// slot of its own, in order, none repeated and none skipped.
    #[test]
    fn every_drawn_picture_gets_its_own_slot() {
        // Capture instants in half slots; a new picture first seen at these (jittered draws).
        let first_seen = [0, 2, 4, 5, 8, 10, 11, 14, 16, 19, 20, 22];
        let mut last = None;
        let mut shown = Vec::new();
        for half in 0..24 {
            let ideal = (half + 1) / 2;
            let slot = place(ideal, last, first_seen.contains(&half));
            if let Some(slot) = slot {
                if first_seen.contains(&half) {
                    shown.push(slot);
                }
                last = Some(slot);
            }
        }
        assert_eq!(shown, (0..first_seen.len() as i64).collect::<Vec<_>>(), "one slot each, none skipped");
    }

    #[test]
    fn a_page_drawn_faster_than_the_output_is_not_run_ahead_of_time() {
        let mut last = None;
        for half in 0..20 {
            let ideal = (half + 1) / 2;
            if let Some(slot) = place(ideal, last, true) {
                assert!(slot <= ideal, "slot {slot} ahead of its time {ideal}");
                last = Some(slot);
            }
        }
        assert_eq!(last, Some(10));
    }

    #[test]
    fn a_still_page_keeps_flowing() {
        let mut last = None;
        let mut shown = 0;
        for half in 0..60 {
            if let Some(slot) = place((half + 1) / 2, last, half == 0) {
                last = Some(slot);
                shown += 1;
            }
        }
        assert!(shown >= 9, "the still picture is let through now and then ({shown} times in 1 s)");
    }
}
