//! Chrome capture: Debian chromium on a private Xvfb display, playing into a private PulseAudio
//! sink, driven over CDP (chromiumoxide), captured by ximagesrc + pulsesrc. Media never leaves
//! GStreamer; CDP only navigates and reports console messages.

mod cadence;
mod display;
pub mod pool;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use chromiumoxide::Browser;
use chromiumoxide::cdp::browser_protocol::inspector::EventTargetCrashed;
use chromiumoxide::cdp::js_protocol::runtime::EventConsoleApiCalled;
use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::{MediaKind, MediaPad, add_chain, capsfilter, make};

#[derive(Debug, Clone)]
pub struct ChromeOptions {
    pub url: String,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub video: bool,
    pub audio: bool,
    pub load_timeout: Duration,
}

/// Console messages of the page: kept, so a wait that starts after a message still sees it.
#[derive(Default)]
pub struct Console {
    history: Mutex<Vec<String>>,
    notify: Notify,
}

impl Console {
    fn push(&self, text: String) {
        self.history.lock().unwrap().push(text);
        self.notify.notify_waiters();
    }

    fn seen(&self, pattern: &str) -> bool {
        self.history.lock().unwrap().iter().any(|m| console_matches(m, pattern))
    }

    /// Waits until the page logged `pattern` (exactly, or followed by a space and more).
    pub async fn wait_for(&self, pattern: &str, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if self.seen(pattern) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

pub fn console_matches(message: &str, pattern: &str) -> bool {
    message == pattern || message.strip_prefix(pattern).is_some_and(|rest| rest.starts_with(' '))
}

/// What the page reports to the egress while it runs.
pub struct PageEvents {
    pub on_console: Box<dyn Fn(String) + Send + Sync>,
    /// Called once if chromium or the page's renderer dies.
    pub on_crash: Box<dyn Fn(String) + Send + Sync>,
}

/// One running chromium with its display and sound server; everything stops when dropped.
pub struct ChromeSession {
    xvfb: Option<display::Xvfb>,
    pulse: Option<display::Pulse>,
    _browser: Browser,
    _kill_chromium: oneshot::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
    dir: PathBuf,
    pub console: Arc<Console>,
    pub pid: Option<u32>,
}

impl Drop for ChromeSession {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl ChromeSession {
    /// Starts display, sound and chromium, then opens `url`. Fails with chromium's own
    /// navigation error (`net::ERR_CONNECTION_REFUSED`...) when the page cannot load.
    pub async fn launch(egress_id: &str, opts: &ChromeOptions, events: PageEvents) -> Result<ChromeSession> {
        let began = std::time::Instant::now();
        let dir = std::env::temp_dir().join(format!("egret-{egress_id}"));
        std::fs::create_dir_all(&dir).context("creating the chrome session directory")?;
        let (xvfb, pulse) = tokio::join!(
            async { if opts.video { pool::xvfb(opts.width, opts.height).await.map(Some) } else { Ok(None) } },
            async { if opts.audio { pool::pulse(&dir.join("pulse")).await.map(Some) } else { Ok(None) } },
        );
        let (xvfb, pulse) = (xvfb?, pulse?);
        if opts.video && opts.framerate <= BATTERY_SAVER_HZ {
            render_at_capture_rate(&dir.join("profile"))?;
        }

        let mut command = display::helper("chromium");
        command.args(chromium_args(&dir, opts, xvfb.is_none())).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(x) = &xvfb {
            command.env("DISPLAY", &x.display);
        }
        match &pulse {
            Some(p) => {
                command.env("PULSE_SERVER", format!("unix:{}", p.socket.display())).env("PULSE_SINK", display::SINK)
            }
            None => command.env("PULSE_SERVER", "unix:/nonexistent"),
        };
        let mut child =
            command.spawn().context("cannot start chromium (install the chromium package: tests/setup.sh)")?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ws_url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_string());
                }
            }
            Err(anyhow!("chromium exited before opening its DevTools endpoint"))
        })
        .await
        .context("chromium did not start within 20 s")??;

        let devtools_ms = began.elapsed().as_millis();
        let on_crash = Arc::new(events.on_crash);
        let mut tasks = Vec::new();
        // Keep reading stderr (a full pipe would block chromium) and watch for its exit.
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "chromium", "{line}");
            }
        }));
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let crash = on_crash.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let reason = match status {
                        Ok(s) => match s.signal() {
                            Some(sig) => format!("chromium was killed (signal {sig})"),
                            None => format!("chromium exited ({s})"),
                        },
                        Err(e) => format!("chromium lost: {e}"),
                    };
                    crash(reason);
                }
                _ = kill_rx => { let _ = child.kill().await; }
            }
        }));

        let (browser, mut handler) = Browser::connect(ws_url).await.context("connecting to chromium over CDP")?;
        tasks.push(tokio::spawn(async move { while handler.next().await.is_some() {} }));
        let first_tabs = browser.pages().await.unwrap_or_default();
        // A new page rather than the first tab: navigating the first tab can hang.
        let page = browser.new_page("about:blank").await.context("opening a page")?;
        for tab in first_tabs {
            let _ = tab.close().await;
        }

        let console = Arc::new(Console::default());
        let mut messages = page.event_listener::<EventConsoleApiCalled>().await?;
        let (sink, on_console) = (console.clone(), events.on_console);
        tasks.push(tokio::spawn(async move {
            while let Some(event) = messages.next().await {
                let text = event
                    .args
                    .iter()
                    .map(|a| match &a.value {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => a.description.clone().unwrap_or_default(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                // A template's own logging, for whoever debugs it (RUST_LOG=page=debug).
                tracing::debug!(target: "page", "{text}");
                sink.push(text.clone());
                on_console(text);
            }
        }));
        let mut crashes = page.event_listener::<EventTargetCrashed>().await?;
        tasks.push(tokio::spawn(async move {
            if crashes.next().await.is_some() {
                on_crash("the page crashed (renderer died)".to_string());
            }
        }));

        let session =
            ChromeSession { xvfb, pulse, _browser: browser, _kill_chromium: kill_tx, tasks, dir, console, pid };
        let navigate_ms = began.elapsed().as_millis();
        // Named without its query in errors: a layout page's query carries a room access token.
        let shown = opts.url.split(['?', '#']).next().unwrap_or_default();
        match tokio::time::timeout(opts.load_timeout, page.goto(opts.url.as_str())).await {
            Ok(Ok(_)) => {
                let loaded_ms = began.elapsed().as_millis();
                tracing::info!(egress = egress_id, devtools_ms, navigate_ms, loaded_ms, "page loaded");
                Ok(session)
            }
            Ok(Err(chromiumoxide::error::CdpError::ChromeMessage(text))) => {
                Err(anyhow!("navigation to {shown} failed: {text}"))
            }
            Ok(Err(e)) => Err(anyhow!("navigation to {shown} failed: {e}")),
            Err(_) => Err(anyhow!("{shown} did not load within {} s", opts.load_timeout.as_secs())),
        }
    }

    /// The capture sources, added to the pipeline: the window's pixels and the sink's sound.
    pub fn capture(&self, pipeline: &gst::Pipeline, opts: &ChromeOptions) -> Result<Vec<MediaPad>> {
        let mut pads = Vec::new();
        if let Some(x) = &self.xvfb {
            let src = make("ximagesrc", None)?;
            src.set_property("display-name", &x.display);
            src.set_property("use-damage", false);
            src.set_property("show-pointer", false);
            src.set_property("startx", 0u32);
            src.set_property("starty", 0u32);
            src.set_property("endx", opts.width - 1);
            src.set_property("endy", opts.height - 1);
            // Sampled at twice the output rate, each new picture kept once (see `cadence`).
            let caps = capsfilter(&format!("video/x-raw,framerate={}/1", opts.framerate * 2))?;
            add_chain(pipeline, &[&src, &caps])?;
            let pad = caps.static_pad("src").expect("src");
            cadence::keep_in_step(&pad, opts.framerate);
            pads.push(MediaPad { kind: MediaKind::Video, pad });
        }
        if let Some(p) = &self.pulse {
            let src = make("pulsesrc", None)?;
            src.set_property("server", format!("unix:{}", p.socket.display()));
            src.set_property("device", format!("{}.monitor", display::SINK));
            src.set_property("provide-clock", false);
            let caps = capsfilter("audio/x-raw,rate=48000,channels=2")?;
            add_chain(pipeline, &[&src, &caps])?;
            pads.push(MediaPad { kind: MediaKind::Audio, pad: caps.static_pad("src").expect("src") });
        }
        Ok(pads)
    }
}

/// Chromium's Battery Saver draws at 30 Hz (under Xvfb it otherwise draws at 60, twice what
/// is captured): about 0.2 core less for an animated page. It also slows the page's timers
/// when hidden, which a kiosk window never is.
const BATTERY_SAVER_HZ: u32 = 30;

/// Turns Battery Saver on in a fresh profile (chromium reads `Local State` at launch).
fn render_at_capture_rate(profile: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(profile).context("creating the chromium profile")?;
    let state = r#"{"performance_tuning":{"battery_saver_mode":{"state":3}}}"#;
    std::fs::write(profile.join("Local State"), state).context("writing the chromium profile's Local State")
}

fn chromium_args(dir: &std::path::Path, opts: &ChromeOptions, headless: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-quic",
        "--kiosk",
        "--hide-scrollbars",
        "--window-position=0,0",
        "--force-device-scale-factor=1",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--password-store=basic",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", dir.join("profile").display()));
    args.push(format!("--window-size={},{}", opts.width, opts.height));
    if running_as_root() {
        args.push("--no-sandbox".into()); // chromium refuses to run as root with its sandbox
    }
    if headless {
        args.push("--headless=new".into());
    }
    if !opts.audio {
        args.push("--mute-audio".into());
    }
    args.push("about:blank".into());
    args
}
