#!/usr/bin/env bash
# The embedded broker under a flood from one enrolled device: a release `outpost hub` with its
# embedded broker, one real agent (dev-b, replaying the TX2 tegrastats log at 1 Hz and syncing),
# and dev-a's login publishing ROUNDS rounds of 200 payloads of 1 MB (the default max_packet) as
# fast as mosquitto_pub goes: on another device's batch topic (which the gate refuses), then from
# three publishers at once on its own (which the gate lets through to the hub, which refuses them
# as unsigned). Prints the
# hub's resident memory (VmRSS, and VmHWM, its peak) before, after each round and at the end, and
# how many of dev-b's batches the hub stored meanwhile.
#
#   benches/broker-flood.sh [ROUNDS]      (needs mosquitto_pub, from Debian's mosquitto-clients)
set -euo pipefail
# shellcheck source=benches/hub-common.sh
source "$(dirname "$0")/hub-common.sh"
rounds=${1:-3}
need mosquitto_pub "Debian's mosquitto-clients"
enrol dev-a dev-b
# A batch a second, so that the flood's effect on dev-b's data shows within seconds.
printf 'batch_interval = "1s"\n' >>"$dir/dev-b.toml"
start_hub
start_agents dev-b
batches() {
  curl -sf "127.0.0.1:$http_port/api/devices" \
    | python3 -c 'import json, sys; print(sum(d.get("batches", 0) for d in json.load(sys.stdin) if d["device"] == "dev-b"))'
}
until [ "$(batches)" -gt 0 ]; do sleep 0.5; done
memory() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$hub/status"; echo; }
echo "before:       $(memory)"
head -c $((1000 * 1000)) /dev/urandom >"$dir/payload"
password=$(cat "$dir/keys/dev-a.password")
flood() {
  for _ in $(seq 1 200); do
    mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u dev-a -P "$password" -i outpost-default-dev-a \
      -q 1 -t "$1" -f "$dir/payload" 2>/dev/null || true
  done
}
before=$(batches)
started=$(date +%s)
for round in $(seq 1 "$rounds"); do
  flood outpost/v1/default/dev-b/batch
  # Three publishers at once on dev-a's own topic.
  flood outpost/v1/default/dev-a/batch &
  first=$!
  flood outpost/v1/default/dev-a/batch &
  second=$!
  flood outpost/v1/default/dev-a/batch
  wait "$first" "$second"
  echo "after round $round: $(memory)"
done
sleep 5
echo "5 s later:    $(memory)"
echo "dev-b: $(( $(batches) - before )) batches stored during the $(( $(date +%s) - started )) s of flood"
curl -sf "127.0.0.1:$http_port/metrics" | grep -E '^outpost_hub_(broker_refusals_total|rejected_total)' || true
