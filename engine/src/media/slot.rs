//! Slots: a video or audio input that never stops. Black (or silence) runs underneath;
//! tracks are attached on top and detached as they come and go, so the encoder and every
//! output see one unbroken stream whatever the room does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::encoder::Codec;
use super::track::{self, TrackChain};
use super::{MediaKind, MediaPad, add_chain, capsfilter, make, sync_states};

/// Decoded WebRTC frames carry no duration. The mixer cannot tell when such a frame ends
/// until the next one is queued, so which output frame shows it depends on whether its
/// successor arrived before the output deadline: now and then a frame came out one frame
/// late (a flash read 33 ms off its beep) or not at all.
///
/// The duration given is 1 ms, not a frame: the mixer takes one queued frame per output
/// frame, the next one as soon as it overlaps the output frame at all, so a frame lasting a
/// whole frame could be shown in either of the two output frames it overlaps, whichever the
/// queue's history gave. The choice then latched at a stream's first frame and flipped at a
/// gap (a rejoin's takeover moved pictures 33 ms against their sound). A frame of 1 ms
/// overlaps only the output frame its start falls in. The last frame stays on screen until a
/// newer one comes.
fn give_frames_a_duration(pad: &gst::Pad) {
    let frame = gst::ClockTime::from_mseconds(1);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer_mut()
            && buffer.duration().is_none()
        {
            buffer.make_mut().set_duration(frame);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Opus's algorithmic delay at 48 kHz: 312 samples (its standard pre-skip).
const OPUS_LOOKAHEAD_NS: i64 = 312 * 1_000_000_000 / 48_000;

/// The mixer flags a buffer GAP when no track filled it (an empty room, a track silent
/// with DTX whose packets came after the mixer's deadline). Downstream, audioresample
/// (48 → 44.1 kHz for AAC) resets its filter at every change between GAP and sound, and its
/// output skips the filter's length each time: 66 samples, 1.5 ms of timeline, which the
/// AAC encoder stamped back to back. A participant beeping once a second out of DTX silence
/// drifted 1.5 ms a second from its picture (+60 ms after 32 s). The mixer fills a GAP
/// buffer with silence: it goes on as the silence it is.
fn silence_is_not_a_gap(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(buffer) = info.buffer_mut()
            && buffer.flags().contains(gst::BufferFlags::GAP)
        {
            buffer.make_mut().unset_flags(gst::BufferFlags::GAP);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Tracks arrive through webrtcbin's jitter buffer and a decoder; the mixers wait this long
/// for them even though only the always-on base source exists at the start. Packets behind a
/// lost one are held until the jitter buffer gives it up, its whole latency after it was
/// due: the mixers wait that long and 100 ms more for decoding, else what the jitter buffer
/// held would come after the mixer had moved on and be dropped with the lost packet.
const TRACK_LATENCY_NS: u64 = (track::JITTER_LATENCY_MS as u64 + 100) * 1_000_000;

pub struct Slot {
    pub kind: MediaKind,
    pub(super) mixer: gst::Element,
    /// The always-on source under the tracks (black, silence, or a canvas's background).
    pub(super) base: gst::Element,
    /// The mixer's pad of the base.
    pub(super) base_pad: gst::Pad,
    pub output: MediaPad,
    pub(super) attached: HashMap<String, Attached>,
    /// The frame size tracks are scaled into (video).
    pub(super) size: (i32, i32),
    pub(super) fps: i32,
    /// Half an output frame (video): see `attach`.
    half_frame_ns: i64,
    /// Set by `arrange` (a canvas): tracks attached later stay hidden until placed.
    pub(super) arranged: bool,
    /// A canvas's name cards, and their output pads, which end when the base does.
    pub(super) cards: HashMap<super::canvas::CardKey, super::canvas::Card>,
    pub(super) card_ends: super::canvas::CardEnds,
    /// Unset once the output is linked and the slot runs; track chains attached before wait
    /// in `pending` (pushing into a mixer that is not running would stop them for good).
    pub(super) running: Arc<Mutex<Option<Vec<gst::Element>>>>,
    /// What waits for the slot to run (a track's RTP routed to it: RTP pushed into a chain
    /// that is not running yet would stop its source for good).
    waiting: Arc<Mutex<Vec<Deferred>>>,
}

pub type Deferred = Box<dyn FnOnce() + Send>;

/// A track on the slot: its decoding chain and its mixer pad; `crop` (video) makes a camera
/// cover its tile (see `canvas`).
pub(super) struct Attached {
    chain: TrackChain,
    pub(super) pad: gst::Pad,
    pub(super) crop: Option<super::canvas::Crop>,
}

/// The video base's frame side (see `Slot::video`).
const BASE_SIZE: i32 = 16;

const AUDIO_CAPS: &str = "audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=2";

/// Where a track's sound goes in a stereo audio slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// As the track is (its stereo kept).
    Both,
    /// Downmixed to mono, in the left channel only.
    Left,
    /// Downmixed to mono, in the right channel only.
    Right,
}

impl Channel {
    pub fn parse(name: &str) -> Option<Channel> {
        match name {
            "both" => Some(Channel::Both),
            "left" => Some(Channel::Left),
            "right" => Some(Channel::Right),
            _ => None,
        }
    }
}

impl Slot {
    /// A video slot of `width`x`height` at `fps`, black while empty.
    pub fn video(pipeline: &gst::Pipeline, width: u32, height: u32, fps: u32) -> Result<Slot> {
        let caps = format!("video/x-raw,format=I420,width={width},height={height},framerate={fps}/1");
        // The base only keeps the mix live and timed: a tiny frame the compositor skips (alpha
        // 0); the compositor's own background shows under the tiles. A full-frame base cost
        // 8 % of a core at 720p30 in the blend alone.
        let base_caps = format!("video/x-raw,format=I420,width={BASE_SIZE},height={BASE_SIZE},framerate={fps}/1");
        let base = make("videotestsrc", None)?;
        base.set_property("is-live", true);
        base.set_property_from_str("pattern", "black");
        let mixer = make("compositor", None)?;
        mixer.set_property_from_str("background", "black");
        let size = (width as i32, height as i32);
        let mut slot = Self::build(pipeline, MediaKind::Video, base, (&base_caps, &caps), mixer, size)?;
        slot.fps = fps.max(1) as i32;
        super::canvas::hide(&slot.base_pad);
        if let Some(base_out) = slot.base.static_pad("src") {
            super::canvas::end_cards_with(&base_out, &slot.card_ends);
        }
        slot.half_frame_ns = 500_000_000 / i64::from(fps.max(1));
        Ok(slot)
    }

    /// A stereo 48 kHz audio slot, silent while empty.
    pub fn audio(pipeline: &gst::Pipeline) -> Result<Slot> {
        let base = make("audiotestsrc", None)?;
        base.set_property("is-live", true);
        base.set_property_from_str("wave", "silence");
        // 10 ms buffers: the mixer's output granularity follows its inputs.
        base.set_property("samplesperbuffer", 480i32);
        let mixer = make("audiomixer", None)?;
        // The mixer counts samples and follows a track's timestamps only once they are more
        // than `alignment-threshold` off for `discont-wait`: at its defaults (40 ms for 1 s) a
        // track's first, arrival-timed buffer fixes its place, up to 40 ms off its video for
        // good. Tracks are timed from sender reports (smooth to the sample): follow them.
        mixer.set_property("alignment-threshold", 10_000_000u64);
        mixer.set_property("discont-wait", 200_000_000u64);
        let slot = Self::build(pipeline, MediaKind::Audio, base, (AUDIO_CAPS, AUDIO_CAPS), mixer, (0, 0))?;
        silence_is_not_a_gap(&slot.output.pad);
        Ok(slot)
    }

    fn build(
        pipeline: &gst::Pipeline,
        kind: MediaKind,
        base: gst::Element,
        (base_caps, caps): (&str, &str),
        mixer: gst::Element,
        size: (i32, i32),
    ) -> Result<Slot> {
        mixer.set_property("min-upstream-latency", TRACK_LATENCY_NS);
        // A track attached but not flowing yet (or any more) must not hold the mix back.
        mixer.set_property("ignore-inactive-pads", true);
        mixer.set_property_from_str("start-time-selection", "first");
        let base_caps = capsfilter(base_caps)?;
        let out_caps = capsfilter(caps)?;
        add_chain(pipeline, &[&base, &base_caps, &mixer, &out_caps])?;
        // A test source answers latency queries only once its caps are set; asked earlier (the
        // mixer starts first), the mixer would take itself for not live and wait for every
        // input. Its base input always answers live.
        let base_pad = base_caps.static_pad("src").and_then(|p| p.peer()).expect("the base is linked to the mixer");
        track::answer_latency(&base_pad, |_| true);
        // The pipeline may play already (a room was joined): start only once the slot's output
        // is linked, else the base source would stop on not-linked.
        let pad = out_caps.static_pad("src").expect("capsfilter src");
        let pending =
            Arc::new(Mutex::new(Some(vec![base.clone(), base_caps.clone(), mixer.clone(), out_caps.clone()])));
        let start = pending.clone();
        let waiting: Arc<Mutex<Vec<Deferred>>> = Arc::default();
        let ready = waiting.clone();
        pad.connect_linked(move |_, _| {
            tracing::debug!(?kind, "slot output linked");
            let mut elements = start.lock().unwrap();
            if let Some(elements) = elements.take() {
                // The mixer and its base first, then the tracks' chains (each downstream
                // first): nothing pushes into an element that is not running yet.
                let (own, tracks) = elements.split_at(4);
                sync_states(&own.iter().collect::<Vec<_>>());
                sync_states(&tracks.iter().collect::<Vec<_>>());
            }
            // Off this streaming-side callback: what waited may link pads of its own.
            let deferred = std::mem::take(&mut *ready.lock().unwrap());
            if !deferred.is_empty() {
                std::thread::spawn(move || deferred.into_iter().for_each(|f| f()));
            }
        });
        let output = MediaPad { kind, pad };
        Ok(Slot {
            kind,
            mixer,
            base,
            base_pad,
            output,
            attached: HashMap::new(),
            size,
            fps: 0,
            half_frame_ns: 0,
            arranged: false,
            cards: HashMap::new(),
            card_ends: Default::default(),
            running: pending,
            waiting,
        })
    }

    /// Keeps `f` until the slot runs; gives it back when the slot runs already (for the
    /// caller to run once it holds no lock).
    pub fn when_running(&self, f: Deferred) -> Option<Deferred> {
        let running = self.running.lock().unwrap();
        if running.is_none() {
            return Some(f);
        }
        // Queued under the `running` lock: the linked callback takes both in this order.
        self.waiting.lock().unwrap().push(f);
        None
    }

    /// Decodes track `sid` onto the slot; returns the pad its RTP must reach.
    /// `channel` places an audio track's sound (video tracks ignore it).
    pub fn attach(&mut self, pipeline: &gst::Pipeline, sid: &str, codec: Codec, channel: Channel) -> Result<gst::Pad> {
        if self.attached.contains_key(sid) {
            return Err(anyhow!("track {sid} is already on this slot"));
        }
        let chain = track::decode(pipeline, codec)?;
        let mut tail = vec![];
        if self.kind == MediaKind::Audio {
            if channel != Channel::Both {
                // Mono, then all of it to one side ("simple" panning at ±1 silences the
                // other channel and leaves this one at full level).
                tail.push(capsfilter("audio/x-raw,format=S16LE,layout=interleaved,rate=48000,channels=1")?);
                let pan = make("audiopanorama", None)?;
                pan.set_property_from_str("method", "simple");
                pan.set_property("panorama", if channel == Channel::Left { -1.0f32 } else { 1.0f32 });
                tail.push(pan);
            }
            tail.push(capsfilter(AUDIO_CAPS)?);
        }
        // On a canvas only (a slot already arranged): a camera cropped to cover its tile. A
        // slot showing one track full-frame keeps its chain as short as it was.
        let crop =
            if self.kind == MediaKind::Video && self.arranged { Some(super::canvas::Crop::new()?) } else { None };
        if let Some(crop) = &crop {
            tail.push(crop.element().clone());
        }
        let refs: Vec<&gst::Element> = tail.iter().collect();
        if !tail.is_empty() {
            pipeline.add_many(&refs)?;
            chain.src.link(&tail[0].static_pad("sink").expect("sink"))?;
            gst::Element::link_many(&refs)?;
        }
        let src = tail.last().map(|e| e.static_pad("src").expect("src")).unwrap_or_else(|| chain.src.clone());
        let pad = self.mixer.request_pad_simple("sink_%u").ok_or_else(|| anyhow!("the mixer refused a pad"))?;
        if self.kind == MediaKind::Video {
            // Above the black base, scaled to fill the frame without distortion; on a
            // canvas, hidden until its layout places it.
            pad.set_property("zorder", 1u32);
            let (w, h) = self.size;
            pad.set_property("width", w);
            pad.set_property("height", h);
            pad.set_property_from_str("sizing-policy", "keep-aspect-ratio");
            if self.arranged {
                super::canvas::hide(&pad);
            }
            // The mixer shows, in the output frame starting at T, the newest input frame that
            // starts before T + one frame: a picture comes out up to a frame early (half a
            // frame on average) against its sound. Half a frame later, it is off by at most
            // half a frame either way, on average not at all. (Set on the pushing side: the
            // mixer's own pads do not apply an offset.)
            // Room sound is Opus, whose decoder gives each sample 312 samples (6.5 ms) after
            // the encoder took it (its lookahead; RTP does not say so, and WebRTC senders do
            // not shift their timestamps for it): pictures wait as long.
            src.set_offset(self.half_frame_ns + OPUS_LOOKAHEAD_NS);
            give_frames_a_duration(&src);
        }
        // The track's latency is covered by the mixer's minimum: its answer must not depend
        // on whether the track flows yet (a failed query makes an aggregator non-live).
        track::answer_latency(&pad, |_| true);
        src.link(&pad)?;
        let sink = chain.sink.clone();
        let mut elements = chain.elements;
        elements.extend(tail);
        let chain = TrackChain { elements, sink: sink.clone(), src };
        match self.running.lock().unwrap().as_mut() {
            Some(pending) => pending.extend(chain.elements.iter().cloned()),
            None => chain.start(),
        }
        self.attached.insert(sid.to_string(), Attached { chain, pad, crop });
        Ok(sink)
    }

    /// Takes track `sid` off the slot (its RTP must be unrouted first).
    pub fn detach(&mut self, pipeline: &gst::Pipeline, sid: &str) -> bool {
        let Some(attached) = self.attached.remove(sid) else { return false };
        attached.chain.remove(pipeline);
        self.mixer.release_request_pad(&attached.pad);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::encoding::AudioCodec;
    use gstreamer_app as gst_app;

    /// A track attached to a running audio slot joins its one unbroken stream: every output
    /// buffer follows the previous one exactly (no gap, no overlap), silence before the track
    /// and its tone after. The track is real Opus RTP (audiotestsrc → opusenc → rtpopuspay),
    /// as webrtcbin would hand it over.
    #[test]
    fn a_track_joins_the_audio_slot_without_a_gap() {
        let _alone = crate::media::LIVE_PIPELINE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        crate::media::init_for_tests();
        let pipeline = gst::Pipeline::new();
        let mut slot = Slot::audio(&pipeline).unwrap();
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline.add(&sink).unwrap();
        // Linked first: started with its output unlinked, the slot's silence met no peer and
        // stopped with not-linked (2 runs in 3 of the whole suite on a busy machine).
        slot.output.pad.link(&sink.static_pad("sink").unwrap()).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();

        let pull = |n: usize| -> Vec<(u64, u64, i16)> {
            (0..n)
                .map(|_| {
                    let sample = sink.try_pull_sample(gst::ClockTime::from_seconds(10)).unwrap_or_else(|| {
                        let bus = pipeline.bus().unwrap();
                        let problems: Vec<String> = std::iter::from_fn(|| bus.pop())
                            .filter(|m| matches!(m.view(), gst::MessageView::Error(_) | gst::MessageView::Warning(_)))
                            .map(|m| format!("{m:?}"))
                            .collect();
                        panic!("the slot stopped flowing: {problems:?}")
                    });
                    let buffer = sample.buffer().unwrap();
                    let map = buffer.map_readable().unwrap();
                    let peak = map.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]]).saturating_abs()).max();
                    // Silence goes on as silence, not as a GAP (see `silence_is_not_a_gap`).
                    assert!(!buffer.flags().contains(gst::BufferFlags::GAP), "a GAP buffer left the slot");
                    (buffer.pts().unwrap().nseconds(), buffer.duration().unwrap().nseconds(), peak.unwrap_or(0))
                })
                .collect()
        };
        let before = pull(20);
        assert!(before.iter().all(|b| b.2 == 0), "silent while empty");

        let track_sink = slot.attach(&pipeline, "TR_tone", Codec::Audio(AudioCodec::Opus), Channel::Both).unwrap();
        let source: Vec<gst::Element> =
            [("audiotestsrc", true), ("audioconvert", false), ("opusenc", false), ("rtpopuspay", false)]
                .iter()
                .map(|(name, live)| {
                    let e = make(name, None).unwrap();
                    if *live {
                        e.set_property("is-live", true);
                        e.set_property("volume", 0.5f64);
                    }
                    e
                })
                .collect();
        let refs: Vec<&gst::Element> = source.iter().collect();
        add_chain(&pipeline, &refs).unwrap();
        source.last().unwrap().static_pad("src").unwrap().link(&track_sink).unwrap();
        sync_states(&refs);

        let after = pull(150);
        let all: Vec<_> = before.iter().chain(&after).collect();
        for pair in all.windows(2) {
            let (pts, duration, _) = *pair[0];
            assert_eq!(pair[1].0, pts + duration, "the stream is unbroken: {:?} then {:?}", pair[0], pair[1]);
        }
        assert!(after.iter().rev().take(30).all(|b| b.2 > 1000), "the track's tone is mixed in");
        pipeline.set_state(gst::State::Null).unwrap();
    }
}
