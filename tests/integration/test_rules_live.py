"""tracer.ping.iptables_counters against the real iptables: set up a dropping rule, send one
UDP datagram over loopback into it, and check the counter diff names it.

Only loopback traffic is sent.  The host test adds one jump in the host's
filter OUTPUT for 127.0.0.87:9 and its own CNTRACE-TEST-<random> chain; the
policy test changes a policy only inside a throwaway netns.  Both always
remove what they made and check that it is gone.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from tracer.ping.iptables_counters import describe, diff, dropping_hits, snapshot

pytestmark = pytest.mark.integration

PROBE_DST = ("127.0.0.87", 9)


def _require_root_and_iptables() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: adds iptables rules")
    if shutil.which("iptables") is None or shutil.which("iptables-save") is None:
        pytest.skip("needs iptables and iptables-save (apt-get install iptables)")


def iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def save() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def drop_chain():
    """A filter chain CNTRACE-TEST-<random> that drops UDP, jumped to from the
    top of OUTPUT for 127.0.0.87:9 only; yields (chain, jump rule spec)."""
    _require_root_and_iptables()
    chain = f"CNTRACE-TEST-{uuid.uuid4().hex[:8].upper()}"
    jump = ["OUTPUT", "-d", f"{PROBE_DST[0]}/32", "-p", "udp", "--dport", str(PROBE_DST[1]),
            "-j", chain]
    try:
        iptables("-N", chain)
        iptables("-A", chain, "-p", "udp", "-j", "DROP")
        # Inserted first so that no earlier ACCEPT in OUTPUT can hide it.
        iptables("-I", *jump)
        yield chain
    finally:
        while iptables("-D", *jump, check=False).returncode == 0:
            pass
        iptables("-F", chain, check=False)
        iptables("-X", chain, check=False)
        assert chain not in save(), f"{chain} left behind in the host's ruleset"


def send_one_udp(dst: tuple[str, int]) -> None:
    """One datagram; the OUTPUT drop makes sendto fail with EPERM."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            contextlib.suppress(PermissionError):
        sock.sendto(b"cntrace", dst)


def test_drop_rule_in_user_chain_is_named(drop_chain):
    before = snapshot()
    send_one_udp(PROBE_DST)
    after = snapshot()
    hits = diff(before, after)

    [dropped] = dropping_hits(hit for hit in hits if hit.counter.family == "ipv4")
    assert (dropped.counter.table, dropped.counter.chain) == ("filter", drop_chain)
    assert (dropped.counter.index, dropped.counter.target, dropped.packets) == (1, "DROP", 1)
    assert describe(dropped) == (
        f"iptables filter {drop_chain} rule 1: -A {drop_chain} -p udp -j DROP (1 packet)")

    [jump] = [hit for hit in hits if hit.counter.target == drop_chain]
    assert (jump.counter.table, jump.counter.chain, jump.packets) == ("filter", "OUTPUT", 1)
    assert jump.counter.rule == (
        f"-A OUTPUT -d 127.0.0.87/32 -p udp -m udp --dport 9 -j {drop_chain}")
    # A packet meets the OUTPUT jump before the chain it jumps to.
    assert hits.index(jump) < hits.index(dropped)


def test_snapshot_skips_a_table_that_does_not_exist():
    _require_root_and_iptables()
    assert snapshot(tables=("cntrace_no_such_table",)) == {}
    assert snapshot(families=("ipv4",), tables=("filter",))


@pytest.fixture
def netns():
    """A throwaway network namespace with lo up; deleted afterwards."""
    _require_root_and_iptables()
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip`")
    name = f"cntrace-rules-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert name not in listed


def test_drop_policy_is_named(netns):
    """OUTPUT policy DROP in a private netns: the policy counter is the only hit.
    (iptables-nft keeps policy counters on the base chain, like legacy does.)"""
    in_ns = ["ip", "netns", "exec", netns]

    def runner(cmd, **kwargs):
        return subprocess.run([*in_ns, *cmd], **kwargs)

    subprocess.run([*in_ns, "iptables", "-w", "-P", "OUTPUT", "DROP"], check=True)
    before = snapshot(families=("ipv4",), runner=runner)
    sender = subprocess.run(
        [*in_ns, sys.executable, "-c",
         "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
         ".sendto(b'cntrace', ('127.0.0.1', 9))"],
        capture_output=True, text=True)
    assert "PermissionError" in sender.stderr
    after = snapshot(families=("ipv4",), runner=runner)

    [hit] = diff(before, after)
    assert hit.drops and hit.packets == 1
    assert describe(hit) == "iptables filter OUTPUT policy DROP (1 packet)"
