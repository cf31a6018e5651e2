"""The BPF counters reader (tracer/daemon/bpf_maps.py) over maps that behave like
bcc's: per-CPU values summed, a slot's keys written and cleared, the
array/hash split of the veth slots."""

import ctypes

from tracer.daemon.bpf_maps import BpfCounters
from tracer.kernel import loader, wire
from tracer.stream.filters import addr_key

NCPU = 3


class PerCpu(dict):
    """A per-CPU map: each value a list with one entry per CPU."""

    def __init__(self, value_type, max_entries=1024):
        super().__init__()
        self.value_type, self.max_entries = value_type, max_entries

    def __getitem__(self, key):
        key = _plain(key)
        if key not in self:
            return [self.value_type() for _ in range(NCPU)]
        return dict.__getitem__(self, key)

    def __setitem__(self, key, value):
        dict.__setitem__(self, _plain(key), list(value))

    def __delitem__(self, key):
        dict.__delitem__(self, _plain(key))

    def items(self):
        return [(_struct(k), v) for k, v in dict.items(self)]

    def keys(self):
        return [_struct(k) for k in dict.keys(self)]


class Plain(PerCpu):
    def __getitem__(self, key):
        return dict.__getitem__(self, _plain(key))

    def __setitem__(self, key, value):
        dict.__setitem__(self, _plain(key), value)


_TYPES = {}


def _plain(key):
    """A ctypes key as a hashable (type, bytes)."""
    if isinstance(key, tuple):
        return key
    _TYPES[type(key).__name__] = type(key)
    return (type(key).__name__, bytes(key))


def _struct(key):
    name, raw = key
    return _TYPES[name].from_buffer_copy(raw)


class Row(ctypes.Structure):
    """The fields of struct container_row (bpf/accounting.h) the reader reads."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("peers", wire.Traffic * loader.PEER_COLUMNS)]


class FakeTracer:
    nat_at_exits = True
    tc_programs = None

    def __init__(self):
        self.maps = {
            "container_rows": PerCpu(Row), "snat": PerCpu(wire.Traffic),
            "peer_column_of": Plain(ctypes.c_uint32),
            "peer_columns_taken": Plain(ctypes.c_uint32),
            "snat_translations": PerCpu(ctypes.c_uint64), "flows_opened": PerCpu(ctypes.c_uint64),
            "slot_generation": Plain(ctypes.c_uint32), "flow_epoch": Plain(ctypes.c_uint32),
            "peer_traffic": PerCpu(wire.Traffic),
            "drops": PerCpu(wire.DropCount), "dnat": PerCpu(wire.Traffic),
            "dnat_translations": PerCpu(ctypes.c_uint64),
            "drop_last_event": Plain(ctypes.c_uint64), "stats": PerCpu(ctypes.c_uint64),
            "container_ifaces": Plain(ctypes.c_uint32), "container_addrs": Plain(ctypes.c_uint32),
            "host_addrs": Plain(ctypes.c_uint8), "veth_slots": Plain(ctypes.c_uint32),
            "veth_slots_beyond": Plain(ctypes.c_uint32), "exit_header_len": Plain(ctypes.c_uint32),
        }
        for slot in range(8):   # an array: every slot has a generation
            self.maps["slot_generation"][ctypes.c_int(slot)] = ctypes.c_uint32(0)
        self.maps["flow_epoch"][ctypes.c_int(0)] = ctypes.c_uint32(0)

    def __getitem__(self, name):
        return self.maps[name]


def per_cpu(*pairs):
    return [wire.Traffic(packets=p, bytes=b) for p, b in pairs]


def test_per_cpu_values_are_summed():
    tracer = FakeTracer()
    tracer["container_rows"][ctypes.c_int(2 * 2 + wire.DIR_RX)] = rows((1, 100), (2, 200),
                                                                         (3, 300))
    tracer["snat"][ctypes.c_int(2)] = per_cpu((1, 10), (0, 0), (4, 40))
    tracer["snat_translations"][ctypes.c_int(2)] = [ctypes.c_uint64(1)] * NCPU
    counters = BpfCounters(tracer)
    assert counters.traffic(2, wire.DIR_RX) == (6, 600)
    assert counters.traffic(2, wire.DIR_TX) == (0, 0)
    assert counters.snat(2) == (5, 50, 3)


def test_dnat_joins_its_translations_by_slot_port_and_protocol():
    tracer = FakeTracer()
    key = wire.DnatKey(2, 80, 6)
    tracer["dnat"][key] = per_cpu((5, 500), (1, 100), (0, 0))
    tracer["dnat_translations"][wire.DnatKey(2, 80, 6)] = [ctypes.c_uint64(2)] * NCPU
    tracer["dnat"][wire.DnatKey(2, 443, 6)] = per_cpu((1, 60), (0, 0), (0, 0))
    rows = {(k.slot, k.port, k.proto): rest for k, *rest in BpfCounters(tracer).dnat()}
    assert rows == {(2, 80, 6): [6, 600, 6], (2, 443, 6): [1, 60, 0]}


def test_clearing_a_slot_takes_its_keys_and_the_peers_that_name_it():
    tracer = FakeTracer()
    tracer["peer_traffic"][wire.PeerKey(2, 5, wire.DIR_TX)] = per_cpu((1, 1), (1, 1), (1, 1))
    tracer["peer_traffic"][wire.PeerKey(5, 2, wire.DIR_RX)] = per_cpu((1, 1), (1, 1), (1, 1))
    tracer["peer_traffic"][wire.PeerKey(5, 7, wire.DIR_RX)] = per_cpu((1, 1), (1, 1), (1, 1))
    tracer["drops"][wire.DropKey(2, 12)] = [wire.DropCount(count=1)] * NCPU
    tracer["container_rows"][ctypes.c_int(4)] = rows((9, 9), (9, 9), (9, 9))
    counters = BpfCounters(tracer)
    counters.clear_slot(2)
    left = {(k.slot, k.peer) for k, _, _ in counters.peer_traffic()}
    assert left == {(5, 7)}
    assert counters.drops() == []
    assert counters.traffic(2, wire.DIR_TX) == (0, 0)
    assert tracer["slot_generation"][ctypes.c_int(2)].value == 1   # cached peers re-resolve
    assert tracer["flow_epoch"][ctypes.c_int(0)].value == 1   # rows ask the flow table again


def rows(*pairs):
    return [Row(packets=p, bytes=b) for p, b in pairs]


def count_in_column(tracer, slot: int, direction: int, number: int, *pairs) -> None:
    """Add per-CPU (packets, bytes) to a peer column, as the programs do."""
    key = ctypes.c_int(slot * 2 + direction)
    per_cpu_rows = tracer["container_rows"][key]
    for row, (packets, nbytes) in zip(per_cpu_rows, pairs, strict=True):
        row.peers[number].packets += packets
        row.peers[number].bytes += nbytes
    tracer["container_rows"][key] = per_cpu_rows


def test_a_pair_counts_in_its_column_and_in_the_hash_summed():
    tracer = FakeTracer()
    tracer["peer_column_of"][wire.PeerKey(2, 5, wire.DIR_TX)] = ctypes.c_uint32(1)
    count_in_column(tracer, 2, wire.DIR_TX, 1, (1, 10), (2, 20), (0, 0))
    tracer["peer_traffic"][wire.PeerKey(2, 5, wire.DIR_TX)] = per_cpu((1, 5), (0, 0), (0, 0))
    tracer["peer_traffic"][wire.PeerKey(2, 7, wire.DIR_TX)] = per_cpu((4, 40), (0, 0), (0, 0))
    # A column given and not counted in yet.
    tracer["peer_column_of"][wire.PeerKey(2, 9, wire.DIR_TX)] = ctypes.c_uint32(2)
    rows = {(k.slot, k.peer, k.direction): (p, b)
            for k, p, b in BpfCounters(tracer).peer_traffic()}
    assert rows == {(2, 5, wire.DIR_TX): (4, 35), (2, 7, wire.DIR_TX): (4, 40)}


def test_clearing_a_slot_frees_its_columns_and_restarts_the_columns_naming_it():
    tracer = FakeTracer()
    tracer["peer_column_of"][wire.PeerKey(2, 5, wire.DIR_TX)] = ctypes.c_uint32(0)
    count_in_column(tracer, 2, wire.DIR_TX, 0, (1, 1), (1, 1), (1, 1))
    tracer["peer_columns_taken"][ctypes.c_int(2 * 2 + wire.DIR_TX)] = ctypes.c_uint32(1)
    tracer["peer_column_of"][wire.PeerKey(5, 2, wire.DIR_RX)] = ctypes.c_uint32(3)
    count_in_column(tracer, 5, wire.DIR_RX, 3, (1, 1), (1, 1), (1, 1))
    tracer["peer_column_of"][wire.PeerKey(5, 7, wire.DIR_RX)] = ctypes.c_uint32(0)
    count_in_column(tracer, 5, wire.DIR_RX, 0, (1, 1), (1, 1), (1, 1))
    counters = BpfCounters(tracer)
    counters.clear_slot(2)
    assert {(k.slot, k.peer) for k, _, _ in counters.peer_traffic()} == {(5, 7)}
    assert len(tracer["peer_columns_taken"]) == 0          # slot 2's row starts over
    given = {(k.slot, k.peer): v.value for k, v in tracer["peer_column_of"].items()}
    assert given == {(5, 2): 3, (5, 7): 0}   # slot 2's next owner is 5's peer in column 3
    # The next owner counts from what the column held when slot 2 changed hands.
    count_in_column(tracer, 5, wire.DIR_RX, 3, (2, 20), (0, 0), (1, 10))
    traffic = {(k.slot, k.peer): (p, b) for k, p, b in counters.peer_traffic()}
    assert traffic == {(5, 2): (3, 30), (5, 7): (3, 3)}
    counters.clear_slot(5)   # the row's owner went: its row and bases start over
    assert counters.peer_traffic() == []
    count_in_column(tracer, 5, wire.DIR_RX, 3, (1, 1), (0, 0), (0, 0))
    tracer["peer_column_of"][wire.PeerKey(5, 2, wire.DIR_RX)] = ctypes.c_uint32(3)
    assert [(k.peer, p) for k, p, _ in counters.peer_traffic()] == [(2, 1)]


def test_a_veth_slot_lives_in_the_array_or_beyond_it():
    tracer = FakeTracer()
    counters = BpfCounters(tracer)
    counters._set_veth_slot(7, 3)
    counters._set_veth_slot(loader.VETH_ARRAY_SIZE + 1, 4)
    assert tracer["veth_slots"][ctypes.c_uint32(7)].value == 3
    assert tracer["veth_slots_beyond"][ctypes.c_uint32(loader.VETH_ARRAY_SIZE + 1)].value == 4
    counters._set_veth_slot(loader.VETH_ARRAY_SIZE + 1, 0)
    assert len(tracer["veth_slots_beyond"]) == 0


def test_addresses_are_written_in_the_maps_key_form():
    tracer = FakeTracer()
    counters = BpfCounters(tracer)
    counters.set_addr("172.17.0.2", 3)
    counters.set_host_addrs({"172.17.0.1", "198.51.100.1"})
    counters.set_host_addrs({"198.51.100.1"})
    assert tracer["container_addrs"][addr_key("172.17.0.2")].value == 3
    keys = tracer["host_addrs"].keys()   # bcc's keys(): key structs, as the reader sees
    assert [bytes(k.addr) for k in keys] == [bytes(addr_key("198.51.100.1").addr)]
    counters.delete_addr("172.17.0.2")
    counters.delete_addr("172.17.0.2")   # already gone: not an error
    assert len(tracer["container_addrs"]) == 0
