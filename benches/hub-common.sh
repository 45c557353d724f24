# Sourced by the hub benches (hub-health.sh, hub-load.sh, broker-flood.sh): the checkout as the
# working directory, a release build, a scratch directory removed at exit with every process in
# `pids`, two free ports, and `enrol ID...`, which enrols devices and writes each one's agent
# config ($dir/ID.toml) with only what the bench needs (no host, Jetson, NVML or alert
# collectors) and its [mqtt] section.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Stops the bench with a message when a program it needs is missing.
need() {
  command -v "$1" >/dev/null || { echo "$(basename "$0"): needs $1${2:+ ($2)}" >&2; exit 1; }
}

# The names of N simulated devices: sim-000, sim-001...
sim_ids() { seq -f 'sim-%03g' 0 $(($1 - 1)); }

# For the wrk benches: `wrk_fleet DEFAULT_SECONDS DEFAULT_DEVICES [SECONDS] [CONNECTIONS]` sets
# `seconds`, `connections` (4 by default) and `devices` ($DEVICES or the default), and enrols
# that many simulated devices.
wrk_fleet() {
  need wrk "apt-get install wrk"
  seconds=${3:-$1}
  connections=${4:-4}
  devices=${DEVICES:-$2}
  enrol $(sim_ids "$devices")
}

cargo build --release --locked --quiet -p outpost --bin outpost
outpost=$PWD/target/release/outpost
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
mqtt_port=$(free_port)
hub_args=(--store "$dir/hub.redb" --devices-file "$dir/devices.toml")
mkdir -m 700 "$dir/keys"

enrol() {
  local id
  for id in "$@"; do
    "$outpost" hub "${hub_args[@]}" device add "$id" --out "$dir/keys" --url "mqtt://127.0.0.1:$mqtt_port" \
      | grep -v '^#' | sed "s|/etc/outpost/|$dir/keys/|" >"$dir/$id.mqtt"
    printf '[host]\nenabled = false\n[jetson]\nenabled = "off"\n[nvml]\nenabled = "off"\n[alerts]\nenabled = false\n' \
      | cat - "$dir/$id.mqtt" >"$dir/$id.toml"
  done
}

# The hub on the two ports, with its embedded broker; returns once its API answers.
start_hub() {
  "$outpost" hub "${hub_args[@]}" --listen "127.0.0.1:$http_port" --mqtt-listen "127.0.0.1:$mqtt_port" \
    2>"$dir/hub.log" &
  hub=$!
  pids+=("$hub")
  until curl -sf "127.0.0.1:$http_port/api/health" >/dev/null; do sleep 0.2; done
}

# An agent for each enrolled ID, replaying the TX2 tegrastats log at its own pace and syncing.
start_agents() {
  local id
  for id in "$@"; do
    "$outpost" --log warn agent --config "$dir/$id.toml" --store "$dir/$id.redb" --listen 127.0.0.1:0 \
      --tegrastats-replay tests/data/tegrastats/tx2-jetpack4-2660s.log.zst --replay-speed 1 \
      2>"$dir/$id.log" &
    pids+=("$!")
  done
}

# How many devices the hub shows online.
online() {
  curl -sf "127.0.0.1:$http_port/api/devices" \
    | python3 -c 'import json, sys; print(sum(1 for d in json.load(sys.stdin) if d.get("state") == "online"))'
}

# Waits up to two minutes for N devices online.
wait_online() {
  for _ in $(seq 1 120); do
    [ "$(online)" -ge "$1" ] && break
    sleep 1
  done
}
