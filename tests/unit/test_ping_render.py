"""trace-ping's text rendering of a Result built from fake events: the
request and reply chains, a line per hop in time order, NAT, the verdict
with RTTs, and for a probe that stopped, the last hop, the drop and the
hints; never colour codes unless asked."""

from tests.unit import fakes
from tests.unit.test_picture import ICMP, TO_WAN, attr
from tracer.ping import pathtrace
from tracer.ping import probe_socket as probe
from tracer.ping import trace_ping as ping
from tracer.ping.diagnosis import Hint


def result(*events, answered=True, hints=()):
    trace = pathtrace.build([attr.attribute(e) for e in events], ICMP, sent_ns=500)
    source = ping.Source("a", "/proc/100/ns/net", fakes.topology().find_container("a"))
    outcomes = [probe.Outcome(seq=1, sent_ns=500, rtt_ns=1_250_000 if answered else None),
                probe.Outcome(seq=2, sent_ns=600, rtt_ns=750_000 if answered else None)]
    return ping.Result(source, ping.Destination("198.51.100.2", "198.51.100.2", None), "icmp",
                       None, ICMP, outcomes, trace, list(hints), [], lost_events=0)


def test_a_reachable_probe_reads_as_its_path_nat_and_rtts():
    text = ping.render(result(*TO_WAN))
    lines = text.splitlines()
    assert lines[0] == "trace-ping a -> 198.51.100.2: icmp echo id 7"
    # the chain, wrapped onto the lines under it
    request = " ".join(text.split("  request  ", 1)[1].split("\n\n", 1)[0].split())
    for device in ("eth0", "veth0aaaa", "docker0", "cntrace-wan0"):
        assert device in request, request
    assert request.index("eth0") < request.index("docker0") < request.index("cntrace-wan0")
    offsets = [float(line.split()[0]) for line in lines
               if line.startswith("  ") and line.split()[0].replace(".", "").isdigit()]
    assert offsets == sorted(offsets) and len(offsets) == len(TO_WAN)
    assert any(line.startswith("  nat:") and "198.51.100.1" in line for line in lines)
    assert "  REACHABLE: 2/2 answered, rtt min/avg/max 0.750/1.000/1.250 ms" in lines
    assert "\033[" not in text and max(map(len, lines)) < 100


def test_a_stopped_probe_says_where_and_why():
    drop = fakes.event(ts_ns=3_500, kind=fakes.DROP, hook="drop", drop_reason=12,
                       netns=fakes.HOST_NS, ifindex=6, ifname="docker0", dst="198.51.100.2")
    hint = Hint("firewall", "an iptables rule in DOCKER-USER drops it", True)
    text = ping.render(result(*TO_WAN[:3], drop, answered=False, hints=[hint]))
    assert "X dropped" in text
    assert "  NOT REACHABLE: 0/2 answered" in text
    assert "  dropped:  NETFILTER_DROP" in text and "on docker0" in text
    assert "  last hop: docker0" in text
    assert "  finding:  an iptables rule in DOCKER-USER drops it" in text
    coloured = ping.render(result(*TO_WAN[:3], drop, answered=False), color=True)
    assert "\033[31mNOT REACHABLE\033[0m" in coloured
