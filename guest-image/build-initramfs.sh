#!/usr/bin/env bash
# Podvisor guest initramfs: a compressed newc cpio whose /init is the static agent.
#
#   build-initramfs.sh --agent PATH --gen-init-cpio PATH   build (or reuse), print the
#                                                           cache dir
#   build-initramfs.sh --agent PATH --print-hash            print the input hash
#
# No root needed and deterministic: the archive is written by the kernel tree's
# usr/gen_init_cpio from a spec file (fixed owners, modes, mtimes, inode order),
# then compressed with zstd (or gzip: PODVISOR_INITRAMFS_COMPRESS=gzip, which the
# default kernel cannot unpack: it only has RD_ZSTD).
#
# Inputs (the hash): sha256 of the agent binary, this script, the compressor.
# Output: $PODVISOR_CACHE_DIR/initramfs/<hash>/{initramfs.img,initramfs.spec,build-info}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE_DIR="${PODVISOR_CACHE_DIR:-/var/cache/podvisor}"
COMPRESS="${PODVISOR_INITRAMFS_COMPRESS:-zstd}"

log() { echo "build-initramfs: $*" >&2; }
die() { echo "build-initramfs: error: $*" >&2; exit 1; }

usage() { sed -n '2,16p' "$SELF" | sed 's/^# \{0,1\}//'; }

AGENT="" GEN_INIT_CPIO="" MODE=build
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) AGENT="${2:?--agent needs a path}"; shift 2 ;;
        --gen-init-cpio) GEN_INIT_CPIO="${2:?--gen-init-cpio needs a path}"; shift 2 ;;
        --print-hash) MODE="hash"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
done
[ -n "$AGENT" ] || die "--agent PATH is required (the static podvisor-agent binary)"
[ -f "$AGENT" ] || die "agent binary not found: $AGENT"
case "$COMPRESS" in
    zstd) COMPRESS_CMD=(zstd -q -19 --single-thread -c); COMPRESS_PKG=zstd ;;
    gzip) COMPRESS_CMD=(gzip -9 -n -c); COMPRESS_PKG=gzip ;;
    *) die "PODVISOR_INITRAMFS_COMPRESS must be zstd or gzip, not '$COMPRESS'" ;;
esac
command -v "${COMPRESS_CMD[0]}" >/dev/null 2>&1 \
    || die "'${COMPRESS_CMD[0]}' not found: apt-get install -y $COMPRESS_PKG"
command -v readelf >/dev/null 2>&1 || die "'readelf' not found: apt-get install -y binutils"

input_hash() {
    {
        echo "podvisor-guest-initramfs v1"
        echo "agent $(sha256sum < "$AGENT" | cut -d' ' -f1)"
        echo "script $(sha256sum < "$SELF" | cut -d' ' -f1)"
        echo "compress $COMPRESS"
    } | sha256sum | cut -c1-16
}

if [ "$MODE" = hash ]; then
    input_hash
    exit 0
fi

# The agent is PID 1 of a VM with nothing else in it: it must be a static x86-64 ELF.
hdr="$(readelf -h "$AGENT" 2>/dev/null)" || die "$AGENT is not an ELF binary"
grep -q 'Machine:.*X86-64' <<<"$hdr" || die "$AGENT is not an x86-64 ELF binary"
grep -Eq 'Type:[[:space:]]+(EXEC|DYN)' <<<"$hdr" || die "$AGENT is not an executable"
if readelf -lW "$AGENT" | grep -q 'Requesting program interpreter'; then
    die "$AGENT is dynamically linked ($(readelf -lW "$AGENT" | sed -n 's/.*interpreter: \(.*\)]/\1/p')); build it static (see DESIGN.md: RUSTFLAGS='-C target-feature=+crt-static')"
fi

HASH="$(input_hash)"
OUT="$CACHE_DIR/initramfs/$HASH"
if [ -s "$OUT/initramfs.img" ] && [ -s "$OUT/build-info" ]; then
    log "cached: $OUT"
    echo "$OUT"
    exit 0
fi

[ -n "$GEN_INIT_CPIO" ] || die "--gen-init-cpio PATH is required (build.sh passes the copy in the kernel cache)"
[ -x "$GEN_INIT_CPIO" ] || die "gen_init_cpio not executable: $GEN_INIT_CPIO"

mkdir -p "$CACHE_DIR/initramfs" || die "cannot create $CACHE_DIR/initramfs (run as root or set PODVISOR_CACHE_DIR)"
# One builder per hash; a concurrent run waits, then finds the cache.
exec 9>"$CACHE_DIR/initramfs/.lock-$HASH"
flock 9
if [ -s "$OUT/initramfs.img" ] && [ -s "$OUT/build-info" ]; then
    log "cached (built by a concurrent run): $OUT"
    echo "$OUT"
    exit 0
fi
TMP="$(mktemp -d "$CACHE_DIR/initramfs/.tmp-$HASH.XXXXXX")"
trap 'rm -rf "$TMP" "$CACHE_DIR/initramfs/.lock-$HASH"' EXIT

# gen_init_cpio stores a `file` entry with the source file's mtime: stage a copy
# with a fixed mtime (everything else gets -t 0).
mkdir "$TMP/stage"
cp "$AGENT" "$TMP/stage/init"
touch -h -d @0 "$TMP/stage/init"

cat > "$TMP/initramfs.spec" <<EOF
# Podvisor guest initramfs (gen_init_cpio spec). /init is the agent.
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/null 0666 0 0 c 1 3
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
dir /mnt 0755 0 0
dir /var 0755 0 0
dir /root 0700 0 0
file /init $TMP/stage/init 0755 0 0
EOF

"$GEN_INIT_CPIO" -t 0 "$TMP/initramfs.spec" > "$TMP/initramfs.cpio" \
    || die "gen_init_cpio failed"
"${COMPRESS_CMD[@]}" < "$TMP/initramfs.cpio" > "$TMP/initramfs.img" \
    || die "${COMPRESS_CMD[0]} failed"

# The spec kept in the cache names the agent by its real path, not the staging copy.
sed "s|$TMP/stage/init|$AGENT|" "$TMP/initramfs.spec" > "$TMP/out.spec"
{
    echo "hash=$HASH"
    echo "agent=$AGENT"
    echo "agent_sha256=$(sha256sum < "$AGENT" | cut -d' ' -f1)"
    echo "compress=$COMPRESS"
    echo "cpio_bytes=$(stat -c %s "$TMP/initramfs.cpio")"
    echo "img_bytes=$(stat -c %s "$TMP/initramfs.img")"
} > "$TMP/build-info"

mkdir "$TMP/out"
mv "$TMP/initramfs.img" "$TMP/out/initramfs.img"
mv "$TMP/out.spec" "$TMP/out/initramfs.spec"
mv "$TMP/build-info" "$TMP/out/build-info"
chmod 0755 "$TMP/out"
chmod 0644 "$TMP/out"/*
rm -rf "$OUT"
mv -T "$TMP/out" "$OUT"
log "built: $OUT ($(stat -c %s "$OUT/initramfs.img") bytes, $COMPRESS)"
echo "$OUT"
