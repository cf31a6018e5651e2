"""The daemon's counting programs on each container's host-side veth (both
directions) and on the egress of each of the host's exit devices.

Two mechanisms behind one interface (attach / detach / close), chosen by
tracer/kernel/loader.py from tracer/kernel/features.py's probes:

- TcxLinks: tcx links (kernel >= 6.6).  Closing the fd detaches; a killed
  daemon leaves nothing.
- ClassicTc: a clsact qdisc and a named cls_bpf direct-action filter per
  direction, through pyroute2 (kernels before 6.6, e.g. Debian 12's 6.1).
  Each daemon's filters carry its pid as their handle, so two daemons share
  a veth (as tcx links do) and a filter whose daemon is gone can be told
  apart.  Filters outlive a killed process, so such leftovers are removed at
  start; a qdisc is deleted only when cntrace created it (or created it in a
  killed run: it held only our leftover filters) and no other filter is on
  it.  Nothing of another tc user's is ever changed.

The programs return TCX_NEXT / TC_ACT_UNSPEC (both -1): never a verdict.
"""

from __future__ import annotations

import errno
import logging
import os

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tracer.kernel import bpflink

# What attach() says: LINKED, GONE (the device went away first: its container
# died), FAILED (refused; retried later), UNSUPPORTED (no mechanism loaded).
LINKED, GONE, FAILED, UNSUPPORTED = "linked", "gone", "failed", "unsupported"

log = logging.getLogger(__name__)

_GONE_ERRNOS = (errno.ENODEV, errno.ENXIO, errno.ENOENT)

INGRESS, EGRESS = "ingress", "egress"
TC_H_CLSACT_INGRESS = 0xFFFFFFF2
TC_H_CLSACT_EGRESS = 0xFFFFFFF3
CLSACT_PARENTS = (TC_H_CLSACT_INGRESS, TC_H_CLSACT_EGRESS)
CLSACT_PARENT = {INGRESS: TC_H_CLSACT_INGRESS, EGRESS: TC_H_CLSACT_EGRESS}
TCX_ATTACH_TYPE = {INGRESS: bpflink.BPF_TCX_INGRESS, EGRESS: bpflink.BPF_TCX_EGRESS}

# Which program goes where, by the device it is on (bpf/tc.bpf.c).  A
# container's host veth: from the container is its ingress, to the
# container its egress.  An exit device of the host: what leaves by it.
VETH, EXIT = "veth", "exit"
PLACEMENTS = {
    VETH: (("cntrace_tc_from_container", INGRESS), ("cntrace_tc_to_container", EGRESS)),
    EXIT: (("cntrace_tc_leaving_host", EGRESS),),
}
TC_FUNCTIONS = tuple(function for placed in PLACEMENTS.values() for function, _ in placed)


def functions(device: str) -> tuple[str, ...]:
    return tuple(function for function, _ in PLACEMENTS[device])
# cntrace's own cls_bpf priority: below tc's default (49152), so it runs
# before filters added without one.
CLS_BPF_PRIORITY = 9476
ETH_P_ALL = 0x0003


class TcxLinks:
    mechanism = "tcx"
    detail = "tcx links on each container's host veth"

    def __init__(self, program_fds: dict[str, int]) -> None:
        self._programs = program_fds
        self._links: dict[int, tuple[int, ...]] = {}

    def attach(self, ifindex: int, device: str = VETH) -> str:
        if ifindex in self._links:
            return LINKED
        links: list[int] = []
        try:
            for function, direction in PLACEMENTS[device]:
                links.append(bpflink.tcx_link_create(self._programs[function], ifindex,
                                                     TCX_ATTACH_TYPE[direction]))
        except OSError as exc:
            for fd in links:
                os.close(fd)
            return GONE if exc.errno in _GONE_ERRNOS else FAILED
        self._links[ifindex] = tuple(links)
        return LINKED

    def detach(self, ifindex: int) -> None:
        for fd in self._links.pop(ifindex, ()):
            os.close(fd)

    def close(self) -> None:
        for ifindex in list(self._links):
            self.detach(ifindex)


def _filter_name(message) -> str | None:
    options = message.get_attr("TCA_OPTIONS")
    return options.get_attr("TCA_BPF_NAME") if options else None


def _daemon_alive(pid: int, proc: str = "/proc") -> bool:
    """A filter's handle names the daemon that added it: still running?  (A
    reused pid of an unrelated process does not count.)"""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return False
    return b"daemon" in words and any(b"cntrace" in w or w == b"tracer" for w in words)


class ClassicTc:
    mechanism = "cls_bpf"
    detail = (f"classic tc: clsact + cls_bpf filters (priority {CLS_BPF_PRIORITY}) on each "
              "container's host veth and the host's exit devices")

    def __init__(self, program_fds: dict[str, int], ipr: IPRoute | None = None) -> None:
        self._programs = program_fds
        self._ipr = ipr or IPRoute()
        self._handle = os.getpid()
        self._attached: set[int] = set()
        self._own_qdiscs: set[int] = set()
        self.remove_leftovers()

    # ------------------------------------------------------------ attach
    def attach(self, ifindex: int, device: str = VETH) -> str:
        if ifindex in self._attached:
            return LINKED
        try:
            self._ensure_clsact(ifindex)
            for name, direction in PLACEMENTS[device]:
                self._ipr.tc("replace-filter", "bpf", ifindex, self._handle,
                             fd=self._programs[name], name=name,
                             parent=CLSACT_PARENT[direction], prio=CLS_BPF_PRIORITY,
                             protocol=ETH_P_ALL, classid=1, direct_action=True)
        except NetlinkError as exc:
            self._remove(ifindex, self._mine)
            return GONE if exc.code in _GONE_ERRNOS else FAILED
        self._attached.add(ifindex)
        return LINKED

    def detach(self, ifindex: int) -> None:
        if ifindex in self._attached:
            self._attached.discard(ifindex)
            self._remove(ifindex, self._mine)

    def close(self) -> None:
        for ifindex in list(self._attached):
            self.detach(ifindex)
        self._ipr.close()

    # ----------------------------------------------------------- helpers
    def _ensure_clsact(self, ifindex: int) -> None:
        try:
            self._ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            return   # someone's (or ours from before): used, never deleted unless empty of others
        self._own_qdiscs.add(ifindex)

    def _filters(self, ifindex: int, parent: int) -> list:
        """The filters under a clsact parent.  The dump also has a header per
        priority (kind set, handle 0: the classifier itself): left out."""
        try:
            return [m for m in self._ipr.get_filters(index=ifindex, parent=parent)
                    if m.get_attr("TCA_KIND") and m["handle"]]
        except NetlinkError as exc:
            if exc.code in _GONE_ERRNOS or exc.code == errno.EINVAL:
                return []   # the veth is gone, or has no clsact
            raise

    @staticmethod
    def _cntrace(message) -> bool:
        """A filter some cntrace daemon added (this one or another)."""
        return (message.get_attr("TCA_KIND") == "bpf"
                and (message["info"] >> 16) == CLS_BPF_PRIORITY
                and _filter_name(message) in TC_FUNCTIONS)

    def _mine(self, message) -> bool:
        return self._cntrace(message) and message["handle"] == self._handle

    def _leftover(self, message) -> bool:
        return self._cntrace(message) and not _daemon_alive(message["handle"])

    def _remove(self, ifindex: int, which, own_qdisc: bool | None = None) -> int:
        """Delete the filters on ifindex that `which` picks, then the clsact
        qdisc when it is ours and carries no other filter; returns the
        filters deleted."""
        removed, others = 0, 0
        for parent in CLSACT_PARENTS:
            for message in self._filters(ifindex, parent):
                if not which(message):
                    others += 1
                    continue
                try:
                    self._ipr.tc("del-filter", "bpf", ifindex, message["handle"],
                                 parent=parent, prio=CLS_BPF_PRIORITY, protocol=ETH_P_ALL)
                    removed += 1
                except NetlinkError as exc:
                    if exc.code not in _GONE_ERRNOS:
                        raise
        if own_qdisc is None:
            own_qdisc = ifindex in self._own_qdiscs
        if own_qdisc and not others:
            try:
                self._ipr.tc("del", "clsact", ifindex)
            except NetlinkError as exc:
                if exc.code not in _GONE_ERRNOS + (errno.EINVAL,):
                    raise
        self._own_qdiscs.discard(ifindex)
        return removed

    def remove_leftovers(self) -> int:
        """Killed daemons' filters (cntrace's name and priority, a handle
        whose daemon is gone) on every device of this netns, with a clsact
        left holding nothing else."""
        removed = 0
        for link in self._ipr.get_links():
            ifindex = link["index"]
            if any(self._leftover(m) for parent in CLSACT_PARENTS
                   for m in self._filters(ifindex, parent)):
                count = self._remove(ifindex, self._leftover, own_qdisc=True)
                removed += count
                log.info("removed %d cls_bpf filter(s) a previous cntrace left on %s",
                         count, link.get_attr("IFLA_IFNAME"))
        return removed
