-- The room as a layout sees it (cameras, screen shares, the active speaker), kept up to date
-- from room events, drawn on a video slot by a layout from scripts/layouts/. Used by
-- room_composite.lua; any recipe can compose a room the same way:
--   local stage = require("lib.stage").new(room, egress:slot("video"), "grid")
-- Media stays in GStreamer: this only decides rectangles.
local M = {}

-- Colours of egret's layout page, by theme.
local THEMES = {
  dark = { background = "#000000", card = "#1b1b1b", text = "#bbbbbb" },
  light = { background = "#ffffff", card = "#e6e6e6", text = "#555555" },
}

-- The layout function for a name like "speaker-light": (function, theme), or nil and why.
function M.layout(name)
  local theme = name:match("%-(light)$") or name:match("%-(dark)$") or "dark"
  local base = name:gsub("%-light$", ""):gsub("%-dark$", ""):gsub("%-", "_")
  if not base:match("^[%w_]+$") then return nil, "not a layout name" end
  local ok, layout = pcall(require, "layouts." .. base)
  if not ok then
    if tostring(layout):find("No such file", 1, true) then return nil, "no scripts/layouts/" .. base .. ".lua" end
    error(layout, 0) -- a layout that does not load says why
  end
  if type(layout) ~= "function" then return nil, "scripts/layouts/" .. base .. ".lua must return a function" end
  return layout, THEMES[theme]
end

local function joined_before(a, b)
  if a.joined_at_ms ~= b.joined_at_ms then return a.joined_at_ms < b.joined_at_ms end
  if a.identity ~= b.identity then return a.identity < b.identity end
  return (a.screen and 1 or 0) < (b.screen and 1 or 0)
end

function M.new(room, canvas, layout_name)
  local self = { cameras = {}, shares = {}, speaker = nil }
  local layout, theme = assert(M.layout(layout_name))

  local function stage()
    local cameras, shares, tiles = {}, {}, {}
    for _, t in pairs(self.cameras) do cameras[#cameras + 1] = t end
    for _, t in pairs(self.shares) do shares[#shares + 1] = t end
    table.sort(cameras, joined_before)
    table.sort(shares, joined_before)
    for _, t in ipairs(cameras) do tiles[#tiles + 1] = t end
    for _, t in ipairs(shares) do tiles[#tiles + 1] = t end
    table.sort(tiles, joined_before)
    local main
    for _, t in ipairs(shares) do if t.video and not main then main = t end end
    for _, t in ipairs(cameras) do if t.identity == self.speaker and not main then main = t end end
    return { width = canvas.width, height = canvas.height, tiles = tiles, participants = cameras,
             screen_shares = shares, speaker = self.speaker, main = main or tiles[1] }
  end

  -- Lays the stage out again. A layout that fails keeps the last picture and says why in the
  -- log: a recording is not lost to a layout's bug.
  function self.draw()
    local ok, placed = pcall(layout, stage())
    if not ok or type(placed) ~= "table" then
      log("layout failed, picture kept:", placed)
      return
    end
    local tiles = {}
    for _, p in ipairs(placed) do
      local t = p.of
      local tile = { x = p.x, y = p.y, w = p.w, h = p.h }
      if t and t.video and not t.muted then
        tile.track, tile.fit = t.video, t.screen and "contain" or "cover"
      elseif t then
        tile.name, tile.background, tile.color = t.name, theme.card, theme.text
      end
      tiles[#tiles + 1] = tile
    end
    local drawn, err = pcall(canvas.arrange, canvas, tiles, { background = theme.background })
    if not drawn then log("layout failed, picture kept:", err) end
  end

  -- UpdateLayout: another layout (and theme) from now on; an unknown one is refused.
  function self.set_layout(name)
    local next_layout, next_theme = M.layout(name)
    if not next_layout then return nil, next_theme end
    layout, theme = next_layout, next_theme
    self.draw()
    return true
  end

  local function tile_of(t)
    local p = { identity = t.participant, name = t.participant, joined_at_ms = 0 }
    local camera = self.cameras[t.participant]
    if camera then p.name, p.joined_at_ms = camera.name, camera.joined_at_ms end
    if t.source == "screen_share" then
      self.shares[t.participant] = self.shares[t.participant]
        or { identity = p.identity, name = p.name, joined_at_ms = p.joined_at_ms, screen = true }
      return self.shares[t.participant]
    end
    return camera
  end

  room:on("participant_joined", function(p)
    local name = (p.name ~= nil and p.name ~= "") and p.name or p.identity
    self.cameras[p.identity] = { identity = p.identity, name = name, joined_at_ms = p.joined_at_ms or 0 }
    self.draw()
  end)
  room:on("participant_left", function(p)
    self.cameras[p.identity], self.shares[p.identity] = nil, nil
    if self.speaker == p.identity then self.speaker = nil end
    self.draw()
  end)
  room:on("track_published", function(t)
    if t.kind ~= "video" then return end
    local tile = tile_of(t)
    local track = tile and room:track(t.sid)
    if not track then return end
    canvas:add(track)
    tile.video, tile.muted = t.sid, t.muted
    self.draw()
  end)
  room:on("track_unpublished", function(t)
    if t.kind ~= "video" then return end
    canvas:detach(t.sid)
    if self.shares[t.participant] and self.shares[t.participant].video == t.sid then
      self.shares[t.participant] = nil
    elseif self.cameras[t.participant] and self.cameras[t.participant].video == t.sid then
      self.cameras[t.participant].video = nil
    end
    self.draw()
  end)
  -- A muted camera shows its name card, as LiveKit's templates do, not a frozen picture.
  local function set_muted(t, muted)
    local tile = t.kind == "video" and (t.source == "screen_share" and self.shares or self.cameras)[t.participant]
    if tile and tile.video == t.sid and tile.muted ~= muted then
      tile.muted = muted
      self.draw()
    end
  end
  room:on("track_muted", function(t) set_muted(t, true) end)
  room:on("track_unmuted", function(t) set_muted(t, false) end)
  -- The loudest speaker becomes the main tile and stays so until someone else speaks.
  room:on("active_speakers", function(e)
    local loudest = e.speakers[1]
    if loudest and loudest.identity ~= self.speaker and self.cameras[loudest.identity] then
      self.speaker = loudest.identity
      self.draw()
    end
  end)
  self.draw()
  return self
end

return M
