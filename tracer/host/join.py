"""The join, pure: Docker's inspect data and each netns's links give every
(netns inode, ifindex) its role.  A container-side veth and a host veth are
a pair when each one's IFLA_LINK names the other: ifindexes repeat across
namespaces, so one direction alone could pair a host veth with the wrong
container.  Tested over fixtures without root or Docker."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tracer.host.netlink import Link, NetnsLinks
from tracer.host.topology import (
    ROLE_BRIDGE,
    ROLE_CONTAINER,
    ROLE_HOST,
    ROLE_VETH_HOST,
    Container,
    Interface,
    Network,
    PublishedPort,
    Topology,
)


def parse_network(attrs: dict[str, Any]) -> Network:
    """A Network from `docker network inspect` / GET /networks data."""
    config = (attrs.get("IPAM") or {}).get("Config") or []
    bridge = None
    options = attrs.get("Options") or {}
    if attrs.get("Driver") == "bridge":
        # docker names a user network's bridge br-<id[:12]> unless told otherwise
        bridge = options.get("com.docker.network.bridge.name") or f"br-{attrs['Id'][:12]}"
    gateways = [c["Gateway"] for c in config if c.get("Gateway")]
    return Network(
        id=attrs["Id"],
        name=attrs["Name"],
        driver=attrs.get("Driver", ""),
        bridge=bridge,
        subnets=tuple(c["Subnet"] for c in config if c.get("Subnet")),
        gateway=gateways[0] if gateways else None,
        masquerade=_option(options, "enable_ip_masquerade"),
        icc=_option(options, "enable_icc"),
        internal=bool(attrs.get("Internal")),
    )


def _option(options: dict[str, str], name: str) -> bool:
    """A com.docker.network.bridge.* switch; docker's default is on."""
    return str(options.get(f"com.docker.network.bridge.{name}", "true")).lower() != "false"


def parse_ports(ports: dict[str, Any] | None) -> tuple[PublishedPort, ...]:
    """NetworkSettings.Ports ({"80/tcp": [{"HostIp": ..., "HostPort": "8080"}]}):
    the published ones, each host address once."""
    found = []
    for spec, bindings in _mapping(ports).items():
        port, _, protocol = str(spec).partition("/")
        for binding in bindings if isinstance(bindings, list) else ():
            binding = _mapping(binding)
            if str(binding.get("HostPort", "")).isdigit() and port.isdigit():
                found.append(PublishedPort(str(binding.get("HostIp") or "0.0.0.0"),
                                           int(binding["HostPort"]), int(port),
                                           protocol or "tcp"))
    return tuple(sorted(set(found), key=lambda p: (p.port, p.protocol, p.host_ip)))


def parse_container(attrs: dict[str, Any], netns: int) -> Container:
    """A Container from `docker inspect` data and its netns inode."""
    settings = _mapping(attrs.get("NetworkSettings"))
    endpoints = settings.get("Networks") or {}
    return Container(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        pid=attrs["State"]["Pid"],
        netns=netns,
        networks={n: e["IPAddress"] for n, e in endpoints.items() if e.get("IPAddress")},
        ipv6={
            n: e["GlobalIPv6Address"] for n, e in endpoints.items() if e.get("GlobalIPv6Address")
        },
        labels={str(k): str(v) for k, v in _mapping(_mapping(attrs.get("Config"))
                                                    .get("Labels")).items()},
        network_mode=str(_mapping(attrs.get("HostConfig")).get("NetworkMode") or ""),
        ports=parse_ports(settings.get("Ports")),
    )


def _mapping(value: Any) -> dict:
    """`value` if it is a JSON object, else an empty one (a field Docker left
    out, null, or of another shape in some engine version)."""
    return value if isinstance(value, dict) else {}


def _endpoint_network(attrs: dict[str, Any], link: Link) -> str | None:
    """The docker network whose endpoint is this link: by MAC, else by address."""
    endpoints = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ips = {a.split("/")[0] for a in link.addresses}
    for name, e in endpoints.items():
        if link.mac and (e.get("MacAddress") or "").lower() == link.mac.lower():
            return name
    for name, e in endpoints.items():
        if e.get("IPAddress") in ips or e.get("GlobalIPv6Address") in ips:
            return name
    return None


def _interface(netns: int, link: Link, role: str, container: Container | None,
               network: str | None, uplink: bool = False) -> Interface:
    """The Interface of `link` in `netns`, given its role."""
    return Interface(
        netns=netns,
        ifindex=link.ifindex,
        name=link.name,
        role=role,
        mac=link.mac,
        addresses=link.addresses,
        container=container.name if container else None,
        container_id=container.id if container else None,
        network=network,
        peer_ifindex=link.link if link.kind == "veth" else None,
        master_ifindex=link.master,
        uplink=uplink,
        kind=link.kind,
        link_type=link.link_type,
    )


def assemble(
    host: NetnsLinks,
    containers: Iterable[tuple[dict[str, Any], NetnsLinks]],
    networks: Iterable[dict[str, Any]],
) -> Topology:
    """Give every interface a role from Docker's data and each netns's links."""
    nets = {n.name: n for n in map(parse_network, networks)}
    net_by_bridge = {n.bridge: n.name for n in nets.values() if n.bridge}
    host_links = {link.ifindex: link for link in host.links}
    bridge_net = {
        i: net_by_bridge[k.name] for i, k in host_links.items() if k.name in net_by_bridge
    }

    topo = Topology(host_netns=host.inode, interfaces={}, containers={}, networks=nets)
    claimed: set[int] = set()  # netns whose links already went to a container
    peers: dict[int, tuple[Container, str | None]] = {}  # host veth ifindex -> container, network
    # A netns's links go to its owner, not to a container that joined it
    # (--network container:x), whichever Docker lists first.
    for attrs, ns in sorted(containers, key=lambda pair: str(
            _mapping(pair[0].get("HostConfig")).get("NetworkMode")).startswith("container:")):
        c = parse_container(attrs, ns.inode)
        topo.containers[c.id] = c
        # --network host shares the host's links; --network container:x shares x's.
        if ns.inode == host.inode or ns.inode in claimed:
            continue
        claimed.add(ns.inode)
        for link in ns.links:
            network = _endpoint_network(attrs, link)
            peer = host_links.get(link.link) if link.kind == "veth" else None
            if peer is not None and peer.kind == "veth" and peer.link == link.ifindex:
                peers[peer.ifindex] = (c, network)
            topo.interfaces[(ns.inode, link.ifindex)] = _interface(
                ns.inode, link, ROLE_CONTAINER, c, network)

    for link in host.links:
        container, network, role = None, bridge_net.get(link.master), ROLE_HOST
        if link.ifindex in bridge_net:
            role, network = ROLE_BRIDGE, bridge_net[link.ifindex]
        elif link.ifindex in peers:
            container, endpoint_network = peers[link.ifindex]
            role, network = ROLE_VETH_HOST, network or endpoint_network
        topo.interfaces[(host.inode, link.ifindex)] = _interface(
            host.inode, link, role, container, network, link.ifindex in host.default_oifs)
    return topo
