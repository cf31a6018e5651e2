"""Why a probe did not get through: the trace's evidence joined with the
host's state.  A hint is a "finding" only when both support it; otherwise
it is offered as a "possible" cause.  General by construction: each rule
keys on a drop reason, an ICMP error, a moved firewall counter or a host
setting, not on a named scenario."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracer.pathtrace import PathTrace
from tracer.rules import RuleHit, describe

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


@dataclass(frozen=True)
class Hint:
    text: str
    finding: bool          # True: trace and host state both support it

    def to_dict(self) -> dict:
        return {"text": self.text, "finding": self.finding}


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


def icmp_error_text(family: int, kind: int, code: int) -> str:
    if (family, kind) in ((4, 3), (6, 1)):
        names = ICMP_UNREACHABLE if family == 4 else ICMP6_UNREACHABLE
        return f"destination unreachable ({names.get(code, f'code {code}')})"
    if (family, kind) in ((4, 11), (6, 3)):
        return "time exceeded (TTL or hop limit ran out: a routing loop?)"
    return f"ICMP type {kind} code {code}"


def diagnose(trace: PathTrace, rule_hits: list[RuleHit], ctx: Context,
             host: HostState | None = None) -> list[Hint]:
    host = host or HostState()
    hints: list[Hint] = []
    drops = trace.request_drops + trace.reply_drops
    reasons = {hop.item.drop_reason for hop in drops}

    # A firewall rule whose counter moved during the probe, with the drop seen.
    dropping = [hit for hit in rule_hits if hit.drops]
    for hit in dropping:
        chain = hit.counter.chain
        rule = describe(hit)
        if chain.startswith("DOCKER-ISOLATION"):
            hints.append(Hint(
                f"docker isolates these networks from each other ({rule}); "
                "connect both containers to one network (docker network connect)", True))
        else:
            hints.append(Hint(f"a firewall rule in chain {chain} drops the probe: {rule}",
                              "NETFILTER_DROP" in reasons or not drops))
    if "NETFILTER_DROP" in reasons and not dropping:
        hints.append(Hint("netfilter dropped the probe, but no iptables counter moved: look "
                          "for an nftables rule (nft list ruleset) or a chain policy", True))

    # Forwarding disabled: the probe entered the host but was never forwarded.
    sysctl = "net.ipv4.ip_forward" if ctx.family == 4 else "net.ipv6.conf.all.forwarding"
    forwarded = any(h.item.event.hook == "FORWARD" for h in trace.request)
    if host.read_sysctl(sysctl) == "0" and not forwarded:
        evidence = bool(reasons & ROUTING_DROPS) or bool(trace.request)
        hints.append(Hint(f"IP forwarding is disabled on the host ({sysctl}=0), so it does "
                          "not route container traffic; docker normally sets it to 1",
                          evidence))

    for reason in sorted(r for r in reasons & NEIGH_DROPS if r):
        hints.append(Hint(f"the neighbour (ARP/NDP) lookup for the next hop failed "
                          f"({reason}): the address is not on that link, or the host is down",
                          True))
    if reasons & {"IP_OUTNOROUTES", "IP_INNOROUTES"} or "Network is unreachable" in \
            ctx.socket_errors:
        hints.append(Hint(f"there is no route to {ctx.destination} from the source", True))

    for device in ctx.host_devices:
        if host.link_up(device) is False:
            hints.append(Hint(f"interface {device} on the probe's path is down "
                              f"(ip link set {device} up)", True))

    for kind, code in ctx.icmp_errors:
        text = icmp_error_text(ctx.family, kind, code)
        if (ctx.family, kind, code) in ((4, 3, 3), (6, 1, 4)):
            hints.append(Hint(f"nothing listens on port {ctx.port} at {ctx.destination} "
                              f"(the host answered: {text})", True))
        else:
            hints.append(Hint(f"an ICMP error came back: {text}", True))
    if ctx.proto == 6 and (ctx.tcp_reset or "Connection refused" in ctx.socket_errors):
        hints.append(Hint(f"nothing listens on TCP port {ctx.port} at {ctx.destination} "
                          "(connection refused: a TCP reset came back)", True))

    if ctx.src_networks and ctx.dst_networks and not ctx.src_networks & ctx.dst_networks \
            and not any("isolates" in h.text for h in hints):
        hints.append(Hint(
            f"source and destination share no docker network (source: "
            f"{', '.join(sorted(ctx.src_networks))}; destination: "
            f"{', '.join(sorted(ctx.dst_networks))}); docker isolates networks by default",
            bool(dropping)))

    if not hints:
        if ctx.dst_netns is not None and trace.reached(ctx.dst_netns):
            hints.append(Hint(f"the probe reached {ctx.destination} but nothing answered "
                              "(a firewall inside it, or the service ignores the probe)", True))
        elif not trace.request:
            hints.append(Hint("the probe never left the source's network namespace "
                              "(check its routes and addresses)", True))
        else:
            last = trace.request[-1]
            hints.append(Hint(f"the probe was last seen at {last.label} ({last.item.event.hook})"
                              " and nothing after it: no drop was reported, so the packet was "
                              "lost beyond this host or not answered", False))
    return hints
