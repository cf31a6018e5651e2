"""trace-ping speed: wall time of a reachable and of an unreachable probe
(BPF compile and attach included), and what a trace costs other traffic in
steady state: every hook attached with a probe-style kernel filter that
matches none of the measured traffic, interleaved with the baseline.  (Run
back to back, compile included, it is a mode of bench/overhead.py.)

    /opt/cntrace/venv/bin/python bench/trace_ping.py [--reps N] [--seconds S]

Traffic goes only between the testbed's own containers and wan namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchlib import CNTRACE, iperf, iperf_server, running, spread, standalone

from tracer.kernel.bpfcache import CACHE_DIR_ENV


def wall(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    start = time.monotonic()
    code = subprocess.run([*CNTRACE, "ping", *args], capture_output=True,
                          env={**os.environ, **(env or {})}).returncode
    return time.monotonic() - start, code


COMPILE_ALONE = [sys.executable, "-c", "import os, time; from tracer.kernel import loader; "
                 f"os.environ['{CACHE_DIR_ENV}'] = 'off'; "
                 "k = loader.read_kernel(); t = time.monotonic(); "
                 "loader.compile_programs(k, 64); print(time.monotonic() - t)"]


def compile_alone() -> float:
    """The part of a trace-ping that is bcc's clang: the floor of its wall time."""
    out = subprocess.run(COMPILE_ALONE, capture_output=True, text=True, check=True)
    return float(out.stdout)


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    wall([a.name, b.name])                       # fills the compile cache
    reach, cold = [], []
    for _ in range(args.reps):                   # interleaved: the same machine for both
        reach.append(wall([a.name, b.name]))
        cold.append(wall([a.name, b.name], {CACHE_DIR_ENV: "off"}))
    compiles = [compile_alone() for _ in range(args.reps)]
    if any(code != 0 for _, code in reach + cold):
        raise RuntimeError(f"a reachable trace-ping failed: {reach} {cold}")
    rule = ["DOCKER-USER", "-s", a.ip, "-d", info.wan_ip, "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        unreach = [wall([a.name, info.wan_ip, "--timeout", "1"]) for _ in range(args.reps)]
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    if any(code != 1 for _, code in unreach):
        raise RuntimeError(f"an unreachable trace-ping did not exit 1: {unreach}")
    base, attached = [], []
    tracer = [*CNTRACE, "events", "-p", "icmp", "-a", info.wan_ip]
    with iperf_server(b.pid):
        for _ in range(args.reps):
            base.append(iperf(a, b, True, args.seconds))
            with running(tracer, ready="tracing on", settle=0.5):
                attached.append(iperf(a, b, True, args.seconds))
    steady = [x / y for x, y in zip(attached, base, strict=True)]
    return [
        "| measure | value |", "|---|---|",
        f"| trace-ping, reachable (a -> b), compile cache warm, wall s (target < 1) | "
        f"{spread([t for t, _ in reach])} |",
        f"| the same without the compile cache ({CACHE_DIR_ENV}=off) | "
        f"{spread([t for t, _ in cold])} |",
        f"| bcc's full compile of its BPF programs alone | {spread(compiles)} |",
        f"| trace-ping, unreachable (DROP in DOCKER-USER, `--timeout 1`: path state, "
        f"nftables trace and rule named), wall s | {spread([t for t, _ in unreach])} |",
        f"| UDP 64B packets/s a -> b, baseline | {spread(base, '{:,.0f}')} |",
        f"| the same, a trace's hooks attached, filter matching none of it | "
        f"{spread(attached, '{:,.0f}')} |",
        f"| ratio (steady state) | {spread(steady)} |",
    ]


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
