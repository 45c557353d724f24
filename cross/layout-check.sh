#!/usr/bin/env bash
# Checks that cross/agent-hot.ld still holds what a running agent executes: runs BINARY (an
# x86-64 release `outpost` of this checkout) as benches/agent-overhead.sh runs its agent, for
# SECONDS (default 40), then reads which pages of the binary's code the agent has mapped
# (/proc/PID/pagemap; the present bit needs no privilege). Pages in `.text.agent` are the laid-out
# hot code; pages of the rest of the code are mapped because something in their 64 KiB window
# ran. A profile that no longer matches the code (functions renamed, new code on the agent's
# steady path) shows as more of those, and the check fails past MAX_COLD_KIB (default 1536),
# naming the functions that ran outside the layout when the binary has its symbols.
#
#   cross/layout-check.sh BINARY [SECONDS]
#
# Exits 1 when the layout no longer matches, 2 when this machine cannot tell which pages are
# mapped (a kernel that hides /proc/PID/pagemap's present bits).
#
# After a failure, regenerate the script with cross/hot-functions.sh (cross/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/agent-collectors.sh
binary=$(realpath "${1:?usage: cross/layout-check.sh BINARY [SECONDS]}")
seconds=${2:-40}
max_cold_kib=${MAX_COLD_KIB:-1536}
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-layout.XXXXXX")
port=$((20000 + RANDOM % 20000))
app_port=$((port + 1))
cleanup() {
  kill ${agent:-} ${app:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# How much of the file is mapped around each fault depends on the page cache's state of the file
# as much as on the code (a binary written by `strip` measured 1.3 MiB more than a `cp` of it):
# run a fresh copy whose cached pages are dropped, so that every run starts from the same state.
cat "$binary" >"$work/outpost"
chmod +x "$work/outpost"
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$work/outpost"
{
  printf '[agent]\nself_interval = "10s"\n[store]\npath = "%s"\n' "$work/agent.redb"
  bench_collectors "$port" "$work" "$app_port"
} >"$work/agent.toml"
serve_app_metrics "$work/app" "$app_port"
app=$!
"$work/outpost" --log warn agent --config "$work/agent.toml" --listen "127.0.0.1:$port" \
  2>"$work/agent.log" &
agent=$!
deadline=$((SECONDS + seconds))
while [ $SECONDS -lt $deadline ]; do
  sleep 5
  kill -0 "$agent" 2>/dev/null || { cat "$work/agent.log" >&2; echo "the agent stopped" >&2; exit 1; }
  # What a Prometheus server and a local application do to an agent.
  python3 - "$port" "$RANDOM" <<'PY' || true
import sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
urllib.request.urlopen(f"{base}/metrics", timeout=5).read()
push = f'app_queue_length{{queue="in"}} {sys.argv[2]}\n'.encode()
urllib.request.urlopen(f"{base}/api/v1/import/prometheus", data=push, timeout=5).read()
PY
done

python3 - "$work/outpost" "$agent" "$max_cold_kib" <<'PY'
import bisect, os, struct, subprocess, sys

binary, pid, max_cold_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
page = os.sysconf("SC_PAGE_SIZE")

# The file range of each code section: .text.agent is the hot layout, the others the rest.
hot, code = None, []
for line in subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True,
                           check=True).stdout.splitlines():
    fields = line.replace("[ ", "[").split()
    if len(fields) > 7 and fields[0].startswith("[") and "X" in fields[7]:
        name, offset, size = fields[1], int(fields[4], 16), int(fields[5], 16)
        if name == ".text.agent":
            hot = (offset, offset + size)
        else:
            code.append((offset, offset + size))
if hot is None:
    sys.exit(f"{binary} has no .text.agent section: it was built without cross/agent-hot.ld")

# Each mapped page of the binary's executable mapping, by its offset in the file.
resident = []
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
    for line in maps:
        fields = line.split()
        if len(fields) < 6 or fields[5] != binary or "x" not in fields[1]:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        offset = int(fields[2], 16)
        pagemap.seek(start // page * 8)
        entries = pagemap.read((end - start) // page * 8)
        for i in range(len(entries) // 8):
            (entry,) = struct.unpack_from("<Q", entries, i * 8)
            if entry >> 63:
                resident.append(offset + i * page)

hot_pages = sum(1 for p in resident if hot[0] <= p < hot[1])
if hot_pages == 0:
    # The agent runs code there every second: none mapped means this kernel does not say.
    print(f"cannot measure: /proc/{pid}/pagemap shows none of the agent's code mapped")
    sys.exit(2)
cold = [p for p in resident if any(a <= p < b for a, b in code)]
kib = lambda pages: pages * page // 1024
print(f".text.agent: {kib(hot_pages)} of {(hot[1] - hot[0]) // 1024} KiB resident; "
      f"the rest of the code: {kib(len(cold))} KiB resident "
      f"in {len({p // 65536 for p in cold})} windows of 64 KiB (limit {max_cold_kib} KiB)")

# The functions in the cold pages, busiest window first, when the binary has symbols.
symbols = subprocess.run(["nm", "--defined-only", "--demangle", binary], capture_output=True,
                         text=True).stdout.splitlines()
addresses = []
for line in symbols:
    fields = line.split(" ", 2)
    if len(fields) == 3 and fields[1] in "tTW":
        addresses.append((int(fields[0], 16), fields[2]))
addresses.sort()

if kib(len(cold)) > max_cold_kib:
    if addresses:
        # File offset and address differ by a constant within the code segment.
        vaddr_of = {}
        for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == "LOAD" and "E" in fields[6:]:
                vaddr_of = (int(fields[1], 16), int(fields[2], 16))
        keys = [a for a, _ in addresses]
        names = set()
        for p in cold:
            address = p - vaddr_of[0] + vaddr_of[1]
            i = bisect.bisect_right(keys, address) - 1
            if i >= 0:
                names.add(addresses[i][1])
        print("functions in those pages (some ran, the others share their windows):")
        for name in sorted(names)[:40]:
            print("  ", name)
    sys.exit(f"the agent ran {kib(len(cold))} KiB of code outside .text.agent: "
             "cross/agent-hot.ld no longer matches the code; regenerate it with "
             "cross/hot-functions.sh")
PY
