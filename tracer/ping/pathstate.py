"""The host's state along a probe's expected path, read only when the probe
did not get through (a reachable trace-ping pays nothing for it).

For each network namespace the probe should cross (the source's, the
host's, the destination's): its devices (up, carrier, MTU, bridge master,
veth peer), its route towards the other end and that route's next hop in
the neighbour table, rp_filter where a forwarded packet enters the host,
and the destination's listening sockets.  Plus Docker's side: whether each
container's host veth is a port of its network's bridge, and which
MASQUERADE rules exist.  tracer.ping.diagnosis joins this with the trace.

Everything is read from netlink (pyroute2), /proc/<pid>/net and /proc/sys;
what cannot be read is recorded in `unreadable` with why, never raised.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracer.host.topology import Container, Topology

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
               8: "prohibit", 9: "throw"}
BAD_ROUTE_TYPES = frozenset({"blackhole", "unreachable", "prohibit", "throw"})
NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY",
              0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
FAILED_NEIGHBOUR = frozenset({"INCOMPLETE", "FAILED"})
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
HOST = "host"


@dataclass(frozen=True)
class Place:
    """A network namespace on the path."""

    label: str                  # "host", a container's name, "netns:NAME"
    netns_path: str | None      # None: the host's (our own)
    pid: int | None = None      # a process in it, for /proc/<pid>/net


@dataclass(frozen=True)
class DeviceState:
    place: str
    name: str
    ifindex: int
    kind: str | None            # veth, bridge, ... (None: physical or lo)
    up: bool                    # IFF_UP: administratively up
    carrier: bool               # IFF_LOWER_UP: a veth has it only while its peer is up
    mtu: int
    master: str | None          # the bridge it is a port of


@dataclass(frozen=True)
class RouteState:
    place: str
    destination: str
    kind: str                   # unicast, local, blackhole, unreachable, ..., "none"
    device: str | None
    gateway: str | None
    mtu: int | None             # a route's own mtu metric, if set

    @property
    def next_hop(self) -> str:
        return self.gateway or self.destination


@dataclass(frozen=True)
class NeighbourState:
    place: str
    device: str
    address: str
    state: str | None           # None: no entry at all


@dataclass(frozen=True)
class Listener:
    proto: str                  # "tcp" or "udp"
    address: str
    port: int

    def accepts(self, address: str) -> bool:
        wildcard = ipaddress.ip_address(self.address).is_unspecified
        return wildcard or self.address == address


@dataclass(frozen=True)
class BridgePort:
    """A container's host veth and the bridge its docker network expects."""

    container: str
    veth: str
    network: str
    bridge: str
    master: str | None          # what it is really a port of


@dataclass
class PathState:
    places: list[str] = field(default_factory=list)
    devices: list[DeviceState] = field(default_factory=list)
    routes: list[RouteState] = field(default_factory=list)
    neighbours: list[NeighbourState] = field(default_factory=list)
    bridge_ports: list[BridgePort] = field(default_factory=list)
    rp_filter: dict[str, int] = field(default_factory=dict)   # host device -> effective
    listeners: dict[str, list[Listener]] = field(default_factory=dict)  # place -> sockets
    masquerade_rules: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def device(self, place: str, name: str | None) -> DeviceState | None:
        return next((d for d in self.devices if d.place == place and d.name == name), None)

    def route(self, place: str, destination: str | None = None) -> RouteState | None:
        """`place`'s first route (the probe's way), or its route to `destination`."""
        return next((r for r in self.routes if r.place == place
                     and destination in (None, r.destination)), None)

    def to_dict(self) -> dict:
        return {
            "places": self.places,
            "devices": [asdict(d) for d in self.devices],
            "routes": [{**asdict(r), "next_hop": r.next_hop} for r in self.routes],
            "neighbours": [asdict(n) for n in self.neighbours],
            "bridge_ports": [asdict(b) for b in self.bridge_ports],
            "rp_filter": self.rp_filter,
            "listeners": {k: [asdict(s) for s in v] for k, v in self.listeners.items()},
            "masquerade_rules": self.masquerade_rules,
            "unreadable": self.unreadable,
        }


# --------------------------------------------------------------- reading


def _netlink_state(place: Place, towards: tuple[str, ...], state: PathState) -> None:
    """Devices, the route toward each address and the first route's next
    hop's neighbour entry."""
    from pyroute2 import IPRoute

    fd = os.open(place.netns_path, os.O_RDONLY) if place.netns_path else None
    try:
        with IPRoute(netns=fd, flags=0) if fd is not None else IPRoute() as ipr:
            links = {raw["index"]: raw for raw in ipr.get_links()}
            names = {i: raw.get("IFLA_IFNAME") for i, raw in links.items()}
            for index, raw in sorted(links.items()):
                info = raw.get("IFLA_LINKINFO")
                state.devices.append(DeviceState(
                    place.label, names[index], index,
                    info.get("IFLA_INFO_KIND") if info else None,
                    bool(raw["flags"] & IFF_UP), bool(raw["flags"] & IFF_LOWER_UP),
                    raw.get("IFLA_MTU") or 0, names.get(raw.get("IFLA_MASTER"))))
            for i, toward in enumerate(towards):
                entry, oif = _route(ipr, place, toward, names)
                state.routes.append(entry)
                if i == 0 and entry.kind == "unicast" and oif is not None:
                    found = [n for n in ipr.get_neighbours(ifindex=oif)
                             if n.get("NDA_DST") == entry.next_hop]
                    nud = found[0]["state"] if found else None
                    state.neighbours.append(NeighbourState(
                        place.label, names.get(oif), entry.next_hop,
                        None if nud is None else _nud_name(nud)))
    finally:
        if fd is not None:
            os.close(fd)


def _route(ipr, place: Place, toward: str, names: dict) -> tuple[RouteState, int | None]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        route = ipr.route("get", dst=toward)[0]
    except NetlinkError as exc:
        kind = {errno.ENETUNREACH: "none", errno.EHOSTUNREACH: "unreachable",
                errno.EACCES: "prohibit", errno.EINVAL: "blackhole"}.get(exc.code, "none")
        return RouteState(place.label, toward, kind, None, None, None), None
    metrics = route.get("RTA_METRICS") or {}
    oif = route.get("RTA_OIF")
    return RouteState(place.label, toward, ROUTE_TYPES.get(route["type"], "unicast"),
                      names.get(oif), route.get("RTA_GATEWAY"),
                      metrics.get("RTAX_MTU") if hasattr(metrics, "get") else None), oif


def _nud_name(nud: int) -> str:
    return next((name for bit, name in NUD_STATES.items() if nud & bit), f"0x{nud:x}")


def _rp_filter(devices: Iterable[str]) -> dict[str, int]:
    """The effective rp_filter of host devices: the kernel uses max(all, dev)."""
    def read(name: str) -> int | None:
        try:
            return int(Path(f"/proc/sys/net/ipv4/conf/{name}/rp_filter").read_text())
        except (OSError, ValueError):
            return None

    every = read("all") or 0
    out = {}
    for device in devices:
        value = read(device)
        if value is not None:
            out[device] = max(every, value)
    return out


def parse_sockets(text: str, proto: str) -> list[Listener]:
    """Listening TCP / unconnected UDP sockets from /proc/net/{tcp,udp}[6]."""
    wanted = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    out = []
    for line in text.splitlines()[1:]:
        fields_ = line.split()
        if len(fields_) < 4 or fields_[3] != wanted:
            continue
        address, _, port = fields_[1].partition(":")
        try:
            out.append(Listener(proto, _proc_address(address), int(port, 16)))
        except ValueError:
            continue
    return out


def _proc_address(hexed: str) -> str:
    """/proc/net prints addresses as native-endian 32-bit words; an IPv6
    socket bound to an IPv4-mapped address serves that IPv4 address."""
    raw = bytes.fromhex(hexed)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    return str(getattr(address, "ipv4_mapped", None) or address)


def _listeners(place: Place, proto: str) -> list[Listener]:
    root = f"/proc/{place.pid}/net" if place.pid else "/proc/self/net"
    out = []
    for suffix in ("", "6"):
        try:
            out += parse_sockets(Path(f"{root}/{proto}{suffix}").read_text(), proto)
        except OSError:
            continue
    return sorted(set(out), key=lambda s: (s.port, s.address))


def masquerade_rules(counters: dict) -> list[str]:
    """The MASQUERADE rules of the nat table, from a tracer.ping.iptables_counters snapshot."""
    return [c.rule for c in counters.values()
            if c.table == "nat" and c.target == "MASQUERADE"]


def collect(topo: Topology, places: list[tuple[Place, tuple[str, ...]]],
            containers: Iterable[Container], listen_place: Place | None, proto: str | None,
            rule_counters: dict | None = None) -> PathState:
    """Read the state of `places` (each with the addresses its routes should
    reach: the first is the probe's way, the host's second is its way back to
    the source), the bridge ports of `containers`, and listeners at
    `listen_place` for a TCP/UDP probe."""
    state = PathState(places=[p.label for p, _ in places])
    for place, towards in places:
        try:
            _netlink_state(place, towards, state)
        except OSError as exc:
            state.unreadable.append(f"{place.label}: {exc}")
    for container in containers:
        for iface in topo.host_veths(container.id):
            network = topo.networks.get(iface.network or "")
            if network is None or not network.bridge:
                continue
            device = state.device(HOST, iface.name)
            state.bridge_ports.append(BridgePort(
                container.name, iface.name, network.name, network.bridge,
                device.master if device else None))
    host_ports = [b.veth for b in state.bridge_ports] + [b.bridge for b in state.bridge_ports]
    host_route = state.route(HOST)
    if host_route and host_route.device:
        host_ports.append(host_route.device)
    state.rp_filter = _rp_filter(dict.fromkeys(host_ports))
    if listen_place is not None and proto in ("tcp", "udp"):
        state.listeners[listen_place.label] = _listeners(listen_place, proto)
    if rule_counters:
        state.masquerade_rules = masquerade_rules(rule_counters)
    # The host has dozens of devices; only those on this path are evidence.
    on_path = set(host_ports)
    routed = {(r.place, r.device) for r in state.routes}
    state.devices = [d for d in state.devices
                     if (d.place, d.name) in routed
                     or (d.name in on_path if d.place == HOST else d.name != "lo")]
    return state

