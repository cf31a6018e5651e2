"""The host's container networks as a figure, the one the seed story draws:
each bridge with its subnet, each container with its addresses and its veth
pair, the host's NAT (MASQUERADE out, DNAT to published ports) and the exit
devices to the outside.  Written as Graphviz DOT (`to_dot`, pure) and drawn
by Graphviz's `dot` (`render`), for `cntrace topology --format svg|dot` and
the daemon's landing page.

Every container's node is an SVG group with id `container-<name>` and a fill
colour of its own (`container_colour`), so the landing page can put rates
beside it and a screenshot can be checked for it.
"""

from __future__ import annotations

import colorsys
import hashlib
import shutil
import subprocess

from tracer.errors import FigureError, UsageError
from tracer.host.topology import ROLE_BRIDGE, ROLE_CONTAINER, ROLE_VETH_HOST, Topology, exit_devices
from tracer.host.topology_text import compose_words

FORMATS = ("dot", "svg")
DOT = "dot"                 # Graphviz's layout program, from the graphviz package
RENDER_TIMEOUT_SECONDS = 20.0
HOST_FILL = "#eeeeee"
EXIT_FILL = "#fff2cc"
UNCOUNTED_FILL = "#f4cccc"


def container_colour(name: str) -> str:
    """A light fill colour of the container's own, the same on every host."""
    hue = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 360
    r, g, b = colorsys.hls_to_rgb(hue / 360, 0.82, 0.65)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _quote(text: str) -> str:
    """A DOT string; "\\n" in `text` stays a line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, str]) -> str:
    return " [" + ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items()) + "]" if attrs else ""


def _node(name: str, label: list[str], **attrs: str) -> str:
    return f"  {_quote(name)}{_attrs({'label': chr(10).join(label), **attrs})};"


def _edge(a: str, b: str, **attrs: str) -> str:
    return f"  {_quote(a)} -> {_quote(b)}{_attrs(attrs)};"


HOST = "host"
DEVICE = {"shape": "box", "style": "filled", "fillcolor": HOST_FILL}


def to_dot(topo: Topology, uncounted: dict[str, str] | None = None) -> str:
    """The figure as DOT; `uncounted` maps container id to why the daemon
    cannot count it (tracer/daemon/slots.py uncounted_reason)."""
    uncounted = uncounted or {}
    host_if = {i.ifindex: i for i in topo.interfaces.values() if i.netns == topo.host_netns}
    lines = ["digraph cntrace {",
             '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.25, '
             'ranksep=0.7, bgcolor="white"];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
             'fillcolor="white"];',
             '  edge [fontname="Helvetica", fontsize=9, arrowhead=none];']
    nat = ["host netns: routing and iptables NAT"]
    for net in sorted(topo.networks.values(), key=lambda n: n.name):
        bridge = next((i for i in host_if.values()
                       if i.role == ROLE_BRIDGE and i.network == net.name), None)
        if bridge is None:
            continue
        if net.masquerade and not net.internal:
            nat.extend(f"MASQUERADE {subnet}" for subnet in net.subnets)
        details = [f"network {net.name} ({net.driver})", *net.subnets]
        details += [f"gateway {net.gateway}"] if net.gateway else []
        details += ["internal: no way out"] if net.internal else []
        lines.append(f"  subgraph {_quote('cluster_' + net.name)} {{")
        lines.append(f'  label={_quote(chr(10).join(details))}; style=rounded; color="#888888";')
        lines.append(_node(f"if{bridge.ifindex}", [f"{bridge.name}/{bridge.ifindex}", "bridge"],
                           **DEVICE))
        for veth in sorted(host_if.values(), key=lambda i: i.ifindex):
            if veth.role == ROLE_VETH_HOST and veth.master_ifindex == bridge.ifindex:
                lines.append(_node(f"if{veth.ifindex}",
                                   [f"{veth.name}/{veth.ifindex}", "veth, host end"], **DEVICE))
                lines.append(_edge(f"if{veth.ifindex}", f"if{bridge.ifindex}"))
        lines.append("  }")
        lines.append(_edge(f"if{bridge.ifindex}", HOST))

    for c in sorted(topo.containers.values(), key=lambda c: c.name):
        node = f"c_{c.id}"
        own = [i for i in topo.container_interfaces(c.id)
               if i.role == ROLE_CONTAINER and i.name != "lo"]
        label = [c.name, *compose_words(c)]
        label += [f"{i.name}/{i.ifindex} {' '.join(i.addresses) or 'no address'}" for i in own]
        reason = uncounted.get(c.id)
        if reason:
            label.append(f"not counted: {reason}")
        lines.append(_node(node, label, id=f"container-{c.name}",
                           fillcolor=UNCOUNTED_FILL if reason else container_colour(c.name)))
        for i in own:
            peer = host_if.get(i.peer_ifindex) if i.peer_ifindex else None
            if peer is not None and peer.role == ROLE_VETH_HOST and peer.container_id == c.id:
                lines.append(_edge(node, f"if{peer.ifindex}",
                                   label=f"veth pair {i.name}/{i.ifindex}"))
        if c.netns == topo.host_netns:
            lines.append(_edge(node, HOST, label="shares the host netns", style="dotted"))
        address = next(iter(sorted(c.networks.values())), "?")
        if c.ports:   # one edge for all of a container's published ports
            dnat = [f"DNAT {p.host_ip}:{p.host_port} -> {address}:{p.port}/{p.protocol}"
                    for p in c.ports]
            lines.append(_edge(HOST, node, label="\n".join(dnat), style="dashed",
                               color="#1f5fbf", fontcolor="#1f5fbf", arrowhead="normal",
                               constraint="false"))

    lines.append(_node(HOST, nat, **DEVICE))
    for ifindex in sorted(exit_devices(topo)):
        device = host_if[ifindex]
        label = [f"{device.name}/{device.ifindex}", *device.addresses]
        if device.uplink:
            label.append("uplink (default route)")
        elif device.kind == "veth":
            label.append("veth to another netns")
        lines.append(_node(f"if{ifindex}", label, **{**DEVICE, "fillcolor": EXIT_FILL}))
        lines.append(_edge(HOST, f"if{ifindex}", arrowhead="normal",
                           label="out, SNAT by MASQUERADE" if len(nat) > 1 else "out"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_source: str, fmt: str = "svg") -> bytes:
    """`dot_source` drawn by Graphviz; FigureError when it cannot be."""
    if fmt not in FORMATS:
        raise UsageError(f"figure format '{fmt}': expected {' or '.join(FORMATS)}")
    if fmt == "dot":
        return dot_source.encode()
    binary = shutil.which(DOT)
    if binary is None:
        raise FigureError("drawing the topology needs Graphviz's `dot` "
                          "(apt-get install graphviz); --format dot works without it")
    try:
        done = subprocess.run([binary, f"-T{fmt}"], input=dot_source.encode(),
                              capture_output=True, timeout=RENDER_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FigureError(f"graphviz dot failed: {exc}") from None
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        raise FigureError(f"graphviz dot failed: {first}")
    return done.stdout
