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
# A skipped test passes in nextest's eyes and its output is hidden: every
# skip (tests use podvisor-test-skip) and every retry of the nested harness
# is appended to these files and listed after the run. (In CI a skip is a
# failure, so there the skip list is empty.)
logs=$(mktemp -d /tmp/podvisor-test-logs.XXXXXX)
export PODVISOR_SKIP_LOG="$logs/skipped" PODVISOR_RETRY_LOG="$logs/retries"
: > "$PODVISOR_SKIP_LOG"
: > "$PODVISOR_RETRY_LOG"
status=0
cargo nextest run --locked --workspace --profile ci || status=$?
summarise() {
    local title=$1 file=$2
    echo "==> $title: $(grep -c . "$file" || true)"
    sed 's/^/    /' "$file"
}
summarise "skipped tests" "$PODVISOR_SKIP_LOG"
summarise "nested L1 retries" "$PODVISOR_RETRY_LOG"
# The nested test fails by itself on its second retry; this holds the whole
# run to the same rule.
if [ "$(grep -c . "$PODVISOR_RETRY_LOG" || true)" -gt 1 ]; then
    echo "more than one nested L1 retry in this run: failing it"
    status=1
fi
rm -rf "$logs"
exit "$status"
