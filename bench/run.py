"""Every benchmark in one run, on one testbed.

Prints the tables that BENCHMARKS.md records; about 45 minutes with
--reps 4.  `bash deploy/setup.sh bench [ARG...]` installs what it needs
(iperf3, tcpdump) and runs it:

    /opt/cntrace/venv/bin/python bench/run.py [--reps N] [--rounds N] [--seconds S] [--only SECTION]

- overhead: what tracing costs other traffic (UDP 64B, TCP), cntrace's modes
  and the floor, against tcpdump and conntrack -E;
- program-cost: each BPF program's runs per packet and time per run, and the
  share of the sending CPU the tool's programs take (steadier than the rate);
- program-swap: the rate with the daemon's programs over the rate with empty
  ones, swapped in place every tenth of a second within one flood;
- trace-ping: wall times, and its steady-state cost to other traffic;
- stream: the event stream's capacity and loss curve;
- scale: scrape latency and RSS as containers and flows grow.

Traffic stays between the testbed's own containers and wan namespace.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys

import overhead
import program_cost
import program_swap
import scale
import stream
import trace_ping
from benchlib import arguments, testbed

SECTIONS = {"overhead": overhead.run, "program-cost": program_cost.run,
            "program-swap": program_swap.run,
            "trace-ping": trace_ping.run, "stream": stream.run, "scale": scale.run}


def main() -> int:
    parser = arguments(__doc__)
    parser.add_argument("--only", choices=SECTIONS, action="append",
                        help="run only this section (repeatable)")
    args = parser.parse_args()
    print(f"# cntrace benchmarks, {datetime.date.today()}: kernel {platform.release()}, "
          f"{os.cpu_count()} CPUs, reps {args.reps}, {args.seconds} s per iperf3 run\n")
    with testbed() as info:
        for name, run in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            print(f"## {name}", file=sys.stderr, flush=True)
            print(f"## {name}\n\n" + "\n".join(run(info, args)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
