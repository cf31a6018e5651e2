"""How attributed events look: fixed-width text columns under 80 characters
(details on indented continuation lines) and one JSON object per line."""

from __future__ import annotations

import socket

from tracer.host.topology import ROLE_CONTAINER, ROLE_VETH_HOST
from tracer.kernel.wire import PORT_PROTOCOLS, PROTOCOLS, Event
from tracer.stream.attribution import AttributedEvent

HOOK_COLUMN = {
    "tx": "tx", "rx": "rx", "PREROUTING": "PRE", "INPUT": "IN", "FORWARD": "FWD",
    "OUTPUT": "OUT", "POSTROUTING": "POST", "drop": "DROP",
}
ICMP_NAMES = {
    (1, 0): "echo-reply", (1, 8): "echo", (1, 3): "unreach", (1, 11): "ttl-exceeded",
    (58, 128): "echo", (58, 129): "echo-reply", (58, 1): "unreach", (58, 3): "hop-exceeded",
    (58, 133): "router-solicit", (58, 134): "router-advert", (58, 135): "neigh-solicit",
    (58, 136): "neigh-advert", (58, 143): "mld-report",
}
ECHO_TYPES = {(1, 0), (1, 8), (58, 128), (58, 129)}
# IPv6 next headers that are not transports (extension headers are not walked).
OTHER_PROTOCOLS = {0: "ipv6-hopopts", 43: "ipv6-route", 44: "ipv6-frag", 50: "esp", 51: "ah"}
TCP_FLAGS = "FSRPAUEC"

WHERE_WIDTH = 24
HEADER = f"{'TIME(s)':<9} {'WHERE':<{WHERE_WIDTH}} {'HOOK':<4} PACKET"


def where(item: AttributedEvent) -> str:
    """Where the event was seen: "a:eth0", "veth1f2e[a]", "docker0", "eth0"."""
    iface, event = item.interface, item.event
    if iface is None:
        return f"{event.ifname or '?'}@{event.netns}" if event.ifindex else "-"
    if iface.role == ROLE_CONTAINER:
        return f"{iface.container}:{iface.name}"
    if iface.role == ROLE_VETH_HOST:
        return f"{iface.name}[{iface.container}]"
    return iface.name


def tcp_flags(flags: int) -> str:
    return "".join(c for bit, c in enumerate(TCP_FLAGS) if flags & (1 << bit)) or "."


def packet_summary(event: Event) -> str:
    proto = event.proto_name
    if event.proto in (1, 58):
        kind = ICMP_NAMES.get((event.proto, event.icmp_type), f"type {event.icmp_type}")
        if event.inner_proto:  # an error: the quoted packet goes on a detail line
            return f"{event.src} > {event.dst} {proto} {kind}/{event.icmp_code}"
        if (event.proto, event.icmp_type) in ECHO_TYPES:
            return f"{event.src} > {event.dst} {proto} {kind} {event.sport}/{event.dport}"
        return f"{event.src} > {event.dst} {proto} {kind}"
    if event.proto in PORT_PROTOCOLS:
        text = f"{event.src}:{event.sport} > {event.dst}:{event.dport} {proto}"
        tcp = event.proto == socket.IPPROTO_TCP
        return text + (f" {tcp_flags(event.tcp_flags)}" if tcp else "")
    return f"{event.src} > {event.dst} {OTHER_PROTOCOLS.get(event.proto, proto)}"


def nat_detail(event: Event) -> str | None:
    """The translation this packet carries, when its addresses differ from
    the conntrack original (SNAT seen after POSTROUTING, DNAT after PREROUTING)."""
    ct = event.conntrack
    if ct is None or not (ct.snat or ct.dnat):
        return None
    o, r = ct.orig, ct.reply
    parts = []
    if ct.snat and event.src == r.dst and r.dst != o.src:
        parts.append(f"snat {o.src} -> {r.dst}")
    if ct.dnat and event.dst == r.src and (r.src, r.sport) != (o.dst, o.dport):
        parts.append(f"dnat {o.dst}:{o.dport} -> {r.src}:{r.sport}")
    if ct.snat and event.dst == o.src and event.src == o.dst:
        parts.append(f"un-snat {r.dst} -> {o.src}")
    if ct.dnat and event.src == o.dst and event.dst == o.src:
        parts.append(f"un-dnat {r.src}:{r.sport} -> {o.dst}:{o.dport}")
    return ", ".join(parts) or None


def _fit(text: str, width: int) -> str:
    return f"{text:<{width}}" if len(text) <= width else text[: width - 1] + "~"


def format_text(item: AttributedEvent, t0_ns: int) -> str:
    event = item.event
    seconds = (event.ts_ns - t0_ns) / 1e9
    line = (
        f"{seconds:<9.6f} {_fit(where(item), WHERE_WIDTH)} "
        f"{HOOK_COLUMN.get(event.hook, event.hook):<4} "
        f"{packet_summary(event)}"
    )
    details = []
    if event.inner_proto:
        quoted = PROTOCOLS.get(event.inner_proto, str(event.inner_proto))
        details.append(f"about {quoted} {event.sport} > {event.dport}")
    nat = nat_detail(event)
    if nat:
        details.append(nat)
    if event.is_drop:
        at = f" at {item.drop_location}" if item.drop_location else ""
        details.append(f"dropped: {item.drop_reason}{at}")
    return "\n".join([line, *(f"{'':9} `- {d}" for d in details)])


def to_dict(item: AttributedEvent) -> dict:
    event, iface = item.event, item.interface
    data = {
        "ts_ns": event.ts_ns,
        "hook": event.hook,
        "kind": "drop" if event.is_drop else "packet",
        "skb": f"{event.skb:#x}",
        "netns": event.netns,
        "ifindex": event.ifindex,
        "ifname": event.ifname,
        "role": iface.role if iface else None,
        "container": iface.container if iface else None,
        "network": iface.network if iface else None,
        "in_ifindex": event.in_ifindex or None,
        "out_ifindex": event.out_ifindex or None,
        "family": event.family,
        "proto": event.proto_name,
        "src": event.src,
        "dst": event.dst,
        "src_container": item.src_container,
        "dst_container": item.dst_container,
        "len": event.length,
    }
    if event.proto in (1, 58):
        data.update(icmp_type=event.icmp_type, icmp_code=event.icmp_code)
        if event.inner_proto:
            data["quoted_proto"] = event.inner_proto
            data.update(quoted_sport=event.sport, quoted_dport=event.dport)
        else:
            data.update(icmp_id=event.sport, icmp_seq=event.dport)
    else:
        data.update(sport=event.sport, dport=event.dport)
    if event.proto == socket.IPPROTO_TCP:
        data["tcp_flags"] = tcp_flags(event.tcp_flags)
    if event.conntrack is not None:
        data["conntrack"] = event.conntrack.to_dict()
        data["nat"] = nat_detail(event)
    if event.is_drop:
        data["drop"] = {
            "reason": item.drop_reason,
            "reason_code": event.drop_reason,
            "location": item.drop_location,
        }
    return data
