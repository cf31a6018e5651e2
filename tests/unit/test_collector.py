"""The collector over a fake host, read the client_python way: a private
CollectorRegistry and get_sample_value.  Labels (Compose, --docker.label),
the collectors switched off, a failing collector, and containers without
counters."""

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from tests.unit import fakes
from tests.unit.test_registry import FakeMaps
from tracer.daemon import buildinfo
from tracer.daemon.collector import CntraceCollector, DaemonStats, Sample, Sampler
from tracer.daemon.settings import COLLECTORS
from tracer.daemon.slots import ContainerSlots
from tracer.host.topology import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, Container
from tracer.kernel import wire

TEAM = "com.example.team"


class FakeCounters:
    """What the collector reads of the BPF maps, with set values."""

    def __init__(self, slots):
        self.slots = slots
        self.failing = set()

    def _check(self, what):
        if what in self.failing:
            raise OSError(f"{what}: map read failed")

    def traffic(self, slot, direction):
        self._check("traffic")
        return 10 * (slot + 1) + direction, 1000 * (slot + 1) + direction

    def peer_traffic(self):
        a, b = self.slots
        return [(wire.PeerKey(a, b, wire.DIR_TX), 7, 700),
                (wire.PeerKey(a, wire.PEER_EXTERNAL, wire.DIR_TX), 3, 300)]

    def snat(self, slot):
        return 2, 200, 1

    def dnat(self):
        return [(wire.DnatKey(self.slots[1], 80, 6), 5, 500, 1)]

    def drops(self):
        self._check("drops")
        return [(wire.DropKey(self.slots[0], 12), 4)]

    def flows_opened(self, slot):
        return 1

    def stats(self):
        return dict.fromkeys(range(5), 0)

    def map_usage(self):
        return {"container_ifaces": (2, 4096)}

    def flow_capacity(self):
        return 65536

    def flows(self):
        return iter(())


def labelled(topo):
    """Container a from Compose (project shop, service web, team payments)."""
    a = next(c for c in topo.containers.values() if c.name == "a")
    topo.containers[a.id] = dataclasses.replace(a, labels={
        COMPOSE_PROJECT_LABEL: "shop", COMPOSE_SERVICE_LABEL: "web", TEAM: "payments"})
    return topo


def collect(topo, collectors=frozenset(COLLECTORS), docker_labels=(TEAM,), failing=()):
    registry = ContainerSlots(FakeMaps(), lambda: topo, 16)
    registry.reconcile()
    slots = sorted(t.slot for t in registry.snapshot().values())
    counters = FakeCounters(slots)
    counters.failing = set(failing)
    sampler = Sampler(counters, registry, 60, None)
    sampler.latest = Sample(snat_bindings={slots[0]: 1})
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(CntraceCollector(counters, registry, sampler, DaemonStats(), {12: "DROP"},
                                      collectors, docker_labels))
    names = {t.container.name: t.slot for t in registry.snapshot().values()}
    return metrics, names


A = {"container": "a", "compose_project": "shop", "compose_service": "web",
     "container_label_com_example_team": "payments"}
B = {"container": "b", "compose_project": "", "compose_service": "",
     "container_label_com_example_team": ""}


def test_every_per_container_series_carries_compose_and_the_chosen_labels():
    metrics, slots = collect(labelled(fakes.topology()))
    a = slots["a"]
    get = metrics.get_sample_value
    assert get("cntrace_container_packets_total", {**A, "direction": "tx"}) == 10 * (a + 1)
    assert get("cntrace_container_bytes_total", {**A, "direction": "rx"}) == 1000 * (a + 1) + 1
    assert get("cntrace_container_peer_packets_total",
               {**A, "peer": "b", "direction": "tx"}) == 7   # the peer is named by container
    assert get("cntrace_container_peer_packets_total",
               {**A, "peer": "external", "direction": "tx"}) == 3
    assert get("cntrace_container_dnat_packets_total",
               {**B, "port": "80", "protocol": "tcp"}) == 5
    assert get("cntrace_container_drops_total", {**A, "reason": "DROP"}) == 4
    assert get("cntrace_container_nat_bindings", {**A, "type": "snat"}) == 1
    assert get("cntrace_container_flows_opened_total", B) == 1
    # without --docker.label, only the Compose pair
    metrics, _ = collect(labelled(fakes.topology()), docker_labels=())
    assert metrics.get_sample_value("cntrace_container_packets_total", {
        "container": "a", "compose_project": "shop", "compose_service": "web",
        "direction": "tx"}) is not None


def test_a_collector_switched_off_exports_nothing_and_is_not_timed():
    metrics, _ = collect(fakes.topology(), collectors=frozenset({"traffic", "drops"}))
    families = {m.name for m in metrics.collect()}
    assert {"cntrace_container_packets", "cntrace_container_drops"} <= families
    assert not families & {"cntrace_container_peer_packets", "cntrace_container_snat_packets",
                           "cntrace_container_flows_opened", "cntrace_container_nat_bindings"}
    timed = {s.labels["collector"] for m in metrics.collect() for s in m.samples
             if m.name == "cntrace_scrape_collector_success"}
    assert timed == {"traffic", "drops"}


def test_a_failing_collector_says_so_and_the_others_are_still_served():
    metrics, _ = collect(fakes.topology(), failing={"drops"})
    get = metrics.get_sample_value
    assert get("cntrace_scrape_collector_success", {"collector": "drops"}) == 0
    assert get("cntrace_scrape_collector_success", {"collector": "traffic"}) == 1
    assert get("cntrace_scrape_collector_duration_seconds", {"collector": "traffic"}) >= 0
    assert get("cntrace_container_drops_total", {**B, "reason": "DROP"}) is None
    assert get("cntrace_container_packets_total", {**B, "direction": "tx"}) is not None


def test_a_container_without_a_veth_is_listed_not_counted():
    topo = fakes.topology()
    host = Container("cccc3333", "hostnet", 300, topo.host_netns, {}, network_mode="host")
    topo.containers[host.id] = host
    metrics, _ = collect(topo, docker_labels=())
    get = metrics.get_sample_value
    assert get("cntrace_container_uncounted", {"container": "hostnet", "compose_project": "",
                                               "compose_service": "",
                                               "reason": "host_network"}) == 1
    assert get("cntrace_container_packets_total", {"container": "hostnet", "compose_project": "",
                                                   "compose_service": "",
                                                   "direction": "tx"}) is None
    assert get("cntrace_containers") == 3


def test_build_info_names_version_revision_and_python():
    metrics, _ = collect(fakes.topology())
    assert metrics.get_sample_value("cntrace_build_info", buildinfo.labels()) == 1
    assert set(buildinfo.labels()) == {"version", "revision", "pythonversion"}


@pytest.mark.parametrize("head, files, expected", [
    ("0123abcd" * 5, {}, "0123abcd" * 5),
    ("ref: refs/heads/main", {"refs/heads/main": "feed" * 10}, "feed" * 10),
    ("ref: refs/heads/main", {"packed-refs": "# pack-refs\n" + "beef" * 10 +
                              " refs/heads/main\n"}, "beef" * 10),
    ("ref: refs/heads/gone", {}, buildinfo.UNKNOWN),
])
def test_the_revision_is_read_from_git_without_git(tmp_path, head, files, expected):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text(head + "\n")
    for name, text in files.items():
        path = tmp_path / ".git" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    assert buildinfo.git_revision(tmp_path) == expected
    assert buildinfo.git_revision(tmp_path / "nowhere") == buildinfo.UNKNOWN
