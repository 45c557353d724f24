#!/usr/bin/env bash
# What the agent costs on a busy device (issue 25's measure): 30 containers and an application
# writing 1,000 log lines a second, with a release `outpost agent` on its defaults (host at 1 s,
# containers and top processes at 10 s, logs at 1 s, the alert engine and its built-in pack) plus
# the log file and two patterns, side by side with Debian's `prometheus-node-exporter` on its
# defaults, scraped every second (the agent's host resolution), over the same window.
#
# The containers are real cgroups where Docker's cgroupfs driver makes them (v1:
# `<controller>/docker/<id>`; v2: `outpost-bench.slice/docker-<id>.scope`), each with a process in
# it; so this needs root and a writable cgroup hierarchy. No Docker daemon: they are named by id.
#
# With JOURNAL=N (entries a second), a journal is written live as well, by Debian's
# `systemd-journal-remote` from export-format entries paced at that rate, and the agent follows
# it with its journal file reader (`journal_reader = "files"`), as it follows the system's
# journal on a device.
#
# Usage: sudo [JOURNAL=1000] benches/agent-workload.sh [SECONDS]   (default 300, after a 30 s warm-up)
# Prints, for each process: peak resident memory (VmHWM), RSS at the end, and CPU as a
# percentage of one core (utime + stime over the window), and what the agent counted.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/agent-collectors.sh
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
seconds=${1:-300}
warmup=30
containers=30
lines_per_second=1000
journal_rate=${JOURNAL:-0}
command -v prometheus-node-exporter >/dev/null || { echo "needs prometheus-node-exporter (apt-get install prometheus-node-exporter)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root: it makes cgroups" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-workload.XXXXXX")
port=$((20000 + RANDOM % 20000))
ne_port=$((port + 1))
pids=()
dirs=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  # Children before parents; a cgroup goes once its processes have.
  for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do rmdir "${dirs[i]}" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

binary=${OUTPOST_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --locked --quiet -p outpost --bin outpost
  binary=./target/release/outpost
fi

for ((i = 0; i < containers; i++)); do
  make_container "$(printf '%064x' $((0xbe9c0000 + i)))"
done

write_app_log "$work/app.log" "$lines_per_second" &
pids+=("$!")

journal_files=""
if [ "$journal_rate" -gt 0 ]; then
  mkdir "$work/journal"
  write_journal "$work/journal/system.journal" "$journal_rate" 2>"$work/remote.log" &
  pids+=("$!")
  journal_files="$work/journal/system*.journal"
fi

{
  printf '[store]\npath = "%s"\n[nvml]\nenabled = false\n' "$work/agent.redb"
  workload_logs "$work/app.log" "$journal_files"
} >"$work/agent.toml"
"$binary" agent --config "$work/agent.toml" --listen "127.0.0.1:$port" 2>"$work/agent.log" &
agent=$!
pids+=("$agent")
prometheus-node-exporter --web.listen-address="127.0.0.1:$ne_port" 2>"$work/ne.log" &
ne=$!
pids+=("$ne")
# Scraped as a Prometheus would, every second, the body read and dropped.
(while true; do curl -s "http://127.0.0.1:$ne_port/metrics" >/dev/null || true; sleep 1; done) &
pids+=("$!")

sleep "$warmup"
for p in "$agent" "$ne"; do kill -0 "$p" || { cat "$work/agent.log" "$work/ne.log"; exit 1; }; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
agent_start=$(ticks "$agent")
ne_start=$(ticks "$ne")
start=$(date +%s.%N)
sleep "$seconds"
end=$(date +%s.%N)
agent_end=$(ticks "$agent")
ne_end=$(ticks "$ne")

report() {
  local name=$1 pid=$2 from=$3 to=$4
  local hwm rss cpu
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  cpu=$(echo "scale=3; 100 * ($to - $from) / $hz / ($end - $start)" | bc)
  printf '%-16s peak RSS %5.1f MiB, RSS at the end %5.1f MiB, CPU %s %% of one core\n' \
    "$name" "$(echo "scale=1; $hwm / 1024" | bc)" "$(echo "scale=1; $rss / 1024" | bc)" "$cpu"
}
metrics=$(curl -s "http://127.0.0.1:$port/metrics")
echo "measured ${seconds} s after a ${warmup} s warm-up; ${containers} containers, ${lines_per_second} log lines/s, ${journal_rate} journal entries/s"
report "outpost agent" "$agent" "$agent_start" "$agent_end"
report "node_exporter" "$ne" "$ne_start" "$ne_end"
echo "the agent saw $(grep -c '^container_cpu_usage_seconds_total{' <<<"$metrics" || true) containers, $(grep -vc '^#' <<<"$metrics") series in /metrics"
grep -E '^outpost_log_(lines|pattern_matches)_total' <<<"$metrics" | head -8
if [ "$journal_rate" -gt 0 ]; then
  echo "journal entries counted: $(awk '/^outpost_journal_entries_total\{/ {t += $NF} END {printf "%d", t}' <<<"$metrics")"
fi
