"""A LiveKit publisher for the tests: real WebRTC through PyPI `livekit`, synthetic media.

Video is a moving colour pattern, a solid --color, or (--flash) black with a white frame for
100 ms at every whole second; audio is a --tone, or (--flash) a 1 kHz beep for 100 ms at the same
instants. Both are paced by one clock (each fed by its own task) so the flash and the beep leave
the publisher together.

Prints one JSON line per event on stdout ({"event": "published", "kind", "sid", ...});
reads commands on stdin: `unpublish video|audio`, `publish video|audio`, `mute|unmute video|audio`, `volume 0..1`,
`codec vp8|h264|vp9` (for the next video published), `quit`.
"""

import argparse
import asyncio
import json
import sys
import time

import numpy as np
from livekit import api, rtc

FLASH_S = 0.1
BEEP_HZ = 1000.0
TICKER = 16  # side of the --ticker square, in pixels; it moves 4 sides a second
TONE_HZ = 440.0
RATE = 48000
CHUNK = RATE // 100  # 10 ms


def say(**event):
    print(json.dumps(event), flush=True)


class Media:
    def __init__(self, args):
        self.args = args
        self.width, self.height = args.width, args.height
        self.t0 = time.monotonic()
        self.video_source = rtc.VideoSource(self.width, self.height, is_screencast=args.source == "screen_share")
        # No queue: each 10 ms chunk goes straight to WebRTC when handed over, as a microphone's
        # callback does (the SDK's queue sends on a 10 ms timer of its own, adding 0-10 ms that
        # the publisher cannot see).
        self.audio_source = rtc.AudioSource(RATE, 1, queue_size_ms=0)
        self.samples = 0
        y, x = np.mgrid[0 : self.height, 0 : self.width]
        self.base = ((x * 255 // max(1, self.width - 1)).astype(np.uint8), (y * 255 // max(1, self.height - 1)).astype(np.uint8))

    def video_frame(self, t):
        rgba = np.empty((self.height, self.width, 4), dtype=np.uint8)
        rgba[..., 3] = 255
        if self.args.flash:
            rgba[..., :3] = 255 if (t % 1.0) < FLASH_S else 0
            if self.args.ticker:
                # A grey square crossing the bottom rows: every frame differs from the last,
                # so a frozen picture shows in the file. Too small to move the mean luma.
                x = int(t * 4 * TICKER) % (self.width - TICKER)
                rgba[-TICKER:, x : x + TICKER, :3] = 96
        elif self.args.color:
            rgba[..., :3] = self.args.color
        else:
            shift = int(t * 120) % self.width
            gx, gy = self.base
            rgba[..., 0] = np.roll(gx, shift, axis=1)
            rgba[..., 1] = gy
            rgba[..., 2] = 128 + int(100 * np.sin(t))
        return rtc.VideoFrame(self.width, self.height, rtc.VideoBufferType.RGBA, rgba.tobytes())

    def audio_chunk(self):
        n = np.arange(self.samples, self.samples + CHUNK)
        t = n / RATE
        self.samples += CHUNK
        if self.args.flash:
            on = (t % 1.0) < FLASH_S
            wave = np.where(on, 0.7 * np.sin(2 * np.pi * BEEP_HZ * t), 0.0)
        else:
            wave = self.args.volume * np.sin(2 * np.pi * self.args.tone * t)
        data = (wave * 32767).astype(np.int16)
        return rtc.AudioFrame(data.tobytes(), RATE, 1, CHUNK)

    async def run(self, state):
        """Feeds both sources against one clock, each from its own task: a busy machine must
        not starve one kind behind the other (a publisher whose video stops looks exactly
        like an egress bug)."""
        await asyncio.gather(self.feed_audio(state), self.feed_video(state))

    async def feed_audio(self, state):
        """10 ms chunks, each handed over once its last sample is due, as a microphone does.
        libwebrtc pairs an Opus packet's RTP time with the moment the packet is complete, so
        a 20 ms packet's first sample is stamped 20 ms late by any real sender; egret takes
        that off (see its timeline). When late it skips ahead rather than burst."""
        while True:
            now = time.monotonic() - self.t0
            wait = (self.samples + CHUNK) / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > 0.2:
                self.samples = int(now * RATE) // CHUNK * CHUNK
                continue
            if state["audio"]:
                await self.audio_source.capture_frame(self.audio_chunk())
            else:
                self.samples += CHUNK

    async def feed_video(self, state):
        """One frame per 1/fps s, captured at its own time; when late it skips to the current
        frame rather than burst."""
        frame_dt = 1.0 / self.args.fps
        index = 0
        while True:
            now = time.monotonic() - self.t0
            due = index * frame_dt
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > frame_dt:
                index = int(now / frame_dt)  # behind: skip ahead
                due = index * frame_dt
            if state["video"]:
                self.video_source.capture_frame(self.video_frame(due))
            index += 1


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--codec", choices=["h264", "vp8", "vp9"], default="vp8")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--flash", action="store_true", help="flash + beep once a second")
    p.add_argument("--ticker", action="store_true", help="with --flash: a small square moving every frame")
    p.add_argument("--dtx", action="store_true", help="let the encoder skip silent frames, as browsers do")
    p.add_argument("--width", type=int, default=0, help="default 640, or 320 with --flash")
    p.add_argument("--height", type=int, default=0, help="default 360, or 180 with --flash")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--source", choices=["camera", "screen_share"], default="camera")
    p.add_argument("--color", type=lambda v: [int(c) for c in v.split(",")], help="solid R,G,B video")
    p.add_argument("--tone", type=float, default=TONE_HZ, help="tone frequency (Hz)")
    p.add_argument("--volume", type=float, default=0.3, help="tone amplitude, 0..1")
    p.add_argument("--kind", default="", help="participant kind in the token (agent, sip, ...)")
    args = p.parse_args()
    # A flash is a whole frame turning white: at 640x360 that frame is large enough for the
    # sender's pacer (low bandwidth estimate at the start) to hold it back by up to 300 ms,
    # which would be measured as A/V offset. Small flash frames leave the sender at once.
    args.width = args.width or (320 if args.flash else 640)
    args.height = args.height or (180 if args.flash else 360)

    token = (
        api.AccessToken(args.api_key, args.api_secret)
        .with_identity(args.identity)
        .with_grants(api.VideoGrants(room_join=True, room=args.room, can_publish=True, can_subscribe=False))
        .with_kind(args.kind or "standard")
        .to_jwt()
    )
    room = rtc.Room()
    done = asyncio.Event()

    @room.on("disconnected")
    def _on_disconnected(reason):
        say(event="disconnected", reason=str(reason))
        done.set()

    await room.connect(args.url, token, rtc.RoomOptions(auto_subscribe=False))
    say(event="connected", room_sid=await room.sid, participant_sid=room.local_participant.sid)

    media = Media(args)
    video_source = rtc.TrackSource.SOURCE_SCREENSHARE if args.source == "screen_share" else rtc.TrackSource.SOURCE_CAMERA
    audio_source = (
        rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO if args.source == "screen_share" else rtc.TrackSource.SOURCE_MICROPHONE
    )
    codecs = {"h264": rtc.VideoCodec.H264, "vp8": rtc.VideoCodec.VP8, "vp9": rtc.VideoCodec.VP9}
    published, tracks = {}, {}
    state = {"video": False, "audio": False}

    async def publish(kind):
        if kind == "video":
            track = rtc.LocalVideoTrack.create_video_track("pattern", media.video_source)
            opts = rtc.TrackPublishOptions(source=video_source, video_codec=codecs[args.codec], simulcast=False)
            opts.video_encoding.max_bitrate = 1_500_000
            opts.video_encoding.max_framerate = args.fps
        else:
            track = rtc.LocalAudioTrack.create_audio_track("tone", media.audio_source)
            opts = rtc.TrackPublishOptions(source=audio_source, dtx=args.dtx)
        state[kind] = True
        pub = await room.local_participant.publish_track(track, opts)
        published[kind], tracks[kind] = pub.sid, track
        say(event="published", kind=kind, sid=pub.sid, codec=args.codec if kind == "video" else "opus")

    async def unpublish(kind):
        sid = published.pop(kind, None)
        if sid:
            await room.local_participant.unpublish_track(sid)
            state[kind] = False
            say(event="unpublished", kind=kind, sid=sid)

    feeder = asyncio.create_task(media.run(state))
    if not args.no_video:
        await publish("video")
    if not args.no_audio:
        await publish("audio")
    say(event="ready")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not done.is_set():
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        verb, _, kind = line.partition(" ")
        if verb == "unpublish":
            await unpublish(kind)
        elif verb == "publish":
            await publish(kind)
        elif verb in ("mute", "unmute") and kind in tracks:
            getattr(tracks[kind], verb)()
        elif verb == "volume":
            args.volume = float(kind)
        elif verb == "codec":
            args.codec = kind
        say(event="done", command=line)
    feeder.cancel()
    await room.disconnect()
    say(event="left")


if __name__ == "__main__":
    asyncio.run(main())
