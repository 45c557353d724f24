#!/usr/bin/env bash
# The hub under the dashboard's load while it ingests: a release `outpost hub` with its embedded
# broker, DEVICES real agents (each replaying the TX2 tegrastats log at 1 Hz and syncing over
# MQTT with its own credentials), then wrk on loopback with benches/hub-load.lua's mix for
# SECONDS, twice: as fast as CONNECTIONS connections go, and paced to about RATE requests/s (320:
# each connection waits between answers, so what it reaches is a little less; wrk prints it).
# Before the hub starts, its store is given the day before of each device's per-core CPU load
# (the TX2 log's values at 10 s), so that the 24-hour queries read a day of data.
# Prints wrk's throughput and latency percentiles and what the hub ingested meanwhile; then the
# fleet page's first render and a sort in headless Chromium with FLEET (1000) copies of the devices.
#
#   benches/hub-load.sh [SECONDS] [CONNECTIONS]      (DEVICES=100 by default; needs wrk)
set -euo pipefail
# shellcheck source=benches/hub-common.sh
source "$(dirname "$0")/hub-common.sh"
wrk_fleet 60 100 "$@"
echo "seeding the hub's store with a day of CPU load per device..."
python3 - "$devices" <<'PY' | "$outpost" db import --db "$dir/hub.redb" -
import re, subprocess, sys, time
devices = int(sys.argv[1])
log = subprocess.run(["zstdcat", "tests/data/tegrastats/tx2-jetpack4-2660s.log.zst"],
                     capture_output=True, text=True, check=True).stdout.splitlines()
loads = [[int(v) / 100 for v in re.findall(r"(\d+)%@", line.split("CPU [", 1)[1].split("]", 1)[0])]
         for line in log if "CPU [" in line]
end = (int(time.time()) - 120) * 1000
out = sys.stdout
for device in range(devices):
    instance = f"sim-{device:03d}"
    for step in range(8640):
        cores = loads[(step + device * 7) % len(loads)]
        stamp = end - (8640 - step) * 10_000
        out.write("".join(f'jetson_cpu_load_ratio{{cpu="{cpu}",instance="{instance}"}} {value} {stamp}\n'
                          for cpu, value in enumerate(cores)))
PY
start_hub
start_agents $(sim_ids "$devices")
echo "waiting for $devices devices to come online and send data..."
wait_online "$devices"
echo "online: $(online) of $devices; warming up for 30 s"
sleep 30
points=$(curl -sf "127.0.0.1:$http_port/api/range?device=sim-000&match=jetson_cpu_load_ratio&start=now-24h&max_points=1000" \
  | python3 -c 'import json, sys; print(sum(len(s["points"]) for s in json.load(sys.stdin)["series"]))')
echo "a 24-hour range query for sim-000 returns $points points"
[ "$points" -gt 1000 ] || { echo "hub-load.sh: the range queries return too little data" >&2; exit 1; }
batches() { curl -sf "127.0.0.1:$http_port/metrics" | awk '/^outpost_hub_batches_total/ { s += $2 } END { print s + 0 }'; }
load() {
  local before cpu_before cpu_after after
  before=$(batches)
  cpu_before=$(awk '{ print $14 + $15 }' "/proc/$hub/stat")
  DEVICES=$devices CONNECTIONS=$connections RATE=${1:-} \
    wrk -t2 -c"$connections" -d"${seconds}s" --latency -s benches/hub-load.lua "http://127.0.0.1:$http_port"
  cpu_after=$(awk '{ print $14 + $15 }' "/proc/$hub/stat")
  after=$(batches)
  echo "hub: $((after - before)) batches stored during the run; hub CPU $(( (cpu_after - cpu_before) * 100 / $(getconf CLK_TCK) / seconds )) % of one core"
  echo "online at the end: $(online) of $devices"
}
echo "== as fast as $connections connections go"
load
echo "== paced to about ${RATE:-320} requests/s"
load "${RATE:-320}"

# The fleet page with a large fleet, in a real browser (needs Node.js and Debian's chromium).
if command -v node >/dev/null && [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  browser_dir=target/bench-browser
  mkdir -p "$browser_dir"
  cp tests/browser/package.json tests/browser/package-lock.json tests/browser/fleet-render.mjs "$browser_dir/"
  (cd "$browser_dir" && npm ci --silent --no-audit --no-fund >/dev/null)
  HUB_URL="http://127.0.0.1:$http_port" FLEET=${FLEET:-1000} node "$browser_dir/fleet-render.mjs"
fi
