"""The figure's DOT from a hand-made host: every bridge, veth pair, container
address, published port, NAT and exit device drawn; names quoted safely."""

import dataclasses
import re

import pytest

from tests.unit import fakes
from tracer.errors import FigureError, UsageError
from tracer.host import figure
from tracer.host.topology import ROLE_CONTAINER, ROLE_VETH_HOST, PublishedPort


def host():
    """fakes.topology() with its veths paired and bridged, a published
    port on b, and an uplink."""
    topo = fakes.topology()
    ifaces = topo.interfaces
    pairs = {(fakes.A_NS, 10): 11, (fakes.B_NS, 10): 13}
    for key, veth in pairs.items():
        ifaces[key] = dataclasses.replace(ifaces[key], peer_ifindex=veth,
                                          addresses=("172.17.0.9/16",) if key[0] == fakes.B_NS
                                          else ("172.17.0.2/16",))
        host_key = (fakes.HOST_NS, veth)
        ifaces[host_key] = dataclasses.replace(ifaces[host_key], peer_ifindex=10,
                                               master_ifindex=6)
    wan = (fakes.HOST_NS, 20)
    ifaces[wan] = dataclasses.replace(ifaces[wan], addresses=("198.51.100.1/24",), kind="veth")
    ifaces[(fakes.HOST_NS, 4)] = dataclasses.replace(ifaces[wan], ifindex=4, name="eth0",
                                                     addresses=("10.0.0.5/24",), uplink=True,
                                                     kind=None)
    b = next(c for c in topo.containers.values() if c.name == "b")
    topo.containers[b.id] = dataclasses.replace(
        b, ports=(PublishedPort("0.0.0.0", 8080, 80, "tcp"),))
    return topo


def test_the_figure_draws_each_bridge_veth_pair_port_nat_and_exit():
    topo = host()
    dot = figure.to_dot(topo)
    assert dot.startswith("digraph cntrace {") and dot.rstrip().endswith("}")
    assert 'subgraph "cluster_bridge"' in dot
    assert "network bridge (bridge)\\n172.17.0.0/16\\ngateway 172.17.0.1" in dot
    assert '"if6" [label="docker0/6\\nbridge"' in dot
    for c, veth in (("aaaa1111", 11), ("bbbb2222", 13)):
        assert f'"c_{c}" -> "if{veth}" [label="veth pair eth0/10"]' in dot
        assert f'"if{veth}" -> "if6"' in dot
    assert 'id="container-a"' in dot and "eth0/10 172.17.0.2/16" in dot
    assert '"host" -> "c_bbbb2222" [label="DNAT 0.0.0.0:8080 -> 172.17.0.3:80/tcp"' in dot
    assert "MASQUERADE 172.17.0.0/16" in dot
    assert re.search(r'"if4" \[label="eth0/4\\n10\.0\.0\.5/24\\nuplink \(default route\)"', dot)
    assert re.search(r'"if20" \[label="cntrace-wan0/20\\n198\.51\.100\.1/24\\nveth to another',
                     dot)
    assert '"host" -> "if4"' in dot and '"host" -> "if20"' in dot
    assert f'fillcolor="{figure.container_colour("a")}"' in dot


def test_an_uncounted_container_says_why():
    topo = host()
    dot = figure.to_dot(topo, {"aaaa1111": "macvlan"})
    assert "not counted: macvlan" in dot
    assert f'fillcolor="{figure.UNCOUNTED_FILL}"' in dot


def test_names_and_labels_are_quoted():
    topo = host()
    a = next(c for c in topo.containers.values() if c.name == "a")
    topo.containers[a.id] = dataclasses.replace(a, labels={
        "com.docker.compose.project": 'x"y\\z', "com.docker.compose.service": "web"})
    dot = figure.to_dot(topo)
    assert 'compose x\\"y\\\\z/web' in dot


def test_each_container_has_a_light_colour_of_its_own():
    colours = {figure.container_colour(f"c{i}") for i in range(50)}
    assert len(colours) > 40
    for colour in colours:
        assert re.fullmatch(r"#[0-9a-f]{6}", colour)
        assert sum(int(colour[i:i + 2], 16) for i in (1, 3, 5)) > 3 * 150   # text stays legible
    assert figure.container_colour("a") == figure.container_colour("a")


def test_render_refuses_bad_formats_and_says_when_graphviz_is_missing(monkeypatch):
    assert figure.render("digraph x {}", "dot") == b"digraph x {}"
    with pytest.raises(UsageError):
        figure.render("digraph x {}", "png")
    monkeypatch.setattr(figure.shutil, "which", lambda name: None)
    with pytest.raises(FigureError, match="graphviz") as missing:
        figure.render("digraph x {}", "svg")
    assert missing.value.exit_code == 7


def test_only_container_interfaces_and_host_veths_are_paired():
    topo = host()
    roles = {i.role for i in topo.interfaces.values()}
    assert {ROLE_CONTAINER, ROLE_VETH_HOST} <= roles
    assert figure.to_dot(topo).count("veth pair") == 2
