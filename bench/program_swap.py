"""What the daemon's programs cost a flood, to a fraction of a percent.

During one flood a -> b (UDP 64-byte datagrams, or TCP), the daemon's tcx
links swap between its own programs and empty ones every --window seconds,
the same bpf(2) call each way (BPF_LINK_UPDATE), and what crossed the host
into b in each window is counted at b's host veth (packets for UDP, bytes
for TCP).  A window with the daemon's programs is compared with the windows
around it, which see the machine at the same speed: this VM's rate swings
by 10% from one 3-second run to the next (bench/overhead.py), far less from
one tenth of a second to the next.  Each flood gives one ratio (the mean
rate of its windows with the daemon's programs over that of its windows
with empty ones); the table gives their spread over --reps floods.

The ratio is to the floor (empty programs on the same links).  The first
row swaps empty programs for empty ones: what the method reads when there
is nothing to find.  The rows "linked and unlinked" measure against no
programs at all: the daemon's links are detached, and its programs (or
empty ones, the floor) are linked at the same points in half the windows
and unlinked in the rest; the rows "one empty program" link one at a single
point of the path a -> b, in b's netns for its eth0.  Windows come in the
order on, off, off, on (ORDER).  Take the linked rows with --window 2 or
more: in windows of 0.1 s they read 1.00 for empty programs and for the
daemon's alike, in the same floods where windows of 2 s read 0.97 and 0.96
and where program-cost puts the daemon's programs alone at about 1% of the
sending CPU (BENCHMARKS.md); short windows do not see what a link costs,
for a reason not yet known.
The daemon's user space runs in both kinds of window, and is not measured
here; nor is the classic tc path (tcx only).

    /opt/cntrace/venv/bin/python bench/program_swap.py [--reps N] [--flood-seconds S] [--window W]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import Daemon, flood, host_veth, iperf_server, spread, standalone
from overhead import EMPTY_PROGRAMS

from tracer.kernel import bpflink
from tracer.ping.netns import run_in

AA = "empty programs swapped for empty ones (the method's own reading)"
LINKED_FLOOR = "linked and unlinked: empty programs (the floor)"
LINKED_DAEMON = "linked and unlinked: `cntrace daemon`'s programs"
# One empty program at one point on the path of a -> b: which hook the floor
# is paid at, and whether the program into b costs less in b's own netns.
AT_ONE_POINT = "linked and unlinked: one empty program at "
POINTS = ("a's host veth ingress (from a)", "b's host veth egress (into b)",
          "b's eth0 ingress, in b's netns (into b)")


@dataclasses.dataclass
class DaemonLink:
    link: int          # fds of our own: the daemon's link,
    program: int       # and its program
    ifindex: int       # where the link is
    attach_type: int   # BPF_TCX_INGRESS or BPF_TCX_EGRESS


def daemon_links(pid: int) -> list[DaemonLink]:
    """Each tcx link the process holds open (its fdinfo names their ids)."""
    handles = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):   # closed meanwhile
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if "link_id" not in fields:
                continue
            link = bpflink.link_fd_by_id(int(fields["link_id"]))
            info = bpflink.tcx_link_info(link)
            if info is None:
                os.close(link)
                continue
            program, ifindex, attach_type = info
            handles.append(DaemonLink(link, bpflink.prog_fd_by_id(program), ifindex, attach_type))
    if not handles:
        raise RuntimeError(f"process {pid} holds no tcx link")
    return handles


def close_links(handles: list[DaemonLink]) -> None:
    for handle in handles:
        os.close(handle.link)
        os.close(handle.program)


class Linked:
    """swap(on) for swapped_flood: each program linked at its point (tcx) in
    the windows on, and nothing linked in the others; each change made
    between two windows, so neither kind of window pays for it."""

    def __init__(self, points: list[tuple[int, int, int]], netns: str | None = None) -> None:
        self.points = points   # (program fd, ifindex, attach type)
        self.netns = netns     # where the ifindexes are (None: our own netns)
        self.fds: list[int] = []

    def __call__(self, on: bool) -> None:
        if not on:
            self.unlink()
        elif not self.fds:
            for program, ifindex, attach_type in self.points:
                self.fds.append(run_in(self.netns, lambda p=program, i=ifindex, t=attach_type:
                                       bpflink.tcx_link_create(p, i, t)))

    def unlink(self) -> None:
        for fd in self.fds:
            os.close(fd)   # the last fd of a link: it leaves the hook
        self.fds = []


@contextlib.contextmanager
def empty_program() -> Iterator[int]:
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAMS)
    try:
        yield bpf.load_func("empty_tc", BPF.SCHED_CLS).fd
    finally:
        bpf.cleanup()


# The kinds of window in the order taken: on, off, off, on, ...  A drift of
# the machine's speed that is steady over four windows falls on both kinds
# alike, where strict alternation would give it to whichever came first.
ORDER = (True, False, False, True)


def swapped_flood(a, b, udp: bool, seconds: float, window: float, swap) -> float:
    """One flood with swap(True/False) before each window whose kind
    differs from the last (ORDER); the ratio of the mean rates of its two
    kinds of window."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    with flood(a, b, udp) as rate:
        try:
            swap(True)
            end, taken = time.monotonic() + seconds, 0
            while time.monotonic() < end or taken % len(ORDER):
                on = ORDER[taken % len(ORDER)]
                rates[on].append(rate(window))
                taken += 1
                if ORDER[taken % len(ORDER)] != on:
                    swap(not on)
        finally:
            swap(True)
    return statistics.mean(rates[True]) / statistics.mean(rates[False])


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    compared = {f"cntrace daemon of {checkout}": ((), checkout)
                for checkout in args.compare_checkout or ()}
    modes = {AA: ((), None), **compared, "cntrace daemon": ((), None),
             "`--no-collector.peers`": (("--no-collector.peers",), None),
             "`--no-collector.nat`": (("--no-collector.nat",), None),
             "traffic only: `--no-collector.{peers,flows,nat}`":
                 (("--no-collector.peers", "--no-collector.flows", "--no-collector.nat"), None)}
    lines = [f"| swapped in (ratio to empty programs; n={args.reps} floods of "
             f"{args.flood_seconds:g} s, windows of {args.window:g} s) | UDP 64B packets/s | "
             "TCP throughput |", "|---|---|---|"]
    with iperf_server(b.pid), empty_program() as empty:
        for name, (flags, checkout) in modes.items():
            if args.mode and name != AA and not any(text in name for text in args.mode):
                continue
            with Daemon(*flags, cwd=checkout) as daemon:
                handles = daemon_links(daemon.proc.pid)

                def swap(on: bool, name=name, handles=handles) -> None:
                    for handle in handles:
                        bpflink.link_update(handle.link,
                                            handle.program if on and name != AA else empty)

                try:
                    ratios = {udp: [swapped_flood(a, b, udp, args.flood_seconds, args.window,
                                                  swap) for _ in range(args.reps)]
                              for udp in (True, False)}
                finally:
                    close_links(handles)
            lines.append(f"| {name} | {spread(ratios[True])} | {spread(ratios[False])} |")
            print(lines[-1], file=sys.stderr, flush=True)
        linked = [name for name in (LINKED_FLOOR, LINKED_DAEMON)
                  if not args.mode or any(text in name for text in args.mode)]
        if linked:
            lines += ["", *linked_rows(a, b, args, empty, linked)]
        points = [point for point in POINTS
                  if not args.mode or any(text in AT_ONE_POINT + point for text in args.mode)]
        if points:
            lines += ["", *point_rows(a, b, args, empty, points)]
    return lines


def linked_row(name: str, a, b, args, linked: Linked) -> str:
    """The table row of --reps floods per protocol swapping `linked`."""
    try:
        ratios = {udp: [swapped_flood(a, b, udp, args.flood_seconds, args.window, linked)
                        for _ in range(args.reps)] for udp in (True, False)}
    finally:
        linked.unlink()
    row = f"| {name} | {spread(ratios[True])} | {spread(ratios[False])} |"
    print(row, file=sys.stderr, flush=True)
    return row


def linked_rows(a, b, args, empty: int, names: list[str]) -> list[str]:
    """The daemon's links detached, and its programs (or empty ones) linked
    and unlinked at the same points within each flood: the ratio to no
    programs at all, issue 12's baseline, once the windows are long enough
    for a link's cost to show (module doc)."""
    lines = [f"| linked and unlinked (ratio to no programs; n={args.reps} floods of "
             f"{args.flood_seconds:g} s, windows of {args.window:g} s) | UDP 64B packets/s | "
             "TCP throughput |", "|---|---|---|"]
    with Daemon() as daemon:
        handles = daemon_links(daemon.proc.pid)
        try:
            for handle in handles:
                bpflink.link_detach(handle.link)
            for name in names:
                linked = Linked([(empty if name == LINKED_FLOOR else handle.program,
                                  handle.ifindex, handle.attach_type) for handle in handles])
                lines.append(linked_row(name, a, b, args, linked))
        finally:
            close_links(handles)
    return lines


def point_rows(a, b, args, empty: int, points: list[str]) -> list[str]:
    """An empty program linked and unlinked at one point (POINTS), no other
    program of ours anywhere: the ratio to no programs at all."""
    lines = [f"| one empty program, linked and unlinked (ratio to no programs; n={args.reps} "
             f"floods of {args.flood_seconds:g} s, windows of {args.window:g} s) | "
             "UDP 64B packets/s | TCP throughput |", "|---|---|---|"]
    b_netns = f"/proc/{b.pid}/ns/net"
    where = {POINTS[0]: (host_veth(a.pid), bpflink.BPF_TCX_INGRESS, None),
             POINTS[1]: (host_veth(b.pid), bpflink.BPF_TCX_EGRESS, None),
             POINTS[2]: ("eth0", bpflink.BPF_TCX_INGRESS, b_netns)}
    for point in points:
        ifname, attach_type, netns = where[point]
        ifindex = run_in(netns, lambda name=ifname: socket.if_nametoindex(name))
        linked = Linked([(empty, ifindex, attach_type)], netns)
        lines.append(linked_row(point, a, b, args, linked))
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
