"""trace-ping speed: wall time of a reachable and an unreachable probe, and
whether other traffic slows while trace-ping runs: once with trace-ping run
back to back (BPF compile included, competing for the 2 cores), once in steady
state (hooks attached, kernel filter matching none of the measured traffic).
Interleaved runs on the testbed; prints a table of ratios.

    /opt/cntrace/venv/bin/python bench/trace_ping.py [--reps N]

Traffic goes only between the testbed's own containers and wan namespace.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from benchlib import CNTRACE, iperf, iperf_server, spread

from tracer.testbed import DockerEngine, Testbed, check_route


def wall(args: list[str]) -> tuple[float, int]:
    start = time.monotonic()
    code = subprocess.run([*CNTRACE, "ping", *args], capture_output=True).returncode
    return time.monotonic() - start, code




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    engine = DockerEngine()
    engine.ensure_running()
    bed = Testbed(engine=engine)
    try:
        info = bed.up()
        a, b = info.containers["a"], info.containers["b"]
        check_route(b.ip, [b.bridge])
        check_route(info.wan_ip, [info.wan_host_ifname])
        reach = [wall([a.name, b.name]) for _ in range(args.reps)]
        assert all(code == 0 for _, code in reach), reach
        rule = ["DOCKER-USER", "-s", a.ip, "-d", info.wan_ip, "-j", "DROP"]
        subprocess.run(["iptables", "-I", *rule], check=True)
        try:
            unreach = [wall([a.name, info.wan_ip, "--timeout", "1"]) for _ in range(args.reps)]
        finally:
            subprocess.run(["iptables", "-D", *rule], check=True)
        assert all(code == 1 for _, code in unreach), unreach

        base, during, attached = [], [], []
        with iperf_server(b.pid):
            for _ in range(args.reps):
                base.append(iperf(a.pid, b.ip, udp=True))
                # Steady state: every hook attached with a probe-style kernel filter
                # that matches none of this traffic, as during a trace-ping.
                tracer = subprocess.Popen(
                    [*CNTRACE, "events", "-p", "icmp", "-a", info.wan_ip],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    while "tracing on" not in tracer.stderr.readline():
                        pass
                    attached.append(iperf(a.pid, b.ip, udp=True))
                finally:
                    tracer.terminate()
                    tracer.wait()
                pinger = subprocess.Popen(
                    ["bash", "-c", f"while true; do {' '.join(CNTRACE)} ping {a.name} "
                     f"{info.wan_ip} >/dev/null; done"])
                try:
                    during.append(iperf(a.pid, b.ip, udp=True))
                finally:
                    pinger.terminate()
                    pinger.wait()
        ratios = [d / x for d, x in zip(during, base, strict=True)]
        steady = [d / x for d, x in zip(attached, base, strict=True)]
        print(f"{'measure':<46} value")
        print(f"{'trace-ping reachable, wall s':<46} {spread([t for t, _ in reach])}")
        print(f"{'trace-ping unreachable (timeout 1 s), wall s':<46} "
              f"{spread([t for t, _ in unreach])}")
        print(f"{'UDP 64B pkt/s a->b, baseline':<46} {spread(base)}")
        print(f"{'UDP 64B pkt/s a->b, trace-ping looping':<46} {spread(during)}")
        print(f"{'ratio with/without trace-ping looping':<46} {spread(ratios)}")
        print(f"{'UDP 64B pkt/s a->b, filtered tracer attached':<46} {spread(attached)}")
        print(f"{'ratio attached (steady state)/without':<46} {spread(steady)}")
    finally:
        bed.down()
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
