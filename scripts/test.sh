#!/usr/bin/env bash
# Installs what Podvisor needs and runs the whole test suite: formatting,
# lints, and every test of the workspace. Run as root: the tests mount,
# create namespaces and cgroups, and use /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "==> guest image"
scripts/build-guest.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "==> cargo nextest"
cargo nextest run --locked --workspace --profile ci
