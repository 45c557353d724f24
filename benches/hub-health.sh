#!/usr/bin/env bash
# The hub's cheap paths on a month-old store while it ingests: a release `outpost hub` whose store
# holds 30 days of 300 series (10 devices x 30 series, a sample every 30 s: 25.9 M samples),
# DEVICES real agents syncing to it over MQTT (each replaying the TX2 tegrastats log at 1 Hz),
# then wrk on loopback for SECONDS against `GET /api/health` and then against `GET /api/devices`
# (the fleet request), with CONNECTIONS connections. Prints wrk's latency percentiles and what
# the hub ingested meanwhile. Target (issue 18, item 7): both within 5 ms at the 99th percentile.
#
#   benches/hub-health.sh [SECONDS] [CONNECTIONS]      (DEVICES=10 by default; needs wrk)
set -euo pipefail
# shellcheck source=benches/hub-common.sh
source "$(dirname "$0")/hub-common.sh"
wrk_fleet 20 10 "$@"
echo "seeding the hub's store with 30 days of 300 series..."
started=$(date +%s)
python3 <<'PY' | "$outpost" db import --db "$dir/hub.redb" - >/dev/null
import math, sys, time
end = (int(time.time()) - 120) * 1000
step_ms, days = 30_000, 30
steps = days * 86_400_000 // step_ms
out = sys.stdout
for block in range(0, steps, 2880):
    lines = []
    for step in range(block, min(block + 2880, steps)):
        stamp = end - (steps - step) * step_ms
        for device in range(10):
            for series in range(30):
                value = round(50 + 40 * math.sin((step + 97 * series + 13 * device) / 360), 2)
                lines.append(f'bench_load{{series="{series}",instance="bench-{device:02d}"}} {value} {stamp}\n')
    out.write("".join(lines))
PY
echo "seeded in $(( $(date +%s) - started )) s: $("$outpost" db stats --db "$dir/hub.redb" | grep -E 'raw samples|bytes on disk' | tr -s ' ' | paste -sd ';')"
start_hub
start_agents $(sim_ids "$devices")
wait_online "$devices"
echo "online: $(online) of $devices; warming up for 10 s"
sleep 10
samples() { curl -sf "127.0.0.1:$http_port/metrics" | awk '/^outpost_hub_samples_total/ { s += $2 } END { print s + 0 }'; }
for path in /api/health /api/devices; do
  before=$(samples)
  echo "== GET $path, $connections connections, $seconds s, while the hub ingests"
  wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$http_port$path" \
    | grep -E 'Latency|50%|90%|99%|Requests/sec'
  echo "hub: $(( $(samples) - before )) samples ingested during the run; online at the end: $(online) of $devices"
done
