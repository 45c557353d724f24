-- The dashboard's request mix for `benches/hub-load.sh`: 70 % fleet list, 20 % one-hour and
-- 10 % 24-hour range queries at 1,000 points, each for a random simulated device.
local devices = tonumber(os.getenv("DEVICES") or "100")

request = function()
  local pick = math.random()
  if pick < 0.7 then
    return wrk.format("GET", "/api/devices")
  end
  local device = string.format("sim-%03d", math.random(0, devices - 1))
  local hours = pick < 0.9 and "1h" or "24h"
  return wrk.format("GET", "/api/range?device=" .. device
    .. "&match=jetson_cpu_load_ratio&start=now-" .. hours .. "&max_points=1000")
end
