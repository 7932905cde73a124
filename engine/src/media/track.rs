//! The track primitive: a room track's encoded RTP → depayloader, then either straight to
//! the outputs (copy, no transcoding) or through a decoder for the encoder.
//! The jitter buffer is webrtcbin's (its `latency`, `JITTER_LATENCY_MS`).

use anyhow::{Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::encoder::Codec;
use super::{add_chain, make, queue, sync_states};
use crate::request::encoding::{AudioCodec, VideoCodec};

/// How long a room track's jitter buffer waits for a missing packet, in ms. It also decides
/// at once, with no wait, that a missing packet is lost when its guessed due time is older
/// than this, and it guesses that time from the packets' spacing, not their RTP times: for
/// the first packet after DTX silence (the sender sends one packet in 400 ms while silent),
/// the guess is just after the silence's last packet. With 200 ms, any reordering at the
/// start of a sound threw its first packets away: under 50 ± 30 ms of network jitter, 1-4 of
/// the 20 beeps of a participant's file lost 5-66 ms of their start (their onset read up to
/// +79 ms against the picture). Above the DTX spacing and a few reordered packets, none is.
pub const JITTER_LATENCY_MS: u32 = 500;

/// The codecs egret can take from a room, by LiveKit's codec name (`h264`, `vp8`, `vp9`, `opus`).
pub fn codec(name: &str) -> Result<Codec> {
    Ok(match name {
        "h264" => Codec::Video(VideoCodec::H264),
        "vp8" => Codec::Video(VideoCodec::Vp8),
        "vp9" => Codec::Video(VideoCodec::Vp9),
        "opus" => Codec::Audio(AudioCodec::Opus),
        other => bail!("tracks in {other} are not supported (H.264, VP8, VP9 and Opus are)"),
    })
}

/// (queue →) depayloader (→ parser): the first element takes RTP, the last gives the codec's
/// stream. Depayloaders wait for a keyframe and ask for one after a loss. With `own_thread`,
/// a queue first: what follows runs in a thread of its own rather than the jitter buffer's.
fn depay_chain(codec: Codec, own_thread: bool) -> Result<Vec<gst::Element>> {
    let mut chain = if own_thread { vec![queue(2, false)?] } else { Vec::new() };
    match codec {
        Codec::Video(VideoCodec::H264) => {
            let depay = make("rtph264depay", None)?;
            depay.set_property("request-keyframe", true);
            depay.set_property("wait-for-keyframe", true);
            chain.push(depay);
            let parse = make("h264parse", None)?;
            // SPS/PPS before every keyframe: a file or stream joined late still decodes.
            parse.set_property("config-interval", -1i32);
            chain.push(parse);
        }
        Codec::Video(VideoCodec::Vp8) => {
            let depay = make("rtpvp8depay", None)?;
            depay.set_property("request-keyframe", true);
            depay.set_property("wait-for-keyframe", true);
            chain.push(depay);
        }
        Codec::Video(VideoCodec::Vp9) => {
            let depay = make("rtpvp9depay", None)?;
            depay.set_property("request-keyframe", true);
            depay.set_property("wait-for-keyframe", true);
            chain.push(depay);
            // Caps with the frame size (from the keyframes), which matroskamux needs.
            chain.push(make("vp9parse", None)?);
        }
        Codec::Audio(AudioCodec::Opus) => {
            let depay = make("rtpopusdepay", None)?;
            ignore_lost_packet_events(&depay.static_pad("sink").expect("rtpopusdepay sink"));
            chain.push(depay);
            let parse = make("opusparse", None)?;
            fill_dtx_gaps(&parse.static_pad("src").expect("opusparse src"));
            chain.push(parse);
        }
        Codec::Audio(AudioCodec::Aac) => bail!("LiveKit tracks are never AAC"),
    }
    if let (Codec::Video(_), Some(last)) = (codec, chain.last()) {
        drop_end_of_track_filler(&last.static_pad("src").expect("src pad"));
    }
    Ok(chain)
}

/// The jitter buffer reports a packet it gave up on with an event the depayloader turns into
/// a GAP, timed by the packet's expected arrival and lasting its estimate of the packets'
/// spacing. Next to DTX silence (a packet every 400 ms) that estimate is 0.25-0.4 s, and the
/// arrival time is not the session timeline the packets are placed on (see
/// `livekit::timeline`): the decoder concealed up to 400 ms of sound at the wrong place, over
/// the packets that came next. A lost Opus packet leaves a hole in the RTP timestamps, which
/// `fill_dtx_gaps` fills with concealment at the right time.
fn ignore_lost_packet_events(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, |_, info| match &info.data {
        Some(gst::PadProbeData::Event(event))
            if event.type_() == gst::EventType::CustomDownstream
                && event.structure().is_some_and(|s| s.name() == "GstRTPPacketLost") =>
        {
            crate::livekit::DISCARD
        }
        _ => gst::PadProbeReturn::Ok,
    });
}

/// livekit-server ends a video track it stops forwarding (unpublished, the subscription
/// closed) with a few tiny blank keyframes (2×2 for H.264, 8×8 for VP8). Passed on, they
/// changed the stream's picture size at its very end: an MP4 writer refused the change
/// ("not-negotiated"), which stopped webrtcbin's transport and failed the egress instead of
/// completing it. Pictures of 16×16 or less, with their caps, are dropped.
fn drop_end_of_track_filler(pad: &gst::Pad) {
    let filler = std::sync::atomic::AtomicBool::new(false);
    pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        use std::sync::atomic::Ordering::Relaxed;
        match &info.data {
            Some(gst::PadProbeData::Event(event)) => {
                let gst::EventView::Caps(caps) = event.view() else { return gst::PadProbeReturn::Ok };
                let size = caps
                    .caps()
                    .structure(0)
                    .and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)));
                let tiny = size.is_some_and(|(w, h)| w <= 16 && h <= 16);
                filler.store(tiny, Relaxed);
                if tiny {
                    tracing::debug!(?size, "LiveKit's end-of-track filler dropped");
                    return crate::livekit::DISCARD;
                }
                gst::PadProbeReturn::Ok
            }
            Some(gst::PadProbeData::Buffer(_)) if filler.load(Relaxed) => crate::livekit::DISCARD,
            _ => gst::PadProbeReturn::Ok,
        }
    });
}

/// Senders using DTX (browsers do) send nothing while silent, so Opus packets come with
/// gaps in their timestamps. Downstream counts samples, not timestamps: an OGG file would
/// shrink and a decoder would drift against the video. Each gap is filled with empty Opus
/// frames (a zero-length frame is a valid packet that decodes as silence/concealment).
fn fill_dtx_gaps(pad: &gst::Pad) {
    let next = std::sync::Mutex::new(None::<gst::ClockTime>);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
        let (Some(pts), Some(frame)) = (buffer.pts(), buffer.duration()) else { return gst::PadProbeReturn::Ok };
        if buffer.flags().contains(gst::BufferFlags::GAP) {
            return gst::PadProbeReturn::Ok; // one of ours
        }
        let toc = buffer.map_readable().ok().and_then(|m| m.first().copied());
        let mut expected = next.lock().unwrap().replace(pts + frame);
        if let (Some(at), Some(toc)) = (expected.as_mut(), toc)
            && frame > gst::ClockTime::ZERO
        {
            // One zero-length frame of the same mode per missing frame (code 0: one frame).
            while *at + frame / 2 < pts {
                let mut filler = gst::Buffer::from_slice([toc & 0xfc]);
                let b = filler.get_mut().expect("new buffer");
                b.set_pts(*at);
                b.set_duration(frame);
                b.set_flags(gst::BufferFlags::GAP);
                if pad.push(filler).is_err() {
                    break;
                }
                *at += frame;
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Until its track arrives, a chain's input has no peer and a latency query through it would
/// fail; a mixer whose query fails believes it is not live and waits for every input, so
/// one absent track would stall the whole egress. The chain answers for its future track.
fn live_while_unlinked(sink: &gst::Pad) {
    answer_latency(sink, |pad| pad.peer().is_none());
}

/// Answers latency queries leaving `pad` as a live source of no latency of its own, when
/// `when(pad)` holds; `min-upstream-latency` on the mixers covers the tracks' real latency.
pub fn answer_latency(pad: &gst::Pad, when: impl Fn(&gst::Pad) -> bool + Send + Sync + 'static) {
    pad.add_probe(gst::PadProbeType::QUERY_UPSTREAM, move |pad, info| {
        if when(pad)
            && let Some(gst::PadProbeData::Query(query)) = info.data.as_mut()
            && let gst::QueryViewMut::Latency(latency) = query.view_mut()
        {
            latency.set(true, gst::ClockTime::ZERO, gst::ClockTime::NONE);
            return gst::PadProbeReturn::Handled;
        }
        gst::PadProbeReturn::Ok
    });
}

/// A chain added to the pipeline: RTP goes in at `sink`, media comes out at `src`.
pub struct TrackChain {
    pub elements: Vec<gst::Element>,
    pub sink: gst::Pad,
    pub src: gst::Pad,
}

impl TrackChain {
    /// Stops and removes the chain (its input must be unlinked already).
    pub fn remove(self, pipeline: &gst::Pipeline) {
        for e in &self.elements {
            let _ = e.set_state(gst::State::Null);
        }
        let _ = pipeline.remove_many(&self.elements);
    }
}

/// Adds the chain in NULL state; the caller starts it once its output can take data.
fn build(pipeline: &gst::Pipeline, elements: Vec<gst::Element>) -> Result<TrackChain> {
    let refs: Vec<&gst::Element> = elements.iter().collect();
    add_chain(pipeline, &refs)?;
    let sink = elements[0].static_pad("sink").expect("chain sink");
    live_while_unlinked(&sink);
    let src = elements.last().expect("non-empty").static_pad("src").expect("src pad");
    Ok(TrackChain { elements, sink, src })
}

/// RTP in, the codec's own stream out: for copying without transcoding. The depayloader
/// runs in the jitter buffer's thread: a thread handoff per packet cost more than depayloading
/// it (a copied 720p track: ~250 packets a second, each woke a thread).
pub fn copy(pipeline: &gst::Pipeline, codec: Codec) -> Result<TrackChain> {
    build(pipeline, depay_chain(codec, false)?)
}

impl TrackChain {
    /// Brings the chain to the pipeline's state.
    pub fn start(&self) {
        sync_states(&self.elements.iter().collect::<Vec<_>>());
    }
}

/// RTP in, raw video (I420) or audio (S16LE 48 kHz stereo) out: for the encoder.
pub fn decode(pipeline: &gst::Pipeline, codec: Codec) -> Result<TrackChain> {
    // Decoding in the jitter buffer's thread would hold up its timers (NACKs, lost packets).
    let mut chain = depay_chain(codec, true)?;
    match codec {
        Codec::Video(VideoCodec::H264) => chain.push(make("avdec_h264", None)?),
        Codec::Video(VideoCodec::Vp8) => chain.push(make("vp8dec", None)?),
        Codec::Video(VideoCodec::Vp9) => chain.push(make("vp9dec", None)?),
        Codec::Audio(_) => {
            let dec = make("opusdec", None)?;
            // Lost packets become concealment, not gaps: the mixer's timeline stays whole.
            dec.set_property("plc", true);
            chain.push(dec);
        }
    }
    match codec {
        Codec::Video(_) => chain.push(make("videoconvert", None)?),
        Codec::Audio(_) => {
            chain.push(make("audioconvert", None)?);
            chain.push(make("audioresample", None)?);
        }
    }
    build(pipeline, chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer_app as gst_app;

    /// DTX gaps in an Opus stream are filled with empty frames at the missing timestamps, so
    /// what follows counts as many samples as time passed.
    #[test]
    fn dtx_gaps_become_timed_filler_frames() {
        crate::media::init_for_tests();
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(&gst::Caps::builder("audio/x-opus").field("channel-mapping-family", 0i32).build())
            .format(gst::Format::Time)
            .build();
        let identity = make("identity", None).unwrap();
        let sink = gst_app::AppSink::builder().sync(false).build();
        pipeline.add_many([src.upcast_ref(), &identity, sink.upcast_ref()]).unwrap();
        gst::Element::link_many([src.upcast_ref(), &identity, sink.upcast_ref()]).unwrap();
        fill_dtx_gaps(&identity.static_pad("src").unwrap());
        pipeline.set_state(gst::State::Playing).unwrap();
        let frame = gst::ClockTime::from_mseconds(20);
        // 0, 20 ms, then silence until 100 ms: three frames missing.
        for ms in [0u64, 20, 100, 120] {
            let mut buffer = gst::Buffer::from_slice([0x78u8, 0x01, 0x02]);
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(ms));
            b.set_duration(frame);
            src.push_buffer(buffer).unwrap();
        }
        src.end_of_stream().unwrap();
        let mut seen = Vec::new();
        while let Ok(sample) = sink.pull_sample() {
            let buffer = sample.buffer().unwrap();
            let filler = buffer.flags().contains(gst::BufferFlags::GAP);
            seen.push((buffer.pts().unwrap().mseconds(), filler, buffer.size()));
        }
        pipeline.set_state(gst::State::Null).unwrap();
        let expected = [
            (0, false, 3),
            (20, false, 3),
            (40, true, 1),
            (60, true, 1),
            (80, true, 1),
            (100, false, 3),
            (120, false, 3),
        ];
        assert_eq!(seen, expected);
    }
}
