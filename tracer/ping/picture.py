"""The figure people draw on a whiteboard for one probe: each network
namespace it crossed as a box (the source container, the host, the
destination), the devices it went through inside each, NAT where it
happened, and an X where it stopped.  Under 80 columns; drawn only on a
terminal (or with --picture), since a pipe wants the plain lines."""

from __future__ import annotations

from tracer.host.topology import ROLE_BRIDGE, ROLE_CONTAINER, ROLE_VETH_HOST
from tracer.ping import pathtrace
from tracer.stream.event_text import nat_detail

WIDTH = 76               # plus a 2-space indent: under 80 columns
GAP = 3                  # columns between boxes: "===" where the probe crossed


ROLE_TAGS = {ROLE_VETH_HOST: " (veth)", ROLE_BRIDGE: " (bridge)"}


def _title(hops: list[pathtrace.Hop], fallback: str) -> str:
    for hop in hops:
        iface = hop.item.interface
        if iface is not None and iface.role == ROLE_CONTAINER:
            return iface.container or "container"
        if iface is not None:
            return "host"
    return fallback


def _device(hop: pathtrace.Hop) -> str:
    iface, event = hop.item.interface, hop.item.event
    if iface is None:
        return event.ifname
    if iface.role == ROLE_CONTAINER:
        return f"{event.ifname} {iface.addresses[0].split('/')[0]}" if iface.addresses \
            else event.ifname
    return event.ifname + ROLE_TAGS.get(iface.role, " (uplink)" if iface.uplink else "")


def _lines(hops: list[pathtrace.Hop]) -> list[str]:
    """Devices in the order crossed, NAT as "snat NEW-ADDRESS" where it happened."""
    lines: list[str] = []
    last = None
    for hop in hops:
        event = hop.item.event
        nat = nat_detail(event)
        if nat:
            short = f"{nat.split()[0]} {nat.rsplit(' -> ', 1)[-1]}"
            if short not in lines:
                lines.append(short)
        if event.hook in ("tx", "rx", "FORWARD") and event.ifname != last:
            lines.append(_device(hop))
            last = event.ifname
    return lines


def _columns(result) -> list[tuple[str, list[str]]]:
    """(title, lines) per netns, in the order the request met them."""
    groups: dict[int, list[pathtrace.Hop]] = {}
    for hop in result.trace.request:
        groups.setdefault(hop.item.event.netns, []).append(hop)
    columns = []
    for i, hops in enumerate(groups.values()):
        fallback = result.destination.label if i == len(groups) - 1 else \
            f"netns {hops[0].item.event.netns}"
        columns.append((_title(hops, fallback), _lines(hops) or [hops[0].label]))
    return columns


def _box(title: str, lines: list[str], width: int, height: int) -> list[str]:
    inner = width - 4
    top = f"+- {title[:inner - 1]} "
    rows = [top + "-" * (width - len(top) - 1) + "+"]
    for line in lines + [""] * (height - len(lines)):
        rows.append(f"| {line[:inner]:<{inner}} |")
    rows.append("+" + "-" * (width - 2) + "+")
    return rows


def draw(result) -> list[str]:
    columns = _columns(result)
    trace, dst = result.trace, result.destination
    stopped = not result.reachable and not result.answered
    if not columns:
        columns = [(result.source.label, ["(nothing seen)"])]
    reached_dst = (dst.container is not None and columns[-1][0] == dst.container.name) or \
        any(h.item.event.hook == "INPUT" for h in trace.request)   # an address of a netns crossed
    if stopped:
        why = (f"X {trace.request_drops[0].item.drop_reason}" if trace.request_drops
               else "X stopped here")
        title, lines = columns[-1]
        columns[-1] = (title, [*lines[:-1], f"{lines[-1]}  X", why] if lines else [why])
        if not reached_dst:
            columns.append((dst.label, ["(not reached)"]))
    elif dst.container is None and len(columns) < 3:
        columns.append((dst.label, ["(beyond this host)"]))
    columns = columns[:4]
    width = (WIDTH - GAP * (len(columns) - 1)) // len(columns)
    height = max(len(lines) for _, lines in columns)
    boxes = [_box(title, lines, width, height) for title, lines in columns]
    crossed = len(columns) - (1 if stopped and not reached_dst else 0)
    out = []
    for row in range(height + 2):
        parts = []
        for i, box in enumerate(boxes):
            parts.append(box[row])
            if i < len(boxes) - 1:
                link = "===" if i + 1 < crossed else " X "
                parts.append(link if row == 1 else " " * GAP)
        out.append("  " + "".join(parts).rstrip())
    return out
