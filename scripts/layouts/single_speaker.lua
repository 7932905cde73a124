-- Layout `single-speaker`: only the main tile (a screen share, else the active speaker),
-- filling the frame. See layouts/grid.lua for what a layout gets and returns.
return function(stage)
  if not stage.main then return {} end
  return { { of = stage.main, x = 0, y = 0, w = stage.width, h = stage.height } }
end
