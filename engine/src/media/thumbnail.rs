//! A still of a running egress's picture, for the status page: one raw frame taken from the
//! encoder's input by a pad probe that exists only while a picture is asked for, so an egress
//! nobody looks at pays nothing. The frame is scaled and JPEG-encoded off the pipeline's
//! threads (`gst_video_convert_sample`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::oneshot;

/// The next frame through `pad` as a JPEG `width` pixels wide (height kept in proportion).
pub async fn jpeg(pad: gst::Pad, width: u32) -> Result<Vec<u8>> {
    let (frame_tx, frame_rx) = oneshot::channel::<gst::Sample>();
    let frame_tx = std::sync::Mutex::new(Some(frame_tx));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let (Some(buffer), Some(caps)) = (info.buffer(), pad.current_caps()) else { return gst::PadProbeReturn::Ok };
        if let Some(tx) = frame_tx.lock().unwrap().take() {
            let _ = tx.send(gst::Sample::builder().buffer(buffer).caps(&caps).build());
        }
        gst::PadProbeReturn::Remove
    })
    .ok_or_else(|| anyhow!("the picture cannot be watched"))?;
    let sample = tokio::time::timeout(Duration::from_secs(5), frame_rx)
        .await
        .context("no frame within 5 s")?
        .context("the egress ended")?;
    tokio::task::spawn_blocking(move || {
        let caps = gst::Caps::builder("image/jpeg")
            .field("width", width as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .build();
        let still = gstreamer_video::convert_sample(&sample, &caps, Some(gst::ClockTime::from_seconds(5)))
            .context("converting the frame to JPEG")?;
        let buffer = still.buffer().ok_or_else(|| anyhow!("an empty picture"))?;
        let map = buffer.map_readable().context("reading the picture")?;
        Ok(map.as_slice().to_vec())
    })
    .await?
}
