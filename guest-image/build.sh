#!/usr/bin/env bash
# Podvisor guest image: kernel (cached) + initramfs (cached) + install.
#
#   build.sh --agent PATH [--out DIR]   build/reuse the kernel and the initramfs around
#                                       the static agent at PATH, install into DIR
#                                       (default /var/lib/podvisor/guest)
#   build.sh --kernel-only [--out DIR]  kernel only; installs vmlinux + bzImage
#   build.sh --print-hash [--agent PATH]
#                                       print the kernel (and initramfs) input hashes
#   build.sh --check-deps               check the apt packages of apt-packages.txt
#
# Installed: DIR/vmlinux (PVH ELF), DIR/bzImage, DIR/initramfs.img, DIR/manifest.
# Each file is replaced atomically (temp file + rename), and only when it changed,
# so running it twice is harmless. Caches: $PODVISOR_CACHE_DIR (default
# /var/cache/podvisor)/{kernel,initramfs}/<hash>/. See README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT_DIR="/var/lib/podvisor/guest"
AGENT="" MODE=all

die() { echo "build.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$HERE/build.sh" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --agent) AGENT="${2:?--agent needs a path}"; shift 2 ;;
        --out) OUT_DIR="${2:?--out needs a directory}"; shift 2 ;;
        --kernel-only) MODE=kernel; shift ;;
        --print-hash) MODE="hash"; shift ;;
        --check-deps) MODE=deps; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done

check_deps() {
    local pkgs missing=()
    mapfile -t pkgs < <(grep -Ev '^[[:space:]]*(#|$)' "$HERE/apt-packages.txt")
    local p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "build.sh: error: missing apt packages: ${missing[*]}" >&2
        echo "  install them with: apt-get install -y ${missing[*]}" >&2
        return 1
    fi
}

# install_file SRC NAME: atomically place SRC as $OUT_DIR/NAME unless identical.
install_file() {
    local src="$1" name="$2" dst="$OUT_DIR/$2" tmp
    if [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$src" "$dst"; then
        echo "  $dst (unchanged)"
        return
    fi
    tmp="$(mktemp "$OUT_DIR/.$name.XXXXXX")"
    cp "$src" "$tmp"
    chmod 0644 "$tmp"
    sync "$tmp" 2>/dev/null || true
    mv -f "$tmp" "$dst"
    echo "  $dst (installed)"
}

install_text() { # install_text NAME < content
    local tmp
    tmp="$(mktemp "$OUT_DIR/.$1.XXXXXX")"
    cat > "$tmp"
    install_file "$tmp" "$1"
    rm -f "$tmp"
}

case "$MODE" in
    deps)
        check_deps && echo "build.sh: all packages of apt-packages.txt are installed"
        exit $?
        ;;
    hash)
        echo "kernel    $("$HERE/build-kernel.sh" --print-hash)"
        if [ -n "$AGENT" ]; then
            echo "initramfs $("$HERE/build-initramfs.sh" --agent "$AGENT" --print-hash)"
        fi
        exit 0
        ;;
    all)
        [ -n "$AGENT" ] || die "--agent PATH is required (the static podvisor-agent binary); or use --kernel-only"
        [ -f "$AGENT" ] || die "agent binary not found: $AGENT"
        AGENT="$(readlink -f "$AGENT")"
        ;;
esac

check_deps || exit 1
t0=$(date +%s)
KDIR="$("$HERE/build-kernel.sh")" || die "kernel build failed"
IDIR=""
if [ "$MODE" = all ]; then
    IDIR="$("$HERE/build-initramfs.sh" --agent "$AGENT" --gen-init-cpio "$KDIR/gen_init_cpio")" \
        || die "initramfs build failed"
fi

mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
echo "build.sh: installing into $OUT_DIR"
install_file "$KDIR/vmlinux" vmlinux
install_file "$KDIR/bzImage" bzImage
[ -z "$IDIR" ] || install_file "$IDIR/initramfs.img" initramfs.img
{
    echo "# podvisor guest image (written by guest-image/build.sh)"
    echo "kernel_hash=$(basename "$KDIR")"
    sed -n 's/^kernelrelease=/kernel_release=/p; s/^source=/kernel_source=/p' "$KDIR/build-info"
    if [ -n "$IDIR" ]; then
        echo "initramfs_hash=$(basename "$IDIR")"
        sed -n 's/^agent_sha256=/agent_sha256=/p; s/^compress=/initramfs_compress=/p' "$IDIR/build-info"
    fi
} | install_text manifest

echo "build.sh: done in $(( $(date +%s) - t0 )) s"
echo "  kernel cache:    $KDIR"
[ -z "$IDIR" ] || echo "  initramfs cache: $IDIR"
echo "  installed:       $OUT_DIR/{vmlinux,bzImage$([ -z "$IDIR" ] || echo ,initramfs.img),manifest}"
