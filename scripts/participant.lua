-- scripts/participant.lua: everything one participant publishes from a camera and microphone
-- (or, with screen_share, the screen and its audio), transcoded to every output
-- (LiveKit's ParticipantEgressRequest). It may start before the participant arrives: the
-- output is black and silent until tracks appear, and goes on when they are unpublished and
-- published again, or the participant leaves and comes back.
return recipe {
  name = "participant",
  description = "A participant's camera + mic (or screen share) from a LiveKit room, followed as it comes and goes",
  params = {
    room_name    = "string",
    identity     = "string",
    screen_share = "boolean?",
  },
  outputs = true,

  start = function(req, egress)
    local room = egress:join(req.room_name)
    egress:set_var("publisher_identity", req.identity)
    local wanted = req.screen_share and { video = "screen_share", audio = "screen_share_audio" }
      or { video = "camera", audio = "microphone" }
    local slots = { video = egress:slot("video"), audio = egress:slot("audio") }
    egress:encode(slots):output(req)

    room:on("track_published", function(t)
      local track = t.participant == req.identity and wanted[t.kind] == t.source and room:track(t.sid)
      if track then slots[t.kind]:attach(track) end   -- nil if already gone again
    end)
    room:on("track_unpublished", function(t)
      if t.participant == req.identity then slots[t.kind]:detach(t.sid) end
    end)
  end,
}
