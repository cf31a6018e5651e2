"""A small fake host for pure-logic tests: containers a (172.17.0.2) and
b (172.17.0.3) on docker0, the host's wan-side veth."""

from tracer.host.topology import (
    ROLE_BRIDGE,
    ROLE_CONTAINER,
    ROLE_HOST,
    ROLE_VETH_HOST,
    Container,
    Interface,
    Network,
    Topology,
)
from tracer.kernel.wire import EVENT_DROP, EVENT_PACKET, IPS_SRC_NAT, Conntrack, Event, Tuple

HOST_NS, A_NS, B_NS = 4026531833, 4026532185, 4026532260


def iface(netns, ifindex, name, role, container=None, cid=None, network=None):
    return Interface(netns, ifindex, name, role, None, (), container, cid, network, None, None)


def topology() -> Topology:
    a = Container("aaaa1111", "a", 100, A_NS, {"bridge": "172.17.0.2"}, {"bridge": "fd00::2"})
    b = Container("bbbb2222", "b", 200, B_NS, {"bridge": "172.17.0.3"})
    interfaces = [
        iface(A_NS, 10, "eth0", ROLE_CONTAINER, "a", a.id, "bridge"),
        iface(HOST_NS, 11, "veth0aaaa", ROLE_VETH_HOST, "a", a.id, "bridge"),
        iface(B_NS, 10, "eth0", ROLE_CONTAINER, "b", b.id, "bridge"),
        iface(HOST_NS, 13, "veth0bbbb", ROLE_VETH_HOST, "b", b.id, "bridge"),
        iface(HOST_NS, 6, "docker0", ROLE_BRIDGE, network="bridge"),
        iface(HOST_NS, 20, "cntrace-wan0", ROLE_HOST),
    ]
    return Topology(
        host_netns=HOST_NS,
        interfaces={(i.netns, i.ifindex): i for i in interfaces},
        containers={a.id: a, b.id: b},
        networks={"bridge": Network("n1", "bridge", "bridge", "docker0", ("172.17.0.0/16",),
                                    "172.17.0.1")},
    )


def event(**overrides) -> Event:
    fields = dict(
        ts_ns=1_000, skb=0xABC, kind=EVENT_PACKET, hook="tx", netns=A_NS, ifindex=10,
        ifname="eth0", in_ifindex=0, out_ifindex=0, length=84, family=4, proto=1,
        src="172.17.0.2", dst="172.17.0.3", sport=7, dport=1, icmp_type=8, icmp_code=0,
        inner_proto=0, tcp_flags=0, drop_reason=0, location=0, conntrack=None,
    )
    fields.update(overrides)
    return Event(**fields)


SNAT = Conntrack(
    orig=Tuple("172.17.0.2", "198.51.100.2", 7, 0),
    reply=Tuple("198.51.100.2", "198.51.100.1", 0, 7),
    status=IPS_SRC_NAT,
)
DROP = EVENT_DROP
