//! A crash-safe MP4 cut off mid-write (the pipeline dropped without EOS, as SIGKILL leaves
//! it) is unreadable until repaired; repaired, ffprobe reads both tracks to their end.

use std::path::Path;
use std::process::Command;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::repair;

/// Writes H.264 + AAC through mp4mux as egret's file output does, and stops the pipeline
/// without EOS once `bytes` are on disk.
fn write_interrupted(path: &Path, bytes: u64) {
    crate::media::init_for_tests();
    let pipeline = gst::parse::launch(&format!(
        "mp4mux name=m start-gap-threshold=1 fragment-duration=250 fragment-mode=first-moov-then-finalise \
         ! filesink name=sink buffer-mode=unbuffered async=false location={} \
         videotestsrc pattern=ball ! video/x-raw,width=320,height=180,framerate=30/1 \
         ! x264enc speed-preset=ultrafast key-int-max=30 bframes=2 ! h264parse ! queue ! m.video_0 \
         audiotestsrc wave=ticks ! audio/x-raw,rate=48000 ! audioconvert ! avenc_aac ! aacparse ! queue ! m.audio_0",
        path.display()
    ))
    .unwrap();
    let pipeline = pipeline.downcast::<gst::Pipeline>().unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let written = std::sync::atomic::AtomicU64::new(0);
    sink.static_pad("sink").unwrap().add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buffer) = info.buffer() {
            let total = written.fetch_add(buffer.size() as u64, std::sync::atomic::Ordering::Relaxed);
            if total + buffer.size() as u64 >= bytes {
                let _ = tx.try_send(());
            }
        }
        gst::PadProbeReturn::Ok
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    rx.recv().unwrap();
    pipeline.set_state(gst::State::Null).unwrap();
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("egret-mp4-repair-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn probe(path: &Path) -> Option<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries", "stream=codec_name,nb_read_packets:format=duration"])
        .args(["-of", "compact"])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn a_cut_off_crash_safe_mp4_is_repaired_in_place() {
    let _alone = crate::media::LIVE_PIPELINE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let path = scratch("cut.mp4");
    write_interrupted(&path, 400_000);
    assert!(probe(&path).is_none(), "mp4mux's unfinished layout is expected to be unreadable");
    let before = std::fs::metadata(&path).unwrap().len();

    let repaired = repair(&path).unwrap().expect("a fragmented file is repaired");
    assert!(repaired.duration > 1.0, "{}", repaired.duration);
    let probed = probe(&path).expect("ffprobe reads the repaired file");
    assert!(probed.contains("codec_name=h264") && probed.contains("codec_name=aac"), "{probed}");
    let duration: f64 =
        probed.lines().find_map(|l| l.strip_prefix("format|duration=")).and_then(|d| d.parse().ok()).unwrap();
    assert!((duration - repaired.duration).abs() < 0.1, "{duration} vs {}", repaired.duration);
    let video_packets: u32 =
        probed.lines().find(|l| l.contains("h264")).and_then(|l| l.rsplit('=').next()?.parse().ok()).unwrap();
    // 30 fps: every whole fragment's frames are there.
    assert!((video_packets as f64 - duration * 30.0).abs() <= 2.0, "{video_packets} frames in {duration} s");
    // Every sample decodes: none left without its size or duration (mp4mux writes some so).
    let decoded =
        Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&path).args(["-f", "null", "-"]).output().unwrap();
    assert!(decoded.status.success() && decoded.stderr.is_empty(), "{}", String::from_utf8_lossy(&decoded.stderr));
    // Only a few KB are written; the media stays where it was.
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after <= before + 64 * 1024, "{before} → {after}");

    // Once repaired it is a plain MP4: nothing more to do.
    assert!(repair(&path).unwrap().is_none());
    assert_eq!(probe(&path).unwrap(), probed);
}

#[test]
fn a_file_killed_before_its_first_fragment_is_left_alone() {
    let _alone = crate::media::LIVE_PIPELINE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let path = scratch("early.mp4");
    write_interrupted(&path, 1000);
    assert!(repair(&path).unwrap().is_none());
}

#[test]
fn a_repair_cut_short_is_finished_from_its_journal() {
    let _alone = crate::media::LIVE_PIPELINE_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let path = scratch("journal.mp4");
    write_interrupted(&path, 300_000);
    let plan = super::Plan::make(&path).unwrap().unwrap();
    let journal = super::journal_path(&path);
    plan.write(&journal).unwrap();
    // Killed after cutting the file, before the new index: no index at all.
    let half = super::Plan { moov: Vec::new(), ..plan };
    half.apply(&path).unwrap();
    assert!(super::Plan::make(&path).unwrap().is_none(), "no index left: only the journal can finish it");

    let repaired = repair(&path).unwrap().expect("finished from the journal");
    assert!(!journal.exists());
    let probed = probe(&path).expect("ffprobe reads the finished repair");
    assert!(probed.contains("codec_name=h264") && probed.contains("codec_name=aac"), "{probed}");
    assert!(repaired.duration > 0.5);
}
