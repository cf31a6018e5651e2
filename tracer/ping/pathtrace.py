"""Turn the events of one probe into a path: hops in each direction, NAT,
drops and ICMP errors.  Pure: events in, PathTrace out."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.host.topology import ROLE_CONTAINER
from tracer.kernel.wire import Event
from tracer.stream.attribution import AttributedEvent
from tracer.stream.event_text import nat_detail, where

ECHO_REQUEST = {1: 8, 58: 128}
ECHO_REPLY = {1: 0, 58: 129}


@dataclass(frozen=True)
class ProbeIdentity:
    """What marks our probe's packets: an ICMP echo id, or our source port."""

    proto: int            # 1, 58, 6 or 17
    ident: int            # echo identifier or source port

    def direction(self, event: Event) -> str | None:
        """"request", "reply", "error" (an ICMP error about our probe) or None."""
        if event.inner_proto:
            return "error"
        if self.proto in ECHO_REQUEST:
            if event.proto != self.proto or event.sport != self.ident:
                return None
            if event.icmp_type == ECHO_REQUEST[self.proto]:
                return "request"
            return "reply" if event.icmp_type == ECHO_REPLY[self.proto] else None
        if event.proto != self.proto:
            return None
        ct = event.conntrack
        if ct is not None and self.ident in (ct.orig.sport, ct.reply.dport):
            o, r = ct.orig, ct.reply
            if (event.src, event.dst) in ((o.src, o.dst), (r.dst, r.src)):
                return "request"
            if (event.src, event.dst) in ((r.src, r.dst), (o.dst, o.src)):
                return "reply"
        if event.sport == self.ident:
            return "request"
        if event.dport == self.ident:
            return "reply"
        return None


@dataclass(frozen=True)
class Hop:
    item: AttributedEvent
    offset_us: float            # since the probe left the source
    noise: str | None = None    # why this event does not decide the probe's fate

    @property
    def label(self) -> str:
        iface = self.item.interface
        if iface is not None and iface.role == ROLE_CONTAINER:
            return f"{iface.container} {iface.name}"
        return where(self.item)

    def to_dict(self) -> dict:
        event, iface = self.item.event, self.item.interface
        return {
            "offset_us": round(self.offset_us, 1),
            "hook": event.hook,
            "device": event.ifname,
            "ifindex": event.ifindex,
            "netns": event.netns,
            "role": iface.role if iface else None,
            "container": iface.container if iface else None,
            "src": event.src,
            "dst": event.dst,
            "nat": nat_detail(event),
            "drop_reason": self.item.drop_reason,
            "drop_location": self.item.drop_location,
            **({"noise": self.noise} if self.noise else {}),
        }


@dataclass
class PathTrace:
    request: list[Hop] = field(default_factory=list)
    reply: list[Hop] = field(default_factory=list)
    request_drops: list[Hop] = field(default_factory=list)
    reply_drops: list[Hop] = field(default_factory=list)
    errors: list[Hop] = field(default_factory=list)     # ICMP errors about the probe
    noise: list[Hop] = field(default_factory=list)      # drops that do not decide its fate

    @property
    def last_request_hop(self) -> Hop | None:
        return self.request[-1] if self.request else None

    def nat(self) -> list[str]:
        seen: list[str] = []
        for hop in self.request + self.reply:
            text = nat_detail(hop.item.event)
            if text and text not in seen:
                seen.append(text)
        return seen

    def reached(self, netns: int) -> bool:
        """Did the request arrive in this netns (e.g. the destination's)?"""
        return any(h.item.event.netns == netns and h.item.event.hook in ("rx", "INPUT")
                   for h in self.request)


def build(items: list[AttributedEvent], identity: ProbeIdentity, sent_ns: int,
          until_ns: int | None = None) -> PathTrace:
    """The path of one probe: events from its send time until `until_ns`."""
    trace = PathTrace()
    for item in sorted(items, key=lambda i: i.event.ts_ns):
        event = item.event
        if event.ts_ns < sent_ns or (until_ns is not None and event.ts_ns >= until_ns):
            continue
        direction = identity.direction(event)
        if direction is None:
            continue
        hop = Hop(item, (event.ts_ns - sent_ns) / 1000)
        if direction == "error":
            trace.errors.append(hop)
        elif event.is_drop:
            (trace.request_drops if direction == "request" else trace.reply_drops).append(hop)
        else:
            (trace.request if direction == "request" else trace.reply).append(hop)
    return trace


NOISE_LEFTOVER = ("the kernel's own copy of a reply trace-ping's socket already received "
                  "(no other socket wanted it)")
NOISE_OTHERHOST = "a copy flooded by the bridge to a device it was not addressed to"
NOISE_OFF_PATH = "seen outside the probe's path (neither source, host nor destination)"


def separate_noise(trace: PathTrace, path_netns: set[int], source_netns: int | None,
                   destination_netns: int | None, answered: bool) -> None:
    """Move the events that do not decide the probe's fate into trace.noise,
    each labelled with why: a raw socket gets a copy of every ICMP packet
    and the kernel then frees its own (NO_SOCKET at ping_rcv); a bridge
    floods a frame whose MAC it has not learnt to every port, where the
    copies die as OTHERHOST, or are delivered to a container off the path
    (and ignored there)."""
    def why(hop: Hop, direction: str) -> str | None:
        event = hop.item.event
        if event.netns not in path_netns:
            return NOISE_OFF_PATH
        if hop.item.drop_reason == "OTHERHOST" and (event.netns != destination_netns
                                                    or direction == "reply"):
            return NOISE_OTHERHOST
        if (answered and direction == "reply" and event.netns == source_netns
                and hop.item.drop_reason == "NO_SOCKET"):
            return NOISE_LEFTOVER
        return None

    for hops in (trace.request, trace.reply):
        trace.noise += [Hop(h.item, h.offset_us, NOISE_OFF_PATH) for h in hops
                        if h.item.event.netns not in path_netns]
        hops[:] = [h for h in hops if h.item.event.netns in path_netns]
    for direction, drops in (("request", trace.request_drops), ("reply", trace.reply_drops)):
        kept = []
        for hop in drops:
            label = why(hop, direction)
            if label:
                trace.noise.append(Hop(hop.item, hop.offset_us, label))
            else:
                kept.append(hop)
        drops[:] = kept


def chain(hops: list[Hop]) -> list[str]:
    """The figure people draw: device after device, NAT where it happens."""
    labels: list[str] = []
    shown_nat: set[str] = set()
    last_device = None
    for hop in hops:
        event = hop.item.event
        nat = nat_detail(event)
        if nat and nat not in shown_nat:
            shown_nat.add(nat)
            labels.append(f"[{nat}]")
        if event.hook in ("tx", "rx", "FORWARD") and hop.label != last_device:
            labels.append(hop.label)
            last_device = hop.label
    return labels
