"""What tracing costs other traffic, cntrace against what a user would run
instead, all in the same run: container -> container over docker0, UDP
64-byte packet rate and TCP throughput (iperf3 in the containers' netns),
interleaving every mode with the baseline, several repetitions.

Modes: baseline; `cntrace daemon`; `cntrace events` streaming everything (to a
file); `trace-ping` run back to back; `tcpdump -i docker0 -w /dev/null`;
`conntrack -E` (to /dev/null).

    /opt/cntrace/venv/bin/python bench/overhead.py [--reps N] [--seconds S]

Traffic stays between the testbed's own containers.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time

from benchlib import CNTRACE, free_port, iperf, iperf_server, spread

from tracer.testbed import DockerEngine, Testbed, check_route


@contextlib.contextmanager
def running(argv: list[str], ready: str | None = None, settle: float = 1.0):
    """A background tool for the length of one measurement."""
    with tempfile.TemporaryFile() as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            if ready:
                while ready not in (proc.stderr.readline() or ready):
                    pass
            time.sleep(settle)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def modes(a_name: str, wan_ip: str) -> dict[str, contextlib.AbstractContextManager | None]:
    loop = f"while true; do {' '.join(CNTRACE)} ping {a_name} {wan_ip} >/dev/null; done"
    return {
        "cntrace daemon": lambda: running([*CNTRACE, "daemon", "--web.listen-address",
                                           f"127.0.0.1:{free_port()}"], settle=4.0),
        "cntrace events (everything)": lambda: running([*CNTRACE, "events", "--json"],
                                                       ready="tracing on"),
        "trace-ping back to back": lambda: running(["bash", "-c", loop], settle=1.0),
        "tcpdump -i docker0 -w /dev/null": lambda: running(
            ["tcpdump", "-i", "docker0", "-w", "/dev/null", "-q"], settle=1.0),
        "conntrack -E": lambda: running(["conntrack", "-E"], settle=1.0),
    }




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    engine = DockerEngine()
    engine.ensure_running()
    bed = Testbed(engine=engine)
    rows = []
    try:
        info = bed.up()
        a, b = info.containers["a"], info.containers["b"]
        check_route(b.ip, [b.bridge])
        check_route(info.wan_ip, [info.wan_host_ifname])
        with iperf_server(b.pid):
            for name, start in modes(a.name, info.wan_ip).items():
                ratios = {"udp": [], "tcp": []}
                for _ in range(args.reps):
                    for proto in ratios:
                        base = iperf(a.pid, b.ip, proto == "udp", args.seconds)
                        with start():
                            measured = iperf(a.pid, b.ip, proto == "udp", args.seconds)
                        ratios[proto].append(measured / base)
                rows.append(f"| {name} | {spread(ratios['udp'])} | {spread(ratios['tcp'])} |")
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        bed.down()
        engine.stop()
    print(f"| mode (ratio to baseline, n={args.reps}) | UDP 64B packets/s | TCP throughput |")
    print("|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
