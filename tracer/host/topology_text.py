"""`cntrace topology` as text: per network its bridge, subnets and each
container's interface and host veth; every line under 80 columns."""

from __future__ import annotations

from collections.abc import Iterable

from tracer.host.topology import (
    ROLE_HOST,
    Container,
    Interface,
    Network,
    Topology,
    uncountable_reason,
)

WIDTH = 79
NAME_COLUMN = 18


def _wrap(head: str, words: Iterable[str], indent: int) -> list[str]:
    """`head` followed by `words`, continued on indented lines within WIDTH."""
    lines, line = [], head
    for word in words:
        if len(line) + 1 + len(word) > WIDTH and line.strip():
            lines.append(line)
            line = " " * indent + word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return [x.rstrip() for x in lines]


def _network_order(net: Network) -> tuple[int, str]:
    return (0 if net.bridge else 1, net.name)


def format_text(topo: Topology) -> str:
    """Per network: bridge and subnets, then each container's interface and its
    host veth; then containers without a network of their own; then the other
    host interfaces. Every line fits in 80 columns."""
    host_if = {i.ifindex: i for i in topo.interfaces.values() if i.netns == topo.host_netns}
    lines: list[str] = []
    shown: set[str] = set()
    for net in sorted(topo.networks.values(), key=_network_order):
        members = sorted(
            (c for c in topo.containers.values() if net.name in c.networks),
            key=lambda c: c.name,
        )
        if not net.bridge and not members:
            continue
        head = f"{net.name} ({net.driver})"
        details = []
        if net.bridge:
            bridge = next((i for i in host_if.values() if i.name == net.bridge), None)
            details.append(f"bridge {net.bridge}" + (f"/{bridge.ifindex}" if bridge else
                                                     " absent"))
        gateway = [f"gw {net.gateway}"] if net.gateway else []
        # A long network name takes the head line alone; the rest wraps under it.
        if len(head) > WIDTH - 30:
            lines.append(head[:WIDTH])
            head = "   "
        lines.extend(_wrap(head + " ", [*details, *net.subnets, *gateway], 4))
        for c in members:
            shown.add(c.id)
            lines.extend(_container_rows(topo, c, net, host_if))
    others = sorted(
        (c for c in topo.containers.values() if c.id not in shown), key=lambda c: c.name
    )
    if others:
        lines.append("containers without a network of their own")
        for c in others:
            where = "the host netns" if c.netns == topo.host_netns else f"netns {c.netns}"
            lines.extend(_row(c.name, ["in", where, *compose_words(c)]))
    uncountable = [(c, uncountable_reason(topo, c)) for c in sorted(
        topo.containers.values(), key=lambda c: c.name)]
    if any(reason for _, reason in uncountable):
        lines.append("not counted by the daemon (no veth of their own)")
        for c, reason in uncountable:
            if reason:
                lines.extend(_row(c.name, [reason]))
    lines.append(f"host netns {topo.host_netns}")
    for i in sorted(host_if.values(), key=lambda i: i.ifindex):
        if i.role != ROLE_HOST:
            continue
        tags = ["uplink"] if i.uplink else []
        if i.peer_ifindex:
            tags.append(f"veth-peer/{i.peer_ifindex}")
        lines.extend(_wrap(f"  {i.ifindex:>4} {i.name:<15}", [*tags, *i.addresses], 22))
    return "\n".join(lines)


def _row(name: str, words: list[str]) -> list[str]:
    """`  name  words...` in columns; a long name gets a line of its own."""
    indent = 2 + NAME_COLUMN + 1
    if len(name) <= NAME_COLUMN:
        return _wrap(f"  {name:<{NAME_COLUMN}}", words, indent)
    return [f"  {name}"[:WIDTH], *_wrap(" " * (indent - 1), words, indent)]


def _container_rows(
    topo: Topology, c: Container, net: Network, host_if: dict[int, Interface]
) -> list[str]:
    ip = c.networks[net.name]
    own = [i for i in topo.container_interfaces(c.id) if i.network == net.name]
    ports = [f"{p.host_ip}:{p.host_port}->{p.port}/{p.protocol}" for p in c.ports]
    if not own:
        return _row(c.name, [f"{ip:<15}", f"netns {c.netns}", *compose_words(c), *ports])
    rows = []
    for i in own:
        peer = host_if.get(i.peer_ifindex) if i.peer_ifindex else None
        right = ["<->", f"{peer.name}/{peer.ifindex}"] if peer else []
        rows.extend(_row(c.name, [f"{ip:<15}", f"{i.name}/{i.ifindex}@{c.netns}", *right,
                                  *compose_words(c), *ports]))
    return rows


def compose_words(c: Container) -> list[str]:
    """`compose PROJECT/SERVICE` for a container Compose created."""
    if not (c.compose_project or c.compose_service):
        return []
    return [f"compose {c.compose_project}/{c.compose_service}"]
