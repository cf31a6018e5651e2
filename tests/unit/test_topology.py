"""Joining Docker's view with netlink's, over fixtures shaped like the real
output of `docker inspect` and pyroute2 on a host with two containers on
docker0 and one on a user network (as tracer/testbed.py builds it)."""

import json
import os

import docker
import pytest
import requests

from tracer.errors import DockerUnavailableError, UsageError
from tracer.host.docker_engine import discover
from tracer.host.join import assemble
from tracer.host.netlink import Link, NetnsLinks
from tracer.host.topology import (
    COMPOSE_PROJECT_LABEL,
    COMPOSE_SERVICE_LABEL,
    HOST_NETWORK,
    NO_NETWORK,
    ROLE_BRIDGE,
    ROLE_CONTAINER,
    ROLE_HOST,
    ROLE_VETH_HOST,
    SHARED_NETNS,
    PublishedPort,
    uncountable_reason,
)
from tracer.host.topology_text import format_text

HOST_NS = 4026531833
A_NS, B_NS, C_NS = 4026532185, 4026532260, 4026532335
A_ID = "aaaa1111" + "0" * 56
B_ID = "aaaa2222" + "0" * 56
C_ID = "cccc3333" + "0" * 56
USER_NET_ID = "5f248116d26e052fc57efd9390f7631e5e7b8dc1d5897b771ca2428f121d89e1"


def network(name, net_id, subnet, bridge_name=None, driver="bridge"):
    options = {"com.docker.network.bridge.name": bridge_name} if bridge_name else {}
    config = [{"Subnet": subnet, "Gateway": subnet.replace("0/16", "1")}] if subnet else []
    return {
        "Name": name,
        "Id": net_id,
        "Driver": driver,
        "Options": options,
        "IPAM": {"Driver": "default", "Config": config},
    }


NETWORKS = [
    network("bridge", "6d8f" + "0" * 60, "172.17.0.0/16", bridge_name="docker0"),
    network("cntrace-test-net", USER_NET_ID, "172.18.0.0/16"),
    network("host", "83c9" + "0" * 60, None, driver="host"),
    network("none", "4e7d" + "0" * 60, None, driver="null"),
]


def container(name, cid, pid, endpoints):
    return {
        "Id": cid,
        "Name": "/" + name,
        "State": {"Running": True, "Pid": pid},
        "NetworkSettings": {
            "Networks": {
                net: {"IPAddress": ip, "MacAddress": mac, "GlobalIPv6Address": ""}
                for net, (ip, mac) in endpoints.items()
            }
        },
    }


A = container("cntrace-test-a", A_ID, 101, {"bridge": ("172.17.0.2", "02:42:ac:11:00:02")})
B = container("cntrace-test-b", B_ID, 102, {"bridge": ("172.17.0.3", "02:42:ac:11:00:03")})
C = container(
    "cntrace-test-c", C_ID, 103, {"cntrace-test-net": ("172.18.0.2", "02:42:ac:12:00:02")}
)

LO = Link(1, "lo", None, None, ("127.0.0.1/8",))
HOST = NetnsLinks(
    HOST_NS,
    (
        LO,
        Link(4, "eth0", None, "02:fc:00:00:00:01", ("192.0.2.2/24",)),
        Link(6, "docker0", "bridge", "02:42:cb:24:c8:36", ("172.17.0.1/16",)),
        Link(15, "br-5f248116d26e", "bridge", "02:42:76:ec:db:d9", ("172.18.0.1/16",)),
        Link(17, "veth7cc78d5", "veth", "32:f8:19:fa:4f:3a", link=16, master=6),
        Link(19, "vethac43926", "veth", "8a:6e:17:be:bb:b4", link=16, master=6),
        Link(21, "veth8179b2a", "veth", "f2:ee:ca:57:e2:22", link=20, master=15),
        Link(22, "cntrace-wan0", "veth", "82:2e:bb:e3:ef:41", ("198.51.100.1/24",), link=2),
    ),
    default_oifs=frozenset({4}),
)


def eth0(ns, ifindex, peer, mac, ip):
    return NetnsLinks(ns, (LO, Link(ifindex, "eth0", "veth", mac, (f"{ip}/16",), link=peer)))


# a and b both have eth0 as ifindex 16 in their own netns: ifindexes repeat
# across namespaces, and only the two-way IFLA_LINK check tells the veths apart.
A_NS_LINKS = eth0(A_NS, 16, 17, "02:42:ac:11:00:02", "172.17.0.2")
B_NS_LINKS = eth0(B_NS, 16, 19, "02:42:ac:11:00:03", "172.17.0.3")
C_NS_LINKS = eth0(C_NS, 20, 21, "02:42:ac:12:00:02", "172.18.0.2")


@pytest.fixture
def topo():
    return assemble(HOST, [(A, A_NS_LINKS), (B, B_NS_LINKS), (C, C_NS_LINKS)], NETWORKS)


def test_container_eth0_is_role_container(topo):
    i = topo.lookup(A_NS, 16)
    assert (i.role, i.name, i.container, i.container_id) == (
        ROLE_CONTAINER,
        "eth0",
        "cntrace-test-a",
        A_ID,
    )
    assert (i.network, i.peer_ifindex, i.master_ifindex) == ("bridge", 17, None)
    assert topo.lookup(A_NS, 1).role == ROLE_CONTAINER
    assert topo.lookup(A_NS, 1).network is None


def test_host_veths_pair_with_the_right_container_despite_equal_ifindexes(topo):
    a_veth, b_veth = topo.lookup(HOST_NS, 17), topo.lookup(HOST_NS, 19)
    assert (a_veth.role, a_veth.container, a_veth.network) == (
        ROLE_VETH_HOST,
        "cntrace-test-a",
        "bridge",
    )
    assert (b_veth.role, b_veth.container) == (ROLE_VETH_HOST, "cntrace-test-b")
    assert (a_veth.peer_ifindex, a_veth.master_ifindex) == (16, 6)


def test_user_network_veth_and_bridges(topo):
    c_veth = topo.lookup(HOST_NS, 21)
    assert (c_veth.role, c_veth.container, c_veth.network, c_veth.master_ifindex) == (
        ROLE_VETH_HOST,
        "cntrace-test-c",
        "cntrace-test-net",
        15,
    )
    docker0, user_bridge = topo.lookup(HOST_NS, 6), topo.lookup(HOST_NS, 15)
    assert (docker0.role, docker0.network) == (ROLE_BRIDGE, "bridge")
    # a user network's bridge is br-<first 12 of the network id>, not in Options
    assert (user_bridge.role, user_bridge.network) == (ROLE_BRIDGE, "cntrace-test-net")
    assert topo.networks["cntrace-test-net"].bridge == "br-5f248116d26e"
    assert topo.networks["cntrace-test-net"].gateway == "172.18.0.1"
    assert topo.networks["host"].bridge is None


def test_other_host_interfaces_are_role_host(topo):
    roles = {i.name: (i.role, i.uplink) for i in topo.interfaces.values() if i.netns == HOST_NS}
    assert roles["lo"] == (ROLE_HOST, False)
    assert roles["eth0"] == (ROLE_HOST, True)
    assert roles["cntrace-wan0"] == (ROLE_HOST, False)
    assert topo.lookup(HOST_NS, 22).peer_ifindex == 2


def test_one_sided_ifla_link_does_not_pair():
    # x's eth0 claims host veth 17 as peer, but veth 17 points at ifindex 16, not 5.
    x = container("x", "ffff" + "0" * 60, 104, {"bridge": ("172.17.0.9", "02:42:ac:11:00:09")})
    topo = assemble(
        HOST, [(x, eth0(4026532999, 5, 17, "02:42:ac:11:00:09", "172.17.0.9"))], NETWORKS
    )
    assert topo.lookup(HOST_NS, 17).role == ROLE_HOST
    assert topo.lookup(HOST_NS, 17).network == "bridge"  # from its master, docker0


def test_host_and_shared_netns_containers():
    host_mode = container("hostnet", "dddd" + "0" * 60, 105, {"host": ("", "")})
    sidecar = container("sidecar", "eeee" + "0" * 60, 106, {})
    topo = assemble(HOST, [(A, A_NS_LINKS), (host_mode, HOST), (sidecar, A_NS_LINKS)], NETWORKS)
    assert topo.find_container("hostnet").netns == HOST_NS
    assert topo.find_container("hostnet").networks == {}
    assert topo.lookup(HOST_NS, 4).container is None
    # the sidecar shares a's netns: a's eth0 stays a's
    assert topo.find_container("sidecar").netns == A_NS
    assert topo.lookup(A_NS, 16).container == "cntrace-test-a"
    text = format_text(topo)
    assert "hostnet" in text and "in the host netns" in text
    assert "sidecar" in text and f"in netns {A_NS}" in text


def test_a_container_that_joined_another_netns_does_not_take_its_interfaces():
    """Docker lists newest first: the sidecar (--network container:a) comes
    before a, and a's eth0 and veth are still a's."""
    sidecar = {**container("sidecar", "eeee" + "0" * 60, 106, {}),
               "HostConfig": {"NetworkMode": f"container:{A_ID}"}}
    topo = assemble(HOST, [(sidecar, A_NS_LINKS), (A, A_NS_LINKS)], NETWORKS)
    assert topo.lookup(A_NS, 16).container == "cntrace-test-a"
    assert topo.lookup(HOST_NS, 17).container == "cntrace-test-a"
    assert uncountable_reason(topo, topo.find_container("sidecar")) == SHARED_NETNS
    assert uncountable_reason(topo, topo.find_container("cntrace-test-a")) is None


def test_why_a_container_cannot_be_counted():
    host_mode = {**container("hostnet", "dddd" + "0" * 60, 105, {"host": ("", "")}),
                 "HostConfig": {"NetworkMode": "host"}}
    lonely = container("lonely", "abab" + "0" * 60, 107, {})
    mac = container("mac", "acac" + "0" * 60, 108, {"lan": ("10.1.0.2", "02:42:0a:01:00:02")})
    mac_links = NetnsLinks(4026533001, (LO, Link(2, "eth0", "macvlan", "02:42:0a:01:00:02",
                                                 ("10.1.0.2/24",), link=4)))
    topo = assemble(HOST, [(host_mode, HOST), (lonely, NetnsLinks(4026533000, (LO,))),
                           (mac, mac_links)], NETWORKS)
    reasons = {c.name: uncountable_reason(topo, c) for c in topo.containers.values()}
    assert reasons == {"hostnet": HOST_NETWORK, "lonely": NO_NETWORK, "mac": "macvlan"}
    text = format_text(topo)
    listed = text.split("not counted by the daemon", 1)[1].split("host netns")[0].split()
    assert listed[listed.index("mac") + 1] == "macvlan"


def test_compose_labels_and_published_ports_are_read_and_shown():
    web = {**container("shop-web-1", "fafa" + "0" * 60, 109,
                       {"bridge": ("172.17.0.5", "02:42:ac:11:00:05")}),
           "Config": {"Labels": {COMPOSE_PROJECT_LABEL: "shop", COMPOSE_SERVICE_LABEL: "web"}}}
    web["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                                  {"HostIp": "::", "HostPort": "8080"}],
                                       "53/udp": None, "bad": [{"HostPort": "x"}]}
    topo = assemble(HOST, [(web, eth0(4026533002, 16, 17, "02:42:ac:11:00:05",
                                      "172.17.0.5"))], NETWORKS)
    c = topo.find_container("shop-web-1")
    assert (c.compose_project, c.compose_service) == ("shop", "web")
    assert c.ports == (PublishedPort("0.0.0.0", 8080, 80, "tcp"),
                       PublishedPort("::", 8080, 80, "tcp"))
    text = " ".join(format_text(topo).split())
    assert "compose shop/web" in text and "0.0.0.0:8080->80/tcp" in text


def test_find_container_by_name_slash_name_and_id_prefix(topo):
    assert topo.find_container("cntrace-test-a").id == A_ID
    assert topo.find_container("/cntrace-test-b").id == B_ID
    assert topo.find_container(C_ID).name == "cntrace-test-c"
    assert topo.find_container("cccc").name == "cntrace-test-c"
    assert topo.find_container("aaaa1").name == "cntrace-test-a"


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("aaaa", ["ambiguous container 'aaaa'", "cntrace-test-a", "cntrace-test-b"]),
        ("nope", ["unknown container 'nope'"]),
        ("", ["unknown container ''"]),
    ],
)
def test_find_container_errors_are_usage_errors(topo, ref, words):
    with pytest.raises(UsageError) as err:
        topo.find_container(ref)
    assert err.value.exit_code == 2
    for word in words:
        assert word in str(err.value)


def test_container_by_address(topo):
    assert topo.container_by_address("172.18.0.2").name == "cntrace-test-c"
    assert topo.container_by_address("172.17.0.1") is None


def test_format_text_tells_the_seed_story(topo):
    lines = format_text(topo).splitlines()
    assert lines[0].startswith("bridge (bridge)  bridge docker0/6 172.17.0.0/16")
    a_row = next(line for line in lines if "cntrace-test-a" in line)
    assert a_row.split() == [
        "cntrace-test-a",
        "172.17.0.2",
        f"eth0/16@{A_NS}",
        "<->",
        "veth7cc78d5/17",
    ]
    assert any(
        line.startswith("cntrace-test-net (bridge)  bridge br-5f248116d26e/15") for line in lines
    )
    eth0_row = next(line for line in lines if " eth0 " in line)
    assert "uplink" in eth0_row and "192.0.2.2/24" in eth0_row
    assert not any(
        " veth7cc78d5 " in line for line in lines[lines.index(f"host netns {HOST_NS}") :]
    )


def test_format_text_fits_80_columns_with_long_names():
    long_name = "a-very-long-compose-project_with-a-long-service-name_1"
    x = container(
        long_name, "9999" + "0" * 60, 107, {"bridge": ("172.17.0.10", "02:42:ac:11:00:0a")}
    )
    x_links = NetnsLinks(
        4026539999,
        (
            Link(
                123456,
                "eth0-long-name",
                "veth",
                "02:42:ac:11:00:0a",
                ("172.17.0.10/16",),
                link=99999,
            ),
        ),
    )
    host = NetnsLinks(
        HOST_NS,
        (
            *HOST.links,
            Link(99999, "vethlongname123", "veth", None, link=123456, master=6),
            Link(
                30,
                "eth1",
                None,
                None,
                tuple(f"2001:db8:{n:x}::1234:5678:9abc/64" for n in range(9)),
            ),
        ),
    )
    text = format_text(assemble(host, [(A, A_NS_LINKS), (x, x_links)], NETWORKS))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert long_name in text
    assert "vethlongname123/99999" in text
    assert "2001:db8:8::1234:5678:9abc/64" in text


def test_to_dict_is_json(topo):
    data = json.loads(json.dumps(topo.to_dict()))
    assert data["host_netns"] == HOST_NS
    roles = {(i["netns"], i["ifindex"]): i["role"] for i in data["interfaces"]}
    assert roles[(A_NS, 16)] == ROLE_CONTAINER
    assert roles[(HOST_NS, 17)] == ROLE_VETH_HOST
    assert {c["name"] for c in data["containers"]} == {
        "cntrace-test-a",
        "cntrace-test-b",
        "cntrace-test-c",
    }


# ---------------------------------------------------------------- discover()


class FakeAPI:
    """Just the low-level docker API calls discover() makes."""

    def __init__(self, containers, networks, gone=(), error=None):
        self._containers = {c["Id"]: c for c in containers}
        self._networks = networks
        self._gone = set(gone)
        self._error = error

    def networks(self):
        if self._error:
            raise self._error
        return self._networks

    def containers(self):
        return [{"Id": cid} for cid in self._containers]

    def inspect_container(self, cid):
        if cid in self._gone:
            raise docker.errors.NotFound(f"No such container: {cid}")
        return self._containers[cid]


class FakeClient:
    def __init__(self, **kwargs):
        self.api = FakeAPI(**kwargs)


@pytest.fixture
def proc_root(tmp_path):
    """A /proc with ns/net files for 'self' and pids 101-103 (not 104: it exited)."""
    for pid in ("self", "101", "102", "103"):
        (tmp_path / pid / "ns").mkdir(parents=True)
        (tmp_path / pid / "ns" / "net").touch()
    return tmp_path


def fake_reader(proc_root):
    by_pid = {"self": HOST, "101": A_NS_LINKS, "102": B_NS_LINKS, "103": C_NS_LINKS}
    calls = []

    def read(path):
        calls.append(path)
        pid = os.path.relpath(path, proc_root).split("/")[0]
        return by_pid[pid]

    read.calls = calls
    return read


def test_discover_skips_containers_that_vanish(proc_root):
    exited = container("exited", "7777" + "0" * 60, 104, {"bridge": ("172.17.0.4", "")})
    client = FakeClient(containers=[A, B, C, exited], networks=NETWORKS, gone=[B_ID])
    read = fake_reader(proc_root)
    topo = discover(client, proc_root=str(proc_root), read_links=read)
    assert set(topo.containers) == {A_ID, C_ID}  # b: inspect 404; exited: no /proc entry
    assert topo.lookup(HOST_NS, 17).role == ROLE_VETH_HOST
    assert topo.lookup(HOST_NS, 19).role == ROLE_HOST  # b's veth, b unseen
    assert f"{proc_root}/104/ns/net" not in read.calls


def test_discover_skips_stopped_containers(proc_root):
    stopped = dict(C, State={"Running": False, "Pid": 0})
    topo = discover(
        FakeClient(containers=[A, stopped], networks=NETWORKS),
        proc_root=str(proc_root),
        read_links=fake_reader(proc_root),
    )
    assert set(topo.containers) == {A_ID}


@pytest.mark.parametrize(
    ("error", "start"),
    [
        (requests.exceptions.ConnectionError("refused"), "cannot reach the Docker engine: "),
        (docker.errors.APIError("500 Server Error"), "the Docker engine failed: "),
    ],
)
def test_discover_engine_errors_are_docker_unavailable(proc_root, error, start):
    client = FakeClient(containers=[], networks=NETWORKS, error=error)
    with pytest.raises(DockerUnavailableError) as err:
        discover(client, proc_root=str(proc_root), read_links=fake_reader(proc_root))
    assert err.value.exit_code == 5
    assert str(err.value).startswith(start)
