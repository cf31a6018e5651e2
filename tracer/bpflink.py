"""BPF links bcc 0.26 cannot make: netfilter hooks (BPF_NETFILTER, kernel
>= 6.4) and tcx on a device (BPF_TCX_INGRESS/EGRESS, kernel >= 6.6), both
through the raw bpf(2) BPF_LINK_CREATE call.  Closing a link's fd detaches
it; nothing is pinned, so even a killed process leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_LINK_CREATE = 28

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


def _link_create(attr: bytes) -> int:
    number = _BPF_SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) syscall number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    fd = _libc.syscall(number, BPF_LINK_CREATE, buf, _ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


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
