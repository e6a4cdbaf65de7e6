#!/usr/bin/env bash
# Installs what Podvisor needs and runs its main job in the foreground: the
# podvisor CRI daemon with the default configuration (or
# /etc/podvisor/config.toml when present), serving CRI v1 on
# /run/podvisor/podvisor.sock. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-guest.sh
# podvisor-vmm is the kvm backend; podvisor looks for it next to itself.
cargo build --release --locked -p podvisor -p podvisor-vmm
exec target/release/podvisor "$@"
