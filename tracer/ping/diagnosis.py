"""Why a probe did not get through: the trace's evidence joined with the
host's state along the path (tracer.ping.pathstate).  A hint is a "finding" only
when both support it; otherwise it is offered as a "possible" cause.  Hints
are data: a kind, whose place in PRECEDENCE orders the verdict, and a text.
General by construction: each rule keys on a drop reason, an ICMP error, a
firewall verdict, a device, route, neighbour or socket, or a host setting,
never on a named scenario."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracer.host.topology import ROLE_HOST, Network
from tracer.ping.iptables_counters import RuleHit, describe
from tracer.ping.nftrace import RuleVerdict
from tracer.ping.pathstate import BAD_ROUTE_TYPES, FAILED_NEIGHBOUR, HOST, PathState
from tracer.ping.pathtrace import PathTrace

ICMP_UNREACHABLE = {
    0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
    3: "port unreachable", 4: "fragmentation needed", 9: "network prohibited",
    10: "host prohibited", 13: "communication administratively prohibited",
}
ICMP6_UNREACHABLE = {
    0: "no route", 1: "administratively prohibited", 3: "address unreachable",
    4: "port unreachable",
}
ROUTING_DROPS = {"IP_INADDRERRORS", "IP_OUTNOROUTES", "IP_INNOROUTES", "IP_INVALID_DEST"}
NEIGH_DROPS = {"NEIGH_FAILED", "NEIGH_CREATEFAIL", "NEIGH_QUEUEFULL", "NEIGH_DEAD"}


# A hint's kind decides its place in the verdict: the most specific root
# cause first (a device that is down explains a missing route, a missing
# route explains a silent trace), the fallbacks that only say where the
# trace went quiet last.  Lower comes first; findings before possibles.
PRECEDENCE = {
    "device-down": 10, "no-carrier": 11, "not-a-bridge-port": 12, "mtu": 15,
    "rp-filter": 19, "no-route": 20, "bad-route": 21, "neighbour-failed": 22,
    "forwarding-disabled": 25, "internal-network": 29, "isolation": 30, "firewall-rule": 31,
    "icc-disabled": 34, "no-snat": 35, "netfilter-unnamed": 36, "wrong-address": 40,
    "no-listener": 41, "dns-no-resolver": 42, "dns-unreachable": 43, "dns-nxdomain": 44,
    "dns-refused": 44, "dns-error": 44, "dns-no-answer": 46, "icmp-error": 45,
    "no-shared-network": 50,
    "reached-no-answer": 90, "never-left": 91, "last-seen": 92,
}


@dataclass(frozen=True)
class Hint:
    kind: str              # a key of PRECEDENCE
    text: str
    finding: bool          # True: trace and host state both support it

    @property
    def precedence(self) -> int:
        return PRECEDENCE[self.kind]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "text": self.text, "finding": self.finding}


@dataclass
class HostState:
    """The host settings a diagnosis may consult; injectable for tests."""

    read_sysctl: Callable[[str], str | None] = field(default=lambda name: _read_sysctl(name))
    link_up: Callable[[str], bool | None] = field(default=lambda name: _link_up(name))


def _read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def _link_up(name: str) -> bool | None:
    """IFF_UP of a host-netns device, None if it does not exist."""
    try:
        return bool(int(Path(f"/sys/class/net/{name}/flags").read_text(), 16) & 1)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class DnsFacts:
    """A --dns probe: the question, the server asked, and what came back."""

    name: str
    server: str
    rcode: str | None               # None: no answer at all
    addresses: tuple[str, ...]
    embedded: bool                  # docker's resolver at 127.0.0.11


@dataclass
class Context:
    """What the diagnosis knows beyond the trace."""

    family: int                       # 4 or 6
    proto: int
    port: int | None
    destination: str                  # label for messages
    src_networks: set[str]
    dst_networks: set[str]
    dst_netns: int | None             # the destination container's netns
    host_devices: list[str]           # host-side devices on the expected path
    socket_errors: list[str]
    icmp_errors: list[tuple[int, int]]
    tcp_reset: bool
    source: str = "the source"
    src_address: str | None = None    # the source container's own (private) address
    dst_address: str | None = None
    outside: bool = False             # destination is neither a container nor docker's
    src_docker_networks: tuple[Network, ...] = ()
    same_network: bool = False        # both ends on one docker network
    size: int | None = None           # --size: bytes of the whole IP packet, DF set
    icmp_mtu: int | None = None       # next-hop MTU an ICMP "fragmentation needed" named
    nft_verdicts: list[RuleVerdict] = field(default_factory=list)
    dns: DnsFacts | None = None


def icmp_error_text(family: int, kind: int, code: int) -> str:
    if (family, kind) in ((4, 3), (6, 1)):
        names = ICMP_UNREACHABLE if family == 4 else ICMP6_UNREACHABLE
        return f"destination unreachable ({names.get(code, f'code {code}')})"
    if (family, kind) in ((4, 11), (6, 3)):
        return "time exceeded (TTL or hop limit ran out: a routing loop?)"
    return f"ICMP type {kind} code {code}"


def diagnose(trace: PathTrace, rule_hits: list[RuleHit], ctx: Context,
             host: HostState | None = None, state: PathState | None = None) -> list[Hint]:
    """Every hint the evidence supports, most specific root cause first."""
    host = host or HostState()
    reasons = {hop.item.drop_reason for hop in trace.request_drops + trace.reply_drops}
    hints = _firewall(rule_hits, ctx, reasons)
    hints += _forwarding(trace, ctx, host, reasons)
    hints += _routing(ctx, reasons, state)
    if state is not None:
        hints += _devices(state, ctx, reasons)
        hints += _nat(trace, ctx, state, reasons)
    elif any(host.link_up(device) is False for device in ctx.host_devices):
        hints += [Hint("device-down", f"interface {device} on the probe's path is down "
                                      f"(ip link set {device} up)", True)
                  for device in ctx.host_devices if host.link_up(device) is False]
    hints += _dns(trace, ctx, state) if ctx.dns else _answers(ctx, state)
    kinds = {h.kind for h in hints}
    if ctx.src_networks and ctx.dst_networks and not ctx.src_networks & ctx.dst_networks \
            and "isolation" not in kinds:
        hints.append(Hint("no-shared-network",
            f"source and destination share no docker network (source: "
            f"{', '.join(sorted(ctx.src_networks))}; destination: "
            f"{', '.join(sorted(ctx.dst_networks))}); docker isolates networks by default",
            "firewall-rule" in kinds))
    if not any(h.finding for h in hints):
        hints += _where_it_went_quiet(trace, ctx)
    return sorted(hints, key=lambda h: (not h.finding, h.precedence))


def _firewall(rule_hits: list[RuleHit], ctx: Context, reasons: set) -> list[Hint]:
    hints = []
    dropping = [hit for hit in rule_hits if hit.drops]
    for hit in dropping:
        chain = hit.counter.chain
        rule = describe(hit)
        if chain.startswith("DOCKER-ISOLATION"):
            hints.append(Hint("isolation",
                f"docker isolates these networks from each other ({rule}); "
                "connect both containers to one network (docker network connect)", True))
        else:
            hints.append(Hint("firewall-rule",
                              f"a firewall rule in chain {chain} drops the probe: {rule}",
                              "NETFILTER_DROP" in reasons or not reasons))
    # nftables' own trace names native nftables rules; an iptables-nft rule it
    # names too is already told above, from its counter.
    told = {(hit.counter.table, hit.counter.chain) for hit in dropping}
    for verdict in ctx.nft_verdicts:
        if verdict.drops and (verdict.table, verdict.chain) not in told:
            told.add((verdict.table, verdict.chain))
            if verdict.chain.startswith("DOCKER-ISOLATION"):
                hints.append(Hint("isolation",
                    f"docker isolates these networks from each other ({verdict.describe()}); "
                    "connect both containers to one network (docker network connect)", True))
            else:
                hints.append(Hint("firewall-rule", f"a firewall rule in chain {verdict.chain} "
                                                   f"drops the probe: {verdict.describe()}",
                                  True))
    if "NETFILTER_DROP" in reasons and not told:
        hints.append(Hint("netfilter-unnamed",
                          "netfilter dropped the probe, but no iptables counter moved and no "
                          "nftables trace named a rule: look for an nftables rule "
                          "(nft list ruleset) or a chain policy", True))
    return hints


def _forwarding(trace: PathTrace, ctx: Context, host: HostState, reasons: set) -> list[Hint]:
    """Forwarding disabled: the probe entered the host but was never forwarded."""
    sysctl = "net.ipv4.ip_forward" if ctx.family == 4 else "net.ipv6.conf.all.forwarding"
    forwarded = any(h.item.event.hook == "FORWARD" for h in trace.request)
    if host.read_sysctl(sysctl) != "0" or forwarded:
        return []
    evidence = bool(reasons & ROUTING_DROPS) or bool(trace.request)
    return [Hint("forwarding-disabled",
                 f"IP forwarding is disabled on the host ({sysctl}=0), so it does not route "
                 "container traffic; docker normally sets it to 1", evidence)]


def _routing(ctx: Context, reasons: set, state: PathState | None) -> list[Hint]:
    hints = []
    for route in state.routes if state else ():
        where = f"{route.place}'s" if route.place != HOST else "the host's"
        if route.kind == "none":
            hints.append(Hint("no-route", f"{route.place} has no route to "
                                          f"{route.destination} (ip route: no matching "
                                          "route, no default)", True))
        elif route.kind in BAD_ROUTE_TYPES:
            hints.append(Hint("bad-route", f"{where} route to {route.destination} is a "
                                           f"{route.kind} route: it discards the probe "
                                           f"(ip route show type {route.kind})", True))
    for neighbour in state.neighbours if state else ():
        if neighbour.state in FAILED_NEIGHBOUR:
            hints.append(Hint("neighbour-failed",
                f"in {neighbour.place}, the next hop {neighbour.address} on "
                f"{neighbour.device} does not answer ARP/NDP (neighbour state "
                f"{neighbour.state}): the address is not on that link, or it is down", True))
    told = {h.kind for h in hints}
    for reason in sorted(r for r in reasons & NEIGH_DROPS if r):
        if "neighbour-failed" not in told:
            hints.append(Hint("neighbour-failed",
                f"the neighbour (ARP/NDP) lookup for the next hop failed ({reason}): the "
                "address is not on that link, or the host is down", True))
    if (reasons & {"IP_OUTNOROUTES", "IP_INNOROUTES"}
            or "Network is unreachable" in ctx.socket_errors) and not told & {"no-route",
                                                                              "bad-route"}:
        hints.append(Hint("no-route", f"there is no route to {ctx.destination} from "
                                      "the source", True))
    return hints


def _devices(state: PathState, ctx: Context, reasons: set) -> list[Hint]:
    hints = []
    for device in state.devices:
        where = device.name if device.place == HOST else f"{device.name} in {device.place}"
        if not device.up:
            command = "ip link set" if device.place == HOST else \
                f"nsenter -n -t <pid of {device.place}> ip link set"
            hints.append(Hint("device-down", f"interface {where} on the probe's path is "
                                             f"down ({command} {device.name} up)", True))
        elif not device.carrier:
            hints.append(Hint("no-carrier", f"interface {where} is up but has no carrier: "
                                            "the other end of its veth pair is down", True))
    for port in state.bridge_ports:
        if port.master != port.bridge:
            now = f"a port of {port.master}" if port.master else "a port of no bridge"
            hints.append(Hint("not-a-bridge-port",
                f"{port.veth}, the host end of {port.container}'s veth, is {now}; docker "
                f"network {port.network} needs it in bridge {port.bridge} "
                f"(ip link set {port.veth} master {port.bridge})", True))
    if ctx.size:
        too_small = [d for d in state.devices if d.mtu and d.mtu < ctx.size]
        evidence = ("Message too long" in ctx.socket_errors or ctx.icmp_mtu is not None
                    or "PKT_TOO_BIG" in reasons or any(
                        (ctx.family, k, c) in ((4, 3, 4), (6, 2, 0))
                        for k, c in ctx.icmp_errors))
        said = f"; the router answered: next-hop MTU {ctx.icmp_mtu}" if ctx.icmp_mtu else ""
        for device in too_small:
            where = device.name if device.place == HOST else \
                f"{device.name} in {device.place}"
            hints.append(Hint("mtu", f"the {ctx.size}-byte probe (DF set) is larger than the "
                                     f"MTU of {where} ({device.mtu}){said}", evidence))
        if evidence and not too_small:
            hints.append(Hint("mtu", f"the {ctx.size}-byte probe (DF set) does not fit the "
                                     f"path MTU{said or ' (a device beyond this host)'}",
                              True))
    hints += _reverse_path(state, ctx, reasons)
    return hints


def _reverse_path(state: PathState, ctx: Context, reasons: set) -> list[Hint]:
    """Strict rp_filter drops what enters a device the host would not route
    the sender back through: the probe, and the ARP before it."""
    back = state.route(HOST, ctx.src_address) if ctx.src_address else None
    for port in state.bridge_ports:
        if port.container != ctx.source or state.rp_filter.get(port.bridge) != 1:
            continue
        if back is not None and back.device != port.bridge:
            return [Hint("rp-filter",
                f"strict reverse-path filtering (rp_filter=1) on {port.bridge} drops what "
                f"{ctx.source} sends, its ARP included: the host routes {ctx.src_address} "
                f"back via {back.device or back.kind}, not {port.bridge} (ip route get "
                f"{ctx.src_address}: a stray route?)", True)]
    if "IP_RPFILTER" in reasons:
        strict = [name for name, value in state.rp_filter.items() if value == 1]
        return [Hint("rp-filter",
            f"reverse-path filtering dropped the probe (rp_filter=1, strict, on "
            f"{', '.join(strict) or 'the ingress device'}): the route back to its source "
            "does not leave through the device it came in on", True)]
    return []


def _nat(trace: PathTrace, ctx: Context, state: PathState, reasons: set) -> list[Hint]:
    """Docker's NAT and network switches, expected against what was seen."""
    hints = []
    for network in ctx.src_docker_networks:
        if ctx.outside and network.internal:
            hints.append(Hint("internal-network",
                f"{ctx.source} is on docker network {network.name}, which is internal "
                "(docker network create --internal): docker gives it no way out", True))
        if ctx.same_network and not network.icc:
            hints.append(Hint("icc-disabled",
                f"docker network {network.name} has enable_icc=false: docker drops traffic "
                "between its containers", "NETFILTER_DROP" in reasons))
    host_route = state.route(HOST)
    if not (ctx.outside and ctx.src_address and host_route and host_route.device):
        return hints
    leaked = [h for h in trace.request if h.item.event.hook == "tx"
              and h.item.interface is not None and h.item.interface.role == ROLE_HOST
              and h.item.event.ifname == host_route.device and h.item.event.src == ctx.src_address]
    if not leaked:
        return hints
    why = ""
    for network in ctx.src_docker_networks:
        if not network.masquerade:
            why = f"; docker network {network.name} has enable_ip_masquerade=false"
        elif not any(subnet in rule for subnet in network.subnets
                     for rule in state.masquerade_rules):
            subnet = network.subnets[0] if network.subnets else "its subnet"
            why = (f"; iptables nat POSTROUTING has no MASQUERADE rule for {subnet} (docker "
                   f"adds -A POSTROUTING -s {subnet} ! -o {network.bridge} -j MASQUERADE)")
    hints.append(Hint("no-snat",
        f"the probe left the host on {host_route.device} still carrying {ctx.source}'s "
        f"private source {ctx.src_address}: it was not SNATed, so no answer can come "
        f"back{why}", True))
    return hints


def _answers(ctx: Context, state: PathState | None) -> list[Hint]:
    """ICMP errors, resets, and what listens at the destination."""
    hints = []
    proto = "tcp" if ctx.proto == socket.IPPROTO_TCP else "udp"
    listening = ""
    for place, sockets in (state.listeners.items() if state else ()):
        on_port = [s for s in sockets if s.port == ctx.port]
        if on_port and ctx.dst_address and not any(s.accepts(ctx.dst_address)
                                                   for s in on_port):
            hints.append(Hint("wrong-address",
                f"in {place}, {proto} port {ctx.port} is bound to "
                f"{', '.join(s.address for s in on_port)} only, not to {ctx.dst_address} "
                "(the service listens on the wrong address; bind it to 0.0.0.0)", True))
        elif not on_port:
            listening = (f"; in {place}, {proto} sockets listen on: "
                         f"{', '.join(f'{s.address}:{s.port}' for s in sockets[:6]) or 'none'}")
    refusals = []
    for kind, code in ctx.icmp_errors:
        if (ctx.family, kind, code) in ((4, 3, 3), (6, 1, 4)) and ctx.port is not None:
            refusals.append(f"nothing listens on port {ctx.port} at {ctx.destination} (the "
                            f"host answered: {icmp_error_text(ctx.family, kind, code)})")
        elif (ctx.family, kind, code) not in ((4, 3, 4), (6, 2, 0)):   # MTU: told above
            hints.append(Hint("icmp-error", "an ICMP error came back: "
                                            f"{icmp_error_text(ctx.family, kind, code)}", True))
    refused = ctx.tcp_reset or "Connection refused" in ctx.socket_errors
    if ctx.proto == socket.IPPROTO_TCP and refused:
        refusals.append(f"nothing listens on TCP port {ctx.port} at {ctx.destination} "
                        "(connection refused: a TCP reset came back)")
    if not refusals and listening:
        refusals.append(f"no {proto} socket listens on port {ctx.port} at {ctx.destination}")
    hints += [Hint("no-listener", text + listening, True) for text in refusals]
    return hints


def _dns(trace: PathTrace, ctx: Context, state: PathState | None) -> list[Hint]:
    """What the resolver said, or why it said nothing."""
    facts = ctx.dns
    server = f"docker's embedded DNS ({facts.server})" if facts.embedded else facts.server
    if facts.rcode == "NXDOMAIN":
        known = (" (docker's resolver knows the containers of the user-defined networks "
                 "the source is on, by name and alias, and forwards other names to the "
                 "host's resolvers)") if facts.embedded else ""
        return [Hint("dns-nxdomain", f"{server} answered NXDOMAIN: {facts.name} does not "
                                     f"exist there{known}", True)]
    if facts.rcode == "REFUSED":
        return [Hint("dns-refused", f"{server} refused the query for {facts.name} (REFUSED: "
                                    "it does not serve this client or this zone)", True)]
    if facts.rcode is not None:
        what = "no address" if facts.rcode == "NOERROR" else facts.rcode
        return [Hint("dns-error", f"{server} answered {what} for {facts.name}", True)]
    hints = []
    if facts.embedded and state is not None:
        sockets = [s for found in state.listeners.values() for s in found
                   if s.address == facts.server]
        if not sockets:
            hints.append(Hint("dns-no-resolver",
                f"nothing listens on {facts.server} in {ctx.source}: docker's embedded "
                "resolver (a socket of dockerd, reached through a DNAT in the container's "
                "netns) is gone; restart the container or dockerd", True))
    refused = any((ctx.family, k, c) in ((4, 3, 3), (6, 1, 4)) for k, c in ctx.icmp_errors)
    if refused or "Connection refused" in ctx.socket_errors:
        hints.append(Hint("dns-unreachable", f"no DNS server listens at {server}: port 53 "
                                             "answered port unreachable", True))
    elif not hints and trace.request:
        last = trace.request[-1]
        hints.append(Hint("dns-no-answer", f"the query reached {last.label} and {server} "
                                           "never answered (a resolver that is down, slow "
                                           "or firewalled)", True))
    return hints


def _where_it_went_quiet(trace: PathTrace, ctx: Context) -> list[Hint]:
    if ctx.dst_netns is not None and trace.reached(ctx.dst_netns):
        return [Hint("reached-no-answer", f"the probe reached {ctx.destination} but nothing "
                     "answered (a firewall inside it, or the service ignores the probe)", True)]
    if not trace.request:
        return [Hint("never-left", "the probe never left the source's network namespace "
                     "(check its routes and addresses)", True)]
    last = trace.request[-1]
    return [Hint("last-seen", f"the probe was last seen at {last.label} "
                 f"({last.item.event.hook}) and nothing after it: no drop was reported, so "
                 "the packet was lost beyond this host or not answered", False)]
