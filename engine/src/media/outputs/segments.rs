//! HLS output: MPEG-TS segments cut by splitmuxsink at keyframes, and playlists we write
//! ourselves (hlssink2 on 1.22 writes no playlist type): EVENT while live, ENDLIST at the end,
//! plus an optional sliding-window live playlist.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use gstreamer as gst;
use gstreamer::prelude::*;

use super::uploads::UploadQueue;
use super::{BranchHandler, BranchParts, OutputStatus, mux_input};
use crate::media::encoder::{Codec, Encoder};
use crate::media::{MediaKind, make};
use crate::request::encoding::{AudioCodec, VideoCodec};

const LIVE_WINDOW: usize = 5;

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
    let measure = inputs.first().map(|(_, p)| p.clone()).ok_or_else(|| anyhow::anyhow!("no media for HLS"))?;
    let handler = Playlist { paths, segments: Vec::new(), opened_at: 0, status, uploads };
    Ok(BranchParts { bin, inputs, measure, handler: Some(Box::new(handler)), file: None })
}

struct Segment {
    uri: String,
    duration: f64,
    bytes: u64,
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

fn render(segments: &[Segment], media_sequence: usize, ended: bool, event: bool) -> String {
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
fn write_atomic(path: &Path, text: &str) {
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
}
