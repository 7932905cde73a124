//! The encoder: raw video/audio split by tees, and one encoder per codec that some output
//! needs (made on first use), each feeding a tee that every output of that codec shares.

use std::collections::HashMap;

use anyhow::{Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::{MediaKind, MediaPad, add_chain, capsfilter, make, queue, sync_states};
use crate::request::encoding::{AudioCodec, EncodeSettings, VideoCodec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Video(VideoCodec),
    Audio(AudioCodec),
}

pub fn kind_of(codec: Codec) -> MediaKind {
    match codec {
        Codec::Video(_) => MediaKind::Video,
        Codec::Audio(_) => MediaKind::Audio,
    }
}

pub struct Encoder {
    pub settings: EncodeSettings,
    raw: HashMap<MediaKind, gst::Element>,
    encoded: HashMap<Codec, gst::Element>,
}

fn tee() -> Result<gst::Element> {
    let t = make("tee", None)?;
    // Outputs come and go (a failed RTMP URL is removed); the others must keep flowing.
    t.set_property("allow-not-linked", true);
    Ok(t)
}

/// A tee fed by `pad`. Running before it is linked: in a playing pipeline (a joined room)
/// data may come at once.
fn tee_after(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<gst::Element> {
    let t = tee()?;
    pipeline.add(&t)?;
    sync_states(&[&t]);
    pad.link(&t.static_pad("sink").expect("tee sink"))?;
    Ok(t)
}

impl Encoder {
    pub fn new(pipeline: &gst::Pipeline, settings: EncodeSettings, inputs: &[MediaPad]) -> Result<Encoder> {
        let mut raw = HashMap::new();
        for input in inputs {
            if raw.contains_key(&input.kind) {
                bail!("two {} inputs given to one encoder", input.kind.name());
            }
            raw.insert(input.kind, tee_after(pipeline, &input.pad)?);
        }
        Ok(Encoder { settings, raw, encoded: HashMap::new() })
    }

    /// Media copied as it came (a room track): each stream feeds the tee of its codec and
    /// nothing is encoded; an output needing another codec is refused.
    pub fn copy(pipeline: &gst::Pipeline, settings: EncodeSettings, inputs: &[(Codec, gst::Pad)]) -> Result<Encoder> {
        let mut encoded = HashMap::new();
        for (codec, pad) in inputs {
            if encoded.keys().any(|c| kind_of(*c) == kind_of(*codec)) {
                bail!("two {} inputs given to one copy", kind_of(*codec).name());
            }
            encoded.insert(*codec, tee_after(pipeline, pad)?);
        }
        Ok(Encoder { settings, raw: HashMap::new(), encoded })
    }

    pub fn has(&self, kind: MediaKind) -> bool {
        self.raw.contains_key(&kind) || self.encoded.keys().any(|c| kind_of(*c) == kind)
    }

    /// The video codec this encoder copies (a room track taken as published), if any.
    pub fn copied_video(&self) -> Option<VideoCodec> {
        if self.raw.contains_key(&MediaKind::Video) {
            return None;
        }
        self.encoded.keys().find_map(|c| match c {
            Codec::Video(v) => Some(*v),
            Codec::Audio(_) => None,
        })
    }

    /// The raw tee of one kind (image outputs take raw video).
    pub fn raw_tee(&self, kind: MediaKind) -> Option<&gst::Element> {
        self.raw.get(&kind)
    }

    /// The tee carrying `codec`, building its encoder branch the first time.
    pub fn encoded_tee(&mut self, pipeline: &gst::Pipeline, codec: Codec) -> Result<gst::Element> {
        if let Some(t) = self.encoded.get(&codec) {
            return Ok(t.clone());
        }
        let kind = kind_of(codec);
        let Some(raw) = self.raw.get(&kind) else {
            if let Some(copied) = self.encoded.keys().find(|c| kind_of(**c) == kind) {
                bail!(
                    "the {} is copied as {copied:?} without transcoding, and this output needs {codec:?}",
                    kind.name()
                );
            }
            bail!("this egress has no {} to encode", kind.name())
        };
        let mut chain = vec![queue(2, false)?];
        chain.extend(match codec {
            Codec::Video(v) => self.video_chain(v)?,
            Codec::Audio(a) => self.audio_chain(a)?,
        });
        let out = tee()?;
        chain.push(out.clone());
        let refs: Vec<&gst::Element> = chain.iter().collect();
        add_chain(pipeline, &refs)?;
        sync_states(&refs);
        let src = raw.request_pad_simple("src_%u").expect("tee src pad");
        src.link(&chain[0].static_pad("sink").expect("queue sink"))?;
        self.encoded.insert(codec, out.clone());
        Ok(out)
    }

    fn video_chain(&self, codec: VideoCodec) -> Result<Vec<gst::Element>> {
        let s = &self.settings;
        let gop = ((s.framerate as f64) * s.key_frame_interval).round().max(1.0) as u32;
        // I420 before the encoder: without it x264 picks 4:4:4, which browsers can't play.
        let raw_caps = format!(
            "video/x-raw,format=I420,width={},height={},framerate={}/1,pixel-aspect-ratio=1/1",
            s.width, s.height, s.framerate
        );
        // videorate's frame grid starts at the first frame it gets, not at 0: from 0, every
        // frame would move to the nearest slot of a grid of its own, by up to half a frame
        // against its sound (a different amount in every egress).
        let rate = make("videorate", None)?;
        rate.set_property("skip-to-first", true);
        let mut chain = vec![make("videoconvert", None)?, make("videoscale", None)?, rate, capsfilter(&raw_caps)?];
        match codec {
            VideoCodec::H264 => {
                let enc = make("x264enc", None)?;
                enc.set_property("bitrate", s.video_bitrate);
                enc.set_property_from_str("speed-preset", s.x264_speed);
                enc.set_property_from_str("tune", "zerolatency");
                enc.set_property("key-int-max", gop);
                chain.push(enc);
                chain.push(capsfilter(&format!("video/x-h264,profile={}", s.h264_profile.caps_name()))?);
                chain.push(make("h264parse", None)?);
            }
            VideoCodec::Vp8 => {
                let enc = make("vp8enc", None)?;
                enc.set_property("target-bitrate", (s.video_bitrate * 1000) as i32);
                enc.set_property("deadline", 1i64);
                enc.set_property("cpu-used", 8i32);
                enc.set_property_from_str("end-usage", "cbr");
                enc.set_property("keyframe-max-dist", gop as i32);
                enc.set_property("threads", 2i32);
                chain.push(enc);
            }
            // Requests cannot ask for it (refused by field); VP9 is only copied.
            VideoCodec::Vp9 => anyhow::bail!("egret copies VP9 tracks but does not encode VP9"),
        }
        Ok(chain)
    }

    fn audio_chain(&self, codec: AudioCodec) -> Result<Vec<gst::Element>> {
        let s = &self.settings;
        // Opus only takes 48 kHz family rates; AAC follows the request.
        let rate = if codec == AudioCodec::Opus { 48000 } else { s.audio_frequency };
        let mut chain = vec![
            make("audioconvert", None)?,
            make("audioresample", None)?,
            capsfilter(&format!("audio/x-raw,rate={rate},channels=2"))?,
        ];
        match codec {
            AudioCodec::Aac => {
                let enc = make("avenc_aac", None)?;
                enc.set_property("bitrate", (s.audio_bitrate * 1000) as i32);
                // GStreamer's wrapper turns ffmpeg's "M/S stereo where it helps" into "M/S
                // always", which leaks a hard-panned channel into the other at half its level
                // (dual-channel recordings): no M/S.
                enc.set_property("aac-ms", false);
                chain.push(enc);
                chain.push(make("aacparse", None)?);
            }
            AudioCodec::Opus => {
                let enc = make("opusenc", None)?;
                enc.set_property("bitrate", (s.audio_bitrate * 1000) as i32);
                chain.push(enc);
            }
        }
        Ok(chain)
    }
}
