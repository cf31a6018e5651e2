"""Path building and diagnosis over synthetic events: each hint fires on its
evidence and stays a "possible" cause without it."""

import pytest

from tests.unit import fakes
from tracer.kernel import wire
from tracer.ping import diagnosis, pathstate, pathtrace
from tracer.ping.iptables_counters import RuleCounter, RuleHit
from tracer.stream.attribution import Attributor

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


# ------------------------------------------- the host's state along the path


def state(**parts):
    return pathstate.PathState(**parts)


def device(name, place="host", up=True, carrier=True, mtu=1500, master=None):
    return pathstate.DeviceState(place, name, 5, "veth", up, carrier, mtu, master)


def test_hints_come_in_precedence_order_findings_first():
    broken = state(devices=[device("veth0bbbb", up=False)],
                   routes=[pathstate.RouteState("a", "172.17.0.3", "none", None, None, None)])
    hints = diagnosis.diagnose(trace_with_drop(12), [hit("DOCKER-USER")], context(), host(),
                               broken)
    assert [h.kind for h in hints] == ["device-down", "no-route", "firewall-rule"]
    assert all(h.finding for h in hints)
    assert hints == sorted(hints, key=lambda h: h.precedence)


def test_a_down_device_and_a_missing_carrier_are_named_with_their_place():
    found = diagnosis.diagnose(pathtrace.PathTrace(), [], context(), host(), state(devices=[
        device("eth0", place="a", up=False), device("veth0bbbb", carrier=False)]))
    assert texts(found)[:2] == [
        "interface eth0 in a on the probe's path is down (nsenter -n -t <pid of a> ip link "
        "set eth0 up)",
        "interface veth0bbbb is up but has no carrier: the other end of its veth pair is down"]


def test_a_veth_in_the_wrong_bridge_is_named():
    ports = [pathstate.BridgePort("b", "veth0bbbb", "bridge", "docker0", "br-other")]
    found = texts(diagnosis.diagnose(pathtrace.PathTrace(), [], context(), host(),
                                     state(bridge_ports=ports)))
    assert found[0] == ("veth0bbbb, the host end of b's veth, is a port of br-other; docker "
                        "network bridge needs it in bridge docker0 (ip link set veth0bbbb "
                        "master docker0)")


@pytest.mark.parametrize("evidence, finding", [
    (dict(socket_errors=["Message too long"]), True),
    (dict(icmp_errors=[(3, 4)], icmp_mtu=1280), True),
    ({}, False),
])
def test_mtu_needs_evidence_to_be_a_finding(evidence, finding):
    ctx = context(size=1400, **evidence)
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], ctx, host(),
                               state(devices=[device("cntrace-wan0", mtu=1280)]))
    mtu = [h for h in hints if h.kind == "mtu"]
    assert mtu[0].finding is finding
    assert "larger than the MTU of cntrace-wan0 (1280)" in mtu[0].text
    assert not any(h.kind == "icmp-error" for h in hints)   # frag-needed is told as MTU


def test_a_failed_neighbour_is_named():
    neighbours = [pathstate.NeighbourState("a", "eth0", "172.17.0.254", "FAILED")]
    found = texts(diagnosis.diagnose(pathtrace.PathTrace(), [], context(), host(),
                                     state(neighbours=neighbours)))
    assert found[0].startswith("in a, the next hop 172.17.0.254 on eth0 does not answer ARP")


def test_a_private_source_leaving_the_uplink_is_a_missing_snat():
    leaving = fakes.event(ts_ns=4_000, hook="tx", netns=fakes.HOST_NS, ifindex=20,
                          ifname="cntrace-wan0", dst="198.51.100.2")
    trace = pathtrace.build(items(*REQUEST_HOPS, leaving), ICMP, sent_ns=500)
    network = fakes.topology().networks["bridge"]
    ctx = context(outside=True, src_address="172.17.0.2", src_docker_networks=(network,),
                  dst_networks=set(), dst_netns=None)
    routes = [pathstate.RouteState("host", "198.51.100.2", "unicast", "cntrace-wan0", None,
                                   None)]
    found = texts(diagnosis.diagnose(trace, [], ctx, host(), state(routes=routes)))
    assert "left the host on cntrace-wan0 still carrying the source's private source " \
           "172.17.0.2" in found[0]
    assert "no MASQUERADE rule for 172.17.0.0/16" in found[0]
    with_rule = state(routes=routes, masquerade_rules=[
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"])
    found = texts(diagnosis.diagnose(trace, [], ctx, host(), with_rule))
    assert "MASQUERADE" not in found[0]


def test_a_listener_on_another_address_is_named():
    sockets = {"b": [pathstate.Listener("tcp", "127.0.0.1", 8080)]}
    ctx = context(proto=6, port=8080, tcp_reset=True, dst_address="172.17.0.3")
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], ctx, host(),
                               state(listeners=sockets))
    assert hints[0].kind == "wrong-address"
    assert "tcp port 8080 is bound to 127.0.0.1 only, not to 172.17.0.3" in hints[0].text


def test_no_listener_says_what_listens():
    sockets = {"b": [pathstate.Listener("tcp", "0.0.0.0", 80)]}
    ctx = context(proto=6, port=81, tcp_reset=True, dst_address="172.17.0.3")
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], ctx, host(),
                               state(listeners=sockets))
    assert hints[0].kind == "no-listener"
    assert hints[0].text.endswith("in b, tcp sockets listen on: 0.0.0.0:80")


@pytest.mark.parametrize("rcode, kind", [
    ("NXDOMAIN", "dns-nxdomain"), ("REFUSED", "dns-refused"), ("SERVFAIL", "dns-error"),
])
def test_dns_answers_are_diagnosed(rcode, kind):
    facts = diagnosis.DnsFacts("db.test", "198.51.100.2", rcode, (), False)
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], context(proto=17, port=53,
                               dns=facts), host(), state())
    assert hints[0].kind == kind and "198.51.100.2" in hints[0].text


def test_docker_dns_without_its_listener_is_named():
    facts = diagnosis.DnsFacts("db", "127.0.0.11", None, (), True)
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], context(proto=17, port=53,
                               dns=facts, source="a"), host(),
                               state(listeners={"a": [pathstate.Listener("udp", "0.0.0.0",
                                                                          68)]}))
    assert hints[0].kind == "dns-no-resolver"
    assert "nothing listens on 127.0.0.11 in a" in hints[0].text


# ------------------------------------------------------------------- noise


def test_the_leftover_copy_and_flooded_copies_are_noise_not_drops():
    reply = fakes.event(ts_ns=5_000, hook="rx", icmp_type=0, src="172.17.0.3",
                        dst="172.17.0.2")
    leftover = fakes.event(ts_ns=5_100, kind=fakes.DROP, hook="drop", icmp_type=0,
                           src="172.17.0.3", dst="172.17.0.2", drop_reason=2)
    other_ns = 4026539999
    flooded = fakes.event(ts_ns=3_600, kind=fakes.DROP, hook="drop", drop_reason=3,
                          netns=other_ns, ifindex=10)
    delivered_elsewhere = fakes.event(ts_ns=3_700, hook="rx", netns=other_ns, ifindex=10)
    named = Attributor(fakes.topology, drop_reasons={2: "NO_SOCKET", 3: "OTHERHOST"})
    trace = pathtrace.build([named.attribute(e) for e in (*REQUEST_HOPS, flooded,
                             delivered_elsewhere, reply, leftover)], ICMP, sent_ns=500)
    pathtrace.separate_noise(trace, {fakes.HOST_NS, fakes.A_NS, fakes.B_NS}, fakes.A_NS,
                             fakes.B_NS, answered=True)
    assert trace.request_drops == [] and trace.reply_drops == []
    assert [h.noise for h in trace.noise] == [pathtrace.NOISE_OFF_PATH] * 2 + [
        pathtrace.NOISE_LEFTOVER]
    assert [h.item.event.hook for h in trace.request] == ["tx", "rx", "FORWARD"]


def test_a_drop_on_the_path_stays_a_drop():
    trace = trace_with_drop(12)
    pathtrace.separate_noise(trace, {fakes.HOST_NS, fakes.A_NS, fakes.B_NS}, fakes.A_NS,
                             fakes.B_NS, answered=False)
    assert len(trace.request_drops) == 1 and trace.noise == []


def test_strict_rp_filter_with_a_way_back_elsewhere_is_named():
    ports = [pathstate.BridgePort("a", "veth0aaaa", "bridge", "docker0", "docker0")]
    back = pathstate.RouteState("host", "172.17.0.2", "unicast", "cntrace-wan0", None, None)
    ctx = context(source="a", src_address="172.17.0.2")
    hints = diagnosis.diagnose(pathtrace.PathTrace(), [], ctx, host(),
                               state(bridge_ports=ports, routes=[back],
                                     rp_filter={"docker0": 1}))
    assert hints[0].kind == "rp-filter"
    assert "routes 172.17.0.2 back via cntrace-wan0, not docker0" in hints[0].text
    loose = diagnosis.diagnose(pathtrace.PathTrace(), [], ctx, host(),
                               state(bridge_ports=ports, routes=[back],
                                     rp_filter={"docker0": 2}))
    assert "rp-filter" not in [h.kind for h in loose]
