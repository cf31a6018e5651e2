"""What the benchmarks share: the testbed, running cntrace and other tools
in the background, iperf3 inside the testbed's containers, a loopback port,
and mean +- spread formatting.  Each benchmark module has a
run(info, args) -> list[str] (markdown lines) that bench/run.py calls on one
testbed, and runs alone through standalone()."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

CNTRACE = [sys.executable, "-m", "tracer"]
BENCH_TOOLS = ("iperf3", "tcpdump", "conntrack", "nsenter", "taskset")   # setup.sh bench

# iperf3's client and server each on a CPU of their own (the client on the
# first, the server on the last): the client's CPU carries each packet's
# whole path up to the receiving socket (send, veth, bridge, netfilter, and
# every program a tool hooked there), so what a tool adds per packet comes
# off the rate, and the receiver keeps up (no drops to muddle it).  Left to
# the scheduler, the two move between CPUs and the rate varies more.
IPERF_CLIENT_CPU = "0"
IPERF_SERVER_CPU = str((os.cpu_count() or 1) - 1)


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """Mean, relative standard deviation, and the median (a spike of the
    machine's own speed in one repetition moves the mean, not the median)."""
    mean = statistics.mean(values)
    dev = statistics.pstdev(values) / mean * 100 if mean else 0
    return (f"{fmt.format(mean)} (+-{dev:.1f}%, median {fmt.format(statistics.median(values))}, "
            f"n={len(values)})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def iperf_server(pid: int) -> Iterator[None]:
    """iperf3 -s inside the netns of process `pid`."""
    server = subprocess.Popen(pinned(IPERF_SERVER_CPU,
                                     ["nsenter", "-t", str(pid), "-n", "iperf3", "-s"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        server.terminate()
        server.wait()


# A run during which the hypervisor took more than this share of the CPUs
# (steal time, /proc/stat) measured the neighbours, not the tool: it is run
# again.  On this project's small VMs a burst of steal can cut one 3-second
# run to a seventh of its rate.
MAX_STEAL = 0.03
UDP_FLOOD_ARGS = ["-u", "-b", "0", "-l", "64"]   # iperf3: 64-byte datagrams, no rate limit
STEAL_RETRIES = 5


def _cpu_times() -> tuple[int, int]:
    """(all jiffies, steal jiffies) of the machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def _stolen_since(before: tuple[int, int]) -> float:
    """The share of the machine's CPU time the hypervisor stole since
    _cpu_times() gave `before`."""
    total, steal = before
    total_after, steal_after = _cpu_times()
    return (steal_after - steal) / max(total_after - total, 1)


def busy_ns(cpu: str) -> int:
    """Time one CPU has spent running something (user, nice, system, irq,
    softirq; not idle, iowait or steal) since boot, in nanoseconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            fields = line.split()[1:]
            ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
            return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


@functools.cache
def host_veth(pid: int) -> str:
    """The host-side peer of the eth0 of process `pid`'s netns (its link_index)."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return socket.if_indextoname(json.loads(out)[0]["link_index"])


def sent_into(ifname: str, counter: str = "tx_packets") -> int:
    """Packets (or with tx_bytes, bytes) the host has sent out of this interface."""
    return int(Path(f"/sys/class/net/{ifname}/statistics/{counter}").read_text())


@contextlib.contextmanager
def flood(client, server, udp: bool) -> Iterator[Callable[[float], float]]:
    """iperf3 from container `client` to `server` (UDP: 64-byte datagrams as
    fast as the client's CPU sends them) until the block ends; yields
    rate(seconds): what crossed the host into the server's container over
    the next `seconds`, per second, counted at its host veth (UDP: packets;
    TCP: bytes)."""
    into, counter = host_veth(server.pid), "tx_packets" if udp else "tx_bytes"
    args = UDP_FLOOD_ARGS if udp else []

    def rate(seconds: float) -> float:
        count, start = sent_into(into, counter), time.monotonic()
        time.sleep(seconds)
        return (sent_into(into, counter) - count) / (time.monotonic() - start)

    attempts, said = 3, ""
    for _ in range(attempts):   # the server may still be busy with the last client
        with tempfile.TemporaryFile("w+") as errors:
            proc = subprocess.Popen(pinned(IPERF_CLIENT_CPU, [
                "nsenter", "-t", str(client.pid), "-n", "iperf3", "-c", server.ip,
                "-t", "86400", *args]), stdout=subprocess.DEVNULL, stderr=errors)
            time.sleep(1.5)   # the connection set up, the flood under way
            if proc.poll() is None and rate(0.2) > 0:
                break
            proc.terminate()
            proc.wait()
            errors.seek(0)
            said = errors.read().strip().replace("\n", "; ") or f"exit {proc.returncode}"
        time.sleep(1)
    else:
        raise RuntimeError(f"iperf3 to {server.ip} sent nothing in {attempts} attempts "
                           f"(last: {said})")
    try:
        yield rate
    finally:
        proc.terminate()
        proc.wait()
        time.sleep(0.5)   # the server back to listening


def steady_rate(rate: Callable[[float], float], seconds: float) -> float:
    """rate(seconds), taken again while the hypervisor stole more than
    MAX_STEAL of the machine's CPU time during it (up to STEAL_RETRIES)."""
    for attempt in range(STEAL_RETRIES + 1):
        before = _cpu_times()
        measured = rate(seconds)
        stolen = _stolen_since(before)
        if stolen <= MAX_STEAL or attempt == STEAL_RETRIES:
            return measured
        print(f"  (steal {stolen:.0%} during a window: again)", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def iperf(client, server, udp: bool, seconds: int = 3) -> float:
    """iperf3 from container `client` to `server` (testbed containers: pid,
    ip).  UDP: 64-byte datagrams/s that crossed the host into the server's
    container, counted at its host veth.  A datagram the server's socket
    then drops for want of room cost the sending CPU the whole path all the
    same; counting deliveries instead would measure how fast the server
    reads, which varies with the other CPU.  TCP: bits/s received.  A run
    the server refused (still busy with the last one: no result), or one the
    hypervisor stole more than MAX_STEAL of, is run again."""
    args = UDP_FLOOD_ARGS if udp else []
    into = host_veth(server.pid)
    for attempt in range(STEAL_RETRIES + 3):
        before = _cpu_times()
        sent = sent_into(into)
        out = subprocess.run(pinned(IPERF_CLIENT_CPU, ["nsenter", "-t", str(client.pid), "-n",
                                                       "iperf3", "-c", server.ip, "-t",
                                                       str(seconds), "-J", *args]),
                             capture_output=True, text=True, timeout=seconds + 30)
        sent = sent_into(into) - sent
        end = json.loads(out.stdout or "{}").get("end", {})
        if "sum" not in end and "sum_received" not in end:
            time.sleep(1)
            continue
        stolen = _stolen_since(before)
        if stolen <= MAX_STEAL or attempt >= STEAL_RETRIES:
            break
        print(f"  (steal {stolen:.0%} during a run: run again)", file=sys.stderr, flush=True)
    else:
        raise RuntimeError(f"iperf3 gave no result: {out.stdout[-300:]}{out.stderr[-300:]}")
    if udp:
        return sent / end["sum"]["seconds"]
    return end["sum_received"]["bits_per_second"]


@contextlib.contextmanager
def testbed() -> Iterator[object]:
    """The testbed up (dockerd started if none answers), routes checked;
    everything taken down afterwards, whatever happens."""
    from tracer.testbed import DockerEngine, Testbed, check_route

    missing = [tool for tool in BENCH_TOOLS if shutil.which(tool) is None]
    if missing:   # else a flood that never ran reads as a rate of zero
        raise SystemExit(f"bench: {', '.join(missing)} not installed: "
                         "bash deploy/setup.sh bench installs what the benchmarks need")
    # A benchmark stopped by kill or a closed terminal takes the testbed down
    # too: SIGTERM and SIGHUP unwind like Ctrl-C, through the finally below.
    # Only in this process: pyroute2 forks a child to open a netlink socket
    # in another netns and stops it with SIGTERM; unwound, that child ran
    # this finally too and took the testbed and dockerd down under the
    # benchmark.
    owner = os.getpid()

    def stop(signum: int, _frame) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        sys.exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    engine = DockerEngine()
    engine.ensure_running()
    bed = Testbed(engine=engine)
    try:
        info = bed.up()
        b = info.containers["b"]
        check_route(b.ip, [b.bridge])
        check_route(info.wan_ip, [info.wan_host_ifname])
        yield info
    finally:
        try:
            bed.down()
        finally:
            engine.stop()


def standalone(run: Callable[[object, argparse.Namespace], list[str]], doc: str) -> int:
    """main() of a benchmark module run by itself."""
    args = arguments(doc).parse_args()
    with testbed() as info:
        lines = run(info, args)
    print("\n".join(lines))
    return 0


def arguments(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each ratio")
    parser.add_argument("--seconds", type=int, default=3,
                        help="overhead: length of each window; the others: of each iperf3 run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="program-cost: rounds over its modes, each mode once a round")
    parser.add_argument("--flood-seconds", type=float, default=30,
                        help="program-swap: length of each flood")
    parser.add_argument("--window", type=float, default=0.1,
                        help="program-swap: seconds between swaps")
    parser.add_argument("--mode", action="append", metavar="TEXT",
                        help="overhead, program-cost and program-swap: only the modes whose "
                             "name contains TEXT (repeatable; program-cost keeps its floor, "
                             "program-swap its empty-for-empty row)")
    parser.add_argument("--compare-checkout", metavar="DIR", action="append",
                        help="overhead, program-cost and program-swap: also the daemon of "
                             "another checkout (a git worktree of an earlier commit), for "
                             "before/after in one run (repeatable)")
    return parser


@contextlib.contextmanager
def running(argv: list[str], ready: str | None = None, settle: float = 1.0,
            env: dict[str, str] | None = None, cwd: str | None = None) -> Iterator[None]:
    """A background tool for the length of one measurement: waits for `ready`
    on its stderr (when given), then `settle` seconds.  env: added to ours;
    cwd: where it runs (`-m tracer` imports the checkout there)."""
    with tempfile.TemporaryFile() as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})}, cwd=cwd)
        try:
            if ready:
                while ready not in (proc.stderr.readline() or ready):
                    pass
            time.sleep(settle)
            if proc.poll() is not None:   # a tool that died would measure as free
                raise RuntimeError(f"{argv[:4]} exited {proc.returncode}: "
                                   f"{proc.stderr.read()[-500:]}")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Daemon:
    """`cntrace daemon` on a free loopback port, ready when /healthz answers;
    cwd: the checkout it runs from (`-m tracer` imports the one there)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([*CNTRACE, "daemon", "--web.listen-address",
                                      f"127.0.0.1:{self.port}", *args],
                                     stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                     cwd=cwd)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("daemon did not start")

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        return urllib.request.urlopen(url, timeout=30).read().decode()

    def scrape_seconds(self) -> float:
        start = time.monotonic()
        self.metrics()
        return time.monotonic() - start

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
