#!/usr/bin/env bash
# Size on disk and import time of Outpost's store against Prometheus' TSDB on the same samples.
#
# Usage: benches/compare-prometheus.sh [FILE.prom.zst]   (default: the project's hour of host data)
# Needs promtool (Debian: apt-get install prometheus) and zstd. Sizes are what `du --block-size=1`
# reports: bytes allocated on disk, all store files and tiers included for Outpost, the block's
# chunks and index for Prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
input=${1:-tests/data/host/host-1h.prom.zst}
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet
samples=$(zstd -dc "$input" | grep -vc '^#')

best_of_3() { # the least wall-clock seconds of three runs of a command
  local best="" start end t
  for _ in 1 2 3; do
    start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N)
    t=$(echo "$end - $start" | bc)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}

# Outpost: import, then measure every file of the store.
outpost_import() { rm -f "$work"/store.redb*; ./target/release/outpost db import --db "$work/store.redb" "$input"; }
outpost_s=$(best_of_3 outpost_import)
outpost_bytes=$(du --block-size=1 -c "$work"/store.redb* | tail -1 | cut -f1)

# Prometheus: OpenMetrics wants timestamps in seconds and a final # EOF.
zstd -dc "$input" | awk '/^#/ {next} { ts=$NF; $NF=""; sub(/ $/, ""); printf "%s %d.%03d\n", $0, int(ts/1000), ts%1000 } END { print "# EOF" }' > "$work/input.om"
prom_import() { rm -rf "$work/prom"; mkdir -p "$work/prom"; promtool tsdb create-blocks-from openmetrics "$work/input.om" "$work/prom"; }
prom_s=$(best_of_3 prom_import)
block=$(find "$work/prom" -mindepth 1 -maxdepth 1 -type d | head -1)
prom_bytes=$(du --block-size=1 -c "$block/chunks" "$block/index" | tail -1 | cut -f1)

printf '| store | bytes on disk | bytes/sample | import s (best of 3) |\n| --- | --- | --- | --- |\n'
printf '| Outpost (raw + 1m + 1h tiers) | %d | %.3f | %.3f |\n' "$outpost_bytes" "$(echo "$outpost_bytes / $samples" | bc -l)" "$outpost_s"
printf '| Prometheus %s (chunks + index) | %d | %.3f | %.3f |\n' "$(promtool --version 2>&1 | head -1 | awk '{print $3}')" "$prom_bytes" "$(echo "$prom_bytes / $samples" | bc -l)" "$prom_s"
printf '\n%d samples; Outpost uses %.1f %% of Prometheus'"'"' bytes.\n' "$samples" "$(echo "100 * $outpost_bytes / $prom_bytes" | bc -l)"
