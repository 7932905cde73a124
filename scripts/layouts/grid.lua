-- Layout `grid`: rows of equal cells in join order, the last row centred (egret's page draws
-- the same). A layout is a function from the stage (see lib/stage.lua) to tile rectangles:
--   stage.width, stage.height   the frame, in pixels
--   stage.tiles                 every camera (a name card while it has no video) and screen
--                               share, in join order, each { identity, name, screen, video }
--   stage.participants          the cameras only; stage.screen_shares the shares only
--   stage.speaker               the active speaker's identity (kept until another speaks)
--   stage.main                  the tile a speaker layout shows large: a screen share, else
--                               the active speaker, else the first to join
-- It returns { { of = tile, x = ..., y = ..., w = ..., h = ... }, ... }; tiles left out are
-- not shown, later ones are drawn above earlier ones. Add scripts/layouts/NAME.lua to add
-- layout NAME (also as NAME-light / NAME-dark), no restart needed.
local function round(x) return math.floor(x + 0.5) end

return function(stage)
  local tiles, placed = stage.tiles, {}
  local n = #tiles
  if n == 0 then return placed end
  local cols = math.ceil(math.sqrt(n))
  local rows = math.ceil(n / cols)
  local w, h = stage.width // cols, stage.height // rows
  for i, tile in ipairs(tiles) do
    local row = (i - 1) // cols
    local in_row = (row == rows - 1) and (n - row * cols) or cols
    local offset = round((cols - in_row) * w / 2)
    placed[i] = { of = tile, x = offset + ((i - 1) % cols) * w, y = row * h, w = w, h = h }
  end
  return placed
end
