#!/usr/bin/env bash
# Builds the pod VM guest image and installs it where the daemon looks
# (/var/lib/podvisor/guest): the static podvisor-agent, then the kernel and
# the initramfs around it (both cached by the hash of their inputs, so a
# second run takes seconds). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
agent=$(scripts/build-agent.sh)
guest-image/build.sh --agent "$agent" "$@"
