"""tracer.kernel.btf over a small BTF blob built here, byte by byte, so no kernel is needed.

The blob describes, in C terms:

    typedef unsigned int u32;
    struct inner { u32 a; unsigned short b; unsigned short pad; };          // size 8
    struct outer {                                                          // size 80
        int x;                                                              // 0
        union { u32 y; struct { unsigned short lo, hi; }; };                // 4: y, lo 4, hi 6
        const volatile struct inner in;                                     // 8
        struct inner arr[3];                                                // 16
        unsigned char flags:3, more:5;                                      // bits 320, 323
        u32 grid[2][3];                                                     // 44
        struct inner *ptr;                                                  // 72
    };
    typedef struct { int v; } anon_t;
    // Same names, to check the lookup order: struct, then union, then typedef.
    struct both { int a, b, c; };  union both { int a; };  union pick { int a; };
    typedef struct inner both;  typedef struct inner pick;
    enum color { COLOR_RED, COLOR_GREEN, COLOR_BLUE, COLOR_AQUA = 2 };      // alias
    enum sign { NEG = -1, POS = 1 };                                        // signed (kflag)
    enum big : u64 { BIG = 1 << 40, HUGE = 0xffffffffffffff00 };            // ENUM64
"""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer.errors import KernelFeatureError
from tracer.kernel.btf import (
    Btf,
    BtfError,
    Member,
    PathStep,
    decode_info,
    parse_path,
    split_member_offset,
)

# Kinds, from include/uapi/linux/btf.h, spelled out again so the test does not trust
# the module's own table.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, TYPEDEF, VOLATILE, CONST, ENUM64 = (
    1, 2, 3, 4, 5, 6, 8, 9, 10, 19)


class BtfBuilder:
    """Writes raw BTF: header, type section, string section (type ids start at 1)."""

    def __init__(self) -> None:
        self.types: list[bytes] = []
        self.strings = bytearray(b"\0")

    def _str(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, tail: bytes = b"",
             kflag: bool = False) -> int:
        info = kflag << 31 | kind << 24 | vlen
        self.types.append(struct.pack("<III", self._str(name), info, size_or_type) + tail)
        return len(self.types)

    def int(self, name: str, size: int, signed: bool = False) -> int:
        return self._add(name, INT, 0, size, struct.pack("<I", signed << 24 | size * 8))

    def ref(self, kind: int, target: int, name: str = "") -> int:
        return self._add(name, kind, 0, target)

    def array(self, elem: int, nelems: int, index_type: int) -> int:
        return self._add("", ARRAY, 0, 0, struct.pack("<III", elem, index_type, nelems))

    def composite(self, name: str, size: int, members: list[tuple], union: bool = False) -> int:
        """members: (name, type id, bit offset[, bitfield size])."""
        kflag = any(len(m) > 3 for m in members)
        tail = b"".join(
            struct.pack("<III", self._str(m[0]), m[1], (m[3] << 24 if len(m) > 3 else 0) | m[2])
            for m in members)
        return self._add(name, UNION if union else STRUCT, len(members), size, tail, kflag)

    def enum(self, name: str, values: list[tuple[str, int]], signed: bool = False) -> int:
        tail = b"".join(struct.pack("<Ii", self._str(n), v) for n, v in values)
        return self._add(name, ENUM, len(values), 4, tail, signed)

    def enum64(self, name: str, values: list[tuple[str, int]]) -> int:
        tail = b"".join(struct.pack("<III", self._str(n), v & 0xFFFFFFFF, v >> 32)
                        for n, v in values)
        return self._add(name, ENUM64, len(values), 8, tail)

    def build(self) -> bytes:
        types = b"".join(self.types)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                             len(self.strings))
        return header + types + bytes(self.strings)


def sample_blob() -> bytes:
    b = BtfBuilder()
    int_ = b.int("int", 4, signed=True)
    uint = b.int("unsigned int", 4)
    ushort = b.int("unsigned short", 2)
    uchar = b.int("unsigned char", 1)
    u32 = b.ref(TYPEDEF, uint, "u32")
    inner = b.composite("inner", 8, [("a", u32, 0), ("b", ushort, 32), ("pad", ushort, 48)])
    cv_inner = b.ref(CONST, b.ref(VOLATILE, inner))
    lohi = b.composite("", 4, [("lo", ushort, 0), ("hi", ushort, 16)])
    yunion = b.composite("", 4, [("y", u32, 0), ("", lohi, 0)], union=True)
    grid = b.array(b.array(u32, 3, uint), 2, uint)
    b.composite("outer", 80, [
        ("x", int_, 0), ("", yunion, 32), ("in", cv_inner, 64),
        ("arr", b.array(inner, 3, uint), 128),
        ("flags", uchar, 320, 3), ("more", uchar, 323, 5),
        ("grid", grid, 352), ("ptr", b.ref(PTR, inner), 576)])
    b.ref(TYPEDEF, b.composite("", 4, [("v", int_, 0)]), "anon_t")
    for name in ("both", "pick"):
        b.ref(TYPEDEF, inner, name)
        b.composite(name, 4, [("a", int_, 0)], union=True)
    b.composite("both", 12, [("a", int_, 0), ("b", int_, 32)])
    b.enum("color", [("COLOR_RED", 0), ("COLOR_GREEN", 1), ("COLOR_BLUE", 2),
                     ("COLOR_AQUA", 2)])
    b.enum("sign", [("NEG", -1), ("POS", 1)], signed=True)
    b.enum64("big", [("BIG", 1 << 40), ("HUGE", 0xFFFFFFFFFFFFFF00)])
    return b.build()


@pytest.fixture
def btf():
    with Btf.from_bytes(sample_blob()) as loaded:
        yield loaded


@pytest.mark.parametrize("path, offset_bits, bitfield_size, size", [
    ("x", 0, 0, 4),
    ("y", 32, 0, 4),               # inside an anonymous union
    ("lo", 32, 0, 2),              # anonymous struct inside that anonymous union
    ("hi", 48, 0, 2),
    ("in", 64, 0, 8),              # const volatile struct: size through the modifiers
    ("in.b", 96, 0, 2),
    ("arr", 128, 0, 24),
    ("arr[0]", 128, 0, 8),
    ("arr[2].b", 128 + 2 * 64 + 32, 0, 2),
    ("flags", 320, 3, 1),
    ("more", 323, 5, 1),
    ("grid[1]", 352 + 96, 0, 12),
    ("grid[1][2]", 352 + 96 + 64, 0, 4),
    ("ptr", 576, 0, 8),
])
def test_member_resolves_offset_bitfield_and_size(btf, path, offset_bits, bitfield_size, size):
    assert btf.member("outer", path) == Member(offset_bits, bitfield_size, size)


@pytest.mark.parametrize("struct_name, path, offset", [
    ("outer", "hi", 6), ("outer", "arr[2].b", 36), ("outer", "grid[1][2]", 64),
    ("anon_t", "v", 0),            # typedef of an anonymous struct
    ("both", "b", 4),              # STRUCT is looked up before UNION and TYPEDEF
])
def test_offset_of_in_bytes(btf, struct_name, path, offset):
    assert btf.offset_of(struct_name, path) == offset


@pytest.mark.parametrize("name, size", [
    ("outer", 80), ("inner", 8), ("anon_t", 4), ("u32", 4), ("both", 12), ("pick", 4)])
def test_size_of(btf, name, size):
    assert btf.size_of(name) == size


@pytest.mark.parametrize("struct_name, path, message", [
    ("foo", "x", "kernel BTF has no struct 'foo'"),
    ("outer", "bar.baz", "struct outer has no member 'bar' (in path 'bar.baz')"),
    ("outer", "in.zz", "struct inner has no member 'zz' (in path 'in.zz' of struct outer)"),
    ("outer", "arr[3]", "index 3 is out of range for 'arr' in struct outer, which has 3 "
                        "elements (in path 'arr[3]')"),
    ("outer", "grid[1][3]", "index 3 is out of range for 'grid'"),
    ("outer", "x[0]", "'x' in struct outer is not an array (in path 'x[0]')"),
    ("outer", "ptr.a", "'ptr' in struct outer is a pointer, not a struct or union"),
    ("outer", "x.y", "'x' in struct outer is an int, not a struct or union"),
    ("u32", "a", "typedef u32 is an int, not a struct or union"),
    ("outer", "in..b", "malformed member path 'in..b'"),
])
def test_member_errors_name_what_is_missing(btf, struct_name, path, message):
    with pytest.raises(BtfError) as info:
        btf.member(struct_name, path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_offset_of_a_bitfield_is_refused_with_its_path(btf):
    message = "struct outer member 'more': member at bit 323 is a 5-bit bitfield"
    with pytest.raises(BtfError, match=message):
        btf.offset_of("outer", "more")


def test_member_offset_refuses_unaligned_and_bitfields():
    assert Member(64, 0, 8).offset == 8
    with pytest.raises(BtfError, match="not byte-aligned"):
        Member(12, 0, 1).offset  # noqa: B018
    with pytest.raises(BtfError, match="3-bit bitfield"):
        Member(320, 3, 1).offset  # noqa: B018


def test_has_member(btf):
    assert btf.has_member("outer", "lo")
    assert btf.has_member("outer", "grid[1][2]")
    assert not btf.has_member("outer", "grid[2]")
    assert not btf.has_member("outer", "nope")
    assert not btf.has_member("nope", "x")
    with pytest.raises(BtfError, match="malformed"):
        btf.has_member("outer", "a b")


def test_member_lookups_are_cached(btf):
    assert btf.member("outer", "arr[2].b") is btf.member("outer", "arr[2].b")


def test_enum_values_signedness_aliases_and_prefix(btf):
    assert btf.enum("color") == {0: "COLOR_RED", 1: "COLOR_GREEN", 2: "COLOR_BLUE"}
    assert btf.enum("color", strip_prefix="COLOR_") == {0: "RED", 1: "GREEN", 2: "BLUE"}
    assert btf.enum("sign") == {-1: "NEG", 1: "POS"}
    assert btf.enum("big") == {1 << 40: "BIG", 0xFFFFFFFFFFFFFF00: "HUGE"}
    with pytest.raises(BtfError, match="kernel BTF has no enum 'nope'"):
        btf.enum("nope")


def test_closed_btf_refuses_lookups():
    btf = Btf.from_bytes(sample_blob())
    with btf:
        assert btf.size_of("inner") == 8
    with pytest.raises(BtfError, match="closed"):
        btf.size_of("outer")
    btf.close()  # closing twice is harmless


def test_vmlinux_missing_names_path_and_config():
    with pytest.raises(BtfError) as info:
        Btf.vmlinux("/nonexistent")
    assert "/nonexistent" in str(info.value)
    assert "CONFIG_DEBUG_INFO_BTF" in str(info.value)
    assert isinstance(info.value, KernelFeatureError) and info.value.exit_code == 4


def test_vmlinux_reads_any_path(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(sample_blob())
    with Btf.vmlinux(str(path)) as btf:
        assert btf.offset_of("outer", "hi") == 6


@pytest.mark.parametrize("data", [b"", b"not BTF at all", sample_blob()[:30]])
def test_garbage_is_a_btf_error(data):
    with pytest.raises(BtfError, match="cannot parse BTF from raw BTF data"):
        Btf.from_bytes(data)


@pytest.mark.parametrize("path, steps", [
    ("head", [("head", ())]),
    ("nd_net.net", [("nd_net", ()), ("net", ())]),
    ("tuplehash[1].tuple.src.u3", [("tuplehash", (1,)), ("tuple", ()), ("src", ()),
                                   ("u3", ())]),
    ("grid[1][20]", [("grid", (1, 20))]),
    ("_nfct", [("_nfct", ())]),
])
def test_parse_path(path, steps):
    assert parse_path(path) == tuple(PathStep(n, i) for n, i in steps)


@pytest.mark.parametrize("path", ["", ".a", "a.", "a..b", "a[", "a[]", "a[-1]", "1a", "a b",
                                  "a[1]b", "[0]"])
def test_parse_path_rejects_malformed(path):
    with pytest.raises(BtfError, match="malformed member path"):
        parse_path(path)


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
steps = st.lists(st.tuples(names, st.lists(st.integers(0, 10**6), max_size=3)), min_size=1,
                 max_size=5)


@given(steps)
def test_parse_path_round_trips(parts):
    path = ".".join(name + "".join(f"[{i}]" for i in idx) for name, idx in parts)
    assert parse_path(path) == tuple(PathStep(name, tuple(idx)) for name, idx in parts)


@pytest.mark.parametrize("info, kind, vlen, kflag", [
    (STRUCT << 24 | 3, STRUCT, 3, False),
    (1 << 31 | STRUCT << 24 | 0xFFFF, STRUCT, 0xFFFF, True),
    (ENUM64 << 24 | 7, ENUM64, 7, False),
])
def test_decode_info(info, kind, vlen, kflag):
    assert decode_info(info) == (kind, vlen, kflag)


@pytest.mark.parametrize("raw, kflag, expected", [
    (1008, False, (1008, 0)),
    (2 << 24 | 1010, True, (1010, 2)),
    (1536, True, (1536, 0)),
])
def test_split_member_offset(raw, kflag, expected):
    assert split_member_offset(raw, kflag) == expected
