"""cntrace daemon costs, measured against no cntrace in the same run:

- container -> container over docker0 (iperf3 in the containers' netns):
  UDP 64-byte packet rate and TCP throughput, baseline vs daemon running,
  interleaved, several repetitions;
- daemon RSS with 64k flows tracked, and scrape time at that size;
- scrape time with 1,000 containers' series (real BPF maps, a registry of
  1,000 slots);
- event-stream capacity: events/s decoded by `cntrace events` with zero loss,
  and the loss beyond it.

    /opt/cntrace/venv/bin/python bench/daemon.py [--reps N]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import CNTRACE, free_port, iperf, iperf_server, spread

from tracer.probe import open_socket
from tracer.testbed import DockerEngine, Testbed, check_route


class Daemon:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([*CNTRACE, "daemon", "--web.listen-address",
                                      f"127.0.0.1:{self.port}", *args],
                                     stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("daemon did not start")

    def scrape_seconds(self) -> float:
        start = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30).read()
        return time.monotonic() - start

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def overhead(a, b, reps: int) -> list[str]:
    base_udp, with_udp, base_tcp, with_tcp = [], [], [], []
    for _ in range(reps):
        base_udp.append(iperf(a.pid, b.ip, udp=True))
        base_tcp.append(iperf(a.pid, b.ip, udp=False))
        daemon = Daemon()
        try:
            with_udp.append(iperf(a.pid, b.ip, udp=True))
            with_tcp.append(iperf(a.pid, b.ip, udp=False))
        finally:
            daemon.stop()
    udp_ratio = [w / x for w, x in zip(with_udp, base_udp, strict=True)]
    tcp_ratio = [w / x for w, x in zip(with_tcp, base_tcp, strict=True)]
    return [
        f"UDP 64B pkt/s, baseline | {spread(base_udp, '{:,.0f}')}",
        f"UDP 64B pkt/s, daemon running | {spread(with_udp, '{:,.0f}')}",
        f"UDP ratio daemon/baseline (target >= 0.95) | {spread(udp_ratio)}",
        f"TCP Gbit/s, baseline | {spread([x / 1e9 for x in base_tcp], '{:.2f}')}",
        f"TCP Gbit/s, daemon running | {spread([x / 1e9 for x in with_tcp], '{:.2f}')}",
        f"TCP ratio daemon/baseline (target >= 0.97) | {spread(tcp_ratio)}",
    ]


def flows_64k(a, b) -> list[str]:
    daemon = Daemon("--flow-table-size", "65536")
    try:
        idle_rss = daemon.rss_mb()
        sock = open_socket(f"/proc/{a.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for port in range(1, 65536):      # one flow per destination port
                sock.sendto(b"x", (b.ip, port))
                if port % 2000 == 0:
                    time.sleep(0.01)
        time.sleep(7)                          # a sampler pass walks the table
        scrapes = [daemon.scrape_seconds() for _ in range(5)]
        return [f"daemon RSS idle, MB | {idle_rss:.0f}",
                f"daemon RSS with 64k flows tracked, MB (target < 200) | {daemon.rss_mb():.0f}",
                f"scrape with 64k flows, ms | {spread([s * 1000 for s in scrapes], '{:.1f}')}"]
    finally:
        daemon.stop()


def scrape_1000_containers() -> list[str]:
    """The real collector over real BPF maps, with 1,000 slots registered."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tracer import loader
    from tracer.collector import CntraceCollector, DaemonStats, Sampler
    from tracer.counters import BpfCounters
    from tracer.registry import Tracked
    from tracer.topology import Container

    tracer = loader.load(loader.read_kernel(), flow_table_size=65536, ringbuf_pages=8)
    try:
        counters = BpfCounters(tracer)
        tracked = {slot: Tracked(slot, Container(f"id{slot}", f"container-{slot:04d}", 1, 1, {}),
                                 frozenset(), frozenset(), frozenset(), 0)
                   for slot in range(1000)}

        class Registry:
            attribution_failures = 0
            topology = None

            def snapshot(self):
                return tracked

        sampler = Sampler(counters, Registry(), 60, None)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CntraceCollector(counters, Registry(), sampler,
                                           DaemonStats(hooks=tracer.hooks), {}))
        times, size = [], 0
        for _ in range(10):
            start = time.monotonic()
            size = len(generate_latest(registry))
            times.append(time.monotonic() - start)
        return [f"scrape with 1,000 containers, ms (target < 100) | "
                f"{spread([t * 1000 for t in times], '{:.1f}')} ({size // 1024} KiB)"]
    finally:
        tracer.close()


def stream_capacity(a, b) -> list[str]:
    """`cntrace events --json` to a file (a pipe nobody reads would stall it)
    while iperf3 offers a fixed UDP packet rate; each packet makes ~7 events."""
    rows = []
    for rate in (1000, 2000, 5000, 10000, 20000):
        with tempfile.TemporaryFile() as sink:
            events = subprocess.Popen([*CNTRACE, "events", "--json", "--no-drops", "-d", "7"],
                                      stdout=sink, stderr=subprocess.PIPE, text=True)
            while "tracing on" not in events.stderr.readline():
                pass
            start = time.monotonic()
            subprocess.run(["nsenter", "-t", str(a.pid), "-n", "iperf3", "-c", b.ip, "-u",
                            "-l", "64", "-b", str(rate * 64 * 8), "-t", "4"],
                           capture_output=True)
            _, err = events.communicate(timeout=60)
            elapsed = time.monotonic() - start
        summary = err.strip().splitlines()[-1]      # "cntrace: N events, L lost in the ..."
        decoded = int(summary.split()[1])
        lost = int(summary.split(", ")[1].split()[0])
        rows.append(f"stream at {rate:,} pkt/s offered | {decoded / elapsed:,.0f} events/s "
                    f"decoded, {lost:,} lost ({lost / max(1, decoded + lost) * 100:.1f}%)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    engine = DockerEngine()
    engine.ensure_running()
    bed = Testbed(engine=engine)
    rows = []
    try:
        info = bed.up()
        a, b = info.containers["a"], info.containers["b"]
        check_route(b.ip, [b.bridge])
        with iperf_server(b.pid):
            rows += overhead(a, b, args.reps)
            rows += stream_capacity(a, b)
        rows += flows_64k(a, b)
        rows += scrape_1000_containers()
    finally:
        bed.down()
        engine.stop()
    print("| measure | value |\n|---|---|")
    for row in rows:
        print("| " + row + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
