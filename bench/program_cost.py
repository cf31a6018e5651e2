"""Where the per-packet cost goes: the kernel's own accounting of each BPF
program (kernel.bpf_stats_enabled, run count and run time, read with
bpftool) while UDP 64-byte packets flow a -> b, for the daemon and for a
trace's filtered tracer.  The sysctl is put back afterwards.

Run time includes the accounting itself (about 30 ns a run here, what an
empty program shows), so it is an upper bound of each program's own work.

    /opt/cntrace/venv/bin/python bench/program_cost.py

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from benchlib import CNTRACE, Daemon, iperf, iperf_server, running, standalone

from tracer.kernel import features

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    old = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(old)


def programs() -> dict[int, dict]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                         check=True).stdout
    return {p["id"]: p for p in json.loads(out) if str(p.get("name", "")).startswith("cntrace")}


def measure(a, b, seconds: int) -> list[tuple[str, float, float]]:
    """(program, runs per packet, mean ns per run) over one iperf3 run."""
    with bpf_stats():
        before = programs()
        rate = iperf(a.pid, b.ip, True, seconds)
        after = programs()
    packets = rate * seconds
    rows = []
    for pid, program in sorted(after.items(), key=lambda item: item[1]["name"]):
        runs = program.get("run_cnt", 0) - before.get(pid, {}).get("run_cnt", 0)
        spent = program.get("run_time_ns", 0) - before.get(pid, {}).get("run_time_ns", 0)
        if runs > packets / 10:   # on this traffic's path (drops are occasional)
            rows.append((program["name"], runs / packets, spent / runs))
    return rows


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    lines = ["| running | program | runs per packet | ns per run |", "|---|---|---|---|"]
    # name: (flags, environment); the collector rows price each collector's
    # per-packet work (README.md "Collectors").
    daemons = {"cntrace daemon": ((), {}),
               "cntrace daemon, NAT at netfilter hooks":
                   ((), {features.DISABLE_VARIABLE: features.TC_CONNTRACK}),
               "`--no-collector.peers --no-collector.flows`":
                   (("--no-collector.peers", "--no-collector.flows"), {}),
               "`--no-collector.nat`": (("--no-collector.nat",), {}),
               "traffic only: `--no-collector.{peers,flows,nat}`":
                   (("--no-collector.peers", "--no-collector.flows", "--no-collector.nat"), {})}
    with iperf_server(b.pid):
        for name, (flags, env) in daemons.items():
            daemon = Daemon(*flags, env=env)
            try:
                cost = measure(a, b, args.seconds)
            finally:
                daemon.stop()
            lines += [f"| {name} | `{n}` | {r:.2f} | {ns:.0f} |" for n, r, ns in cost]
        tracer = [*CNTRACE, "events", "-p", "icmp", "-a", info.wan_ip]
        with running(tracer, ready="tracing on", settle=0.5):
            cost = measure(a, b, args.seconds)
        lines += [f"| a trace's tracer (filter: ICMP to the wan) | `{n}` | {r:.2f} | {ns:.0f} |"
                  for n, r, ns in cost]
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
