"""Where the per-packet cost goes: the kernel's own accounting of each BPF
program (kernel.bpf_stats_enabled, run count and run time, read with
bpftool) while UDP 64-byte packets flow a -> b, for the daemon and for a
trace's filtered tracer.  The sysctl is put back afterwards.

Run time includes the accounting itself (about 30 ns a run here, what an
empty program shows), so it is an upper bound of each program's own work.

The same accounting gives a measure of the overhead that the machine's
changing speed does not move: the share of the sending CPU's busy time spent
in the tool's programs.  The whole path of a packet runs on that CPU
(bench/benchlib.py pins iperf3), so a share s costs about s of the rate.
Both the programs' time and the CPU's time stretch together when the
hypervisor slows this VM, which is what makes the packet rate itself swing
by 10% from one run to the next.  The floor (empty programs on the same
attach points) is measured the same way: its time per run is the
accounting's own, and what a tool adds is its share less that much per run
of its programs.

    /opt/cntrace/venv/bin/python bench/program_cost.py [--rounds N]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchlib import (
    CNTRACE,
    IPERF_CLIENT_CPU,
    Daemon,
    busy_ns,
    host_veth,
    iperf,
    iperf_server,
    running,
    sent_into,
    spread,
    standalone,
)
from overhead import container_veths, empty_programs, exit_ifindexes

from tracer.kernel import features

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
FLOOR = "floor: empty programs on the daemon's attach points"


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    old = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(old)


def programs() -> dict[int, dict]:
    """The programs of cntrace and of the floor (bench/overhead.py names
    them empty_*)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"]: p for p in json.loads(out)
            if str(p.get("name", "")).startswith(("cntrace", "empty_"))}


def measure(a, b, seconds: int) -> tuple[list[tuple[str, float, float]], tuple[int, int, int]]:
    """Over one iperf3 run: (program, runs per packet, mean ns per run) for
    each program on this traffic's path; and the time spent in all of them,
    their runs, and the sending CPU's busy time (ns, runs, ns)."""
    into = host_veth(b.pid)
    with bpf_stats():
        # Over the same span as the programs' counts, whatever runs iperf
        # took again: the packets that crossed into b.
        before, busy_before, sent = programs(), busy_ns(IPERF_CLIENT_CPU), sent_into(into)
        iperf(a, b, True, seconds)
        after, busy_after = programs(), busy_ns(IPERF_CLIENT_CPU)
        packets = max(sent_into(into) - sent, 1)
    rows, spent_all, runs_all = [], 0, 0
    for pid, program in sorted(after.items(), key=lambda item: item[1]["name"]):
        runs = program.get("run_cnt", 0) - before.get(pid, {}).get("run_cnt", 0)
        spent = program.get("run_time_ns", 0) - before.get(pid, {}).get("run_time_ns", 0)
        spent_all, runs_all = spent_all + spent, runs_all + runs
        if runs > packets / 10:   # on this traffic's path (drops are occasional)
            # bpftool names a program by its BTF name or by the kernel's 15
            # characters, not always the same way: the kernel's, always.
            rows.append((program["name"][:15], runs / packets, spent / runs))
    return rows, (spent_all, runs_all, max(busy_after - busy_before, 1))


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    veths = container_veths(info)
    exits = exit_ifindexes()

    def daemon(*flags: str, **env: str):
        return lambda: Daemon(*flags, env=env)

    compared = {}
    for checkout in args.compare_checkout or ():
        compared[f"cntrace daemon of {checkout}"] = lambda c=checkout: Daemon(cwd=c)
    # name: start; the collector rows price each collector's per-packet work
    # (README.md "Collectors").
    modes = {FLOOR: lambda: empty_programs(veths, exits, netfilter=False),
             **compared,
             "cntrace daemon": daemon(),
             "cntrace daemon, classic tc (no tcx)":
                 daemon(**{features.DISABLE_VARIABLE: features.TCX}),
             "cntrace daemon, NAT at netfilter hooks":
                 daemon(**{features.DISABLE_VARIABLE: features.TC_CONNTRACK}),
             "`--no-collector.peers`": daemon("--no-collector.peers"),
             "`--no-collector.peers --no-collector.flows`":
                 daemon("--no-collector.peers", "--no-collector.flows"),
             "`--no-collector.nat`": daemon("--no-collector.nat"),
             "traffic only: `--no-collector.{peers,flows,nat}`":
                 daemon("--no-collector.peers", "--no-collector.flows", "--no-collector.nat"),
             "a trace's tracer (filter: ICMP to the wan)": lambda: running(
                 [*CNTRACE, "events", "-p", "icmp", "-a", info.wan_ip], ready="tracing on",
                 settle=0.5)}
    if args.mode:   # the floor always: its time per run is the accounting's
        modes = {name: start for name, start in modes.items()
                 if name == FLOOR or any(text in name for text in args.mode)}
    costs, totals = {}, {}
    # Round after round, every mode once in each: the machine's speed drifts
    # over minutes, and the share with it, so modes are compared round by
    # round, not one after the other.
    with iperf_server(b.pid):
        for _ in range(args.rounds):
            for name, start in modes.items():
                with start():
                    cost, total = measure(a, b, args.seconds)
                costs.setdefault(name, []).extend(cost)
                totals.setdefault(name, []).append(total)
    lines = ["| running | program | runs per packet | ns per run |", "|---|---|---|---|"]
    for name, cost in costs.items():
        for program in dict.fromkeys(n for n, _, _ in cost):
            runs = [r for n, r, _ in cost if n == program]
            ns = [t for n, _, t in cost if n == program]
            lines.append(f"| {name} | `{program}` | {statistics.mean(runs):.2f} | "
                         f"{statistics.mean(ns):.0f} |")
    accounting = sum(s for s, _, _ in totals[FLOOR]) / sum(r for _, r, _ in totals[FLOOR])
    lines += ["", f"| running | share of the sending CPU in BPF programs (n={args.rounds}) | "
                  f"less the accounting ({accounting:.0f} ns a run) | "
                  "estimated rate ratio |", "|---|---|---|---|"]
    for name, values in totals.items():
        shares = [spent / busy for spent, _, busy in values]
        added = statistics.mean((spent - accounting * runs) / busy for spent, runs, busy in values)
        lines.append(f"| {name} | {spread([v * 100 for v in shares], '{:.2f}%')} | "
                     f"{added * 100:.2f}% | {1 - added:.3f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
