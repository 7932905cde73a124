-- scripts/room_composite.lua: a whole room as one recording (LiveKit's RoomCompositeEgressRequest).
-- The built-in layouts (grid / speaker / single-speaker, `-light`/`-dark` themes) are composed
-- here, without a browser: the room's video tracks are decoded into GStreamer's compositor,
-- placed by a layout function from scripts/layouts/ (add NAME.lua there for layout NAME), and
-- its audio tracks mixed. A custom_base_url template is rendered by Chrome, joined to the room
-- as a hidden recorder, as LiveKit does (egret's own page, /layouts/, draws the built-in ones).
-- The egress completes when the room closes: deleted, or empty past its departure timeout.
local stage = require "lib.stage"

local function check_layout(req, layout)
  if req.custom_base_url then return end -- a template takes any layout name
  local found, why = stage.layout(layout)
  if not found then
    field_error("layout", ("unknown layout `%s` (grid, speaker, single-speaker; -light or -dark; "
      .. "or scripts/layouts/NAME.lua): %s"):format(layout, why))
  end
end

-- LiveKit's `audio_mixing`: which side of the stereo mix each track's sound goes to. A route
-- is a function of the track (its participant's identity, kind and attributes are there) and of
-- what the route remembers; edit or add one to route by anything else.
local ROUTES = {
  DEFAULT_MIXING = function() return "both" end,
  -- Agents on the left, everyone else on the right.
  DUAL_CHANNEL_AGENT = function(t)
    return t.participant_kind == "agent" and "left" or "right"
  end,
  -- Participants alternately left and right, in the order they are first heard; a
  -- participant keeps its side for all its tracks and across a rejoin.
  DUAL_CHANNEL_ALTERNATE = function(t, sides)
    if not sides[t.participant] then
      sides.count = (sides.count or 0) + 1
      sides[t.participant] = (sides.count % 2 == 1) and "left" or "right"
    end
    return sides[t.participant]
  end,
}

-- Every audio track of the room, mixed: attached as published, detached as unpublished.
local function mix_room_audio(room, mix, route)
  local memory = {}
  room:on("track_published", function(t)
    local track = t.kind == "audio" and room:track(t.sid)
    if track then mix:add(track, { channel = route(t, memory) }) end
  end)
  room:on("track_unpublished", function(t)
    if t.kind == "audio" then mix:detach(t.sid) end
  end)
end

return recipe {
  name = "room_composite",
  description = "A LiveKit room composed by a layout (or a template page, or only its mixed audio), to any output",
  params = {
    room_name       = "string",
    layout          = "string?",   -- default grid
    audio_only      = "boolean?",
    video_only      = "boolean?",
    custom_base_url = "url?",      -- a template page; gets ?url=&token=&layout= like LiveKit's
    audio_mixing    = "string?",   -- DEFAULT_MIXING, DUAL_CHANNEL_AGENT, DUAL_CHANNEL_ALTERNATE
  },
  outputs = true,

  start = function(req, egress)
    if req.audio_only and req.video_only then
      field_error("video_only", "audio_only and video_only cannot both be set")
    end
    refuse_audio_only_files(req) -- MP3 and OGG hold sound only: refused before a browser starts
    local mixing = req.audio_mixing or "DEFAULT_MIXING"
    local route = ROUTES[mixing]
    if not route then
      field_error("audio_mixing", ("unknown audio_mixing `%s` (DEFAULT_MIXING, DUAL_CHANNEL_AGENT, "
        .. "DUAL_CHANNEL_ALTERNATE)"):format(mixing))
    end
    if mixing ~= "DEFAULT_MIXING" and req.video_only then
      field_error("audio_mixing", ("%s needs audio; video_only is set"):format(mixing))
    end
    local layout = (req.layout ~= nil and req.layout ~= "") and req.layout or "grid"
    check_layout(req, layout)
    local native = not req.custom_base_url
    -- A template page is the egress's recorder participant (identity = egress id, where
    -- LiveKit's own UpdateLayout writes); egret then watches the room under another name.
    local room = egress:join(req.room_name, { identity = native and egress.id or egress.id .. "_watch" })

    -- The room's sound mixed here rather than by a page: always without one, and for routed
    -- channels (a page plays every participant on both sides).
    local native_audio = not req.video_only and (native or mixing ~= "DEFAULT_MIXING")
    local mix
    if native_audio then
      mix = egress:slot("audio")
      mix_room_audio(room, mix, route)
    end
    if req.audio_only and native_audio then
      egress:encode { audio = mix }:output(req)
      return
    end
    if native then
      local canvas = egress:slot("video")
      local composed = stage.new(room, canvas, layout)
      -- UpdateLayout through livekit-server sets egret's own metadata (as for a template page).
      room:on("own_metadata", function(e)
        local ok, meta = pcall(json.decode, e.metadata)
        if ok and type(meta) == "table" and type(meta.layout) == "string" then
          local done, why = composed.set_layout(meta.layout)
          if not done then log("layout", meta.layout, "refused:", why) end
        end
      end)
      egress:on("update_layout", function(new_layout)
        local ok, why = composed.set_layout(new_layout)
        if not ok then error(("unknown layout `%s`: %s"):format(new_layout, why), 0) end -- refused at `layout`
      end)
      egress:encode { video = canvas, audio = mix }:output(req)
      return
    end

    local template = room:layout_page { layout = layout, base = req.custom_base_url }
    local page = egress:chrome { url = template.url, video = not req.audio_only,
                                 audio = not req.video_only and not native_audio }
    if not page:wait_console("START_RECORDING", { timeout = 30 }) then
      error("the layout page did not log START_RECORDING within 30 s", 0)
    end
    page:on_console("END_RECORDING", function() egress:stop("room ended") end)
    -- UpdateLayout: the page follows its participant's metadata, as LiveKit's templates do.
    egress:on("update_layout", function(new_layout)
      check_layout(req, new_layout)
      room:set_metadata(template.identity, json.encode { layout = new_layout })
    end)
    egress:encode { video = page.video, audio = mix or page.audio, speed = "superfast" }:output(req)
  end,
}
