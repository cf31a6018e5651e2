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

The ratio is to the floor (empty programs on the same links), whose own
cost bench/overhead.py measures.  The first row swaps empty programs for
empty ones: what the method reads when there is nothing to find.  The
daemon's user space runs in both kinds of window, and is not measured
here; nor is the classic tc path (tcx only).

    /opt/cntrace/venv/bin/python bench/program_swap.py [--reps N] [--flood-seconds S] [--window W]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import Daemon, flood, iperf_server, spread, standalone
from overhead import EMPTY_PROGRAMS

from tracer.kernel import bpflink

AA = "empty programs swapped for empty ones (the method's own reading)"


def daemon_links(pid: int) -> list[tuple[int, int]]:
    """(link fd, program fd) of each tcx link the process holds open (its
    fdinfo names their ids)."""
    handles = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):   # closed meanwhile
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if "link_id" not in fields:
                continue
            link = bpflink.link_fd_by_id(int(fields["link_id"]))
            program = bpflink.tcx_link_program(link)
            if program is None:
                os.close(link)
                continue
            handles.append((link, bpflink.prog_fd_by_id(program)))
    if not handles:
        raise RuntimeError(f"process {pid} holds no tcx link")
    return handles


@contextlib.contextmanager
def empty_program() -> Iterator[int]:
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAMS)
    try:
        yield bpf.load_func("empty_tc", BPF.SCHED_CLS).fd
    finally:
        bpf.cleanup()


def swapped_flood(a, b, udp: bool, seconds: float, window: float, swap) -> float:
    """One flood with swap(True/False) every window; the ratio of the mean
    rates of its two kinds of window."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    on = True
    with flood(a, b, udp) as rate:
        try:
            swap(on)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rates[on].append(rate(window))
                on = not on
                swap(on)
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
                    for link, program in handles:
                        bpflink.link_update(link, program if on and name != AA else empty)

                try:
                    ratios = {udp: [swapped_flood(a, b, udp, args.flood_seconds, args.window,
                                                  swap) for _ in range(args.reps)]
                              for udp in (True, False)}
                finally:
                    for fds in handles:
                        for fd in fds:
                            os.close(fd)
            lines.append(f"| {name} | {spread(ratios[True])} | {spread(ratios[False])} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
