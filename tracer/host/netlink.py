"""What netlink says about the interfaces of one network namespace, read
through pyroute2 with the namespace pinned by an open fd."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tracer.host.topology import ARPHRD_ETHER


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
