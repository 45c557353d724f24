#!/usr/bin/env bash
# Builds the outpost release binary for Jetsons (aarch64) and x86-64 hosts against glibc 2.27,
# so that one binary runs on JetPack 4.6 (Ubuntu 18.04) to JetPack 7, and the .deb of each.
#
#   cross/build.sh [--install-tools] [aarch64] [x86_64]     (no architecture: both)
#
# Results in target/dist/: outpost-<version>-<arch> (the binary) and outpost_<version>-1_<arch>.deb.
# --install-tools first installs the pinned build tools: the Rust target, zig (PyPI's ziglang),
# cargo-zigbuild and cargo-deb. The dashboard's bundle is the one kept in web/dist.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.27
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.1
CARGO_DEB_VERSION=3.8.0

install_tools=false
arches=()
for arg in "$@"; do
  case "$arg" in
    --install-tools) install_tools=true ;;
    aarch64 | x86_64) arches+=("$arg") ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cross/build.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(aarch64 x86_64)

if $install_tools; then
  for arch in "${arches[@]}"; do rustup target add "$arch-unknown-linux-gnu"; done
  python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
  cargo install --locked --quiet "cargo-zigbuild@$CARGO_ZIGBUILD_VERSION" "cargo-deb@$CARGO_DEB_VERSION"
fi
for tool in cargo-zigbuild cargo-deb; do
  command -v "$tool" >/dev/null || { echo "cross/build.sh: $tool is missing; run with --install-tools" >&2; exit 1; }
done
python3 -m ziglang version >/dev/null 2>&1 || command -v zig >/dev/null \
  || { echo "cross/build.sh: zig is missing (pip install ziglang); run with --install-tools" >&2; exit 1; }

# A strip that reads the architecture's binaries: LLVM's reads any, binutils' its own.
strip_tool() {
  local tool
  for tool in llvm-strip "$1-linux-gnu-strip" $([ "$1" = "$(uname -m)" ] && echo strip); do
    command -v "$tool" >/dev/null && { echo "$tool"; return; }
  done
  echo "cross/build.sh: no strip for $1 binaries: install llvm or binutils-$1-linux-gnu" >&2
  exit 1
}
for arch in "${arches[@]}"; do strip_tool "$arch" >/dev/null; done

version=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "outpost"))')
# Reproducible: no build machine paths in the binary, the commit's time in the package. v0 symbol
# names as in .cargo/config.toml, whose flags a RUSTFLAGS variable replaces: cross/agent-hot.ld
# names the agent's functions that way.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export RUSTFLAGS="${RUSTFLAGS:-} -C symbol-mangling-version=v0 --remap-path-prefix=$PWD=/outpost --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"

# The packaged configs are the documented defaults with the store and keys under /var/lib.
packaged_config() {
  local source=$1 target=$2; shift 2
  cp "$source" "$target"
  for replacement in "$@"; do
    local from=${replacement%%=>*} to=${replacement#*=>}
    grep -qF "$from" "$target" || { echo "cross/build.sh: '$from' not in $source" >&2; exit 1; }
    sed -i "s|$from|$to|" "$target"
  done
}
mkdir -p target/deb target/dist
packaged_config config/agent.toml target/deb/agent.toml \
  'path = "outpost-agent.redb"=>path = "/var/lib/outpost/agent.redb"'
packaged_config config/hub.toml target/deb/hub.toml \
  'path = "outpost-hub.redb"=>path = "/var/lib/outpost-hub/hub.redb"' \
  'devices_file = "outpost-devices.toml"=>devices_file = "/var/lib/outpost-hub/devices.toml"'

# Every architecture in one cargo run: its last step, the fat-LTO code generation of the one
# codegen unit, runs on one core, so two architectures built together take both cores there.
# Linked with its symbols and stripped after: the profile behind cross/agent-hot.ld comes from
# that link (cross/hot-functions.sh), and a binary stripped by the linker measured 0.6 MiB more
# of its code resident outside the agent's section (cross/layout-check.sh).
targets=()
for arch in "${arches[@]}"; do targets+=(--target "$arch-unknown-linux-gnu.$GLIBC"); done
echo "==> ${arches[*]} (glibc $GLIBC)"
CARGO_PROFILE_RELEASE_STRIP=false cargo zigbuild --release --locked "${targets[@]}" -p outpost --bin outpost
for arch in "${arches[@]}"; do
  triple="$arch-unknown-linux-gnu"
  binary="target/$triple/release/outpost"
  "$(strip_tool "$arch")" --strip-all "$binary"
  cp "$binary" "target/dist/outpost-$version-$arch"
  cargo deb --no-build --no-strip --locked --target "$triple" -p outpost --output "target/dist/"
  ls -l "target/dist/outpost-$version-$arch" target/dist/outpost_"$version"-1_*.deb
done
