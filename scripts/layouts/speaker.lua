-- Layout `speaker`: the main tile (a screen share, else the active speaker) on the left 4/5,
-- everyone else in a column of 16:9 tiles on the right, centred. See layouts/grid.lua for
-- what a layout gets and returns.
local function round(x) return math.floor(x + 0.5) end

return function(stage)
  local main = stage.main
  if not main then return {} end
  local W, H = stage.width, stage.height
  if #stage.tiles == 1 then return { { of = main, x = 0, y = 0, w = W, h = H } } end
  local side_w = round(W / 5)
  local others = {}
  for _, tile in ipairs(stage.tiles) do
    if tile ~= main then others[#others + 1] = tile end
  end
  local side_h = math.min(round(side_w * 9 / 16), H // #others)
  local top = round((H - side_h * #others) / 2)
  local placed = { { of = main, x = 0, y = 0, w = W - side_w, h = H } }
  for i, tile in ipairs(others) do
    placed[#placed + 1] = { of = tile, x = W - side_w, y = top + (i - 1) * side_h, w = side_w, h = side_h }
  end
  return placed
end
