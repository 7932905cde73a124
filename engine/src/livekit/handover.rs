//! A consumer handed from one connection's pad to another's (a rejoin while the old
//! connection still delivers) without its stream stepping, repeating or losing a frame.
//!
//! Both connections carry the same publisher stream, but each under its own SSRC and sequence
//! numbers, and a new SSRC is timed by arrival until its first sender report: tens of ms off
//! the old stream's place (40 ms measured for audio). Switched at once, a copied track wrote
//! 200 ms of video twice with timestamps going back, and its sound moved by 40 ms. So:
//! - the new pad waits until its stream has inherited the old one's timing
//!   (`Timeline::inherit`), for as long as the old one still delivers;
//! - it takes over between two frames on both sides, and replays what it received while it
//!   waited (`Backlog`): it may run ahead of the old connection;
//! - the consumer keeps one RTP stream (`Splice`): it drops the frames it already had, and
//!   the new packets go on with the old SSRC and sequence numbers. A depayloader takes a new
//!   SSRC or a gap for a loss and drops every frame until the next keyframe: one to three
//!   frames were missing at each rejoin (a flash missing from a copied track in one CI run).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::timeline::Timeline;

/// Whether `pad` may take `sink` over now: at once unless `sink` is fed by another stream
/// that still delivers. Then only once `pad`'s stream is placed the same way (it inherits
/// the other's timing once half a second of both can be compared, or is placed from its own
/// sender reports), `pad`'s next packet begins a frame (`at_frame_start`) and the consumer
/// has no frame half delivered.
pub fn may_take_over(
    pad: &gst::Pad,
    sink: &gst::Pad,
    splice: &Splice,
    timeline: &Timeline,
    at_frame_start: bool,
) -> bool {
    let Some(current) = sink.peer() else { return true };
    if current == *pad {
        return true;
    }
    match (ssrc_of(&current), ssrc_of(pad)) {
        (Some(old), Some(new)) if old != new => {
            // Tried even when `old` stopped: what both received before still pairs them.
            let inherited = timeline.inherit(new, old);
            !timeline.is_delivering(old)
                || (at_frame_start && splice.between_frames() && (inherited || timeline.is_timed(new)))
        }
        _ => true,
    }
}

fn ssrc_of(pad: &gst::Pad) -> Option<u32> {
    pad.current_caps()?.structure(0)?.get::<u32>("ssrc").ok()
}

/// The RTP header fields egret reads (timing, handover).
pub struct Header {
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

pub fn rtp_header(buffer: &gst::BufferRef) -> Option<Header> {
    let map = buffer.map_readable().ok()?;
    (map.len() >= 12).then(|| Header {
        marker: map[1] & 0x80 != 0,
        seq: u16::from_be_bytes([map[2], map[3]]),
        timestamp: u32::from_be_bytes([map[4], map[5], map[6], map[7]]),
        ssrc: u32::from_be_bytes([map[8], map[9], map[10], map[11]]),
    })
}

/// A fingerprint of an RTP packet's payload (0 for none), to find the same packet among
/// another connection's: livekit-server sends each publisher packet to every subscriber with
/// the same payload but its own SSRC, sequence numbers and timestamps. Only the payload's
/// second half (its last 32 bytes at most) counts: the server rewrites a VP8 payload's
/// descriptor (picture ids) per subscriber, in its first 6 bytes.
pub fn payload_fingerprint(buffer: &gst::BufferRef) -> u64 {
    let Ok(map) = buffer.map_readable() else { return 0 };
    let Some(payload) = rtp_payload(&map) else { return 0 };
    if payload.is_empty() {
        return 0; // padding: each subscriber's own
    }
    let tail = &payload[(payload.len() / 2).max(payload.len().saturating_sub(32))..];
    // FNV-1a, with the length of a short one: short packets (DTX silence) are often alike.
    let hash = tail
        .iter()
        .chain(&(payload.len().min(64) as u32).to_be_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    hash.max(1)
}

/// An RTP packet's payload: after its CSRCs and header extension, without its padding.
fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    let mut start = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let padding = if first & 0x20 != 0 { usize::from(*packet.last()?) } else { 0 };
    packet.get(start..packet.len().checked_sub(padding)?)
}

/// Tells, packet by packet, whether a packet begins a frame: its timestamp differs from the
/// packet before it (every packet of one frame carries the frame's timestamp).
#[derive(Default)]
pub struct FrameEdges {
    previous: Mutex<Option<u32>>,
}

impl FrameEdges {
    pub fn starts_frame(&self, buffer: &gst::BufferRef) -> bool {
        let Some(header) = rtp_header(buffer) else { return false };
        let previous = self.previous.lock().unwrap().replace(header.timestamp);
        previous.is_some_and(|p| p != header.timestamp)
    }
}

/// What a waiting pad received (already placed on the timeline) in the last second.
#[derive(Default)]
pub struct Backlog {
    packets: Mutex<VecDeque<gst::Buffer>>,
}

const BACKLOG: gst::ClockTime = gst::ClockTime::SECOND;

impl Backlog {
    pub fn keep(&self, buffer: gst::Buffer) {
        let mut packets = self.packets.lock().unwrap();
        let newest = buffer.pts();
        packets.push_back(buffer);
        while packets.len() > 2000
            || packets.front().and_then(|b| b.pts()).zip(newest).is_some_and(|(old, new)| old + BACKLOG < new)
        {
            packets.pop_front();
        }
    }

    pub fn take(&self) -> Vec<gst::Buffer> {
        std::mem::take(&mut *self.packets.lock().unwrap()).into()
    }

    pub fn clear(&self) {
        self.packets.lock().unwrap().clear();
    }
}

thread_local! {
    static REPLAYING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread pushes packets again that went through the pad's probes already.
pub fn replaying() -> bool {
    REPLAYING.with(Cell::get)
}

/// Pushes `packets` from `pad` (just linked) again: its sticky events go first, and its
/// probes let them through untouched (`replaying`).
pub fn replay(pad: &gst::Pad, packets: Vec<gst::Buffer>) {
    REPLAYING.with(|r| r.set(true));
    for packet in packets {
        if pad.push(packet).is_err() {
            break;
        }
    }
    REPLAYING.with(|r| r.set(false));
}

/// What a probe returns for an item it throws away. gstreamer-rs takes the item out of the
/// probe's info, so with `Drop` GStreamer unreffed a NULL after it (a `GStreamer-CRITICAL`
/// for each event, 25-35 per takeover); `Handled` tells it the probe consumed the item.
pub const DISCARD: gst::PadProbeReturn = gst::PadProbeReturn::Handled;

/// Two connections place the same frame within ~1.5 ms of each other (`Timeline::inherit`);
/// frames and audio packets are 10 ms apart or more.
const SAME_FRAME: gst::ClockTime = gst::ClockTime::from_mseconds(5);

/// One consumer's RTP stream across the pads that feed it in turn.
pub struct Splice {
    state: Mutex<SpliceState>,
}

#[derive(Default)]
struct SpliceState {
    source: Option<gst::Pad>,
    /// The running time of the last frame delivered whole (a video packet with the marker
    /// bit, any audio packet), and whether the last packet ended one.
    last_whole: Option<gst::ClockTime>,
    between_frames: bool,
    /// Between the last two whole frames.
    frame_interval: Option<gst::ClockTime>,
    /// Set at a change of source: frames up to here are repeats.
    floor: Option<gst::ClockTime>,
    /// The new source's sequence number of the last repeat it dropped.
    last_repeat: Option<u16>,
    /// The stream as the consumer sees it: the first source's SSRC, its numbering.
    ssrc: Option<u32>,
    next_seq: Option<u16>,
    seq_shift: u16,
    /// Whether the consumer takes audio (each packet a whole frame), from its caps.
    audio: Option<bool>,
}

impl Splice {
    /// Watches what reaches `sink`.
    pub fn attach(sink: &gst::Pad) -> Arc<Splice> {
        let splice = Arc::new(Splice { state: Mutex::new(SpliceState { between_frames: true, ..Default::default() }) });
        let watching = splice.clone();
        sink.add_probe(gst::PadProbeType::BUFFER, move |pad, info| watching.on_packet(pad, info));
        // Each connection's pad starts its own stream (a new stream-id). Passed on, it made a
        // decoder drain and flush at the takeover: FFmpeg's H.264 decoder lost its reference
        // pictures and drew grey for the 0.3-0.6 s until the next keyframe. It is one stream.
        sink.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |pad, info| {
            let is_stream_start =
                matches!(&info.data, Some(gst::PadProbeData::Event(e)) if e.type_() == gst::EventType::StreamStart);
            if is_stream_start && pad.sticky_event::<gst::event::StreamStart>(0).is_some() {
                return DISCARD;
            }
            gst::PadProbeReturn::Ok
        });
        splice
    }

    pub fn between_frames(&self) -> bool {
        self.state.lock().unwrap().between_frames
    }

    fn on_packet(&self, pad: &gst::Pad, info: &mut gst::PadProbeInfo) -> gst::PadProbeReturn {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let Some(header) = rtp_header(buffer) else { return gst::PadProbeReturn::Ok };
        let Some(running) = running_time(pad, buffer) else { return gst::PadProbeReturn::Ok };
        let source = pad.peer();
        let mut state = self.state.lock().unwrap();
        let audio = *state.audio.get_or_insert_with(|| {
            pad.current_caps()
                .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
                .is_some_and(|m| m == "audio")
        });
        if state.source != source {
            state.floor = state.last_whole;
            state.last_repeat = None;
            state.source = source;
        }
        let (mut spliced, mut missing) = (false, false);
        if let Some(floor) = state.floor {
            if running <= floor + SAME_FRAME {
                state.last_repeat = Some(header.seq);
                return DISCARD;
            }
            state.floor = None;
            if let Some(next) = state.next_seq {
                state.seq_shift = next.wrapping_sub(header.seq);
            }
            spliced = true;
            // Frames the old connection never delivered and the new one came too late for:
            // the depayloader must know, and wait for a keyframe rather than decode deltas
            // against a picture it never had. None are if this packet follows the last repeat
            // in the new stream's own numbering. Only without a repeat to go by is it told
            // from the time since the last frame: a sender dropping frames (a busy machine)
            // spaces them unevenly, and a flash went missing after a rejoin while the
            // depayloader waited for a keyframe that was not needed.
            let follows_a_repeat = state.last_repeat.map(|seq| seq.wrapping_add(1));
            missing = !audio
                && match follows_a_repeat {
                    Some(next) => next != header.seq,
                    None => state
                        .frame_interval
                        .is_some_and(|interval| running > floor + interval + interval / 2 + SAME_FRAME),
                };
            tracing::debug!(pad = %pad.name(), ?running, ?floor, missing, "a new connection carries on from its predecessor");
        }
        let ssrc = *state.ssrc.get_or_insert(header.ssrc);
        let seq = header.seq.wrapping_add(state.seq_shift);
        state.next_seq = Some(seq.wrapping_add(1));
        let whole = audio || header.marker;
        state.between_frames = whole;
        if whole {
            if let Some(last) = state.last_whole.filter(|last| running > *last) {
                state.frame_interval = Some(running - last);
            }
            state.last_whole = Some(state.last_whole.map_or(running, |last| last.max(running)));
        }
        drop(state);
        if spliced || ssrc != header.ssrc || seq != header.seq {
            let Some(buffer) = info.buffer_mut() else { return gst::PadProbeReturn::Ok };
            let buffer = buffer.make_mut();
            if missing {
                buffer.set_flags(gst::BufferFlags::DISCONT);
            } else if spliced {
                buffer.unset_flags(gst::BufferFlags::DISCONT);
            }
            if let Ok(mut map) = buffer.map_writable() {
                map[2..4].copy_from_slice(&seq.to_be_bytes());
                map[8..12].copy_from_slice(&ssrc.to_be_bytes());
            }
        }
        gst::PadProbeReturn::Ok
    }
}

fn running_time(pad: &gst::Pad, buffer: &gst::BufferRef) -> Option<gst::ClockTime> {
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    segment.segment().downcast_ref::<gst::ClockTime>()?.to_running_time(buffer.pts()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RTP of one video packet per frame (marker set), timed by `pts_ms`.
    fn packet(seq: u16, ssrc: u32, pts_ms: u64) -> gst::Buffer {
        let mut data = vec![0x80, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa];
        data[2..4].copy_from_slice(&seq.to_be_bytes());
        data[4..8].copy_from_slice(&((pts_ms * 90) as u32).to_be_bytes());
        data[8..12].copy_from_slice(&ssrc.to_be_bytes());
        let mut buffer = gst::Buffer::from_mut_slice(data);
        buffer.get_mut().unwrap().set_pts(gst::ClockTime::from_mseconds(pts_ms));
        buffer
    }

    /// A connection's pad, linked to `sink`, with its stream's sticky events sent.
    fn source(ssrc: u32, sink: &gst::Pad) -> gst::Pad {
        let pad = gst::Pad::builder(gst::PadDirection::Src).build();
        pad.set_active(true).unwrap();
        pad.link(sink).unwrap();
        let caps = gst::Caps::builder("application/x-rtp").field("media", "video").field("ssrc", ssrc).build();
        let segment = gst::FormattedSegment::<gst::ClockTime>::new();
        for event in [
            gst::event::StreamStart::new(&format!("s{ssrc}")),
            gst::event::Caps::new(&caps),
            gst::event::Segment::new(&segment),
        ] {
            let name = event.type_();
            assert!(pad.push_event(event), "{name:?} refused");
        }
        pad
    }

    /// (sequence number, SSRC, DISCONT) of each packet the consumer got.
    type Got = Arc<Mutex<Vec<(u16, u32, bool)>>>;

    fn consumer() -> (gst::Pad, Got) {
        let got: Got = Arc::default();
        let into = got.clone();
        // Any caps: each connection's stream has its own SSRC.
        let template =
            gst::PadTemplate::new("sink", gst::PadDirection::Sink, gst::PadPresence::Always, &gst::Caps::new_any())
                .unwrap();
        let sink = gst::Pad::builder_from_template(&template)
            .chain_function(move |_, _, buffer| {
                let header = rtp_header(&buffer).unwrap();
                into.lock().unwrap().push((
                    header.seq,
                    header.ssrc,
                    buffer.flags().contains(gst::BufferFlags::DISCONT),
                ));
                Ok(gst::FlowSuccess::Ok)
            })
            .build();
        sink.set_active(true).unwrap();
        (sink, got)
    }

    /// The old connection delivers frames up to 200 ms, unevenly spaced (a sender dropping
    /// frames); the new one repeats the last two, then goes on 67 ms later. Nothing is
    /// missing, so no DISCONT (which makes the depayloader drop frames until a keyframe);
    /// the consumer sees one stream: the old SSRC, sequence numbers going on. When the new
    /// stream itself skipped a packet after its repeats, the consumer is told.
    #[test]
    fn a_new_connection_carries_on_without_a_needless_keyframe_wait() {
        crate::media::init_for_tests();
        for (skip, expect_discont) in [(0u16, false), (1, true)] {
            let (sink, got) = consumer();
            let _splice = Splice::attach(&sink);
            let old = source(1111, &sink);
            for (i, at) in [0u64, 33, 67, 133, 167, 200].into_iter().enumerate() {
                assert!(old.push(packet(500 + i as u16, 1111, at)).is_ok());
            }
            old.unlink(&sink).unwrap();
            let new = source(2222, &sink);
            for (seq, at) in [(70u16, 167u64), (71, 200), (72 + skip, 267), (73 + skip, 300)] {
                let pushed = new.push(packet(seq, 2222, at));
                assert!(pushed.is_ok(), "packet {seq}: {pushed:?}");
            }
            let got = got.lock().unwrap();
            let numbers: Vec<u16> = got.iter().map(|p| p.0).collect();
            assert_eq!(numbers, [500, 501, 502, 503, 504, 505, 506, 507], "repeats dropped, numbering goes on");
            assert!(got.iter().all(|p| p.1 == 1111), "one SSRC: {got:?}");
            assert_eq!(got[6].2, expect_discont, "skipped {skip}: {got:?}");
        }
    }
}
