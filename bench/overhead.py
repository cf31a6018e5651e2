"""What tracing costs other traffic: container -> container over docker0, UDP
64-byte packet rate and TCP throughput, both counted where they cross the
host into b (iperf3 in the containers' netns, client and server on CPUs of
their own: bench/benchlib.py flood).  Each mode is interleaved with the
baseline inside one flood: baseline, tool, baseline, ..., a window of
--seconds each, --reps windows with the tool.  Whole runs of iperf3 swing
by 10% from one to the next on this VM; windows of one flood, by 2% (UDP).

Modes:
- nothing started: the method's own reading (an A/A), its bias and noise;
- the floor: empty BPF programs on the daemon's attach points (tcx on a's and
  b's host veths both ways, tcx egress on the host's exit devices), which is
  what any tool hooked there pays before doing any work;
- `cntrace daemon` (tcx), and with tcx turned off (classic tc, the path of
  kernels before 6.6), and with NAT counted at netfilter hooks (the path of
  kernels whose tc programs cannot read the conntrack entry);
- `cntrace events` streaming everything (to a file); `trace-ping` run back
  to back (BPF compile included);
- what a user would run instead: `tcpdump -i docker0 -w /dev/null`,
  `conntrack -E`.

    /opt/cntrace/venv/bin/python bench/overhead.py [--reps N] [--seconds S]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator

from benchlib import (
    CNTRACE,
    flood,
    free_port,
    host_veth,
    iperf_server,
    running,
    spread,
    standalone,
    steady_rate,
)

from tracer.kernel import bpflink, features, loader

SETTLE_AFTER_STOP = 1.0   # seconds for a stopped tool's links and memory to go
# Windows "with" nothing against the baseline windows around them: what the
# method reads when there is nothing to find, its bias and its noise.
NOTHING = "nothing started (the method's own reading)"

EMPTY_PROGRAMS = """
int empty_tc(struct __sk_buff *skb) { return -1; }   /* TCX_NEXT */
int empty_nf(void *ctx) { return 1; }                /* NF_ACCEPT */
"""


def exit_ifindexes() -> list[int]:
    """The host's exit devices, as the daemon picks them."""
    from tracer.host import docker_engine
    from tracer.host.topology import exit_devices

    return list(exit_devices(docker_engine.discover(docker_engine.docker_client())))


def container_veths(info) -> list[int]:
    """The ifindexes of containers a's and b's host veths."""
    return [socket.if_nametoindex(host_veth(info.containers[k].pid)) for k in "ab"]


@contextlib.contextmanager
def empty_programs(veths: list[int], exits: list[int], netfilter: bool) -> Iterator[None]:
    """Empty programs linked where the daemon links its own: both ways on
    container veths, egress on exit devices; netfilter: at the NAT hooks
    too, where the daemon counted NAT before (and still does on kernels
    whose tc programs cannot read the conntrack entry)."""
    from bcc import BPF

    bpf = BPF(text=EMPTY_PROGRAMS)
    fds = []
    try:
        tc = bpf.load_func("empty_tc", BPF.SCHED_CLS).fd
        for ifindex in veths:
            for where in (bpflink.BPF_TCX_INGRESS, bpflink.BPF_TCX_EGRESS):
                fds.append(bpflink.tcx_link_create(tc, ifindex, where))
        for ifindex in exits:
            fds.append(bpflink.tcx_link_create(tc, ifindex, bpflink.BPF_TCX_EGRESS))
        if netfilter:
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


def modes(info, args) -> dict[str, object]:
    a = info.containers["a"]
    veths = container_veths(info)
    exits = exit_ifindexes()
    loop = f"while true; do {' '.join(CNTRACE)} ping {a.name} {info.wan_ip} >/dev/null; done"

    def daemon(cwd: str | None = None, **env: str):
        return running([*CNTRACE, "daemon", "--web.listen-address", f"127.0.0.1:{free_port()}"],
                       settle=4.0, env=env, cwd=cwd)

    disable = features.DISABLE_VARIABLE
    compared = {f"cntrace daemon of {checkout}": lambda c=checkout: daemon(cwd=c)
                for checkout in args.compare_checkout or ()}
    return {
        **compared,
        NOTHING: contextlib.nullcontext,
        "floor: empty programs on the daemon's attach points":
            lambda: empty_programs(veths, exits, netfilter=False),
        "floor, and at the netfilter NAT hooks": lambda: empty_programs(veths, exits, True),
        "cntrace daemon": daemon,
        "cntrace daemon, classic tc (no tcx)": lambda: daemon(**{disable: features.TCX}),
        "cntrace daemon, NAT at netfilter hooks":
            lambda: daemon(**{disable: features.TC_CONNTRACK}),
        "cntrace events (everything, to a file)": lambda: running(
            [*CNTRACE, "events", "--json"], ready="tracing on"),
        "trace-ping back to back": lambda: running(["bash", "-c", loop], settle=1.0),
        "tcpdump -i docker0 -w /dev/null": lambda: running(
            ["tcpdump", "-i", "docker0", "-w", "/dev/null", "-q"], settle=1.0),
        "conntrack -E": lambda: running(["conntrack", "-E"], settle=1.0),
    }


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    lines = [f"| running (ratio to baseline, n={args.reps} windows of {args.seconds} s) | "
             "UDP 64B packets/s | TCP throughput |", "|---|---|---|"]
    base_rates = {"udp": [], "tcp": []}
    with iperf_server(b.pid):
        for name, start in modes(info, args).items():
            if args.mode and not any(text in name for text in args.mode):
                continue
            ratios = {"udp": [], "tcp": []}
            for proto in ratios:
                # One flood: baseline, tool, baseline, tool, ...  Each window
                # with the tool is compared with the mean of the baseline
                # windows just before and after it, which cancels a drift of
                # the machine's speed; a window starts once the tool has
                # settled, or has stopped.
                with flood(a, b, proto == "udp") as rate:
                    before = steady_rate(rate, args.seconds)
                    for _ in range(args.reps):
                        with start():
                            measured = steady_rate(rate, args.seconds)
                        time.sleep(SETTLE_AFTER_STOP)
                        after = steady_rate(rate, args.seconds)
                        base_rates[proto].append(after)
                        ratios[proto].append(measured / ((before + after) / 2))
                        before = after
                print(f"  {name}: {proto} {spread(ratios[proto])}", file=sys.stderr, flush=True)
            lines.append(f"| {name} | {spread(ratios['udp'])} | {spread(ratios['tcp'])} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines.append(f"| (baseline: UDP {spread(base_rates['udp'], '{:,.0f}')} packets/s, TCP "
                 f"{spread([x * 8 / 1e9 for x in base_rates['tcp']], '{:.2f}')} Gbit/s) | | |")
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
