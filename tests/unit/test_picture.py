"""The terminal figure of one probe: a box per netns crossed, devices and
NAT inside, an X where it stopped, never 80 columns or more."""

from types import SimpleNamespace

from tests.unit import fakes
from tracer.ping import pathtrace, picture
from tracer.ping.trace_ping import Destination, Source
from tracer.stream.attribution import Attributor

attr = Attributor(fakes.topology, drop_reasons={12: "NETFILTER_DROP"})
ICMP = pathtrace.ProbeIdentity(proto=1, ident=7)
TO_WAN = (
    fakes.event(ts_ns=1_000, hook="tx", dst="198.51.100.2"),
    fakes.event(ts_ns=2_000, hook="rx", netns=fakes.HOST_NS, ifindex=11, ifname="veth0aaaa",
                dst="198.51.100.2"),
    fakes.event(ts_ns=3_000, hook="FORWARD", netns=fakes.HOST_NS, ifindex=6, ifname="docker0",
                dst="198.51.100.2"),
    fakes.event(ts_ns=4_000, hook="tx", netns=fakes.HOST_NS, ifindex=20,
                ifname="cntrace-wan0", src="198.51.100.1", dst="198.51.100.2",
                conntrack=fakes.SNAT),
)


def result(*events, reachable=True):
    trace = pathtrace.build([attr.attribute(e) for e in events], ICMP, sent_ns=500)
    source = Source("a", "/proc/100/ns/net", fakes.topology().find_container("a"))
    return SimpleNamespace(trace=trace, destination=Destination("198.51.100.2",
                           "198.51.100.2", None), source=source, reachable=reachable,
                           answered=reachable)


def test_a_reachable_probe_to_the_outside():
    lines = picture.draw(result(*TO_WAN))
    titles = [part.split()[0] for part in lines[0].split("+- ")[1:]]
    assert titles == ["a", "host", "198.51.100.2"]
    body = "\n".join(lines)
    assert "===" in lines[1] and "X" not in body
    for text in ("eth0", "veth0aaaa (veth)", "docker0 (bridge)", "snat 198.51.100.1",
                 "cntrace-wan0", "(beyond this host)"):
        assert text in body, (text, body)
    assert max(len(line) for line in lines) < 80


def test_a_drop_is_marked_where_it_happened():
    drop = fakes.event(ts_ns=3_500, kind=fakes.DROP, hook="drop", drop_reason=12,
                       netns=fakes.HOST_NS, ifindex=6, ifname="docker0", dst="198.51.100.2")
    lines = picture.draw(result(*TO_WAN[:3], drop, reachable=False))
    body = "\n".join(lines)
    assert "docker0 (bridge)  X" in body and "X NETFILTER_DROP" in body
    assert " X " in lines[1] and "(not reached)" in body
    assert max(len(line) for line in lines) < 80
