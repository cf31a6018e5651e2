"""The seed story on a real engine: a pings b over docker0, a reaches the
"Internet" (the wan netns) through docker's MASQUERADE, c lives on its own
network, and nothing is sent anywhere a route lookup did not approve."""

import os
import subprocess
from dataclasses import asdict

import pytest
from pyroute2 import IPRoute, netns

from tracer.errors import UnsafeTargetError
from tracer.testbed import WAN_HOST_IFNAME, WAN_NETNS, check_route, ping

pytestmark = pytest.mark.integration


def test_up_is_idempotent(testbed_env, testbed):
    again = testbed_env.up()
    assert asdict(again) == asdict(testbed)
    assert {c.id for c in again.containers.values()} == {c.id for c in testbed.containers.values()}


def test_info_matches_the_kernel(testbed):
    for c in testbed.containers.values():
        assert os.stat(f"/proc/{c.pid}/ns/net").st_ino == c.netns_inode
    assert len({c.netns_inode for c in testbed.containers.values()}) == 3


def test_a_pings_b_over_docker0(docker_client, testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    assert a.network == b.network == "bridge"
    assert check_route(b.ip, ["docker0"]) == "docker0"
    code, out = ping(docker_client, a.name, b.ip, ["docker0"])
    assert code == 0, out
    assert "1 packets received" in out


def test_a_reaches_wan_through_masquerade(docker_client, testbed):
    a = testbed.containers["a"]
    assert check_route(testbed.wan_ip, [WAN_HOST_IFNAME]) == WAN_HOST_IFNAME
    # Forget earlier flows between these two only, so what we read is this ping's.
    subprocess.run(
        ["conntrack", "-D", "-p", "icmp", "-s", a.ip, "-d", testbed.wan_ip],
        capture_output=True,
        check=False,
    )
    code, out = ping(docker_client, a.name, testbed.wan_ip, [WAN_HOST_IFNAME])
    assert code == 0, out
    listing = subprocess.run(
        ["conntrack", "-L", "-p", "icmp", "-s", a.ip, "-d", testbed.wan_ip],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flows = [line for line in listing.splitlines() if f"src={a.ip} dst={testbed.wan_ip}" in line]
    assert flows, listing
    # reply direction: the wan host answers the host-side address, not the container
    assert f"src={testbed.wan_ip} dst={testbed.wan_host_ip}" in flows[0]


def test_c_is_on_the_user_network(docker_client, testbed):
    c = testbed.containers["c"]
    assert c.network == testbed.user_network == "cntrace-test-net"
    net = docker_client.networks.get(testbed.user_network)
    assert c.id in {x.id for x in net.containers}
    assert c.bridge.startswith("br-")
    subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
    assert subnet != "172.17.0.0/16"
    assert check_route(c.ip, [c.bridge]) == c.bridge
    code, out = ping(docker_client, c.name, testbed.wan_ip, [WAN_HOST_IFNAME])
    assert code == 0, out


def test_check_route_refuses_the_uplink():
    # Route lookup only: 192.0.2.77 is beyond eth0, so nothing may be sent there.
    with pytest.raises(UnsafeTargetError) as err:
        check_route("192.0.2.77", [WAN_HOST_IFNAME, "docker0"])
    assert "192.0.2.77" in str(err.value)
    assert "eth0" in str(err.value)
    assert err.value.exit_code == 6
    with pytest.raises(UnsafeTargetError, match="not an IP address"):
        check_route("wan.example", [WAN_HOST_IFNAME])


def _leftovers(client, bed) -> list[str]:
    found = [c.name for c in client.containers.list(all=True) if c.name.startswith(bed.prefix)]
    found += [n.name for n in client.networks.list() if n.name == bed.user_network]
    if WAN_NETNS in netns.listnetns():
        found.append(f"netns {WAN_NETNS}")
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=WAN_HOST_IFNAME):
            found.append(f"link {WAN_HOST_IFNAME}")
    return found


def test_down_leaves_nothing_behind(docker_client, testbed_env, testbed):
    testbed_env.down()
    testbed_env.down()  # a second down finds nothing to do and does not fail
    assert _leftovers(docker_client, testbed_env) == []
    # Bring it back for tests that run after this one and share the session's info.
    vars(testbed).update(vars(testbed_env.up()))
