"""Who is who on a Docker host: every (netns inode, ifindex) and its role.

The kernel names an interface by its network namespace and ifindex; users name
containers and networks. This module joins the two, the way the seed story did
by hand with `ip addr`, `brctl show` and `docker network inspect`:

- the Docker API gives containers (pid, endpoint MAC and IP per network) and
  networks (bridge name, subnets);
- /proc/<pid>/ns/net gives each container's netns, whose inode is the netns
  identity a BPF program sees (`net->ns.inum`);
- netlink in each netns gives the links: a veth's IFLA_LINK is its peer's
  ifindex in the other netns, IFLA_MASTER the bridge it is enslaved to.

A container-side veth and a host veth are a pair when each one's IFLA_LINK
names the other: ifindexes repeat across namespaces, so one direction alone
could pair a host veth with the wrong container.

I/O happens only in `discover` and `read_netns`; `assemble` is pure so the
joining and role rules are tested over fixtures without root or Docker.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tracer.errors import DockerUnavailableError, PrivilegeError, UsageError

if TYPE_CHECKING:
    import docker

# docker (with requests) and pyroute2 are imported where they are used: a
# third of a second that trace-ping spends compiling BPF meanwhile.

ROLE_CONTAINER = "container"  # a container's interface inside its netns (eth0)
ROLE_VETH_HOST = "veth-host"  # host end of a container's veth
ROLE_BRIDGE = "bridge"  # a docker network's bridge (docker0, br-xxxx)
ROLE_HOST = "host"  # any other host interface (lo, eth0, cntrace-wan0, ...)
ARPHRD_ETHER = 1  # the link type of Ethernet-framed devices (veth, bridges, most NICs)
LOOPBACK_IFINDEX = 1  # lo's ifindex in every netns

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


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


# Why a running container has no traffic counters: the `reason` label of
# cntrace_container_uncounted (drops on its interfaces are still counted).
HOST_NETWORK = "host_network"      # --network host: its packets are the host's own
SHARED_NETNS = "shared_netns"      # --network container:X: counted as X
NO_NETWORK = "no_network"          # --network none: loopback only
NO_VETH = "no_veth"                # interfaces, but none with a host-side veth peer
NO_SLOT = "no_slot"                # every counter slot is taken (tracer/registry.py)
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


# ------------------------------------------------------------ netlink facts


@dataclass(frozen=True)
class Link:
    """What netlink says about one interface, before any role is given."""

    ifindex: int
    name: str
    kind: str | None  # IFLA_INFO_KIND: veth, bridge, ... (None for physical/lo)
    mac: str | None
    addresses: tuple[str, ...] = ()
    link: int | None = None  # IFLA_LINK: for a veth, the peer's ifindex
    master: int | None = None  # IFLA_MASTER
    link_type: int = ARPHRD_ETHER  # ifi_type


@dataclass(frozen=True)
class NetnsLinks:
    inode: int
    links: tuple[Link, ...]
    default_oifs: frozenset[int] = frozenset()


LinkReader = Callable[[str], NetnsLinks]


def _default_oifs(routes: Iterable[Any]) -> frozenset[int]:
    oifs = set()
    for route in routes:
        if route.get("RTA_OIF"):
            oifs.add(route.get("RTA_OIF"))
        for hop in route.get("RTA_MULTIPATH") or ():
            oifs.add(hop["oif"])
    return frozenset(oifs)


def read_netns(path: str) -> NetnsLinks:
    """Links, addresses and default routes of the netns at `path` (/proc/<pid>/ns/net).

    The open fd pins the namespace, so its inode and its links describe the same
    netns even if the process exits meanwhile. pyroute2 0.9 takes the fd as
    `netns=`: a forked child setns()es into it and hands back the netlink socket.
    """
    from pyroute2 import IPRoute

    fd = os.open(path, os.O_RDONLY)
    try:
        inode = os.fstat(fd).st_ino
        with IPRoute(netns=fd, flags=0) as ipr:
            raw_links = ipr.get_links()
            raw_addrs = ipr.get_addr()
            defaults = _default_oifs(ipr.get_default_routes())
    finally:
        os.close(fd)
    addrs: dict[int, list[str]] = {}
    for a in raw_addrs:
        addrs.setdefault(a["index"], []).append(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
    links = []
    for raw in raw_links:
        info = raw.get("IFLA_LINKINFO")
        mac = raw.get("IFLA_ADDRESS")
        links.append(
            Link(
                ifindex=raw["index"],
                name=raw.get("IFLA_IFNAME"),
                kind=info.get("IFLA_INFO_KIND") if info else None,
                mac=mac if mac and mac != "00:00:00:00:00:00" else None,
                addresses=tuple(addrs.get(raw["index"], ())),
                link=raw.get("IFLA_LINK") or None,
                master=raw.get("IFLA_MASTER") or None,
                link_type=raw.get("ifi_type", ARPHRD_ETHER),
            )
        )
    return NetnsLinks(inode=inode, links=tuple(links), default_oifs=defaults)


# ------------------------------------------------------------ joining (pure)


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
            topo.interfaces[(ns.inode, link.ifindex)] = Interface(
                netns=ns.inode,
                ifindex=link.ifindex,
                name=link.name,
                role=ROLE_CONTAINER,
                mac=link.mac,
                addresses=link.addresses,
                container=c.name,
                container_id=c.id,
                network=network,
                peer_ifindex=link.link if link.kind == "veth" else None,
                master_ifindex=link.master,
                kind=link.kind,
                link_type=link.link_type,
            )

    for link in host.links:
        container, network, role = None, bridge_net.get(link.master), ROLE_HOST
        if link.ifindex in bridge_net:
            role, network = ROLE_BRIDGE, bridge_net[link.ifindex]
        elif link.ifindex in peers:
            container, endpoint_network = peers[link.ifindex]
            role, network = ROLE_VETH_HOST, network or endpoint_network
        topo.interfaces[(host.inode, link.ifindex)] = Interface(
            netns=host.inode,
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
            uplink=link.ifindex in host.default_oifs,
            kind=link.kind,
            link_type=link.link_type,
        )
    return topo


# ------------------------------------------------------------ the Docker side


def _reason(exc: BaseException) -> str:
    """The innermost OS-level cause of a docker/requests error, on one line."""
    seen, visited = exc, {id(exc)}
    while True:
        inner = [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
        nxt = inner[0] if inner else (seen.__cause__ or seen.__context__)
        if nxt is None or id(nxt) in visited:
            break
        seen = nxt
        visited.add(id(nxt))
    text = str(seen) if isinstance(seen, OSError) and str(seen) else str(exc)
    return " ".join(text.split())


def _engine_error(exc: Exception) -> DockerUnavailableError:
    import docker

    if isinstance(exc, docker.errors.APIError):
        return DockerUnavailableError(f"the Docker engine failed: {_reason(exc)}")
    return DockerUnavailableError(f"cannot reach the Docker engine: {_reason(exc)}")


def docker_client() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default the local socket), pinged."""
    import docker
    import requests

    url = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise DockerUnavailableError(
            f"cannot reach the Docker engine at {url}: {_reason(exc)}"
        ) from exc
    return client


def discover(
    client: docker.DockerClient,
    proc_root: str = "/proc",
    read_links: LinkReader = read_netns,
    wanted: Callable[[dict[str, Any]], bool] | None = None,
) -> Topology:
    """Snapshot the host: Docker's view joined with every running container's netns.

    With `wanted`, only the netns of the containers it accepts (given their
    inspect data) are read; the others are listed without interfaces.  Reading
    a netns costs a fork, so a one-shot command on a host of many containers
    reads only those it is about.  Containers that stop while we look are left
    out, not reported as errors.
    """
    import docker
    import requests

    try:
        networks = client.api.networks()
        summaries = client.api.containers()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _engine_error(exc) from exc
    host = read_links(f"{proc_root}/self/ns/net")
    by_inode = {host.inode: host}
    seen = []
    for summary in summaries:
        try:
            attrs = client.api.inspect_container(summary["Id"])
        except docker.errors.NotFound:
            continue
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise _engine_error(exc) from exc
        pid = attrs["State"].get("Pid") or 0
        if not attrs["State"].get("Running") or pid <= 0:
            continue
        path = f"{proc_root}/{pid}/ns/net"
        try:
            inode = os.stat(path).st_ino
            if inode not in by_inode and wanted is not None and not wanted(attrs):
                seen.append((attrs, NetnsLinks(inode, ())))
                continue
            if inode not in by_inode:
                by_inode[inode] = read_links(path)
        except Exception as exc:  # pyroute2 relays its netns helper's failure as it comes
            if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES) or \
                    "not permitted" in str(exc):
                raise PrivilegeError(
                    f"cannot enter the network namespace of container "
                    f"{attrs.get('Name', '?').lstrip('/')}: needs CAP_SYS_ADMIN and "
                    "CAP_SYS_PTRACE") from exc
            continue   # the container exited between inspect and here
        seen.append((attrs, by_inode[inode]))
    return assemble(host, seen, networks)


# ------------------------------------------------------------ text output

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
            lines.extend(_row(c.name, ["in", where, *_compose_words(c)]))
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
        return _row(c.name, [f"{ip:<15}", f"netns {c.netns}", *_compose_words(c), *ports])
    rows = []
    for i in own:
        peer = host_if.get(i.peer_ifindex) if i.peer_ifindex else None
        right = ["<->", f"{peer.name}/{peer.ifindex}"] if peer else []
        rows.extend(_row(c.name, [f"{ip:<15}", f"{i.name}/{i.ifindex}@{c.netns}", *right,
                                  *_compose_words(c), *ports]))
    return rows


def _compose_words(c: Container) -> list[str]:
    """`compose PROJECT/SERVICE` for a container Compose created."""
    if not (c.compose_project or c.compose_service):
        return []
    return [f"compose {c.compose_project}/{c.compose_service}"]
