"""The daemon's BPF maps (bpf/accounting.h), behind plain Python: writing the
registry's slots in, reading sums of per-CPU counters out."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

from tracer.kernel import loader, tclink, wire
from tracer.kernel.tclink import LINKED, UNSUPPORTED
from tracer.stream.filters import addr_key

SLOT_ARRAYS = ("snat", "snat_translations", "flows_opened")   # indexed by slot
SLOT_HASHES = ("peer_traffic", "drops", "dnat", "dnat_translations", "drop_last_event")


def _sum_traffic(per_cpu) -> tuple[int, int]:
    return sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu)


def _sum_column(per_cpu_rows, column: int) -> tuple[int, int]:
    """A peer column's sums over a container row's per-CPU entries."""
    return _sum_traffic([row.peers[column] for row in per_cpu_rows])


def _sum_count(per_cpu) -> int:
    return sum(int(getattr(v, "value", v)) for v in per_cpu)


def _row_of(key) -> int:
    """The container_rows index of a pair's owner and direction (bpf/accounting.h)."""
    return key.slot * 2 + key.direction


class BpfCounters:
    """CounterMaps (tracer.daemon.slots) over a loaded Tracer, plus readers."""

    def __init__(self, tracer) -> None:
        self._t = tracer
        self._epoch_lock = threading.Lock()
        # A peer column's sums when its peer's slot last changed owner: the
        # kernel's row cannot be written while its owner counts in it, so
        # the next owner's counts are the column's growth since then.
        self._column_bases: dict[tuple[int, int], tuple[int, int]] = {}
        self._bases_lock = threading.Lock()   # a scrape sees a column and its base together

    def attach_veth(self, ifindex: int, slot: int) -> str:
        """Attach the counting programs to a container's host-side veth (tcx
        or classic tc, tracer/kernel/tclink.py); returns LINKED, GONE (the veth went
        away first: its container died) or FAILED, or UNSUPPORTED when
        neither mechanism loaded."""
        attacher = self._t.tc_programs
        if attacher is None:
            return UNSUPPORTED
        self._set_veth_slot(ifindex, slot + 1)   # 0 means "not a container's"
        result = attacher.attach(ifindex, tclink.VETH)
        if result != LINKED:
            self._set_veth_slot(ifindex, 0)
        return result

    def detach_veth(self, ifindex: int) -> None:
        if self._t.tc_programs is not None:
            self._t.tc_programs.detach(ifindex)
        self._set_veth_slot(ifindex, 0)

    def _set_veth_slot(self, ifindex: int, stored: int) -> None:
        key = ctypes.c_uint32(ifindex)
        if ifindex < loader.VETH_ARRAY_SIZE:
            self._t["veth_slots"][key] = ctypes.c_uint32(stored)
        elif stored:
            self._t["veth_slots_beyond"][key] = ctypes.c_uint32(stored)
        else:
            self._delete("veth_slots_beyond", key)

    def attach_exit(self, ifindex: int, header_len: int) -> str:
        """Attach the SNAT counter to the egress of one of the host's exit
        devices; UNSUPPORTED when NAT is counted at netfilter instead."""
        if self._t.tc_programs is None or not self._t.nat_at_exits:
            return UNSUPPORTED
        self._t["exit_header_len"][ctypes.c_uint32(ifindex)] = ctypes.c_uint32(header_len)
        result = self._t.tc_programs.attach(ifindex, tclink.EXIT)
        if result != LINKED:
            self._delete("exit_header_len", ctypes.c_uint32(ifindex))
        return result

    def detach_exit(self, ifindex: int) -> None:
        if self._t.tc_programs is not None:
            self._t.tc_programs.detach(ifindex)
        self._delete("exit_header_len", ctypes.c_uint32(ifindex))

    # ------------------------------------------------------------- writing
    def set_iface(self, netns: int, ifindex: int, slot: int) -> None:
        self._t["container_ifaces"][wire.IfaceKey(netns, ifindex)] = ctypes.c_uint32(slot)

    def delete_iface(self, netns: int, ifindex: int) -> None:
        self._delete("container_ifaces", wire.IfaceKey(netns, ifindex))

    def set_addr(self, address: str, slot: int) -> None:
        self._t["container_addrs"][addr_key(address)] = ctypes.c_uint32(slot)

    def delete_addr(self, address: str) -> None:
        self._delete("container_addrs", addr_key(address))

    def set_host_addrs(self, addresses: set[str]) -> None:
        table = self._t["host_addrs"]
        wanted = {bytes(addr_key(a).addr) for a in addresses}
        for key in list(table.keys()):
            if bytes(key.addr) not in wanted:
                self._delete("host_addrs", key)
        for address in addresses:
            table[addr_key(address)] = ctypes.c_uint8(1)

    def clear_slot(self, slot: int) -> None:
        """Zero every counter of a slot, and of the slot as someone's peer."""
        with self._bases_lock:
            for row in (slot * 2, slot * 2 + 1):   # deleting an array's element zeroes it
                self._delete("container_rows", ctypes.c_int(row))
                self._delete("peer_columns_taken", ctypes.c_int(row))
                for column in range(loader.PEER_COLUMNS):
                    self._column_bases.pop((row, column), None)
        for name in SLOT_ARRAYS:
            self._delete(name, ctypes.c_int(slot))
        # Flows and rows that cached this slot, as their owner or their
        # peer, look it up again.
        generation = self._t["slot_generation"]
        generation[ctypes.c_int(slot)] = ctypes.c_uint32(generation[ctypes.c_int(slot)].value + 1)
        self.advance_flow_epoch()
        # The slot's own columns are free again; its column in another's row
        # is kept for the slot's next owner, who counts from what it holds now.
        columns = self._t["peer_column_of"]
        for key, column in list(columns.items()):
            if key.slot == slot:
                self._delete("peer_column_of", key)
            elif key.peer == slot:
                with self._bases_lock:
                    self._column_bases[(_row_of(key), column.value)] = _sum_column(
                        self._t["container_rows"][ctypes.c_int(_row_of(key))], column.value)
        for name in SLOT_HASHES:
            table = self._t[name]
            for key in list(table.keys()):
                if key.slot == slot or (name == "peer_traffic" and key.peer == slot):
                    self._delete(name, key)

    def advance_flow_epoch(self) -> None:
        """A new flow epoch (bpf/accounting.h flow_epoch): every row asks the
        flow table again at its next packet.  The daemon calls this every
        loader.FLOW_EPOCH_SECONDS, and after each change of a slot's owner."""
        with self._epoch_lock:   # the ticker and a reconcile: neither advance lost
            epoch = self._t["flow_epoch"]
            epoch[ctypes.c_int(0)] = ctypes.c_uint32(epoch[ctypes.c_int(0)].value + 1)

    def _delete(self, name: str, key) -> None:
        with contextlib.suppress(KeyError):   # already gone
            del self._t[name][key]

    # ------------------------------------------------------------- reading
    def traffic(self, slot: int, direction: int) -> tuple[int, int]:
        return _sum_traffic(self._t["container_rows"][ctypes.c_int(slot * 2 + direction)])

    def snat(self, slot: int) -> tuple[int, int, int]:
        packets, nbytes = _sum_traffic(self._t["snat"][ctypes.c_int(slot)])
        return packets, nbytes, _sum_count(self._t["snat_translations"][ctypes.c_int(slot)])

    def flows_opened(self, slot: int) -> int:
        return _sum_count(self._t["flows_opened"][ctypes.c_int(slot)])

    def peer_traffic(self) -> list[tuple[wire.PeerKey, int, int]]:
        """Each pair that has counted something.  A pair counts in its
        column, or in the hash when its row had no column left; in both
        when two CPUs met it at once as the last column went: summed."""
        sums: dict[tuple[int, int, int], list[int]] = {}

        def add(key, packets: int, nbytes: int) -> None:
            total = sums.setdefault((key.slot, key.peer, key.direction), [0, 0])
            total[0] += packets
            total[1] += nbytes

        rows = self._t["container_rows"]
        read: dict[int, list] = {}   # each row's per-CPU entries, read once
        with self._bases_lock:
            for key, column in self._t["peer_column_of"].items():
                row = _row_of(key)
                if row not in read:
                    read[row] = rows[ctypes.c_int(row)]
                packets, nbytes = _sum_column(read[row], column.value)
                base = self._column_bases.get((row, column.value), (0, 0))
                add(key, packets - base[0], nbytes - base[1])
        for key, per_cpu in self._t["peer_traffic"].items():
            add(key, *_sum_traffic(per_cpu))
        return [(wire.PeerKey(*key), packets, nbytes)
                for key, (packets, nbytes) in sums.items() if packets]

    def drops(self) -> list[tuple[wire.DropKey, int]]:
        return [(k, sum(cpu.count for cpu in v)) for k, v in self._t["drops"].items()]

    def dnat(self) -> list[tuple[wire.DnatKey, int, int, int]]:
        translations = {(k.slot, k.port, k.proto): _sum_count(v)
                        for k, v in self._t["dnat_translations"].items()}
        return [(k, *_sum_traffic(v), translations.get((k.slot, k.port, k.proto), 0))
                for k, v in self._t["dnat"].items()]

    def stats(self) -> dict[int, int]:
        table = self._t["stats"]
        return {i: _sum_count(table[ctypes.c_int(i)]) for i in range(5)}

    def map_usage(self) -> dict[str, tuple[int, int]]:
        """Entries and capacity of the maps that can fill up."""
        usage = {}
        for name in ("container_ifaces", "container_addrs", "peer_traffic", "drops", "dnat"):
            table = self._t[name]
            usage[name] = (len(table), table.max_entries)
        return usage

    def flow_capacity(self) -> int:
        return self._t["flows"].max_entries

    def flows(self) -> Iterator[wire.FlowValue]:
        """Every flow-table value, streamed: batch lookups when the kernel
        has them, a key-by-key walk otherwise."""
        table = self._t["flows"]
        try:
            for _, value in table.items_lookup_batch():
                yield value
        except Exception:  # no batch lookups for this map type on this kernel
            for _, value in table.items():
                yield value
