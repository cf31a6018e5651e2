"""The BPF-to-Python wire format: bpf/cntrace.h's structs mirrored with ctypes,
and a pure bytes-in, event-out decoder."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import time
from dataclasses import dataclass

EVENT_PACKET = 1
EVENT_DROP = 2

# bpf/cntrace.h HOOK_* -> the name users see.
HOOKS = {
    1: "tx",            # net_dev_start_xmit
    2: "rx",            # netif_receive_skb
    3: "PREROUTING",
    4: "INPUT",
    5: "FORWARD",
    6: "OUTPUT",
    7: "POSTROUTING",
    8: "drop",          # kfree_skb
}

PROTOCOLS = {socket.IPPROTO_ICMP: "icmp", socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp",
             socket.IPPROTO_ICMPV6: "icmp6", socket.IPPROTO_SCTP: "sctp"}
# The protocols whose headers start with source and destination ports.
PORT_PROTOCOLS = frozenset({socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_SCTP})
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOLS.items()}

# enum ip_conntrack_status bits (uapi, stable).
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

FILTER_WHO = 1
FILTER_PROTO = 2
FILTER_PORT = 4
FILTER_ICMP_ID = 8
FILTER_NO_DROPS = 16
FILTER_DROPS_ONLY = 32

STAT_EMITTED = 0
STAT_LOST = 1
STAT_FLOW_INSERTS = 2
STAT_FLOW_UPDATE_FAILED = 3
STAT_COUNTER_UPDATE_FAILED = 4

PEER_HOST = 0xFFFFFFFE
PEER_EXTERNAL = 0xFFFFFFFF
DIR_TX = 0
DIR_RX = 1

U8x16 = ctypes.c_uint8 * 16


class RawEvent(ctypes.Structure):
    """struct cntrace_event"""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("skb", ctypes.c_uint64),
        ("location", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("in_ifindex", ctypes.c_uint32),
        ("out_ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("drop_reason", ctypes.c_uint32),
        ("ct_status", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("hook", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("icmp_type", ctypes.c_uint8),
        ("icmp_code", ctypes.c_uint8),
        ("ct_proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("saddr", U8x16),
        ("daddr", U8x16),
        ("ct_orig_src", U8x16),
        ("ct_orig_dst", U8x16),
        ("ct_reply_src", U8x16),
        ("ct_reply_dst", U8x16),
        ("ct_orig_sport", ctypes.c_uint16),
        ("ct_orig_dport", ctypes.c_uint16),
        ("ct_reply_sport", ctypes.c_uint16),
        ("ct_reply_dport", ctypes.c_uint16),
        ("ifname", ctypes.c_char * 16),
        ("inner_proto", ctypes.c_uint8),
        ("ct_info", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 6),
    ]


class FilterConfig(ctypes.Structure):
    """struct filter_config"""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("icmp_id", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


class AddrKey(ctypes.Structure):
    """struct addr_key: IPv6, or IPv4-mapped IPv6."""

    _fields_ = [("addr", U8x16)]


class IfaceKey(ctypes.Structure):
    """struct iface_key"""

    _fields_ = [("netns", ctypes.c_uint32), ("ifindex", ctypes.c_uint32)]


class Traffic(ctypes.Structure):
    """struct traffic"""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class PeerKey(ctypes.Structure):
    """struct peer_key"""

    _fields_ = [("slot", ctypes.c_uint32), ("peer", ctypes.c_uint32),
                ("direction", ctypes.c_uint32)]


class DropKey(ctypes.Structure):
    """struct drop_key"""

    _fields_ = [("slot", ctypes.c_uint32), ("reason", ctypes.c_uint32)]


class DropCount(ctypes.Structure):
    """struct drop_count (per CPU; epoch is the kernel's own)"""

    _fields_ = [("count", ctypes.c_uint64), ("epoch", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class DnatKey(ctypes.Structure):
    """struct dnat_key"""

    _fields_ = [("slot", ctypes.c_uint32), ("port", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class FlowKey(ctypes.Structure):
    """struct flow_key"""

    _fields_ = [
        ("owner", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("local_port", ctypes.c_uint16),
        ("remote_port", ctypes.c_uint16),
        ("pad2", ctypes.c_uint16),
        ("local_addr", U8x16),
        ("remote_addr", U8x16),
    ]


def flow_clock_ns() -> int:
    """The flow table's clock: bpf_ktime_get_coarse_ns() is
    CLOCK_MONOTONIC_COARSE (Linux clock id 6), a tick-granular read that costs
    the per-packet path ~25 ns less than bpf_ktime_get_ns() here.  Times
    compared with flow entries must come from the same clock."""
    return time.clock_gettime_ns(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))


class FlowValue(ctypes.Structure):
    """struct flow_value (first_ns, last_ns: flow_clock_ns)"""

    _fields_ = [("first_ns", ctypes.c_uint64), ("last_ns", ctypes.c_uint64),
                ("slot", ctypes.c_uint32), ("peer", ctypes.c_uint32),
                ("peer_generation", ctypes.c_uint32), ("owner_generation", ctypes.c_uint32),
                ("column", ctypes.c_uint8 * 2), ("pad", ctypes.c_uint16), ("pad2", ctypes.c_uint32)]


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int
    dport: int

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport}


@dataclass(frozen=True)
class Conntrack:
    """The packet's conntrack entry: reply differs from inverted orig under NAT."""

    orig: Tuple
    reply: Tuple
    status: int

    @property
    def snat(self) -> bool:
        return bool(self.status & IPS_SRC_NAT)

    @property
    def dnat(self) -> bool:
        return bool(self.status & IPS_DST_NAT)

    def to_dict(self) -> dict:
        return {
            "orig": self.orig.to_dict(),
            "reply": self.reply.to_dict(),
            "snat": self.snat,
            "dnat": self.dnat,
        }


@dataclass(frozen=True)
class Event:
    ts_ns: int
    skb: int
    kind: int
    hook: str
    netns: int
    ifindex: int
    ifname: str
    in_ifindex: int
    out_ifindex: int
    length: int
    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    icmp_type: int
    icmp_code: int
    inner_proto: int
    tcp_flags: int
    drop_reason: int
    location: int
    conntrack: Conntrack | None

    @property
    def is_drop(self) -> bool:
        return self.kind == EVENT_DROP

    @property
    def proto_name(self) -> str:
        return PROTOCOLS.get(self.proto, str(self.proto))


def format_addr(raw: bytes, family: int) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw)))


def decode(data: bytes) -> Event:
    """One ring-buffer record -> Event.  DecodeError on a malformed record."""
    if len(data) < ctypes.sizeof(RawEvent):
        raise DecodeError(f"short event: {len(data)} < {ctypes.sizeof(RawEvent)} bytes")
    raw = RawEvent.from_buffer_copy(data[: ctypes.sizeof(RawEvent)])
    if raw.family not in (4, 6) or raw.kind not in (EVENT_PACKET, EVENT_DROP):
        raise DecodeError(f"bad event: family {raw.family}, kind {raw.kind}")
    family = raw.family
    conntrack = None
    if raw.ct_proto:
        conntrack = Conntrack(
            orig=Tuple(
                format_addr(bytes(raw.ct_orig_src), family),
                format_addr(bytes(raw.ct_orig_dst), family),
                raw.ct_orig_sport,
                raw.ct_orig_dport,
            ),
            reply=Tuple(
                format_addr(bytes(raw.ct_reply_src), family),
                format_addr(bytes(raw.ct_reply_dst), family),
                raw.ct_reply_sport,
                raw.ct_reply_dport,
            ),
            status=raw.ct_status,
        )
    return Event(
        ts_ns=raw.ts_ns,
        skb=raw.skb,
        kind=raw.kind,
        hook=HOOKS.get(raw.hook, f"hook{raw.hook}"),
        netns=raw.netns,
        ifindex=raw.ifindex,
        ifname=raw.ifname.decode(errors="replace"),
        in_ifindex=raw.in_ifindex,
        out_ifindex=raw.out_ifindex,
        length=raw.len,
        family=family,
        proto=raw.proto,
        src=format_addr(bytes(raw.saddr), family),
        dst=format_addr(bytes(raw.daddr), family),
        sport=raw.sport,
        dport=raw.dport,
        icmp_type=raw.icmp_type,
        icmp_code=raw.icmp_code,
        inner_proto=raw.inner_proto,
        tcp_flags=raw.tcp_flags,
        drop_reason=raw.drop_reason,
        location=raw.location,
        conntrack=conntrack,
    )
