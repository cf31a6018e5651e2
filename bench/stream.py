"""The event stream's capacity: `cntrace events --json` (no filter, to a
file) while iperf3 offers a fixed UDP packet rate a -> b; each packet makes
about 7 events.  Events/s decoded with zero loss, and the loss curve beyond
(losses are counted in the kernel and reported, never silent).

    /opt/cntrace/venv/bin/python bench/stream.py

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import subprocess
import tempfile
import time

from benchlib import CNTRACE, iperf_server, standalone

RATES = (1000, 2000, 5000, 10000, 20000)


def run(info, args) -> list[str]:
    a, b = info.containers["a"], info.containers["b"]
    lines = ["| offered UDP packets/s | events/s decoded | lost in the kernel |", "|---|---|---|"]
    with iperf_server(b.pid):
        for rate in RATES:
            with tempfile.TemporaryFile() as sink:
                events = subprocess.Popen(
                    [*CNTRACE, "events", "--json", "--no-drops", "-d", "7"],
                    stdout=sink, stderr=subprocess.PIPE, text=True)
                while "tracing on" not in events.stderr.readline():
                    pass
                start = time.monotonic()
                subprocess.run(["nsenter", "-t", str(a.pid), "-n", "iperf3", "-c", b.ip, "-u",
                                "-l", "64", "-b", str(rate * 64 * 8), "-t", "4"],
                               capture_output=True)
                _, err = events.communicate(timeout=60)
                elapsed = time.monotonic() - start
            summary = err.strip().splitlines()[-1]   # "cntrace: N events, L lost in the ..."
            decoded = int(summary.split()[1])
            lost = int(summary.split(", ")[1].split()[0])
            lines.append(f"| {rate:,} | {decoded / elapsed:,.0f} | {lost:,} "
                         f"({lost / max(1, decoded + lost) * 100:.1f}%) |")
    return lines


if __name__ == "__main__":
    raise SystemExit(standalone(run, __doc__))
