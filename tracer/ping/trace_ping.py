"""`trace-ping SRC DST`: send our own probe from SRC's netns, trace exactly
that probe (filtered in the kernel) and its answer hop by hop, show NAT, and
say where and why it stopped."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shutil
import socket
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TextIO

from tracer.errors import DockerUnavailableError, UsageError
from tracer.host import docker_engine
from tracer.host.topology import Container, Topology
from tracer.kernel import loader, wire
from tracer.ping import diagnosis, iptables_counters, nftrace, pathstate, pathtrace, probe_socket
from tracer.stream import filters
from tracer.stream.attribution import Attributor
from tracer.stream.event_text import HOOK_COLUMN, packet_summary

EXIT_REACHABLE = 0
EXIT_UNREACHABLE = 1
SETTLE_S = 0.05          # late events (a drop after the last hop) still arrive
MIN_SIZE, MAX_SIZE = 64, 65_507   # --size: the whole IP packet; 64 leaves room for our mark


@dataclass(frozen=True)
class Request:
    source: str
    destination: str | None
    count: int = 1
    timeout: float = 1.0
    tcp: int | None = None
    udp: int | None = None
    as_json: bool = False
    btf_path: str = loader.DEFAULT_BTF
    size: int | None = None          # bytes of the whole IP packet, DF set
    dns: str | None = None           # a name to resolve the way the source does
    verbose: bool = False            # keep the noise (labelled) in the text
    picture: bool | None = None      # None: draw it when printing to a terminal


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
    outcomes: list[probe_socket.Outcome]
    trace: pathtrace.PathTrace
    hints: list[diagnosis.Hint]
    rule_hits: list[iptables_counters.RuleHit]
    lost_events: int
    state: pathstate.PathState | None = None     # read only when it did not get through
    nft_verdicts: list[nftrace.RuleVerdict] = field(default_factory=list)
    nft_detail: str = ""                          # why nftables tracing was not available
    dns_name: str | None = None
    size: int | None = None
    bpf_cache: str = "miss"                      # "hit": programs from tracer.kernel.bpfcache

    @property
    def answered(self) -> bool:
        return any(o.rtt_ns is not None for o in self.outcomes)

    @property
    def dns_answer(self):
        return next((o.answer for o in self.outcomes if o.answer is not None), None)

    @property
    def reachable(self) -> bool:
        if self.dns_name is not None:      # answered is not enough: the name must resolve
            answer = self.dns_answer
            return answer is not None and answer.rcode_name == "NOERROR" and \
                bool(answer.addresses)
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
            "noise": [h.to_dict() for h in self.trace.noise],
            "icmp_errors": [h.to_dict() for h in self.trace.errors],
            "socket_errors": sorted({o.error for o in self.outcomes if o.error}),
            "firewall_rules": [iptables_counters.describe(h) for h in self.rule_hits if h.drops]
            + [v.describe() for v in self.nft_verdicts if v.drops],
            "nft_trace": self.nft_detail or "on",
            "bpf_cache": self.bpf_cache,
            "size": self.size,
            "dns": self._dns_dict(),
            "state": self.state.to_dict() if self.state else None,
            "hints": [h.to_dict() for h in self.hints],
            "lost_events": self.lost_events,
        }

    def _dns_dict(self) -> dict | None:
        if self.dns_name is None:
            return None
        answer = self.dns_answer
        return {"name": self.dns_name, "server": self.destination.address,
                "rcode": answer.rcode_name if answer else None,
                "addresses": list(answer.addresses) if answer else []}


def _check(req: Request) -> None:
    """Bad input is exit 2 whoever runs it, before anything is asked of the host."""
    if req.count < 1 or req.count > 100:
        raise UsageError(f"--count {req.count}: expected 1-100")
    if not 0 < req.timeout <= 60:
        raise UsageError(f"--timeout {req.timeout}: expected 0-60 seconds")
    if req.tcp is not None and req.udp is not None:
        raise UsageError("--tcp and --udp exclude each other")
    for port in (req.tcp, req.udp):
        if port is not None:
            filters.parse_port(port)
    if req.size is not None:
        if not MIN_SIZE <= req.size <= MAX_SIZE:
            raise UsageError(f"--size {req.size}: expected {MIN_SIZE}-{MAX_SIZE} bytes")
        if req.tcp is not None or req.dns:
            raise UsageError("--size applies to ICMP and UDP probes")
    if req.dns is not None:
        from tracer.ping import dns

        if req.tcp is not None or req.udp is not None:
            raise UsageError("--dns sends its own UDP query: drop --tcp/--udp")
        try:
            dns.build_query(req.dns, 0)
        except ValueError as exc:
            raise UsageError(f"--dns: {exc}") from None
    elif not req.destination:
        raise UsageError("a destination is needed (or --dns NAME)")
    if req.destination:
        split_destination(req.destination)


def run(req: Request, out: TextIO = sys.stdout) -> int:
    _check(req)
    loader.check_privileges()
    kernel = loader.read_kernel(req.btf_path)
    # clang takes most of a trace-ping's time: compile while Docker is asked.
    # iptables-legacy rules are named from counters read before and after the
    # probe; nftables tracing names every nf_tables rule, iptables-nft's too.
    counted = iptables_counters.legacy_tables_in_use() or shutil.which("nft") is None
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cntrace-prepare")
    compiling = pool.submit(loader.compile_programs, kernel, 64)
    counting = pool.submit(iptables_counters.snapshot if counted else dict)
    pool.shutdown(wait=False)
    try:
        client = docker_engine.docker_client()
        topo = docker_engine.discover(client, wanted=_involved(req))
        src = resolve_source(req.source, topo, client)
        dst, port = _destination(req, src, topo, client)
        for stopped in (src, dst):
            if isinstance(stopped, str):
                _print_unstarted(req, stopped, out)
                return EXIT_UNREACHABLE
        proto, port = ("udp", 53) if req.dns else _protocol(req, port)
        sock = _open_probe(src, dst, proto, port, req)
    except BaseException:
        compiling.add_done_callback(_discard)
        raise
    try:
        compiled, before = compiling.result(), counting.result()
        icmp = socket.IPPROTO_ICMPV6 if ":" in dst.address else socket.IPPROTO_ICMP
        identity = pathtrace.ProbeIdentity(
            {"icmp": icmp, "tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}[proto],
            sock.ident if proto == "icmp" else sock.sport)
        spec = filters.FilterSpec(proto=wire.PROTOCOLS[identity.proto],
                                  icmp_id=identity.ident if proto == "icmp" else None,
                                  port=None if proto == "icmp" else identity.ident)
        tracer = loader.attach(kernel, compiled)
        try:
            filters.install(filters.resolve(spec, topo), tracer)
            reader = _reader(tracer)
            match = nftrace.ProbeMatch(6 if ":" in dst.address else 4, proto, identity.ident)
            with nftrace.NftTrace(match) as nft:
                events = _send_and_collect(sock, reader, req)
                answered = any(o.rtt_ns for o in sock.outcomes.values())
                # Counters only matter when it did not get through.
                after = iptables_counters.snapshot() if counted and not answered else {}
                verdicts = nft.stop(drain=not answered)   # a verdict explains a failure
            if not answered:   # a trace-ping killed mid-trace left its table: tidy up
                nftrace.remove_leftovers()
            lost = reader.kernel_stats()["lost"]
            # The trace may cross a container whose netns was not read (where
            # DNAT sent the probe): read them all, once, if an event needs it.
            # Drop locations are symbolized later, for the drops that are
            # shown: reading kallsyms costs 0.1 s.
            unread = {c.netns for c in topo.containers.values()
                      if not topo.container_interfaces(c.id)}
            everything = functools.cache(lambda: docker_engine.discover(client))
            attributor = Attributor(everything, tracer.drop_reasons, topology=topo,
                                    refresh_interval=0, refresh_for=lambda netns: netns in unread)
            items = [attributor.attribute(e) for e in events]
        finally:
            tracer.close()
    finally:
        sock.close()
    result = _result(src, dst, proto, port, identity, sock, items,
                     iptables_counters.diff(before, after) if after else [], lost, topo, req)
    _locate_drops(result.trace, tracer.symbolize, req.verbose or req.as_json)
    result.nft_verdicts, result.nft_detail = verdicts, nft.why_not
    result.bpf_cache = "hit" if compiled.cached else "miss"
    if not result.reachable:   # the evidence wants every container's devices
        topo = everything()
        target = _real_destination(result, topo)
        result.state = _path_state(result, topo, target,
                                   after or iptables_counters.snapshot(tables=("nat",)))
        result.hints = diagnosis.diagnose(result.trace, result.rule_hits,
                                          _context(result, topo, target), state=result.state)
    if req.as_json:
        print(json.dumps(result.to_dict(), indent=2), file=out)
    else:
        draw = out.isatty() if req.picture is None else req.picture
        print(render(result, color=out.isatty(), verbose=req.verbose, picture=draw), file=out)
    return EXIT_REACHABLE if result.reachable else EXIT_UNREACHABLE


def _involved(req: Request):
    """The containers a trace-ping is about, by name, id or address: the
    only ones whose netns it reads before the probe."""
    refs = {req.source.lstrip("/")}
    if req.destination:
        host, _ = split_destination(req.destination)
        refs.add(host.lstrip("/"))

    def wanted(attrs: dict) -> bool:
        name, ident = attrs.get("Name", "").lstrip("/"), attrs.get("Id", "")
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        addresses = {a for net in networks.values() for a in
                     (net.get("IPAddress"), net.get("GlobalIPv6Address")) if a}
        return any(ref in (name, *addresses) or (len(ref) >= 4 and ident.startswith(ref))
                   for ref in refs)

    return wanted


def _discard(future) -> None:
    """A compile nobody will attach: free its programs as soon as it ends."""
    if future.exception() is None:
        future.result().bpf.cleanup()


def _destination(req: Request, src: Source | str, topo: Topology, client
                 ) -> tuple[Destination | str | None, int | None]:
    if isinstance(src, str):
        return None, None
    if req.dns and not req.destination:
        return _resolver_of(src), 53
    return resolve_destination(req.destination, src, topo, client)


def _resolver_of(src: Source) -> Destination:
    """The first nameserver of the source's own /etc/resolv.conf."""
    from tracer.ping import dns

    root = f"/proc/{src.container.pid}/root" if src.container else ""
    path = f"{root}/etc/resolv.conf"
    try:
        conf = dns.read_resolv_conf(path)
    except OSError as exc:
        raise UsageError(f"cannot read {src.label}'s /etc/resolv.conf: "
                         f"{exc.strerror or exc}") from None
    if not conf.nameservers:
        raise UsageError(f"{src.label}'s /etc/resolv.conf names no nameserver")
    server = conf.nameservers[0]
    label = "docker's embedded DNS" if server == dns.DOCKER_EMBEDDED_DNS else server
    return Destination(label, server, None)


def _reader(tracer):
    from tracer.stream.events import EventReader

    return EventReader(tracer)


def _protocol(req: Request, port: int | None) -> tuple[str, int | None]:
    if req.tcp is not None:
        return "tcp", filters.parse_port(req.tcp)
    if req.udp is not None:
        return "udp", filters.parse_port(req.udp)
    return ("tcp", port) if port else ("icmp", None)


def _open_probe(src: Source, dst: Destination, proto: str, port: int | None,
                req: Request) -> probe_socket.Probe:
    try:
        if req.dns:
            return probe_socket.DnsProbe(src.netns_path, dst.address, req.dns)
        if proto == "icmp":
            return probe_socket.IcmpEchoProbe(src.netns_path, dst.address, req.size)
        if proto == "tcp":
            return probe_socket.TcpConnectProbe(src.netns_path, dst.address, port)
        return probe_socket.UdpProbe(src.netns_path, dst.address, port, req.size)
    except OSError as exc:
        raise UsageError(f"cannot open a probe socket in {src.label}: {exc}") from exc


def _send_and_collect(sock: probe_socket.Probe, reader, req: Request) -> list:
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


def _result(src, dst, proto, port, identity, sock, items, hits, lost, topo,
            req: Request) -> Result:
    outcomes = sorted(sock.outcomes.values(), key=lambda o: o.seq)
    first = next((o for o in outcomes if o.rtt_ns is None), outcomes[0])  # show a failure
    following = next((o.sent_ns for o in outcomes if o.seq == first.seq + 1), None)
    trace = pathtrace.build(items, identity, first.sent_ns, following)
    result = Result(src, dst, proto, port, identity, outcomes, trace, [], hits, lost,
                    dns_name=req.dns, size=req.size)
    src_netns = src.container.netns if src.container else _netns_inode(src.netns_path)
    dst_netns = dst.container.netns if dst.container else None
    path = {topo.host_netns, src_netns} | ({dst_netns} if dst_netns else set())
    if not dst.container:   # after DNAT the probe may end in a container: its netns is on it
        path |= {h.item.event.netns for h in trace.request}
    pathtrace.separate_noise(trace, path, src_netns, dst_netns, answered=result.answered)
    return result


def _locate_drops(trace: pathtrace.PathTrace, symbolize, noise_too: bool) -> None:
    """Name the kernel function behind each drop that will be shown."""
    def locate(hops: list[pathtrace.Hop]) -> list[pathtrace.Hop]:
        return [replace(h, item=replace(h.item, drop_location=symbolize(h.item.event.location)))
                if h.item.event.location else h for h in hops]

    trace.request_drops = locate(trace.request_drops)
    trace.reply_drops = locate(trace.reply_drops)
    if noise_too:
        trace.noise = locate(trace.noise)


def _netns_inode(path: str | None) -> int:
    return os.stat(path or "/proc/self/ns/net").st_ino


def _real_destination(result: Result, topo: Topology) -> Container | None:
    """The container the probe is for: the destination, or where DNAT sent it."""
    if result.destination.container:
        return result.destination.container
    for hop in result.trace.request:
        ct = hop.item.event.conntrack
        if ct is not None and (found := topo.container_by_address(ct.reply.src)):
            return found
    return None


def _path_state(result: Result, topo: Topology, target: Container | None,
                counters) -> pathstate.PathState:
    src, dst = result.source, result.destination
    own = tuple(src.container.networks.values()) if src.container else ()
    places: list[tuple[pathstate.Place, tuple[str, ...]]] = [
        (pathstate.Place(src.label, src.netns_path, src.container.pid if src.container
                         else None), (dst.address,))]
    if src.netns_path is not None:   # the host's way on, and its way back to the source
        places.append((pathstate.Place(pathstate.HOST, None), (dst.address, *own[:1])))
    listen_at = None
    if target is not None:
        shared = [ip for net, ip in (src.container.networks.items() if src.container else ())
                  if net in target.networks]
        listen_at = pathstate.Place(target.name, f"/proc/{target.pid}/ns/net", target.pid)
        places.append((listen_at, tuple(shared[:1])))
    elif any(h.item.event.hook == "INPUT" and h.item.event.netns == topo.host_netns
             for h in result.trace.request):
        listen_at = pathstate.Place(pathstate.HOST, None)   # the host's own address
    if result.dns_name and src.container and dst.address.startswith("127."):
        listen_at = places[0][0]        # docker's resolver listens inside the source's netns
    containers = [c for c in (src.container, target) if c is not None]
    return pathstate.collect(topo, places, containers, listen_at, result.proto, counters)


def _context(result: Result, topo: Topology, target: Container | None) -> diagnosis.Context:
    src, dst, trace = result.source, result.destination, result.trace
    outcomes = result.outcomes
    src_nets = tuple(topo.networks[n] for n in (src.container.networks if src.container
                                                else ()) if n in topo.networks)
    outside = dst.container is None and target is None and not any(
        ipaddress.ip_address(dst.address) in ipaddress.ip_network(subnet)
        for net in topo.networks.values() for subnet in net.subnets)
    return diagnosis.Context(
        family=6 if ":" in dst.address else 4,
        proto=result.identity.proto,
        port=result.port,
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
        source=src.label,
        src_address=next(iter(src.container.networks.values()), None) if src.container
        else None,
        dst_address=(next(iter(target.networks.values()), None) if target else dst.address),
        outside=outside,
        src_docker_networks=src_nets,
        same_network=bool(dst.container and src.container
                          and set(src.container.networks) & set(dst.container.networks)),
        size=result.size,
        icmp_mtu=next((o.icmp_mtu for o in outcomes if o.icmp_mtu), None),
        nft_verdicts=result.nft_verdicts,
        dns=_dns_facts(result),
    )


def _dns_facts(result: Result) -> diagnosis.DnsFacts | None:
    from tracer.ping import dns

    if result.dns_name is None:
        return None
    answer = result.dns_answer
    return diagnosis.DnsFacts(result.dns_name, result.destination.address,
                              answer.rcode_name if answer else None,
                              tuple(answer.addresses) if answer else (),
                              result.destination.address == dns.DOCKER_EMBEDDED_DNS)


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


def render(result: Result, color: bool = False, verbose: bool = False,
           picture: bool = False) -> str:
    red = ("\033[31m", "\033[0m") if color else ("", "")
    dst = result.destination
    what = {"icmp": f"icmp echo id {result.identity.ident}",
            "tcp": f"tcp connect to port {result.port}",
            "udp": f"udp to port {result.port}"}[result.proto]
    if result.dns_name:
        what = f"dns query for {result.dns_name} (udp port 53)"
    if result.size:
        what += f", {result.size} bytes, DF"
    target = dst.address if dst.label == dst.address else f"{dst.label} ({dst.address})"
    lines = [f"trace-ping {result.source.label} -> {target}: {what}", ""]
    if picture:
        from tracer.ping import picture as figure

        lines += [*figure.draw(result), ""]
    trace = result.trace
    request_chain = pathtrace.chain(trace.request)
    if not result.reachable and not result.answered:
        stop = "X dropped" if trace.request_drops else "X no further hop seen"
        request_chain = [*request_chain, f"{red[0]}{stop}{red[1]}"]
    lines += _wrap_chain("  request  ", request_chain or ["(nothing seen)"])
    if trace.reply:
        lines += _wrap_chain("  reply    ", pathtrace.chain(trace.reply))
    lines += ["", f"  {'+us':>8}  {'WHERE':<24} {'HOOK':<4} PACKET"]
    shown = trace.request + trace.reply + trace.request_drops + trace.reply_drops + \
        trace.errors + (trace.noise if verbose else [])
    for hop in sorted(shown, key=lambda h: h.offset_us):
        event = hop.item.event
        lines.append(f"  {hop.offset_us:>8.1f}  {hop.label[:24]:<24} "
                     f"{HOOK_COLUMN.get(event.hook, event.hook):<4} {packet_summary(event)}")
        if hop.noise:
            dropped = f"{hop.item.drop_reason} at {hop.item.drop_location}: " \
                if event.is_drop else ""
            lines.append(f"  {'':8}  `- noise: {dropped}{hop.noise}")
        elif event.is_drop:
            lines.append(f"  {'':8}  `- {red[0]}dropped: {hop.item.drop_reason} at "
                         f"{hop.item.drop_location}{red[1]}")
    if trace.noise and not verbose:
        lines.append(f"  ({len(trace.noise)} event(s) that do not decide the probe's fate "
                     "hidden: --verbose shows them)")
    lines.append("")
    answered = [o.rtt_ns / 1e6 for o in result.outcomes if o.rtt_ns is not None]
    sent = len(result.outcomes)
    if result.trace.nat():
        lines.append("  nat:     " + "; ".join(result.trace.nat()))
    if result.dns_name:
        answer = result.dns_answer
        said = (f"{answer.rcode_name} {' '.join(answer.addresses)}".strip() if answer
                else "no answer")
        lines.append(f"  dns:     {result.dns_name} -> {said}")
        listener = _embedded_listener(result)
        if listener:
            lines.append(f"  resolver: docker's embedded DNS: {dst.address}:53 is DNATed in "
                         f"{result.source.label}'s netns to dockerd at {listener}")
    if result.dns_name:
        verdict = "RESOLVED" if result.reachable else f"{red[0]}NOT RESOLVED{red[1]}"
        lines.append(f"  {verdict}: {len(answered)}/{sent} answered")
    elif result.reachable:
        rtt = (f", rtt min/avg/max {min(answered):.3f}/{sum(answered) / len(answered):.3f}/"
               f"{max(answered):.3f} ms" if answered else " (delivered; no UDP answer)")
        lines.append(f"  REACHABLE: {len(answered)}/{sent} answered{rtt}")
    else:
        lines.append(f"  {red[0]}NOT REACHABLE{red[1]}: {len(answered)}/{sent} answered")
    if not result.reachable:
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
        if verbose and result.state:
            lines += ["", *_state_lines(result.state)]
    if result.lost_events:
        lines.append(f"  warning: {result.lost_events} events lost (ring buffer full)")
    return "\n".join(lines)


def _embedded_listener(result: Result) -> str | None:
    """Where docker's DNAT sent a query to 127.0.0.11:53: dockerd's own socket."""
    if result.destination.container is not None:
        return None
    for hop in result.trace.request:
        event = hop.item.event
        if event.dst == result.destination.address and event.dport not in (0, 53) \
                and event.dst.startswith("127."):
            return f"{event.dst}:{event.dport}"
    return None


def _state_lines(state: pathstate.PathState) -> list[str]:
    """--verbose: the state read along the path, the evidence behind the hints."""
    lines = ["  path state:"]
    for d in state.devices:
        flags = ("up" if d.up else "DOWN") + ("" if d.carrier or not d.up else ",no-carrier")
        master = f" master {d.master}" if d.master else ""
        lines.append(f"    {d.place[:16]:<16} {d.name:<16} {flags:<13} mtu {d.mtu}{master}")
    for r in state.routes:
        via = f" via {r.gateway}" if r.gateway else ""
        lines.append(f"    {r.place[:16]:<16} route {r.destination}: {r.kind}"
                     f"{via}{f' dev {r.device}' if r.device else ''}")
    for n in state.neighbours:
        lines.append(f"    {n.place[:16]:<16} neighbour {n.address} dev {n.device}: "
                     f"{n.state or 'no entry'}")
    for place, sockets in state.listeners.items():
        listening = ", ".join(f"{s.address}:{s.port}" for s in sockets[:8]) or "nothing"
        lines.append(f"    {place[:16]:<16} listening: {listening}")
    lines += [f"    unreadable: {why}" for why in state.unreadable]
    return lines
