#!/usr/bin/env bash
# Checks what cross/build.sh made, the aarch64 binary under emulation (qemu-aarch64-static):
#  - no glibc symbol newer than 2.27 in either binary, and the aarch64 one within 17 MB;
#  - both with the agent's code laid out first, and the x86-64 agent running within that layout
#    (cross/layout-check.sh);
#  - `--version`, and every tegrastats line in tests/data/tegrastats/samples.tsv parsed exactly as
#    the x86-64 build parses it;
#  - the agent replays the whole TX2 log at full speed into a store, and `db query` on that store
#    returns every GR3D load of the log, in order;
#  - the .debs list their units and configs, install into a throwaway root, keep the store and an
#    edited config across an upgrade, keep the store on remove and delete it on purge.
# Needs qemu-user-static, libc6-arm64-cross, binutils-aarch64-linux-gnu, file and dpkg (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC_MAX=2.27
# 15 MB until Prometheus rule files (YAML, Go templates), e-mail through lettre (MIME) and the
# notification services came, 0.8 MB between them; 16 MB until the hub's route tree, boards,
# reports and status page, 0.2 MB; 16.5 MB until the agent's container, process, log-file and
# journal collectors and the hub's device labels in PromQL, 0.45 MB (16,627,304 bytes then).
# What the agent keeps resident is its hot code, laid out first (benches/README.md) and checked
# below, not the file; the hub's parts are never paged in on a device that does not run a hub.
# Building them out of the Jetson binary (a cargo feature) is the way to win the file size back.
# 16.98 MB before the journal file reader (84 KB with the collectors' blocking rounds), then
# 16.82 MB once the runtime's task machinery was made once for every supervised task (250 KB).
MAX_BYTES=17000000
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arm=target/dist/outpost-$version-aarch64
x86=target/dist/outpost-$version-x86_64
for file in "$arm" "$x86" "target/dist/outpost_${version}-1_arm64.deb" "target/dist/outpost_${version}-1_amd64.deb"; do
  [ -f "$file" ] || { echo "cross/check.sh: $file is missing: run cross/build.sh first" >&2; exit 1; }
  # A binary older than the code would check the code of before: the layout check, above all,
  # would pass on an x86-64 binary left from an earlier build of `cross/build.sh aarch64`.
  newer=$(find Cargo.toml Cargo.lock build.rs cross/agent-hot.ld src storage/src sync/src web/src \
    -newer "$file" -type f -print -quit 2>/dev/null)
  [ -z "$newer" ] || {
    echo "cross/check.sh: $file is older than $newer: run cross/build.sh again" >&2
    exit 1
  }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
# Debian's libc6-arm64-cross provides the aarch64 loader and glibc that the emulator needs.
export QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
emulated() { qemu-aarch64-static "$arm" "$@"; }

# glibc symbol versions.
newest_glibc() {
  "$1" -T "$2" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1
}
for pair in "aarch64-linux-gnu-objdump $arm" "objdump $x86"; do
  set -- $pair
  newest=$(newest_glibc "$1" "$2")
  [ -n "$newest" ] || fail "$2 has no GLIBC_ symbols: is it a glibc binary?"
  [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_MAX" | sort -V | tail -1)" = "$GLIBC_MAX" ] \
    || fail "$2 needs GLIBC_$newest, newer than $GLIBC_MAX"
  pass "$2 needs nothing newer than GLIBC_$newest"
done
file "$arm" | grep -q 'ARM aarch64' || fail "$arm is not an aarch64 ELF: $(file "$arm")"
size=$(stat -c %s "$arm")
[ "$size" -le "$MAX_BYTES" ] || fail "$arm is $size bytes, over $MAX_BYTES"
pass "$arm is $size bytes (limit $MAX_BYTES)"

# The agent's code laid out first (build.rs, cross/agent-hot.ld): without it the agent's resident
# code grows by megabytes, and nothing else would notice.
for binary in "$arm" "$x86"; do
  hex=$(readelf -SW "$binary" | sed 's/^ *\[ *[0-9]*\]//' | awk '$1 == ".text.agent" { print $5 }')
  [ -n "$hex" ] || fail "$binary has no .text.agent section: the linker did not take cross/agent-hot.ld"
  hot=$((16#$hex))
  [ "$hot" -ge 1000000 ] || fail "$binary's .text.agent holds only $hot bytes: cross/agent-hot.ld matched little"
  pass "$binary lays out $hot bytes of the agent's code first"
done
# ...and the agent still runs within it: a profile that no longer matches the code shows as code
# mapped outside the section (cross/README.md, "Code layout"). Native binaries only: under the
# emulator the pages mapped are qemu's.
layout=0
bash cross/layout-check.sh "$x86" 40 || layout=$?
case $layout in
  0) pass "the x86-64 agent runs within its code layout" ;;
  2) echo "warning: the code layout could not be measured on this machine" >&2 ;;
  *) fail "the x86-64 agent runs outside its code layout" ;;
esac

# The same answers as the x86-64 build.
[ "$(emulated --version)" = "$("$x86" --version)" ] || fail "--version differs: $(emulated --version)"
pass "--version under emulation: $(emulated --version)"
tail -n +2 tests/data/tegrastats/samples.tsv | cut -f4 >"$work/lines.txt"
lines=$(wc -l <"$work/lines.txt")
emulated tegrastats parse "$work/lines.txt" >"$work/arm.jsonl"
"$x86" tegrastats parse "$work/lines.txt" >"$work/x86.jsonl"
[ "$(wc -l <"$work/arm.jsonl")" -eq "$lines" ] || fail "aarch64 parsed $(wc -l <"$work/arm.jsonl") of $lines lines"
cmp -s "$work/arm.jsonl" "$work/x86.jsonl" || { diff "$work/arm.jsonl" "$work/x86.jsonl" | head; fail "the parsers disagree"; }
pass "all $lines sample lines parse the same on aarch64 and x86-64"

# The agent under emulation, replaying the whole log into a store.
log=tests/data/tegrastats/tx2-jetpack4-2660s.log.zst
# NVML stays on "auto": with no NVIDIA driver to load, the agent must run on regardless.
printf '[host]\nenabled = false\n[alerts]\nenabled = false\n' >"$work/agent.toml"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
started=$(date +%s)
emulated agent --config "$work/agent.toml" --store "$work/agent.redb" --listen "127.0.0.1:$port" \
  --tegrastats-replay "$log" --replay-speed 0 --exit-after-replay 2>"$work/agent.log" \
  || { tail -20 "$work/agent.log"; fail "the emulated agent failed"; }
pass "the emulated agent replayed $log in $(($(date +%s) - started)) s and stopped cleanly"
# At full speed the replay runs ahead of the wall clock (a millisecond a line): query past now.
an_hour_ahead=$(( $(date +%s) * 1000 + 3600000 ))
emulated db query --db "$work/agent.redb" 'jetson_engine_load_ratio{engine="GR3D"}' \
  --from 0 --to "$an_hour_ahead" --format json >"$work/stored.json"
"$x86" tegrastats parse "$log" >"$work/log.jsonl"
python3 - "$work/log.jsonl" "$work/stored.json" <<'EOF' || fail "the store does not hold the log's GR3D loads"
import json, sys
expected = []
for line in open(sys.argv[1]):
    gr3d = (json.loads(line).get("engines") or {}).get("GR3D") or {}
    if gr3d.get("load_percent") is not None:
        expected.append(gr3d["load_percent"] / 100)
series = json.load(open(sys.argv[2]))
assert len(series) == 1, f"{len(series)} GR3D series"
stored = [float(point[1]) for point in series[0]["points"]]
assert len(expected) > 2000, f"only {len(expected)} GR3D lines in the log"
assert len(stored) == len(expected), f"{len(stored)} stored, {len(expected)} in the log"
bad = [i for i, (a, b) in enumerate(zip(stored, expected)) if abs(a - b) > 1e-12]
assert not bad, f"{len(bad)} values differ, first at {bad[0]}: {stored[bad[0]]} != {expected[bad[0]]}"
print(f"ok: db query under emulation returns all {len(stored)} GR3D loads of the log, in order")
EOF

# The packages.
for arch in arm64 amd64; do
  deb=target/dist/outpost_${version}-1_$arch.deb
  contents=$(dpkg-deb --contents "$deb")
  for path in ./usr/bin/outpost ./lib/systemd/system/outpost-agent.service ./lib/systemd/system/outpost-hub.service \
    ./etc/outpost/agent.toml ./etc/outpost/hub.toml ./usr/lib/sysusers.d/outpost.conf; do
    grep -q " $path\$" <<<"$contents" || fail "$deb does not contain $path"
  done
  conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
  for conffile in /etc/outpost/agent.toml /etc/outpost/hub.toml; do
    grep -qx "$conffile" <<<"$conffiles" || fail "$conffile is not a conffile of $deb"
  done
  [ "$(dpkg-deb --field "$deb" Architecture)" = "$arch" ] || fail "$deb is not for $arch"
  pass "$deb holds the binary, both units, the configs (as conffiles) and the hub's user"
done

# Install, upgrade, remove and purge in a throwaway root (which has no libc6 package: hence
# --force-depends; the maintainer scripts run outside it with DPKG_ROOT set).
root=$work/root
mkdir -p "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/info" "$root/etc"
touch "$root/var/lib/dpkg/status"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
in_root() { dpkg --root="$root" --force-script-chrootless --force-not-root --force-depends "$@" >"$work/dpkg.log" 2>&1 \
  || { cat "$work/dpkg.log"; fail "dpkg $*"; }; }
deb=target/dist/outpost_${version}-1_amd64.deb
in_root --install "$deb"
"$root/usr/bin/outpost" --version >/dev/null || fail "the installed binary does not run"
grep -q 'path = "/var/lib/outpost/agent.redb"' "$root/etc/outpost/agent.toml" || fail "the packaged agent.toml keeps its store elsewhere"
grep -q 'path = "/var/lib/outpost-hub/hub.redb"' "$root/etc/outpost/hub.toml" || fail "the packaged hub.toml keeps its store elsewhere"
"$root/usr/bin/outpost" agent --config "$root/etc/outpost/agent.toml" --check-config >/dev/null \
  || fail "the packaged agent.toml does not load"
"$root/usr/bin/outpost" hub --config "$root/etc/outpost/hub.toml" --check-config >/dev/null \
  || fail "the packaged hub.toml does not load"
if command -v systemd-sysusers >/dev/null; then
  grep -q '^outpost:' "$root/etc/passwd" || fail "postinst did not create the hub's user"
  [ "$(stat -c %g "$root/etc/outpost/hub.toml")" = "$(awk -F: '$1 == "outpost" { print $3 }' "$root/etc/group")" ] \
    || fail "hub.toml is not in the hub's group"
  [ "$(stat -c %a "$root/etc/outpost/hub.toml")" = 640 ] || fail "hub.toml is not 0640"
else
  echo "skipped: the hub's user (no systemd-sysusers here)"
fi
if command -v systemd-analyze >/dev/null; then
  for unit in outpost-agent outpost-hub; do
    # Unknown keys, bad values and the like; the only complaint allowed is that this machine
    # has no /usr/bin/outpost.
    complaints=$(systemd-analyze verify "cross/systemd/$unit.service" 2>&1 \
      | grep -v 'Command /usr/bin/outpost is not executable' || true)
    [ -z "$complaints" ] || fail "systemd-analyze verify $unit.service: $complaints"
  done
  pass "systemd-analyze verify accepts both units"
else
  echo "skipped: systemd-analyze verify (no systemd here)"
fi
pass "$deb installs into a throwaway root, with configs that load"

mkdir -p "$root/var/lib/outpost"
"$root/usr/bin/outpost" tegrastats import "$log" --db "$root/var/lib/outpost/agent.redb" >/dev/null 2>&1
before=$(sha256sum <"$root/var/lib/outpost/agent.redb")
sed -i 's/^self_interval = "10s"/self_interval = "30s"/' "$root/etc/outpost/agent.toml"
cargo deb --no-build --locked --target x86_64-unknown-linux-gnu -p outpost --deb-revision 2 \
  --output "$work/" >/dev/null
in_root --install "$work/outpost_${version}-2_amd64.deb"
grep -q "^Version: ${version}-2$" <(dpkg --root="$root" --status outpost) || fail "the upgrade did not happen"
[ "$(sha256sum <"$root/var/lib/outpost/agent.redb")" = "$before" ] || fail "the upgrade changed the store"
grep -q '^self_interval = "30s"' "$root/etc/outpost/agent.toml" || fail "the upgrade replaced an edited conffile"
pass "an upgrade keeps the store and the edited agent.toml"
in_root --remove outpost
[ -f "$root/var/lib/outpost/agent.redb" ] || fail "remove deleted the store"
[ -f "$root/etc/outpost/agent.toml" ] || fail "remove deleted the conffile"
[ ! -e "$root/usr/bin/outpost" ] || fail "remove left the binary"
in_root --purge outpost
[ ! -e "$root/var/lib/outpost" ] || fail "purge left the store"
[ ! -e "$root/etc/outpost/agent.toml" ] || fail "purge left the conffile"
pass "remove keeps the store and config; purge deletes them"
echo "cross/check.sh: all checks passed"
