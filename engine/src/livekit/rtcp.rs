//! RTCP between egret and LiveKit: the feedback egret sends (NACK, PLI) and the sender reports
//! it reads. rtpbin's defaults suit a multicast session far more than a WebRTC subscriber on
//! one connection; what is changed here, and why, was measured under 5 % packet loss.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::timeline::{Timeline, sender_reports};

/// RTCP bandwidth allowed to egret's sessions, in bytes per second. Under AVPF, rtpsession
/// sends feedback at most once per regular report interval, and that interval is the average
/// report size × members / this bandwidth. With the default (5 % of a guessed session
/// bandwidth) the interval was ~0.6 s: NACKs left after the jitter buffer had given the packet
/// up (0 of ~60 lost video packets recovered in 30 s) and every PLI waited as long, so video
/// froze for 2-3 s at a time. At 50 kB/s the interval is ~5 ms for one publisher and ~40 ms
/// for a room of 9. Reports carrying no feedback are still suppressed until the regular
/// 5 s (`rtcp-min-interval`), so without loss nothing more is sent.
const RTCP_BYTES_PER_SECOND: f64 = 50_000.0;

/// How long after a missing packet was due the jitter buffer keeps asking for it. Its default
/// (its latency less one retry; measured with a 200 ms latency, ~100 ms with 50 ms of network
/// delay) left room for one NACK:
/// livekit-server ignores a repeated NACK within min(100 ms, 2 × RTT) of its last resend, and
/// a packet next to DTX silence, due (the buffer guesses) halfway through the silence, was
/// given up at once. Under 50 ± 30 ms of delay and 5 % loss, frames of a flash were lost for
/// good and the picture held 0.3-0.7 s for a keyframe in every run; with 400 ms, 0.03-0.07 s
/// in 3 runs of 4 (300 ms: 0.37-0.43 s). A packet still missing then is given up at the
/// buffer's latency (`media::track::JITTER_LATENCY_MS`); packets behind it wait with it, and
/// the mixers wait for their tracks longer than that (`media::slot`).
const RTX_RETRY_PERIOD_MS: i32 = 400;

/// Consecutive packets a jitter buffer needs to start without waiting out its latency.
const FASTSTART_PACKETS: u32 = 4;

/// Tunes each RTP session and jitter buffer webrtcbin makes, and feeds every RTCP sender
/// report to `timeline`, stamped with its arrival. rtpbin makes its sessions as streams come:
/// each is hooked once, when its first jitter buffer appears.
pub fn tune_sessions(webrtc: &gst::Element, timeline: Arc<Timeline>) {
    let Some(rtpbin) = webrtc.downcast_ref::<gst::Bin>().and_then(|b| b.by_name("rtpbin")) else {
        tracing::warn!("webrtcbin has no rtpbin: tracks stay timed by arrival");
        return;
    };
    let hooked = Mutex::new(HashSet::<u32>::new());
    let clock_of = webrtc.downgrade();
    rtpbin.connect("new-jitterbuffer", false, move |values| {
        let rtpbin = values[0].get::<gst::Element>().ok()?;
        let jitterbuffer = values[1].get::<gst::Element>().ok()?;
        let session = values[2].get::<u32>().ok()?;
        // A packet is asked for again when a later one shows it missing, as browsers do, not
        // when the buffer guesses it is due: an audio sender in DTX sends one packet in 400 ms,
        // so each of those was asked for, given up as lost, and dropped when it came.
        jitterbuffer.set_property("rtx-next-seqnum", false);
        // A stream's first packets leave as soon as a few in a row are there, rather than
        // after the buffer's whole latency: an egress starts ~200 ms sooner. Packets after a
        // gap still wait for their retransmission.
        jitterbuffer.set_property("faststart-min-packets", FASTSTART_PACKETS);
        jitterbuffer.set_property("rtx-retry-period", RTX_RETRY_PERIOD_MS);
        if !hooked.lock().unwrap().insert(session) {
            return None;
        }
        let internal = rtpbin.emit_by_name::<Option<gst::glib::Object>>("get-internal-session", &[&session])?;
        internal.set_property("rtcp-fraction", RTCP_BYTES_PER_SECOND);
        let timeline = timeline.clone();
        let clock_of = clock_of.clone();
        internal.connect("on-receiving-rtcp", false, move |values| {
            let buffer = values[1].get::<gst::Buffer>().ok()?;
            let arrival = clock_of.upgrade()?.current_running_time()?.nseconds() as i64;
            let map = buffer.map_readable().ok()?;
            for (ssrc, ntp, rtp) in sender_reports(&map) {
                timeline.on_sender_report(ssrc, rtp, ntp, arrival);
            }
            None
        });
        None
    });
}

/// A keyframe request from a depayloader (after a loss, or a consumer joining) must name
/// the stream's SSRC and ask for a PLI for rtpbin's session to send one; as the depayloaders
/// send it (no SSRC, all headers) it never left egret, and a lost packet froze the video until
/// the sender's next keyframe of its own accord. Requests are at most one per 300 ms.
pub fn ask_keyframes_by_ssrc(pad: &gst::Pad) {
    let last = Mutex::new(None::<std::time::Instant>);
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |pad, info| {
        let Some(gst::PadProbeData::Event(event)) = &info.data else { return gst::PadProbeReturn::Ok };
        let Some(s) = event.structure().filter(|s| s.name() == "GstForceKeyUnit") else {
            return gst::PadProbeReturn::Ok;
        };
        if s.has_field("ssrc") {
            return gst::PadProbeReturn::Ok;
        }
        let ssrc = pad.current_caps().and_then(|c| c.structure(0).and_then(|s| s.get::<u32>("ssrc").ok()));
        let Some(ssrc) = ssrc else { return gst::PadProbeReturn::Ok };
        let mut last = last.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(300)) {
            return super::handover::DISCARD;
        }
        *last = Some(std::time::Instant::now());
        let request =
            gst::Structure::builder("GstForceKeyUnit").field("all-headers", false).field("ssrc", ssrc).build();
        info.data = Some(gst::PadProbeData::Event(gst::event::CustomUpstream::new(request)));
        gst::PadProbeReturn::Ok
    });
}
