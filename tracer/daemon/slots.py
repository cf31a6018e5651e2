"""Which container each BPF counter slot belongs to, kept right under churn.

The kernel counts by slot (bpf/accounting.h); this registry gives each running
container a slot, writes its interfaces and addresses into the BPF maps, and
takes them out when it goes.  A freed slot is zeroed and reused last, and a
slot's flows count only from its allocation time on, so a reused netns inode,
ifindex, address or slot never carries counts to the wrong container.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from tracer.host.topology import (
    ATTACH_FAILED,
    NO_SLOT,
    ROLE_VETH_HOST,
    Container,
    Topology,
    exit_devices,
    uncountable_reason,
)
from tracer.kernel import wire
from tracer.kernel.tclink import FAILED, LINKED

log = logging.getLogger("cntrace.registry")


@dataclasses.dataclass(frozen=True)
class Tracked:
    slot: int
    container: Container
    ifaces: frozenset[tuple[int, int]]     # (netns inode, ifindex) of its own interfaces
    addresses: frozenset[str]
    veths: frozenset[int]                  # host-side veth ifindexes: where it is counted
    since_ns: int                          # allocation time, wire.flow_clock_ns
    linked: frozenset[int] = frozenset()   # the veths its counting programs are on




class CounterMaps(Protocol):
    """What the registry needs of the BPF maps (a fake in unit tests)."""

    def set_iface(self, netns: int, ifindex: int, slot: int) -> None: ...
    def delete_iface(self, netns: int, ifindex: int) -> None: ...
    def set_addr(self, address: str, slot: int) -> None: ...
    def delete_addr(self, address: str) -> None: ...
    def set_host_addrs(self, addresses: set[str]) -> None: ...
    def clear_slot(self, slot: int) -> None: ...
    def attach_veth(self, ifindex: int, slot: int) -> str: ...
    def detach_veth(self, ifindex: int) -> None: ...
    def attach_exit(self, ifindex: int, header_len: int) -> str: ...
    def detach_exit(self, ifindex: int) -> None: ...


def host_addresses(topo: Topology) -> set[str]:
    """Every address on a host-netns interface (bridge gateways included)."""
    found = set()
    for iface in topo.interfaces.values():
        if iface.netns != topo.host_netns:
            continue
        for address in iface.addresses:
            found.add(str(ipaddress.ip_interface(address).ip))
    return found


def uncounted_reason(topo: Topology, container: Container, tracked: Tracked | None) -> str | None:
    """Why `container` is not counted (the `reason` of
    cntrace_container_uncounted), or None when its veths carry the counting
    programs."""
    if tracked is not None and tracked.linked:
        return None
    return uncountable_reason(topo, container) or (NO_SLOT if tracked is None
                                                   else ATTACH_FAILED)


class ContainerSlots:
    """Each running container's counter slot, its interfaces and addresses in the
    BPF maps (CounterMaps), kept right by reconcile()."""

    def __init__(
        self,
        maps: CounterMaps,
        discover: Callable[[], Topology],
        max_slots: int,
        clock_ns: Callable[[], int] = wire.flow_clock_ns,
        counting: bool = True,
    ) -> None:
        """counting: the veth programs are to be attached (some per-packet
        collector is on)."""
        self._maps = maps
        self._counting = counting
        self._discover = discover
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._by_id: dict[str, Tracked] = {}
        self._fresh = iter(range(max_slots))
        self._freed: collections.deque[int] = collections.deque()
        self.topology: Topology | None = None
        self.attribution_failures = 0
        self._failed_veths: set[int] = set()   # counted once, retried each reconcile
        self.exits: set[int] = set()             # exit devices carrying the SNAT counter
        # Running containers without counters, by id: (container, reason).
        self.uncounted: dict[str, tuple[Container, str]] = {}

    def snapshot(self) -> dict[int, Tracked]:
        with self._lock:
            return {t.slot: t for t in self._by_id.values()}

    def reconcile(self) -> tuple[list[str], list[str]]:
        """Bring the maps in line with Docker; returns (started, gone) names.
        DockerUnavailableError propagates: the caller keeps the current maps."""
        topo = self._discover()
        started, gone = [], []
        with self._lock:
            self.topology = topo
            self._maps.set_host_addrs(host_addresses(topo))
            self._update_exits(exit_devices(topo))   # first: an exit may now be a container's
            for cid in list(self._by_id):
                if cid not in topo.containers:
                    gone.append(self._remove(cid))
            for cid, container in topo.containers.items():
                ifaces = frozenset((i.netns, i.ifindex) for i in topo.container_interfaces(cid))
                veths = frozenset(i.ifindex for i in topo.host_veths(cid))
                addresses = container.addresses
                current = self._by_id.get(cid)
                if current and (current.container.netns, current.container.pid) != (
                        container.netns, container.pid):
                    gone.append(self._remove(cid))   # restarted: a new netns, a new slot
                    current = None
                if current is None:
                    if self._add(container, ifaces, addresses, veths):
                        started.append(container.name)
                elif (current.ifaces, current.addresses, current.veths) != (
                        ifaces, addresses, veths) or current.linked != current.veths:
                    self._update(current, container, ifaces, addresses, veths)
            self._failed_veths &= {i.ifindex for i in topo.interfaces.values()
                                   if i.role == ROLE_VETH_HOST}
            reasons = {cid: (c, uncounted_reason(topo, c, self._by_id.get(cid)))
                       for cid, c in topo.containers.items()} if self._counting else {}
            self.uncounted = {cid: pair for cid, pair in reasons.items() if pair[1]}
        return started, gone

    def _update_exits(self, exits: dict[int, int]) -> None:
        for ifindex in self.exits - exits.keys():
            self._maps.detach_exit(ifindex)
            self.exits.discard(ifindex)
        for ifindex, header_len in exits.items():
            if ifindex in self.exits:
                continue
            result = self._maps.attach_exit(ifindex, header_len)
            if result == LINKED:
                self.exits.add(ifindex)
            elif result == FAILED:   # retried at the next reconcile
                log.warning("exit device %d refused the SNAT counter", ifindex)

    def _allocate(self) -> int | None:
        slot = next(self._fresh, None)
        if slot is None and self._freed:
            slot = self._freed.popleft()
        return slot

    def _add(self, container: Container, ifaces, addresses, veths) -> bool:
        slot = self._allocate()
        if slot is None:
            self.attribution_failures += 1
            log.warning("no counter slot left for container %s", container.name)
            return False
        self._maps.clear_slot(slot)
        tracked = Tracked(slot, container, ifaces, addresses, veths, self._clock_ns())
        self._by_id[container.id] = self._write(tracked, frozenset(), frozenset(), frozenset())
        return True

    def _update(self, current: Tracked, container: Container, ifaces, addresses,
                veths) -> None:
        tracked = Tracked(current.slot, container, ifaces, addresses, veths, current.since_ns,
                          current.linked & veths)
        self._by_id[container.id] = self._write(
            tracked, current.ifaces - ifaces, current.addresses - addresses,
            current.linked - veths, current)

    def _write(self, tracked: Tracked, old_ifaces, old_addresses, old_links,
               current: Tracked | None = None) -> Tracked:
        """Take out what went away, then put in what is new; returns tracked
        with the veths whose links are now in place."""
        for netns, ifindex in old_ifaces:
            self._maps.delete_iface(netns, ifindex)
        for address in old_addresses:
            self._maps.delete_addr(address)
        for ifindex in old_links:
            self._maps.detach_veth(ifindex)
        known = current or Tracked(tracked.slot, tracked.container, frozenset(), frozenset(),
                                   frozenset(), 0)
        for netns, ifindex in tracked.ifaces - known.ifaces:
            self._maps.set_iface(netns, ifindex, tracked.slot)
        for address in tracked.addresses - known.addresses:
            self._maps.set_addr(address, tracked.slot)
        linked = set(tracked.linked)
        for ifindex in tracked.veths - tracked.linked if self._counting else ():
            if self._link(tracked, ifindex):
                linked.add(ifindex)
        return dataclasses.replace(tracked, linked=frozenset(linked))

    def _link(self, tracked: Tracked, ifindex: int) -> bool:
        """A veth that vanished first (its container died as it started) is
        not a failure; a real failure counts once and is retried later."""
        result = self._maps.attach_veth(ifindex, tracked.slot)
        if result == LINKED:
            self._failed_veths.discard(ifindex)
            return True
        if result == FAILED and ifindex not in self._failed_veths:
            self._failed_veths.add(ifindex)
            self.attribution_failures += 1
            log.warning("cannot count container %s: its veth %d refused the counting "
                        "programs (will retry)", tracked.container.name, ifindex)
        return False

    def _remove(self, cid: str) -> str:
        tracked = self._by_id.pop(cid)
        self._write(dataclasses.replace(tracked, veths=frozenset(), linked=frozenset()),
                    tracked.ifaces, tracked.addresses, tracked.linked, tracked)
        self._maps.clear_slot(tracked.slot)
        self._freed.append(tracked.slot)
        return tracked.container.name
