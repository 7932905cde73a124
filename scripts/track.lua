-- scripts/track.lua: one room track exported as it was published, without transcoding
-- (LiveKit's TrackEgressRequest): H.264 → MP4, VP8 or VP9 → WebM, Opus → OGG; or an audio track
-- as raw PCM (s16le, 48 kHz, mono) to `websocket_url`.
local containers = { h264 = "MP4", vp8 = "WEBM", vp9 = "WEBM", opus = "OGG" }

return recipe {
  name = "track",
  description = "Export one track of a LiveKit room as published (no transcoding), or its audio to a websocket",
  params = {
    room_name = "string",
    track_id  = "string",
  },
  outputs = true,                -- `file` (LiveKit's single DirectFileOutput) or `websocket_url`

  start = function(req, egress)
    local room = egress:join(req.room_name)
    local track = room:wait_track(req.track_id)
    egress:set_var("track_id", track.sid)
    egress:set_var("track_type", track.kind)
    egress:set_var("track_source", track.source)
    egress:set_var("publisher_identity", track.participant)

    if req.file_outputs then
      local files = {}
      for i, file in ipairs(req.file_outputs) do
        files[i] = { filepath = file.filepath, s3 = file.s3, file_type = containers[track.codec] }
      end
      egress:copy { [track.kind] = track }:output { file_outputs = files }
    end
    if req.websocket_url then
      if track.kind ~= "audio" then
        error("websocket_url takes audio tracks; " .. track.sid .. " is video", 0)
      end
      local audio = egress:slot("audio")   -- silence while the track is muted
      audio:attach(track)
      egress:encode { audio = audio }:output { websocket_url = req.websocket_url }
    end

    room:on("track_unpublished", function(t)
      if t.sid == track.sid then egress:stop("track unpublished") end
    end)
  end,
}
