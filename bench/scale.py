"""How the daemon's cost grows with its work: scrape latency and RSS as real
containers grow (10, 50, 200 beside the testbed) and as tracked flows grow
(to 64k), and a scrape of 1,000 containers' series over real BPF maps.

    /opt/cntrace/venv/bin/python bench/scale.py

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time

from benchlib import Daemon, spread, standalone

from tracer.ping.probe_socket import open_socket
from tracer.testbed import IMAGE_TAG, LABEL, DockerEngine

CONTAINER_STEPS = (10, 50, 200)
FLOW_STEPS = (1000, 8000, 32000, 64000)


def containers_seen(daemon: Daemon) -> int:
    for line in daemon.metrics().splitlines():
        if line.startswith("cntrace_containers "):
            return int(float(line.split()[1]))
    return 0


def measure(daemon: Daemon) -> tuple[float, float]:
    return statistics.median(daemon.scrape_seconds() * 1000 for _ in range(7)), daemon.rss_mb()


def grow_containers(daemon: Daemon, base: int, rows: list[str]) -> None:
    client = DockerEngine().client()
    extra = []
    try:
        for target in CONTAINER_STEPS:
            while len(extra) < target:
                extra.append(client.containers.run(
                    IMAGE_TAG, ["sleep", "3600"], detach=True, labels={LABEL: "bench"},
                    name=f"cntrace-scale-{len(extra):03d}"))
            deadline = time.monotonic() + 120
            while containers_seen(daemon) < base + target and time.monotonic() < deadline:
                time.sleep(1)
            scrape_ms, rss = measure(daemon)
            rows.append(f"| {base + target} containers | {scrape_ms:.1f} | {rss:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        for container in extra:
            container.remove(force=True)


def grow_flows(daemon: Daemon, a, b, rows: list[str]) -> None:
    """One UDP flow per destination port a -> b."""
    sent = 0
    with open_socket(f"/proc/{a.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for flows in FLOW_STEPS:
            for port in range(sent + 1, flows + 1):
                sock.sendto(b"x", (b.ip, port))
                if port % 2000 == 0:
                    time.sleep(0.01)
            sent = flows
            time.sleep(7)   # a sampler pass walks the flow table
            scrape_ms, rss = measure(daemon)
            rows.append(f"| {flows:,} flows | {scrape_ms:.1f} | {rss:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)


def scrape_1000_containers() -> str:
    """The real collector over real BPF maps, with 1,000 slots registered:
    what a host ten times busier than the real steps above would cost."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tracer.daemon.bpf_maps import BpfCounters
    from tracer.daemon.collector import CntraceCollector, DaemonStats, Sampler
    from tracer.daemon.slots import Tracked
    from tracer.host.topology import Container
    from tracer.kernel import loader

    tracer = loader.load(loader.read_kernel(), flow_table_size=65536, ringbuf_pages=8)
    try:
        counters = BpfCounters(tracer)
        tracked = {slot: Tracked(slot, Container(f"id{slot}", f"container-{slot:04d}", 1, 1, {}),
                                 frozenset(), frozenset(), frozenset(), 0)
                   for slot in range(1000)}

        class ContainerSlots:
            attribution_failures = 0
            topology = None
            exits: set[int] = set()
            uncounted: dict = {}

            def snapshot(self):
                return tracked

        sampler = Sampler(counters, ContainerSlots(), 60, None)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CntraceCollector(counters, ContainerSlots(), sampler,
                                           DaemonStats(hooks=tracer.hooks), {}))
        times, size = [], 0
        for _ in range(10):
            start = time.monotonic()
            size = len(generate_latest(registry))
            times.append(time.monotonic() - start)
        return (f"| 1,000 containers' series (real maps, synthetic registry; target < 100 ms) "
                f"| {spread([t * 1000 for t in times], '{:.1f}')} ({size // 1024} KiB) | |")
    finally:
        tracer.close()


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    rows = ["| daemon tracking | scrape, median ms | RSS, MB |", "|---|---|---|"]
    daemon = Daemon("--flow-table-size", "65536")
    try:
        scrape_ms, rss = measure(daemon)
        rows.append(f"| the testbed's {len(info.containers)} containers, idle | "
                    f"{scrape_ms:.1f} | {rss:.0f} |")
        grow_containers(daemon, len(info.containers), rows)
        grow_flows(daemon, a, b, rows)
    finally:
        daemon.stop()
    rows.append(scrape_1000_containers())
    return rows


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
