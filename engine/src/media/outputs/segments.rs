//! HLS output (`segment_outputs`, LiveKit's SegmentedFileOutput): MPEG-TS segments cut by
//! splitmuxsink at keyframes, and playlists we write ourselves (hlssink2 on 1.22 writes no
//! playlist type): EVENT while live, ENDLIST at the end, plus an optional sliding-window live
//! playlist.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;
use livekit_protocol as lk;
use serde_json::Value;

use super::uploads::UploadQueue;
use super::{BranchHandler, BranchParts, BuildTarget, Output, OutputKind, OutputSnapshot, OutputSpec, OutputStatus};
use super::{ResultContext, mux_input};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
use crate::request::encoding::{AudioCodec, EncodeSettings, VideoCodec};
use crate::request::fields::{FieldError, FieldResult, Obj};
use crate::request::filepath::{check_relative, inside};
use crate::request::outputs::{check_codecs, upload_target};
use crate::storage::UploadConfig;

pub static KIND: OutputKind = OutputKind {
    name: "segments",
    request_fields: &["segment_outputs"],
    unified_key: Some("segments"),
    parse,
    livekit_result,
    recover: super::hls_recovery::recover,
};

#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOutput {
    pub filename_prefix: String,
    pub playlist_name: String,
    pub live_playlist_name: Option<String>,
    pub segment_duration: u32,
    pub timestamp_suffix: bool,
    pub upload: Option<UploadConfig>,
}

fn parse(request: &mut Obj, settings: &EncodeSettings) -> FieldResult<Vec<Output>> {
    let mut outputs = Vec::new();
    for (i, v) in request.array("segment_outputs")?.iter().enumerate() {
        let field = format!("segment_outputs[{i}]");
        outputs.push(Output::new(field.clone(), parse_one(v, &field, settings)?));
    }
    Ok(outputs)
}

fn parse_one(v: &Value, field: &str, settings: &EncodeSettings) -> FieldResult<SegmentOutput> {
    let mut o = Obj::new(v, field)?;
    // DEFAULT_SEGMENTED_FILE_PROTOCOL and HLS_PROTOCOL both mean HLS.
    o.enumeration("protocol", &["DEFAULT_SEGMENTED_FILE_PROTOCOL", "HLS_PROTOCOL"])?;
    let filename_prefix = o.string("filename_prefix")?.unwrap_or_default();
    let playlist_name = o.string("playlist_name")?.unwrap_or_default();
    let live_playlist_name = o.string("live_playlist_name")?.filter(|s| !s.is_empty());
    for (key, value) in [("filename_prefix", &filename_prefix), ("playlist_name", &playlist_name)] {
        check_relative(value, &o.field_path(key))?;
    }
    if let Some(live) = &live_playlist_name {
        check_relative(live, &o.field_path("live_playlist_name"))?;
    }
    let segment_duration = match o.uint("segment_duration")? {
        None | Some(0) => 4,
        Some(d) if d <= 60 => d,
        Some(_) => {
            return Err(FieldError::new(o.field_path("segment_duration"), "must be at most 60 seconds"));
        }
    };
    let timestamp_suffix = o.enumeration("filename_suffix", &["INDEX", "TIMESTAMP"])? == Some(1);
    let upload = upload_target(&mut o)?;
    check_codecs(settings, &[VideoCodec::H264], &[AudioCodec::Aac], field, "HLS (MPEG-TS)")?;
    o.finish(&[])?;
    Ok(SegmentOutput { filename_prefix, playlist_name, live_playlist_name, segment_duration, timestamp_suffix, upload })
}

impl OutputSpec for SegmentOutput {
    fn build(&self, field: &str, target: &mut dyn BuildTarget, encoder: usize) -> FieldResult<()> {
        let fail = |e: anyhow::Error| FieldError::new(field, format!("{e:#}"));
        let paths = self.paths(target, field)?;
        target.claim(&paths.playlist, false, &format!("{field}.playlist_name"))?;
        if let Some(live) = &paths.live_playlist {
            target.claim(live, false, &format!("{field}.live_playlist_name"))?;
        }
        target.claim(&paths.prefix, true, &format!("{field}.filename_prefix"))?;
        let status = OutputStatus::new(field.into(), &KIND, target.relative(&paths.playlist));
        *status.live_target.lock().unwrap() = paths.live_playlist.as_deref().map(|p| target.relative(p));
        *status.segment_prefix.lock().unwrap() = Some(target.relative(&paths.prefix));
        let parts =
            build(target.encoder(encoder), paths, status.clone(), target.queue_for(&self.upload)).map_err(fail)?;
        // Its pieces go through the upload queue; the uploader is where its manifest goes.
        target.attach(encoder, parts, status, target.uploader(&self.upload)).map_err(fail)
    }
}

impl SegmentOutput {
    fn paths(&self, target: &dyn BuildTarget, field: &str) -> FieldResult<SegmentPaths> {
        let template = target.template();
        let names = hls_names(
            &template.expand(&self.filename_prefix),
            &template.expand(&self.playlist_name),
            self.live_playlist_name.as_deref().map(|l| template.expand(l)).as_deref(),
            &template.default_stem(),
        )
        .map_err(|(key, message)| FieldError::new(format!("{field}.{key}"), message))?;
        let storage = target.storage();
        let at = |name: &str, key: &str| inside(storage, &format!("{}{name}", names.dir), &format!("{field}.{key}"));
        Ok(SegmentPaths {
            playlist: at(&names.playlist, "playlist_name")?,
            live_playlist: names.live_playlist.as_deref().map(|l| at(l, "live_playlist_name")).transpose()?,
            prefix: at(&names.prefix, "filename_prefix")?,
            segment_duration: self.segment_duration,
            timestamp_suffix: self.timestamp_suffix,
        })
    }
}

/// Where an HLS output's files go, relative to storage: all in `dir`.
#[derive(Debug, PartialEq)]
struct HlsNames {
    /// The playlist's folder (`""` or ending in `/`).
    dir: String,
    playlist: String,
    live_playlist: Option<String>,
    /// Segment names before `_00000.ts`, relative to `dir`.
    prefix: String,
}

/// LiveKit's naming rules (its `updatePrefixAndPlaylist`): the playlist's folder is where
/// everything goes; a playlist without a folder takes the segments' folder; a segment folder
/// other than the playlist's is relative to it; playlist and prefix default to each other's
/// name, then to `default_stem`; extensions are dropped and `.m3u8` added; the live playlist
/// sits in the playlist's folder.
fn hls_names(
    prefix: &str,
    playlist: &str,
    live: Option<&str>,
    default_stem: &str,
) -> Result<HlsNames, (&'static str, &'static str)> {
    let split = |p: &str| match p.rfind('/') {
        Some(i) => (p[..=i].to_string(), p[i + 1..].to_string()),
        None => (String::new(), p.to_string()),
    };
    let stem = |name: String| match name.rfind('.') {
        Some(i) => name[..i].to_string(),
        None => name,
    };
    let (mut dir, playlist_base) = split(playlist);
    let (mut segment_dir, prefix_base) = split(prefix);
    let live = live.filter(|l| !l.is_empty()).map(split);
    if let Some((live_dir, _)) = &live
        && !live_dir.is_empty()
        && *live_dir != dir
    {
        return Err(("live_playlist_name", "must be in the same folder as playlist_name"));
    }
    if segment_dir == dir {
        segment_dir.clear();
    } else if dir.is_empty() {
        dir = std::mem::take(&mut segment_dir);
    }
    let mut playlist_base = stem(playlist_base);
    if playlist_base.is_empty() {
        playlist_base = if prefix_base.is_empty() { default_stem.to_string() } else { prefix_base.clone() };
    }
    let prefix_base = if prefix_base.is_empty() { playlist_base.clone() } else { prefix_base };
    let live_playlist = live.map(|(_, base)| format!("{}.m3u8", stem(base)));
    let playlist = format!("{playlist_base}.m3u8");
    if live_playlist.as_ref() == Some(&playlist) {
        return Err(("live_playlist_name", "must differ from playlist_name"));
    }
    Ok(HlsNames { dir, playlist, live_playlist, prefix: format!("{segment_dir}{prefix_base}") })
}

fn livekit_result(output: &OutputSnapshot, ctx: &ResultContext, info: &mut lk::EgressInfo) {
    info.segment_results.push(lk::SegmentsInfo {
        playlist_name: output.target.clone(),
        duration: output.duration_ns(),
        size: output.bytes as i64,
        playlist_location: ctx.location(output),
        live_playlist_name: output.live_target.clone().unwrap_or_default(),
        live_playlist_location: output
            .live_target
            .as_ref()
            .map(|live| ctx.storage.join(live).to_string_lossy().to_string())
            .unwrap_or_default(),
        segment_count: output.count as i64,
        started_at: ctx.started_at,
        ended_at: ctx.ended_at,
    });
}

pub(super) const LIVE_WINDOW: usize = 5;

/// Resolved locations of one HLS output.
pub struct SegmentPaths {
    pub playlist: PathBuf,
    pub live_playlist: Option<PathBuf>,
    /// Segment files are `<prefix>_00000.ts`, `<prefix>_00001.ts`...
    pub prefix: PathBuf,
    pub segment_duration: u32,
    pub timestamp_suffix: bool,
}

pub fn build(
    encoder: &Encoder,
    paths: SegmentPaths,
    status: Arc<OutputStatus>,
    uploads: Option<UploadQueue>,
) -> Result<BranchParts> {
    let bin = gst::Bin::new();
    let split = make("splitmuxsink", None)?;
    split.set_property("muxer", make("mpegtsmux", None)?);
    // A sink that prerolls, added to a playing pipeline, makes the whole pipeline lose its
    // state and wait for every sink to preroll again; webrtcbin's own sinks (a room joined
    // for signalling) never do, and nothing would flow any more. No output sink prerolls.
    let file = make("filesink", None)?;
    file.set_property("async", false);
    split.set_property("sink", &file);
    // splitmuxsink itself still goes through an async state change: keep it inside the branch.
    bin.set_property("async-handling", true);
    split.set_property("max-size-time", paths.segment_duration as u64 * 1_000_000_000);
    split.set_property("send-keyframe-requests", true);
    let prefix = paths.prefix.to_string_lossy().to_string();
    let timestamp_suffix = paths.timestamp_suffix;
    split.connect("format-location", false, move |args| {
        let index = args[1].get::<u32>().unwrap_or(0);
        let name = if timestamp_suffix {
            format!("{prefix}_{}.ts", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"))
        } else {
            format!("{prefix}_{index:05}.ts")
        };
        Some(name.to_value())
    });
    bin.add(&split)?;

    let mut inputs = Vec::new();
    if encoder.has(MediaKind::Video) {
        inputs.push(mux_input(&bin, &split, Codec::Video(VideoCodec::H264), "video", false)?);
    }
    if encoder.has(MediaKind::Audio) {
        inputs.push(mux_input(&bin, &split, Codec::Audio(AudioCodec::Aac), "audio_%u", false)?);
    }
    super::align_video_to_aac(&inputs, encoder.settings.audio_frequency);
    let measure = inputs.first().map(|(_, p)| p.clone()).ok_or_else(|| anyhow::anyhow!("no media for HLS"))?;
    let handler = Playlist { paths, segments: Vec::new(), opened_at: 0, status, uploads };
    Ok(BranchParts { bin, inputs, measure, handler: Some(Box::new(handler)), file: None })
}

pub(super) struct Segment {
    pub uri: String,
    pub duration: f64,
    pub bytes: u64,
}

struct Playlist {
    paths: SegmentPaths,
    segments: Vec<Segment>,
    opened_at: u64,
    status: Arc<OutputStatus>,
    uploads: Option<UploadQueue>,
}

impl BranchHandler for Playlist {
    fn on_element_message(&mut self, message: &gst::StructureRef, status: &OutputStatus) {
        let running_time = message.get::<u64>("running-time").unwrap_or(0);
        match message.name().as_str() {
            "splitmuxsink-fragment-opened" => self.opened_at = running_time,
            "splitmuxsink-fragment-closed" => {
                let Ok(location) = message.get::<String>("location") else {
                    return;
                };
                let location = PathBuf::from(location);
                let bytes = std::fs::metadata(&location).map(|m| m.len()).unwrap_or(0);
                let duration = running_time.saturating_sub(self.opened_at) as f64 / 1e9;
                let dir = self.paths.playlist.parent().unwrap_or(Path::new("."));
                self.segments.push(Segment { uri: relative(dir, &location), duration, bytes });
                status.count.store(self.segments.len() as u64, Ordering::Relaxed);
                if let Some(uploads) = &self.uploads {
                    uploads.push(location, &self.status, false);
                }
                self.write(false);
            }
            _ => {}
        }
    }

    fn on_finish(&mut self, status: &OutputStatus) {
        // At EOS the last closing running time falls short of the last frame: use the frame.
        let last_end = status.last_pts().saturating_sub(self.opened_at) as f64 / 1e9;
        if let Some(last) = self.segments.last_mut() {
            last.duration = last.duration.max(last_end);
        }
        status.bytes.store(self.segments.iter().map(|s| s.bytes).sum(), Ordering::Relaxed);
        self.write(true);
    }
}

impl Playlist {
    fn write(&self, ended: bool) {
        let all = render(&self.segments, 0, ended, true);
        write_atomic(&self.paths.playlist, &all);
        if let Some(live) = &self.paths.live_playlist {
            let first = self.segments.len().saturating_sub(LIVE_WINDOW);
            write_atomic(live, &render(&self.segments[first..], first, ended, false));
        }
        // After the segments they name: a player never finds a playlist ahead of its media.
        if let Some(uploads) = &self.uploads {
            uploads.push(self.paths.playlist.clone(), &self.status, true);
            if let Some(live) = &self.paths.live_playlist {
                uploads.push(live.clone(), &self.status, false);
            }
        }
    }
}

pub(super) fn render(segments: &[Segment], media_sequence: usize, ended: bool, event: bool) -> String {
    let target = segments.iter().map(|s| s.duration.ceil() as u64).max().unwrap_or(1).max(1);
    let mut out =
        format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{target}\n#EXT-X-MEDIA-SEQUENCE:{media_sequence}\n");
    if event {
        // A playlist may not change type (RFC 8216): EVENT throughout, closed by ENDLIST.
        out.push_str("#EXT-X-PLAYLIST-TYPE:EVENT\n");
    }
    for s in segments {
        out.push_str(&format!("#EXTINF:{:.3},\n{}\n", s.duration, s.uri));
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
    out
}

/// Players may read the playlist at any moment: never let them see half of it.
pub(super) fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("m3u8.tmp");
    if std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
        tracing::warn!(path = %path.display(), "could not write playlist");
    }
}

/// `target` relative to directory `dir` (both inside the storage directory).
fn relative(dir: &Path, target: &Path) -> String {
    let dir: Vec<_> = dir.components().collect();
    let target_parts: Vec<_> = target.components().collect();
    let common = dir.iter().zip(&target_parts).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..dir.len() {
        out.push("..");
    }
    for part in &target_parts[common..] {
        out.push(part);
    }
    out.to_string_lossy().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlist_text() {
        let segs = vec![
            Segment { uri: "a_00000.ts".into(), duration: 4.0, bytes: 1 },
            Segment { uri: "a_00001.ts".into(), duration: 2.5, bytes: 1 },
        ];
        let live = render(&segs, 0, false, true);
        assert!(live.contains("#EXT-X-PLAYLIST-TYPE:EVENT") && !live.contains("ENDLIST"));
        assert!(live.contains("#EXTINF:2.500,\na_00001.ts"));
        assert!(render(&segs, 0, true, true).ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(relative(Path::new("/s/hls"), Path::new("/s/hls/seg/x.ts")), "seg/x.ts");
        assert_eq!(relative(Path::new("/s/hls"), Path::new("/s/other/x.ts")), "../other/x.ts");
    }

    /// LiveKit's own naming table (its config tests), plus the default name.
    #[test]
    fn hls_names_follow_livekit() {
        let names = |prefix, playlist, live| {
            let n = hls_names(prefix, playlist, live, "room-T").unwrap();
            (n.dir, n.playlist, n.live_playlist, n.prefix)
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(names("", "playlist", None), ("".into(), "playlist.m3u8".into(), None, "playlist".into()));
        assert_eq!(
            names("", "conf_test/playlist", Some("conf_test/live_playlist")),
            ("conf_test/".into(), "playlist.m3u8".into(), some("live_playlist.m3u8"), "playlist".into())
        );
        assert_eq!(
            names("filename", "", Some("live_playlist2.m3u8")),
            ("".into(), "filename.m3u8".into(), some("live_playlist2.m3u8"), "filename".into())
        );
        assert_eq!(names("filename", "playlist", None), ("".into(), "playlist.m3u8".into(), None, "filename".into()));
        assert_eq!(
            names("filename", "conf_test/", None),
            ("conf_test/".into(), "filename.m3u8".into(), None, "filename".into())
        );
        assert_eq!(
            names("conf_test/", "playlist", None),
            ("conf_test/".into(), "playlist.m3u8".into(), None, "playlist".into())
        );
        assert_eq!(
            names("conf_test/filename", "playlist", None),
            ("conf_test/".into(), "playlist.m3u8".into(), None, "filename".into())
        );
        assert_eq!(
            names("conf_test_2/filename", "conf_test/playlist", None),
            ("conf_test/".into(), "playlist.m3u8".into(), None, "conf_test_2/filename".into())
        );
        assert_eq!(names("", "", None), ("".into(), "room-T.m3u8".into(), None, "room-T".into()));
        assert!(hls_names("", "a/p", Some("b/live"), "x").is_err());
        assert!(hls_names("", "a/p.m3u8", Some("a/p.m3u8"), "x").is_err());
    }
}
