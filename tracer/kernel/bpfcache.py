"""bcc's compile of our BPF programs, cached across runs.

bcc compiles C with its embedded clang every time: 0.6-0.8 s of a core on
this machine kind, most of a trace-ping.  bcc cannot load compiled code
(iovisor/bcc#534, #3120), so the cache keeps each program's instructions as
bcc produced them and, on a hit, has bcc compile only the map declarations
(its fixed cost: it creates the maps) and loads the cached instructions with
their map references pointed at the new maps.

The key covers everything the instructions depend on: the source, the
cflags (the kernel's BTF offsets are among them), the kernel's release and
build, and bcc's version.  A program the kernel refuses, or anything odd in
the cache, means a full compile, never a failure.  fentry/fexit programs are
not cached: bcc attaches them while it compiles.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

CACHE_DIR_ENV = "CNTRACE_BPF_CACHE"          # a directory, or "off"
DEFAULT_DIR = "/var/cache/cntrace/bpf"
FORMAT = 1                                   # bumped when the file layout changes

INSN_SIZE = 8
LD_IMM64 = 0x18                              # BPF_LD | BPF_IMM | BPF_DW: two slots
PSEUDO_MAP_FD = 1                            # src_reg of a map reference by fd

# Map declarations in bpf/*.h: BPF_HASH(name, ...), BPF_TABLE("type", k, v, name, n).
_MAP_DECL = re.compile(r"\bBPF_(?:TABLE\(\s*\"[^\"]+\"\s*,[^,]+,[^,]+,|[A-Z_]+\()\s*(\w+)")


def cache_dir() -> Path | None:
    setting = os.environ.get(CACHE_DIR_ENV, DEFAULT_DIR)
    return None if setting in ("", "off") else Path(setting)


def cache_key(source: str, cflags: Iterable[str], bcc_version: str) -> str:
    uname = os.uname()
    text = "\0".join([str(FORMAT), source, *cflags, uname.release, uname.version, bcc_version])
    return hashlib.sha256(text.encode()).hexdigest()


def map_names(source: str) -> list[str]:
    return list(dict.fromkeys(_MAP_DECL.findall(source)))


def map_references(insns: bytes) -> list[tuple[int, int]]:
    """(instruction index, map fd) of every map-by-fd load in `insns`."""
    refs = []
    index = 0
    while index * INSN_SIZE + INSN_SIZE <= len(insns):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, index * INSN_SIZE)
        if code == LD_IMM64:
            if regs >> 4 == PSEUDO_MAP_FD:
                refs.append((index, imm))
            index += 2
        else:
            index += 1
    return refs


def relocate(insns: bytes, refs: Iterable[tuple[int, str]], fds: Mapping[str, int]) -> bytes:
    """`insns` with each referenced map's fd replaced by `fds[name]`."""
    out = bytearray(insns)
    for index, name in refs:
        struct.pack_into("<i", out, index * INSN_SIZE + 4, fds[name])
    return bytes(out)


def _bcc():
    from bcc import BPF, libbcc

    return BPF, libbcc.lib


def save(bpf, key: str, names: Iterable[str], functions: Iterable[str]) -> bool:
    """Write the programs of a fully compiled `bpf` under `key`; False if
    the directory is not writable or a program refers to something other
    than a named map."""
    directory = cache_dir()
    if directory is None:
        return False
    _, lib = _bcc()
    by_fd = {lib.bpf_table_fd(bpf.module, name.encode()): name for name in names}
    programs = {}
    for function in functions:
        insns = bpf.dump_func(function.encode())
        refs = map_references(insns)
        if any(fd not in by_fd for _, fd in refs) or _other_pseudo_loads(insns):
            return False
        programs[function] = {"insns": base64.b64encode(insns).decode(),
                              "maps": [[index, by_fd[fd]] for index, fd in refs]}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as out:
            json.dump({"format": FORMAT, "programs": programs}, out)
        os.replace(out.name, directory / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(out.name)
        return False
    return True


def _other_pseudo_loads(insns: bytes) -> bool:
    """A 64-bit load of anything but a map fd (a map value, a BTF id): not relocatable."""
    for index in range(0, len(insns) // INSN_SIZE):
        code, regs, _, _ = struct.unpack_from("<BBhi", insns, index * INSN_SIZE)
        if code == LD_IMM64 and regs >> 4 not in (0, PSEUDO_MAP_FD):
            return True
    return False


def load(key: str) -> dict | None:
    directory = cache_dir()
    if directory is None:
        return None
    try:
        data = json.loads((directory / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data.get("programs") or None


def install(bpf, programs: Mapping[str, dict], types: Mapping[str, tuple[int, int]]) -> None:
    """Load the cached programs into the maps of `bpf` (a maps-only compile)
    and register them as bcc's own, so attach_raw_tracepoint and load_func
    find them.  OSError if the kernel refuses one."""
    BPF, lib = _bcc()
    fds = {name: lib.bpf_table_fd(bpf.module, name.encode())
           for program in programs.values() for _, name in program["maps"]}
    if any(fd < 0 for fd in fds.values()):
        raise OSError("a cached program's map is missing from the maps-only compile")
    for function, program in programs.items():
        if function not in types:
            continue
        prog_type, attach_type = types[function]
        insns = relocate(base64.b64decode(program["insns"]), program["maps"], fds)
        buffer = ctypes.create_string_buffer(insns, len(insns))
        fd = lib.bcc_func_load(bpf.module, prog_type, function.encode(), buffer, len(insns),
                               lib.bpf_module_license(bpf.module),
                               lib.bpf_module_kern_version(bpf.module), 0, None, 0, None,
                               attach_type)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"the kernel refused cached {function}")
        bpf.funcs[function.encode()] = BPF.Function(bpf, function.encode(), fd)
