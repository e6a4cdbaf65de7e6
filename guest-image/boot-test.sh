#!/usr/bin/env bash
# Boot-test the guest kernel under qemu -M microvm and time it.
#
#   boot-test.sh [--kernel PATH] [--initrd PATH] [--boots N] [--accel tcg|kvm]
#                [--append "EXTRA CMDLINE"] [--mem MiB] [--smp N] [--no-lpj]
#
# Default kernel: the cached build of build-kernel.sh (built if missing).
# Default initrd: test/init.c compiled static (a PID 1 that prints
# PODVISOR-INIT-OK, checks mounts/namespaces/cgroups/sockets, prints
# PODVISOR-SMOKE ..., then reboot(RB_POWER_OFF)), packed by build-initramfs.sh.
# Prints, per boot: ms from qemu start to the marker, guest uptime at /init,
# ms until qemu exited, and whether the guest powered itself off; then medians.
# Exit status: 0 when every boot reached the marker, passed the smoke checks
# and powered off.
#
# Needs: qemu-system-x86 (apt-packages-test.txt), gcc + libc6-dev (static link).
# The host's KVM here cannot run Linux guests, hence TCG by default; under TCG the
# kernel needs tsc_early_khz=<host TSC kHz> or it can hang calibrating the TSC, and
# lpj=<TSC kHz * 1000 / CONFIG_HZ> (added under TCG unless --no-lpj) saves the
# ~0.3 s the secondary CPUs otherwise spend in a failing delay-loop calibration.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KERNEL="" INITRD="" BOOTS=5 ACCEL=tcg EXTRA="" MEM=256 SMP=2 TIMEOUT=180 LPJ=1

die() { echo "boot-test: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) KERNEL="$2"; shift 2 ;;
        --initrd) INITRD="$2"; shift 2 ;;
        --boots) BOOTS="$2"; shift 2 ;;
        --accel) ACCEL="$2"; shift 2 ;;
        --append) EXTRA="$2"; shift 2 ;;
        --mem) MEM="$2"; shift 2 ;;
        --smp) SMP="$2"; shift 2 ;;
        --no-lpj) LPJ=0; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: apt-get install -y qemu-system-x86"

KDIR="$("$HERE/build-kernel.sh")"
[ -n "$KERNEL" ] || KERNEL="$KDIR/vmlinux"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ -z "$INITRD" ]; then
    command -v gcc >/dev/null || die "gcc not found: apt-get install -y build-essential"
    gcc -static -O2 -o "$WORK/init" "$HERE/test/init.c" || die "cannot build test/init.c (libc6-dev?)"
    strip "$WORK/init"
    IDIR="$("$HERE/build-initramfs.sh" --agent "$WORK/init" --gen-init-cpio "$KDIR/gen_init_cpio")"
    INITRD="$IDIR/initramfs.img"
fi

# Host TSC frequency in kHz: the kernel's refined calibration, else its first
# detection, else /proc/cpuinfo.
tsc_khz() {
    local mhz
    mhz="$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)"
    [ -n "$mhz" ] || mhz="$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n1)"
    [ -n "$mhz" ] || mhz="$(sed -n 's/^cpu MHz[[:space:]]*: \([0-9.]*\)/\1/p' /proc/cpuinfo | head -n1)"
    [ -n "$mhz" ] || return 1
    awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}
KHZ="$(tsc_khz)" || die "cannot find the host TSC frequency"

CMDLINE="console=ttyS0 reboot=k panic=-1 tsc_early_khz=$KHZ"
if [ "$ACCEL" = tcg ] && [ "$LPJ" = 1 ]; then
    HZ="$(sed -n 's/^CONFIG_HZ=//p' "$KDIR/config")"
    CMDLINE="$CMDLINE lpj=$(( KHZ * 1000 / ${HZ:-250} ))"
fi
CMDLINE="$CMDLINE $EXTRA"
QEMU=(qemu-system-x86_64
    -M microvm,x-option-roms=off,isa-serial=on,rtc=on
    -accel "$ACCEL" -m "$MEM" -smp "$SMP"
    -nodefaults -no-user-config -nographic -no-reboot
    -serial stdio
    -kernel "$KERNEL" -initrd "$INITRD"
    -append "$CMDLINE")
echo "kernel:  $KERNEL ($(stat -c %s "$KERNEL") bytes)"
echo "initrd:  $INITRD ($(stat -c %s "$INITRD") bytes)"
echo "qemu:    $(qemu-system-x86_64 --version | head -n1)"
echo "command: $(printf '%q ' "${QEMU[@]}")"

ms_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

marker_ms=() exit_ms=() ok_all=1
for i in $(seq 1 "$BOOTS"); do
    log="$WORK/boot-$i.log" m="-" up="-" smoke="" rc=0
    start="$EPOCHREALTIME"
    while IFS= read -r line; do
        line="${line%$'\r'}"
        printf '%s\n' "$line" >> "$log"
        case "$line" in
            *PODVISOR-INIT-OK*) m="$(ms_since "$start")" ;;
            *PODVISOR-SMOKE*) smoke="${line#*PODVISOR-SMOKE }"; up="${smoke#uptime=}"; up="${up%% *}" ;;
        esac
    done < <(timeout "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1; echo "QEMU-EXIT $?")
    total="$(ms_since "$start")"
    rc="$(sed -n 's/^QEMU-EXIT //p' "$log")"
    if [ "$rc" = 0 ] && ! grep -q 'Kernel panic\|POWEROFF-FAILED' "$log"; then off=yes; else off=no; fi
    printf 'boot %d: marker %s ms, guest uptime at init %s s, qemu exited after %s ms (rc %s), powered off: %s; %s\n' \
        "$i" "$m" "$up" "$total" "$rc" "$off" "${smoke:-NO SMOKE LINE}"
    if [ "$m" = - ] || [ "$off" = no ] || [[ "$smoke" != *"fails=0"* ]]; then
        ok_all=0
        echo "---- console of boot $i ----"; cat "$log"; echo "----"
    else
        marker_ms+=("$m"); exit_ms+=("$total")
    fi
done

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
if [ ${#marker_ms[@]} -gt 0 ]; then
    echo "median over ${#marker_ms[@]} good boots: qemu start -> PODVISOR-INIT-OK $(median "${marker_ms[@]}") ms," \
        "qemu start -> qemu exit (power-off) $(median "${exit_ms[@]}") ms"
fi
[ "$ok_all" = 1 ] || die "some boots failed (see console dumps above)"
echo "boot-test: all $BOOTS boots OK"
