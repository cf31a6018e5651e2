"""What tracing costs other traffic: container -> container over docker0, UDP
64-byte packet rate and TCP throughput (iperf3 in the containers' netns),
each mode interleaved with the baseline, several repetitions, same run.

Modes:
- the floor: empty BPF programs on the daemon's attach points (tcx on a's and
  b's host veths, netfilter at PREROUTING/LOCAL_OUT/POSTROUTING), which is
  what any tool hooked there pays before doing any work;
- `cntrace daemon`; `cntrace events` streaming everything (to a file);
  `trace-ping` run back to back (BPF compile included);
- what a user would run instead: `tcpdump -i docker0 -w /dev/null`,
  `conntrack -E`.

    /opt/cntrace/venv/bin/python bench/overhead.py [--reps N] [--seconds S]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from benchlib import CNTRACE, free_port, iperf, iperf_server, running, spread, standalone

from tracer import bpflink, loader

EMPTY_PROGRAMS = """
int empty_tc(struct __sk_buff *skb) { return -1; }   /* TCX_NEXT */
int empty_nf(void *ctx) { return 1; }                /* NF_ACCEPT */
"""


def host_veth_ifindex(pid: int) -> int:
    """The host-side peer of the container's eth0 (its link_index)."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["link_index"]


@contextlib.contextmanager
def empty_programs(tcx_ifindexes: list[int]) -> Iterator[None]:
    """Empty programs linked where the daemon links its own."""
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAMS)
    fds = []
    try:
        tc = bpf.load_func("empty_tc", BPF.SCHED_CLS).fd
        for ifindex in tcx_ifindexes:
            for where in (bpflink.BPF_TCX_INGRESS, bpflink.BPF_TCX_EGRESS):
                fds.append(bpflink.tcx_link_create(tc, ifindex, where))
        nf = bpf.load_func("empty_nf", bpflink.BPF_PROG_TYPE_NETFILTER,
                           attach_type=bpflink.BPF_NETFILTER).fd
        for pf, hook, priority in loader.DAEMON_NETFILTER_HOOKS:
            fds.append(bpflink.link_create(nf, pf, hook, priority))
        time.sleep(0.5)
        yield
    finally:
        for fd in fds:
            os.close(fd)
        bpf.cleanup()


def modes(info) -> dict[str, object]:
    a = info.containers["a"]
    veths = [host_veth_ifindex(info.containers[k].pid) for k in "ab"]
    loop = f"while true; do {' '.join(CNTRACE)} ping {a.name} {info.wan_ip} >/dev/null; done"
    return {
        "floor: empty programs on the daemon's attach points": lambda: empty_programs(veths),
        "cntrace daemon": lambda: running([*CNTRACE, "daemon", "--web.listen-address",
                                           f"127.0.0.1:{free_port()}"], settle=4.0),
        "cntrace events (everything, to a file)": lambda: running(
            [*CNTRACE, "events", "--json"], ready="tracing on"),
        "trace-ping back to back": lambda: running(["bash", "-c", loop], settle=1.0),
        "tcpdump -i docker0 -w /dev/null": lambda: running(
            ["tcpdump", "-i", "docker0", "-w", "/dev/null", "-q"], settle=1.0),
        "conntrack -E": lambda: running(["conntrack", "-E"], settle=1.0),
    }


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    lines = [f"| running (ratio to baseline, n={args.reps}) | UDP 64B packets/s | "
             "TCP throughput |", "|---|---|---|"]
    base_rates = {"udp": [], "tcp": []}
    with iperf_server(b.pid):
        for name, start in modes(info).items():
            if args.mode and not any(text in name for text in args.mode):
                continue
            ratios = {"udp": [], "tcp": []}
            for _ in range(args.reps):
                for proto in ratios:
                    base = iperf(a.pid, b.ip, proto == "udp", args.seconds)
                    with start():
                        measured = iperf(a.pid, b.ip, proto == "udp", args.seconds)
                    base_rates[proto].append(base)
                    ratios[proto].append(measured / base)
            lines.append(f"| {name} | {spread(ratios['udp'])} | {spread(ratios['tcp'])} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines.append(f"| (baseline: UDP {spread(base_rates['udp'], '{:,.0f}')} packets/s, TCP "
                 f"{spread([x / 1e9 for x in base_rates['tcp']], '{:.2f}')} Gbit/s) | | |")
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
