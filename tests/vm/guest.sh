#!/usr/bin/env bash
# Runs inside a kernel VM (tests/vm/matrix.py boots it with virtme-ng over the
# host's root filesystem, read-only, with writable overlays on /etc, /var,
# /tmp, /opt and /usr): prepares what a Docker host needs that the overlays
# cannot give, then runs the kernel-sensitive tests against the guest kernel.
#
#   tests/vm/guest.sh RESULTS_DIR [PYTEST_ARG...]
#   tests/vm/guest.sh RESULTS_DIR --command 'SHELL COMMAND'   (a look around instead)
set -euo pipefail
RESULTS="$1"; shift
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# overlay2 cannot stack on the 9p/overlay root: Docker's vfs driver on a tmpfs.
mkdir -p /var/lib/docker /var/lib/containerd /etc/docker
mountpoint -q /var/lib/docker || mount -t tmpfs -o size=6g tmpfs /var/lib/docker
mountpoint -q /var/lib/containerd || mount -t tmpfs tmpfs /var/lib/containerd
echo '{"storage-driver": "vfs"}' > /etc/docker/daemon.json
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
# Docker's iptables rules need the nat and filter tables: autoloaded, but
# loading them first keeps the first `docker run` from racing the modules.
modprobe -a veth bridge br_netfilter nf_nat iptable_nat iptable_filter 2>/dev/null || true

# Under emulation dockerd's own wait for the containerd it starts can time
# out ("timeout waiting for containerd to start"), and it takes ~40 s to
# answer, longer than the testbed waits for one it starts: containerd is
# started first, then dockerd on it, restarted if it gives up.
containerd >/run/containerd.log 2>&1 &
until [ -S /run/containerd/containerd.sock ]; do
    [ "$SECONDS" -gt 300 ] && { echo "guest: containerd did not start"; tail -5 /run/containerd.log; exit 1; }
    sleep 1
done
start_dockerd() { dockerd --containerd /run/containerd/containerd.sock >>/run/dockerd.log 2>&1 & DOCKERD=$!; }
start_dockerd
echo "guest: waiting for dockerd"
until timeout 20 docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -gt 600 ]; then
        echo "guest: dockerd did not answer in 600 s:"; tail -20 /run/dockerd.log; exit 1
    fi
    kill -0 "$DOCKERD" 2>/dev/null || { echo "guest: dockerd exited; again"; start_dockerd; }
    sleep 2
done
echo "guest: dockerd up after $SECONDS s"

cd "$REPO"
export PYTHONDONTWRITEBYTECODE=1   # the checkout is read-only in the guest
if [ "${1:-}" = --command ]; then
    exec bash -c "$2"
fi
exec /opt/cntrace/venv/bin/python -m pytest -p no:cacheprovider -m kernel -v -rs --durations=5 \
    --junitxml="$RESULTS/junit.xml" "$@" tests/integration
