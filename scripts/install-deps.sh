#!/usr/bin/env bash
# Installs everything Podvisor needs on a Debian 12 host, as root. Safe to run
# again: apt and cargo skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

# Debian packages: the build (libseccomp-dev for the agent's seccomp support,
# linked statically), the test fixtures (busybox-static for container
# rootfs), and the guest image build (guest-image/apt-packages.txt).
# protobuf-compiler: the k8s-cri crate compiles the CRI protos with protoc.
# qemu-system-x86 runs pods on the qemu backend; libcap-ng-dev is for building
# virtiofsd (Debian 12 does not package it). nftables: the daemon's per-pod
# firewall rules (metadata block, masquerade) go through the nft CLI.
packages=(build-essential pkg-config protobuf-compiler libseccomp-dev libcap-ng-dev busybox-static
          iproute2 procps qemu-system-x86 nftables)
# Lists kept next to what needs them: the guest build, test fixtures (a
# local registry, the nested-KVM harness).
for list in guest-image/apt-packages.txt tests/*apt-packages.txt; do
    [ -f "$list" ] || continue
    mapfile -t listed < <(grep -v '^\s*#' "$list" | sed '/^\s*$/d')
    packages+=("${listed[@]}")
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The critest stand-in images' busybox: Debian's dynamically linked build,
# whose shell looks commands up in PATH as upstream's does (busybox-static
# runs applets without exec). The package conflicts with busybox-static, so
# only its binary is unpacked, where tests/src/critest_images.rs reads it.
busybox_dir=/var/cache/podvisor/busybox
if [ ! -x "$busybox_dir/busybox" ]; then
    echo "==> unpacking Debian's busybox to $busybox_dir"
    tmp=$(mktemp -d)
    chmod 0755 "$tmp"
    (cd "$tmp" && apt-get download -qq busybox 2>/dev/null || { apt-get update -qq && apt-get download -qq busybox; })
    dpkg-deb -x "$tmp"/busybox_*.deb "$tmp/root"
    install -D -m 0755 "$tmp/root/bin/busybox" "$busybox_dir/busybox"
    rm -rf "$tmp"
fi

# Python packages the tests drive podvisor with: grpcio (gRPC C-core) is a
# CRI client podvisor did not write.
if ! python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check \
        -r tests/interop/requirements.txt; then
    echo "install-deps.sh: pip install -r tests/interop/requirements.txt failed" >&2
    exit 1
fi

# A real kubectl (unpacked, not installed) for the streaming tests; without
# it only that test fails, naming this script.
./scripts/fetch-kubectl.sh || echo "install-deps.sh: warning: scripts/fetch-kubectl.sh failed" >&2

# Rust tools.
if ! command -v cargo >/dev/null; then
    echo "install-deps.sh: cargo is not installed; install Rust (rustup) first" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-nextest"
    cargo install --locked cargo-nextest
fi
# virtiofsd shares each pod's files into its VM; crates.io has it.
if ! command -v virtiofsd >/dev/null && [ ! -x "$HOME/.cargo/bin/virtiofsd" ]; then
    echo "==> cargo install virtiofsd"
    cargo install --locked virtiofsd
fi
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-gnu ||
    rustup target add x86_64-unknown-linux-gnu
