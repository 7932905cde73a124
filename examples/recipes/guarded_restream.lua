-- examples/recipes/guarded_restream.lua: copy into scripts/ and it is live at once.
-- The test source to every output, with two rules no stock egress service offers:
--   * a hard cap on the length of each egress (max_seconds, default 1 hour);
--   * when the last stream URL fails, stop instead of recording on without a stream.
return recipe {
  name = "guarded_restream",
  params = { max_seconds = "number(1..604800)?" },
  outputs = true,

  start = function(req, egress)
    local src = egress:testsrc {}
    egress:encode { video = src.video, audio = src.audio }:output(req)

    local streams = 0
    for _, s in ipairs(req.stream_outputs or {}) do streams = streams + #s.urls end

    egress:on("active", function()
      egress:after(req.max_seconds or 3600, function() egress:stop("limit reached") end)
    end)
    egress:on("output_failed", function(out)
      log("output failed:", out.field, out.error)
      if out.field:find("^stream_outputs") then
        streams = streams - 1
        if streams == 0 then egress:stop("every stream URL failed") end
      end
    end)
  end,
}
