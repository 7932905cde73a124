//! Encoding settings from LiveKit's `preset` (EncodingOptionsPreset) or `advanced` (EncodingOptions).

use serde::Serialize;
use serde_json::Value;

use super::fields::{FieldError, FieldResult, Obj};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    Vp8,
    /// Copied from a room track only (egret does not encode VP9: too slow for live here).
    Vp9,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodec {
    Aac,
    Opus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum H264Profile {
    Baseline,
    Main,
    High,
}

impl H264Profile {
    pub fn caps_name(self) -> &'static str {
        match self {
            H264Profile::Baseline => "constrained-baseline",
            H264Profile::Main => "main",
            H264Profile::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodeSettings {
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    /// kbit/s, as LiveKit counts them.
    pub video_bitrate: u32,
    pub audio_bitrate: u32,
    pub audio_frequency: u32,
    /// Seconds between keyframes.
    pub key_frame_interval: f64,
    /// Codecs the request asked for; `None` lets each output pick its container's default.
    pub video_codec: Option<VideoCodec>,
    pub audio_codec: Option<AudioCodec>,
    pub h264_profile: H264Profile,
    /// x264's speed preset: LiveKit's `veryfast` unless a recipe chose another
    /// (`egress:encode { speed = ... }`; web pages use `superfast`, see the bench).
    #[serde(skip)]
    pub x264_speed: &'static str,
}

/// x264 speed presets a recipe may choose, fastest first.
pub const X264_SPEEDS: &[&str] = &["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"];

pub const PRESETS: &[&str] = &[
    "H264_720P_30",
    "H264_720P_60",
    "H264_1080P_30",
    "H264_1080P_60",
    "PORTRAIT_H264_720P_30",
    "PORTRAIT_H264_720P_60",
    "PORTRAIT_H264_1080P_30",
    "PORTRAIT_H264_1080P_60",
];
const AUDIO_CODECS: &[&str] = &["DEFAULT_AC", "OPUS", "AAC", "AC_MP3"];
const VIDEO_CODECS: &[&str] = &["DEFAULT_VC", "H264_BASELINE", "H264_MAIN", "H264_HIGH", "VP8", "VP9"];

impl Default for EncodeSettings {
    fn default() -> Self {
        Self::from_preset(0)
    }
}

impl EncodeSettings {
    /// Values as livekit/egress sets them for each preset.
    pub fn from_preset(index: usize) -> Self {
        let (width, height, framerate, video_bitrate) = match PRESETS[index] {
            "H264_720P_30" => (1280, 720, 30, 3000),
            "H264_720P_60" => (1280, 720, 60, 4500),
            "H264_1080P_30" => (1920, 1080, 30, 4500),
            "H264_1080P_60" => (1920, 1080, 60, 6000),
            "PORTRAIT_H264_720P_30" => (720, 1280, 30, 3000),
            "PORTRAIT_H264_720P_60" => (720, 1280, 60, 4500),
            "PORTRAIT_H264_1080P_30" => (1080, 1920, 30, 4500),
            _ => (1080, 1920, 60, 6000),
        };
        EncodeSettings {
            width,
            height,
            framerate,
            video_bitrate,
            audio_bitrate: 128,
            // LiveKit's default for AAC and MP3 (Opus is always 48 kHz).
            audio_frequency: 44100,
            key_frame_interval: 4.0,
            video_codec: None,
            audio_codec: None,
            h264_profile: H264Profile::Main,
            x264_speed: "veryfast",
        }
    }

    /// Reads `preset` and `advanced` from a request (both absent: H264_720P_30).
    pub fn from_request(request: &Value) -> FieldResult<Self> {
        let mut obj = Obj::new(request, "")?;
        let preset = obj.enumeration("preset", PRESETS)?;
        let advanced = obj.get("advanced");
        if preset.is_some() && advanced.is_some() {
            return Err(FieldError::new("advanced", "give either preset or advanced, not both"));
        }
        let mut settings = Self::from_preset(preset.unwrap_or(0));
        if let Some(advanced) = advanced {
            settings.apply_advanced(advanced)?;
        }
        // HLS segments are cut at keyframes: as LiveKit does, keyframes follow the (shortest)
        // segment duration unless the request sets its own interval.
        let explicit =
            advanced.and_then(|a| a.get("key_frame_interval")).and_then(Value::as_f64).is_some_and(|k| k > 0.0);
        let segment = request
            .get("segment_outputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| s.get("segment_duration").and_then(Value::as_f64).filter(|d| *d > 0.0).unwrap_or(4.0))
            .reduce(f64::min);
        if let Some(duration) = segment.filter(|_| !explicit) {
            settings.key_frame_interval = duration.clamp(0.1, 60.0);
        }
        Ok(settings)
    }

    fn apply_advanced(&mut self, advanced: &Value) -> FieldResult<()> {
        let mut o = Obj::new(advanced, "advanced")?;
        let bounded = |o: &Obj, key: &str, v: Option<u32>, lo: u32, hi: u32| -> FieldResult<Option<u32>> {
            match v {
                Some(0) | None => Ok(None),
                Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
                Some(n) => Err(FieldError::new(o.field_path(key), format!("{n} is outside {lo}..={hi}"))),
            }
        };
        let width = o.uint("width")?;
        let height = o.uint("height")?;
        let framerate = o.uint("framerate")?;
        let video_bitrate = o.uint("video_bitrate")?;
        let audio_bitrate = o.uint("audio_bitrate")?;
        let audio_frequency = o.uint("audio_frequency")?;
        if let Some(w) = bounded(&o, "width", width, 16, 3840)? {
            self.width = w;
        }
        if let Some(h) = bounded(&o, "height", height, 16, 3840)? {
            self.height = h;
        }
        for (key, value) in [("width", self.width), ("height", self.height)] {
            if value % 2 != 0 {
                return Err(FieldError::new(o.field_path(key), "must be even (4:2:0 video)"));
            }
        }
        if let Some(f) = bounded(&o, "framerate", framerate, 1, 120)? {
            self.framerate = f;
        }
        if let Some(b) = bounded(&o, "video_bitrate", video_bitrate, 100, 100_000)? {
            self.video_bitrate = b;
        }
        if let Some(b) = bounded(&o, "audio_bitrate", audio_bitrate, 16, 512)? {
            self.audio_bitrate = b;
        }
        match audio_frequency {
            None | Some(0) => {}
            Some(f @ (8000 | 16000 | 24000 | 44100 | 48000)) => self.audio_frequency = f,
            Some(f) => {
                return Err(FieldError::new(
                    o.field_path("audio_frequency"),
                    format!("{f} Hz is not one of 8000, 16000, 24000, 44100, 48000"),
                ));
            }
        }
        if let Some(k) = o.number("key_frame_interval")?.filter(|k| *k > 0.0) {
            if !(0.1..=60.0).contains(&k) {
                return Err(FieldError::new(o.field_path("key_frame_interval"), "must be within 0.1..=60 seconds"));
            }
            self.key_frame_interval = k;
        }
        match o.enumeration("audio_codec", AUDIO_CODECS)? {
            None | Some(0) => {}
            Some(1) => self.audio_codec = Some(AudioCodec::Opus),
            Some(2) => self.audio_codec = Some(AudioCodec::Aac),
            Some(_) => {
                return Err(FieldError::new(o.field_path("audio_codec"), "AC_MP3 is not supported; use AAC or OPUS"));
            }
        }
        match o.enumeration("video_codec", VIDEO_CODECS)? {
            None | Some(0) => {}
            Some(i @ 1..=3) => {
                self.video_codec = Some(VideoCodec::H264);
                self.h264_profile = [H264Profile::Baseline, H264Profile::Main, H264Profile::High][i - 1];
            }
            Some(4) => self.video_codec = Some(VideoCodec::Vp8),
            Some(_) => {
                return Err(FieldError::new(o.field_path("video_codec"), "VP9 is not supported; use H264_* or VP8"));
            }
        }
        // Accepted for LiveKit compatibility; x264/opus rate control is bitrate-driven here.
        for ignored in ["depth", "audio_quality", "video_quality"] {
            o.get(ignored);
        }
        o.finish(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presets_and_advanced() {
        let s = EncodeSettings::from_request(&json!({"preset": "PORTRAIT_H264_1080P_60"})).unwrap();
        assert_eq!((s.width, s.height, s.framerate, s.video_bitrate), (1080, 1920, 60, 6000));
        let segments = json!({"segment_outputs": [{"segment_duration": 6}, {"segment_duration": 2}]});
        assert_eq!(EncodeSettings::from_request(&segments).unwrap().key_frame_interval, 2.0);
        assert_eq!(EncodeSettings::from_request(&json!({"segment_outputs": [{}]})).unwrap().key_frame_interval, 4.0);
        let s = EncodeSettings::from_request(&json!({"advanced": {"width": 640, "height": 360, "video_codec": "H264_HIGH", "audio_codec": "OPUS", "key_frame_interval": 2}})).unwrap();
        assert_eq!(
            (s.width, s.height, s.h264_profile, s.audio_codec),
            (640, 360, H264Profile::High, Some(AudioCodec::Opus))
        );
        let e = EncodeSettings::from_request(&json!({"advanced": {"width": 641}})).unwrap_err();
        assert_eq!(e.field, "advanced.width");
        let e = EncodeSettings::from_request(&json!({"advanced": {"colour": 1}})).unwrap_err();
        assert_eq!(e.field, "advanced.colour");
    }
}
