#!/usr/bin/env bash
# Prints podvisor-agent's binary size and idle RSS: the static release build
# (what goes into the guest), started in host mode as root, measured after it
# has settled. Aim: binary under 15 MiB, idle RSS under 8 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/build-agent.sh)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
RUST_LOG=warn "$bin" --listen "unix:$dir/agent.sock" --state-dir "$dir/state" &
pid=$!
for _ in $(seq 100); do [ -S "$dir/agent.sock" ] && break; sleep 0.05; done
[ -S "$dir/agent.sock" ] || { echo "agent did not start" >&2; exit 1; }
sleep 1
size=$(stat -c %s "$bin")
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
static=yes
readelf -d "$bin" | grep -q NEEDED && static=no
awk -v size="$size" -v rss="$rss_kib" -v static="$static" 'BEGIN {
    printf "agent binary: %d bytes (%.1f MiB), static: %s\n", size, size / 1048576, static
    printf "agent idle RSS: %d KiB (%.1f MiB)\n", rss, rss / 1024
}'
