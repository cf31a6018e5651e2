"""trace-ping's own probes, sent from inside the source's network namespace.

A socket keeps the netns it was created in, so it is opened there
(tracer.ping.netns) and then used from the main thread.  No binary is needed inside the
container.  Each probe carries an identity the kernel filter can match: a
random ICMP echo identifier, or the TCP/UDP source port we bound.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import select
import socket
import struct
import time
from dataclasses import dataclass

from tracer.ping import netns


def open_socket(netns_path: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket in the netns at `netns_path` (None: our own)."""
    return netns.run_in(netns_path, lambda: socket.socket(family, kind, proto))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass
class Outcome:
    """What the source's socket saw for one probe."""

    seq: int
    sent_ns: int                     # CLOCK_MONOTONIC, the clock BPF timestamps use
    rtt_ns: int | None = None        # nanoseconds, when an answer came back
    error: str | None = None         # e.g. "connection refused", "no route to host"
    icmp_error: tuple[int, int] | None = None   # (type, code) of an ICMP error for it
    icmp_mtu: int | None = None      # the next-hop MTU a "fragmentation needed" carried
    answer: object = None            # a DNS probe's parsed answer (tracer.ping.dns.DnsAnswer)


# IP_MTU_DISCOVER / IPV6_MTU_DISCOVER = *_PMTUDISC_DO: set DF, never fragment
# locally; a too-big probe fails with EMSGSIZE or draws "fragmentation needed".
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_DO = 10, 23, 2
HEADERS = {socket.AF_INET: 20, socket.AF_INET6: 40}   # IP header bytes before the payload
PROBE_MARK = b"cntrace-trace-ping"


class Probe:
    """Base: one socket, a filter identity, outcomes by sequence number."""

    sock: socket.socket

    def __init__(self, netns_path: str | None, dst: str, port: int | None) -> None:
        self.netns_path = netns_path
        self.dst = dst
        self.port = port
        self.outcomes: dict[int, Outcome] = {}
        version = ipaddress.ip_address(dst).version
        self.family = socket.AF_INET6 if version == 6 else socket.AF_INET

    def _bind_any_port(self, kind: int) -> None:
        """A socket bound to an ephemeral source port: the probe's identity."""
        self.sock = open_socket(self.netns_path, self.family, kind)
        self.sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        self.sport = self.sock.getsockname()[1]
        self.sock.setblocking(False)

    def set_dont_fragment(self) -> None:
        if self.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, PMTUDISC_DO)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, PMTUDISC_DO)

    def payload(self, size: int | None, headers: int, seq: int) -> bytes:
        """Our mark, padded so the whole IP packet is `size` bytes."""
        mark = PROBE_MARK + b" %d" % seq
        return mark.ljust(max(len(mark), (size or 0) - HEADERS[self.family] - headers), b".")

    def close(self) -> None:
        self.sock.close()


class IcmpEchoProbe(Probe):
    """ICMP(v6) echo over a raw socket, with a random identifier."""

    def __init__(self, netns_path: str | None, dst: str, size: int | None = None) -> None:
        super().__init__(netns_path, dst, None)
        self.ident = random.randint(1, 0xFFFF)
        self.size = size
        proto = socket.IPPROTO_ICMPV6 if self.family == socket.AF_INET6 else socket.IPPROTO_ICMP
        self.sock = open_socket(netns_path, self.family, socket.SOCK_RAW, proto)
        self.sock.setblocking(False)
        if size:
            self.set_dont_fragment()

    @property
    def echo_types(self) -> tuple[int, int]:
        return (128, 129) if self.family == socket.AF_INET6 else (8, 0)

    def send(self, seq: int) -> None:
        request, _ = self.echo_types
        payload = self.payload(self.size or 60, 8, seq)
        header = struct.pack("!BBHHH", request, 0, 0, self.ident, seq)
        csum = 0 if self.family == socket.AF_INET6 else checksum(header + payload)
        packet = struct.pack("!BBHHH", request, 0, csum, self.ident, seq) + payload
        outcome = Outcome(seq, time.monotonic_ns())
        self.outcomes[seq] = outcome
        try:
            self.sock.sendto(packet, (self.dst, 0))
        except OSError as exc:
            outcome.error = os.strerror(exc.errno) if exc.errno else str(exc)

    def receive(self, timeout: float) -> None:
        _, reply = self.echo_types
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                return
            data, _ = self.sock.recvfrom(65535)
            now = time.monotonic_ns()
            if self.family == socket.AF_INET:
                data = data[(data[0] & 0x0F) * 4:]   # raw IPv4 sockets include the IP header
            if len(data) < 8:
                continue
            kind, code, _, ident, seq = struct.unpack("!BBHHH", data[:8])
            if kind == reply and ident == self.ident and seq in self.outcomes:
                outcome = self.outcomes[seq]
                outcome.rtt_ns = outcome.rtt_ns or now - outcome.sent_ns
                return
            elif kind != reply and len(data) >= 8 + 8:
                self._match_error(kind, code, data[8:], _next_hop_mtu(self.family, data))

    def _match_error(self, kind: int, code: int, quoted: bytes, mtu: int | None) -> None:
        if self.family == socket.AF_INET:
            if len(quoted) < 20:
                return
            quoted = quoted[(quoted[0] & 0x0F) * 4:]
        else:
            quoted = quoted[40:]
        if len(quoted) < 8:
            return
        _, _, _, ident, seq = struct.unpack("!BBHHH", quoted[:8])
        if ident == self.ident and seq in self.outcomes:
            self.outcomes[seq].icmp_error = (kind, code)
            self.outcomes[seq].icmp_mtu = mtu


def _next_hop_mtu(family: int, icmp: bytes) -> int | None:
    """The MTU of IPv4 "fragmentation needed" (RFC 1191) or IPv6 "packet too big"."""
    if family == socket.AF_INET and icmp[:2] == b"\x03\x04":
        return struct.unpack("!H", icmp[6:8])[0] or None
    if family == socket.AF_INET6 and icmp[0] == 2:
        return struct.unpack("!I", icmp[4:8])[0] or None
    return None


class TcpConnectProbe(Probe):
    """One TCP connect from a bound source port.  The kernel retransmits the
    SYN itself, so --count > 1 adds nothing: only the first probe is sent."""

    def __init__(self, netns_path: str | None, dst: str, port: int) -> None:
        super().__init__(netns_path, dst, port)
        self._bind_any_port(socket.SOCK_STREAM)
        self._pending: int | None = None

    def send(self, seq: int) -> None:
        if seq > 1:
            return
        self.outcomes[seq] = Outcome(seq, time.monotonic_ns())
        self._pending = seq
        err = self.sock.connect_ex((self.dst, self.port))
        if err not in (0, errno.EINPROGRESS):
            self.outcomes[seq].error = os.strerror(err)
            self._pending = None

    def receive(self, timeout: float) -> None:
        if self._pending is None:
            return
        outcome = self.outcomes[self._pending]
        _, writable, _ = select.select([], [self.sock], [], timeout)
        if not writable:
            return
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            outcome.rtt_ns = time.monotonic_ns() - outcome.sent_ns
        else:
            outcome.error = os.strerror(err)
        self._pending = None


class UdpProbe(Probe):
    """UDP datagrams from one bound, connected socket: an ICMP port
    unreachable surfaces as ECONNREFUSED, an answer as a datagram."""

    def __init__(self, netns_path: str | None, dst: str, port: int,
                 size: int | None = None) -> None:
        super().__init__(netns_path, dst, port)
        self.size = size
        self._bind_any_port(socket.SOCK_DGRAM)
        if size:
            self.set_dont_fragment()
        self.sock.connect((self.dst, self.port))

    def datagram(self, seq: int) -> bytes:
        return self.payload(self.size, 8, seq)

    def answered(self, outcome: Outcome, data: bytes) -> bool:
        """Whether `data` answers the probe: any datagram does."""
        return True

    def send(self, seq: int) -> None:
        outcome = Outcome(seq, time.monotonic_ns())
        self.outcomes[seq] = outcome
        try:
            self.sock.send(self.datagram(seq))
        except OSError as exc:
            outcome.error = os.strerror(exc.errno) if exc.errno else str(exc)

    def receive(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if not select.select([self.sock], [], [], left)[0]:
                return
            latest = max(self.outcomes.values(), key=lambda o: o.seq)
            try:
                data = self.sock.recv(65535)
            except OSError as exc:
                latest.error = os.strerror(exc.errno)
                continue
            if self.answered(latest, data):
                latest.rtt_ns = latest.rtt_ns or time.monotonic_ns() - latest.sent_ns
                return


class DnsProbe(UdpProbe):
    """A DNS query for one name, from the source's netns, to its resolver."""

    def __init__(self, netns_path: str | None, server: str, name: str) -> None:
        from tracer.ping import dns

        super().__init__(netns_path, server, dns.PORT)
        self.name = name
        self._dns = dns

    def datagram(self, seq: int) -> bytes:
        return self._dns.build_query(self.name, self._txid(seq))

    def answered(self, outcome: Outcome, data: bytes) -> bool:
        answer = self._dns.parse_response(data, self._txid(outcome.seq))
        if answer is not None:
            outcome.answer = answer
        return answer is not None

    def _txid(self, seq: int) -> int:
        return (self.sport + seq) & 0xFFFF
