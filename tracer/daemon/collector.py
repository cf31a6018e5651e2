"""Prometheus metrics, read from the BPF maps at scrape time.

Nothing here increments a metric object: every scrape yields fresh metric
families built from the kernel's counters, the registry's slots and the
sampler's last pass (flows, conntrack), the client_python custom-collector way.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from tracer.daemon import buildinfo
from tracer.daemon.settings import COLLECTORS, container_label_name
from tracer.daemon.slots import ContainerSlots
from tracer.host.topology import Container
from tracer.kernel import wire

log = logging.getLogger("cntrace.collector")

DIRECTIONS = {wire.DIR_TX: "tx", wire.DIR_RX: "rx"}
# Every per-container series carries these, then container_label_<name> of
# each --docker.label.
CONTAINER_LABELS = ["container", "compose_project", "compose_service"]


@dataclass
class DaemonStats:
    """Counters of the daemon's own work, kept by the daemon's threads."""

    events_received: int = 0
    events_undecodable: int = 0
    docker_reconnects: int = 0
    docker_connected: bool = False
    hooks: list = field(default_factory=list)     # loader.HookStatus


@dataclass
class Sample:
    """One pass over the flow table and conntrack (slow: done off the scrape path)."""

    flows_entries: int = 0
    flow_evictions: int = 0        # kept monotonic: it is exported as a counter
    active_flows: dict[int, int] = field(default_factory=dict)
    snat_bindings: dict[int, int] = field(default_factory=dict)
    dnat_bindings: dict[int, int] = field(default_factory=dict)
    conntrack_entries: int | None = None
    conntrack_limit: int | None = None
    taken_at: float = 0.0


class Sampler:
    """Walks the flow table and the conntrack table every `interval` seconds."""

    def __init__(self, counters, registry: ContainerSlots, flow_idle_s: float,
                 conntrack: Callable[[], tuple[list, int | None, int | None]] | None,
                 interval: float = 5.0,
                 clock_ns: Callable[[], int] = wire.flow_clock_ns,
                 walk_flows: bool = True) -> None:
        self._counters = counters
        self._walk_flows = walk_flows
        self._registry = registry
        self._idle_ns = int(flow_idle_s * 1e9)
        self._conntrack = conntrack
        self._interval = interval
        self._clock_ns = clock_ns
        self.latest = Sample()
        self._stop = threading.Event()

    def sample(self) -> Sample:
        tracked = self._registry.snapshot()
        now = self._clock_ns()
        active: dict[int, int] = {}
        entries = 0
        # Inserts read before the walk, entries counted during it, in the same
        # pass: nothing deletes flows but LRU eviction, so the difference is
        # the evictions (a flow inserted mid-walk only makes it smaller).
        inserts = self._counters.stats()[wire.STAT_FLOW_INSERTS]
        for flow in self._counters.flows() if self._walk_flows else ():
            entries += 1
            owner = tracked.get(flow.slot)
            # A flow older than its slot's owner belonged to a previous owner.
            if owner and flow.first_ns >= owner.since_ns and now - flow.last_ns <= self._idle_ns:
                active[flow.slot] = active.get(flow.slot, 0) + 1
        evictions = max(self.latest.flow_evictions, inserts - entries)
        result = Sample(flows_entries=entries, flow_evictions=evictions, active_flows=active,
                        taken_at=time.time())
        if self._conntrack:
            entries, result.conntrack_entries, result.conntrack_limit = self._conntrack()
            by_addr = {a: t.slot for t in tracked.values() for a in t.addresses}
            # NAT shows in the tuples: the reply no longer mirrors the original.
            for orig_src, orig_dst, reply_src, reply_dst in entries:
                if reply_dst != orig_src and orig_src in by_addr:
                    slot = by_addr[orig_src]
                    result.snat_bindings[slot] = result.snat_bindings.get(slot, 0) + 1
                if reply_src != orig_dst and reply_src in by_addr:
                    slot = by_addr[reply_src]
                    result.dnat_bindings[slot] = result.dnat_bindings.get(slot, 0) + 1
        self.latest = result
        return result

    def run(self) -> None:
        """Sample at once, then every `interval`; a failed pass (a map walk
        racing a reload, conntrack unreadable) keeps the previous sample."""
        delay = 0.0
        while not self._stop.wait(delay):
            delay = self._interval
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - logged, and the daemon keeps serving
                log.warning("flow/conntrack sample failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()


_CT_LINE = re.compile(r"src=(\S+) dst=(\S+) .*?src=(\S+) dst=(\S+)")


def read_conntrack(proc_net: str = "/proc/net/nf_conntrack",
                   proc_sys: str = "/proc/sys/net/netfilter"
                   ) -> tuple[list[tuple[str, str, str, str]], int | None, int | None]:
    """(orig src, orig dst, reply src, reply dst) of each conntrack entry,
    and the table's use and limit.  /proc is parsed when present (64k
    entries in well under a second); conntrack netlink otherwise."""
    try:
        text = Path(proc_net).read_text()
        entries = [m.groups() for m in _CT_LINE.finditer(text)]
    except OSError:
        from pyroute2 import Conntrack

        with Conntrack() as ct:
            entries = [(e.tuple_orig.saddr, e.tuple_orig.daddr, e.tuple_reply.saddr,
                        e.tuple_reply.daddr) for e in ct.dump_entries()]
    return entries, _read_int(f"{proc_sys}/nf_conntrack_count"), \
        _read_int(f"{proc_sys}/nf_conntrack_max")


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


class CntraceCollector:
    """Every family of cntrace's metrics, each of the switchable ones
    (tracer/daemon/settings.py COLLECTORS) timed and guarded on its own, the
    node_exporter way: a collector that fails leaves the others standing and
    says so in cntrace_scrape_collector_success."""

    def __init__(self, counters, registry: ContainerSlots, sampler: Sampler, stats: DaemonStats,
                 drop_reasons: dict[int, str], collectors: frozenset[str] = frozenset(COLLECTORS),
                 docker_labels: tuple[str, ...] = ()) -> None:
        self._counters = counters
        self._registry = registry
        self._sampler = sampler
        self._stats = stats
        self._drop_reasons = drop_reasons
        self._collectors = [name for name in COLLECTORS if name in collectors]
        self._docker_labels = tuple(docker_labels)
        self.labels = [*CONTAINER_LABELS, *map(container_label_name, self._docker_labels)]

    def describe(self):
        return []   # no fixed description: series depend on the containers

    def _label_values(self, container: Container) -> list[str]:
        return [container.name, container.compose_project, container.compose_service,
                *(container.labels.get(name, "") for name in self._docker_labels)]

    def collect(self):
        tracked = self._registry.snapshot()
        everyone = {slot: self._label_values(t.container) for slot, t in tracked.items()}
        # Traffic is counted on a container's veths: one without them has no
        # traffic series (cntrace_container_uncounted says why), only drops.
        uncounted = self._registry.uncounted
        counted = {slot: values for slot, values in everyone.items()
                   if tracked[slot].container.id not in uncounted}
        produce = {"traffic": lambda: self._traffic(counted),
                   "peers": lambda: self._peers(counted, everyone),
                   "flows": lambda: self._flows(counted),
                   "nat": lambda: self._nat(counted),
                   "drops": lambda: self._drops(everyone),
                   "conntrack": lambda: self._conntrack(counted)}
        duration = GaugeMetricFamily("cntrace_scrape_collector_duration_seconds",
                                     "How long each collector took in this scrape",
                                     labels=["collector"])
        success = GaugeMetricFamily("cntrace_scrape_collector_success",
                                    "1 if the collector succeeded in this scrape",
                                    labels=["collector"])
        for name in self._collectors:
            start = time.perf_counter()
            try:
                families = list(produce[name]())
                ok = 1
            except Exception as exc:  # noqa: BLE001 - a map read failing: the rest still served
                log.warning("collector %s failed: %s", name, exc)
                families, ok = [], 0
            duration.add_metric([name], time.perf_counter() - start)
            success.add_metric([name], ok)
            yield from families
        yield duration
        yield success
        yield from self._self_metrics(tracked)

    def _traffic(self, who):
        labels = [*self.labels, "direction"]
        packets = CounterMetricFamily("cntrace_container_packets",
                                      "IP packets sent (tx) or received (rx) by a container, "
                                      "counted once at its own interface", labels=labels)
        nbytes = CounterMetricFamily("cntrace_container_bytes",
                                     "IP-layer bytes (IP header included, link layer excluded) "
                                     "sent or received by a container", labels=labels)
        for slot, values in who.items():
            for direction, label in DIRECTIONS.items():
                p, b = self._counters.traffic(slot, direction)
                packets.add_metric([*values, label], p)
                nbytes.add_metric([*values, label], b)
        yield packets
        yield nbytes

    def _peers(self, who, everyone):
        """Traffic of `who` by peer, a peer container named whether it is
        counted or not (a macvlan container has addresses)."""
        labels = [*self.labels, "peer", "direction"]
        packets = CounterMetricFamily("cntrace_container_peer_packets",
                                      "Packets between a container and a peer: another "
                                      "container, the host, or external", labels=labels)
        nbytes = CounterMetricFamily("cntrace_container_peer_bytes",
                                     "IP-layer bytes between a container and a peer",
                                     labels=labels)
        for key, p, b in self._counters.peer_traffic():
            if key.slot not in who:
                continue
            if key.peer == wire.PEER_HOST:
                peer = "host"
            elif key.peer == wire.PEER_EXTERNAL:
                peer = "external"
            elif key.peer in everyone:
                peer = everyone[key.peer][0]
            else:
                continue   # a peer container that is gone
            values = [*who[key.slot], peer, DIRECTIONS.get(key.direction, "tx")]
            packets.add_metric(values, p)
            nbytes.add_metric(values, b)
        yield packets
        yield nbytes

    def _nat(self, who):
        snat_p = CounterMetricFamily("cntrace_container_snat_packets",
                                     "Packets of a container's connections rewritten by SNAT "
                                     "(MASQUERADE)", labels=self.labels)
        snat_b = CounterMetricFamily("cntrace_container_snat_bytes",
                                     "IP-layer bytes rewritten by SNAT", labels=self.labels)
        snat_t = CounterMetricFamily("cntrace_container_snat_translations",
                                     "New SNAT bindings (connections) of a container",
                                     labels=self.labels)
        for slot, values in who.items():
            p, b, t = self._counters.snat(slot)
            snat_p.add_metric(values, p)
            snat_b.add_metric(values, b)
            snat_t.add_metric(values, t)
        labels = [*self.labels, "port", "protocol"]
        dnat_p = CounterMetricFamily("cntrace_container_dnat_packets",
                                     "Packets to a container's published port, after DNAT",
                                     labels=labels)
        dnat_b = CounterMetricFamily("cntrace_container_dnat_bytes",
                                     "IP-layer bytes to a published port, after DNAT",
                                     labels=labels)
        dnat_t = CounterMetricFamily("cntrace_container_dnat_translations",
                                     "New DNAT bindings (connections) to a published port",
                                     labels=labels)
        for key, p, b, t in self._counters.dnat():
            if key.slot not in who:
                continue
            values = [*who[key.slot], str(key.port), wire.PROTOCOLS.get(key.proto,
                                                                        str(key.proto))]
            dnat_p.add_metric(values, p)
            dnat_b.add_metric(values, b)
            dnat_t.add_metric(values, t)
        yield from (snat_p, snat_b, snat_t, dnat_p, dnat_b, dnat_t)

    def _conntrack(self, who):
        sample = self._sampler.latest
        bindings = GaugeMetricFamily("cntrace_container_nat_bindings",
                                     "Conntrack entries with NAT for a container, by type",
                                     labels=[*self.labels, "type"])
        for slot, values in who.items():
            bindings.add_metric([*values, "snat"], sample.snat_bindings.get(slot, 0))
            bindings.add_metric([*values, "dnat"], sample.dnat_bindings.get(slot, 0))
        yield bindings
        if sample.conntrack_entries is not None:
            yield GaugeMetricFamily("cntrace_conntrack_entries",
                                    "Entries in the host's conntrack table",
                                    value=sample.conntrack_entries)
        if sample.conntrack_limit is not None:
            yield GaugeMetricFamily("cntrace_conntrack_entries_limit",
                                    "The conntrack table's limit (nf_conntrack_max)",
                                    value=sample.conntrack_limit)

    def _drops(self, who):
        drops = CounterMetricFamily("cntrace_container_drops",
                                    "Packets of a container dropped by the kernel, by the "
                                    "running kernel's drop reason",
                                    labels=[*self.labels, "reason"])
        for key, count in self._counters.drops():
            if key.slot in who:
                reason = self._drop_reasons.get(key.reason, str(key.reason))
                drops.add_metric([*who[key.slot], reason], count)
        yield drops

    def _flows(self, who):
        opened = CounterMetricFamily("cntrace_container_flows_opened",
                                     "Flows (5-tuples) a container started or accepted",
                                     labels=self.labels)
        active = GaugeMetricFamily("cntrace_container_flows_active",
                                   "Flows of a container with a packet in the idle window",
                                   labels=self.labels)
        sample = self._sampler.latest
        for slot, values in who.items():
            opened.add_metric(values, self._counters.flows_opened(slot))
            active.add_metric(values, sample.active_flows.get(slot, 0))
        yield opened
        yield active

    def _self_metrics(self, tracked):
        stats = self._counters.stats()
        yield InfoMetricFamily("cntrace_build", "cntrace build information",
                               value=buildinfo.labels())
        attached = GaugeMetricFamily("cntrace_hook_attached",
                                     "1 if the BPF program is attached at this hook, with "
                                     "the mechanism this kernel offered for it",
                                     labels=["hook", "mechanism"])
        for hook in self._stats.hooks:
            attached.add_metric([hook.name, hook.mechanism], 1 if hook.attached else 0)
        yield attached
        yield GaugeMetricFamily("cntrace_containers", "Containers being accounted",
                                value=len(tracked))
        uncounted = GaugeMetricFamily("cntrace_container_uncounted",
                                      "1 for a running container without traffic counters, "
                                      "with the reason (host_network, shared_netns, "
                                      "no_network, macvlan, ipvlan, no_veth, no_slot, "
                                      "attach_failed)", labels=[*self.labels, "reason"])
        for container, reason in self._registry.uncounted.values():
            uncounted.add_metric([*self._label_values(container), reason], 1)
        yield uncounted
        devices = GaugeMetricFamily("cntrace_tc_devices", "Devices carrying the daemon's tc "
                                    "counting programs: container veths, and the host's exit "
                                    "devices (SNAT is counted as packets leave)",
                                    labels=["kind"])
        devices.add_metric(["veth"], sum(len(t.linked) for t in tracked.values()))
        devices.add_metric(["exit"], len(self._registry.exits))
        yield devices
        yield CounterMetricFamily("cntrace_events_received", "Events decoded from the ring "
                                  "buffer", value=self._stats.events_received)
        lost = CounterMetricFamily("cntrace_events_lost", "Events lost: in the kernel (ring "
                                   "buffer full) or in the reader (undecodable)",
                                   labels=["side"])
        lost.add_metric(["kernel"], stats[wire.STAT_LOST])
        lost.add_metric(["reader"], self._stats.events_undecodable)
        yield lost
        usage = self._counters.map_usage()
        sample = self._sampler.latest
        usage["flows"] = (sample.flows_entries, self._counters.flow_capacity())
        entries = GaugeMetricFamily("cntrace_map_entries", "Entries in a BPF map",
                                    labels=["map"])
        capacity = GaugeMetricFamily("cntrace_map_capacity", "Capacity of a BPF map",
                                     labels=["map"])
        for name, (used, size) in sorted(usage.items()):
            entries.add_metric([name], used)
            capacity.add_metric([name], size)
        yield entries
        yield capacity
        yield CounterMetricFamily("cntrace_flow_table_evictions", "Flows evicted from the "
                                  "full LRU flow table (as of the last flow-table walk)",
                                  value=sample.flow_evictions)
        failures = CounterMetricFamily("cntrace_map_update_failures",
                                       "Failed BPF map updates", labels=["map"])
        failures.add_metric(["flows"], stats[wire.STAT_FLOW_UPDATE_FAILED])
        failures.add_metric(["counters"], stats[wire.STAT_COUNTER_UPDATE_FAILED])
        yield failures
        yield CounterMetricFamily("cntrace_attribution_failures", "Containers that could not "
                                  "be given a counter slot, and container veths that refused "
                                  "the counting programs (once each until they take them)",
                                  value=self._registry.attribution_failures)
        yield CounterMetricFamily("cntrace_docker_reconnects", "Reconnections to the Docker "
                                  "engine", value=self._stats.docker_reconnects)
        yield GaugeMetricFamily("cntrace_docker_connected", "1 while the Docker event stream "
                                "is connected", value=1 if self._stats.docker_connected else 0)
