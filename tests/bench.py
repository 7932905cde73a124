"""Bench: egret next to the bare pipeline doing the same work, measured in the same run.

  testsrc  the test source to MP4 at 720p30, egret vs gst-launch-1.0 with the same elements
  web      a light (animated.html) and a busy (busy.html) page with a tone to MP4 at 720p30:
           egret's web egress vs the bare path (Xvfb + PulseAudio + chromium + gst-launch-1.0
           ximagesrc/pulsesrc -> x264 -> MP4) with egret's settings, and the naive bare path
           (chromium at its 60 Hz, x264 veryfast at its default latency); distinct fps of each
  presets  x264 presets on the busy page at the same bitrate: encode CPU, PSNR and SSIM
  load     1, 2, 3 web egresses at once: repeated frames in each output (a moving page
           repeats none unless frames are dropped)
  track    one VP8 video track of a real LiveKit room copied to WebM (no transcoding), and one
           track composite (that track + its Opus audio) to MP4 at 720p30; the bare path for the
           composite decodes the copied files and encodes them the same way at real time
  room_composite  3, then 9 real publishers in a grid at 720p30: egret's own compositor vs
           the same layout page drawn by Chrome (egret's page path, and the bare Chrome capture:
           Xvfb + Pulse + chromium + gst-launch-1.0), distinct frames per second of each; 1-4
           native grids at once; audio only
  worker   a web egress started through livekit-server (egret as its egress worker) vs the
           same egress on egret's own API: answer and first-byte latency

Prints CPU-seconds per minute of output (whole process trees: chromium, Xvfb and Pulse count),
the egret/bare ratio and start latency (call -> first byte written).

    .venv/bin/python tests/bench.py [--seconds 20] [--rounds 2] [--only testsrc,web,load,track]

`track`, `room_composite` and `worker` need livekit-server and the tests' network namespace:
    sudo tests/netns.sh up && sudo ip netns exec egret-test .venv/bin/python tests/bench.py --only track,room_composite,worker
"""

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import EgretProcess, Pages  # noqa: E402
from media import duration, probe  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The same elements and settings egret builds for `testsrc` + one MP4 output (H264_720P_30).
BARE_PIPELINE = (
    "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,format=I420 "
    "! timeoverlay font-desc=\"Sans Bold 48\" halignment=center valignment=center "
    "! videoconvert ! videoscale ! videorate "
    "! video/x-raw,format=I420,width=1280,height=720,framerate=30/1,pixel-aspect-ratio=1/1 "
    "! x264enc bitrate=3000 speed-preset=veryfast tune=zerolatency key-int-max=120 "
    "! video/x-h264,profile=main ! h264parse ! queue ! mp4mux fragment-duration=250 name=mux "
    "! filesink buffer-mode=unbuffered location={path} "
    "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample "
    "! audio/x-raw,rate=48000,channels=2 ! avenc_aac bitrate=128000 ! aacparse ! queue ! mux."
)


def tree_cpu(root):
    """CPU seconds of `root` and every live descendant (chromium's helpers, Xvfb, Pulse)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total = 0.0
    for pid in cpu:
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += cpu[pid]
    return total


def first_byte_after(path: Path, t0_holder, result):
    """Polls until `path` has bytes; stores seconds since t0_holder[0]."""
    while True:
        try:
            if path.stat().st_size > 0:
                result.append(time.monotonic() - t0_holder[0])
                return
        except FileNotFoundError:
            pass
        time.sleep(0.001)


def run_egret(egret, seconds, name, recipe, **params):
    """One egress through egret: CPU of egret's whole process tree (chromium, Xvfb and Pulse
    included) while it records, output seconds, and HTTP call -> first byte written."""
    rel = f"bench/{name}.mp4"
    path = egret.storage / rel
    t0, latency = [time.monotonic()], []
    watcher = threading.Thread(target=first_byte_after, args=(path, t0, latency), daemon=True)
    watcher.start()
    cpu0 = tree_cpu(egret.proc.pid)
    t0[0] = time.monotonic()
    started = egret.api.start(recipe, file_outputs=[{"filepath": rel}], **params)
    watcher.join(timeout=30)
    time.sleep(seconds)
    cpu = tree_cpu(egret.proc.pid) - cpu0  # before stop: a page's processes are still alive
    egret.api.stop(started["egress_id"])
    info = egret.api.wait_status(started["egress_id"], "complete", "failed", timeout=60)
    if info["status"] != "complete":  # said, and measured all the same: the file is kept playable
        print(f"  ({name}: the egress {info['status']}: {info.get('error')})", flush=True)
    return cpu, duration(probe(path)), latency[0] if latency else float("nan")


def run_bare(workdir, seconds, index):
    path = workdir / f"bare-{index}.mp4"
    t0, latency = [time.monotonic()], []
    watcher = threading.Thread(target=first_byte_after, args=(path, t0, latency), daemon=True)
    watcher.start()
    t0[0] = time.monotonic()
    proc = subprocess.Popen(["gst-launch-1.0", "-e", *split_pipeline(BARE_PIPELINE.format(path=path))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher.join(timeout=10)
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)  # once: gst-launch -e sends EOS and waits for it
    _, status, usage = os.wait4(proc.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    return cpu, duration(probe(path)), latency[0] if latency else float("nan")


# The bare path of a track composite: the copied VP8 and Opus decoded, scaled and encoded like
# egret's H264_720P_30 encoder, paced at real time.
BARE_TRACK_COMPOSITE = (
    "filesrc location={video} ! matroskademux ! vp8dec ! videoconvert ! videoscale ! videorate "
    "! video/x-raw,format=I420,width=1280,height=720,framerate=30/1,pixel-aspect-ratio=1/1 "
    "! identity sync=true ! x264enc bitrate=3000 speed-preset=veryfast tune=zerolatency key-int-max=120 "
    "! video/x-h264,profile=main ! h264parse ! queue ! mp4mux fragment-duration=250 name=mux "
    "! filesink buffer-mode=unbuffered location={path} "
    "filesrc location={audio} ! oggdemux ! opusdec ! audioconvert ! audioresample "
    "! audio/x-raw,rate=48000,channels=2 ! identity sync=true ! avenc_aac bitrate=128000 ! aacparse ! queue ! mux."
)


def run_track(egret, seconds, recipe, **params):
    """One room egress: egret's CPU while it records, output seconds, request -> first media
    written (the egress's own started_at - created_at)."""
    cpu0 = tree_cpu(egret.proc.pid)
    started = egret.api.start(recipe, **params)
    info = egret.api.wait_status(started["egress_id"], "active")
    time.sleep(seconds)
    cpu = tree_cpu(egret.proc.pid) - cpu0
    egret.api.stop(started["egress_id"])
    info = egret.api.wait_status(started["egress_id"], "complete")
    (out,) = info["outputs"]
    return cpu, duration(probe(egret.storage / out["target"])), info["started_at"] - info["created_at"], out["target"]


@contextlib.contextmanager
def livekit_room(workdir, name, worker=False):
    """A livekit-server and an egret joined to it (the tests' harness), for room scenarios;
    with `worker`, egret is one of the server's egress workers."""
    from livekit_harness import LiveKitServer
    from conftest import free_port, wait_for_port

    (workdir / f"lk-{name}").mkdir()
    (workdir / f"egret-{name}").mkdir()
    server = LiveKitServer(workdir / f"lk-{name}", free_port, wait_for_port)
    egret = EgretProcess(workdir / f"egret-{name}", server.worker_config() if worker else server.config_toml())
    try:
        yield server, egret
    finally:
        egret.stop()
        server.stop()


def bench_track(workdir, seconds, rounds):
    from livekit_harness import Publisher

    with livekit_room(workdir, "track") as (server, egret):
        publisher = Publisher(server, "bench", "alice", "--codec", "vp8", "--width", "1280", "--height", "720")
        try:
            bench_track_runs(workdir, seconds, rounds, egret, publisher)
        finally:
            publisher.leave()


def bench_track_runs(workdir, seconds, rounds, egret, publisher):
    video, audio = publisher.tracks["video"], publisher.tracks["audio"]
    copy, composite, bare = [], [], []
    for i in range(rounds):
        cpu, media, latency, target = run_track(
            egret, seconds, "track", room_name="bench", track_id=video, file_outputs=[{"filepath": f"bench/v{i}"}]
        )
        copy.append((cpu, media, latency))
        if i == 0:
            *_, audio_target = run_track(
                egret, seconds, "track", room_name="bench", track_id=audio, file_outputs=[{"filepath": "bench/a"}]
            )
            video_file, audio_file = egret.storage / target, egret.storage / audio_target
        composite.append(run_track(
            egret, seconds, "track_composite", room_name="bench", audio_track_id=audio, video_track_id=video,
            file_outputs=[{"filepath": f"bench/tc{i}.mp4"}],
        )[:3])
        before = os.times()
        path = workdir / f"bare-tc-{i}.mp4"
        subprocess.run(
            ["gst-launch-1.0", "-e",
             *split_pipeline(BARE_TRACK_COMPOSITE.format(video=video_file, audio=audio_file, path=path))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        bare.append((cpu, duration(probe(path)), float("nan")))
    print(f"\nroom track -> WebM, VP8 1280x720 copied (no transcoding), {rounds} x {seconds:.0f} s")
    for cpu, media, latency in copy:
        print(f"  {per_minute(cpu, media):6.2f} CPU-s/min = {per_minute(cpu, media) / 60 * 100:.2f} % of a core "
              f"(target <= 1 %), start {latency * 1000:.0f} ms (target <= 250 ms)")
    report("room track composite -> MP4, 720p30 H.264 3 Mb/s + AAC",
           {"egret composite": composite, "bare decode+encode": bare}, rounds, seconds)


def bench_room_composite(workdir, seconds, rounds):
    """Publishers (moving pattern VP8 + a tone each) in a grid at 720p30, 3 then 9 of them:
    egret's own compositor next to Chrome drawing the same layout page (egret's page path, given
    as a custom template, and the bare Chrome capture); then native grids at once; then audio only."""
    import urllib.parse

    from livekit import api
    from livekit_harness import LK_KEY, LK_SECRET, Publisher

    with livekit_room(workdir, "rc") as (server, egret):
        publishers = []
        page_path = f"http://127.0.0.1:{egret.port}/layouts/"
        try:
            for count in (3, 9):
                while len(publishers) < count:
                    n = len(publishers)
                    # The first three at 640x360 (as earlier benches), then 320x180 at 15 fps (a 9-grid
                    # tile; publishers share the 2 cores with what is measured).
                    size = (("--width", "640", "--height", "360") if n < 3
                            else ("--width", "320", "--height", "180", "--fps", "15"))
                    publishers.append(Publisher(server, "bench-rc", f"p{n}", "--tone", str(220 + 110 * n), *size))
                rows = {"egret native grid": [], "egret page (Chrome)": [], "bare chrome+gst": []}
                distinct = {name: [] for name in rows}
                for i in range(rounds):
                    for name, extra in (("egret native grid", {}), ("egret page (Chrome)", {"custom_base_url": page_path})):
                        tag = f"rc{count}-{'page' if extra else 'native'}-{i}"
                        rows[name].append(run_egret(egret, seconds, tag, "room_composite", room_name="bench-rc",
                                                    layout="grid", **extra))
                        distinct[name].append(distinct_fps(egret.storage / f"bench/{tag}.mp4"))
                    token = (api.AccessToken(LK_KEY, LK_SECRET).with_identity(f"bare-{count}-{i}")
                             .with_grants(api.VideoGrants(room_join=True, room="bench-rc", hidden=True, recorder=True,
                                                          can_publish=False)).to_jwt())
                    page = f"{page_path}?url={urllib.parse.quote(server.url, safe='')}&token={token}&layout=grid"
                    rows["bare chrome+gst"].append(run_web_bare(workdir, page, seconds, f"rc{count}-{i}"))
                    distinct["bare chrome+gst"].append(distinct_fps(workdir / f"bare-web-rc{count}-{i}.mp4"))
                report(f"room composite, {count} publishers, grid -> MP4, 720p30 H.264 3 Mb/s + AAC", rows, rounds,
                       seconds, target=False)
                before = sum(tree_cpu(p.proc.pid) for p in publishers)
                time.sleep(10)
                spent = sum(tree_cpu(p.proc.pid) for p in publishers) - before
                print(f"  (the {count} publishers themselves use {spent / 10:.2f} of the 2 cores, beside every path)")
                native, page_cost = (sum(r[0] for r in rows[k]) / sum(r[1] for r in rows[k])
                                     for k in ("egret native grid", "egret page (Chrome)"))
                print(f"ratio native / page path: {native / page_cost:.3f} (target <= 0.4)")
                for name, values in distinct.items():
                    print(f"  distinct frames per second, {name}: {', '.join(f'{v:.1f}' for v in values)}")
                print("  (start latency: request -> first byte; the page path waits for Chrome and START_RECORDING)")
            bench_concurrent_grids(egret, seconds)
            # Audio only: the recipe mixes the tracks itself; the layout page given as a custom
            # template forces the Chrome path (headless chromium + Pulse) for comparison.
            audio = {"egret track mix": [], "chrome audio only": []}
            for i in range(rounds):
                audio["egret track mix"].append(
                    run_egret(egret, seconds, f"rca-{i}", "room_composite", room_name="bench-rc", audio_only=True))
                audio["chrome audio only"].append(
                    run_egret(egret, seconds, f"rcc-{i}", "room_composite", room_name="bench-rc", audio_only=True,
                              custom_base_url=page_path))
            report("room composite audio only, 9 publishers -> MP4 AAC", audio, rounds, seconds, target=False)
        finally:
            for p in publishers:
                p.leave()


def distinct_fps(path):
    """Distinct (not repeated) frames per second of the file: a grid of moving patterns changes
    every frame unless frames were dropped or repeated."""
    repeated, frames = repeated_frames(path)
    return frames * (1 - repeated) / max(duration(probe(path)), 1e-6)


def bench_concurrent_grids(egret, seconds):
    """1..4 native 720p30 grids of the same room at once: CPU, and whether each output kept
    every frame (frames written per second of output, distinct frames per second)."""
    print(f"\nconcurrent native grids (9 publishers, 720p30), {seconds:.0f} s each")
    for count in (1, 2, 3, 4):
        cpu0 = tree_cpu(egret.proc.pid)
        starts = [egret.api.start("room_composite", room_name="bench-rc", layout="grid",
                                  file_outputs=[{"filepath": f"bench/grids-{count}-{i}.mp4"}]) for i in range(count)]
        for s in starts:
            egret.api.wait_status(s["egress_id"], "active", timeout=60)
        time.sleep(seconds)
        cpu = tree_cpu(egret.proc.pid) - cpu0
        for s in starts:
            egret.api.stop(s["egress_id"])
        shown = []
        for s in starts:
            info = egret.api.wait_status(s["egress_id"], "complete", "failed", timeout=90)
            path = egret.storage / info["outputs"][0]["target"]
            repeated, frames = repeated_frames(path)
            length = duration(probe(path)) if frames else 0.0
            if info["status"] != "complete":
                shown.append(f"{info['status']}: {info.get('error')}")
                continue
            shown.append(f"{frames / length:.1f} fps written, {frames * (1 - repeated) / length:.1f} distinct")
        print(f"  {count} at once: {cpu / seconds:.2f} cores; " + "; ".join(shown))


def bench_worker(workdir, seconds, rounds):
    """Worker mode: a web egress started through livekit-server (psrpc dispatch over Redis) next
    to the same egress started on egret's own API, in the same run."""
    from livekit import api

    pages = Pages()
    with livekit_room(workdir, "worker", worker=True) as (server, egret):
        page = pages.url("animated.html?tone=440")
        answer, first_byte, direct = [], [], []
        for i in range(rounds):
            rel = f"bench/worker-{i}.mp4"
            t0, latency = [time.monotonic()], []
            watcher = threading.Thread(target=first_byte_after, args=(egret.storage / rel, t0, latency), daemon=True)
            watcher.start()
            t0[0] = time.monotonic()
            info = server.call(lambda lk, r=rel: lk.egress.start_web_egress(api.WebEgressRequest(
                url=page, file_outputs=[api.EncodedFileOutput(filepath=r)])))
            answer.append(time.monotonic() - t0[0])
            watcher.join(timeout=30)
            first_byte.append(latency[0] if latency else float("nan"))
            time.sleep(seconds)
            server.call(lambda lk: lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id)))
            server.wait_egress(info.egress_id, "EGRESS_COMPLETE")
            direct.append(run_egret(egret, seconds, f"worker-direct-{i}", "web", url=page)[2])
        ms = lambda xs: ", ".join(f"{x * 1000:.0f}" for x in xs)  # noqa: E731
        print(f"\nworker mode, web egress -> MP4 720p30, {rounds} x {seconds:.0f} s")
        print(f"  StartEgress through livekit-server answered in: {ms(answer)} ms (claim window included)")
        print(f"  ... first byte written after:                   {ms(first_byte)} ms")
        print(f"  the same egress on egret's own API, first byte: {ms(direct)} ms")
    pages.server.shutdown()


def split_pipeline(text):
    import shlex

    return shlex.split(text)


def per_minute(cpu, media_seconds):
    return cpu / media_seconds * 60.0


CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--kiosk", "--window-position=0,0", "--window-size=1280,720",
    "--autoplay-policy=no-user-gesture-required", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
]


# egret's H.264 settings, and what one would write without tuning (x264's default latency).
EGRET_X264 = "x264enc bitrate=3000 speed-preset=veryfast tune=zerolatency key-int-max=120"
NAIVE_X264 = "x264enc bitrate=3000 speed-preset=veryfast key-int-max=120"


def run_web_bare(workdir, page_url, seconds, index, x264=EGRET_X264):
    """The same capture by hand: Xvfb, PulseAudio, chromium (drawing at its 60 Hz), then
    gst-launch-1.0 capturing at 30 fps."""
    path = workdir / f"bare-web-{index}.mp4"
    pulse_dir = workdir / f"pulse-{index}"
    pulse_dir.mkdir()
    socket_path = pulse_dir / "native"
    t0, latency = [time.monotonic()], []
    watcher = threading.Thread(target=first_byte_after, args=(path, t0, latency), daemon=True)
    watcher.start()
    t0[0] = time.monotonic()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1296x736x24", "-ac", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    display = ":" + xvfb.stdout.readline().strip()
    pulse = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "--system=false", "--exit-idle-time=-1", "--disallow-exit=true", "-n",
         f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket_path}",
         "--load=module-null-sink sink_name=egress rate=48000 channels=2", "--load=module-always-sink"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(pulse_dir), "HOME": str(pulse_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not socket_path.exists():
        time.sleep(0.005)
    env = {**os.environ, "DISPLAY": display, "PULSE_SERVER": f"unix:{socket_path}", "PULSE_SINK": "egress"}
    chromium = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={workdir}/profile-{index}", page_url],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pipeline = (
        f"ximagesrc display-name={display} use-damage=false show-pointer=false startx=0 starty=0 endx=1279 endy=719 "
        "! video/x-raw,framerate=30/1 ! videoconvert ! videoscale ! videorate "
        "! video/x-raw,format=I420,width=1280,height=720,framerate=30/1,pixel-aspect-ratio=1/1 "
        f"! {x264} "
        "! video/x-h264,profile=main ! h264parse ! queue ! mp4mux fragment-duration=250 name=mux "
        f"! filesink buffer-mode=unbuffered location={path} "
        f"pulsesrc server=unix:{socket_path} device=egress.monitor provide-clock=false "
        "! audio/x-raw,rate=48000,channels=2 ! audioconvert ! audioresample "
        "! audio/x-raw,rate=48000,channels=2 ! avenc_aac bitrate=128000 ! aacparse ! queue ! mux."
    )
    gst = subprocess.Popen(["gst-launch-1.0", "-e", *split_pipeline(pipeline)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher.join(timeout=30)
    time.sleep(seconds)
    cpu = sum(tree_cpu(p.pid) for p in (xvfb, pulse, chromium, gst))
    gst.send_signal(signal.SIGINT)
    gst.wait()
    for p in (chromium, pulse, xvfb):
        p.kill()
        p.wait()
    return cpu, duration(probe(path)), latency[0] if latency else float("nan")


def repeated_frames(path):
    """Share of frames identical to the one before: a moving page has none unless dropped."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
                         capture_output=True, text=True, timeout=300).stdout
    hashes = [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]
    repeats = sum(1 for a, b in zip(hashes, hashes[1:]) if a == b)
    return repeats / max(1, len(hashes) - 1), len(hashes)


def run_load(egret, page_url, seconds, count):
    starts = [egret.api.start("web", url=page_url, file_outputs=[{"filepath": f"bench/load-{count}-{i}.mp4"}])
              for i in range(count)]
    for s in starts:
        egret.api.wait_status(s["egress_id"], "active", timeout=60)
    time.sleep(seconds)
    for s in starts:
        egret.api.stop(s["egress_id"])
    results = []
    for s in starts:
        info = egret.api.wait_status(s["egress_id"], "complete", "failed")
        results.append(repeated_frames(egret.storage / info["outputs"][0]["target"]) + (info["outputs"][0]["duration"],))
    return results


def report(title, rows, rounds, seconds, target=True):
    print(f"\n{title}, {rounds} x {seconds:.0f} s each, {os.cpu_count()} cores")
    print(f"{'path':<18}{'CPU-s/min':>12}{'output s':>10}{'start latency':>15}")
    summary = {}
    for name, runs in rows.items():
        cpu = sum(r[0] for r in runs)
        media = sum(r[1] for r in runs)
        latency = sorted(r[2] for r in runs)[len(runs) // 2]
        summary[name] = per_minute(cpu, media)
        each = ", ".join(f"{r[2] * 1000:.0f}" for r in runs)
        print(f"{name:<18}{summary[name]:>12.2f}{media:>10.1f}{latency * 1000:>12.0f} ms   (runs: {each} ms)")
    names = list(rows)
    goal = " (target <= 1.10)" if target else ""
    print(f"ratio {names[0]} / {names[1]}: {summary[names[0]] / summary[names[1]]:.3f}{goal}")


X264_PRESETS = [("veryfast", "tune=zerolatency"), ("superfast", "tune=zerolatency"), ("ultrafast", "tune=zerolatency"),
                ("veryfast", "")]


def bench_web(egret, workdir, page, page_name, seconds, rounds):
    """A page through egret's web egress, through the bare path with egret's settings, and
    through the naive bare path (Chrome at 60 Hz + x264 veryfast), with distinct frames per second."""
    rows = {"egret web": [], "bare chrome+gst": [], "naive bare": []}
    distinct = {name: [] for name in rows}
    for i in range(rounds):
        tag = f"{page_name}-{i}"
        rows["egret web"].append(run_egret(egret, seconds, f"web-{tag}", "web", url=page))
        distinct["egret web"].append(distinct_fps(egret.storage / f"bench/web-{tag}.mp4"))
        rows["bare chrome+gst"].append(run_web_bare(workdir, page, seconds, tag))
        distinct["bare chrome+gst"].append(distinct_fps(workdir / f"bare-web-{tag}.mp4"))
        rows["naive bare"].append(run_web_bare(workdir, page, seconds, f"naive-{tag}", NAIVE_X264))
        distinct["naive bare"].append(distinct_fps(workdir / f"bare-web-naive-{tag}.mp4"))
    report(f"web page ({page_name}.html) -> MP4, 720p30 H.264 3 Mb/s + AAC", rows, rounds, seconds, target=False)
    egret_cost, naive_cost = (sum(r[0] for r in rows[k]) / sum(r[1] for r in rows[k]) for k in ("egret web", "naive bare"))
    print(f"ratio egret web / naive bare (Chrome at 60 Hz + x264 veryfast): {egret_cost / naive_cost:.3f} (target <= 0.6)")
    for name, values in distinct.items():
        print(f"  distinct frames per second, {name}: {', '.join(f'{v:.1f}' for v in values)} (target >= 29.5)")


def bench_presets(egret, page, seconds):
    """x264 presets on a captured page at egret's bitrate (3 Mb/s, 720p30): CPU-s per minute
    of the encode alone (the decode of the reference measured apart and taken off) and
    PSNR/SSIM against the reference (egret's own capture of the page at 20 Mb/s)."""
    run_egret(egret, seconds, "preset-ref", "web", url=page, advanced={"video_bitrate": 20000})
    reference = egret.storage / "bench/preset-ref.mp4"
    decode = f"filesrc location={reference} ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=I420"

    def cpu_of(pipeline):
        before = os.times()
        subprocess.run(["gst-launch-1.0", "-q", *split_pipeline(pipeline)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        after = os.times()
        return (after.children_user - before.children_user) + (after.children_system - before.children_system)

    decode_only = cpu_of(f"{decode} ! fakesink")
    length = duration(probe(reference))
    print(f"\nx264 presets on the captured page (720p30, 3 Mb/s), {length:.0f} s, encode CPU without the decode")
    print(f"{'preset':<28}{'CPU-s/min':>10}{'PSNR dB':>9}{'SSIM':>8}")
    for preset, tune in X264_PRESETS:
        out = Path(tempfile.mkdtemp()) / "p.mp4"
        cpu = cpu_of(f"{decode} ! x264enc bitrate=3000 speed-preset={preset} {tune} key-int-max=120 "
                     f"! video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location={out}") - decode_only
        scores = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "info", "-i", str(out), "-i", str(reference), "-lavfi",
             "[0:v]setpts=PTS-STARTPTS,split[a][c];[1:v]setpts=PTS-STARTPTS,split[b][d];[a][b]psnr;[c][d]ssim", "-f", "null", "-"], capture_output=True, text=True).stderr
        psnr = next((line.split("average:")[1].split()[0] for line in scores.splitlines() if "PSNR" in line), "?")
        ssim = next((line.split("All:")[1].split()[0] for line in scores.splitlines() if "SSIM" in line), "?")
        print(f"{preset + ' ' + tune:<28}{per_minute(cpu, length):>10.2f}{float(psnr):>9.2f}{float(ssim):>8.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="recording length per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating egret/bare rounds")
    parser.add_argument("--only", default="testsrc,web,presets,load,track,room_composite,worker",
                        help="comma-separated scenarios")
    args = parser.parse_args()
    only = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="egret-bench-"))
    egret = EgretProcess(workdir)
    pages = Pages()
    try:
        if "testsrc" in only:
            rows = {"egret": [], "bare gst-launch": []}
            for i in range(args.rounds):
                rows["egret"].append(run_egret(egret, args.seconds, f"testsrc-{i}", "testsrc"))
                rows["bare gst-launch"].append(run_bare(workdir, args.seconds, i))
            report("testsrc -> MP4, 720p30 H.264 3 Mb/s + AAC", rows, args.rounds, args.seconds)
        if "web" in only:
            for page_name in ("animated", "busy"):
                bench_web(egret, workdir, pages.url(f"{page_name}.html?tone=440"), page_name, args.seconds, args.rounds)
        if "presets" in only:
            bench_presets(egret, pages.url("busy.html?tone=440"), args.seconds)
        if "load" in only:
            print(f"\nconcurrent 720p30 web egresses, {args.seconds:.0f} s each: repeated frames per output")
            for count in (1, 2, 3):
                results = run_load(egret, pages.url("animated.html"), args.seconds, count)
                shown = ", ".join(f"{r * 100:.1f}% of {n}" for r, n, _ in results)
                print(f"  {count} at once: {shown}")
        if "track" in only:
            bench_track(workdir, args.seconds, args.rounds)
        if "room_composite" in only:
            bench_room_composite(workdir, args.seconds, args.rounds)
        if "worker" in only:
            bench_worker(workdir, args.seconds, args.rounds)
    finally:
        egret.stop()
        pages.server.shutdown()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
