#!/usr/bin/env bash
# How fast the agent turns logs into counters (issue 25's measure), on one core: a backlog of
# journal entries (a real journal file written by Debian's `systemd-journal-remote`, read through
# its own reader of the files, and through `journalctl -o export`) and of plain log lines, each worked through by a release
# `outpost agent` that resumes after its saved position, with the agent and everything it starts
# pinned to CPU 0 (`taskset`). Two patterns apply to every entry, one with a capture.
#
# Usage: benches/log-throughput.sh [ENTRIES]   (default 500000 journal entries and 2,000,000 lines)
# Prints, for each source, entries per second of wall time (journalctl included, on the same
# core) and per second of the agent's own CPU time.
#
# With FLUENT_BIT=/path/to/fluent-bit (not packaged for Debian: a build of its own, with the
# systemd and tail inputs, the log_to_metrics filter and the prometheus_exporter and null
# outputs), Fluent Bit then works through the same entries and lines on the same core, counting
# them as the agent does, and gets a row of its own for each.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/agent-collectors.sh
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
entries=${1:-500000}
lines=$((entries * 4))
remote=""
for candidate in /lib/systemd/systemd-journal-remote /usr/lib/systemd/systemd-journal-remote; do
  [ -x "$candidate" ] && remote=$candidate
done
[ -n "$remote" ] || { echo "needs systemd-journal-remote (apt-get install systemd-journal-remote)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-logs.XXXXXX")
port=$((20000 + RANDOM % 20000))
agent=""
fluent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null || true
  [ -n "$fluent" ] && kill "$fluent" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

binary=${OUTPOST_BINARY:-}
if [ -z "$binary" ]; then
  cargo build --release --locked --quiet -p outpost --bin outpost
  binary=./target/release/outpost
fi

# Entries in the journal's export format: one in ten an error naming its module.
export_entries() {
  python3 - "$1" "$2" <<'PY'
import sys
first, count = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout
modules = ["camera", "infer", "uplink", "storage"]
chunk = []
for n in range(first, first + count):
    error = n % 10 == 0
    priority = 3 if error else 6
    level = "error" if error else "info"
    unit = f"app{n % 8}.service"
    # The fields journald gives a service's standard output, as `journalctl -o export` shows them.
    chunk.append(
        f"__REALTIME_TIMESTAMP={1796000000000000 + n}\n__MONOTONIC_TIMESTAMP={1000 + n}\n"
        f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_MACHINE_ID=fedcba9876543210fedcba9876543210\n"
        f"_HOSTNAME=jetson-07\n_TRANSPORT=stdout\n_STREAM_ID=5f0c3a2e9d8b4c71a6e2d1b0c9f8e7d6\n"
        f"_PID={1200 + n % 8}\n_UID=0\n_GID=0\n_COMM=app\n_EXE=/usr/bin/app\n_CMDLINE=/usr/bin/app --serve\n"
        f"_CAP_EFFECTIVE=1ffffffffff\n_SELINUX_CONTEXT=unconfined\n_SYSTEMD_CGROUP=/system.slice/{unit}\n"
        f"_SYSTEMD_SLICE=system.slice\n_SYSTEMD_INVOCATION_ID=9a8b7c6d5e4f30211203f4e5d6c7b8a9\n"
        f"_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER=app\nSYSLOG_FACILITY=3\n"
        f"PRIORITY={priority}\nMESSAGE=level={level} module={modules[n % 4]} frame={n} processed a frame\n\n")
    if len(chunk) == 10000:
        out.write("".join(chunk))
        chunk = []
out.write("".join(chunk))
PY
}
log_lines() {
  python3 - "$1" "$2" <<'PY'
import sys
first, count = int(sys.argv[1]), int(sys.argv[2])
modules = ["camera", "infer", "uplink", "storage"]
out = sys.stdout
for start in range(first, first + count, 10000):
    out.write("".join(
        f"ts=1796000000.{n % 1000:03d} level={'error' if n % 10 == 0 else 'info'} module={modules[n % 4]} frame={n} msg=\"processed a frame\"\n"
        for n in range(start, min(start + 10000, first + count))))
PY
}

cat >"$work/agent.toml" <<EOF
[agent]
self_interval = "1s"
[store]
path = "$work/agent.redb"
[host]
enabled = false
[jetson]
enabled = "off"
[nvml]
enabled = "off"
[containers]
enabled = false
[processes]
enabled = false
[alerts]
enabled = false
[logs]
interval = "100ms"
journal = true
journal_reader = "files"
# journalctl expands the glob: systemd-journal-remote archives a full file as system@....journal.
journal_files = ["$work/system*.journal"]
$(workload_log_sources "$work/app.log")
EOF

metrics() { curl -s "http://127.0.0.1:$port/metrics"; }
sum_of() { metrics | awk -v name="$1" 'index($0, name) == 1 { total += $NF } END { printf "%d\n", total }'; }
start_agent() {
  taskset -c 0 "$binary" agent --config "$work/agent.toml" --listen "127.0.0.1:$port" 2>>"$work/agent.log" &
  agent=$!
  until metrics | grep -q '^outpost_journal_malformed_total'; do
    kill -0 "$agent" || { cat "$work/agent.log"; exit 1; }
    sleep 0.1
  done
}
stop_agent() { kill "$agent"; wait "$agent" || true; agent=""; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# The first start begins at the journal's end and the file's: afterwards both resume after their
# saved positions, so the backlog written while the agent is stopped is what it works through.
export_entries 0 10 | "$remote" --output="$work/system.journal" - >/dev/null 2>&1
: >"$work/app.log"
start_agent
sleep 2
stop_agent
# One source at a time: its backlog written while the agent is stopped, then the agent started
# and timed until it has counted all of it. The agent's CPU time includes its start.
# Usage: work_through NAME COUNT SERIES [TOTAL]   (TOTAL: what SERIES sums to when done; COUNT)
work_through() {
  local name=$1 count=$2 series=$3 total=${4:-$2} started done_at helper_ticks=0
  started=$(date +%s.%N)
  start_agent
  until [ "$(sum_of "$series")" -ge "$total" ]; do
    kill -0 "$agent" || { cat "$work/agent.log"; exit 1; }
    sleep 0.05
  done
  done_at=$(date +%s.%N)
  local helper
  helper=$(pgrep -P "$agent" journalctl || true)
  [ -n "$helper" ] && helper_ticks=$(ticks "$helper")
  local agent_ticks wall
  agent_ticks=$(ticks "$agent")
  wall=$(echo "$done_at - $started" | bc)
  printf '%-20s %9d in %6.2f s of wall time: %7d/s; the agent %5.2f s of CPU: %7d per CPU second' \
    "$name" "$count" "$wall" "$(echo "$count / $wall" | bc)" \
    "$(echo "scale=2; $agent_ticks / $hz" | bc)" "$(echo "$count * $hz / $agent_ticks" | bc)"
  [ "$helper_ticks" -gt 0 ] && printf '; journalctl %5.2f s of CPU' "$(echo "scale=2; $helper_ticks / $hz" | bc)"
  printf '; %d pattern matches counted\n' "$(sum_of 'outpost_log_pattern_matches_total{')"
  stop_agent
}

echo "the agent and journalctl pinned to CPU 0; two patterns on every entry and line"
export_entries 10 "$entries" | "$remote" --output="$work/system.journal" - >/dev/null 2>&1
# What journalctl alone costs: every field as JSON, the four the agent counts as JSON, and those
# four in the export format, which the agent reads.
four="--output-fields=_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,PRIORITY,MESSAGE"
for run in "json" "json $four" "export $four"; do
  read -r output fields <<<"$run"
  started=$(date +%s.%N)
  printed=$(taskset -c 0 journalctl -o "$output" --no-pager --quiet "--file=$work/system*.journal" ${fields:-} | grep -c '__CURSOR')
  wall=$(echo "$(date +%s.%N) - $started" | bc)
  printf 'journalctl -o %-6s %-70s %d entries in %5.2f s: %7d/s\n' "$output" "${fields:-(every field)}" "$printed" "$wall" "$(echo "$printed / $wall" | bc)"
done
work_through "journal (files)" "$entries" 'outpost_journal_entries_total{'
# The same number again, through journalctl: it resumes after the files' reader's last entry.
export_entries $((10 + entries)) "$entries" | "$remote" --output="$work/system.journal" - >/dev/null 2>&1
sed -i 's/^journal_reader = .*/journal_reader = "journalctl"/' "$work/agent.toml"
work_through "journal (journalctl)" "$entries" 'outpost_journal_entries_total{' $((2 * entries))
log_lines 0 "$lines" >>"$work/app.log"
work_through file "$lines" 'outpost_log_lines_total{source="app"}'

[ -n "${FLUENT_BIT:-}" ] || exit 0
# Fluent Bit's counts: what the agent counts, by three log_to_metrics filters, the counts out
# through its Prometheus exporter and the records dropped by its null output. The filters flush
# their counts once a second rather than after every chunk of records, which spares Fluent Bit
# work, and so does the errors' count, which has no module label: Fluent Bit's filter cannot
# label a count with a capture of its regex.
# Usage: fluent_bit_through NAME COUNT FIELD INPUT_SETTINGS PER_SOURCE_SETTINGS
fluent_bit_through() {
  local name=$1 count=$2 field=$3 input=$4 per_source=$5 started done_at exporter=$((port + 10))
  cat >"$work/fluent-bit.conf" <<EOF
[SERVICE]
    flush 1
    log_level warn
[INPUT]
$input
    tag logs
[FILTER]
    name log_to_metrics
    match logs
    tag counts
    metric_mode counter
    metric_name lines
    metric_description lines per source
    flush_interval_sec 1
$per_source
[FILTER]
    name log_to_metrics
    match logs
    tag counts
    metric_mode counter
    metric_name errors
    metric_description error lines
    flush_interval_sec 1
    regex $field level=error module=\w+
[FILTER]
    name log_to_metrics
    match logs
    tag counts
    metric_mode counter
    metric_name frames
    metric_description frame lines
    flush_interval_sec 1
    regex $field frame=\d+
[OUTPUT]
    name prometheus_exporter
    match counts
    host 127.0.0.1
    port $exporter
[OUTPUT]
    name null
    match logs
EOF
  fluent_count() {
    curl -s "http://127.0.0.1:$exporter/metrics" \
      | awk -v name="$1" '$1 ~ "^log_metric_counter_" name "([{]|$)" { total += $NF } END { printf "%d\n", total }'
  }
  started=$(date +%s.%N)
  taskset -c 0 "$FLUENT_BIT" -c "$work/fluent-bit.conf" >>"$work/fluent-bit.log" 2>&1 &
  fluent=$!
  until [ "$(fluent_count lines)" -ge "$count" ]; do
    kill -0 "$fluent" 2>/dev/null || { cat "$work/fluent-bit.log"; exit 1; }
    sleep 0.05
  done
  done_at=$(date +%s.%N)
  local fluent_ticks wall
  fluent_ticks=$(ticks "$fluent")
  wall=$(echo "$done_at - $started" | bc)
  printf '%-20s %9d in %6.2f s of wall time: %7d/s; Fluent Bit %5.2f s of CPU: %7d per CPU second; %d pattern matches counted\n' \
    "$name" "$count" "$wall" "$(echo "$count / $wall" | bc)" \
    "$(echo "scale=2; $fluent_ticks / $hz" | bc)" "$(echo "$count * $hz / $fluent_ticks" | bc)" \
    "$(($(fluent_count errors) + $(fluent_count frames)))"
  kill "$fluent"
  wait "$fluent" || true
  fluent=""
}

echo "Fluent Bit ($("$FLUENT_BIT" --version | head -n 1)) pinned to CPU 0; the same entries and lines"
# The same entries as the agent's first journal row, in a folder of their own, read from the start.
mkdir "$work/fluent-journal"
export_entries 10 "$entries" | "$remote" --output="$work/fluent-journal/system.journal" - >/dev/null 2>&1
fluent_bit_through "Fluent Bit journal" "$entries" MESSAGE \
  "    name systemd
    path $work/fluent-journal
    read_from_tail off" \
  "    label_field _SYSTEMD_UNIT
    label_field PRIORITY"
fluent_bit_through "Fluent Bit file" "$lines" log \
  "    name tail
    path $work/app.log
    read_from_head on" ""
