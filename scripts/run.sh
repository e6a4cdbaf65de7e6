#!/usr/bin/env bash
# Installs what Podvisor needs and runs its main job in the foreground.
# Until the CRI daemon lands this is podvisor-agent in host mode, serving the
# agent API on /run/podvisor/agent.sock. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-guest.sh
cargo build --release --locked -p podvisor-agent
exec target/release/podvisor-agent --listen unix:/run/podvisor/agent.sock --state-dir /run/podvisor/agent
