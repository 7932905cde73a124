//! One X display and one PulseAudio server kept ready, so a page capture starts without
//! waiting for them (Xvfb ~0.5 s; a new Pulse null sink gives no samples for ~2 s). The
//! pooled Pulse sleeps (its sink suspended) until taken: an idle egret costs no CPU.
//! Taken by the next egress that fits, refilled in the background; a taker that comes while
//! a refill runs waits for it rather than starting a second cold server beside it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::sync::Mutex;

use super::display::{self, Pulse, Xvfb};

/// Pooled screens fit landscape and portrait 1080p windows; larger ones start their own.
const POOL_SCREEN: (u32, u32) = (1920, 1920);

static XVFB: Mutex<Option<Xvfb>> = Mutex::const_new(None);
static PULSE: Mutex<Option<Pulse>> = Mutex::const_new(None);
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// Starts filling the pool (engine start, and after each take). Each slot's lock is held
/// while its server starts.
pub fn refill() {
    tokio::spawn(async {
        let mut xvfb = XVFB.lock().await;
        if xvfb.is_none() {
            match display::start_xvfb(POOL_SCREEN.0, POOL_SCREEN.1).await {
                Ok(x) => *xvfb = Some(x),
                Err(e) => tracing::debug!("no pooled Xvfb: {e:#}"),
            }
        }
    });
    tokio::spawn(async {
        let mut pulse = PULSE.lock().await;
        if pulse.is_none() {
            let name = format!("egret-pulse-{}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
            match display::start_pulse(&std::env::temp_dir().join(name)).await {
                Ok(p) => {
                    // Asleep until taken; one that cannot sleep still serves, awake.
                    if let Err(e) = p.set_suspended(true).await {
                        tracing::debug!("pooled PulseAudio stays awake: {e:#}");
                    }
                    *pulse = Some(p);
                }
                Err(e) => tracing::debug!("no pooled PulseAudio: {e:#}"),
            }
        }
    });
}

/// Stops the pooled processes (engine shutdown).
pub async fn clear() {
    XVFB.lock().await.take();
    PULSE.lock().await.take();
}

/// A display for a `width` x `height` window: the pooled one if it fits, else a new one.
pub async fn xvfb(width: u32, height: u32) -> Result<Xvfb> {
    let pooled = XVFB.lock().await.take_if(|x| x.width >= width && x.height >= height);
    match pooled {
        Some(x) => {
            refill();
            Ok(x)
        }
        None => display::start_xvfb(width, height).await,
    }
}

/// A sound server: the pooled, already warm one, else a new one in `dir`.
pub async fn pulse(dir: &Path) -> Result<Pulse> {
    let pooled = PULSE.lock().await.take();
    match pooled {
        Some(p) => {
            refill();
            match p.set_suspended(false).await {
                Ok(()) => Ok(p),
                Err(e) => {
                    tracing::warn!("the pooled PulseAudio did not wake ({e:#}): starting another");
                    display::start_pulse(dir).await
                }
            }
        }
        None => display::start_pulse(dir).await,
    }
}
