"""Command line: `cntrace SUBCOMMAND` and `trace-ping`.

Every CntraceError becomes one line on stderr and its documented exit code
(README.md, "Exit codes"); no traceback reaches a user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from tracer import __version__
from tracer.errors import CntraceError, UsageError

EPILOG_EVENTS = """examples:
  cntrace events                        every packet on every device, attributed
  cntrace events -c web -p tcp --port 80   one container's HTTP traffic
  cntrace events -a 198.51.100.2 --json  one peer, NAT included, as JSON lines
  cntrace events -c web -d 10           ten seconds of one container
"""

EPILOG_PING = """examples:
  trace-ping web db                 ICMP echo from container web to container db
  trace-ping web 198.51.100.2       to an outside address, through MASQUERADE
  trace-ping web db --tcp 5432      a TCP connect to db's port 5432
  trace-ping netns:wan 198.51.100.1:8080   to a published port (DNAT)
  trace-ping web 198.51.100.2 --size 1500  does a 1500-byte packet fit (DF set)?
  trace-ping web --dns db           resolve db as web does, and trace the query
exit codes: 0 reachable, 1 not reachable (diagnosed), 2 bad input, 3-5 environment
"""

EPILOG_DAEMON = """examples:
  cntrace daemon                                 serve 127.0.0.1:9476/metrics
  cntrace daemon --web.listen-address 0.0.0.0:9476 --web.config.file web.yml
  CNTRACE_FLOW_TABLE_SIZE=262144 cntrace daemon   settings from the environment
  cntrace daemon --no-collector.peers --docker.label com.example.team
endpoints: / (the live figure), /metrics, /healthz, /topology (?format=json|svg|dot)
"""

EPILOG_TOPOLOGY = """examples:
  cntrace topology          containers, veth pairs, bridges and networks
  cntrace topology --json   the same for machines
  cntrace topology --format svg > host.svg   the figure (needs graphviz)
exit codes: 0 done, 5 Docker unreachable, 7 graphviz missing or failed
"""

TOPOLOGY_FORMATS = ("text", "json", "dot", "svg")


EXIT_BROKEN_PIPE = 141    # 128 + SIGPIPE, what a shell reports for a killed writer


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is a UsageError (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split()[-1]
        raise UsageError(message if command == "cntrace" else f"{command}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cntrace",
        description="Live eBPF tracer for container networking on Docker hosts.",
    )
    parser.add_argument("--version", action="version", version=f"cntrace {__version__}")
    parser.add_argument("--kernel-btf", default="/sys/kernel/btf/vmlinux", metavar="PATH",
                        help="BTF of the running kernel (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    events = sub.add_parser(
        "events",
        help="live per-packet stream, attributed to containers",
        epilog=EPILOG_EVENTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    events.add_argument("-c", "--container", action="append", default=[],
                        help="only packets of this container (name or ID prefix); repeatable")
    events.add_argument("-a", "--address", action="append", default=[],
                        help="only packets from or to this IP (NAT-aware); repeatable")
    events.add_argument("-p", "--proto", help="tcp, udp, icmp, icmp6 or sctp")
    events.add_argument("--port", help="TCP/UDP/SCTP source or destination port")
    events.add_argument("--no-drops", action="store_true", help="leave out kfree_skb drops")
    events.add_argument("-d", "--duration", type=float, help="stop after SECONDS")
    events.add_argument("-n", "--count", type=int, help="stop after N events")
    events.add_argument("--ringbuf-pages", type=int, default=256,
                        help="ring buffer size in pages, a power of 2 (default 256)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")

    topo = sub.add_parser(
        "topology",
        help="containers, their veth pairs, bridges and networks",
        epilog=EPILOG_TOPOLOGY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    topo.add_argument("--format", choices=TOPOLOGY_FORMATS, default="text",
                      help="text (default), json, or the figure as Graphviz dot or svg")
    topo.add_argument("--json", action="store_const", const="json", dest="format",
                      help="the same as --format json")

    daemon = sub.add_parser(
        "daemon",
        help="export per-container flow, NAT and drop metrics for Prometheus",
        epilog=EPILOG_DAEMON,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tracer.daemon import settings

    settings.add_arguments(daemon)

    ping = sub.add_parser(
        "ping",
        help="trace one probe from a container to a container or address, hop by hop",
        epilog=EPILOG_PING,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ping.add_argument("source", metavar="SRC", help="container (name or ID prefix), 'host', "
                      "or netns:NAME")
    ping.add_argument("destination", metavar="DST", nargs="?",
                      help="container, IP address, or ADDRESS:PORT (TCP); with --dns, the "
                      "DNS server to ask instead of SRC's own")
    ping.add_argument("-c", "--count", type=int, default=1, help="probes to send (default 1)")
    ping.add_argument("-t", "--timeout", type=float, default=1.0,
                      help="seconds to wait for each answer (default 1)")
    proto = ping.add_mutually_exclusive_group()
    proto.add_argument("--tcp", metavar="PORT", help="TCP connect to PORT instead of ICMP echo")
    proto.add_argument("--udp", metavar="PORT", help="a UDP datagram to PORT")
    ping.add_argument("-s", "--size", type=int, metavar="BYTES",
                      help="probe of BYTES (the whole IP packet) with DF set: finds the "
                      "path MTU")
    ping.add_argument("--dns", metavar="NAME", help="resolve NAME the way SRC does (its "
                      "/etc/resolv.conf) and trace the query and its answer")
    ping.add_argument("-v", "--verbose", action="store_true",
                      help="keep events that do not decide the probe's fate, labelled")
    ping.add_argument("--picture", action=argparse.BooleanOptionalAction, default=None,
                      help="draw the path as boxes (default: on a terminal)")
    ping.add_argument("--json", action="store_true", help="the same facts as JSON")

    testbed = sub.add_parser(
        "testbed",
        help="the demo/test setup: two containers on docker0, one on a user network, "
        "a 'wan' namespace on 198.51.100.0/24",
    )
    testbed.add_argument("action", choices=("up", "down", "status"))
    testbed.add_argument("--json", action="store_true", help="JSON output")
    testbed.add_argument("--traffic", action="store_true",
                         help="with up: background pings a -> b and a -> wan, for a demo")
    return parser


def _run_events(args: argparse.Namespace) -> int:
    from tracer.stream import events, filters

    if args.ringbuf_pages < 1 or args.ringbuf_pages & (args.ringbuf_pages - 1):
        raise UsageError(f"--ringbuf-pages {args.ringbuf_pages}: must be a power of 2")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration}: must be positive")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"--count {args.count}: must be positive")
    spec = filters.FilterSpec(
        containers=tuple(args.container),
        addresses=tuple(filters.parse_address(a) for a in args.address),
        proto=filters.parse_proto(args.proto) if args.proto else None,
        port=filters.parse_port(args.port) if args.port is not None else None,
        drops=not args.no_drops,
    )
    options = events.StreamOptions(
        spec=spec, as_json=args.json, duration=args.duration, count=args.count,
        ringbuf_pages=args.ringbuf_pages, btf_path=args.kernel_btf,
    )
    return events.run(options)


def _run_topology(args: argparse.Namespace) -> int:
    from tracer.host import docker_engine, topology, topology_text

    topo = docker_engine.discover(docker_engine.docker_client())
    if args.format == "json":
        print(json.dumps(topo.to_dict(), indent=2))
    elif args.format == "text":
        print(topology_text.format_text(topo))
    else:
        from tracer.host import figure

        uncounted = {cid: reason for cid, c in topo.containers.items()
                     if (reason := topology.uncountable_reason(topo, c))}
        sys.stdout.buffer.write(figure.render(figure.to_dot(topo, uncounted), args.format))
        sys.stdout.flush()
    return 0


def _run_daemon(args: argparse.Namespace) -> int:
    from tracer.daemon import main as daemon

    return daemon.run(args)


def _run_ping(args: argparse.Namespace) -> int:
    from tracer.ping import trace_ping as ping

    return ping.run(ping.Request(
        source=args.source, destination=args.destination, count=args.count,
        timeout=args.timeout, tcp=args.tcp, udp=args.udp, as_json=args.json,
        btf_path=args.kernel_btf, size=args.size, dns=args.dns, verbose=args.verbose,
        picture=args.picture,
    ))


def _run_testbed(args: argparse.Namespace) -> int:
    from tracer import testbed

    return testbed.command(args.action, as_json=args.json, traffic=args.traffic)


COMMANDS = {
    "events": _run_events,
    "topology": _run_topology,
    "ping": _run_ping,
    "daemon": _run_daemon,
    "testbed": _run_testbed,
}


def main(argv: Sequence[str] | None = None) -> int:
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        code = COMMANDS[command](args)
    except CntraceError as exc:
        print(f"cntrace: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:     # `| head`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    if command == "ping" and argv is None:
        _exit_at_once(code)
    return code


def trace_ping_main(argv: Sequence[str] | None = None) -> int:
    """`trace-ping ...` is `cntrace ping ...`."""
    if argv is None:
        sys.argv[1:1] = ["ping"]
        return main()
    return main(["ping", *argv])


def _exit_at_once(code: int) -> None:
    """A one-shot trace-ping has closed everything it opened (programs
    detached, nftables table deleted, sockets closed); interpreter teardown
    and libbcc's LLVM destructors would add 0.1-0.2 s to its wall time."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):   # a reader that went away
            stream.flush()
    os._exit(code)
