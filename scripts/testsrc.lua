-- scripts/testsrc.lua: a test pattern with a running clock and a tone, or (av_sync = true) a
-- white flash and a 1 kHz beep together once per second, encoded to every requested output.
-- Needs no browser and no LiveKit server: the quickest way to try an output.
return recipe {
  name = "testsrc",
  description = "Moving test pattern with a clock and a tone; av_sync mode flashes and beeps each second",
  params = {
    audio_only = "boolean?",     -- no video at all (OGG needs this)
    video_only = "boolean?",
    av_sync    = "boolean?",     -- flash + 1 kHz beep on every whole second
    tone       = "number(20..20000)?",   -- tone frequency in Hz (default 440)
    duration   = "number(0.1..604800)?", -- stop by itself after this many seconds of recording
  },
  outputs = true,                -- file/segment/stream/image outputs + preset/advanced

  start = function(req, egress)
    local src = egress:testsrc {
      video = not req.audio_only,
      audio = not req.video_only,
      av_sync = req.av_sync,
      tone = req.tone,
    }
    egress:encode { video = src.video, audio = src.audio }:output(req)
    if req.duration then
      -- counted from the first media written, not from the request
      egress:on("active", function()
        egress:after(req.duration, function() egress:stop("duration reached") end)
      end)
    end
  end,
}
