"""`trace-ping SRC DST`: send our own probe from SRC's netns, trace exactly
that probe (filtered in the kernel) and its answer hop by hop, show NAT, and
say where and why it stopped."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import TextIO

from tracer import diagnosis, filters, loader, pathtrace, probe, rules, topology
from tracer.attribution import Attributor
from tracer.errors import DockerUnavailableError, UsageError
from tracer.output import HOOK_COLUMN, packet_summary
from tracer.topology import Container, Topology

EXIT_REACHABLE = 0
EXIT_UNREACHABLE = 1
SETTLE_S = 0.05          # late events (a drop after the last hop) still arrive


@dataclass(frozen=True)
class Request:
    source: str
    destination: str
    count: int = 1
    timeout: float = 1.0
    tcp: int | None = None
    udp: int | None = None
    as_json: bool = False
    btf_path: str = loader.DEFAULT_BTF


@dataclass(frozen=True)
class Source:
    label: str
    netns_path: str | None          # None: the host's own netns
    container: Container | None


@dataclass(frozen=True)
class Destination:
    label: str
    address: str
    container: Container | None


def split_destination(text: str) -> tuple[str, int | None]:
    """"ip", "ip:port", "[v6]:port", "name", "name:port"."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"malformed destination '{text}'")
        return host, filters.parse_port(rest[1:]) if rest else None
    try:
        ipaddress.ip_address(text)
        return text, None            # a bare IPv6 address has colons of its own
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if sep:
        return host, filters.parse_port(port)
    return text, None


def _looks_like_address(text: str) -> bool:
    return all(c in "0123456789." for c in text) or ":" in text


def resolve_source(ref: str, topo: Topology, client) -> Source | str:
    """A Source, or a diagnosis string when the container is not running."""
    if ref == "host":
        return Source("host", None, None)
    if ref.startswith("netns:"):
        path = f"/run/netns/{ref[6:]}"
        if not ref[6:] or "/" in ref[6:] or not os.path.exists(path):
            raise UsageError(f"unknown network namespace '{ref[6:]}' (see ip netns list)")
        return Source(ref, path, None)
    try:
        container = topo.find_container(ref)
    except UsageError:
        stopped = _stopped_container(client, ref)
        if stopped:
            return stopped
        raise
    return Source(container.name, f"/proc/{container.pid}/ns/net", container)


def resolve_destination(text: str, src: Source, topo: Topology, client
                        ) -> tuple[Destination | str, int | None]:
    host, port = split_destination(text)
    try:
        address = str(ipaddress.ip_address(host))
        return Destination(address, address, topo.container_by_address(address)), port
    except ValueError:
        if _looks_like_address(host):
            raise UsageError(f"malformed address '{host}'") from None
    try:
        container = topo.find_container(host)
    except UsageError:
        stopped = _stopped_container(client, host)
        if stopped:
            return stopped, port
        raise
    shared = [n for n in container.networks if src.container and n in src.container.networks]
    network = (shared or list(container.networks))[0] if container.networks else None
    if network is None or not container.networks[network]:
        raise UsageError(f"container '{container.name}' has no IPv4 address to probe")
    return Destination(container.name, container.networks[network], container), port


def _stopped_container(client, ref: str) -> str | None:
    import docker.errors

    try:
        container = client.containers.get(ref)
    except docker.errors.NotFound:
        return None
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(f"cannot reach the Docker engine: {exc}") from exc
    state = container.attrs.get("State", {})
    if state.get("Running"):
        return None
    return (f"container '{container.name}' is not running (status {state.get('Status')}, "
            f"exit code {state.get('ExitCode')}): start it with docker start {container.name}")


@dataclass
class Result:
    source: Source
    destination: Destination
    proto: str
    port: int | None
    identity: pathtrace.ProbeIdentity
    outcomes: list[probe.Outcome]
    trace: pathtrace.PathTrace
    hints: list[diagnosis.Hint]
    rule_hits: list[rules.RuleHit]
    lost_events: int

    @property
    def reachable(self) -> bool:
        if any(o.rtt_ns is not None for o in self.outcomes):
            return True
        # UDP has no obligatory answer: delivered into the destination is success.
        return (self.proto == "udp" and self.destination.container is not None
                and not any(o.error for o in self.outcomes)
                and self.trace.reached(self.destination.container.netns))

    def to_dict(self) -> dict:
        rtts = [o.rtt_ns / 1e6 for o in self.outcomes if o.rtt_ns is not None]
        return {
            "source": self.source.label,
            "destination": self.destination.label,
            "address": self.destination.address,
            "protocol": self.proto,
            "port": self.port,
            "probe_id": self.identity.ident,
            "reachable": self.reachable,
            "sent": len(self.outcomes),
            "answered": len(rtts),
            "rtt_ms": [round(r, 3) for r in rtts],
            "path": {
                "request": [h.to_dict() for h in self.trace.request],
                "reply": [h.to_dict() for h in self.trace.reply],
                "request_chain": pathtrace.chain(self.trace.request),
                "reply_chain": pathtrace.chain(self.trace.reply),
            },
            "nat": self.trace.nat(),
            "drops": [h.to_dict() for h in self.trace.request_drops + self.trace.reply_drops],
            "icmp_errors": [h.to_dict() for h in self.trace.errors],
            "socket_errors": sorted({o.error for o in self.outcomes if o.error}),
            "firewall_rules": [rules.describe(h) for h in self.rule_hits if h.drops],
            "hints": [h.to_dict() for h in self.hints],
            "lost_events": self.lost_events,
        }


def run(req: Request, out: TextIO = sys.stdout) -> int:
    if req.count < 1 or req.count > 100:
        raise UsageError(f"--count {req.count}: expected 1-100")
    if not 0 < req.timeout <= 60:
        raise UsageError(f"--timeout {req.timeout}: expected 0-60 seconds")
    if req.tcp is not None and req.udp is not None:
        raise UsageError("--tcp and --udp exclude each other")
    for port in (req.tcp, req.udp):   # bad input is exit 2 whoever runs it
        if port is not None:
            filters.parse_port(port)
    split_destination(req.destination)
    loader.check_privileges()
    kernel = loader.read_kernel(req.btf_path)
    client = topology.docker_client()
    topo = topology.discover(client)
    src = resolve_source(req.source, topo, client)
    dst, port = resolve_destination(req.destination, src, topo, client) \
        if isinstance(src, Source) else (None, None)
    for stopped in (src, dst):
        if isinstance(stopped, str):
            _print_unstarted(req, stopped, out)
            return EXIT_UNREACHABLE
    proto, port = _protocol(req, port)
    sock = _open_probe(src, dst, proto, port)
    try:
        identity = pathtrace.ProbeIdentity(
            {"icmp": 58 if ":" in dst.address else 1, "tcp": 6, "udp": 17}[proto],
            sock.ident if proto == "icmp" else sock.sport)
        spec = filters.FilterSpec(proto="icmp6" if identity.proto == 58 else proto,
                                  icmp_id=identity.ident if proto == "icmp" else None,
                                  port=None if proto == "icmp" else identity.ident)
        tracer = loader.load(kernel, ringbuf_pages=64)
        try:
            filters.install(filters.resolve(spec, topo), tracer)
            reader = _reader(tracer)
            before = rules.snapshot()
            events = _send_and_collect(sock, reader, req)
            after = rules.snapshot()
            lost = reader.kernel_stats()["lost"]
            attributor = Attributor(lambda: topology.discover(client), tracer.drop_reasons,
                                    tracer.symbolize)
            items = [attributor.attribute(e) for e in events]
        finally:
            tracer.close()
    finally:
        sock.close()
    result = _result(src, dst, proto, port, identity, sock, items, rules.diff(before, after),
                     lost, topo)
    if req.as_json:
        print(json.dumps(result.to_dict(), indent=2), file=out)
    else:
        print(render(result, color=out.isatty()), file=out)
    return EXIT_REACHABLE if result.reachable else EXIT_UNREACHABLE


def _reader(tracer):
    from tracer.events import EventReader

    return EventReader(tracer)


def _protocol(req: Request, port: int | None) -> tuple[str, int | None]:
    if req.tcp is not None:
        return "tcp", filters.parse_port(req.tcp)
    if req.udp is not None:
        return "udp", filters.parse_port(req.udp)
    return ("tcp", port) if port else ("icmp", None)


def _open_probe(src: Source, dst: Destination, proto: str, port: int | None) -> probe.Probe:
    try:
        if proto == "icmp":
            return probe.IcmpEchoProbe(src.netns_path, dst.address)
        if proto == "tcp":
            return probe.TcpConnectProbe(src.netns_path, dst.address, port)
        return probe.UdpProbe(src.netns_path, dst.address, port)
    except OSError as exc:
        raise UsageError(f"cannot open a probe socket in {src.label}: {exc}") from exc


def _send_and_collect(sock: probe.Probe, reader, req: Request) -> list:
    events = []
    for seq in range(1, req.count + 1):
        sock.send(seq)
        # Wait for this probe's answer, up to the timeout; stop early once answered.
        deadline = time.monotonic() + req.timeout
        while time.monotonic() < deadline:
            sock.receive(min(0.05, max(0.0, deadline - time.monotonic())))
            events.extend(reader.poll(0))
            outcome = sock.outcomes.get(seq)
            if outcome and (outcome.rtt_ns or outcome.error or outcome.icmp_error):
                break
    time.sleep(SETTLE_S)
    events.extend(reader.poll(0))
    return events


def _result(src, dst, proto, port, identity, sock, items, hits, lost, topo) -> Result:
    outcomes = sorted(sock.outcomes.values(), key=lambda o: o.seq)
    first = next((o for o in outcomes if o.rtt_ns is None), outcomes[0])  # show a failure
    following = next((o.sent_ns for o in outcomes if o.seq == first.seq + 1), None)
    trace = pathtrace.build(items, identity, first.sent_ns, following)
    ctx = diagnosis.Context(
        family=6 if ":" in dst.address else 4,
        proto=identity.proto,
        port=port,
        destination=dst.label,
        src_networks=set(src.container.networks) if src.container else set(),
        dst_networks=set(dst.container.networks) if dst.container else set(),
        dst_netns=dst.container.netns if dst.container else None,
        host_devices=_host_devices(topo, src, dst),
        socket_errors=[o.error for o in outcomes if o.error],
        icmp_errors=sorted({o.icmp_error for o in outcomes if o.icmp_error}
                           | {(h.item.event.icmp_type, h.item.event.icmp_code)
                              for h in trace.errors}),
        tcp_reset=any(h.item.event.tcp_flags & 0x04 for h in trace.reply),
    )
    result = Result(src, dst, proto, port, identity, outcomes, trace, [], hits, lost)
    if not result.reachable:
        result.hints = diagnosis.diagnose(trace, hits, ctx)
    return result


def _host_devices(topo: Topology, src: Source, dst: Destination) -> list[str]:
    """Host-side devices the probe should cross: the containers' veths and bridges."""
    names = []
    for container in (src.container, dst.container):
        if container is None:
            continue
        for iface in topo.host_veths(container.id):
            names.append(iface.name)
            master = topo.lookup(topo.host_netns, iface.master_ifindex or 0)
            if master:
                names.append(master.name)
    return list(dict.fromkeys(names))


def _print_unstarted(req: Request, reason: str, out: TextIO) -> None:
    if req.as_json:
        print(json.dumps({"source": req.source, "destination": req.destination,
                          "reachable": False, "sent": 0,
                          "hints": [{"text": reason, "finding": True}]}, indent=2), file=out)
    else:
        print(f"trace-ping {req.source} -> {req.destination}: NOT reachable\n"
              f"  why: {reason}", file=out)


def _wrap_chain(prefix: str, labels: list[str], width: int = 78) -> list[str]:
    lines, line = [], prefix
    for i, label in enumerate(labels):
        piece = label if i == 0 else f" -> {label}"
        if len(line) + len(piece) > width and line.strip():
            lines.append(line)
            line = " " * len(prefix) + piece.lstrip()
        else:
            line += piece
    lines.append(line)
    return lines


def render(result: Result, color: bool = False) -> str:
    red = ("\033[31m", "\033[0m") if color else ("", "")
    dst = result.destination
    what = {"icmp": f"icmp echo id {result.identity.ident}",
            "tcp": f"tcp connect to port {result.port}",
            "udp": f"udp to port {result.port}"}[result.proto]
    target = dst.address if dst.label == dst.address else f"{dst.label} ({dst.address})"
    lines = [f"trace-ping {result.source.label} -> {target}: {what}", ""]
    trace = result.trace
    request_chain = pathtrace.chain(trace.request)
    if not result.reachable:
        stop = "X dropped" if trace.request_drops else "X no further hop seen"
        request_chain = [*request_chain, f"{red[0]}{stop}{red[1]}"]
    lines += _wrap_chain("  request  ", request_chain or ["(nothing seen)"])
    if trace.reply:
        lines += _wrap_chain("  reply    ", pathtrace.chain(trace.reply))
    lines += ["", f"  {'+us':>8}  {'WHERE':<24} {'HOOK':<4} PACKET"]
    hops = sorted(trace.request + trace.reply + trace.request_drops + trace.reply_drops
                  + trace.errors, key=lambda h: h.offset_us)
    for hop in hops:
        event = hop.item.event
        lines.append(f"  {hop.offset_us:>8.1f}  {hop.label[:24]:<24} "
                     f"{HOOK_COLUMN.get(event.hook, event.hook):<4} {packet_summary(event)}")
        if event.is_drop:
            lines.append(f"  {'':8}  `- {red[0]}dropped: {hop.item.drop_reason} at "
                         f"{hop.item.drop_location}{red[1]}")
    lines.append("")
    answered = [o.rtt_ns / 1e6 for o in result.outcomes if o.rtt_ns is not None]
    sent = len(result.outcomes)
    if result.trace.nat():
        lines.append("  nat:     " + "; ".join(result.trace.nat()))
    if result.reachable:
        rtt = (f", rtt min/avg/max {min(answered):.3f}/{sum(answered) / len(answered):.3f}/"
               f"{max(answered):.3f} ms" if answered else " (delivered; no UDP answer)")
        lines.append(f"  REACHABLE: {len(answered)}/{sent} answered{rtt}")
    else:
        lines.append(f"  {red[0]}NOT REACHABLE{red[1]}: {len(answered)}/{sent} answered")
        last = trace.last_request_hop
        if last:
            lines.append(f"  last hop: {last.label} ({last.item.event.hook}, "
                         f"+{last.offset_us:.1f} us)")
        for hop in trace.request_drops + trace.reply_drops:
            lines.append(f"  dropped:  {hop.item.drop_reason} at {hop.item.drop_location} "
                         f"on {hop.label}")
        for hint in result.hints:
            tag = "finding" if hint.finding else "possible"
            lines.append(textwrap.fill(hint.text, width=78, initial_indent=f"  {tag}:  ",
                                       subsequent_indent=" " * 12, break_long_words=False))
    if result.lost_events:
        lines.append(f"  warning: {result.lost_events} events lost (ring buffer full)")
    return "\n".join(lines)
