"""What the benchmarks share: running cntrace, iperf3 inside the testbed's
containers, a loopback port, and mean +- spread formatting."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

CNTRACE = [sys.executable, "-m", "tracer"]


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    mean = statistics.mean(values)
    dev = statistics.pstdev(values) / mean * 100 if mean else 0
    return f"{fmt.format(mean)} (+-{dev:.1f}%, n={len(values)})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def iperf_server(pid: int) -> Iterator[None]:
    """iperf3 -s inside the netns of process `pid`."""
    server = subprocess.Popen(["nsenter", "-t", str(pid), "-n", "iperf3", "-s"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield
    finally:
        server.terminate()
        server.wait()


def iperf(client_pid: int, server_ip: str, udp: bool, seconds: int = 3) -> float:
    """UDP: 64-byte datagrams/s delivered; TCP: bits/s received."""
    args = ["-u", "-b", "0", "-l", "64"] if udp else []
    out = subprocess.run(["nsenter", "-t", str(client_pid), "-n", "iperf3", "-c", server_ip,
                          "-t", str(seconds), "-J", *args],
                         capture_output=True, text=True, check=True, timeout=seconds + 30)
    end = json.loads(out.stdout)["end"]
    if udp:
        summary = end["sum"]
        return summary["packets"] * (1 - summary["lost_percent"] / 100) / summary["seconds"]
    return end["sum_received"]["bits_per_second"]
