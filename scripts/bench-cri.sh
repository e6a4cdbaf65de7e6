#!/usr/bin/env bash
# bench-cri.sh: podvisor-bench against containerd + runc and, when there is
# one, a podvisor endpoint, in one run; ratios are against containerd.
#
#   scripts/bench-cri.sh [--podvisor start | unix:///PATH.sock | none] [-- BENCH ARGS...]
#
# As root on Debian 12. It installs what it needs (scripts/bench-apt-packages.txt),
# builds podvisor-bench, starts containerd with a configuration of its own
# under a temp dir (own root, state, socket, runc root, CNI bridge and IPAM
# state), runs the bench with a local registry (Debian's docker-registry on
# 127.0.0.1) that serves busybox and the sandbox image to both runtimes, and
# removes everything it started or created, on failure and Ctrl-C too.
#
# The podvisor endpoint: --podvisor, else $PODVISOR_ENDPOINT, else "start":
# the script builds podvisor and starts a daemon of its own (default config,
# its own socket, state and run directories, stopped at the end) with the
# guest image scripts/build-guest.sh installed. A unix:// endpoint uses a
# daemon you started; "none" skips podvisor.
#
# Environment: CARGO_TARGET_DIR (where cargo builds), BENCH_PROFILE (debug,
# the default, or release), BENCH_SUBNET (the containerd pods' subnet,
# default 10.213.0.0/24), KEEP_WORK=1 (keep the temp dir's logs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

podvisor=${PODVISOR_ENDPOINT:-}
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --podvisor) podvisor=${2:?--podvisor needs an endpoint}; shift 2 ;;
    --podvisor=*) podvisor=${1#*=}; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-cri.sh: unknown argument $1 (bench arguments go after --)" >&2; exit 2 ;;
    esac
done
[ -z "$podvisor" ] && podvisor=start
[ "$podvisor" = none ] && podvisor=

if [ "$(id -u)" != 0 ]; then
    echo "bench-cri.sh: run as root (it installs packages and starts containerd)" >&2
    exit 1
fi

# --- packages ---------------------------------------------------------------
mapfile -t packages < <(grep -v '^\s*#' scripts/bench-apt-packages.txt | sed '/^\s*$/d')
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

# --- the bench binary -------------------------------------------------------
profile=${BENCH_PROFILE:-debug}
cargo_flags=(-p podvisor-tests --bin podvisor-bench)
[ "$profile" = release ] && cargo_flags+=(--release)
echo "==> cargo build ${cargo_flags[*]}"
[ "$podvisor" = start ] && cargo_flags+=(-p podvisor --bin podvisor)
cargo build -q "${cargo_flags[@]}"
bench="${CARGO_TARGET_DIR:-$repo/target}/$profile/podvisor-bench"
podvisor_bin="${CARGO_TARGET_DIR:-$repo/target}/$profile/podvisor"

# --- containerd's configuration ---------------------------------------------
work=$(mktemp -d /tmp/podvisor-bench.XXXXXX)
sock="$work/containerd.sock"
subnet=${BENCH_SUBNET:-10.213.0.0/24}
reaper_pid=
podvisor_pid=

# A free port for the registry: containerd's config names it before the
# bench starts the registry there.
port=
for _ in $(seq 50); do
    candidate=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
        port=$candidate
        break
    fi
done
[ -n "$port" ] || { echo "bench-cri.sh: no free port found" >&2; exit 1; }
registry="127.0.0.1:$port"
bridge="pvb$port"
# What containerd's shims and runc create outside the temp dir: the shims'
# socket directory and, for pods without a cgroup parent, a k8s.io cgroup
# per controller. Removed at the end only if this run created them.
created_outside=()
for d in /run/containerd/s /run/containerd /sys/fs/cgroup/k8s.io /sys/fs/cgroup/*/; do
    [ "${d%/}" = "$d" ] || d="${d}k8s.io" # a v1 controller (or v2's unified)
    [ -e "$d" ] || created_outside+=("$d")
done

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$reaper_pid" ] && kill -0 "$reaper_pid" 2>/dev/null; then
        # Pods a failed or interrupted bench left behind, through the CRI.
        [ -S "$sock" ] && "$bench" --cleanup --endpoint "containerd=unix://$sock" --op-timeout-secs 30
        kill -TERM "$reaper_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$reaper_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$reaper_pid" 2>/dev/null
        wait "$reaper_pid" 2>/dev/null
    fi
    if [ -n "$podvisor_pid" ]; then
        [ -S "$work/podvisor.sock" ] && "$bench" --cleanup --endpoint "podvisor=unix://$work/podvisor.sock" --op-timeout-secs 60
        kill -TERM "$podvisor_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$podvisor_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$podvisor_pid" 2>/dev/null
        wait "$podvisor_pid" 2>/dev/null
        # VMs and virtiofsd a failed run left (their command lines name the
        # daemon's run directory).
        pkill -KILL -f "$podvisor_run/" 2>/dev/null
        rm -rf "$podvisor_run"
    fi
    # Shims that outlived containerd (their command line names its socket),
    # with the containers they started (their children).
    local d c pids=()
    for d in /proc/[0-9]*; do
        c=$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null) || continue
        case $c in *"$work/"*) pids+=("${d#/proc/}") ;; esac
    done
    for pid in "${pids[@]}"; do
        pkill -KILL -P "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
    done
    # Mounts under the temp dir: container rootfs, sandbox shm, pod netns.
    awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m"; done
    ip link del "$bridge" 2>/dev/null
    # rmdir: only when empty (a cgroup with processes cannot be removed).
    for d in "${created_outside[@]}"; do rmdir "$d" 2>/dev/null; done
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "==> kept $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$work/cni/net.d" "$work/certs.d/$registry"
cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$sock"

[plugins."io.containerd.grpc.v1.cri"]
  # Served by the bench's local registry (busybox sleep).
  sandbox_image = "$registry/pause:latest"
  # Root here lacks CAP_SYS_RESOURCE: the pause container's oom_score_adj
  # of -998 cannot be set; clamp it to containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$work/runc"
        # cgroupfs: no systemd here (the host has cgroup v1 + unified).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$work/certs.d"
EOF
# The local registry speaks plain HTTP.
cat >"$work/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"

[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
# Each pod gets a veth on a bridge of its own (no masquerading, no iptables
# rules: the pods need an interface and an address, not the outside world).
cat >"$work/cni/net.d/10-podvisor-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "podvisor-bench",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$subnet"}]],
        "dataDir": "$work/cni/ipam"
      }
    }
  ]
}
EOF

# --- containerd -------------------------------------------------------------
# Under tini -s: containerd's shims are reparented to it and reaped when they
# exit. In a session of its own, so Ctrl-C reaches the bench (which removes
# its pods through containerd) and not containerd.
echo "==> containerd $(containerd --version | awk '{print $3}') on unix://$sock"
setsid tini -s -- containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
reaper_pid=$!
for _ in $(seq 300); do
    [ -S "$sock" ] && break
    if ! kill -0 "$reaper_pid" 2>/dev/null; then
        echo "bench-cri.sh: containerd exited; its log:" >&2
        tail -n 30 "$work/containerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
[ -S "$sock" ] || { echo "bench-cri.sh: containerd did not create $sock" >&2; exit 1; }

# --- podvisor ---------------------------------------------------------------
podvisor_run="/run/pvb-$port"
if [ "$podvisor" = start ]; then
    printf 'socket = "%s"\nstate_dir = "%s"\nrun_dir = "%s"\n' \
        "$work/podvisor.sock" "$work/podvisor-state" "$podvisor_run" >"$work/podvisor.toml"
    echo "==> podvisor (default config, own directories) on unix://$work/podvisor.sock"
    setsid "$podvisor_bin" --config "$work/podvisor.toml" >"$work/podvisor.log" 2>&1 &
    podvisor_pid=$!
    for _ in $(seq 300); do
        [ -S "$work/podvisor.sock" ] && break
        if ! kill -0 "$podvisor_pid" 2>/dev/null; then
            echo "bench-cri.sh: podvisor exited; its log:" >&2
            tail -n 30 "$work/podvisor.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    podvisor="unix://$work/podvisor.sock"
fi

# --- the bench --------------------------------------------------------------
endpoints=(--endpoint "containerd=unix://$sock")
[ -n "$podvisor" ] && endpoints+=(--endpoint "podvisor=$podvisor")
echo "==> $bench ${endpoints[*]} --local-registry $registry ${bench_args[*]}"
status=0
"$bench" "${endpoints[@]}" --local-registry "$registry" "${bench_args[@]}" || status=$?
if [ "$status" != 0 ]; then
    echo "bench-cri.sh: podvisor-bench exited $status; containerd's log ends:" >&2
    tail -n 20 "$work/containerd.log" >&2
fi
exit "$status"
