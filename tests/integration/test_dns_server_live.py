"""tracer.ping.dns against a real DNS server over a real socket: the test resolver runs on
127.0.0.1 inside a throwaway netns, and each query is sent from a socket opened in that
netns the way trace-ping opens its probes (tracer.ping.probe_socket.open_socket).
The netns has only lo, so no query can leave it.  Needs root (ip netns) but no Docker.

Each test gets a fresh netns; its teardown checks that no process is left inside it
(`ip netns pids`), kills any that is, and deletes the netns.
"""

import os
import random
import shutil
import signal
import socket
import subprocess

import pytest

from tests.integration.dns_server import ResolverNotReady, resolver_in_netns
from tracer.ping.dns import (
    QTYPE_A,
    QTYPE_AAAA,
    RCODES,
    DnsAnswer,
    build_query,
    parse_response,
)
from tracer.ping.probe_socket import open_socket

pytestmark = pytest.mark.integration

NETNS = "cntrace-dnstest"
NETNS_PATH = f"/run/netns/{NETNS}"
RESOLVER = "127.0.0.1"
ANSWERS = {"web.test": "10.0.0.5", "v6.test": "fd00::5"}
QUERY_TIMEOUT = 2.0


def netns_pids() -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", NETNS], check=True, capture_output=True,
                         text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates the network namespace " + NETNS)
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` (apt-get install iproute2)")
    if os.path.exists(NETNS_PATH):
        pytest.fail(f"netns {NETNS} is left from an earlier run; remove it: ip netns del {NETNS}")
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
        yield NETNS
        left = netns_pids()
        for pid in left:   # only what this test started can be inside this netns
            os.kill(pid, signal.SIGKILL)
        assert left == [], f"processes left in netns {NETNS}: {left}"
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


@pytest.fixture
def resolver(netns):
    with resolver_in_netns(netns, RESOLVER, ANSWERS, refuse=["refused.test"],
                           silent=["silent.test"]) as bound:
        yield bound


def query(name: str, qtype: int = QTYPE_A, port: int = 53) -> tuple[int, DnsAnswer | None]:
    """(txid, parsed answer) for one query sent from inside the netns."""
    txid = random.randint(0, 0xFFFF)
    with open_socket(NETNS_PATH, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        sock.sendto(build_query(name, txid, qtype), (RESOLVER, port))
        data = sock.recv(4096)
    return txid, parse_response(data, txid)


@pytest.mark.parametrize("name, qtype, rcode, addresses", [
    ("web.test", QTYPE_A, 0, ("10.0.0.5",)),
    ("WEB.Test.", QTYPE_A, 0, ("10.0.0.5",)),
    ("v6.test", QTYPE_AAAA, 0, ("fd00::5",)),
    ("v6.test", QTYPE_A, 0, ()),          # the name exists, with no A record
    ("absent.test", QTYPE_A, 3, ()),
    ("refused.test", QTYPE_A, 5, ()),
])
def test_answers(resolver, name, qtype, rcode, addresses):
    assert resolver == (RESOLVER, 53)
    txid, answer = query(name, qtype)
    assert answer == DnsAnswer(txid=txid, rcode=rcode, rcode_name=RCODES[rcode],
                               addresses=addresses, truncated=False, authoritative=True)


def test_silent_name_times_out_and_the_resolver_keeps_answering(resolver):
    with pytest.raises(TimeoutError):
        query("silent.test")
    _, answer = query("web.test")
    assert answer is not None and answer.addresses == ("10.0.0.5",)


def test_resolver_is_gone_when_the_body_raises(netns):
    with pytest.raises(RuntimeError, match="the test failed"), \
            resolver_in_netns(netns, RESOLVER, ANSWERS, port=5353) as (_, port):
        assert port == 5353 and len(netns_pids()) == 1
        assert query("web.test", port=5353)[1].addresses == ("10.0.0.5",)
        raise RuntimeError("the test failed")
    assert netns_pids() == []
    # Nothing listens any more: the kernel's ICMP port unreachable says so at once.
    with pytest.raises(ConnectionRefusedError), \
            open_socket(NETNS_PATH, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(QUERY_TIMEOUT)
        sock.connect((RESOLVER, 5353))
        sock.send(build_query("web.test", 1))
        sock.recv(4096)


def test_port_zero_yields_the_bound_port(netns):
    with resolver_in_netns(netns, RESOLVER, ANSWERS, port=0) as (address, port):
        assert address == RESOLVER and port > 0
        assert query("web.test", port=port)[1].addresses == ("10.0.0.5",)


@pytest.mark.parametrize("netns_name, address, says", [
    ("cntrace-dnstest-absent", RESOLVER, "cntrace-dnstest-absent"),   # ip's own complaint
    (NETNS, "10.9.9.9", "cannot bind 10.9.9.9 port 53"),              # not an address there
])
def test_resolver_that_cannot_start_says_why(netns, netns_name, address, says):
    with pytest.raises(ResolverNotReady, match="exited") as caught, \
            resolver_in_netns(netns_name, address, ANSWERS):
        pass
    assert says in str(caught.value)
