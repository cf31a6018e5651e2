"""Kernel struct offsets and enums read from the running kernel's BTF.

The kernel headers on the host describe another kernel (Debian's 6.1 headers on a 6.18
kernel: sk_buff.head is 200 in them, 192 in the kernel), so offsets taken from them read
garbage silently. BTF describes the running kernel, as CO-RE uses it; this module is the one
place that knows kernel offsets. It reads BTF with libbpf's BTF API (libbpf.so.1, ctypes).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import weakref
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import NamedTuple

from tracer.errors import KernelFeatureError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LIBBPF = "libbpf.so.1"

# BTF kinds (include/uapi/linux/btf.h).
_KIND_ARRAY = 3
_KIND_STRUCT = 4
_KIND_UNION = 5
_KIND_ENUM = 6
_KIND_TYPEDEF = 8
_KIND_VOLATILE = 9
_KIND_CONST = 10
_KIND_RESTRICT = 11
_KIND_FUNC = 12
_KIND_TYPE_TAG = 18
_KIND_ENUM64 = 19

_KIND_NAMES = {
    0: "void", 1: "int", 2: "pointer", 3: "array", 4: "struct", 5: "union", 6: "enum",
    7: "forward declaration", 8: "typedef", 9: "volatile", 10: "const", 11: "restrict",
    12: "function", 13: "function prototype", 14: "variable", 15: "data section",
    16: "float", 17: "declaration tag", 18: "type tag", 19: "enum",
}
_MODIFIERS = frozenset({_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG})
_COMPOSITES = frozenset({_KIND_STRUCT, _KIND_UNION})
# member(), offset_of() and size_of() look a name up as these kinds, in this order.
_NAMED_KINDS = (_KIND_STRUCT, _KIND_UNION, _KIND_TYPEDEF)


class BtfError(KernelFeatureError):
    """Kernel BTF is missing or unreadable, or lacks a struct, member or enum we need."""


# On-disk/in-memory BTF records, as libbpf hands them out (include/uapi/linux/btf.h).
class BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size_or_type", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


class BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32),
                ("nelems", ctypes.c_uint32)]


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class BtfEnum64(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val_lo32", ctypes.c_uint32),
                ("val_hi32", ctypes.c_uint32)]


class Info(NamedTuple):
    kind: int
    vlen: int
    kflag: bool


def decode_info(info: int) -> Info:
    """Split btf_type.info: vlen in bits 0-15, kind in bits 24-28, kind_flag in bit 31."""
    return Info(kind=(info >> 24) & 0x1F, vlen=info & 0xFFFF, kflag=bool(info >> 31))


def split_member_offset(raw: int, kflag: bool) -> tuple[int, int]:
    """(bit offset, bitfield size) of a btf_member.offset. With kind_flag set on the
    struct (pahole and clang set it whenever a struct has bitfields) the size sits in
    the top 8 bits; the older encoding in the int type is not read."""
    if kflag:
        return raw & 0xFFFFFF, raw >> 24
    return raw, 0


class PathStep(NamedTuple):
    name: str
    indices: tuple[int, ...]


_STEP = re.compile(r"([A-Za-z_]\w*)((?:\[\d+\])*)")


def parse_path(path: str) -> tuple[PathStep, ...]:
    """'tuplehash[1].tuple.src.u3' -> (('tuplehash', (1,)), ('tuple', ()), ...)."""
    steps = []
    for part in path.split("."):
        match = _STEP.fullmatch(part)
        if match is None:
            raise BtfError(f"malformed member path '{path}': expected name[index].name...")
        indices = tuple(int(i) for i in re.findall(r"\[(\d+)\]", match[2]))
        steps.append(PathStep(match[1], indices))
    return tuple(steps)


@dataclass(frozen=True)
class Member:
    offset_bits: int  # from the start of the outer struct
    bitfield_size: int  # 0 when not a bitfield
    size: int  # byte size of the member's (resolved) type

    @property
    def offset(self) -> int:
        """Byte offset; a bitfield or a member not on a byte boundary has none."""
        if self.bitfield_size:
            raise BtfError(f"member at bit {self.offset_bits} is a {self.bitfield_size}-bit "
                           "bitfield and has no byte offset")
        if self.offset_bits % 8:
            raise BtfError(f"member at bit {self.offset_bits} is not byte-aligned")
        return self.offset_bits // 8


@cache
def _libbpf() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise BtfError(f"cannot load {LIBBPF} ({exc}); install libbpf1") from exc
    ptr, u32 = ctypes.c_void_p, ctypes.c_uint32
    prototypes = {
        "btf__new": (ptr, [ctypes.c_char_p, u32]),
        "btf__free": (None, [ptr]),
        "btf__find_by_name_kind": (ctypes.c_int32, [ptr, ctypes.c_char_p, u32]),
        "btf__type_by_id": (ptr, [ptr, u32]),
        "btf__name_by_offset": (ctypes.c_char_p, [ptr, u32]),
        "btf__resolve_size": (ctypes.c_int64, [ptr, u32]),
    }
    for name, (restype, argtypes) in prototypes.items():
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    return lib


class _Type(NamedTuple):
    id: int
    kind: int
    name: str
    vlen: int
    kflag: bool
    size_or_type: int
    tail: int  # address of the kind-specific records that follow struct btf_type

    def describe(self) -> str:
        kind = _KIND_NAMES.get(self.kind, f"kind {self.kind}")
        return f"{kind} {self.name}" if self.name else f"anonymous {kind}"


def _kind_name(kind: int) -> str:
    """'a pointer', 'an int': for "X is a pointer, not a struct" messages."""
    name = _KIND_NAMES.get(kind, f"kind {kind}")
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


class Btf:
    """Kernel (or any raw) BTF loaded by libbpf; free it with close() or `with`."""

    def __init__(self, handle: int) -> None:
        self._lib = _libbpf()
        self._handle: int | None = handle
        self._free = weakref.finalize(self, self._lib.btf__free, handle)
        self._ids: dict[tuple[str, int], int] = {}
        self._members: dict[tuple[str, str], Member] = {}

    @classmethod
    def vmlinux(cls, path: str = VMLINUX_BTF) -> Btf:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise BtfError(f"cannot read kernel BTF at {path}: {reason} "
                           "(the kernel needs CONFIG_DEBUG_INFO_BTF=y)") from exc
        return cls._parse(data, path)

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        return cls._parse(data, "raw BTF data")

    @classmethod
    def _parse(cls, data: bytes, source: str) -> Btf:
        handle = _libbpf().btf__new(data, len(data))
        if not handle:
            code = ctypes.get_errno() or errno.EINVAL
            raise BtfError(f"cannot parse BTF from {source}: {os.strerror(code)}")
        return cls(handle)

    def close(self) -> None:
        self._free()
        self._handle = None

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def member(self, struct: str, path: str) -> Member:
        """Locate `path` ("nd_net.net", "tuplehash[1].tuple.src.u3") in a struct, union or
        typedef, looking through modifiers and into anonymous members; pointers are not
        followed."""
        key = (struct, path)
        if key not in self._members:
            self._members[key] = self._resolve_member(struct, path)
        return self._members[key]

    def offset_of(self, struct: str, path: str) -> int:
        member = self.member(struct, path)
        try:
            return member.offset
        except BtfError as exc:
            raise BtfError(f"struct {struct} member '{path}': {exc}") from None

    def has_member(self, struct: str, path: str) -> bool:
        parse_path(path)  # a malformed path is the caller's bug, not a missing member
        try:
            self.member(struct, path)
        except BtfError:
            return False
        return True

    def function_id(self, name: str) -> int | None:
        """The BTF id of kernel function `name` (what fentry/fexit attach to),
        None when the kernel has no such function."""
        try:
            return self._find(name, (_KIND_FUNC,), "").id
        except BtfError:
            return None

    def size_of(self, name: str) -> int:
        return self._size(self._find_named(name).id)

    def enum(self, name: str, strip_prefix: str | None = None) -> dict[int, str]:
        """Values to names; where names alias one value the first declared wins."""
        t = self._find(name, (_KIND_ENUM, _KIND_ENUM64), f"kernel BTF has no enum '{name}'")
        values: dict[int, str] = {}
        for value, label in self._enumerators(t):
            if strip_prefix:
                label = label.removeprefix(strip_prefix)
            values.setdefault(value, label)
        return values

    # --- lookups over libbpf's type table ---

    def _ptr(self) -> int:
        if self._handle is None:
            raise BtfError("BTF was already closed")
        return self._handle

    def _type(self, type_id: int) -> _Type:
        addr = self._lib.btf__type_by_id(self._ptr(), type_id)
        if not addr:
            raise BtfError(f"BTF has no type id {type_id}")
        raw = BtfType.from_address(addr)
        kind, vlen, kflag = decode_info(raw.info)
        return _Type(type_id, kind, self._name(raw.name_off), vlen, kflag, raw.size_or_type,
                     addr + ctypes.sizeof(BtfType))

    def _name(self, offset: int) -> str:
        name = self._lib.btf__name_by_offset(self._ptr(), offset)
        return name.decode() if name else ""

    def _size(self, type_id: int) -> int:
        size = self._lib.btf__resolve_size(self._ptr(), type_id)
        if size < 0:
            raise BtfError(f"cannot size BTF type {type_id}: {os.strerror(-size)}")
        return size

    def _find(self, name: str, kinds: tuple[int, ...], missing: str) -> _Type:
        for kind in kinds:
            key = (name, kind)
            if key not in self._ids:
                type_id = self._lib.btf__find_by_name_kind(self._ptr(), name.encode(), kind)
                if type_id < 0:
                    continue
                self._ids[key] = type_id
            return self._type(self._ids[key])
        raise BtfError(missing)

    def _find_named(self, name: str) -> _Type:
        return self._find(name, _NAMED_KINDS, f"kernel BTF has no struct '{name}'")

    def _strip(self, t: _Type) -> _Type:
        """Follow typedefs and const/volatile/restrict/type-tag to the real type."""
        while t.kind in _MODIFIERS:
            t = self._type(t.size_or_type)
        return t

    def _fields(self, t: _Type) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct or union's members."""
        fields = []
        for m in (BtfMember * t.vlen).from_address(t.tail):
            bit_offset, bitfield_size = split_member_offset(m.offset, t.kflag)
            fields.append((self._name(m.name_off), m.type, bit_offset, bitfield_size))
        return fields

    def _lookup_field(self, t: _Type, name: str) -> tuple[int, int, int] | None:
        """(bit offset, bitfield size, type id) of `name` in composite `t`, searching
        anonymous struct/union members (C11) when it is not a direct member."""
        fields = self._fields(t)
        for field_name, type_id, bit_offset, bitfield_size in fields:
            if field_name == name:
                return bit_offset, bitfield_size, type_id
        for field_name, type_id, bit_offset, _ in fields:
            inner = self._strip(self._type(type_id))
            if field_name or inner.kind not in _COMPOSITES:
                continue
            found = self._lookup_field(inner, name)
            if found is not None:
                return bit_offset + found[0], found[1], found[2]
        return None

    def _enumerators(self, t: _Type) -> list[tuple[int, str]]:
        if t.kind == _KIND_ENUM:
            return [(e.val if t.kflag else e.val & 0xFFFFFFFF, self._name(e.name_off))
                    for e in (BtfEnum * t.vlen).from_address(t.tail)]
        out = []
        for e in (BtfEnum64 * t.vlen).from_address(t.tail):
            value = e.val_hi32 << 32 | e.val_lo32
            if t.kflag and value >> 63:
                value -= 1 << 64
            out.append((value, self._name(e.name_off)))
        return out

    def _resolve_member(self, struct: str, path: str) -> Member:
        steps = parse_path(path)
        root = self._find_named(struct)
        where = root.describe()  # errors name the struct the caller asked about
        in_path = f"(in path '{path}')"
        offset_bits, bitfield_size, type_id = 0, 0, root.id
        for i, step in enumerate(steps):
            cur = self._strip(self._type(type_id))
            if cur.kind not in _COMPOSITES:
                what = f"'{steps[i - 1].name}' in {where}" if i else where
                raise BtfError(f"{what} is {_kind_name(cur.kind)}, not a struct or union "
                               f"{in_path}")
            found = self._lookup_field(cur, step.name)
            if found is None:
                if not i:
                    raise BtfError(f"{where} has no member '{step.name}' {in_path}")
                raise BtfError(f"{cur.describe()} has no member '{step.name}' "
                               f"(in path '{path}' of {where})")
            offset_bits += found[0]
            bitfield_size, type_id = found[1], found[2]
            for index in step.indices:
                array = self._strip(self._type(type_id))
                if array.kind != _KIND_ARRAY:
                    raise BtfError(f"'{step.name}' in {where} is not an array {in_path}")
                info = BtfArray.from_address(array.tail)
                if index >= info.nelems:
                    raise BtfError(f"index {index} is out of range for '{step.name}' in {where}"
                                   f", which has {info.nelems} elements {in_path}")
                offset_bits += index * self._size(info.type) * 8
                type_id = info.type
        return Member(offset_bits, bitfield_size, self._size(type_id))
