//! Closing an HLS output that egret died under: its playlist lists the segments closed before
//! the crash, and not the one being written. At the next start the playlist gets every
//! segment on disk (each unlisted one timed from its own PES timestamps) and its ENDLIST, so
//! players see the whole recording as ended. A segment the crash left without media is removed.

use std::path::{Path, PathBuf};

use super::OutputSnapshot;
use super::segments::{LIVE_WINDOW, Segment, render, write_atomic};

/// Recovers one interrupted HLS output (its `target` is the playlist, relative to storage).
pub fn recover(output: &mut OutputSnapshot, storage: &Path) {
    let playlist = storage.join(&output.target);
    let Some(dir) = playlist.parent().map(Path::to_path_buf) else { return };
    let text = std::fs::read_to_string(&playlist).unwrap_or_default();
    if text.contains("#EXT-X-ENDLIST") {
        return;
    }
    let mut segments = listed(&text, &dir);
    let prefix = match &output.segment_prefix {
        Some(prefix) => storage.join(prefix),
        None => dir.join(segment_prefix(&segments, &playlist)),
    };
    for path in unlisted(&prefix, &segments, &dir) {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let Some(duration) = std::fs::read(&path).ok().and_then(|data| ts_duration(&data)) else {
            // Opened just before the crash, not one timestamped packet in it: no media to
            // list, and left on disk it would be a segment its playlist never names.
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let uri = path.strip_prefix(&dir).unwrap_or(&path).to_string_lossy().to_string();
        segments.push(Segment { uri, duration, bytes });
    }
    write_atomic(&playlist, &render(&segments, 0, true, true));
    if let Some(live) = &output.live_target {
        let first = segments.len().saturating_sub(LIVE_WINDOW);
        write_atomic(&storage.join(live), &render(&segments[first..], first, true, false));
    }
    output.count = segments.len() as u64;
    output.bytes = segments.iter().map(|s| s.bytes).sum();
    output.duration = (segments.iter().map(|s| s.duration).sum::<f64>() * 1000.0).round() / 1000.0;
}

/// The segments a playlist names, with their sizes on disk.
fn listed(text: &str, dir: &Path) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut duration = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#EXTINF:") {
            duration = rest.trim_end_matches(',').split(',').next().and_then(|d| d.parse::<f64>().ok());
        } else if !line.starts_with('#') && !line.is_empty() {
            let bytes = std::fs::metadata(dir.join(line)).map(|m| m.len()).unwrap_or(0);
            segments.push(Segment { uri: line.to_string(), duration: duration.take().unwrap_or(0.0), bytes });
        }
    }
    segments
}

/// Segment files are `<prefix>_<index or time>.ts`. Records written before the prefix was
/// kept: the prefix of the listed ones, else the playlist's own name (the default when a
/// request names only one of them).
fn segment_prefix(segments: &[Segment], playlist: &Path) -> String {
    segments
        .first()
        .and_then(|s| s.uri.rsplit_once('_').map(|(prefix, _)| prefix.to_string()))
        .unwrap_or_else(|| playlist.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default())
}

/// Segment files on disk that the playlist does not name, in the order they were written.
fn unlisted(prefix: &Path, segments: &[Segment], dir: &Path) -> Vec<PathBuf> {
    let mut pattern = prefix.as_os_str().to_os_string();
    pattern.push("_");
    let pattern = PathBuf::from(pattern);
    let (Some(folder), Some(start)) = (pattern.parent(), pattern.file_name()) else { return Vec::new() };
    let start = start.to_string_lossy().to_string();
    let known: std::collections::HashSet<PathBuf> = segments.iter().map(|s| dir.join(&s.uri)).collect();
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                    name.starts_with(&start) && name.ends_with(".ts") && !known.contains(p)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Seconds of media in an MPEG-TS segment, from the PTS of its elementary streams (the video
/// stream when there is one): last − first plus one frame, as its packets show it. A segment
/// cut short by the crash ends at its last whole PES header.
fn ts_duration(data: &[u8]) -> Option<f64> {
    // Per stream id: (first, last, count) of PTS values in 90 kHz ticks.
    let mut streams: std::collections::BTreeMap<u8, (u64, u64, u64)> = Default::default();
    for packet in data.chunks_exact(188) {
        if packet[0] != 0x47 || packet[1] & 0x40 == 0 {
            continue;
        }
        let adaptation = (packet[3] >> 4) & 0x3;
        let mut at = 4;
        if adaptation & 0x2 != 0 {
            at += 1 + packet[4] as usize;
        }
        let pes = match packet.get(at..) {
            Some(p) if adaptation & 0x1 != 0 && p.len() >= 14 && p[..3] == [0, 0, 1] => p,
            _ => continue,
        };
        let stream_id = pes[3];
        if !(0xC0..=0xEF).contains(&stream_id) || pes[7] & 0x80 == 0 {
            continue;
        }
        let b = &pes[9..14];
        let pts = ((b[0] as u64 >> 1) & 0x7) << 30
            | (b[1] as u64) << 22
            | (b[2] as u64 >> 1) << 15
            | (b[3] as u64) << 7
            | (b[4] as u64 >> 1);
        let entry = streams.entry(stream_id).or_insert((pts, pts, 0));
        entry.0 = entry.0.min(pts);
        entry.1 = entry.1.max(pts);
        entry.2 += 1;
    }
    let video = streams.range(0xE0..=0xEF).next().map(|(_, v)| *v);
    let (first, last, count) = video.or_else(|| streams.values().next().copied())?;
    let frame = if count > 1 { (last - first) / (count - 1) } else { 0 };
    Some((last - first + frame) as f64 / 90_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pes_packet(stream_id: u8, pts: u64) -> Vec<u8> {
        let mut p = vec![0x47, 0x40, 0x100u16 as u8, 0x10];
        p.extend_from_slice(&[0, 0, 1, stream_id, 0, 0, 0x80, 0x80, 5]);
        p.extend_from_slice(&[
            0x21 | (((pts >> 30) & 0x7) as u8) << 1,
            (pts >> 22) as u8,
            (((pts >> 15) & 0x7f) as u8) << 1 | 1,
            (pts >> 7) as u8,
            ((pts & 0x7f) as u8) << 1 | 1,
        ]);
        p.resize(188, 0xff);
        p
    }

    #[test]
    fn a_cut_segment_is_timed_from_its_pes_timestamps() {
        // 30 fps video from 10 s on: 90 frames = 3 s; audio is ignored when video is there.
        let mut data = Vec::new();
        for i in 0..90u64 {
            data.extend(pes_packet(0xE0, 900_000 + i * 3000));
            data.extend(pes_packet(0xC0, 900_000 + i * 1920));
        }
        data.extend_from_slice(&[0x47, 0x00]); // a packet cut by the crash
        let seconds = ts_duration(&data).unwrap();
        assert!((seconds - 3.0).abs() < 0.001, "{seconds}");
        assert_eq!(ts_duration(&[0u8; 188]), None);
    }

    #[test]
    fn playlist_gets_every_segment_and_its_end() {
        let dir = std::env::temp_dir().join(format!("egret-hls-recovery-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hls")).unwrap();
        let segment = |from: u64| (0..60u64).flat_map(|i| pes_packet(0xE0, from + i * 3000)).collect::<Vec<u8>>();
        std::fs::write(dir.join("hls/a_00000.ts"), segment(0)).unwrap();
        std::fs::write(dir.join("hls/a_00001.ts"), segment(180_000)).unwrap();
        std::fs::write(dir.join("hls/a_00002.ts"), [0u8; 0]).unwrap(); // opened as egret died
        std::fs::write(
            dir.join("hls/p.m3u8"),
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:2.000,\na_00000.ts\n",
        )
        .unwrap();
        let output = serde_json::json!({
            "location": null, "backup": null, "upload_error": null, "field": "segment_outputs[0]",
            "kind": "segments", "target": "hls/p.m3u8", "started_at": 1.0, "ended_at": null,
            "status": "active", "error": null, "bytes": 0, "duration": 0.0, "count": 1,
        });
        let mut output: OutputSnapshot = serde_json::from_value(output).unwrap();
        recover(&mut output, &dir);
        let text = std::fs::read_to_string(dir.join("hls/p.m3u8")).unwrap();
        assert!(text.contains("a_00000.ts\n#EXTINF:2.000,\na_00001.ts\n#EXT-X-ENDLIST"), "{text}");
        assert_eq!(output.count, 2);
        assert_eq!(output.bytes, 2 * 60 * 188);
        assert!(!dir.join("hls/a_00002.ts").exists(), "a segment without media stays on disk");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
