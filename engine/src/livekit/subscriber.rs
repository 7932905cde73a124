//! The subscriber peer connection: a `webrtcbin` in the egress pipeline that answers the
//! server's offers and routes each track's RTP pad to whoever asked for that track.
//! A pad nobody (or nobody yet) consumes stays unlinked and drops its buffers, so webrtcbin's
//! shared transport never sees not-linked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use super::timeline::{Arrival, Timeline};
use super::{handover, rtcp};
use crate::media::track::JITTER_LATENCY_MS;
use crate::media::{make, sync_states};

const SUBSCRIBER_NAME: &str = "livekit-subscriber";

/// Subscribers replaced by a rejoin: what their elements post while they are torn down (the
/// server closing the old connection) is no news for the egress.
static RETIRED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static SUBSCRIBERS: AtomicU64 = AtomicU64::new(0);

/// A sink pad that takes a track's RTP, and its one stream across connections.
#[derive(Clone)]
struct Consumer {
    sink: gst::Pad,
    splice: Arc<handover::Splice>,
}

#[derive(Default)]
struct Routes {
    /// mid → track sid, from the offers.
    mids: HashMap<String, String>,
    /// m-line index → mid of the current offer (local candidates name both).
    mline_mids: Vec<String>,
    /// track sid → the sink pad its RTP should reach.
    sinks: HashMap<String, Consumer>,
    /// track sid → its codec's RTP encoding name (`H264`, `VP8`, `OPUS`): what the answer accepts.
    codecs: HashMap<String, String>,
    /// mid → its webrtcbin pad. The server reuses m-lines: a mid carries another track
    /// after a track was unpublished, on the same pad.
    pads: HashMap<String, gst::Pad>,
    /// The room's timeline, shared with the connections this one replaces.
    timeline: Arc<Timeline>,
}

impl Routes {
    /// Links the pad of `mid` to the sink of the track it carries now, or leaves it unlinked.
    /// A consumer another connection still feeds is taken over only `at_frame_start` (the
    /// pad's next packet begins a frame). Returns whether the pad waits to take one over.
    fn settle(&mut self, mid: &str, at_frame_start: bool) -> bool {
        let Some(pad) = self.pads.get(mid).cloned() else { return false };
        let consumer = self.mids.get(mid).and_then(|sid| self.sinks.get(sid)).cloned();
        let peer = pad.peer();
        if consumer.as_ref().is_some_and(|c| peer.as_ref() == Some(&c.sink)) {
            return false;
        }
        if let Some(peer) = peer {
            let _ = pad.unlink(&peer);
        }
        let Some(Consumer { sink, splice }) = consumer else { return false };
        if !handover::may_take_over(&pad, &sink, &splice, &self.timeline, at_frame_start) {
            return true;
        }
        // webrtcbin may give a reused m-line a new pad: the old one lets go of the consumer.
        if let Some(previous) = sink.peer() {
            let _ = previous.unlink(&sink);
        }
        if pad.link(&sink).is_err() {
            tracing::warn!(%mid, caps = ?pad.current_caps(), "a track's RTP does not fit its consumer");
        }
        false
    }

    fn settle_all(&mut self) {
        let mids: Vec<String> = self.pads.keys().cloned().collect();
        for mid in mids {
            self.settle(&mid, false);
        }
    }
}

pub struct Subscriber {
    pub webrtc: gst::Element,
    routes: Arc<Mutex<Routes>>,
    /// Woken whenever one of this subscriber's pads is linked to a consumer.
    linked: Arc<tokio::sync::Notify>,
}

impl Subscriber {
    /// Adds a webrtcbin to `pipeline`; `on_candidate(mline, mid, candidate)` gets its local
    /// ICE candidates.
    pub fn new(
        pipeline: &gst::Pipeline,
        timeline: Arc<Timeline>,
        on_candidate: impl Fn(u32, String, String) + Send + Sync + 'static,
    ) -> Result<Self> {
        let number = SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
        let webrtc = make("webrtcbin", Some(&format!("{SUBSCRIBER_NAME}-{number}")))?;
        webrtc.set_property_from_str("bundle-policy", "max-bundle");
        // Enough to reorder and retransmit on a real network, and to keep the start of a sound
        // after DTX silence (see `JITTER_LATENCY_MS`); the delay is constant.
        webrtc.set_property("latency", JITTER_LATENCY_MS);
        // Tracks are put on one timeline from the sender reports (`Timeline`): rtpbin's own
        // lip-sync pairs streams by CNAME, and LiveKit gives each track its own.
        // Lost packets are asked for again (NACK; LiveKit resends them from its cache) within
        // the jitter buffer's latency: without it one lost packet breaks a video frame, and
        // each keyframe asked for (PLI) is as likely to lose one.
        webrtc.connect("on-new-transceiver", false, |values| {
            if let Ok(transceiver) = values[1].get::<gst_webrtc::WebRTCRTPTransceiver>() {
                transceiver.set_property("do-nack", true);
            }
            None
        });
        pipeline.add(&webrtc)?;
        rtcp::tune_sessions(&webrtc, timeline.clone());
        let routes = Arc::new(Mutex::new(Routes { timeline: timeline.clone(), ..Default::default() }));
        let linked = Arc::new(tokio::sync::Notify::new());

        let r = routes.clone();
        webrtc.connect("on-ice-candidate", false, move |values| {
            let mline = values[1].get::<u32>().unwrap_or(0);
            let candidate = values[2].get::<String>().unwrap_or_default();
            let mid = r.lock().unwrap().mline_mids.get(mline as usize).cloned().unwrap_or_default();
            on_candidate(mline, mid, candidate);
            None
        });

        let r = routes.clone();
        let notify = linked.clone();
        let timeline = timeline.clone();
        webrtc.connect_pad_added(move |_, pad| {
            if pad.direction() != gst::PadDirection::Src {
                return;
            }
            let mid = pad
                .property::<Option<gst_webrtc::WebRTCRTPTransceiver>>("transceiver")
                .and_then(|t| t.mid())
                .map(|m| m.to_string())
                .unwrap_or_default();
            let mut routes = r.lock().unwrap();
            tracing::debug!(%mid, sid = ?routes.mids.get(&mid), caps = ?pad.current_caps(), "LiveKit track pad");
            // Every packet is placed, linked or not: a stream waiting to take a consumer over
            // (a rejoin) gets its clock rate and sender reports meanwhile.
            retime(pad, timeline.clone());
            // Between consumers (a track detached, a pad re-routed) a buffer would meet no
            // peer, and NOT_LINKED would stop the shared transport for every track: dropped.
            // A pad waiting for its turn (`handover::may_take_over`) is linked from here as
            // soon as it may, and carries the consumer from its next packet.
            let (waiting_routes, waiting_mid, notify_link) = (r.clone(), mid.clone(), notify.clone());
            // Taking over, it replays what it received while it waited (the old connection may
            // lag behind) and this packet, after its sticky events (`handover::replay`).
            let (edges, backlog) = (handover::FrameEdges::default(), handover::Backlog::default());
            pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, move |pad, info| {
                if handover::replaying() || pad.peer().is_some() {
                    return gst::PadProbeReturn::Ok;
                }
                let first = match &info.data {
                    Some(gst::PadProbeData::Buffer(buffer)) => Some(buffer.as_ref()),
                    Some(gst::PadProbeData::BufferList(list)) => list.get(0),
                    _ => None,
                };
                let at_frame_start = first.is_some_and(|b| edges.starts_frame(b));
                let Ok(mut routes) = waiting_routes.try_lock() else { return gst::PadProbeReturn::Drop };
                let waiting = routes.settle(&waiting_mid, at_frame_start);
                drop(routes);
                let linked = pad.peer().is_some();
                if !linked && !waiting {
                    backlog.clear(); // a pad nobody routed: its packets are only dropped
                    return gst::PadProbeReturn::Drop;
                }
                let packets: Vec<gst::Buffer> = match &info.data {
                    Some(gst::PadProbeData::Buffer(buffer)) => vec![buffer.clone()],
                    Some(gst::PadProbeData::BufferList(list)) => list.iter_owned().collect(),
                    _ => Vec::new(),
                };
                if linked {
                    notify_link.notify_waiters();
                    handover::replay(pad, backlog.take().into_iter().chain(packets).collect());
                } else {
                    packets.into_iter().for_each(|p| backlog.keep(p));
                }
                gst::PadProbeReturn::Drop
            });
            rtcp::ask_keyframes_by_ssrc(pad);
            routes.pads.insert(mid.clone(), pad.clone());
            routes.settle(&mid, false);
            notify.notify_waiters();
        });

        let r = routes.clone();
        webrtc.connect_pad_removed(move |_, pad| {
            r.lock().unwrap().pads.retain(|_, p| p != pad);
        });
        sync_states(&[&webrtc]);
        Ok(Subscriber { webrtc, routes, linked })
    }

    /// Takes over `old`'s routes after a rejoin. Each consumer stays with `old`'s pad until
    /// this subscriber's pad for the same track comes (`settle` takes it over), so media
    /// goes on for as long as the old connection still delivers.
    pub fn adopt(&self, old: &Subscriber) {
        let (sinks, codecs) = {
            let mut old = old.routes.lock().unwrap();
            (std::mem::take(&mut old.sinks), old.codecs.clone())
        };
        let mut routes = self.routes.lock().unwrap();
        routes.codecs.extend(codecs);
        routes.sinks.extend(sinks);
        routes.settle_all();
    }

    /// The tracks routed to a consumer.
    pub fn routed(&self) -> Vec<String> {
        self.routes.lock().unwrap().sinks.keys().cloned().collect()
    }

    /// Waits until every routed track reaches its consumer from this subscriber, or `timeout`.
    pub async fn carrying_all(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let linked = self.linked.notified();
            if self.carries_all() {
                return true;
            }
            if tokio::time::timeout_at(deadline, linked).await.is_err() {
                return self.carries_all();
            }
        }
    }

    fn carries_all(&self) -> bool {
        let routes = self.routes.lock().unwrap();
        routes.sinks.values().all(|c| c.sink.peer().is_some_and(|peer| routes.pads.values().any(|p| *p == peer)))
    }

    /// Takes this subscriber's webrtcbin out of the pipeline (after a rejoin replaced it).
    /// Removed first, so what it posts while closing never reaches the egress's bus.
    pub fn retire(&self, pipeline: &gst::Pipeline) {
        let mut routes = self.routes.lock().unwrap();
        routes.sinks.clear();
        routes.settle_all();
        drop(routes);
        RETIRED.lock().unwrap().get_or_insert_with(HashSet::new).insert(self.webrtc.name().to_string());
        let _ = pipeline.remove(&self.webrtc);
        if let Some(bin) = self.webrtc.downcast_ref::<gst::Bin>() {
            crate::media::stop_all(bin);
        }
    }

    /// Sends `sid`'s RTP to `sink` from now on (at once if the track already flows).
    pub fn route(&self, sid: &str, codec: &str, sink: gst::Pad) {
        let mut routes = self.routes.lock().unwrap();
        let splice = handover::Splice::attach(&sink);
        routes.sinks.insert(sid.to_string(), Consumer { sink: sink.clone(), splice });
        routes.codecs.insert(sid.to_string(), codec.to_ascii_uppercase());
        routes.settle_all();
        drop(routes);
        self.linked.notify_waiters();
        // A decoder joining mid-stream needs a keyframe: webrtcbin turns this into a PLI.
        sink.push_event(gstreamer_video::UpstreamForceKeyUnitEvent::builder().all_headers(true).build());
    }

    /// Stops routing `sid`; its pad, if any, is left unlinked.
    pub fn unroute(&self, sid: &str) {
        let mut routes = self.routes.lock().unwrap();
        if routes.sinks.remove(sid).is_some() {
            routes.settle_all();
        }
    }

    /// The end of the egress: every routed track is cut off and its consumer gets EOS, so
    /// files finalize without waiting on webrtcbin.
    pub fn end(&self) {
        let mut routes = self.routes.lock().unwrap();
        let sinks: Vec<gst::Pad> = routes.sinks.drain().map(|(_, c)| c.sink).collect();
        routes.settle_all();
        drop(routes);
        for sink in sinks {
            sink.send_event(gst::event::Eos::new());
        }
    }

    /// Answers a subscriber offer; returns the answer's SDP, and why this connection cannot
    /// carry a routed track if it cannot: the server reuses an m-line for a track of another
    /// codec (a camera republished as H.264 after VP8) only with the codec negotiated on it,
    /// and webrtcbin (1.22) keeps a transceiver's first codec for good. A new connection (a
    /// rejoin) gets fresh m-lines.
    pub async fn answer(&self, sdp: &str, mid_to_track: &HashMap<String, String>) -> Result<(String, Option<String>)> {
        tracing::debug!(offer = %sdp, "subscriber offer");
        let mut message =
            gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).context("LiveKit sent an unparsable offer")?;
        let mut stuck = None;
        {
            let mut routes = self.routes.lock().unwrap();
            routes.mline_mids = message.medias().map(|m| m.attribute_val("mid").unwrap_or("").to_string()).collect();
            for (mid, sid) in track_mids(&message).into_iter().chain(mid_to_track.clone()) {
                routes.mids.insert(mid, sid);
            }
            let carried: HashSet<String> = track_mids(&message).into_iter().map(|(_, sid)| sid).collect();
            for media in message.medias_mut() {
                let sid = media.attribute_val("mid").and_then(|mid| routes.mids.get(mid)).cloned();
                let wanted = sid.as_ref().and_then(|sid| routes.codecs.get(sid)).cloned();
                if let (Some(sid), Some(codec)) = (&sid, &wanted)
                    && carried.contains(sid)
                    && !offers_codec(media, codec)
                {
                    stuck.get_or_insert_with(|| {
                        format!("LiveKit offers track {sid} ({codec}) on an m-line negotiated for another codec")
                    });
                }
                keep_codec(media, wanted.as_deref());
            }
        }
        // webrtcbin (1.22) cannot change a transceiver's direction, and the server changes an
        // m-line's as its track comes and goes (recvonly, sendrecv, inactive). webrtcbin is
        // always shown a sending server; the server gets the answer its own offer calls for.
        let mut inactive = Vec::new();
        for media in message.medias_mut().filter(|m| matches!(m.media(), Some("audio" | "video"))) {
            let receives = ["recvonly", "inactive"].into_iter().any(|d| set_direction(media, d, "sendonly"));
            set_direction(media, "sendrecv", "sendonly");
            if receives {
                inactive.push(media.attribute_val("mid").unwrap_or_default().to_string());
            }
        }
        let offer = gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Offer, message);
        call(&self.webrtc, "set-remote-description", Some(&offer)).await?;
        let reply = call(&self.webrtc, "create-answer", None).await?;
        let answer = reply
            .and_then(|s| s.get::<gst_webrtc::WebRTCSessionDescription>("answer").ok())
            .ok_or_else(|| anyhow!("webrtcbin made no answer"))?;
        call(&self.webrtc, "set-local-description", Some(&answer)).await?;
        let mut reply = answer.sdp().to_owned();
        for media in reply.medias_mut() {
            if media.attribute_val("mid").is_some_and(|mid| inactive.iter().any(|m| m == mid)) {
                set_direction(media, "recvonly", "inactive");
            }
        }
        let text = reply.as_text()?;
        // A reused m-line now carries another track: its pad goes to that track's consumer.
        self.routes.lock().unwrap().settle_all();
        self.linked.notify_waiters();
        tracing::debug!(offer = %sdp, answer = %text, "subscriber negotiated");
        Ok((text, stuck))
    }

    pub fn add_candidate(&self, mline: u32, candidate: &str) {
        self.webrtc.emit_by_name::<()>("add-ice-candidate", &[&mline, &candidate]);
    }
}

/// Gives each RTP packet leaving `pad` its place on the session timeline (its PTS).
fn retime(pad: &gst::Pad, timeline: Arc<Timeline>) {
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if handover::replaying() {
            return gst::PadProbeReturn::Ok; // placed when it first came
        }
        let Some(buffer) = info.buffer_mut() else { return gst::PadProbeReturn::Ok };
        let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
        let Some(handover::Header { timestamp: rtp, ssrc, .. }) = handover::rtp_header(buffer) else {
            return gst::PadProbeReturn::Ok;
        };
        let caps = pad.current_caps();
        let field = |name: &str| caps.as_ref().and_then(|c| c.structure(0)).map(|s| s.value(name).ok().cloned());
        let clock_rate = field("clock-rate").flatten().and_then(|v| v.get::<i32>().ok()).unwrap_or(0).max(0) as u32;
        let audio = field("media").flatten().and_then(|v| v.get::<String>().ok()).is_some_and(|m| m == "audio");
        let Some(segment) = pad.sticky_event::<gst::event::Segment>(0) else { return gst::PadProbeReturn::Ok };
        let Some(segment) = segment.segment().downcast_ref::<gst::ClockTime>().cloned() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(arrival) = segment.to_running_time(pts) else { return gst::PadProbeReturn::Ok };
        // The jitter buffer's PTS is its smoothed arrival; its DTS is when the packet came.
        let received = buffer.dts().and_then(|dts| segment.to_running_time(dts)).unwrap_or(arrival);
        let (arrival, received) = (arrival.nseconds() as i64, received.nseconds() as i64);
        let payload = handover::payload_fingerprint(buffer);
        let placed = timeline.retime(ssrc, clock_rate, rtp, Arrival { smoothed: arrival, received, payload }, audio);
        let placed = gst::ClockTime::from_nseconds(placed.max(0) as u64);
        if let Some(new_pts) = segment.position_from_running_time(placed) {
            let buffer = buffer.make_mut();
            buffer.set_pts(new_pts);
            buffer.set_dts(gst::ClockTime::NONE);
        }
        gst::PadProbeReturn::Ok
    });
}

/// mid → track sid from each m-line's `a=msid:<stream> <track>` (LiveKit's track id is the sid).
fn track_mids(message: &gst_sdp::SDPMessageRef) -> Vec<(String, String)> {
    message
        .medias()
        .filter_map(|m| {
            let mid = m.attribute_val("mid")?;
            let msid = m.attribute_val("msid")?;
            let track = msid.split_whitespace().nth(1)?;
            Some((mid.to_string(), track.to_string()))
        })
        .collect()
}

/// Trims an offered m-line to one codec: `wanted` (the track's), or for a track nobody routed
/// the first codec egret can depayload. Left alone, webrtcbin answers with the offer's first
/// codec (VP8), which the server cannot send for an H.264 track; RED audio is left out so the
/// server sends plain Opus. Retransmission payloads go too (no RTX on the receive side).
fn keep_codec(media: &mut gst_sdp::SDPMediaRef, wanted: Option<&str>) {
    if !matches!(media.media(), Some("audio" | "video")) {
        return;
    }
    let encoding = |media: &gst_sdp::SDPMediaRef, pt: &str| -> Option<String> {
        media.attributes().filter(|a| a.key() == "rtpmap").find_map(|a| {
            let (p, rest) = a.value()?.split_once(' ')?;
            (p == pt).then(|| rest.split('/').next().unwrap_or_default().to_ascii_uppercase())
        })
    };
    let offered: Vec<(String, String)> =
        media.formats().map(|pt| (pt.to_string(), encoding(media, pt).unwrap_or_default())).collect();
    // The track's codec if offered, else the first egret can depayload. Never none: webrtcbin
    // cannot answer an m-line it refuses inside a bundle ("no fingerprint"), and the egress
    // would fail.
    let is_offered = |c: &str| offered.iter().any(|(_, e)| e == c);
    let codec = match wanted.filter(|w| is_offered(w)) {
        Some(w) => w.to_string(),
        None => match ["OPUS", "H264", "VP8", "VP9"].into_iter().find(|c| is_offered(c)) {
            Some(c) => c.to_string(),
            None => return,
        },
    };
    let dropped: Vec<String> = offered.iter().filter(|(_, e)| *e != codec).map(|(pt, _)| pt.clone()).collect();
    for i in (0..media.formats_len()).rev() {
        if media.format(i).is_some_and(|pt| dropped.iter().any(|d| d == pt)) {
            let _ = media.remove_format(i);
        }
    }
    for i in (0..media.attributes_len()).rev() {
        let Some(attr) = media.attribute(i) else { continue };
        let about_dropped = matches!(attr.key(), "rtpmap" | "fmtp" | "rtcp-fb")
            && attr.value().and_then(|v| v.split([' ', ':']).next()).is_some_and(|pt| dropped.iter().any(|d| d == pt));
        if about_dropped {
            let _ = media.remove_attribute(i);
        }
    }
}

/// Whether an m-line offers `codec` (an RTP encoding name, `H264`).
fn offers_codec(media: &gst_sdp::SDPMediaRef, codec: &str) -> bool {
    media.attributes().filter(|a| a.key() == "rtpmap").any(|a| {
        a.value()
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or_default().eq_ignore_ascii_case(codec))
    })
}

/// Replaces the direction attribute `from` with `to`; false if the m-line had not `from`.
fn set_direction(media: &mut gst_sdp::SDPMediaRef, from: &str, to: &str) -> bool {
    let Some(index) = (0..media.attributes_len()).find(|i| media.attribute(*i).is_some_and(|a| a.key() == from)) else {
        return false;
    };
    let _ = media.remove_attribute(index);
    media.add_attribute(to, None);
    true
}

/// True for errors of webrtcbin's data channel transport (SCTP), which egret does not use: it
/// errors when the server drops the connection, often before its Leave arrives, and the
/// signalling connection is what decides how the egress ends.
pub fn is_data_channel_error(source: &gst::Object) -> bool {
    let path = source.path_string();
    let retired = RETIRED.lock().unwrap().as_ref().is_some_and(|r| path.split('/').any(|part| r.contains(part)));
    retired || (source.name().starts_with("sctp") && path.contains(SUBSCRIBER_NAME))
}

/// Emits one of webrtcbin's promise-taking action signals and awaits the reply.
async fn call(
    webrtc: &gst::Element,
    signal: &str,
    description: Option<&gst_webrtc::WebRTCSessionDescription>,
) -> Result<Option<gst::Structure>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let promise = gst::Promise::with_change_func(move |reply| {
        let _ = tx.send(reply.map(|s| s.map(|s| s.to_owned())).map_err(|e| format!("{e:?}")));
    });
    match description {
        Some(d) => webrtc.emit_by_name::<()>(signal, &[d, &promise]),
        None => webrtc.emit_by_name::<()>(signal, &[&None::<gst::Structure>, &promise]),
    }
    let reply = rx
        .await
        .map_err(|_| anyhow!("webrtcbin dropped the {signal} promise"))?
        .map_err(|e| anyhow!("{signal}: {e}"))?;
    if let Some(s) = &reply
        && let Ok(error) = s.get::<gst::glib::Error>("error")
    {
        bail!("{signal}: {error}");
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 108\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtcp-fb:108 nack pli\r\na=msid:PA_x|TR_v TR_v\r\n";

    #[test]
    fn offers_are_trimmed_to_the_tracks_codec() {
        crate::media::init_for_tests();
        let mut message = gst_sdp::SDPMessage::parse_buffer(OFFER.as_bytes()).unwrap();
        keep_codec(message.media_mut(0).unwrap(), Some("H264"));
        let media = message.media(0).unwrap();
        assert_eq!(media.formats().collect::<Vec<_>>(), ["108"]);
        let text = message.as_text().unwrap();
        assert!(text.contains("a=rtcp-fb:108 nack pli") && !text.contains("VP8") && !text.contains("apt=96"), "{text}");
        // A track nobody routed: the first codec egret can depayload.
        let mut message = gst_sdp::SDPMessage::parse_buffer(OFFER.as_bytes()).unwrap();
        keep_codec(message.media_mut(0).unwrap(), None);
        assert_eq!(message.media(0).unwrap().formats().collect::<Vec<_>>(), ["108"]);
        assert_eq!(track_mids(&message), vec![("1".to_string(), "TR_v".to_string())]);
        // A codec the m-line does not offer (a track republished with another codec): never a
        // refused m-line, which would fail the whole negotiation; the rejoin fetches the track.
        let mut message = gst_sdp::SDPMessage::parse_buffer(OFFER.as_bytes()).unwrap();
        assert!(!offers_codec(message.media(0).unwrap(), "VP9"));
        keep_codec(message.media_mut(0).unwrap(), Some("VP9"));
        assert_eq!(message.media(0).unwrap().formats().collect::<Vec<_>>(), ["108"]);
    }
}
