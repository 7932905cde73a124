-- scripts/web.lua: any web page, its picture and its sound (LiveKit's WebEgressRequest).
return recipe {
  name = "web",
  description = "Record or stream any http(s) page with its audio",
  params = {
    url                  = "url",
    audio_only           = "boolean?",   -- no Xvfb capture at all
    video_only           = "boolean?",   -- no PulseAudio capture at all
    await_start_signal   = "boolean?",   -- record from the page's console.log("START_RECORDING")
    start_signal_timeout = "number(0..3600)?", -- seconds to wait for it (default 30)
  },
  outputs = true,

  start = function(req, egress)
    refuse_audio_only_files(req) -- MP3 and OGG hold sound only: refused before a browser starts
    local page = egress:chrome { url = req.url, video = not req.audio_only, audio = not req.video_only }
    if req.await_start_signal then
      local timeout = req.start_signal_timeout or 30
      if not page:wait_console("START_RECORDING", { timeout = timeout }) then
        error(("start signal not received after %g s"):format(timeout), 0)
      end
    end
    page:on_console("END_RECORDING", function() egress:stop("page ended the recording") end)
    -- superfast: chosen by measurement (bench `presets`: 44 % less encode CPU than veryfast, 0.2 dB)
    egress:encode { video = page.video, audio = page.audio, speed = "superfast" }:output(req)
  end,
}
