#!/usr/bin/env bash
# Which panels of Grafana's "Node Exporter Full" dashboard have data on an Outpost hub, against
# a Prometheus scraping node_exporter on the same machine at the same time.
#
# Usage: benches/node-exporter-full.sh DASHBOARD.json [SECONDS]   (default 180 s of data)
# DASHBOARD.json: the dashboard as grafana.com (id 1860) gives it; it is not shipped here. Needs
# prometheus and prometheus-node-exporter (Debian packages) and python3. The hub's copy of each
# query has the `job="$job"` matcher removed, as docs/grafana.md says to.
set -euo pipefail
cd "$(dirname "$0")/.."
dashboard=$(realpath "$1")
seconds=${2:-180}
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-nef.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ne_port=$(free_port); prom_port=$(free_port); hub_port=$(free_port)

prometheus-node-exporter --web.listen-address="127.0.0.1:$ne_port" 2>"$work/ne.log" &
pids+=($!)
printf 'global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ["127.0.0.1:%s"]\n' \
  "$ne_port" > "$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" 2>"$work/prom.log" &
pids+=($!)
./target/release/outpost demo --listen "127.0.0.1:$hub_port" --mqtt-listen "127.0.0.1:$(free_port)" \
  --agent-listen "127.0.0.1:$(free_port)" --data-dir "$work/demo" > "$work/demo.log" 2>&1 &
pids+=($!)
sed -E 's/, *job=\\"\$job\\"//g; s/job=\\"\$job\\", *//g; s/job=\\"\$job\\"//g' \
  "$dashboard" > "$work/hub.json"
echo "collecting for $seconds s..." >&2
sleep "$seconds"
password=$(sed -n 's/^ *login *admin \/ //p' "$work/demo.log")

python3 - "$dashboard" "$work/hub.json" "$prom_port" "$hub_port" "$ne_port" "$password" <<'PY'
import base64, json, sys, time, urllib.error, urllib.parse, urllib.request

original, edited, prom_port, hub_port, ne_port, password = sys.argv[1:]
auth = {'Authorization': 'Basic ' + base64.b64encode(f'admin:{password}'.encode()).decode()}

def queries(path):
    found = []
    def walk(panel):
        for child in panel.get('panels', []):
            found.extend((child.get('title', ''), t['expr']) for t in child.get('targets', []) if t.get('expr'))
            walk(child)
    walk(json.load(open(path)))
    return found

def ask(port, path, params, headers=None):
    request = urllib.request.Request(f'http://127.0.0.1:{port}{path}',
                                     urllib.parse.urlencode(params).encode(), headers or {})
    try:
        with urllib.request.urlopen(request) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        return json.load(error)

def fill(expr, node, job, nodename):
    for name, value in [('$__rate_interval', '1m'), ('${__rate_interval}', '1m'), ('$__interval', '15s'),
                        ('$__range', '3m'), ('$node', node), ('$job', job), ('$nodename', nodename)]:
        expr = expr.replace(name, value)
    return expr

nodename = lambda port, headers: ask(port, '/api/v1/query', {'query': 'node_uname_info'}, headers)['data']['result'][0]['metric']['nodename']
prom_node, hub_node = nodename(prom_port, None), nodename(hub_port, auth)
end = time.time(); start = end - 150
counts = {'both': 0, 'neither': 0}
errors, prometheus_only = [], []
for (title, expr), (_, hub_expr) in zip(queries(original), queries(edited)):
    p = ask(prom_port, '/api/v1/query_range', {'query': fill(expr, f'127.0.0.1:{ne_port}', 'node', prom_node), 'start': start, 'end': end, 'step': 15})
    h = ask(hub_port, '/api/v1/query_range', {'query': fill(hub_expr, 'demo-jetson', '', hub_node), 'start': start, 'end': end, 'step': 15}, auth)
    if h['status'] != 'success':
        errors.append((title, hub_expr, h.get('error')))
        continue
    with_data = (bool(p.get('data', {}).get('result')), bool(h['data']['result']))
    if with_data == (True, True):
        counts['both'] += 1
    elif with_data == (True, False):
        prometheus_only.append((title, expr))
    elif with_data == (False, False):
        counts['neither'] += 1
total = len(queries(original))
print(f'{total} panel queries: data in Prometheus {counts["both"] + len(prometheus_only)}, '
      f'of which on the hub {counts["both"]}; errors on the hub {len(errors)}')
for title, expr, error in errors:
    print(f'  error  {title}: {expr}: {error}')
for title, expr in prometheus_only:
    print(f'  only in Prometheus  {title}: {expr}')
sys.exit(1 if errors else 0)
PY
