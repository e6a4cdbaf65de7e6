#!/usr/bin/env bash
# Builds the static podvisor-agent that goes into the guest initramfs and
# prints its path. glibc with crt-static; libseccomp linked statically too, or
# the binary would need a shared library the guest does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
cargo build --quiet --release --locked --target x86_64-unknown-linux-gnu -p podvisor-agent >&2
bin=target/x86_64-unknown-linux-gnu/release/podvisor-agent
if readelf -d "$bin" | grep -q NEEDED; then
    echo "build-agent.sh: $bin is not static" >&2
    exit 1
fi
echo "$PWD/$bin"
