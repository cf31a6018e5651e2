"""The sampler over fake counters: active flows per owner, an eviction
counter that never goes down, NAT bindings from conntrack's tuples, and a
failed pass that keeps the last sample."""

import threading
import time

from tests.unit import fakes
from tests.unit.test_registry import FakeMaps
from tracer.daemon.collector import Sampler
from tracer.daemon.slots import ContainerSlots
from tracer.kernel import wire


class FakeCounters:
    def __init__(self):
        self.inserts, self.values = 0, []

    def stats(self):
        return {wire.STAT_FLOW_INSERTS: self.inserts}

    def flows(self):
        yield from self.values


def flow(slot, first, last):
    return wire.FlowValue(first_ns=first, last_ns=last, slot=slot)


def test_active_flows_count_only_recent_flows_of_the_current_owner():
    registry = ContainerSlots(FakeMaps(), fakes.topology, max_slots=8, clock_ns=lambda: 1_000)
    registry.reconcile()
    slot = next(t.slot for t in registry.snapshot().values() if t.container.name == "a")
    counters = FakeCounters()
    counters.values = [flow(slot, 2_000, 10**12),      # recent
                       flow(slot, 500, 10**12),        # older than the slot's owner
                       flow(slot, 2_000, 1)]           # idle
    sampler = Sampler(counters, registry, flow_idle_s=1.0, conntrack=None,
                      clock_ns=lambda: 10**12 + 500_000_000)
    sample = sampler.sample()
    assert sample.active_flows == {slot: 1}
    assert sample.flows_entries == 3


def test_evictions_never_decrease():
    registry = ContainerSlots(FakeMaps(), fakes.topology, max_slots=8)
    counters = FakeCounters()
    sampler = Sampler(counters, registry, flow_idle_s=60, conntrack=None)
    counters.inserts, counters.values = 10, [flow(0, 0, 0)] * 4
    assert sampler.sample().flow_evictions == 6
    counters.inserts, counters.values = 11, [flow(0, 0, 0)] * 9   # a walk that saw more
    assert sampler.sample().flow_evictions == 6
    counters.inserts, counters.values = 20, [flow(0, 0, 0)] * 4
    assert sampler.sample().flow_evictions == 16


def test_nat_bindings_come_from_tuples_that_do_not_mirror():
    """SNAT: the reply is not addressed to the original source; DNAT: the
    reply does not come from the original destination.  Each is counted
    for the container it belongs to, and an entry without NAT for none."""
    registry = ContainerSlots(FakeMaps(), fakes.topology, max_slots=8)
    registry.reconcile()
    slots = {t.container.name: t.slot for t in registry.snapshot().values()}
    entries = [
        ("172.17.0.2", "198.51.100.2", "198.51.100.2", "198.51.100.1"),   # a, masqueraded
        ("172.17.0.2", "198.51.100.2", "198.51.100.2", "198.51.100.1"),   # a, again
        ("198.51.100.2", "198.51.100.1", "172.17.0.3", "198.51.100.2"),   # to b's port
        ("172.17.0.2", "172.17.0.3", "172.17.0.3", "172.17.0.2"),         # a -> b: no NAT
        ("10.9.9.9", "198.51.100.2", "198.51.100.2", "198.51.100.1"),     # nobody's
    ]
    sampler = Sampler(FakeCounters(), registry, flow_idle_s=60,
                      conntrack=lambda: (entries, 5, 65536))
    sample = sampler.sample()
    assert sample.snat_bindings == {slots["a"]: 2}
    assert sample.dnat_bindings == {slots["b"]: 1}
    assert (sample.conntrack_entries, sample.conntrack_limit) == (5, 65536)


def test_a_failed_pass_keeps_the_previous_sample():
    registry = ContainerSlots(FakeMaps(), fakes.topology, max_slots=8)
    registry.reconcile()
    calls = []

    def conntrack():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("conntrack unreadable")
        return [], 1, 10

    sampler = Sampler(FakeCounters(), registry, 60, conntrack, interval=0.01)
    first = sampler.sample()
    thread = threading.Thread(target=sampler.run)
    thread.start()
    while len(calls) < 3:   # two passes failed since
        time.sleep(0.01)
    sampler.stop()
    thread.join()
    assert sampler.latest.conntrack_limit == 10
    assert sampler.latest.taken_at >= first.taken_at
