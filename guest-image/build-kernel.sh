#!/usr/bin/env bash
# Podvisor guest kernel build, cached by the hash of its inputs.
#
#   build-kernel.sh                 build (or reuse) the kernel, print its cache dir
#   build-kernel.sh --print-hash    print the input hash and exit
#   build-kernel.sh --config-only   resolve + check the .config only (no compile),
#                                   print it to stdout; for editing the fragment
#
# Inputs (all of them, and only them, make the hash):
#   * the version of Debian's linux-source-6.1 package (the tarball under /usr/src)
#   * kernel-fragment.config (next to this script)
#   * this script
#
# Outputs: $PODVISOR_CACHE_DIR/kernel/<hash>/{vmlinux,bzImage,config,gen_init_cpio}
# Build dir: $PODVISOR_CACHE_DIR/kernel-build/<hash>/ (removed on success unless
# PODVISOR_KEEP_BUILD=1; kept on failure for inspection).
#
# Environment: PODVISOR_CACHE_DIR (default /var/cache/podvisor), JOBS (default
# nproc), PODVISOR_KEEP_BUILD=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/kernel-fragment.config"
SRC_PKG="linux-source-6.1"
SRC_TARBALL="/usr/src/linux-source-6.1.tar.xz"
CACHE_DIR="${PODVISOR_CACHE_DIR:-/var/cache/podvisor}"
JOBS="${JOBS:-$(nproc)}"
ARCH=x86_64
export ARCH

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

# --- dependencies ---------------------------------------------------------------
# command -> Debian package that provides it
check_deps() {
    local missing=() pkg cmd
    local -A need=(
        [dpkg-query]=dpkg [tar]=tar [xz]=xz-utils [zstd]=zstd [make]=make
        [gcc]=gcc [ld]=binutils [readelf]=binutils [bc]=bc [bison]=bison
        [flex]=flex [perl]=perl [sha256sum]=coreutils [flock]=util-linux
    )
    for cmd in "${!need[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]} (for '$cmd')")
    done
    # headers: objtool needs libelf, scripts/ link against libcrypto
    [ -e /usr/include/libelf.h ] || [ -e /usr/include/libelf/libelf.h ] \
        || missing+=("libelf-dev (for libelf.h)")
    [ -e /usr/include/openssl/ssl.h ] || missing+=("libssl-dev (for openssl/ssl.h)")
    [ -e /usr/include/stdio.h ] || missing+=("libc6-dev (for C headers)")
    if ! dpkg-query -W -f='${Status}' "$SRC_PKG" 2>/dev/null | grep -q "install ok installed" \
        || [ ! -f "$SRC_TARBALL" ]; then
        missing+=("$SRC_PKG (for $SRC_TARBALL)")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "build-kernel: error: missing build dependencies; install with:" >&2
        printf '  apt-get install -y' >&2
        for pkg in "${missing[@]}"; do printf ' %s' "${pkg%% *}" >&2; done
        echo >&2
        for pkg in "${missing[@]}"; do echo "  - $pkg" >&2; done
        echo "  (the full list is in $HERE/apt-packages.txt)" >&2
        exit 1
    fi
}

# --- input hash -------------------------------------------------------------------
input_hash() {
    local ver
    ver="$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null)" \
        || die "package $SRC_PKG is not installed (apt-get install -y $SRC_PKG)"
    {
        echo "podvisor-guest-kernel v1"
        echo "$SRC_PKG=$ver"
        echo "fragment $(sha256sum < "$FRAGMENT" | cut -d' ' -f1)"
        echo "script $(sha256sum < "$SELF" | cut -d' ' -f1)"
    } | sha256sum | cut -c1-16
}

# --- config check -------------------------------------------------------------------
# Every `CONFIG_X=V` line of the fragment must be exactly `CONFIG_X=V` in the final
# .config; every `# CONFIG_X is not set` line must not be enabled. Reports all
# mismatches at once.
check_config() {
    local final="$1"
    awk '
        FNR == NR {
            if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) {
                name = substr($0, 1, RLENGTH - 1); want[name] = substr($0, RLENGTH + 1); order[++n] = name
            } else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) {
                name = $2; want[name] = "n"; order[++n] = name
            }
            next
        }
        match($0, /^CONFIG_[A-Za-z0-9_]+=/) { have[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1) }
        END {
            bad = 0
            for (i = 1; i <= n; i++) {
                name = order[i]; w = want[name]
                h = (name in have) ? have[name] : "n"
                if (h == "" ) h = "n"
                if (w == "n") {
                    if (h != "n") { printf "  %s: wanted off, got %s\n", name, h; bad++ }
                } else if (h != w) {
                    printf "  %s: wanted %s, got %s\n", name, w, (name in have) ? h : "not set"; bad++
                }
            }
            printf "%d options checked, %d wrong\n", n, bad
            exit bad ? 1 : 0
        }' "$FRAGMENT" "$final"
}

# --- steps ------------------------------------------------------------------------
extract_source() {
    local dst="$1"
    mkdir -p "$dst"
    log "extracting $SRC_TARBALL"
    tar -xf "$SRC_TARBALL" -C "$dst" --strip-components=1
}

configure() {
    local src="$1"
    log "configuring: allnoconfig + kernel-fragment.config + olddefconfig"
    make -s -C "$src" allnoconfig >/dev/null || return 1
    (cd "$src" && ./scripts/kconfig/merge_config.sh -m -O . .config "$FRAGMENT") \
        > "$src/merge_config.log" 2>&1 || { cat "$src/merge_config.log" >&2; return 1; }
    make -s -C "$src" olddefconfig >>"$src/merge_config.log" 2>&1 \
        || { cat "$src/merge_config.log" >&2; return 1; }
    if ! check_config "$src/.config" >"$src/config-check.log" 2>&1; then
        echo "build-kernel: error: these options of kernel-fragment.config are not as wanted in" \
            "the final .config (a dependency is missing, or an option was renamed):" >&2
        cat "$src/config-check.log" >&2
        return 1
    fi
    log "config check: $(tail -n 1 "$src/config-check.log")"
}

check_pvh_note() {
    local vmlinux="$1" notes
    notes="$(readelf -n "$vmlinux")" || die "readelf -n $vmlinux failed"
    # XEN_ELFNOTE_PHYS32_ENTRY = 18 = 0x12, owner "Xen"
    if ! grep -Eq '^[[:space:]]*Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)' <<<"$notes"; then
        echo "$notes" >&2
        die "$vmlinux has no Xen ELF note 0x12 (XEN_ELFNOTE_PHYS32_ENTRY): PVH boot would fail"
    fi
}

build() {
    local hash="$1"
    local out="$CACHE_DIR/kernel/$hash" bdir="$CACHE_DIR/kernel-build/$hash"
    local src="$bdir/linux" t0 t1 tmp
    rm -rf "$bdir"
    extract_source "$src"
    configure "$src" || die "config check failed (build dir kept: $bdir)"
    t0=$(date +%s)
    log "compiling with make -j$JOBS (takes 10-30 minutes on 2 cores; log: $bdir/make.log)"
    # Fixed build identity so the same inputs give the same `uname -v`.
    if ! make -C "$src" -j"$JOBS" \
            KBUILD_BUILD_USER=podvisor KBUILD_BUILD_HOST=podvisor \
            KBUILD_BUILD_VERSION=1 \
            KBUILD_BUILD_TIMESTAMP="$SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG")" \
            bzImage >"$bdir/make.log" 2>&1; then
        tail -n 40 "$bdir/make.log" >&2
        die "kernel build failed (full log: $bdir/make.log)"
    fi
    # usr/gen_init_cpio is built with the initramfs part of vmlinux; make sure.
    [ -x "$src/usr/gen_init_cpio" ] || make -C "$src" usr/ >>"$bdir/make.log" 2>&1 \
        || die "could not build usr/gen_init_cpio (log: $bdir/make.log)"
    t1=$(date +%s)
    log "compiled in $((t1 - t0)) s"
    check_pvh_note "$src/vmlinux"
    # Publish atomically: fill a temp dir next to the final one, then rename.
    mkdir -p "$CACHE_DIR/kernel"
    tmp="$(mktemp -d "$CACHE_DIR/kernel/.tmp-$hash.XXXXXX")"
    cp "$src/vmlinux" "$tmp/vmlinux"
    cp "$src/arch/x86/boot/bzImage" "$tmp/bzImage"
    cp "$src/.config" "$tmp/config"
    cp "$src/usr/gen_init_cpio" "$tmp/gen_init_cpio"
    make -s -C "$src" kernelrelease > "$tmp/kernelrelease"
    {
        echo "hash=$hash"
        echo "source=$SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG")"
        echo "kernelrelease=$(cat "$tmp/kernelrelease")"
        echo "compile_seconds=$((t1 - t0))"
        echo "jobs=$JOBS"
    } > "$tmp/build-info"
    chmod 0644 "$tmp"/vmlinux "$tmp"/bzImage "$tmp"/config "$tmp"/kernelrelease "$tmp"/build-info
    chmod 0755 "$tmp" "$tmp/gen_init_cpio"
    rm -rf "$out"
    mv -T "$tmp" "$out"
    if [ "${PODVISOR_KEEP_BUILD:-0}" = 1 ]; then
        log "keeping build dir $bdir (PODVISOR_KEEP_BUILD=1)"
    else
        rm -rf "$bdir"
        rmdir "$CACHE_DIR/kernel-build" 2>/dev/null || true
    fi
}

complete() {
    local d="$1" f
    for f in vmlinux bzImage config gen_init_cpio kernelrelease build-info; do
        [ -s "$d/$f" ] || return 1
    done
}

main() {
    local mode=build
    case "${1:-}" in
        "") ;;
        --print-hash) mode="hash" ;;
        --config-only) mode=config ;;
        -h|--help) sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    [ -f "$FRAGMENT" ] || die "missing $FRAGMENT"

    if [ "$mode" = hash ]; then
        input_hash
        return
    fi
    check_deps
    local hash out
    hash="$(input_hash)"
    out="$CACHE_DIR/kernel/$hash"

    if [ "$mode" = config ]; then
        CONFIG_TMP="$(mktemp -d)"
        trap 'rm -rf "$CONFIG_TMP"' EXIT
        extract_source "$CONFIG_TMP/linux"
        configure "$CONFIG_TMP/linux" || exit 1
        cat "$CONFIG_TMP/linux/.config"
        return
    fi

    if complete "$out"; then
        log "cached: $out"
        echo "$out"
        return
    fi
    mkdir -p "$CACHE_DIR/kernel" || die "cannot create $CACHE_DIR/kernel (run as root or set PODVISOR_CACHE_DIR)"
    # One builder per hash; a second concurrent run waits, then finds the cache.
    exec 9>"$CACHE_DIR/kernel/.lock-$hash"
    flock 9
    if complete "$out"; then
        log "cached (built by a concurrent run): $out"
        echo "$out"
        return
    fi
    log "building kernel $hash ($SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG"))"
    build "$hash"
    rm -f "$CACHE_DIR/kernel/.lock-$hash"
    log "done: $out"
    echo "$out"
}

main "$@"
