"""Who is who on a Docker host, the model: every (netns inode, ifindex) and
its role, the containers, their networks and published ports, which host
devices are exits, and why a container cannot be counted.

The kernel names an interface by its network namespace and ifindex; users
name containers and networks.  The host package joins the two, the way the
seed story did by hand with `ip addr`, `brctl show` and
`docker network inspect`: tracer/host/docker_engine.py asks Docker and reads
each netns (tracer/host/netlink.py), tracer/host/join.py gives each
interface its role, tracer/host/topology_text.py and tracer/host/figure.py
show the result.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.errors import UsageError

ROLE_CONTAINER = "container"  # a container's interface inside its netns (eth0)
ROLE_VETH_HOST = "veth-host"  # host end of a container's veth
ROLE_BRIDGE = "bridge"  # a docker network's bridge (docker0, br-xxxx)
ROLE_HOST = "host"  # any other host interface (lo, eth0, cntrace-wan0, ...)
ARPHRD_ETHER = 1  # the link type of Ethernet-framed devices (veth, bridges, most NICs)
LOOPBACK_IFINDEX = 1  # lo's ifindex in every netns


@dataclass(frozen=True)
class Interface:
    netns: int
    ifindex: int
    name: str
    role: str
    mac: str | None
    addresses: tuple[str, ...]
    container: str | None  # container name (no leading slash): container/veth-host roles
    container_id: str | None
    network: str | None  # docker network of the bridge, or of this endpoint
    peer_ifindex: int | None  # veth peer ifindex (in the other netns)
    master_ifindex: int | None  # bridge this interface is enslaved to
    uplink: bool = False  # host interface carrying the default route
    kind: str | None = None  # IFLA_INFO_KIND: veth, bridge, vlan, ... (None: physical, lo)
    link_type: int = ARPHRD_ETHER  # ifi_type: ARPHRD_ETHER, or ARPHRD_NONE (tun, wireguard)


# The labels Compose puts on every container it creates.
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"


@dataclass(frozen=True)
class PublishedPort:
    """`-p HOST_IP:HOST_PORT:PORT/PROTOCOL`: docker's DNAT to the container."""

    host_ip: str
    host_port: int
    port: int
    protocol: str


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    pid: int
    netns: int
    networks: dict[str, str]  # network name -> IPv4
    ipv6: dict[str, str] = field(default_factory=dict)  # network name -> IPv6
    labels: dict[str, str] = field(default_factory=dict)
    network_mode: str = ""  # HostConfig.NetworkMode: bridge, host, none, container:<id>, ...
    ports: tuple[PublishedPort, ...] = ()

    @property
    def addresses(self) -> frozenset[str]:
        """Every address it has, in the canonical form events carry."""
        ips = [*self.networks.values(), *self.ipv6.values()]
        return frozenset(str(ipaddress.ip_address(ip)) for ip in ips if ip)

    @property
    def compose_project(self) -> str:
        return self.labels.get(COMPOSE_PROJECT_LABEL, "")

    @property
    def compose_service(self) -> str:
        return self.labels.get(COMPOSE_SERVICE_LABEL, "")


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str
    bridge: str | None
    subnets: tuple[str, ...]
    gateway: str | None
    # Docker's own switches for what it allows on this network:
    masquerade: bool = True  # enable_ip_masquerade: SNAT to the host's address on the way out
    icc: bool = True  # enable_icc: containers on this bridge may talk to each other
    internal: bool = False  # --internal: no route out, docker drops what tries


@dataclass
class Topology:
    host_netns: int
    interfaces: dict[tuple[int, int], Interface]
    containers: dict[str, Container]  # by id
    networks: dict[str, Network]  # by name

    def lookup(self, netns: int, ifindex: int) -> Interface | None:
        return self.interfaces.get((netns, ifindex))

    def find_container(self, ref: str) -> Container:
        """A container by name (with or without '/'), full id or unique id prefix."""
        name = ref.lstrip("/")
        for c in self.containers.values():
            if name in (c.name, c.id):
                return c
        matches = [c for c in self.containers.values() if ref and c.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(sorted(c.name for c in matches))
            raise UsageError(f"ambiguous container '{ref}': matches {names}")
        raise UsageError(f"unknown container '{ref}'")

    def container_by_address(self, ip: str) -> Container | None:
        return self._by_address.get(ip)

    @functools.cached_property
    def _by_address(self) -> dict[str, Container]:
        # Looked up twice per event in the stream: an index, built once per
        # discovery (a Topology's containers never change after it).
        return {a: c for c in self.containers.values() for a in c.addresses}

    def container_interfaces(self, container_id: str) -> list[Interface]:
        """The container's own interfaces (in its netns), by ifindex."""
        return sorted(
            (
                i
                for i in self.interfaces.values()
                if i.container_id == container_id and i.role == ROLE_CONTAINER
            ),
            key=lambda i: i.ifindex,
        )

    def host_veths(self, container_id: str) -> list[Interface]:
        """The host-side ends of the container's veths."""
        return [i for i in self.interfaces.values()
                if i.container_id == container_id and i.role == ROLE_VETH_HOST]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host_netns": self.host_netns,
            "networks": [asdict(n) for n in self.networks.values()],
            "containers": [asdict(c) for c in self.containers.values()],
            "interfaces": [asdict(self.interfaces[k]) for k in sorted(self.interfaces)],
        }


# Devices stacked on others (or holding others): what leaves by one of them
# leaves again by the device under it, where it is counted.  (ifb: what is
# redirected to it comes back to the device it came from.)
STACKED_KINDS = frozenset({"bridge", "bond", "team", "vlan", "macvlan", "macvtap", "ipvlan",
                           "ipvtap", "vrf", "ifb"})
ETHERNET_HEADER_LEN = 14


def exit_devices(topo: Topology) -> dict[int, int]:
    """The host's exit devices: where a packet leaves the host netns for good
    (physical NICs, veths to other namespaces, tun and wireguard devices), by
    ifindex, with their link-layer header length.  SNAT is counted at their
    egress (bpf/accounting.h).  Container veths count it themselves; a
    bridge, bond or VLAN passes its packets on to a device below it."""
    return {i.ifindex: ETHERNET_HEADER_LEN if i.link_type == ARPHRD_ETHER else 0
            for i in topo.interfaces.values()
            if i.netns == topo.host_netns and i.role == ROLE_HOST
            and i.ifindex != LOOPBACK_IFINDEX and i.kind not in STACKED_KINDS}


# Why a running container has no traffic counters: the `reason` label of
# cntrace_container_uncounted (drops on its interfaces are still counted).
HOST_NETWORK = "host_network"      # --network host: its packets are the host's own
SHARED_NETNS = "shared_netns"      # --network container:X: counted as X
NO_NETWORK = "no_network"          # --network none: loopback only
NO_VETH = "no_veth"                # interfaces, but none with a host-side veth peer
NO_SLOT = "no_slot"                # every counter slot is taken (tracer/daemon/slots.py)
ATTACH_FAILED = "attach_failed"    # its veth refused the counting programs (retried)
# Interfaces of these kinds reach the wire below the host's netns, never
# through a veth: the kind itself is the reason.
VETHLESS_KINDS = ("macvlan", "ipvlan")


def uncountable_reason(topo: Topology, container: Container) -> str | None:
    """Why the daemon cannot count `container` whatever it does, from the
    topology alone; None when it has a host-side veth to count on."""
    if container.network_mode.startswith("container:"):
        return SHARED_NETNS
    if container.netns == topo.host_netns:
        return HOST_NETWORK
    if topo.host_veths(container.id):
        return None
    own = [i for i in topo.container_interfaces(container.id) if i.ifindex != LOOPBACK_IFINDEX]
    if not own:
        return NO_NETWORK
    kinds = {i.kind for i in own}
    return next((k for k in VETHLESS_KINDS if k in kinds), NO_VETH)
