# Shell functions shared by benches/agent-overhead.sh and cross/hot-functions.sh, so that the
# agent profiled for the code layout runs what the overhead bench measures. Source it from the
# repository root.

# Prints the collectors' part of an agent config: every collector at 1 s (the Jetson sysfs one on
# the Orin Nano fixture tree, a replay of the TX2 tegrastats log at its own pace), five probes
# every 10 s and an application endpoint scraped every 15 s.
# $1: the agent's own HTTP port (probed), $2: a folder (probed), $3: the application's port.
bench_collectors() {
  cat <<END
[host]
interval = "1s"
processes = ["outpost"]
[jetson]
enabled = "on"
root = "$PWD/tests/data/sysfs/orin-nano-jp6"
interval = "1s"
[nvml]
enabled = "auto"
[tegrastats]
replay = "$PWD/tests/data/tegrastats/tx2-jetpack4-2660s.log.zst"
replay_speed = 1
[[probe]]
name = "self"
kind = "http"
url = "http://127.0.0.1:$1/api/health"
interval = "10s"
[[probe]]
name = "self-port"
kind = "tcp"
address = "127.0.0.1:$1"
interval = "10s"
[[probe]]
name = "resolver"
kind = "dns"
host = "localhost"
interval = "10s"
[[probe]]
name = "agent-process"
kind = "process"
process = "outpost"
interval = "10s"
[[probe]]
name = "scratch"
kind = "filesystem"
path = "$2"
interval = "10s"
[[scrape]]
name = "app"
url = "http://127.0.0.1:$3/metrics"
interval = "15s"
END
}

# Serves a static exposition of 100 series from folder $1 on port $2 with Python's http.server,
# in the background; $! is its process.
serve_app_metrics() {
  mkdir -p "$1"
  for i in $(seq 0 99); do echo "inference_fps{stream=\"$i\"} 29.$i"; done >"$1/metrics"
  python3 -m http.server --bind 127.0.0.1 --directory "$1" "$2" >/dev/null 2>&1 &
}
