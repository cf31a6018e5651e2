"""The seed story, traced: a ping from container a to container b is seen at
every hop both ways, attributed, and a ping to the wan host leaves the uplink
SNATed.  Expected values come from Docker (the testbed) and `ip -j`."""

from __future__ import annotations

import re

import pytest

from tests.integration.helpers import hops_of, link, netns_inode, run_events
from tracer.testbed import ping

pytestmark = pytest.mark.integration


def find(events, **want):
    return [e for e in events if all(e.get(k) == v for k, v in want.items())]


@pytest.mark.kernel
def test_ping_between_containers_is_seen_at_every_hop(testbed, docker_client, record_property):
    a, b = testbed.containers["a"], testbed.containers["b"]
    ha, hb = hops_of(a), hops_of(b)
    host = netns_inode()
    bridge = link(ha["bridge"])

    def send():
        code, out = ping(docker_client, a.name, b.ip, allowed=[a.bridge], count=1)
        assert code == 0, out

    events, err = run_events(["-c", a.name, "-p", "icmp"], send)
    # For the kernel matrix's table (tests/vm/matrix.py): "13/13 (fentry, ...)".
    tracing = re.search(r"tracing on (\d+/\d+) hooks \(([^)]*)\)", err)
    record_property("events_hooks", f"{tracing[1]} ({tracing[2]})" if tracing else "?")
    request = [e for e in events if e.get("icmp_type") == 8 and e["dst"] == b.ip]
    reply = [e for e in events if e.get("icmp_type") == 0 and e["src"] == b.ip]
    assert request and reply, events

    expected_request = [
        dict(hook="tx", netns=ha["netns"], ifindex=ha["eth0"], role="container",
             container=a.name),
        dict(hook="rx", netns=host, ifindex=ha["veth"], ifname=ha["veth_name"],
             role="veth-host", container=a.name),
        dict(hook="FORWARD", netns=host, ifindex=bridge["ifindex"], role="bridge",
             ifname=ha["bridge"]),
        dict(hook="tx", netns=host, ifindex=hb["veth"], ifname=hb["veth_name"],
             role="veth-host", container=b.name),
        dict(hook="rx", netns=hb["netns"], ifindex=hb["eth0"], role="container",
             container=b.name),
    ]
    expected_reply = [
        dict(hook="tx", netns=hb["netns"], ifindex=hb["eth0"], container=b.name),
        dict(hook="rx", netns=host, ifindex=hb["veth"], container=b.name),
        dict(hook="FORWARD", netns=host, ifindex=bridge["ifindex"], role="bridge"),
        dict(hook="tx", netns=host, ifindex=ha["veth"], container=a.name),
        dict(hook="rx", netns=ha["netns"], ifindex=ha["eth0"], container=a.name),
    ]
    for seen, expected in ((request, expected_request), (reply, expected_reply)):
        times = []
        for hop in expected:
            matches = find(seen, **hop)
            assert matches, f"no event {hop} in {seen}"
            times.append(matches[0]["ts_ns"])
        assert times == sorted(times), "hops out of order"
    for e in request:
        assert (e["src"], e["dst"]) == (a.ip, b.ip)
        assert (e["src_container"], e["dst_container"]) == (a.name, b.name)
    for e in reply:
        assert (e["src_container"], e["dst_container"]) == (b.name, a.name)


@pytest.mark.kernel
def test_ping_to_wan_leaves_the_uplink_snated(testbed, docker_client):
    a = testbed.containers["a"]
    uplink = link(testbed.wan_host_ifname)

    def send():
        code, out = ping(docker_client, a.name, testbed.wan_ip,
                         allowed=[testbed.wan_host_ifname], count=1)
        assert code == 0, out

    events, _ = run_events(["-c", a.name, "-p", "icmp"], send)
    leaving = find(events, hook="tx", ifindex=uplink["ifindex"], icmp_type=8)
    assert leaving, events
    packet = leaving[0]
    # The container's address was rewritten to the host's wan-side address...
    assert (packet["src"], packet["dst"]) == (testbed.wan_host_ip, testbed.wan_ip)
    # ...and conntrack, read in BPF, still names the container.
    assert packet["conntrack"]["orig"]["src"] == a.ip
    assert packet["conntrack"]["snat"] is True
    assert packet["nat"] == f"snat {a.ip} -> {testbed.wan_host_ip}"
    assert packet["src_container"] == a.name and packet["role"] == "host"
    post = find(events, hook="POSTROUTING", icmp_type=8, src=testbed.wan_host_ip)
    assert post and post[0]["out_ifindex"] == uplink["ifindex"]
    # The reply is translated back before it reaches the container.
    back = find(events, hook="rx", icmp_type=0, netns=netns_inode(a.pid), src=testbed.wan_ip)
    assert back and back[0]["dst"] == a.ip
