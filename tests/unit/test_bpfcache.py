"""The compile cache's pure parts: finding map references in BPF
instructions, pointing them at other maps, and the cache key."""

import struct

from tracer.kernel import bpfcache


def insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


MOV = insn(0xB7, dst=0, imm=0)                        # r0 = 0
MAP_LOAD = insn(0x18, dst=1, src=1, imm=7) + insn(0)  # r1 = map fd 7 (two slots)
CONST_LOAD = insn(0x18, dst=2, imm=5) + insn(0)       # r2 = 5 (64-bit constant)
EXIT = insn(0x95)
PROGRAM = MOV + MAP_LOAD + CONST_LOAD + MAP_LOAD + EXIT


def test_map_references_are_found_by_slot_skipping_second_halves():
    assert bpfcache.map_references(PROGRAM) == [(1, 7), (5, 7)]


def test_relocate_points_each_reference_at_the_new_fd():
    moved = bpfcache.relocate(PROGRAM, [(1, "events"), (5, "events")], {"events": 42})
    assert bpfcache.map_references(moved) == [(1, 42), (5, 42)]
    assert moved[:8] == MOV and moved[-8:] == EXIT and moved[24:40] == CONST_LOAD


def test_a_load_of_anything_but_a_map_fd_is_not_relocatable():
    map_value = insn(0x18, dst=1, src=2, imm=7) + insn(0)   # BPF_PSEUDO_MAP_VALUE
    assert bpfcache._other_pseudo_loads(MOV + map_value + EXIT)
    assert not bpfcache._other_pseudo_loads(PROGRAM)


def test_map_names_from_bcc_declarations():
    source = """
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, STAT_COUNT);
BPF_TABLE("lru_hash", struct flow_key, struct flow_value, flows, FLOW_TABLE_SIZE);
BPF_HASH(filter_addrs, struct addr_key, u8, 1024);
"""
    assert bpfcache.map_names(source) == ["events", "stats", "flows", "filter_addrs"]


def test_the_key_changes_with_source_flags_and_bcc():
    key = bpfcache.cache_key("int x;", ["-DA=1"], "0.26")
    assert key == bpfcache.cache_key("int x;", ["-DA=1"], "0.26")
    assert len({key, bpfcache.cache_key("int y;", ["-DA=1"], "0.26"),
                bpfcache.cache_key("int x;", ["-DA=2"], "0.26"),
                bpfcache.cache_key("int x;", ["-DA=1"], "0.27")}) == 4


def test_the_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(bpfcache.CACHE_DIR_ENV, "off")
    assert bpfcache.cache_dir() is None and bpfcache.load("k") is None
    monkeypatch.setenv(bpfcache.CACHE_DIR_ENV, str(tmp_path))
    (tmp_path / "k.json").write_text("{not json")
    assert bpfcache.load("k") is None                    # a broken file is a miss
    (tmp_path / "k.json").write_text('{"format": 0, "programs": {"p": {}}}')
    assert bpfcache.load("k") is None                    # another format is a miss
