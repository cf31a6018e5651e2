"""Attach container identity to events: which interface (and so which
container, veth, bridge or host device) an event was seen on, and which
containers its addresses belong to."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tracer.host.topology import Interface, Topology
from tracer.kernel.wire import Event


@dataclass(frozen=True)
class AttributedEvent:
    event: Event
    interface: Interface | None      # None: device unknown to the topology
    src_container: str | None
    dst_container: str | None
    drop_reason: str | None          # the running kernel's enum name
    drop_location: str | None        # kernel symbol+offset


class Attributor:
    """Looks events up in a Topology, rediscovering it (at most once per
    `refresh_interval` seconds) when an event names an unknown device, so new
    containers are picked up without a Docker event subscription."""

    def __init__(
        self,
        discover: Callable[[], Topology],
        drop_reasons: dict[int, str] | None = None,
        symbolize: Callable[[int], str] | None = None,
        refresh_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        topology: Topology | None = None,
        refresh_for: Callable[[int], bool] | None = None,
    ) -> None:
        self._discover = discover
        self._drop_reasons = drop_reasons or {}
        self._symbolize = symbolize
        self._refresh_interval = refresh_interval
        self._clock = clock
        self.topology = topology or discover()   # a caller's fresh one saves a discovery
        # Which netns an unknown device is worth a rediscovery for (default: any).
        self._refresh_for = refresh_for or (lambda netns: True)
        self._refreshed_at = clock()
        self.unknown_devices = 0

    def refresh(self) -> None:
        self.topology = self._discover()
        self._refreshed_at = self._clock()

    def _interface(self, netns: int, ifindex: int) -> Interface | None:
        if not ifindex:
            return None
        iface = self.topology.lookup(netns, ifindex)
        if iface is None and self._clock() - self._refreshed_at >= self._refresh_interval \
                and self._refresh_for(netns):
            self.refresh()
            iface = self.topology.lookup(netns, ifindex)
        if iface is None:
            self.unknown_devices += 1
        return iface

    def _container_name(self, address: str) -> str | None:
        container = self.topology.container_by_address(address)
        return container.name if container else None

    def attribute(self, event: Event) -> AttributedEvent:
        # Through NAT the packet's own addresses may be translated ones; the
        # conntrack tuples name the real endpoints: the original sender is
        # orig.src, the real receiver (after any DNAT) is reply.src.
        src, dst = event.src, event.dst
        ct = event.conntrack
        if ct is not None:
            o, r = ct.orig, ct.reply
            if (src, dst) in ((o.src, o.dst), (r.dst, r.src)):
                src, dst = o.src, r.src
            elif (src, dst) in ((r.src, r.dst), (o.dst, o.src)):
                src, dst = r.src, o.src
        reason = location = None
        if event.is_drop:
            reason = self._drop_reasons.get(event.drop_reason, str(event.drop_reason))
            if self._symbolize and event.location:
                location = self._symbolize(event.location)
        return AttributedEvent(
            event=event,
            interface=self._interface(event.netns, event.ifindex),
            src_container=self._container_name(src),
            dst_container=self._container_name(dst),
            drop_reason=reason,
            drop_location=location,
        )
