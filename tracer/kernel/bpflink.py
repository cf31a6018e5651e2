"""bpf(2) calls bcc 0.26 cannot make: links to netfilter hooks (BPF_NETFILTER,
kernel >= 6.4) and tcx on a device (BPF_TCX_INGRESS/EGRESS, kernel >= 6.6)
through BPF_LINK_CREATE, and the two-instruction programs tracer/kernel/features.py
loads to probe what the kernel offers before anything is compiled; and, for
bench/program_swap.py, a tcx link's program swapped in place, or the link
detached.  Closing a link's fd detaches it; nothing is pinned, so even a
killed process leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34
BPF_LINK_TYPE_TCX = 11

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_TRACING = 26
BPF_PROG_TYPE_NETFILTER = 32

BPF_TRACE_FENTRY = 24
BPF_TRACE_FEXIT = 25
BPF_NETFILTER = 45
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_LOCAL_OUT = 3
NF_INET_POST_ROUTING = 4

HOOK_NAMES = {
    NF_INET_PRE_ROUTING: "PREROUTING",
    NF_INET_LOCAL_IN: "INPUT",
    NF_INET_FORWARD: "FORWARD",
    NF_INET_LOCAL_OUT: "OUTPUT",
    NF_INET_POST_ROUTING: "POSTROUTING",
}

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 144  # >= sizeof(union bpf_attr) fields used; the tail stays zero

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(command: int, attr: bytes) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    fd = _libc.syscall(number, command, buf, _ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _link_create(attr: bytes) -> int:
    return _bpf(BPF_LINK_CREATE, attr)


BPF_FUNC_PROBE_READ_KERNEL = 113


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _return(result: int) -> bytes:
    return _insn(0xB7, 0, imm=result) + _insn(0x95)   # r0 = result; exit


def load_trivial_program(prog_type: int, expected_attach_type: int = 0,
                         attach_btf_id: int = 0, result: int = 0) -> int:
    """A program that only returns `result` (r0 = result; exit); its fd.
    The verifier has nothing to refuse in it, so whether it loads and links
    says whether the kernel has the program type and attach point."""
    return load_program(prog_type, _return(result), expected_attach_type, attach_btf_id)


def load_kernel_reading_program(prog_type: int, result: int = 0) -> int:
    """A program that reads 8 bytes of kernel memory at its context with
    bpf_probe_read_kernel, then returns `result`: whether the kernel lets
    this program type read the sk_buff its context is."""
    insns = (_insn(0xBF, 6, 1)                 # r6 = ctx
             + _insn(0xBF, 1, 10)              # r1 = fp
             + _insn(0x07, 1, imm=-8)          # r1 += -8
             + _insn(0xB7, 2, imm=8)           # r2 = 8
             + _insn(0xBF, 3, 6)               # r3 = ctx
             + _insn(0x85, imm=BPF_FUNC_PROBE_READ_KERNEL)
             + _return(result))
    return load_program(prog_type, insns)


def load_program(prog_type: int, insns: bytes, expected_attach_type: int = 0,
                 attach_btf_id: int = 0) -> int:
    insns_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(_ATTR_SIZE)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license at
    # 0..23; prog_name at 48; expected_attach_type at 68; attach_btf_id at 108.
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(insns_buf),
                     ctypes.addressof(license_buf))
    struct.pack_into("=16s", attr, 48, b"cntrace_probe")
    struct.pack_into("=I", attr, 68, expected_attach_type)
    struct.pack_into("=I", attr, 108, attach_btf_id)
    return _bpf(BPF_PROG_LOAD, bytes(attr))


def tracing_attach(prog_fd: int) -> int:
    """Attach an fentry/fexit program to the function it was loaded for
    (BPF_RAW_TRACEPOINT_OPEN with no name, as libbpf does on 5.5+); its fd."""
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("=QI", 0, prog_fd))


def link_create(prog_fd: int, pf: int, hooknum: int, priority: int) -> int:
    """A netfilter link; returns its fd, OSError on failure."""
    # union bpf_attr.link_create: prog_fd, target_fd, attach_type, flags,
    # then netfilter {pf, hooknum, priority, flags}.
    return _link_create(struct.pack("=IIIIIIiI", prog_fd, 0, BPF_NETFILTER, 0, pf, hooknum,
                                    priority, 0))


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """A tcx link on a device (appended after other tcx programs); its fd."""
    # link_create: prog_fd, target_ifindex, attach_type, flags; tcx options zero.
    return _link_create(struct.pack("=IIII", prog_fd, ifindex, attach_type, 0))


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("=I", prog_id))


def link_fd_by_id(link_id: int) -> int:
    return _bpf(BPF_LINK_GET_FD_BY_ID, struct.pack("=I", link_id))


def tcx_link_info(link_fd: int) -> tuple[int, int, int] | None:
    """A tcx link's (program id, ifindex, attach type); None for a link of
    another kind."""
    info = ctypes.create_string_buffer(64)
    # obj_get_info_by_fd: bpf_fd, info_len, info.  struct bpf_link_info
    # begins type, id, prog_id; its tcx member (ifindex, attach_type) at 16.
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", link_fd, len(info), ctypes.addressof(info)))
    link_type, _, prog_id = struct.unpack_from("=III", info.raw)
    if link_type != BPF_LINK_TYPE_TCX:
        return None
    ifindex, attach_type = struct.unpack_from("=II", info.raw, 16)
    return prog_id, ifindex, attach_type


def link_detach(link_fd: int) -> None:
    """The link leaves its hook for good; its holders keep a defunct link."""
    _bpf(BPF_LINK_DETACH, struct.pack("=I", link_fd))


def link_update(link_fd: int, prog_fd: int) -> None:
    """The link runs prog_fd from now on, in the place of its program."""
    _bpf(BPF_LINK_UPDATE, struct.pack("=IIII", link_fd, prog_fd, 0, 0))
