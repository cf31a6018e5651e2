"""What to trace, validated in Python and handed to the kernel as typed map
entries (bpf/skb.h: filter_config, filter_addrs, filter_ifaces, filter_netns).
No user text ever reaches the BPF C source."""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracer.errors import UsageError
from tracer.kernel import wire

if TYPE_CHECKING:
    from tracer.host.topology import Topology


@dataclass(frozen=True)
class FilterSpec:
    """A filter as the user gave it."""

    containers: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    proto: str | None = None
    port: int | None = None
    icmp_id: int | None = None
    drops: bool = True


@dataclass
class KernelFilter:
    """A FilterSpec resolved against the topology: exactly what the maps hold."""

    flags: int = 0
    proto: int = 0
    port: int = 0
    icmp_id: int = 0
    addresses: set[str] = field(default_factory=set)
    netns: set[int] = field(default_factory=set)
    ifaces: set[tuple[int, int]] = field(default_factory=set)

    def config(self) -> wire.FilterConfig:
        return wire.FilterConfig(
            flags=self.flags, port=self.port, icmp_id=self.icmp_id, proto=self.proto
        )


def parse_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise UsageError(f"invalid IP address '{text}'") from None


def parse_port(value: str | int) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid port '{value}': expected a number 1-65535") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid port {port}: expected 1-65535")
    return port


def parse_proto(text: str) -> str:
    name = text.lower()
    if name not in wire.PROTOCOL_NUMBERS:
        known = ", ".join(sorted(wire.PROTOCOL_NUMBERS))
        raise UsageError(f"unknown protocol '{text}': expected one of {known}")
    return name


def resolve(spec: FilterSpec, topology: Topology) -> KernelFilter:
    """UsageError for an unknown container or a malformed value."""
    result = KernelFilter()
    for ref in spec.containers:
        container = topology.find_container(ref)
        result.netns.add(container.netns)
        result.addresses.update(container.addresses)
        result.ifaces.update((i.netns, i.ifindex) for i in topology.host_veths(container.id))
    result.addresses.update(parse_address(a) for a in spec.addresses)
    if result.addresses or result.netns or result.ifaces:
        result.flags |= wire.FILTER_WHO
    if spec.proto is not None:
        result.flags |= wire.FILTER_PROTO
        result.proto = wire.PROTOCOL_NUMBERS[parse_proto(spec.proto)]
    if spec.port is not None:
        result.flags |= wire.FILTER_PORT
        result.port = parse_port(spec.port)
    if spec.icmp_id is not None:
        result.flags |= wire.FILTER_ICMP_ID
        result.icmp_id = spec.icmp_id & 0xFFFF
    if not spec.drops:
        result.flags |= wire.FILTER_NO_DROPS
    return result


def addr_key(address: str) -> wire.AddrKey:
    """IPv4 as IPv4-mapped IPv6, the form bpf/skb.h looks up."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return wire.AddrKey((ctypes.c_uint8 * 16)(*ip.packed))


def install(kernel_filter: KernelFilter, tracer) -> None:
    """Write the filter into the loaded program's maps (sets first, then the
    config that enables them, so no packet sees a half-written filter)."""
    for address in kernel_filter.addresses:
        tracer["filter_addrs"][addr_key(address)] = ctypes.c_uint8(1)
    for netns, ifindex in kernel_filter.ifaces:
        tracer["filter_ifaces"][wire.IfaceKey(netns, ifindex)] = ctypes.c_uint8(1)
    for netns in kernel_filter.netns:
        tracer["filter_netns"][ctypes.c_uint32(netns)] = ctypes.c_uint8(1)
    tracer["filter_config"][ctypes.c_int(0)] = kernel_filter.config()
