#!/usr/bin/env bash
# Install `cntrace daemon` as a systemd service.
#
#   deploy/install.sh                  install into /
#   deploy/install.sh --root DIR       install into DIR instead (staging, tests)
#   deploy/install.sh --uninstall      remove what install put there
#   deploy/install.sh --no-deps        install cntrace alone: its Python
#                                      dependencies must already be importable
#                                      (Debian packages, via the system site)
#
# What goes where (ROOT is / unless --root):
#   ROOT/opt/cntrace/venv                   the package, in a venv made from
#                                           Debian's /usr/bin/python3 (it sees bcc)
#   ROOT/etc/systemd/system/cntrace.service deploy/cntrace.service
#   ROOT/etc/cntrace/cntrace.yml            deploy/cntrace.yml, only if absent:
#                                           a user's config is never overwritten
#   ROOT/usr/local/bin/cntrace, trace-ping  relative symlinks into the venv
#
# Uninstall keeps ROOT/etc/cntrace/cntrace.yml when it differs from the
# shipped default, and says so.  Both directions are idempotent.
#
# This script installs no system packages and mounts nothing: the host needs
# what deploy/setup.sh provides (bcc, a kernel header tree, Docker).  With
# --root it touches nothing outside DIR: no apt, no systemctl.  Into /, it
# runs `systemctl daemon-reload` when systemd is running, and leaves enabling
# to you: systemctl enable --now cntrace
#
# The venv is /opt/cntrace/venv, the one deploy/setup.sh makes for
# development: installing replaces the editable install with a copy (a
# service should not run from a checkout), and setup.sh turns it back.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT=/
UNINSTALL=0
PIP_OPTIONS=()

usage() { echo "usage: deploy/install.sh [--root DIR] [--uninstall] [--no-deps]" >&2; exit 2; }
log() { echo "install: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || usage; ROOT="$2"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --no-deps) PIP_OPTIONS+=(--no-deps --no-build-isolation); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) usage ;;
    esac
done
ROOT="$(realpath -m "$ROOT")"
if [ "$ROOT" = / ] && [ "$(id -u)" != 0 ]; then
    echo "install: must run as root to install into /" >&2
    exit 3
fi
PREFIX="${ROOT%/}"
VENV="$PREFIX/opt/cntrace/venv"
UNIT="$PREFIX/etc/systemd/system/cntrace.service"
WANTS="$PREFIX/etc/systemd/system/multi-user.target.wants/cntrace.service"
CONFIG="$PREFIX/etc/cntrace/cntrace.yml"
BIN="$PREFIX/usr/local/bin"
COMMANDS=(cntrace trace-ping)

systemd_running() { [ "$ROOT" = / ] && [ -d /run/systemd/system ]; }

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        mkdir -p "$(dirname "$VENV")"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    # Built from a clean copy: setuptools would leave build/ in the checkout
    # and reuse it next time, deleted modules included.  A local directory
    # is always reinstalled; dependencies already satisfied are not.
    local source
    source="$(mktemp -d)"
    cp -r "$REPO"/{setup.cfg,pyproject.toml,README.md,tracer,bpf} "$source/"
    # From / so that `import tracer` below cannot find the checkout instead.
    (cd / && "$VENV/bin/pip" install -q --disable-pip-version-check \
        "${PIP_OPTIONS[@]}" "$source" 2> >(grep -v -e "^WARNING: Location" >&2)) \
        || { rm -rf "$source"; return 1; }
    rm -rf "$source"
}

install_files() {
    install -D -m 0644 "$REPO/deploy/cntrace.service" "$UNIT"
    if [ -e "$CONFIG" ]; then
        log "keeping the existing $CONFIG"
    else
        install -D -m 0644 "$REPO/deploy/cntrace.yml" "$CONFIG"
    fi
    mkdir -p "$BIN"
    for cmd in "${COMMANDS[@]}"; do
        ln -sfn "../../../opt/cntrace/venv/bin/$cmd" "$BIN/$cmd"
    done
}

check_host() {  # warnings only: the service fails without these, the install does not
    /usr/bin/python3 -c 'import bcc' 2>/dev/null \
        || log "warning: Debian's python3-bpfcc is missing (deploy/setup.sh installs it)"
    local moddir="/lib/modules/$(uname -r)"
    [ -e "$moddir/build/include/linux/kconfig.h" ] || [ -e "$moddir/source/include/linux/kconfig.h" ] \
        || [ -e /sys/kernel/kheaders.tar.xz ] \
        || log "warning: no kernel header tree for bcc in $moddir (deploy/setup.sh links one)"
}

install_all() {
    check_host
    install_venv
    install_files
    if systemd_running; then
        systemctl daemon-reload
    fi
    local version
    version="$("$VENV/bin/cntrace" --version)"   # fails the install if it cannot run
    log "installed into $ROOT: $version"
    [ "$ROOT" = / ] && log "start it with: systemctl enable --now cntrace"
    return 0
}

uninstall_all() {
    if systemd_running && systemctl is-enabled -q cntrace 2>/dev/null; then
        systemctl disable --now cntrace
    fi
    rm -f "$WANTS" "$UNIT"
    systemd_running && systemctl daemon-reload
    for cmd in "${COMMANDS[@]}"; do
        # Only links into our venv (setup.sh's absolute ones included).
        case "$(readlink "$BIN/$cmd" 2>/dev/null)" in
            */opt/cntrace/venv/bin/"$cmd") rm -f "$BIN/$cmd" ;;
        esac
    done
    rm -rf "$VENV"
    rmdir "$PREFIX/opt/cntrace" 2>/dev/null || true
    if [ -e "$CONFIG" ]; then
        if cmp -s "$CONFIG" "$REPO/deploy/cntrace.yml"; then
            rm -f "$CONFIG"
        else
            log "keeping $CONFIG: it differs from the shipped default"
        fi
    fi
    rmdir "$PREFIX/etc/cntrace" 2>/dev/null || true
    log "removed cntrace from $ROOT"
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall_all
else
    install_all
fi
