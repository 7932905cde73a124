-- scripts/track_composite.lua: one audio and one video track of a room, synced and
-- transcoded to the requested preset, to every output (LiveKit's TrackCompositeEgressRequest).
-- A track that is unpublished leaves black or silence; published again (same sid), it returns.
return recipe {
  name = "track_composite",
  description = "One audio + one video track of a LiveKit room, synced and encoded to any output",
  params = {
    room_name      = "string",
    audio_track_id = "string?",
    video_track_id = "string?",
  },
  outputs = true,

  start = function(req, egress)
    if not (req.audio_track_id or req.video_track_id) then
      error("give audio_track_id, video_track_id or both", 0)
    end
    if req.video_track_id then
      refuse_audio_only_files(req) -- MP3 and OGG hold sound only: refused before joining
    end
    local room = egress:join(req.room_name)
    local tracks, slots = {}, {}
    for kind, sid in pairs { audio = req.audio_track_id, video = req.video_track_id } do
      tracks[kind] = room:wait_track(sid)
      if tracks[kind].kind ~= kind then
        error(("%s_track_id: %s is a %s track"):format(kind, sid, tracks[kind].kind), 0)
      end
      egress:set_var("publisher_identity", tracks[kind].participant)
      slots[kind] = egress:slot(kind)
    end
    egress:encode(slots):output(req)
    for kind, track in pairs(tracks) do slots[kind]:attach(track) end
  end,
}
