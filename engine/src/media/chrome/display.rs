//! The private X display and PulseAudio server of one Chrome capture, so that two egresses
//! never see or hear each other. Both processes die with the session (kill_on_drop).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use gstreamer as gst;
use gstreamer::prelude::*;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A helper process that dies with egret, even when egret is killed: the kernel sends it
/// SIGKILL when its parent goes (Drop alone cannot run on SIGKILL or for the static pool).
pub fn helper(program: &str) -> Command {
    let mut command = Command::new(program);
    command.kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Name of the null sink chromium plays into; its monitor is what we capture.
pub const SINK: &str = "egress";

pub struct Xvfb {
    _child: Child,
    pub display: String,
    /// Screen size: a window of up to this size can be captured.
    pub width: u32,
    pub height: u32,
}

/// Starts Xvfb on a free display. `-displayfd` makes Xvfb pick the number and print it once it
/// accepts connections, so there is neither a race on numbers nor a poll for readiness.
pub async fn start_xvfb(width: u32, height: u32) -> Result<Xvfb> {
    // A screen slightly larger than the window: no black 1-px edge in the capture.
    let screen = format!("{}x{}x24", width + 16, height + 16);
    let mut child = helper("Xvfb")
        .args(["-displayfd", "1", "-screen", "0", &screen, "-ac", "-nolisten", "tcp", "-nocursor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start Xvfb (install the xvfb package: tests/setup.sh)")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
        .await
        .context("Xvfb did not report a display within 10 s")??
        .context("Xvfb exited before it was ready")?;
    let number: u32 = line.trim().parse().with_context(|| format!("Xvfb printed `{line}`, not a display number"))?;
    Ok(Xvfb { _child: child, display: format!(":{number}"), width, height })
}

pub struct Pulse {
    _child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
    warm: Option<gst::Element>,
}

impl Pulse {
    /// Suspends or wakes the null sink. A suspended sink renders nothing, so a pooled server
    /// waiting for its egress costs nothing (awake it took 0.55 % of a core, and its warm-up
    /// reader 0.3 % more in egret). Waking keeps the low latency the reader asked for: a
    /// capture started right after gets its first samples as soon as from a sink never put to
    /// sleep (measured: 3 buffers in 174 ms after a wake, 176 ms without).
    pub async fn set_suspended(&self, suspended: bool) -> Result<()> {
        let server = format!("unix:{}", self.socket.display());
        let mut pactl = helper("pactl");
        pactl.args(["-s", &server, "suspend-sink", SINK, if suspended { "1" } else { "0" }]);
        pactl.stdout(Stdio::null()).stderr(Stdio::piped());
        let out = tokio::time::timeout(READY_TIMEOUT, pactl.output())
            .await
            .context("pactl did not answer within 10 s")?
            .context("cannot run pactl (install the pulseaudio-utils package: tests/setup.sh)")?;
        if !out.status.success() {
            bail!("pactl suspend-sink: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        if let Some(warm) = self.warm.take() {
            let _ = warm.set_state(gst::State::Null);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new null sink renders its first block of ~2 s before any reader gets samples; after that,
/// a reader asking for low latency keeps it in small blocks and a new capture starts within
/// ~50 ms. This reader stays attached so the server is warm by the time it is used (pool.rs).
async fn keep_sink_warm(socket: &Path) -> Result<gst::Element> {
    let description = format!(
        // 100 ms reads: enough to keep the sink out of its 2 s blocks, few wake-ups while idle.
        "pulsesrc server=unix:{} device={SINK}.monitor provide-clock=false buffer-time=400000 latency-time=100000 ! fakesink name=sink sync=false",
        socket.display()
    );
    let warm = gst::parse::launch(&description).context("building the Pulse warm-up reader")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let sink = warm.downcast_ref::<gst::Bin>().and_then(|b| b.by_name("sink")).context("warm-up sink")?;
    sink.static_pad("sink").context("warm-up sink pad")?.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        gst::PadProbeReturn::Remove
    });
    warm.set_state(gst::State::Playing).context("starting the Pulse warm-up reader")?;
    // Ready means samples flow: a capture started now gets its first ones at once.
    tokio::time::timeout(READY_TIMEOUT, rx).await.context("Pulse gave no samples within 10 s")??;
    Ok(warm)
}

/// Starts a PulseAudio server of our own with one null sink, reachable on a unix socket in
/// `dir` (removed with it). No D-Bus and no autospawn: nothing outside its egress plays into it.
pub async fn start_pulse(dir: &Path) -> Result<Pulse> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("native");
    let child = helper("pulseaudio")
        .args([
            "--daemonize=no",
            "--system=false",
            "--exit-idle-time=-1",
            "--disallow-exit=true",
            "--disable-shm=true",
            "-n",
            &format!("--load=module-native-protocol-unix auth-anonymous=1 socket={}", socket.display()),
            &format!("--load=module-null-sink sink_name={SINK} rate=48000 channels=2"),
            "--load=module-always-sink",
        ])
        .env("XDG_RUNTIME_DIR", dir)
        .env("HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start pulseaudio (install the pulseaudio package: tests/setup.sh)")?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    // Pulse has no readiness signal of its own: its socket appearing is the signal.
    while !socket.exists() {
        if tokio::time::Instant::now() > deadline {
            bail!("pulseaudio did not open {} within 10 s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let warm = Some(keep_sink_warm(&socket).await?);
    Ok(Pulse { _child: child, socket, dir: dir.to_path_buf(), warm })
}
