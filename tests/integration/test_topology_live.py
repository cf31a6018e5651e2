"""discover() on the real testbed, checked against the kernel's own answers:
/proc/<pid>/ns/net inodes and `ip -j link` parsed here, independently of
pyroute2."""

import json
import os
import subprocess

import docker
import pytest

from tracer.errors import DockerUnavailableError
from tracer.host.docker_engine import discover, docker_client
from tracer.host.topology import ROLE_BRIDGE, ROLE_CONTAINER, ROLE_HOST, ROLE_VETH_HOST
from tracer.host.topology_text import format_text
from tracer.testbed import WAN_HOST_IFNAME


def _ip_links(pid: int | None = None) -> dict[int, dict]:
    """`ip -j link` of the host, or of a process's netns via nsenter."""
    cmd = ["ip", "-j", "link", "show"]
    if pid is not None:
        cmd = ["nsenter", "-t", str(pid), "-n", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {link["ifindex"]: link for link in json.loads(out)}


@pytest.fixture(scope="module")
def topo(docker_client, testbed):
    return discover(docker_client)


@pytest.mark.integration
def test_host_netns_is_ours(topo):
    assert topo.host_netns == os.stat("/proc/self/ns/net").st_ino


@pytest.mark.integration
def test_a_eth0_and_its_host_veth(topo, testbed):
    a = testbed.containers["a"]
    inode = os.stat(f"/proc/{a.pid}/ns/net").st_ino
    inside = {i["ifname"]: i for i in _ip_links(a.pid).values()}
    eth0 = topo.lookup(inode, inside["eth0"]["ifindex"])
    assert eth0 is not None
    assert (eth0.role, eth0.name, eth0.container, eth0.network) == (
        ROLE_CONTAINER,
        "eth0",
        a.name,
        "bridge",
    )
    assert eth0.addresses[0] == f"{a.ip}/16"
    assert eth0.peer_ifindex == inside["eth0"]["link_index"]

    host = _ip_links()
    veth = topo.lookup(topo.host_netns, eth0.peer_ifindex)
    assert veth is not None
    assert veth.role == ROLE_VETH_HOST
    assert (veth.container, veth.container_id) == (a.name, a.id)
    assert veth.name == host[veth.ifindex]["ifname"]
    assert host[veth.ifindex]["master"] == "docker0"
    assert host[veth.ifindex]["link_index"] == eth0.ifindex
    docker0 = topo.lookup(topo.host_netns, veth.master_ifindex)
    assert (docker0.name, docker0.role, docker0.network) == ("docker0", ROLE_BRIDGE, "bridge")


@pytest.mark.integration
def test_c_veth_is_enslaved_to_the_user_bridge(topo, testbed):
    c = testbed.containers["c"]
    host = _ip_links()
    [veth] = [
        i for i in topo.interfaces.values() if i.role == ROLE_VETH_HOST and i.container_id == c.id
    ]
    assert veth.network == testbed.user_network
    bridge = topo.lookup(topo.host_netns, veth.master_ifindex)
    assert (bridge.name, bridge.role, bridge.network) == (
        c.bridge,
        ROLE_BRIDGE,
        testbed.user_network,
    )
    assert host[veth.ifindex]["master"] == c.bridge
    assert topo.networks[testbed.user_network].bridge == c.bridge


@pytest.mark.integration
def test_wan_veth_and_uplink_are_host_interfaces(topo):
    by_name = {i.name: i for i in topo.interfaces.values() if i.netns == topo.host_netns}
    wan = by_name[WAN_HOST_IFNAME]
    assert wan.role == ROLE_HOST
    assert wan.container is None
    assert not wan.uplink
    assert by_name["eth0"].role == ROLE_HOST
    assert by_name["eth0"].uplink


@pytest.mark.integration
def test_containers_are_found_by_name_id_and_address(topo, testbed):
    for info in testbed.containers.values():
        c = topo.find_container(info.name)
        assert c.id == info.id
        assert c.netns == info.netns_inode
        assert topo.find_container("/" + info.name) is c
        assert topo.find_container(info.id[:12]) is c
        assert topo.container_by_address(info.ip) is c


@pytest.mark.integration
def test_format_text_shows_the_testbed(topo, testbed):
    text = format_text(topo)
    assert max(len(line) for line in text.splitlines()) < 80
    for info in testbed.containers.values():
        assert info.name in text
        assert info.ip in text
    assert "docker0" in text
    assert WAN_HOST_IFNAME in text
    json.dumps(topo.to_dict())


def test_unreachable_engine_is_one_line_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")
    with pytest.raises(DockerUnavailableError) as err:
        docker_client()
    message = str(err.value)
    assert message.startswith("cannot reach the Docker engine at unix:///nonexistent: ")
    assert "\n" not in message
    assert err.value.exit_code == 5


def test_discover_with_a_dead_engine_is_one_line_error():
    client = docker.DockerClient(base_url="unix:///nonexistent", version="1.41")
    with pytest.raises(DockerUnavailableError) as err:
        discover(client)
    assert "\n" not in str(err.value)
