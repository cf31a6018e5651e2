"""Path building and diagnosis over synthetic events: each hint fires on its
evidence and stays a "possible" cause without it."""

import pytest

from tests.unit import fakes
from tracer import diagnosis, pathtrace, wire
from tracer.attribution import Attributor
from tracer.rules import RuleCounter, RuleHit

ICMP = pathtrace.ProbeIdentity(proto=1, ident=7)
attr = Attributor(fakes.topology, drop_reasons={12: "NETFILTER_DROP", 87: "IP_INADDRERRORS",
                                                58: "NEIGH_FAILED"})


def items(*events):
    return [attr.attribute(e) for e in events]


REQUEST_HOPS = (
    fakes.event(ts_ns=1_000, hook="tx"),
    fakes.event(ts_ns=2_000, hook="rx", netns=fakes.HOST_NS, ifindex=11),
    fakes.event(ts_ns=3_000, hook="FORWARD", netns=fakes.HOST_NS, ifindex=6),
)


def test_direction_of_icmp_and_errors():
    assert ICMP.direction(fakes.event()) == "request"
    assert ICMP.direction(fakes.event(icmp_type=0)) == "reply"
    assert ICMP.direction(fakes.event(sport=8)) is None
    assert ICMP.direction(fakes.event(icmp_type=3, inner_proto=1)) == "error"


def test_direction_of_tcp_through_dnat():
    tcp = pathtrace.ProbeIdentity(proto=6, ident=40000)
    ct = wire.Conntrack(
        orig=wire.Tuple("198.51.100.2", "198.51.100.1", 40000, 8080),
        reply=wire.Tuple("172.17.0.3", "198.51.100.2", 80, 40000), status=wire.IPS_DST_NAT)
    after_dnat = fakes.event(proto=6, src="198.51.100.2", dst="172.17.0.3", sport=40000,
                             dport=80, conntrack=ct)
    answer = fakes.event(proto=6, src="172.17.0.3", dst="198.51.100.2", sport=80,
                         dport=40000, conntrack=ct)
    assert tcp.direction(after_dnat) == "request"
    assert tcp.direction(answer) == "reply"


def test_build_orders_hops_and_splits_drops_from_a_window():
    late = fakes.event(ts_ns=9_000, hook="tx")               # the next probe's
    drop = fakes.event(ts_ns=3_500, kind=fakes.DROP, hook="drop", drop_reason=12,
                       netns=fakes.HOST_NS, ifindex=6)
    trace = pathtrace.build(items(*reversed(REQUEST_HOPS), drop, late), ICMP, sent_ns=500,
                            until_ns=8_000)
    assert [h.item.event.hook for h in trace.request] == ["tx", "rx", "FORWARD"]
    assert [h.offset_us for h in trace.request] == [0.5, 1.5, 2.5]
    assert trace.request_drops[0].item.drop_reason == "NETFILTER_DROP"
    assert pathtrace.chain(trace.request) == ["a eth0", "veth0aaaa[a]", "docker0"]


def host(**sysctls):
    return diagnosis.HostState(read_sysctl=lambda name: sysctls.get(name, "1"),
                               link_up=lambda name: name != "veth-down")


def context(**overrides):
    values = dict(family=4, proto=1, port=None, destination="b", src_networks={"bridge"},
                  dst_networks={"bridge"}, dst_netns=fakes.B_NS, host_devices=["docker0"],
                  socket_errors=[], icmp_errors=[], tcp_reset=False)
    values.update(overrides)
    return diagnosis.Context(**values)


def hit(chain, target="DROP"):
    counter = RuleCounter("ipv4", "filter", chain, f"-A {chain} -j {target}", target, 1, 84, 1)
    return RuleHit(counter, 1)


def texts(hints, finding=True):
    return [h.text for h in hints if h.finding == finding]


def trace_with_drop(reason):
    drop = fakes.event(ts_ns=3_500, kind=fakes.DROP, hook="drop", drop_reason=reason,
                       netns=fakes.HOST_NS, ifindex=6)
    return pathtrace.build(items(*REQUEST_HOPS, drop), ICMP, sent_ns=500)


@pytest.mark.parametrize("chain, expected", [
    ("DOCKER-USER", "firewall rule in chain DOCKER-USER"),
    ("DOCKER-ISOLATION-STAGE-2", "docker isolates these networks"),
    ("FORWARD", "firewall rule in chain FORWARD"),
])
def test_a_moved_drop_rule_is_named(chain, expected):
    hints = diagnosis.diagnose(trace_with_drop(12), [hit(chain)], context(), host())
    assert any(expected in t for t in texts(hints)), hints


def test_netfilter_drop_without_iptables_rule_points_at_nftables():
    hints = diagnosis.diagnose(trace_with_drop(12), [], context(), host())
    assert any("nft list ruleset" in t for t in texts(hints))


def test_forwarding_disabled_needs_the_sysctl_and_no_forward_hop():
    trace = pathtrace.build(items(*REQUEST_HOPS[:2]), ICMP, sent_ns=500)
    hints = diagnosis.diagnose(trace, [], context(), host(**{"net.ipv4.ip_forward": "0"}))
    assert any("net.ipv4.ip_forward=0" in t for t in texts(hints))
    # forwarding on: no such claim
    hints = diagnosis.diagnose(trace, [], context(), host())
    assert not any("ip_forward" in h.text for h in hints)


def test_neighbour_failure_down_link_and_port_unreachable():
    hints = diagnosis.diagnose(trace_with_drop(58), [], context(host_devices=["veth-down"],
                               icmp_errors=[(3, 3)], port=53, proto=17), host())
    found = " | ".join(texts(hints))
    assert "neighbour (ARP/NDP) lookup" in found
    assert "interface veth-down on the probe's path is down" in found
    assert "nothing listens on port 53" in found


def test_tcp_reset_means_no_listener():
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], context(proto=6, port=80,
                               tcp_reset=True), host())
    assert any("nothing listens on TCP port 80" in t for t in texts(hints))


def test_no_shared_network_is_only_possible_without_a_rule():
    ctx = context(src_networks={"net1"}, dst_networks={"bridge"})
    hints = diagnosis.diagnose(pathtrace.build(items(*REQUEST_HOPS), ICMP, 500), [], ctx, host())
    assert any("share no docker network" in t for t in texts(hints, finding=False))


def test_silence_after_delivery_says_the_destination_did_not_answer():
    delivered = fakes.event(ts_ns=4_000, hook="rx", netns=fakes.B_NS, ifindex=10)
    trace = pathtrace.build(items(*REQUEST_HOPS, delivered), ICMP, sent_ns=500)
    hints = diagnosis.diagnose(trace, [], context(), host())
    assert "reached b but nothing answered" in texts(hints)[0]


def test_nothing_seen_means_it_never_left():
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], context(), host())
    assert "never left" in texts(hints)[0]


@pytest.mark.parametrize("family, kind, code, text", [
    (4, 3, 1, "host unreachable"), (6, 1, 0, "no route"), (4, 11, 0, "time exceeded"),
    (4, 5, 1, "ICMP type 5 code 1"),
])
def test_icmp_error_text(family, kind, code, text):
    assert text in diagnosis.icmp_error_text(family, kind, code)
