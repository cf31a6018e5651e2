"""The flow-table sampler over fake counters: active flows per owner, and an
eviction counter that never goes down."""

from tests.unit import fakes
from tests.unit.test_registry import FakeMaps
from tracer import wire
from tracer.collector import Sampler
from tracer.registry import Registry


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
    registry = Registry(FakeMaps(), fakes.topology, max_slots=8, clock_ns=lambda: 1_000)
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
    registry = Registry(FakeMaps(), fakes.topology, max_slots=8)
    counters = FakeCounters()
    sampler = Sampler(counters, registry, flow_idle_s=60, conntrack=None)
    counters.inserts, counters.values = 10, [flow(0, 0, 0)] * 4
    assert sampler.sample().flow_evictions == 6
    counters.inserts, counters.values = 11, [flow(0, 0, 0)] * 9   # a walk that saw more
    assert sampler.sample().flow_evictions == 6
    counters.inserts, counters.values = 20, [flow(0, 0, 0)] * 4
    assert sampler.sample().flow_evictions == 16
