#!/usr/bin/env bash
# The dashboard's pages in Debian's headless Chromium over a month-old store (issue 24's
# measures): a release `outpost hub` whose store holds 30 days of 100 Jetsons (13 series each,
# a sample a minute: 56 M samples), one real agent syncing to it meanwhile, and
# benches/dashboard-browser.mjs timing, in the page, from the start of navigation to the first
# frame that shows the result:
#   - the fleet page with 1,000 devices (copies of the real one, as benches/hub-load.sh does);
#   - a device's page over 24 hours and over 30 days;
#   - the explorer over 300 series for 24 hours;
#   - a report over 30 days for 100 devices.
#
#   benches/dashboard-browser.sh            (LOADS=5 loads of each page; needs node and chromium)
set -euo pipefail
# shellcheck source=benches/hub-common.sh
source "$(dirname "$0")/hub-common.sh"
need node "apt-get install nodejs npm"
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
enrol sim-000
echo "seeding the hub's store with 30 days of 100 Jetsons..."
started=$(date +%s)
python3 <<'PY' | "$outpost" db import --db "$dir/hub.redb" - >/dev/null
import math, sys, time
end = (int(time.time()) - 120) * 1000
step_ms, days, devices = 60_000, 30, 100
steps = days * 86_400_000 // step_ms
boot = end // 1000 - days * 86_400 - 3_600
out = sys.stdout
for block in range(0, steps, 720):
    lines = []
    for step in range(block, min(block + 720, steps)):
        stamp = end - (steps - step) * step_ms
        for device in range(devices):
            d = f'instance="bench-{device:03d}"'
            wave = lambda period, phase: math.sin((step + 37 * device + phase) / period)
            for cpu in range(4):
                load = round(0.5 + 0.4 * wave(90, 11 * cpu), 3)
                lines.append(f'jetson_cpu_load_ratio{{cpu="{cpu}",{d}}} {load} {stamp}\n')
            lines.append(f'jetson_engine_load_ratio{{engine="GR3D",{d}}} {round(0.5 + 0.5 * wave(45, 3), 3)} {stamp}\n')
            lines.append(f'jetson_engine_load_ratio{{engine="EMC",{d}}} {round(0.3 + 0.2 * wave(60, 7), 3)} {stamp}\n')
            lines.append(f'jetson_ram_used_bytes{{{d}}} {int(4e9 + 2e9 * wave(300, 0)) // 4096 * 4096} {stamp}\n')
            lines.append(f'jetson_ram_total_bytes{{{d}}} 8000000000 {stamp}\n')
            for zone, base in (("CPU", 45), ("GPU", 48)):
                lines.append(f'jetson_temperature_celsius{{zone="{zone}",{d}}} {round(base + 10 * wave(120, base), 1)} {stamp}\n')
            lines.append(f'jetson_rail_power_watts{{rail="VDD_IN",{d}}} {round(7 + 3 * wave(45, 5), 2)} {stamp}\n')
            lines.append(f'outpost_uptime_seconds{{{d}}} {(step + 1) * 60} {stamp}\n')
            lines.append(f'node_boot_time_seconds{{{d}}} {boot} {stamp}\n')
    out.write("".join(lines))
PY
echo "seeded in $(( $(date +%s) - started )) s: $("$outpost" db stats --db "$dir/hub.redb" | grep -E 'raw samples|bytes on disk' | tr -s ' ' | paste -sd ';')"
start_hub
start_agents sim-000
wait_online 1
browser_dir=target/bench-browser
mkdir -p "$browser_dir"
cp tests/browser/package.json tests/browser/package-lock.json benches/dashboard-browser.mjs "$browser_dir/"
(cd "$browser_dir" && npm ci --silent --no-audit --no-fund >/dev/null)
HUB_URL="http://127.0.0.1:$http_port" node "$browser_dir/dashboard-browser.mjs"
