"""How the daemon's cost grows with its work: scrape latency and RSS as
containers grow (10, 50, 200 real containers) and as tracked flows grow (to
64k), on the testbed.  Prints a table; the curve goes in BENCHMARKS.md.

    /opt/cntrace/venv/bin/python bench/scale.py
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import Daemon  # noqa: E402  (bench/daemon.py)

from tracer.probe import open_socket  # noqa: E402
from tracer.testbed import IMAGE_TAG, LABEL, DockerEngine, Testbed, check_route  # noqa: E402


def containers_seen(daemon: Daemon) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=30)
    for line in text.read().decode().splitlines():
        if line.startswith("cntrace_containers "):
            return int(float(line.split()[1]))
    return 0


def measure(daemon: Daemon) -> tuple[float, float]:
    scrapes = sorted(daemon.scrape_seconds() * 1000 for _ in range(7))
    return statistics.median(scrapes), daemon.rss_mb()


def main() -> int:
    engine = DockerEngine()
    client = engine.ensure_running()
    bed = Testbed(engine=engine)
    rows = []
    extra = []
    try:
        info = bed.up()
        a, b = info.containers["a"], info.containers["b"]
        check_route(b.ip, [b.bridge])
        daemon = Daemon("--flow-table-size", "65536")
        try:
            base = len(info.containers)
            for target in (10, 50, 200):
                while len(extra) < target:
                    extra.append(client.containers.run(
                        IMAGE_TAG, ["sleep", "3600"], detach=True, labels={LABEL: "bench"},
                        name=f"cntrace-scale-{len(extra):03d}"))
                deadline = time.monotonic() + 120
                while containers_seen(daemon) < base + target and time.monotonic() < deadline:
                    time.sleep(1)
                scrape_ms, rss = measure(daemon)
                rows.append(f"| {target} extra containers | {scrape_ms:.1f} | {rss:.0f} |")
                print(rows[-1], file=sys.stderr, flush=True)
            for container in extra:
                container.remove(force=True)
            extra.clear()
            sent = 0
            sock = open_socket(f"/proc/{a.pid}/ns/net", socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                for flows in (1000, 8000, 32000, 64000):
                    for port in range(sent + 1, flows + 1):
                        sock.sendto(b"x", (b.ip, port))
                        if port % 2000 == 0:
                            time.sleep(0.01)
                    sent = flows
                    time.sleep(7)   # a sampler pass walks the flow table
                    scrape_ms, rss = measure(daemon)
                    rows.append(f"| {flows:,} flows | {scrape_ms:.1f} | {rss:.0f} |")
                    print(rows[-1], file=sys.stderr, flush=True)
        finally:
            daemon.stop()
    finally:
        for container in extra:
            container.remove(force=True)
        bed.down()
        engine.stop()
    print("| daemon tracking | scrape, median ms | RSS, MB |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
