-- scripts/participant.lua: everything one participant publishes from a camera and microphone
-- (or, with screen_share, the screen and its audio), transcoded to every output
-- (LiveKit's ParticipantEgressRequest). As LiveKit: the participant must be in the room within
-- 30 s (else the egress fails "participant X not found"), and the egress completes when it
-- leaves. Unlike LiveKit, a participant who comes back within `rejoin_grace` seconds
-- (default 10) is followed into the same file; tracks unpublished and published again are too.
return recipe {
  name = "participant",
  description = "A participant's camera + mic (or screen share) from a LiveKit room, followed as it comes and goes",
  params = {
    room_name    = "string",
    identity     = "string",
    screen_share = "boolean?",
    rejoin_grace = "number(0..3600)?",
  },
  outputs = true,

  start = function(req, egress)
    local room = egress:join(req.room_name)
    egress:set_var("publisher_identity", req.identity)
    local wanted = req.screen_share and { video = "screen_share", audio = "screen_share_audio" }
      or { video = "camera", audio = "microphone" }
    local slots = { video = egress:slot("video"), audio = egress:slot("audio") }
    -- Recording (black and silent) before the participant comes: its tracks then join a
    -- running encoder. Outputs started only once it is there cost A/V sync today (README).
    egress:encode(slots):output(req)
    room:wait_participant(req.identity, { timeout = 30 })

    room:on("track_published", function(t)
      local track = t.participant == req.identity and wanted[t.kind] == t.source and room:track(t.sid)
      if track then slots[t.kind]:attach(track) end   -- nil if already gone again
    end)
    room:on("track_unpublished", function(t)
      if t.participant == req.identity then slots[t.kind]:detach(t.sid) end
    end)

    -- Gone for good once it stays away for the grace period: the egress completes.
    local grace, present, leaves = req.rejoin_grace or 10, true, 0
    room:on("participant_joined", function(p)
      if p.identity == req.identity then present = true end
    end)
    room:on("participant_left", function(p)
      if p.identity ~= req.identity then return end
      present, leaves = false, leaves + 1
      local this_leave = leaves
      egress:after(grace, function()
        if not present and leaves == this_leave then egress:stop("participant left") end
      end)
    end)
  end,
}
