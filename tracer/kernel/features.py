"""What the running kernel offers cntrace, probed before anything is compiled.

Each probe loads a two-instruction program (tracer/kernel/bpflink.py) and attaches it
where the real one would go, then detaches at once: microseconds, where a bcc
compile takes a quarter of a second natively and ~25 s under emulation.  No
probe compares kernel versions: features are backported (RHEL) and configured
out (this project's own 6.18 has no kprobes and refuses fentry).

CNTRACE_DISABLE_FEATURES (comma-separated names from FEATURES) makes a probe
answer "no" whatever the kernel says: the fallback paths are tested on a
kernel that has the better mechanism, and an operator can step around a
mechanism that misbehaves on a host.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from tracer.host.topology import LOOPBACK_IFINDEX
from tracer.kernel import bpflink

NETFILTER_LINK = "netfilter-link"
TCX = "tcx"
FENTRY = "fentry"
TC_CONNTRACK = "tc-conntrack"
FEATURES = (NETFILTER_LINK, TCX, FENTRY, TC_CONNTRACK)
DISABLE_VARIABLE = "CNTRACE_DISABLE_FEATURES"
NF_HOOK_FUNCTION = "nf_hook_slow"


@dataclass(frozen=True)
class Probe:
    available: bool
    detail: str          # what was tried, and the kernel's answer when it said no


def disabled(feature: str, environ: dict | None = None) -> bool:
    names = (os.environ if environ is None else environ).get(DISABLE_VARIABLE, "")
    return feature in {n.strip() for n in names.split(",")}


def _try(feature: str, attempt) -> Probe:
    if disabled(feature):
        return Probe(False, f"disabled by {DISABLE_VARIABLE}")
    fds: list[int] = []
    try:
        attempt(fds)
    except OSError as exc:
        return Probe(False, f"the kernel refused it: {exc.strerror or exc}")
    finally:
        for fd in reversed(fds):
            os.close(fd)
    return Probe(True, "probed")


def netfilter_link() -> Probe:
    """BPF_PROG_TYPE_NETFILTER linked at IPv4 LOCAL_OUT (kernel >= 6.4 with
    CONFIG_NETFILTER_BPF_LINK).  EBUSY means another program holds that
    priority: the link type exists."""
    def attempt(fds: list[int]) -> None:
        fds.append(bpflink.load_trivial_program(bpflink.BPF_PROG_TYPE_NETFILTER,
                                                bpflink.BPF_NETFILTER, result=1))
        try:
            fds.append(bpflink.link_create(fds[0], bpflink.NFPROTO_IPV4,
                                           bpflink.NF_INET_LOCAL_OUT, 0))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
    return _try(NETFILTER_LINK, attempt)


def tcx() -> Probe:
    """A tcx link on lo (kernel >= 6.6), unlinked at once."""
    def attempt(fds: list[int]) -> None:
        fds.append(bpflink.load_trivial_program(bpflink.BPF_PROG_TYPE_SCHED_CLS, result=-1))
        fds.append(bpflink.tcx_link_create(fds[0], LOOPBACK_IFINDEX, bpflink.BPF_TCX_INGRESS))
    return _try(TCX, attempt)


def tc_conntrack() -> Probe:
    """A tc program reading the sk_buff it runs on with
    bpf_probe_read_kernel: how the daemon's tc programs find a packet's
    conntrack entry, and so count NAT without a netfilter program."""
    def attempt(fds: list[int]) -> None:
        fds.append(bpflink.load_kernel_reading_program(bpflink.BPF_PROG_TYPE_SCHED_CLS, -1))
    return _try(TC_CONNTRACK, attempt)


def fentry(function_btf_id: int | None, function: str = NF_HOOK_FUNCTION) -> Probe:
    """fentry and fexit on `function` (BTF trampolines): both are attached,
    since the kernel may allow one and refuse the other."""
    if function_btf_id is None:
        return Probe(False, f"kernel BTF has no function {function}")

    def attempt(fds: list[int]) -> None:
        for attach_type in (bpflink.BPF_TRACE_FENTRY, bpflink.BPF_TRACE_FEXIT):
            prog = bpflink.load_trivial_program(bpflink.BPF_PROG_TYPE_TRACING, attach_type,
                                                function_btf_id)
            fds.append(prog)
            fds.append(bpflink.tracing_attach(prog))
    return _try(FENTRY, attempt)
