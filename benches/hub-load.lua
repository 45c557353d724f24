-- The dashboard's request mix for `benches/hub-load.sh`: 70 % fleet list, 20 % one-hour and
-- 10 % 24-hour range queries at 1,000 points, each for a random simulated device.
-- With RATE set, each of the CONNECTIONS connections waits between requests so that together
-- they send about RATE requests/s (less the time each answer takes).
local devices = tonumber(os.getenv("DEVICES") or "100")
local rate = tonumber(os.getenv("RATE") or "")
local pause_ms = rate and tonumber(os.getenv("CONNECTIONS") or "1") * 1000 / rate

if pause_ms then
  delay = function()
    return pause_ms
  end
end

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
