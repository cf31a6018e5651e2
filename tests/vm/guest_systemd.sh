#!/usr/bin/env bash
# Runs inside the systemd VM (tests/vm/systemd_vm.py), started at boot by a
# oneshot unit: what a new user does on a fresh Debian 12 machine, then the
# checks of the service under a real systemd.
#
#   guest_systemd.sh STAGE RESULTS
#     STAGE    read-only: repo/ (a clean copy of the repository), wheels/
#     RESULTS  writable: setup.log, junit.xml
set -uo pipefail
STAGE="$1"; RESULTS="$2"
step() { echo "guest: $*"; }

rm -rf /root/cntrace && cp -a "$STAGE/repo" /root/cntrace && cd /root/cntrace
# The VM has no network: pip reads the wheels the host downloaded.
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$STAGE/wheels"
step "the README's setup command"
bash deploy/setup.sh >"$RESULTS/setup.log" 2>&1 || { step "setup failed"; tail -20 "$RESULTS/setup.log"; exit 1; }
step "deploy/install.sh"
bash deploy/install.sh >>"$RESULTS/setup.log" 2>&1 || { step "install failed"; tail -20 "$RESULTS/setup.log"; exit 1; }
step "systemctl enable --now cntrace"
systemctl enable --now cntrace || exit 1
step "checks"
/opt/cntrace/venv/bin/python -m pytest -p no:cacheprovider -v -rs \
    --junitxml="$RESULTS/junit.xml" tests/vm/guest_systemd.py
