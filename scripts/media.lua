-- scripts/media.lua: LiveKit's MediaSource (StartEgress v2): tracks taken straight from a room.
-- Video: one track by id, or a participant's camera (its screen share instead, while there is
-- one, with prefer_screen_share). Audio: the room's audio tracks routed by `audio.routes`
-- (each matching a track id, a participant identity or a participant kind, to the left, right
-- or both channels; the first match wins), and with `audio.capture_all` every other audio
-- track on both channels. Everything is mixed and encoded to the request's outputs; with
-- the PASSTHROUGH preset one track is copied as published (no decoding), like track egress.
-- As LiveKit: named tracks and participants must appear within 30 s; following a participant,
-- the egress completes when it leaves (here after a 10 s grace, as the participant recipe).
local CHANNELS = { AUDIO_CHANNEL_BOTH = "both", AUDIO_CHANNEL_LEFT = "left", AUDIO_CHANNEL_RIGHT = "right" }
local CONTAINERS = { h264 = "MP4", vp8 = "WEBM", vp9 = "WEBM", opus = "OGG" }
local KINDS = { STANDARD = true, INGRESS = true, EGRESS = true, SIP = true, AGENT = true, CONNECTOR = true,
                BRIDGE = true }
local WAIT = { timeout = 30 }

-- The routes as plain rules: { track_id | identity | kind, channel }, checked field by field.
local function read_routes(audio)
  if audio.capture_all ~= nil and type(audio.capture_all) ~= "boolean" then
    field_error("audio.capture_all", "must be true or false")
  end
  if audio.routes ~= nil and (type(audio.routes) ~= "table" or (#audio.routes == 0 and next(audio.routes) ~= nil)) then
    field_error("audio.routes", "must be a list of routes")
  end
  local rules = {}
  for i, route in ipairs(audio.routes or {}) do
    local field = ("audio.routes[%d]"):format(i - 1)
    local channel = CHANNELS[route.channel or "AUDIO_CHANNEL_BOTH"]
    if not channel then
      field_error(field .. ".channel", ("unknown channel `%s` (AUDIO_CHANNEL_BOTH, AUDIO_CHANNEL_LEFT, "
        .. "AUDIO_CHANNEL_RIGHT)"):format(tostring(route.channel)))
    end
    local kind = route.participant_kind
    if kind ~= nil and not KINDS[tostring(kind):upper()] then
      field_error(field .. ".participant_kind", ("unknown participant kind `%s` (STANDARD, INGRESS, EGRESS, SIP, "
        .. "AGENT, CONNECTOR, BRIDGE)"):format(tostring(kind)))
    end
    local rule = { channel = channel, track_id = route.track_id, identity = route.participant_identity,
                   kind = kind and tostring(kind):lower() }
    if not (rule.track_id or rule.identity or rule.kind) then
      field_error(field, "give track_id, participant_identity or participant_kind")
    end
    rules[#rules + 1] = rule
  end
  return rules
end

-- The channel of an audio track: the first matching route's, else both if capture_all, else nil.
local function channel_of(t, rules, capture_all)
  for _, rule in ipairs(rules) do
    if (rule.track_id and rule.track_id == t.sid) or (rule.identity and rule.identity == t.participant)
        or (rule.kind and rule.kind == t.participant_kind) then
      return rule.channel
    end
  end
  return capture_all and "both" or nil
end

-- PASSTHROUGH: exactly one track, by id, to one file or stream, as published. Checked before
-- anything joins; returns the track's sid.
local function check_passthrough(req, rules, audio)
  if req.participant_video then field_error("participant_video", "PASSTHROUGH takes video_track_id") end
  if audio.capture_all then field_error("audio.capture_all", "PASSTHROUGH copies one track") end
  if #rules > 1 then field_error("audio.routes", "PASSTHROUGH copies one track") end
  local audio_sid = rules[1] and rules[1].track_id
  if rules[1] and not audio_sid then field_error("audio.routes[0]", "PASSTHROUGH takes a track_id") end
  if (req.video_track_id ~= nil) == (audio_sid ~= nil) then
    field_error("video_track_id", "PASSTHROUGH copies exactly one track: video_track_id or one audio route")
  end
  local files = req.file_outputs or {}
  if #files + #(req.stream_outputs or {}) + #(req.segment_outputs or {}) + #(req.image_outputs or {}) ~= 1 then
    field_error("outputs", "PASSTHROUGH takes exactly one output")
  end
  if files[1] and files[1].file_type and files[1].file_type ~= "DEFAULT_FILETYPE" then
    field_error("outputs[0].file.file_type", "PASSTHROUGH keeps the track's own container: leave file_type out")
  end
  return req.video_track_id or audio_sid
end

local function copy_one_track(req, egress, room, sid)
  local files = req.file_outputs or {}
  local track = room:wait_track(sid, WAIT)
  local want = req.video_track_id and "video" or "audio"
  if track.kind ~= want then
    field_error(req.video_track_id and "video_track_id" or "audio.routes[0].track_id",
      ("%s is a %s track"):format(track.sid, track.kind))
  end
  egress:set_var("track_id", track.sid)
  egress:set_var("publisher_identity", track.participant)
  local out = { stream_outputs = req.stream_outputs, segment_outputs = req.segment_outputs }
  if files[1] then
    out.file_outputs = { { filepath = files[1].filepath, s3 = files[1].s3, file_type = CONTAINERS[track.codec] } }
  end
  egress:copy { [track.kind] = track }:output(out)
  room:on("track_unpublished", function(t)
    if t.sid == track.sid then egress:stop("track unpublished") end
  end)
end

-- A participant's camera, or its screen share while it has one (prefer_screen_share).
local function follow_participant_video(req, egress, room, slot)
  local want = req.participant_video
  if type(want.identity) ~= "string" or want.identity == "" then
    field_error("participant_video.identity", "required")
  end
  egress:set_var("publisher_identity", want.identity)
  room:wait_participant(want.identity, WAIT)
  local shown, sources = nil, {}   -- sources: source name -> sid, for this participant's video
  local function show()
    local pick = (want.prefer_screen_share and sources.screen_share) or sources.camera
    if pick == shown then return end
    if shown then slot:detach(shown) end
    shown = nil
    local track = pick and room:track(pick)
    if track then slot:attach(track); shown = pick end
  end
  room:on("track_published", function(t)
    if t.kind == "video" and t.participant == want.identity and (t.source == "camera" or t.source == "screen_share") then
      sources[t.source] = t.sid
      show()
    end
  end)
  room:on("track_unpublished", function(t)
    if t.participant == want.identity and sources[t.source] == t.sid then
      sources[t.source] = nil
      show()
    end
  end)
  local present, leaves = true, 0
  room:on("participant_joined", function(p) if p.identity == want.identity then present = true end end)
  room:on("participant_left", function(p)
    if p.identity ~= want.identity then return end
    present, leaves = false, leaves + 1
    local this_leave = leaves
    egress:after(10, function()
      if not present and leaves == this_leave then egress:stop("participant left") end
    end)
  end)
end

return recipe {
  name = "media",
  description = "LiveKit's MediaSource: a video track or participant, and room audio routed to channels",
  params = {
    room_name         = "string",
    video_track_id    = "string?",
    participant_video = "table?",   -- { identity, prefer_screen_share }
    audio             = "table?",   -- { capture_all, routes = { { track_id | participant_identity | participant_kind, channel } } }
    passthrough       = "boolean?", -- the PASSTHROUGH preset
  },
  outputs = true,

  start = function(req, egress)
    local audio = req.audio or {}
    local rules = read_routes(audio)
    local wants_audio = audio.capture_all or #rules > 0
    local wants_video = req.video_track_id ~= nil or req.participant_video ~= nil
    if req.video_track_id and req.participant_video then
      field_error("participant_video", "give video_track_id or participant_video, not both")
    end
    if not (wants_audio or wants_video) then
      field_error("audio", "give video (video_track_id or participant_video), audio (routes or capture_all) or both")
    end
    local copied = req.passthrough and check_passthrough(req, rules, audio)
    local room = egress:join(req.room_name)
    if copied then
      return copy_one_track(req, egress, room, copied)
    end

    -- What the routes name must be there, as LiveKit waits for it.
    local video
    if req.video_track_id then
      video = room:wait_track(req.video_track_id, WAIT)
      if video.kind ~= "video" then field_error("video_track_id", video.sid .. " is an audio track") end
      egress:set_var("publisher_identity", video.participant)
    end
    for i, rule in ipairs(rules) do
      if rule.track_id then
        local t = room:wait_track(rule.track_id, WAIT)
        if t.kind ~= "audio" then
          field_error(("audio.routes[%d].track_id"):format(i - 1), t.sid .. " is a video track")
        end
      elseif rule.identity then
        room:wait_participant(rule.identity, WAIT)
      end
    end

    -- Known before the outputs are built, so `{publisher_identity}` in their paths resolves.
    if req.participant_video and type(req.participant_video.identity) == "string" then
      egress:set_var("publisher_identity", req.participant_video.identity)
    end
    local slots = { video = wants_video and egress:slot("video") or nil,
                    audio = wants_audio and egress:slot("audio") or nil }
    egress:encode(slots):output(req)
    if video then slots.video:attach(video) end
    if req.participant_video then follow_participant_video(req, egress, room, slots.video) end
    if wants_audio then
      room:on("track_published", function(t)
        local channel = t.kind == "audio" and channel_of(t, rules, audio.capture_all)
        local track = channel and room:track(t.sid)
        if track then slots.audio:add(track, { channel = channel }) end
      end)
      room:on("track_unpublished", function(t)
        if t.kind == "audio" then slots.audio:detach(t.sid) end
      end)
    end
    if video then
      room:on("track_unpublished", function(t) if t.sid == video.sid then slots.video:detach(t.sid) end end)
      room:on("track_published", function(t)
        local track = t.sid == video.sid and room:track(t.sid)
        if track then slots.video:attach(track) end
      end)
    end
  end,
}
