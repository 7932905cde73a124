"""Checks of what egret wrote, with ffprobe/ffmpeg: streams, durations, loudness, A/V offset."""

import json
import subprocess

import numpy as np


def probe(path_or_url, timeout=30):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path_or_url)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"ffprobe failed on {path_or_url}: {out.stderr}"
    return json.loads(out.stdout)


def probe_live(url, deadline_s=45, want=("video", "audio")):
    """ffprobe of a live stream (RTMP from nginx): a reader that joins between keyframes or
    while the publisher reconnects may time out, or see only the audio until the next
    keyframe (as a player would), so try again until the `want`ed kinds show or the deadline.
    Pass want=() to take whatever streams show first."""
    import time

    deadline = time.monotonic() + deadline_s
    while True:
        out = None
        try:
            out = subprocess.run(
                ["ffprobe", "-v", "error", "-rw_timeout", "10000000", "-print_format", "json", "-show_format",
                 "-show_streams", str(url)],
                capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                info = json.loads(out.stdout)
                kinds = {s.get("codec_type") for s in info.get("streams", [])}
                if info.get("streams") and all(k in kinds for k in want):
                    return info
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no readable stream at {url}: {out.stderr if out else 'timed out'}")
        time.sleep(0.5)


def streams(info, kind):
    return [s for s in info["streams"] if s["codec_type"] == kind]


def fps(stream):
    num, den = stream["avg_frame_rate"].split("/")
    return float(num) / float(den) if float(den) else 0.0


def duration(info):
    return float(info["format"]["duration"])


def mean_volume_db(path):
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "info", "-i", str(path), "-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in out.stderr.splitlines():
        if "mean_volume:" in line:
            return float(line.split("mean_volume:")[1].split("dB")[0])
    raise AssertionError(f"no audio volume measured in {path}: {out.stderr[-500:]}")


def video_luma(path, width=32, height=18):
    """Mean luma of every frame, with each frame's timestamp (seconds)."""
    frames = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-vf", f"scale={width}:{height},format=gray",
         "-fps_mode", "passthrough", "-f", "rawvideo", "-"],
        capture_output=True,
        timeout=120,
    ).stdout
    luma = np.frombuffer(frames, np.uint8).reshape(-1, width * height).mean(axis=1)
    times = frame_times(path)
    n = min(len(luma), len(times))
    return times[:n], luma[:n]


def longest_still(path, rows=16):
    """The longest time (seconds) the bottom `rows` of the picture stayed the same once it
    first moved: with a publisher's --ticker moving there every frame, the longest freeze of
    the video (how long the first picture takes is the start's business, not a freeze)."""
    info = streams(probe(path), "video")[0]
    width, height = int(info["width"]), int(info["height"])
    rows = max(2, rows * height // 180)
    frames = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-vf",
         f"crop={width}:{rows}:0:{height - rows},format=gray", "-fps_mode", "passthrough", "-f", "rawvideo", "-"],
        capture_output=True,
        timeout=120,
    ).stdout
    pictures = np.frombuffer(frames, np.uint8).reshape(-1, width * rows).astype(np.int16)
    times = frame_times(path)[: len(pictures)]
    moved = np.abs(np.diff(pictures[: len(times)], axis=0)).max(axis=1) > 24
    change_times = [times[i + 1] for i in np.flatnonzero(moved)] + [times[-1]]
    return float(np.max(np.diff(change_times)))


def packet_times(path, stream="v:0"):
    """Each packet's timestamp (seconds) in file order: a copied stream must never go back."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", "packet=pts_time", "-of", "csv=p=0",
         str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [float(v) for v in out.split() if v.strip() not in ("", "N/A")]


def frame_times(path):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    values = (x.strip().strip(",") for x in out.split())
    return np.array([float(x) for x in values if x and x != "N/A"])


def audio_samples(path, rate=48000):
    """Mono float samples and the stream's start time (seconds)."""
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"],
        capture_output=True,
        timeout=120,
    ).stdout
    start = float(streams(probe(path), "audio")[0].get("start_time", 0.0))
    return np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0, start


def onsets(times, values, threshold, min_gap):
    """Times where values cross threshold upwards, at least min_gap apart."""
    found = []
    above = values > threshold
    for i in range(1, len(values)):
        if above[i] and not above[i - 1] and (not found or times[i] - found[-1] >= min_gap):
            found.append(times[i])
    return found


def beeps(path, threshold=0.2, bridge_ms=3):
    """(onset, length) in seconds of each sound of a file: a sound cut short at its start (its
    first packets lost) reads as late against its picture, so a sync test checks this too."""
    samples, a_start = audio_samples(path)
    window = 48  # 1 ms at 48 kHz
    n = len(samples) // window
    loud = np.abs(samples[: n * window]).reshape(n, window).max(axis=1) > threshold
    found, i = [], 1
    while i < n:
        if loud[i] and not loud[i - 1]:
            end = i
            while end < n and loud[end : end + bridge_ms + 1].any():
                end += 1
            found.append((a_start + i / 1000.0, (end - i) / 1000.0))
            i = end
        i += 1
    return found


def av_offset(path):
    """Median (audio onset - video onset) in seconds over the flash/beep pairs of a file."""
    pairs = av_offsets(path)
    return float(np.median([offset for _, offset in pairs])), len(pairs)


def av_offsets(path):
    """(flash time, audio onset - video onset) in seconds for each flash/beep pair of a file."""
    vt, luma = video_luma(path)
    flashes = onsets(vt, luma, 128, 0.5)
    samples, a_start = audio_samples(path)
    window = 48  # 1 ms at 48 kHz
    n = len(samples) // window
    energy = np.abs(samples[: n * window]).reshape(n, window).max(axis=1)
    at = a_start + np.arange(n) * window / 48000.0
    beeps = onsets(at, energy, 0.2, 0.5)
    assert len(flashes) >= 3 and len(beeps) >= 3, f"flashes {flashes}, beeps {beeps}"
    pairs = [(f, min(beeps, key=lambda b: abs(b - f)) - f) for f in flashes]
    pairs = [(f, p) for f, p in pairs if abs(p) < 0.5]
    assert len(pairs) >= 3, f"unpaired flashes {flashes} and beeps {beeps}"
    return pairs


def tone_levels(path, freqs, rate=48000):
    """Relative spectral energy near each frequency (fraction of the total), whole file."""
    samples, _ = audio_samples(path, rate)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    bins = np.fft.rfftfreq(len(samples), 1.0 / rate)
    total = spectrum.sum() or 1.0
    return {f: float(spectrum[(bins > f - 15) & (bins < f + 15)].sum() / total) for f in freqs}


def channel_tone_levels(path, freqs, rate=48000):
    """Per channel ("left", "right"): the spectral energy near each frequency as a fraction of
    the whole file's energy (both channels), so a silent channel reads about 0."""
    pcm = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "2", "-ar", str(rate),
         "-f", "s16le", "-"], capture_output=True, timeout=120).stdout
    stereo = np.frombuffer(pcm, np.int16).astype(np.float32).reshape(-1, 2) / 32768.0
    spectra = {side: np.abs(np.fft.rfft(stereo[:, i])) ** 2 for i, side in enumerate(("left", "right"))}
    bins = np.fft.rfftfreq(len(stereo), 1.0 / rate)
    total = sum(s.sum() for s in spectra.values()) or 1.0
    return {side: {f: float(s[(bins > f - 15) & (bins < f + 15)].sum() / total) for f in freqs}
            for side, s in spectra.items()}


def frames_differ(path, at=(1.0, 1.5)):
    """True if two frames half a second apart differ (the picture moves)."""
    grabs = []
    for t in at:
        grabs.append(subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-ss", str(t), "-i", str(path), "-frames:v", "1", "-vf",
             "scale=64:36,format=gray", "-f", "rawvideo", "-"], capture_output=True, timeout=60).stdout)
    a, b = (np.frombuffer(g, np.uint8).astype(int) for g in grabs)
    return len(a) == len(b) > 0 and np.abs(a - b).mean() > 1.0


def frame_rgb(path, at, width=64, height=36):
    """The frame shown at `at` seconds, scaled to width x height, as an RGB array."""
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-ss", str(at), "-i", str(path), "-frames:v", "1", "-vf",
         f"scale={width}:{height}:flags=area,format=rgb24", "-f", "rawvideo", "-"],
        capture_output=True,
        timeout=60,
    ).stdout
    assert len(raw) == width * height * 3, f"no frame at {at}s in {path}"
    return np.frombuffer(raw, np.uint8).reshape(height, width, 3).astype(int)


def region_color(frame, x0, y0, x1, y1):
    """Mean RGB of a region given in fractions of the frame (x0, y0)-(x1, y1)."""
    h, w, _ = frame.shape
    return frame[int(y0 * h) : max(int(y1 * h), int(y0 * h) + 1), int(x0 * w) : max(int(x1 * w), int(x0 * w) + 1)].reshape(-1, 3).mean(axis=0)


def near(rgb, expected, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected))
