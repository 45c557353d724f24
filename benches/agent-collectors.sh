# Shell functions shared by benches/agent-overhead.sh, benches/agent-workload.sh and
# cross/hot-functions.sh, so that the agent profiled for the code layout runs what the benches
# measure. Source it from the repository root.

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

# A container as Docker's cgroupfs driver makes one: a cgroup (v1: `<controller>/docker/<id>`; v2:
# `outpost-bench.slice/docker-<id>.scope`) with a process in it, holding a few MiB and waking
# every second. $1: the container's id (64 hex digits). Needs root and a writable hierarchy;
# appends the process to the caller's `pids` array and each cgroup it made to `dirs`, which the
# caller removes (children first) when done.
make_container() {
  local id=$1 leaf cgroup=/sys/fs/cgroup
  python3 -c 'import time
held = bytearray(4 << 20)
while True:
    time.sleep(1)' &
  local pid=$!
  pids+=("$pid")
  if [ -e "$cgroup/cgroup.controllers" ]; then
    local slice=$cgroup/outpost-bench.slice
    echo "+memory +pids +io" >"$cgroup/cgroup.subtree_control" 2>/dev/null || true
    [ -d "$slice" ] || { mkdir "$slice"; dirs+=("$slice"); }
    echo "+memory +pids +io" >"$slice/cgroup.subtree_control" 2>/dev/null || true
    leaf=$slice/docker-$id.scope
    mkdir "$leaf"; dirs+=("$leaf")
    echo "$pid" >"$leaf/cgroup.procs"
  else
    for controller in memory cpuacct cpu pids blkio; do
      [ -d "$cgroup/$controller" ] || continue
      [ -d "$cgroup/$controller/docker" ] || { mkdir "$cgroup/$controller/docker"; dirs+=("$cgroup/$controller/docker"); }
      leaf=$cgroup/$controller/docker/$id
      [ -d "$leaf" ] || { mkdir "$leaf"; dirs+=("$leaf"); }
      echo "$pid" >"$leaf/cgroup.procs"
    done
  fi
}

# An application's log: $2 lines a second appended to file $1, paced by the clock, one in ten an
# error naming its module. Runs until killed; start it in the background (it replaces the
# subshell, so that `$!` is the writer).
write_app_log() {
  exec python3 - "$1" "$2" <<'PY'
import sys, time
path, rate = sys.argv[1], int(sys.argv[2])
modules = ["camera", "infer", "uplink", "storage"]
n = 0
start = time.monotonic()
with open(path, "a", buffering=1 << 16) as out:
    while True:
        for _ in range(max(1, rate // 10)):
            level = "error" if n % 10 == 0 else "info"
            out.write(f"ts={time.time():.3f} level={level} module={modules[n % 4]} frame={n} msg=\"processed a frame\"\n")
            n += 1
        out.flush()
        # Paced by the clock, not by sleeps that drift.
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
PY
}

# The systemd-journal-remote that writes journal files from export-format input, or nothing.
journal_remote() {
  local candidate
  for candidate in /lib/systemd/systemd-journal-remote /usr/lib/systemd/systemd-journal-remote; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
}

# A live journal file $1: $2 entries a second of eight services, with the fields journald gives
# them, one in ten an error, written by Debian's systemd-journal-remote as they come. Runs until
# killed; start it in the background (`$!` is then the generator).
write_journal() {
  local remote
  remote=$(journal_remote)
  [ -n "$remote" ] || { echo "writing a journal needs systemd-journal-remote" >&2; return 1; }
  # The generator is the process to kill: systemd-journal-remote ignores SIGTERM while its
  # input is open, and ends at its end.
  exec python3 - "$2" > >(exec "$remote" --output="$1" -) <<'PY'
import sys, time
rate = int(sys.argv[1])
modules = ["camera", "infer", "uplink", "storage"]
n = 0
start = time.monotonic()
out = sys.stdout
while True:
    chunk = []
    for _ in range(max(1, rate // 10)):
        error = n % 10 == 0
        unit = f"app{n % 8}.service"
        chunk.append(
            f"__REALTIME_TIMESTAMP={int(time.time() * 1e6)}\n__MONOTONIC_TIMESTAMP={int(time.monotonic() * 1e6)}\n"
            f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_MACHINE_ID=fedcba9876543210fedcba9876543210\n"
            f"_HOSTNAME=jetson-07\n_TRANSPORT=stdout\n_PID={1200 + n % 8}\n_UID=0\n_GID=0\n_COMM=app\n"
            f"_EXE=/usr/bin/app\n_CMDLINE=/usr/bin/app --serve\n_SYSTEMD_CGROUP=/system.slice/{unit}\n"
            f"_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER=app\nPRIORITY={3 if error else 6}\n"
            f"MESSAGE=level={'error' if error else 'info'} module={modules[n % 4]} frame={n} processed a frame\n\n")
        n += 1
    out.write("".join(chunk))
    out.flush()
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
PY
}

# The log file $1 and the two patterns of benches/agent-workload.sh, as `[logs]` entries.
workload_log_sources() {
  cat <<END
[[logs.file]]
name = "app"
path = "$1"
[[logs.pattern]]
name = "errors"
regex = 'level=error module=(?P<module>\w+)'
[[logs.pattern]]
name = "frames"
regex = 'frame=\d+'
END
}

# The `[logs]` section of benches/agent-workload.sh: the log file $1 under the two patterns, and
# the journal files matching $2, read by the agent's own reader, when $2 is given.
workload_logs() {
  echo "[logs]"
  if [ -n "${2:-}" ]; then
    printf 'journal = true\njournal_reader = "files"\njournal_files = ["%s"]\n' "$2"
  else
    echo "journal = false"
  fi
  workload_log_sources "$1"
}
