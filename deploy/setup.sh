#!/usr/bin/env bash
# Set up everything cntrace needs on a Debian 12 host, then run something.
#
#   deploy/setup.sh          set up only
#   deploy/setup.sh run      set up, then the main job: with no Docker engine
#                            running, a local demo testbed first; then the
#                            topology and the live event stream (Ctrl-C stops)
#   deploy/setup.sh test     set up, then the whole test suite: natively on
#                            this kernel, then the kernel matrix (Debian's 6.1
#                            and 6.12 in VMs) and the systemd VM; with
#                            CNTRACE_SKIP_VMS=1 the VMs are skipped (local use)
#   deploy/setup.sh bench [ARG...]
#                            set up, then every benchmark (bench/run.py ARG...)
#
# Idempotent: each step checks before it changes anything.  Run as root.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV=/opt/cntrace/venv
APT_PACKAGES=(
    bpfcc-tools python3-bpfcc libbpfcc libbpf1 bpftool  # bcc, libbpf (BTF), bpftool (tests)
    docker.io iptables nftables conntrack iproute2 busybox-static # the Docker host and its tools
    python3-venv python3-pip kmod                        # Debian's python3 sees bcc
    graphviz                             # dot draws `cntrace topology --format svg` and the page
)
# Only for `test` and `bench`, without recommends: the scrape tests run their own Prometheus
# (and promtool); on a systemd host the package's own service would start too.
TEST_APT_PACKAGES=(
    prometheus iperf3 tcpdump
    systemd libcap2-bin python3-seccomp  # systemd-analyze; capsh; the capability sandbox
    chromium-headless-shell python3-pil  # the landing page in a real browser; its screenshot
    gcc libc6-dev                        # the wire structs laid out by a C compiler (test_wire)
)
PY_TEST_PACKAGES=(pytest hypothesis ruff)
# The kernel VMs (tests/vm/): QEMU (TCG), udev (virtme-ng finds its console
# ports through it), mmdebstrap for the systemd VM's image, virtme-ng in a venv.
VM_APT_PACKAGES=(qemu-system-x86 qemu-utils udev mmdebstrap e2fsprogs)
VNG_VENV=/opt/cntrace/vng
VNG_VERSION=1.42

log() { echo "setup: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup: must run as root (BPF, netfilter and Docker need it)" >&2
        exit 3
    fi
}

install_apt_packages() {  # [apt-get option...] -- package...
    local options=() missing=()
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null
}

# bcc compiles against a kernel header tree.  When the running kernel ships
# none (no /lib/modules/$(uname -r)/build, no CONFIG_IKHEADERS), link Debian's
# newest header package: it only has to compile, because every kernel struct
# offset cntrace uses comes from BTF (tracer/kernel/kernel_layout.py), not headers.
install_kernel_headers() {
    local moddir="/lib/modules/$(uname -r)"
    if [ -e "$moddir/build/include/linux/kconfig.h" ] || [ -e "$moddir/source/include/linux/kconfig.h" ] \
        || [ -e /sys/kernel/kheaders.tar.xz ]; then
        return
    fi
    local arch
    arch="$(dpkg --print-architecture)"
    if ! ls -d /usr/src/linux-headers-*-"$arch" >/dev/null 2>&1; then
        log "installing linux-headers-$arch for bcc (running kernel ships no headers)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$arch" >/dev/null
    fi
    local build common
    build="$(ls -d /usr/src/linux-headers-*-"$arch" | grep -v -e cloud -e rt | sort -V | tail -1)"
    common="${build%-"$arch"}-common"
    mkdir -p "$moddir"
    ln -sfn "$build" "$moddir/build"
    ln -sfn "$common" "$moddir/source"
    log "linked $build (+ -common) as $moddir/build and /source for bcc"
}

mount_filesystems() {
    mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
}

install_python() {
    # Debian's /usr/bin/python3 is the one that sees python3-bpfcc.
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO" "${PY_TEST_PACKAGES[@]}" \
        2> >(grep -v -e "^WARNING: Location" >&2)
    for cmd in cntrace trace-ping; do
        ln -sfn "$VENV/bin/$cmd" "/usr/local/bin/$cmd"
    done
}

setup() {
    need_root
    install_apt_packages -- "${APT_PACKAGES[@]}"
    install_kernel_headers
    mount_filesystems
    install_python
}

run_main_job() {
    if ! docker info >/dev/null 2>&1; then
        log "no Docker engine running: starting the demo testbed (cntrace testbed down removes it)"
        cntrace testbed up --traffic
    fi
    cntrace topology
    exec cntrace events
}

run_benchmarks() {  # iperf3 and tcpdump come with the test packages
    install_apt_packages --no-install-recommends -- "${TEST_APT_PACKAGES[@]}"
    cd "$REPO"
    exec "$VENV/bin/python" bench/run.py "$@"
}

install_vm_tools() {
    install_apt_packages --no-install-recommends -- "${VM_APT_PACKAGES[@]}"
    if [ ! -x "$VNG_VENV/bin/vng" ]; then
        log "installing virtme-ng $VNG_VERSION in $VNG_VENV"
        /usr/bin/python3 -m venv "$VNG_VENV"
        "$VNG_VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" \
            2> >(grep -v -e "^WARNING: Location" >&2)
    fi
}

host_network() {  # what the tests must leave as they found it: rules, links, namespaces
    { iptables-save; ip6tables-save; } 2>/dev/null | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    ip netns list
}

run_tests() {
    install_apt_packages --no-install-recommends -- "${TEST_APT_PACKAGES[@]}"
    cd "$REPO"
    local status=0 junit before
    before="$(host_network)"
    junit="$(mktemp --suffix=.xml)"
    # Lint first, then the unit suite as an unprivileged user: pure logic
    # needs no root, and this shows it (bytecode and pytest's cache unwritten).
    "$VENV/bin/ruff" check tracer tests bench deploy || status=1
    runuser -u nobody -- env HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
        "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
        -W ignore::hypothesis.errors.HypothesisWarning tests/unit || status=1
    "$VENV/bin/python" -m pytest -v -rs --junitxml="$junit" tests || status=$?
    [ "$status" -eq 5 ] && { echo "setup: no tests collected" >&2; exit 1; }
    if ! diff <(echo "$before") <(host_network) >&2; then
        echo "setup: the tests left the host changed (above: < before, > after)" >&2
        status=1
    fi
    if [ "${CNTRACE_SKIP_VMS:-}" = 1 ]; then
        log "CNTRACE_SKIP_VMS=1: the kernel matrix and the systemd VM are skipped"
    else
        install_vm_tools
        # Both exit 2 with one line when the VMs cannot run: never a silent pass.
        # The systemd VM (plain QEMU) runs beside the matrix's guests, its
        # console kept in a file and shown after the matrix's table.
        local systemd_log systemd_pid systemd_status=0
        systemd_log="$(mktemp)"
        "$VENV/bin/python" -m tests.vm.systemd_vm >"$systemd_log" 2>&1 &
        systemd_pid=$!
        trap 'kill "$systemd_pid" 2>/dev/null || true' EXIT   # no VM outlives this script
        "$VENV/bin/python" -m tests.vm.matrix --native-junit "$junit" || status=1
        wait "$systemd_pid" || systemd_status=$?
        cat "$systemd_log"
        rm -f "$systemd_log"
        [ "$systemd_status" -eq 0 ] || status=1
    fi
    rm -f "$junit"
    exit "$status"
}

setup
case "${1:-}" in
    "") log "done: cntrace and trace-ping are on PATH" ;;
    run) run_main_job ;;
    test) run_tests ;;
    bench) shift; run_benchmarks "$@" ;;
    *) echo "usage: deploy/setup.sh [run|test|bench [ARG...]]" >&2; exit 2 ;;
esac
