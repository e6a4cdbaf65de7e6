#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET (default 180) and prints,
# per target, the executions, the corpus size and the crashes found.
#
#   ./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Targets live in fuzz/vmm (podvisor-vmm's device model) and fuzz/daemon
# (the daemon's streaming, image-reference and layer parsers); see README
# "Fuzzing". Installs cargo-fuzz when missing. cargo-fuzz passes nightly -Z
# flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
#
# The growing corpus and any crash inputs go to fuzz/work/ (not committed):
# fuzz/work/corpus/<target>/ and fuzz/work/artifacts/<target>/. A crash is
# fixed in the code and its input copied to fuzz/regressions/<target>/,
# which the normal test command replays (tests/fuzz_regressions.rs).
set -euo pipefail

secs=${1:-180}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
work=$root/fuzz/work
# 16 codegen units: much quicker builds on a small machine, a little slower runs.
build_flags=(--codegen-units 16)

declare -a rows
status=0
for crate in vmm daemon; do
    dir=fuzz/$crate
    mapfile -t all < <(cargo fuzz list --fuzz-dir "$dir")
    selected=()
    for t in "${all[@]}"; do
        if [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx "$t"; then
            selected+=("$t")
        fi
    done
    [ ${#selected[@]} -eq 0 ] && continue
    echo "== building $dir"
    cargo fuzz build --fuzz-dir "$dir" --target-dir "$target_dir/$crate" "${build_flags[@]}"
    for t in "${selected[@]}"; do
        corpus=$work/corpus/$t
        artifacts=$work/artifacts/$t
        log=$work/logs/$t.log
        mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
        before=$(find "$artifacts" -type f | sort)
        echo "== fuzzing $t for ${secs}s (log: $log)"
        # libFuzzer exits non-zero on a crash; the table below reports it.
        cargo fuzz run --fuzz-dir "$dir" --target-dir "$target_dir/$crate" "${build_flags[@]}" \
            "$t" "$corpus" "fuzz/seeds/$t" -- \
            -max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=4096 \
            -artifact_prefix="$artifacts/" >"$log" 2>&1 || true
        execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n1)
        size=$(find "$corpus" -type f | wc -l)
        new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | grep -c . || true)
        rows+=("$(printf '%-26s %12s %8s %8s' "$t" "${execs:-?}" "$size" "$new")")
        if [ "$new" -gt 0 ]; then
            status=1
            comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | sed 's/^/   crash input: /'
            grep -m1 -A3 -E "panicked|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" | sed 's/^/   /' || true
        fi
    done
done

echo
printf '%-26s %12s %8s %8s\n' target executions corpus crashes
printf '%s\n' "${rows[@]}"
exit $status
