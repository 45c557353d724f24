#!/usr/bin/env bash
# What the agent costs the device: resident memory and CPU of `outpost agent` at 1 Hz with every
# collector this machine supports switched on, plus a tegrastats replay at the log's own pace and
# the Jetson sysfs collector on the Orin Nano fixture tree (together about 300 series).
#
# Collectors run at 1 s (the Jetson sysfs one too, although its default is 5 s), probes every
# 10 s (their default is 30 s), and an application endpoint is scraped every 15 s (100 series).
#
# Usage: benches/agent-overhead.sh [SECONDS]   (default 600, after a 30 s warm-up)
#        SYNC=1 benches/agent-overhead.sh [SECONDS]   the same with [mqtt] on, shipping every
#        10 s to a local `outpost hub` with its embedded broker (the hub is not measured)
#        ALERTS=0 benches/agent-overhead.sh [SECONDS]   without the alert engine (on by default,
#        with the built-in rule pack)
#        OUTPOST_BINARY=target/dist/outpost-VERSION-x86_64 benches/agent-overhead.sh [SECONDS]
#        the packaged build (cross/build.sh) instead of this checkout's release build
# Prints peak and final RSS (VmHWM, VmRSS from /proc) and CPU as a percentage of one core
# (utime + stime from /proc/PID/stat over the measured window), and the series count.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/agent-collectors.sh
# As the packaged service runs: with RUST_BACKTRACE set, every error (a failed probe, a refused
# connection) captures a backtrace, which maps the unwind tables and more code into the agent.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
seconds=${1:-600}
warmup=30
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-overhead.XXXXXX")
port=$((20000 + RANDOM % 20000))
app_port=$((port + 1))
cleanup() {
  kill ${agent:-} ${app:-} ${hub:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# OUTPOST_BINARY measures another build, such as a package's (cross/build.sh).
binary=${OUTPOST_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --quiet
  binary=./target/release/outpost
fi
{
  printf '[agent]\nself_interval = "10s"\n[store]\npath = "%s"\n' "$work/agent.redb"
  bench_collectors "$port" "$work" "$app_port"
  cat <<EOF
[alerts]
enabled = $([ "${ALERTS:-1}" = 0 ] && echo false || echo true)
EOF
} >"$work/agent.toml"

serve_app_metrics "$work/app" "$app_port"
app=$!

if [ -n "${SYNC:-}" ]; then
  mqtt_port=$((port + 2))
  "$binary" hub --devices-file "$work/devices.toml" device add bench --out "$work" \
    --url "mqtt://127.0.0.1:$mqtt_port" >/dev/null
  "$binary" hub --devices-file "$work/devices.toml" --store "$work/hub.redb" \
    --listen "127.0.0.1:$((port + 3))" --mqtt-listen "127.0.0.1:$mqtt_port" 2>"$work/hub.log" &
  hub=$!
  cat >>"$work/agent.toml" <<EOF
[mqtt]
enabled = true
url = "mqtt://127.0.0.1:$mqtt_port"
device = "bench"
key_file = "$work/bench.key"
password_file = "$work/bench.password"
EOF
fi

"$binary" agent --config "$work/agent.toml" --listen "127.0.0.1:$port" \
  2>"$work/agent.log" &
agent=$!
sleep "$warmup"
kill -0 "$agent" || { cat "$work/agent.log"; exit 1; }

ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
hz=$(getconf CLK_TCK)
start_ticks=$(ticks)
start=$(date +%s.%N)
peak_rss=0
for ((i = 0; i < seconds; i += 10)); do
  sleep 10
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
  ((rss > peak_rss)) && peak_rss=$rss
done
end=$(date +%s.%N)
end_ticks=$(ticks)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
series=$(curl -s "http://127.0.0.1:$port/metrics" | grep -vc '^#' || true)
cpu=$(echo "scale=3; 100 * ($end_ticks - $start_ticks) / $hz / ($end - $start)" | bc)

echo "measured ${seconds} s after a ${warmup} s warm-up; ${series} series in /metrics"
echo "RSS: peak sampled $((peak_rss / 1024)).$(((peak_rss % 1024) * 10 / 1024)) MiB, high-water mark (VmHWM) $((hwm / 1024)).$(((hwm % 1024) * 10 / 1024)) MiB"
echo "CPU: ${cpu} % of one core"
# Where the resident memory is: the heap and stacks (anonymous) or the binary's own pages.
awk '/^(Anonymous|Rss|Pss|Private_Clean|Shared_Clean):/ {printf "%s %.1f MiB  ", $1, $2 / 1024} END {print ""}' "/proc/$agent/smaps_rollup"
if [ -n "${SYNC:-}" ]; then
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '^outpost_sync_(batches_acked_total|sent_bytes_total|connected) '
fi
