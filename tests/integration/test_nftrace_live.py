"""tracer.ping.nftrace against the real nf_tables: in a throwaway netns, write a
rule that drops (or a policy that drops, or an iptables-nft rule), trace one
probe over that netns's loopback, and check the verdict names the table,
chain, handle and rule text that `nft --handle list` reports independently.

Traffic never leaves the netns: every probe goes to 127.0.0.x or ::1 inside
it.  NftTrace runs in a child (`ip netns exec NS python -c CHILD`) that
prints what it saw as JSON.  After each test no cntrace_trace_* table and no
`nft monitor` process of that netns may remain, the child's table never
appeared on the host, and the netns is deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.integration.helpers import scaled
from tracer.ping.nftrace import ProbeMatch, build_ruleset

pytestmark = pytest.mark.integration

# Run inside the netns: trace one probe and print {available, why_not,
# verdicts, reached, start_s, stop_s, table} as JSON.  A probe is a raw ICMP
# echo with our id (answered by the netns's own loopback) or one UDP datagram
# from the probe's port.
CHILD = r"""
import dataclasses, json, socket, struct, subprocess, sys, time
from tracer.ping.nftrace import NftTrace, ProbeMatch, remove_leftovers

plan = json.loads(sys.argv[1])
if plan.get("remove_leftovers"):
    print(json.dumps({"removed": remove_leftovers()}))
    sys.exit(0)

def echo(family, ident, dst):
    af, proto, kind = ((socket.AF_INET, socket.IPPROTO_ICMP, 8) if family == 4
                       else (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128))
    header = struct.pack("!BBHHH", kind, 0, 0, ident, 1) + b"cntrace!"
    if family == 4:
        total = sum(struct.unpack("!8H", header))
        total = (total >> 16) + (total & 0xFFFF)
        header = header[:2] + struct.pack("!H", ~(total + (total >> 16)) & 0xFFFF) + header[4:]
    with socket.socket(af, socket.SOCK_RAW, proto) as sock:   # the kernel sums ICMPv6
        sock.settimeout(0.3)
        try:
            sock.sendto(header, (dst, 0))
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                data = sock.recv(2048)
                reply = data[20:] if family == 4 else data
                if reply[0] in (0, 129) and struct.unpack("!H", reply[4:6])[0] == ident:
                    return True
        except OSError:
            pass
    return False

def udp(ident, dst, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", ident))
        try:
            sock.sendto(b"cntrace", (dst, port))
        except OSError:
            pass
    return False

match = ProbeMatch(plan["family"], plan["proto"], plan["ident"])
trace = NftTrace(match)
t0 = time.perf_counter()
trace.start()
t1 = time.perf_counter()
if plan.get("after_start"):
    subprocess.run(["nft", "-f", "-"], input=plan["after_start"], text=True, check=True)
if match.proto == "icmp":
    reached = echo(match.family, match.ident, plan["dst"])
else:
    reached = udp(match.ident, plan["dst"], plan["port"])
t2 = time.perf_counter()
verdicts = trace.stop()
t3 = time.perf_counter()
print(json.dumps({"available": trace.available, "why_not": trace.why_not,
                  "verdicts": [dataclasses.asdict(v) | {"describe": v.describe()}
                               for v in verdicts],
                  "reached": reached, "start_s": t1 - t0, "stop_s": t3 - t2,
                  "table": trace.table}))
"""


def _require_root_and_nft() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a netns and nftables tables")
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` (apt-get install nftables iproute2)")


def in_netns(netns: str, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True,
                          check=check, timeout=scaled(30), **kwargs)


def trace_tables(netns: str | None = None) -> list[str]:
    cmd = ["nft", "list", "tables"]
    out = (in_netns(netns, *cmd) if netns else
           subprocess.run(cmd, capture_output=True, text=True, check=True)).stdout
    return re.findall(r"cntrace_trace_\d+", out)


def monitors_in(netns_inode: int) -> list[int]:
    """Pids of `nft ... monitor ...` processes whose netns is this one."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
            if os.path.basename(argv[0]) == b"nft" and b"monitor" in argv and \
                    os.stat(f"/proc/{entry}/ns/net").st_ino == netns_inode:
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.fixture
def netns():
    """A throwaway netns with lo up; afterwards no trace table and no monitor
    may be left in it, and it is deleted."""
    _require_root_and_nft()
    name = f"cntrace-nfttest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
        in_netns(name, "ip", "link", "set", "lo", "up")
        yield name
        assert trace_tables(name) == [], "trace table left behind"
        assert monitors_in(inode) == [], "nft monitor left running"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout


def nft_load(netns: str, ruleset: str) -> None:
    in_netns(netns, "nft", "-f", "-", input=ruleset)


def handles(netns: str, family: str, table: str, chain: str) -> dict[str, int]:
    """rule text -> handle, from `nft --handle list chain` (not from cntrace)."""
    out = in_netns(netns, "nft", "--handle", "list", "chain", family, table, chain).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"^\t\t(.+?) # handle (\d+)$", out, re.M)}


def trace(netns: str, user: int | None = None, **plan) -> dict:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    out = in_netns(netns, *prefix, sys.executable, "-c", CHILD, json.dumps(plan),
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    result = json.loads(out.stdout)
    # Other cntrace processes may trace on the host meanwhile; ours must not.
    assert result.get("table") not in trace_tables(), "a trace table went to the host"
    return result


def drops(result: dict) -> list[dict]:
    assert result["available"], result["why_not"]
    return [v for v in result["verdicts"] if v["verdict"] in ("drop", "reject")]


def test_native_drop_rule_is_named(netns):
    rule = "ip daddr 127.0.0.1 icmp type echo-request icmp id 4101 drop"
    nft_load(netns, "table inet cntrace_test {\n chain output {\n"
                    "  type filter hook output priority 0; policy accept;\n"
                    f"  {rule}\n }}\n}}\n")
    handle = handles(netns, "inet", "cntrace_test", "output")[rule]

    result = trace(netns, family=4, proto="icmp", ident=4101, dst="127.0.0.1")

    assert not result["reached"]
    [dropped] = drops(result)
    assert {k: dropped[k] for k in ("family", "table", "chain", "handle", "rule", "verdict")} \
        == {"family": "inet", "table": "cntrace_test", "chain": "output", "handle": handle,
            "rule": rule, "verdict": "drop"}
    assert dropped["describe"] == f"nft inet cntrace_test output handle {handle}: {rule}"


def test_policy_drop_is_named(netns):
    nft_load(netns, "table ip cntrace_test {\n chain input {\n"
                    "  type filter hook input priority 0; policy drop;\n }\n}\n")

    result = trace(netns, family=4, proto="icmp", ident=4102, dst="127.0.0.1")

    assert not result["reached"]
    [dropped] = drops(result)
    assert (dropped["family"], dropped["table"], dropped["chain"]) == ("ip", "cntrace_test",
                                                                     "input")
    assert (dropped["handle"], dropped["rule"]) == (None, "policy drop")
    assert dropped["describe"] == "nft ip cntrace_test input policy drop"


def test_reject_rule_is_named_as_reject(netns):
    rule = "udp dport 9 reject"
    nft_load(netns, "table inet cntrace_test {\n chain output {\n"
                    f"  type filter hook output priority 0; policy accept;\n  {rule}\n }}\n}}\n")
    handle = handles(netns, "inet", "cntrace_test", "output")[rule]

    result = trace(netns, family=4, proto="udp", ident=40009, dst="127.0.0.1", port=9)

    [rejected] = drops(result)
    assert (rejected["handle"], rejected["rule"], rejected["verdict"]) == (handle, rule, "reject")


def test_iptables_nft_rule_is_named(netns):
    if shutil.which("iptables") is None:
        pytest.skip("needs iptables (apt-get install iptables)")
    in_netns(netns, "iptables", "-w", "-A", "OUTPUT", "-p", "icmp", "-d", "127.0.0.2",
             "-j", "DROP")
    [(rule, handle)] = handles(netns, "ip", "filter", "OUTPUT").items()

    result = trace(netns, family=4, proto="icmp", ident=4103, dst="127.0.0.2")

    [dropped] = drops(result)
    assert (dropped["family"], dropped["table"], dropped["chain"]) == ("ip", "filter", "OUTPUT")
    assert dropped["handle"] == handle
    # nft prints the live counter; the verdict keeps the rule, not a stale count.
    assert dropped["rule"] == re.sub(r"counter packets \d+ bytes \d+", "counter", rule)
    assert dropped["rule"].endswith("drop") and "127.0.0.2" in dropped["rule"]


def test_ip6_drop_rule_is_named(netns):
    rule = "icmpv6 type echo-request drop"
    nft_load(netns, "table ip6 cntrace_test {\n chain input {\n"
                    f"  type filter hook input priority 0; policy accept;\n  {rule}\n }}\n}}\n")

    result = trace(netns, family=6, proto="icmp", ident=4104, dst="::1")

    [dropped] = drops(result)
    assert (dropped["family"], dropped["chain"], dropped["rule"]) == ("ip6", "input", rule)


def test_reachable_probe_has_no_drop_verdict(netns):
    nft_load(netns, "table inet cntrace_test {\n chain input {\n"
                    "  type filter hook input priority 0; policy accept;\n"
                    "  icmp type echo-request accept\n }\n}\n")

    result = trace(netns, family=4, proto="icmp", ident=4105, dst="127.0.0.1")

    assert result["reached"]
    assert drops(result) == []
    accepted = [(v["chain"], v["rule"]) for v in result["verdicts"]]
    assert ("input", "icmp type echo-request accept") in accepted
    assert all(v["table"] == "cntrace_test" for v in result["verdicts"])   # never our own


def test_rule_added_after_the_monitor_started_is_named(netns):
    """The monitor only knows the rules it read at start; the rule's text is
    then looked up by its handle."""
    nft_load(netns, "table inet cntrace_test {\n chain output {\n"
                    "  type filter hook output priority 0; policy accept;\n }\n}\n")

    result = trace(netns, family=4, proto="icmp", ident=4106, dst="127.0.0.1",
                   after_start="add rule inet cntrace_test output icmp id 4106 drop\n")

    [dropped] = drops(result)
    handle = handles(netns, "inet", "cntrace_test", "output")[dropped["rule"]]
    assert dropped["handle"] == handle and "icmp id 4106 drop" in dropped["rule"]


def test_start_and_stop_are_quick(netns):
    result = trace(netns, family=4, proto="icmp", ident=4107, dst="127.0.0.1")
    assert result["reached"]
    # Typically 10-25 ms and 15-35 ms here (see tracer/ping/nftrace.py); bound loosely.
    assert result["start_s"] + result["stop_s"] < scaled(0.5), result


def test_without_privilege_it_degrades_with_words(netns):
    result = trace(netns, user=65534, family=4, proto="udp", ident=40010, dst="127.0.0.1",
                   port=9)
    assert not result["available"]
    assert "privilege" in result["why_not"] and "CAP_NET_ADMIN" in result["why_not"]
    assert result["verdicts"] == []


@pytest.mark.parametrize("family, proto", [(4, "icmp"), (6, "icmp"), (4, "tcp"), (6, "tcp"),
                                           (4, "udp"), (6, "udp")])
def test_nft_accepts_every_ruleset(netns, family, proto):
    for replace in (False, True):
        in_netns(netns, "nft", "--check", "-f", "-",
                 input=build_ruleset(ProbeMatch(family, proto, 65535), "cntrace_trace_1",
                                     replace=replace))


def test_remove_leftovers_deletes_only_dead_processes_tables(netns):
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    nft_load(netns, f"table inet cntrace_trace_{dead.pid}\ntable inet cntrace_trace_{alive}\n")

    result = trace(netns, remove_leftovers=True)

    assert result["removed"] == [f"cntrace_trace_{dead.pid}"]
    assert trace_tables(netns) == [f"cntrace_trace_{alive}"]
    in_netns(netns, "nft", "delete", "table", "inet", f"cntrace_trace_{alive}")
