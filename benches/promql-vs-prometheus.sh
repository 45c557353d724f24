#!/usr/bin/env bash
# Query speed and memory of the hub's PromQL against Prometheus' on the same samples: the
# expressions of Grafana's "Node Exporter Full" panels that the host data can answer, as range
# queries over 1 h (step 15 s, what Grafana asks for a 1 h panel) and over 24 h (step 2 m).
#
# Usage: benches/promql-vs-prometheus.sh [ROUNDS]   (default 5)
# Needs prometheus and promtool (Debian: apt-get install prometheus), python3 and zstd.
# The data: the project's recorded host hour, repeated 24 times to make a day (counters restart
# each hour), moved to end a day before now so that the hub keeps it raw.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-promql.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A day of samples: hour k shifted by k hours, the whole moved to end a day ago.
first=1795257761024
now_ms=$(($(date +%s) * 1000))
shift=$(( (now_ms - 86400000 - 24 * 3600000 - first) / 3600000 * 3600000 ))
zstd -dc tests/data/host/host-1h.prom.zst | grep -v '^#' > "$work/hour.prom"
for k in $(seq 0 23); do
  awk -v add=$((shift + k * 3600000)) '{ ts=$NF; $NF=""; sub(/ $/, ""); printf "%s %.0f\n", $0, ts + add }' "$work/hour.prom"
done > "$work/day.prom"
start_s=$(( (first + shift) / 1000 ))
end_s=$(( start_s + 24 * 3600 - 1 ))

./target/release/outpost db import --db "$work/hub.redb" "$work/day.prom" >/dev/null
awk '{ ts=$NF; $NF=""; sub(/ $/, ""); printf "%s %d.%03d\n", $0, int(ts/1000), ts%1000 } END { print "# EOF" }' \
  "$work/day.prom" > "$work/day.om"
promtool tsdb create-blocks-from openmetrics "$work/day.om" "$work/tsdb" >/dev/null

hub_port=$(free_port); prom_port=$(free_port)
printf '[hub]\ndevices_file = "%s/devices.toml"\n[mqtt]\nlisten = "127.0.0.1:%s"\n' "$work" "$(free_port)" > "$work/hub.toml"
./target/release/outpost hub -c "$work/hub.toml" --store "$work/hub.redb" --listen "127.0.0.1:$hub_port" 2>"$work/hub.log" &
pids+=($!); hub_pid=$!
printf 'global:\n  scrape_interval: 1h\n' > "$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --storage.tsdb.retention.time=100y --web.listen-address="127.0.0.1:$prom_port" 2>"$work/prom.log" &
pids+=($!); prom_pid=$!

python3 - "$hub_port" "$prom_port" "$start_s" "$end_s" "$rounds" "$hub_pid" "$prom_pid" <<'EOF'
import json, sys, time, urllib.parse, urllib.request

hub, prom, start, end, rounds, hub_pid, prom_pid = sys.argv[1:]
start, end, rounds = int(start), int(end), int(rounds)

# Node Exporter Full's panels that the host data answers ($__rate_interval = 1m, one instance).
EXPRESSIONS = [
    'count(count(node_cpu_seconds_total) by (cpu))',
    '(sum by(instance) (irate(node_cpu_seconds_total{mode!="idle"}[1m])) / on(instance) group_left sum by (instance)((irate(node_cpu_seconds_total[1m])))) * 100',
    'scalar(node_load1) * 100 / count(count(node_cpu_seconds_total) by (cpu))',
    '100 - ((node_memory_MemAvailable_bytes * 100) / node_memory_MemTotal_bytes)',
    '((node_memory_SwapTotal_bytes - node_memory_SwapFree_bytes) / (node_memory_SwapTotal_bytes)) * 100',
    'sum by(instance) (irate(node_cpu_seconds_total{mode="system"}[1m])) / on(instance) group_left sum by (instance)((irate(node_cpu_seconds_total[1m])))',
    'sum by(instance) (irate(node_cpu_seconds_total{mode="user"}[1m])) / on(instance) group_left sum by (instance)((irate(node_cpu_seconds_total[1m])))',
    'sum by(instance) (irate(node_cpu_seconds_total{mode="iowait"}[1m])) / on(instance) group_left sum by (instance)((irate(node_cpu_seconds_total[1m])))',
    'node_memory_MemTotal_bytes - node_memory_MemFree_bytes - (node_memory_Cached_bytes + node_memory_Buffers_bytes + node_memory_SReclaimable_bytes)',
    'node_memory_Cached_bytes + node_memory_Buffers_bytes + node_memory_SReclaimable_bytes',
    'irate(node_network_receive_bytes_total[1m])*8',
    'irate(node_network_transmit_bytes_total[1m])*8',
    'irate(node_disk_io_time_seconds_total[1m])',
    'irate(node_disk_read_bytes_total[1m])',
    'irate(node_disk_written_bytes_total[1m])',
    'irate(node_disk_reads_completed_total[1m])',
    'node_load1', 'node_load5', 'node_load15',
    'irate(node_context_switches_total[1m])',
    'irate(node_intr_total[1m])',
    'node_procs_running', 'node_procs_blocked',
    'node_filesystem_avail_bytes',
    'rate(node_network_receive_packets_total[1m])',
]

def ask(port, expr, s, e, step):
    data = urllib.parse.urlencode({'query': expr, 'start': s, 'end': e, 'step': step}).encode()
    t = time.perf_counter()
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/v1/query_range', data) as r:
        body = json.load(r)
    took = time.perf_counter() - t
    assert body['status'] == 'success', body
    return took, sum(len(x['values']) for x in body['data']['result'])

def wait(port):
    for _ in range(600):
        try:
            ask(port, '1', start, start, 15)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f'nothing answers on {port}')

def rss_kib(pid, field):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith(field):
            return int(line.split()[1])

wait(hub); wait(prom)
print('| range | step | Outpost hub s | Prometheus s | hub / Prometheus | points |')
print('| --- | --- | --- | --- | --- | --- |')
for label, s, step in [('1 h', end - 3600, '15'), ('24 h', start, '120')]:
    totals = {}
    for name, port in [('hub', hub), ('prom', prom)]:
        for expr in EXPRESSIONS:  # warm both once
            ask(port, expr, s, end, step)
        best = None
        for _ in range(rounds):
            total, points = 0.0, 0
            for expr in EXPRESSIONS:
                took, n = ask(port, expr, s, end, step)
                total += took
                points += n
            best = total if best is None else min(best, total)
        totals[name] = (best, points)
    (h, hp), (p, pp) = totals['hub'], totals['prom']
    assert hp == pp, f'the answers differ in size: {hp} / {pp} points'
    print(f'| {label} | {step} s | {h:.3f} | {p:.3f} | {h / p:.2f} | {hp} |')
print()
print(f'{len(EXPRESSIONS)} expressions, best of {rounds} rounds each; peak RSS while serving: '
      f'hub {rss_kib(hub_pid, "VmHWM") / 1024:.1f} MiB, '
      f'Prometheus {rss_kib(prom_pid, "VmHWM") / 1024:.1f} MiB '
      f'(now {rss_kib(hub_pid, "VmRSS") / 1024:.1f} / {rss_kib(prom_pid, "VmRSS") / 1024:.1f} MiB)')
EOF
