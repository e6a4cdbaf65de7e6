#!/usr/bin/env bash
# Unpacks Debian's kubectl (package kubernetes-client, 1.20) under
# /var/cache/podvisor/kubectl without installing it, for the streaming
# tests: a real client-go SPDY client. Safe to run again.
set -euo pipefail
dest=/var/cache/podvisor/kubectl
[ -x "$dest/usr/bin/kubectl" ] && exit 0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Package lists may be missing on a fresh machine: update once if needed.
(cd "$tmp" && { apt-get download -qq kubernetes-client 2>/dev/null ||
    { apt-get update -qq && apt-get download -qq kubernetes-client 2>/dev/null; }; })
mkdir -p "$dest"
dpkg -x "$tmp"/kubernetes-client_*.deb "$dest"
"$dest/usr/bin/kubectl" version --client >/dev/null
