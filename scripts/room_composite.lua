-- scripts/room_composite.lua: a whole room as one recording (LiveKit's RoomCompositeEgressRequest).
-- Chrome renders a layout page that joins the room as a hidden recorder: egret's own (layouts/,
-- grid / speaker / single-speaker, `-light`/`-dark` themes) or the custom_base_url template.
-- Audio only, without a custom template, starts no Chrome at all: the room's audio tracks are
-- decoded and mixed directly, which costs a fraction of a browser.
-- The egress completes when the room closes: deleted, or empty past its departure timeout.
local LAYOUTS = { grid = true, speaker = true, ["single-speaker"] = true }

local function check_layout(req, layout)
  local base = layout:gsub("%-light$", ""):gsub("%-dark$", "")
  if not req.custom_base_url and not LAYOUTS[base] then
    field_error("layout", ("unknown layout `%s` (grid, speaker, single-speaker; -light or -dark)"):format(layout))
  end
end

-- Every audio track of the room, mixed: attached as published, detached as unpublished.
local function mix_room_audio(room, mix)
  room:on("track_published", function(t)
    local track = t.kind == "audio" and room:track(t.sid)
    if track then mix:add(track) end
  end)
  room:on("track_unpublished", function(t)
    if t.kind == "audio" then mix:detach(t.sid) end
  end)
end

return recipe {
  name = "room_composite",
  description = "A LiveKit room rendered by a layout page (or only its mixed audio), to any output",
  params = {
    room_name       = "string",
    layout          = "string?",   -- default grid
    audio_only      = "boolean?",
    video_only      = "boolean?",
    custom_base_url = "url?",      -- a template page; gets ?url=&token=&layout= like LiveKit's
    audio_mixing    = "string?",   -- DEFAULT_MIXING only
  },
  outputs = true,

  start = function(req, egress)
    if req.audio_only and req.video_only then
      field_error("video_only", "audio_only and video_only cannot both be set")
    end
    if req.audio_mixing and req.audio_mixing ~= "DEFAULT_MIXING" then
      field_error("audio_mixing", ("`%s` is not supported (DEFAULT_MIXING)"):format(req.audio_mixing))
    end
    local layout = (req.layout ~= nil and req.layout ~= "") and req.layout or "grid"
    check_layout(req, layout)
    -- The page is the egress's recorder participant (identity = egress id, where LiveKit's own
    -- UpdateLayout writes); egret watches the room under another name.
    local room = egress:join(req.room_name, { identity = egress.id .. "_watch" })

    if req.audio_only and not req.custom_base_url then
      local mix = egress:slot("audio")
      egress:encode { audio = mix }:output(req)
      mix_room_audio(room, mix)
      return
    end

    local template = room:layout_page { layout = layout, base = req.custom_base_url }
    local page = egress:chrome { url = template.url, video = not req.audio_only, audio = not req.video_only }
    if not page:wait_console("START_RECORDING", { timeout = 30 }) then
      error("the layout page did not log START_RECORDING within 30 s", 0)
    end
    page:on_console("END_RECORDING", function() egress:stop("room ended") end)
    -- UpdateLayout: the page follows its participant's metadata, as LiveKit's templates do.
    egress:on("update_layout", function(new_layout)
      check_layout(req, new_layout)
      room:set_metadata(template.identity, json.encode { layout = new_layout })
    end)
    egress:encode { video = page.video, audio = page.audio }:output(req)
  end,
}
