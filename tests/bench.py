"""Bench: the test source to MP4 at 720p30 through egret and through the equivalent bare
gst-launch-1.0 pipeline, in the same run. Prints CPU-seconds per minute of output for both,
their ratio, and start latency (call -> first byte written).

    .venv/bin/python tests/bench.py [--seconds 20] [--rounds 2]
"""

import argparse
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
from conftest import EgretProcess  # noqa: E402
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
    "! filesink location={path} "
    "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! audioconvert ! audioresample "
    "! audio/x-raw,rate=48000,channels=2 ! avenc_aac bitrate=128000 ! aacparse ! queue ! mux."
)


def process_cpu(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


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


def run_egret(egret, seconds, index):
    rel = f"bench/egret-{index}.mp4"
    path = egret.storage / rel
    t0, latency = [time.monotonic()], []
    watcher = threading.Thread(target=first_byte_after, args=(path, t0, latency), daemon=True)
    watcher.start()
    cpu0 = process_cpu(egret.proc.pid)
    t0[0] = time.monotonic()
    started = egret.api.start("testsrc", file_outputs=[{"filepath": rel}])
    watcher.join(timeout=10)
    time.sleep(seconds)
    egret.api.stop(started["egress_id"])
    egret.api.wait_status(started["egress_id"], "complete")
    cpu = process_cpu(egret.proc.pid) - cpu0
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


def split_pipeline(text):
    import shlex

    return shlex.split(text)


def per_minute(cpu, media_seconds):
    return cpu / media_seconds * 60.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="recording length per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating egret/bare rounds")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="egret-bench-"))
    egret = EgretProcess(workdir)
    rows = {"egret": [], "bare gst-launch": []}
    try:
        for i in range(args.rounds):
            rows["egret"].append(run_egret(egret, args.seconds, i))
            rows["bare gst-launch"].append(run_bare(workdir, args.seconds, i))
    finally:
        egret.stop()
    print(f"\ntestsrc -> MP4, 720p30 H.264 3 Mb/s + AAC, {args.rounds} x {args.seconds:.0f} s each, {os.cpu_count()} cores")
    print(f"{'path':<18}{'CPU-s/min':>12}{'output s':>10}{'start latency':>15}")
    summary = {}
    for name, runs in rows.items():
        cpu = sum(r[0] for r in runs)
        media = sum(r[1] for r in runs)
        latency = sorted(r[2] for r in runs)[len(runs) // 2]
        summary[name] = per_minute(cpu, media)
        each = ", ".join(f"{r[2] * 1000:.0f}" for r in runs)
        print(f"{name:<18}{summary[name]:>12.2f}{media:>10.1f}{latency * 1000:>12.0f} ms   (runs: {each} ms)")
    ratio = summary["egret"] / summary["bare gst-launch"]
    print(f"ratio egret / bare: {ratio:.3f} (target <= 1.10)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
