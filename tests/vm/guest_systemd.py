"""The service under a real systemd (PID 1), in the VM of tests/vm/systemd_vm.py,
after the README's setup command, deploy/install.sh and
`systemctl enable --now cntrace`.  Not collected on the host: systemd_vm.py's
guest script runs this file by path.

The order is the story: the service serves container series after traffic,
journald has its lines with their priorities, every hardening directive is in
force with every hook attached, `systemctl kill -s KILL` is followed by a
clean restart, and `systemctl stop` leaves nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import (
    bpf_gone,
    bpf_held,
    exit_devices,
    expected_attachments,
    hook_mechanisms,
    tc_state,
    wait_until,
)
from tracer.testbed import Testbed, check_route

URL = "http://127.0.0.1:9476"
START_TIMEOUT = 600      # a bcc compile under TCG emulation takes ~50 s; margin for the rest


def systemctl(*args: str) -> str:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True).stdout.strip()


def main_pid() -> int:
    return int(systemctl("show", "-p", "MainPID", "--value", "cntrace") or 0)


def wait_for(predicate, what: str, timeout: float = START_TIMEOUT):
    try:
        return wait_until(predicate, what, timeout, interval=1)   # each check is a scrape
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {systemctl('status', 'cntrace')}") from None


def healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{URL}/healthz", timeout=5):
            return True
    except OSError:
        return False


def scrape() -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"{URL}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def fully_attached(pid: int) -> bool:
    """Every hook attached, and exactly the links and cls_bpf filters that
    this daemon should hold: no killed predecessor's leftovers."""
    samples = scrape()
    containers = int(samples.get(("cntrace_containers", frozenset()), 0))
    hooks = [v for (name, _), v in samples.items() if name == "cntrace_hook_attached"]
    links, filters = expected_attachments(hook_mechanisms(samples), containers,
                                          exit_devices(samples))
    return (containers >= 3 and hooks and min(hooks) == 1
            and len(bpf_held(pid)["link"]) == links and len(tc_state()[0]) == filters)


@pytest.fixture(scope="module")
def testbed():
    bed = Testbed()   # uses docker.service's dockerd: it answers
    try:
        yield bed.up()
    finally:
        bed.down()


def test_service_serves_container_series_after_traffic(testbed):
    wait_for(lambda: systemctl("is-active", "cntrace") == "active" and healthy(),
               "cntrace active and healthy")
    a, b = testbed.containers["a"], testbed.containers["b"]
    wait_for(lambda: fully_attached(main_pid()), "every hook attached on every veth")
    check_route(b.ip, [b.bridge])
    before = scrape()
    subprocess.run(["docker", "exec", a.name, "ping", "-c", "5", "-i", "0.2", b.ip],
                   check=True, capture_output=True)
    key = ("cntrace_container_packets_total",
           frozenset({"container": a.name, "compose_project": "",
                      "compose_service": "", "direction": "tx"}.items()))
    wait_for(lambda: scrape().get(key, 0) - before.get(key, 0) >= 5, "a's 5 pings counted",
               timeout=60)


def test_journald_keeps_each_line_with_its_priority():
    out = subprocess.run(["journalctl", "-u", "cntrace", "-o", "json", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    ours = [e for e in entries if e.get("_PID") == str(main_pid())]
    attached = [e for e in ours if str(e.get("MESSAGE", "")).startswith("attached ")]
    assert attached, ours[-5:]
    assert {e["PRIORITY"] for e in attached} == {"6"}     # <6> prefix read as info
    assert not [e for e in ours if str(e.get("MESSAGE", "")).startswith("<")]


def test_every_hardening_directive_is_in_force_with_every_hook_attached():
    """The unit's sandbox (deploy/cntrace.service), seen from the kernel."""
    with open(f"/proc/{main_pid()}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"                # SystemCallFilter
    net_admin, sys_ptrace, sys_admin, syslog = 12, 19, 21, 34
    assert int(fields["CapBnd"], 16) == sum(1 << c for c in (net_admin, sys_ptrace, sys_admin,
                                                             syslog))
    samples = scrape()
    hooks = {dict(labels)["hook"]: v for (name, labels), v in samples.items()
             if name == "cntrace_hook_attached"}
    assert hooks and set(hooks.values()) == {1.0}, hooks


def test_sigkill_is_restarted_by_systemd_and_attaches_cleanly(testbed):
    killed = main_pid()
    held = bpf_held(killed)
    subprocess.run(["systemctl", "kill", "-s", "KILL", "cntrace"], check=True)
    wait_for(lambda: main_pid() not in (0, killed) and healthy(), "systemd restarted it")
    wait_for(lambda: fully_attached(main_pid()), "attached again, no leftovers")
    wait_for(lambda: bpf_gone(held), "nothing of the killed daemon's is left", timeout=60)


def test_systemctl_stop_leaves_no_program_link_or_filter(testbed):
    held = bpf_held(main_pid())
    subprocess.run(["systemctl", "stop", "cntrace"], check=True)
    assert systemctl("is-active", "cntrace") == "inactive"
    assert bpf_gone(held)
    assert tc_state() == (set(), set())   # Docker adds no clsact of its own
