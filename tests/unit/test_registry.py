"""Slots stay right under churn: a fake map records what the registry writes."""

import dataclasses
import threading
from unittest import mock

import pytest

from tests.unit import fakes
from tracer.daemon import main as daemon
from tracer.daemon.collector import DaemonStats
from tracer.daemon.main import is_relevant_event
from tracer.daemon.slots import ContainerSlots
from tracer.errors import DockerUnavailableError
from tracer.host import docker_engine
from tracer.host.topology import ROLE_HOST, exit_devices
from tracer.kernel.tclink import FAILED, GONE, LINKED, UNSUPPORTED


class FakeMaps:
    def __init__(self, link_result=LINKED):
        self.ifaces, self.addrs, self.host, self.cleared = {}, {}, set(), []
        self.veths, self.link_result, self.link_attempts = {}, link_result, 0
        self.exits = {}

    def attach_veth(self, ifindex, slot):
        self.link_attempts += 1
        if self.link_result == LINKED:
            self.veths[ifindex] = slot
        return self.link_result

    def detach_veth(self, ifindex):
        self.veths.pop(ifindex, None)

    def attach_exit(self, ifindex, header_len):
        self.exits[ifindex] = header_len
        return LINKED

    def detach_exit(self, ifindex):
        self.exits.pop(ifindex, None)

    def set_iface(self, netns, ifindex, slot):
        self.ifaces[(netns, ifindex)] = slot

    def delete_iface(self, netns, ifindex):
        self.ifaces.pop((netns, ifindex), None)

    def set_addr(self, address, slot):
        self.addrs[address] = slot

    def delete_addr(self, address):
        self.addrs.pop(address, None)

    def set_host_addrs(self, addresses):
        self.host = set(addresses)

    def clear_slot(self, slot):
        self.cleared.append(slot)


def without(topo, name):
    cid = next(c.id for c in topo.containers.values() if c.name == name)
    return dataclasses.replace(
        topo, containers={k: v for k, v in topo.containers.items() if k != cid},
        interfaces={k: v for k, v in topo.interfaces.items() if v.container_id != cid})


def test_containers_get_slots_interfaces_and_addresses():
    maps = FakeMaps()
    registry = ContainerSlots(maps, fakes.topology, max_slots=8)
    started, gone = registry.reconcile()
    assert sorted(started) == ["a", "b"] and gone == []
    slots = {t.container.name: t.slot for t in registry.snapshot().values()}
    assert maps.ifaces == {(fakes.A_NS, 10): slots["a"], (fakes.B_NS, 10): slots["b"]}
    assert maps.addrs == {"172.17.0.2": slots["a"], "fd00::2": slots["a"],
                          "172.17.0.3": slots["b"]}
    assert maps.veths == {11: slots["a"], 13: slots["b"]}   # the host-side veths
    assert registry.reconcile() == ([], [])   # nothing changed, nothing written again


def test_a_removed_container_leaves_the_maps_and_its_slot_is_zeroed_and_reused_last():
    maps = FakeMaps()
    topo = [fakes.topology()]
    registry = ContainerSlots(maps, lambda: topo[0], max_slots=2)
    registry.reconcile()
    slot_a = next(t.slot for t in registry.snapshot().values() if t.container.name == "a")
    topo[0] = without(topo[0], "a")
    assert registry.reconcile() == ([], ["a"])
    assert (fakes.A_NS, 10) not in maps.ifaces and "172.17.0.2" not in maps.addrs
    assert 11 not in maps.veths
    assert maps.cleared.count(slot_a) == 2          # zeroed when taken and when freed
    topo[0] = fakes.topology()                       # a comes back: gets the freed slot
    registry.reconcile()
    again = next(t for t in registry.snapshot().values() if t.container.name == "a")
    assert again.slot == slot_a and maps.cleared.count(slot_a) == 3


def test_a_restarted_container_gets_a_fresh_slot_time():
    maps = FakeMaps()
    topo = [fakes.topology()]
    now = [100]
    registry = ContainerSlots(maps, lambda: topo[0], max_slots=8, clock_ns=lambda: now[0])
    registry.reconcile()
    a = next(c for c in topo[0].containers.values() if c.name == "a")
    restarted = dataclasses.replace(a, pid=999)
    topo[0] = dataclasses.replace(topo[0], containers={**topo[0].containers, a.id: restarted})
    now[0] = 200
    started, gone = registry.reconcile()
    assert started == ["a"] and gone == ["a"]
    tracked = next(t for t in registry.snapshot().values() if t.container.name == "a")
    assert tracked.since_ns == 200


def test_no_slot_left_is_counted_not_fatal():
    registry = ContainerSlots(FakeMaps(), fakes.topology, max_slots=1)
    started, _ = registry.reconcile()
    assert len(started) == 1 and registry.attribution_failures == 1


def test_host_addresses_come_from_host_interfaces():
    maps = FakeMaps()
    topo = fakes.topology()
    docker0 = topo.interfaces[(fakes.HOST_NS, 6)]
    topo.interfaces[(fakes.HOST_NS, 6)] = dataclasses.replace(docker0,
                                                              addresses=("172.17.0.1/16",))
    ContainerSlots(maps, lambda: topo, max_slots=8).reconcile()
    assert maps.host == {"172.17.0.1"}


def test_a_veth_that_cannot_be_linked_counts_once_and_is_retried_until_it_links():
    maps = FakeMaps(link_result=FAILED)
    registry = ContainerSlots(maps, fakes.topology, max_slots=8)
    registry.reconcile()
    registry.reconcile()
    assert registry.attribution_failures == 2      # a's veth and b's, once each
    assert maps.link_attempts == 4 and maps.veths == {}
    maps.link_result = LINKED
    assert registry.reconcile() == ([], [])
    assert set(maps.veths) == {11, 13}
    attempts = maps.link_attempts
    registry.reconcile()
    assert maps.link_attempts == attempts and registry.attribution_failures == 2


@pytest.mark.parametrize("result", [GONE, UNSUPPORTED])
def test_a_veth_gone_first_or_no_tcx_is_not_an_attribution_failure(result):
    registry = ContainerSlots(FakeMaps(link_result=result), fakes.topology, max_slots=8)
    started, _ = registry.reconcile()
    assert sorted(started) == ["a", "b"] and registry.attribution_failures == 0


def test_a_removed_container_unlinks_only_the_veths_that_were_linked():
    maps = FakeMaps()
    topo = [fakes.topology()]
    registry = ContainerSlots(maps, lambda: topo[0], max_slots=8)
    registry.reconcile()
    detached = []
    maps.detach_veth = detached.append
    topo[0] = without(topo[0], "a")
    registry.reconcile()
    assert detached == [11]


@pytest.mark.parametrize("event, relevant", [
    ({"Type": "container", "Action": "start"}, True),
    ({"Type": "network", "Action": "connect"}, True),
    ({"Action": "exec_start: sh -c true"}, False),
    ({"Action": None}, False),
    ({"Action": 7}, False),
    ({}, False),
    ("not a dict", False),
])
def test_docker_event_relevance(event, relevant):
    assert is_relevant_event(event) is relevant


def test_docker_reconnects_count_reconnections_made_not_attempts():
    """Connect, lose the engine, fail twice, reconnect: one reconnection."""
    stop, dirty, stats = threading.Event(), threading.Event(), DaemonStats()

    def stream_then_stop(**_):
        stop.set()   # the daemon stops while connected
        yield {"Action": "die"}

    down = DockerUnavailableError("engine gone")
    clients = iter([mock.Mock(events=lambda **_: iter([{"Action": "start"}])),   # ends: lost
                    down, down, mock.Mock(events=stream_then_stop)])

    def docker_client():
        client = next(clients)
        if isinstance(client, Exception):
            raise client
        return client

    waits = []
    stop.wait = lambda timeout=None: waits.append(timeout)   # no real backoff sleep
    with mock.patch.object(docker_engine, "docker_client", docker_client):
        daemon._watch_docker(dirty, stop, stats)
    assert stats.docker_reconnects == 1 and stats.docker_connected
    assert waits == [1.0, 2.0, 4.0]   # backoff doubles while the engine is down


def with_host_interfaces(topo, *extra):
    return dataclasses.replace(topo, interfaces={**topo.interfaces,
                                                 **{(i.netns, i.ifindex): i for i in extra}})


def test_exit_devices_are_where_packets_leave_the_host_for_good():
    topo = with_host_interfaces(
        fakes.topology(),
        dataclasses.replace(fakes.iface(fakes.HOST_NS, 1, "lo", ROLE_HOST), link_type=772),
        fakes.iface(fakes.HOST_NS, 2, "eth0", ROLE_HOST),
        dataclasses.replace(fakes.iface(fakes.HOST_NS, 3, "eth0.100", ROLE_HOST), kind="vlan"),
        dataclasses.replace(fakes.iface(fakes.HOST_NS, 4, "br0", ROLE_HOST), kind="bridge"),
        dataclasses.replace(fakes.iface(fakes.HOST_NS, 5, "wg0", ROLE_HOST), kind="wireguard",
                            link_type=65534),
        dataclasses.replace(fakes.iface(fakes.A_NS, 30, "eth1", ROLE_HOST)),   # not the host's
    )
    # eth0 and the wan veth (Ethernet: 14-byte headers), wg0 (no link-layer
    # header); not lo, the VLAN and bridge stacked on others, docker0 or the
    # containers' veths (they count their own)
    assert exit_devices(topo) == {2: 14, 20: 14, 5: 0}


def test_exit_devices_are_linked_and_a_device_that_becomes_a_containers_veth_moves_over():
    maps = FakeMaps()
    a_veth = fakes.topology().interfaces[(fakes.HOST_NS, 11)]
    early = with_host_interfaces(   # a's veth before Docker reports a: any host device
        without(fakes.topology(), "a"), dataclasses.replace(a_veth, role=ROLE_HOST,
                                                            container=None, container_id=None))
    topo = [early]
    registry = ContainerSlots(maps, lambda: topo[0], max_slots=8)
    registry.reconcile()
    assert maps.exits == {20: 14, 11: 14} and registry.exits == {20, 11}
    order = []
    maps.detach_exit = lambda ifindex, real=maps.detach_exit: (order.append("exit"),
                                                              real(ifindex))
    maps.attach_veth = lambda ifindex, slot, real=maps.attach_veth: (order.append("veth"),
                                                                     real(ifindex, slot))[1]
    topo[0] = fakes.topology()
    registry.reconcile()
    assert maps.exits == {20: 14} and 11 in maps.veths
    assert order.index("exit") < order.index("veth")   # one program set per device at a time


def test_containers_without_counters_are_listed_with_the_reason():
    refused = ContainerSlots(FakeMaps(link_result=FAILED), fakes.topology, 16)
    refused.reconcile()
    assert {c.name: r for c, r in refused.uncounted.values()} == {"a": "attach_failed",
                                                                  "b": "attach_failed"}
    full = ContainerSlots(FakeMaps(), fakes.topology, 1)
    full.reconcile()
    assert sorted(r for _, r in full.uncounted.values()) == ["no_slot"]
    linked = ContainerSlots(FakeMaps(), fakes.topology, 16)
    linked.reconcile()
    assert linked.uncounted == {}


def test_with_no_per_packet_collector_no_veth_is_linked_nor_listed():
    maps = FakeMaps()
    registry = ContainerSlots(maps, fakes.topology, 16, counting=False)
    registry.reconcile()
    assert maps.link_attempts == 0 and maps.veths == {}
    assert registry.uncounted == {}
    assert len(registry.snapshot()) == 2   # still slotted: drops are counted by address
