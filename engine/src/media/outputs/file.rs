//! File output (`file_outputs`, LiveKit's EncodedFileOutput): MP4 (H.264 + AAC/Opus;
//! fragmented when crash-safe), OGG (Opus), WebM (VP8 + Opus), MP3 (audio only, LAME).

use std::path::Path;

use anyhow::{Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use livekit_protocol as lk;
use serde_json::Value;

use super::mux_input;
use super::{BranchParts, BuildTarget, Output, OutputKind, OutputSnapshot, OutputSpec, OutputStatus, ResultContext};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
use crate::request::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use crate::request::fields::{FieldError, FieldResult, Obj};
use crate::request::filepath::{check_relative, resolve_file};
use crate::request::outputs::{check_codecs, upload_target};
use crate::storage::UploadConfig;

pub static KIND: OutputKind = OutputKind {
    name: "file",
    request_fields: &["file_outputs"],
    unified_key: Some("file"),
    parse,
    livekit_result,
    recover: super::recover_file,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Mp4,
    Ogg,
    Webm,
    Mp3,
}

impl FileType {
    pub fn extension(self) -> &'static str {
        match self {
            FileType::Mp4 => ".mp4",
            FileType::Ogg => ".ogg",
            FileType::Webm => ".webm",
            FileType::Mp3 => ".mp3",
        }
    }

    fn container_name(self) -> &'static str {
        match self {
            FileType::Mp4 => "MP4",
            FileType::Ogg => "OGG",
            FileType::Webm => "WEBM",
            FileType::Mp3 => "MP3",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileOutput {
    pub file_type: FileType,
    /// A filepath template (`{egress_id}`, `{time}`...), relative to the storage directory.
    pub filepath: String,
    pub upload: Option<UploadConfig>,
}

const FILE_TYPES: &[&str] = &["DEFAULT_FILETYPE", "MP4", "OGG", "MP3", "WEBM"];

fn parse(request: &mut Obj, settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut outputs = Vec::new();
    for (i, v) in request.array("file_outputs")?.iter().enumerate() {
        let field = format!("file_outputs[{i}]");
        outputs.push(Output::new(field.clone(), parse_one(v, &field, settings)?));
    }
    Ok(outputs)
}

/// The container a file output asks for: its `file_type`, else its path's extension, else MP4.
fn file_type(o: &mut Obj, filepath: &str) -> FieldResult<FileType> {
    let from_extension = [FileType::Mp4, FileType::Ogg, FileType::Webm, FileType::Mp3]
        .into_iter()
        .find(|t| filepath.to_ascii_lowercase().ends_with(t.extension()));
    Ok(match o.enumeration("file_type", FILE_TYPES)? {
        None | Some(0) => from_extension.unwrap_or(FileType::Mp4),
        Some(1) => FileType::Mp4,
        Some(2) => FileType::Ogg,
        Some(3) => FileType::Mp3,
        Some(_) => FileType::Webm,
    })
}

/// The first file output of `request` that holds sound only (MP3, OGG), with its type: a
/// recipe whose source has a picture refuses it before the source starts.
pub fn first_audio_only(request: &Value) -> Option<(String, &'static str)> {
    let outputs = request.get("file_outputs")?.as_array()?;
    outputs.iter().enumerate().find_map(|(i, v)| {
        let field = format!("file_outputs[{i}]");
        let mut o = Obj::new(v, &field).ok()?;
        let filepath = o.string("filepath").ok()?.unwrap_or_default();
        let file_type = file_type(&mut o, &filepath).ok()?;
        matches!(file_type, FileType::Mp3 | FileType::Ogg)
            .then(|| (format!("{field}.file_type"), file_type.container_name()))
    })
}

fn parse_one(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<FileOutput> {
    let mut o = Obj::new(v, field)?;
    let filepath = o.string("filepath")?.unwrap_or_default();
    let file_type = file_type(&mut o, &filepath)?;
    check_relative(&filepath, &o.field_path("filepath"))?;
    let upload = upload_target(&mut o)?;
    let (video_ok, audio_ok): (&[VideoCodec], &[AudioCodec]) = match file_type {
        FileType::Mp4 => (&[VideoCodec::H264], &[AudioCodec::Aac, AudioCodec::Opus]),
        FileType::Ogg => (&[], &[AudioCodec::Opus]),
        FileType::Webm => (&[VideoCodec::Vp8, VideoCodec::Vp9], &[AudioCodec::Opus]),
        // Always MP3 (as LiveKit does): the request's audio codec is for its other outputs.
        FileType::Mp3 => (&[], &[AudioCodec::Aac, AudioCodec::Opus]),
    };
    check_codecs(settings, video_ok, audio_ok, &format!("{field}.file_type"), file_type.container_name())?;
    o.finish(&[])?;
    Ok(FileOutput { file_type, filepath, upload })
}

impl OutputSpec for FileOutput {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()> {
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        let path = resolve_file(
            target.storage(),
            target.template(),
            &self.filepath,
            self.file_type.extension(),
            &format!("{field}.filepath"),
        )?;
        target.claim(&path, false, &format!("{field}.filepath"))?;
        let parts = build(target.encoder(encoder), self.file_type, &path, target.crash_safe_mp4()).map_err(fail)?;
        let status = OutputStatus::new(field.into(), &KIND, target.relative(&path));
        let uploader = target.uploader(&self.upload);
        target.attach(encoder, parts, status, uploader).map_err(fail)
    }
}

fn livekit_result(output: &OutputSnapshot, ctx: &ResultContext, info: &mut lk::EgressInfo) {
    info.file_results.push(lk::FileInfo {
        filename: output.target.clone(),
        started_at: ctx.started_at,
        ended_at: ctx.ended_at,
        duration: output.duration_ns(),
        size: output.bytes as i64,
        location: ctx.location(output),
    });
}

fn build(encoder: &Encoder, file_type: FileType, path: &Path, crash_safe: bool) -> Result<BranchParts> {
    if file_type == FileType::Mp3 {
        return build_mp3(encoder, path);
    }
    let s = &encoder.settings;
    let (video, audio) = match file_type {
        FileType::Mp4 => (Some(VideoCodec::H264), s.audio_codec.or(Some(AudioCodec::Aac))),
        FileType::Ogg => (None, Some(AudioCodec::Opus)),
        // VP8, or VP9 when a VP9 track is copied (egret encodes VP8 only).
        FileType::Webm => (
            Some(encoder.copied_video().filter(|v| *v == VideoCodec::Vp9).unwrap_or(VideoCodec::Vp8)),
            Some(AudioCodec::Opus),
        ),
        FileType::Mp3 => unreachable!("built by build_mp3"),
    };
    let video = video.filter(|_| encoder.has(MediaKind::Video));
    let audio = audio.filter(|_| encoder.has(MediaKind::Audio));
    if file_type == FileType::Ogg && encoder.has(MediaKind::Video) {
        bail!("OGG holds audio only, and this egress has video (ask for audio only)");
    }
    if video.is_none() && audio.is_none() {
        bail!("this egress has no media that a {file_type:?} file can hold");
    }

    let bin = gst::Bin::new();
    let mux = match file_type {
        FileType::Mp4 => {
            let m = make("mp4mux", None)?;
            // Audio and video rarely start at the same instant: the later one starts with an
            // edit, else both would start at 0 and be off by the difference (up to 50 ms).
            m.set_property("start-gap-threshold", 1u64);
            if crash_safe {
                // Each fragment is complete on disk: the file plays even after SIGKILL. Short
                // fragments also matter for start latency: nothing is written before the first.
                // Finalised at the end into a plain MP4, which keeps the start edit (fragments
                // cannot say a track starts late).
                m.set_property("fragment-duration", 250u32);
                m.set_property_from_str("fragment-mode", "first-moov-then-finalise");
            }
            m
        }
        FileType::Ogg => make("oggmux", None)?,
        FileType::Webm => make("webmmux", None)?,
        FileType::Mp3 => unreachable!("built by build_mp3"),
    };
    let sink = make("filesink", None)?;
    sink.set_property("location", path.to_string_lossy().to_string());
    sink.set_property("async", false);
    // Straight to the kernel: a 64 KB stdio buffer would delay the first byte by a second on
    // calm content and lose its contents if egret were killed.
    sink.set_property_from_str("buffer-mode", "unbuffered");
    bin.add_many([&mux, &sink])?;
    mux.link(&sink)?;

    let mut inputs = Vec::new();
    if let Some(v) = video {
        inputs.push(mux_input(&bin, &mux, Codec::Video(v), "video_%u", false)?);
    }
    if let Some(a) = audio {
        inputs.push(mux_input(&bin, &mux, Codec::Audio(a), "audio_%u", false)?);
    }
    super::align_video_to_aac(&inputs, encoder.settings.audio_frequency);
    let measure = sink.static_pad("sink").expect("filesink sink");
    if file_type == FileType::Mp4 && audio == Some(AudioCodec::Opus) {
        fix_opus_header_byte_order(&measure);
    }
    Ok(BranchParts { bin, inputs, measure, handler: None, file: Some(path.to_path_buf()) })
}

/// MP3 from the egress's raw sound: LAME at the request's audio bitrate (constant), with a
/// Xing header so players know the duration.
fn build_mp3(encoder: &Encoder, path: &Path) -> Result<BranchParts> {
    if encoder.has(MediaKind::Video) {
        bail!("MP3 holds audio only, and this egress has video (ask for audio only)");
    }
    if !encoder.has(MediaKind::Audio) {
        bail!("this egress has no sound for an MP3 file");
    }
    let bin = gst::Bin::new();
    let q = super::queue(3, false)?;
    let convert = make("audioconvert", None)?;
    let resample = make("audioresample", None)?;
    // The egress's rate (else LAME picks 44.1 kHz; MPEG audio has every usual rate), in
    // stereo (a mono source stays mono on both sides; dual-channel mixes keep their sides).
    let rate = super::super::capsfilter(&format!("audio/x-raw,rate={},channels=2", encoder.settings.audio_frequency))?;
    let lame = make("lamemp3enc", None)?;
    lame.set_property_from_str("target", "bitrate");
    lame.set_property("bitrate", encoder.settings.audio_bitrate.clamp(8, 320) as i32);
    lame.set_property("cbr", true);
    // LAME resamples on its own below ~128 kb/s stereo (96 kb/s → 32 kHz) unless its output
    // rate is fixed too.
    let out_rate = super::super::capsfilter(&format!("audio/mpeg,rate={}", encoder.settings.audio_frequency))?;
    let xing = make("xingmux", None)?;
    let sink = make("filesink", None)?;
    sink.set_property("location", path.to_string_lossy().to_string());
    sink.set_property("async", false);
    bin.add_many([&q, &convert, &resample, &rate, &lame, &out_rate, &xing, &sink])?;
    gst::Element::link_many([&q, &convert, &resample, &rate, &lame, &out_rate, &xing, &sink])?;
    let input = super::ghost_sink(&bin, &q, "audio")?;
    let measure = sink.static_pad("sink").expect("filesink sink");
    Ok(BranchParts {
        bin,
        inputs: vec![(super::Input::Raw(MediaKind::Audio), input)],
        measure,
        handler: None,
        file: Some(path.to_path_buf()),
    })
}

/// GStreamer 1.22's mp4mux writes the Opus header box (`dOps`) little-endian where the spec
/// says big-endian: players read a pre-skip of 14337 samples for 312 and an input rate of
/// 2 159 738 880 Hz, and ffmpeg drops the first ~0.7 s of sound and shifts the rest. The box
/// is put right in every `moov` on its way to the file (only when it is wrong, so a fixed
/// mp4mux is left alone).
fn fix_opus_header_byte_order(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        let Some(buffer) = info.buffer_mut() else { return gst::PadProbeReturn::Ok };
        let is_moov = buffer.size() >= 8 && buffer.map_readable().is_ok_and(|m| &m[4..8] == b"moov");
        if !is_moov {
            return gst::PadProbeReturn::Ok;
        }
        let Ok(mut map) = buffer.make_mut().map_writable() else { return gst::PadProbeReturn::Ok };
        swap_dops_fields(map.as_mut_slice());
        gst::PadProbeReturn::Ok
    });
}

/// Byte-swaps PreSkip and InputSampleRate of every `dOps` box in `moov` that was written
/// little-endian (its big-endian rate is beyond any audio rate).
pub(crate) fn swap_dops_fields(moov: &mut [u8]) {
    let mut from = 0;
    while let Some(at) = moov[from..].windows(4).position(|w| w == b"dOps").map(|p| p + from) {
        // type, version (1), channels (1), pre-skip (2), input rate (4)
        let body = at + 4;
        if let Some(fields) = moov.get_mut(body + 2..body + 8) {
            let rate_be = u32::from_be_bytes(fields[2..6].try_into().unwrap());
            let rate_le = u32::from_le_bytes(fields[2..6].try_into().unwrap());
            if rate_be > 384_000 && (1..=384_000).contains(&rate_le) {
                fields[0..2].reverse();
                fields[2..6].reverse();
            }
        }
        from = at + 4;
    }
}
