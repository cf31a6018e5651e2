"""Reading the host's state: /proc/net socket tables, Docker's MASQUERADE
rules from a counter snapshot, a listener's address match."""

import pytest

from tracer.ping import pathstate
from tracer.ping.iptables_counters import RuleCounter

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0300A8C0:0016 0100A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0
   1: 0000000000000000FFFF00000300A8C0:01BB 00000000000000000000000000000000:0000 0A 0 0 0
"""
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
  100: 0B00007F:93E0 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0
  101: 0200A8C0:0035 0100A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0
"""


def test_tcp_listeners_only():
    assert pathstate.parse_sockets(TCP, "tcp") == [
        pathstate.Listener("tcp", "127.0.0.1", 8080)]


def test_ipv6_and_mapped_addresses():
    assert pathstate.parse_sockets(TCP6, "tcp") == [
        pathstate.Listener("tcp", "::", 80),
        pathstate.Listener("tcp", "192.168.0.3", 443)]


def test_udp_unconnected_sockets_are_the_listeners():
    assert pathstate.parse_sockets(UDP, "udp") == [
        pathstate.Listener("udp", "127.0.0.11", 37856)]


@pytest.mark.parametrize("bound, address, accepts", [
    ("0.0.0.0", "172.17.0.3", True), ("::", "172.17.0.3", True),
    ("127.0.0.1", "172.17.0.3", False), ("172.17.0.3", "172.17.0.3", True),
])
def test_a_listener_accepts_its_address_or_any(bound, address, accepts):
    assert pathstate.Listener("tcp", bound, 80).accepts(address) is accepts


def test_masquerade_rules_come_from_the_nat_table():
    counters = {
        1: RuleCounter("ipv4", "nat", "POSTROUTING",
                       "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                       "MASQUERADE", 0, 0, 1),
        2: RuleCounter("ipv4", "filter", "FORWARD", "-A FORWARD -j MASQUERADE", "MASQUERADE",
                       0, 0, 1),
        3: RuleCounter("ipv4", "nat", "DOCKER", "-A DOCKER -i docker0 -j RETURN", "RETURN",
                       0, 0, 1),
    }
    assert pathstate.masquerade_rules(counters) == [
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]


def test_route_next_hop_is_the_gateway_or_the_destination():
    assert pathstate.RouteState("a", "198.51.100.2", "unicast", "eth0", "172.17.0.1",
                                None).next_hop == "172.17.0.1"
    assert pathstate.RouteState("a", "172.17.0.3", "unicast", "eth0", None,
                                None).next_hop == "172.17.0.3"
