"""A tiny authoritative DNS server for the integration tests: fixed answers, NXDOMAIN for
every other name, REFUSED or silence for the names asked for.

cntrace's DNS checks are tested against a resolver whose every answer is known, run in a
throwaway netns, never against a real one.  The response builder here is its own, not
tracer/ping/dns.py's parser turned around, so a misreading of RFC 1035 in tracer/ping/dns.py fails a
test instead of both sides agreeing.  Answers point back at the question's name with a
compression pointer, as real servers do, so the client's pointer handling is exercised.

    python -m tests.integration.dns_server --listen 127.0.0.1 --port 53 \\
        --answer web.test=10.0.0.5 --answer web.test=fd00::5 \\
        --refuse refused.test --silent silent.test

It prints `ready ADDR:PORT` once bound (the real port when --port is 0), answers UDP only,
and exits 0 on SIGTERM or SIGINT.  resolver_in_netns() runs it inside a netns for a test.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.helpers import scaled
from tracer.ping.dns import QTYPE_A, QTYPE_AAAA, RCODES, build_query

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.dns_server"
READY_TIMEOUT = 10.0   # seconds, scaled: a Python start-up inside `ip netns exec`
STOP_TIMEOUT = 5.0
TTL = 60

_RCODE = {name: code for code, name in RCODES.items()}
_HEADER = struct.Struct("!HHHHHH")
_QR, _AA, _RD = 0x8000, 0x0400, 0x0100
_TO_QUESTION_NAME = b"\xc0\x0c"   # the question always starts right after the header


def _name_key(name: str) -> str:
    """The form names are compared in: DNS names are case-insensitive, the root dot optional."""
    return name.lower().rstrip(".")


@dataclass
class Zone:
    """Everything the server knows: addresses by name, and the names it refuses or ignores."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)

    def add_answer(self, name: str, address: str) -> None:
        self.answers.setdefault(_name_key(name), []).append(address)


@dataclass(frozen=True)
class Question:
    txid: int
    flags: int
    name: str           # as sent, without the trailing dot
    qtype: int
    wire: bytes         # the question section, copied into the response


def read_question(data: bytes) -> Question | None:
    """The one question of a query, or None when `data` is not one (compressed names are
    not expected in a query and are not read)."""
    if len(data) < _HEADER.size:
        return None
    txid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & _QR or qdcount != 1:
        return None
    labels: list[str] = []
    offset = _HEADER.size
    while offset < len(data) and data[offset] != 0:
        length = data[offset]
        if length > 63 or offset + 1 + length > len(data):
            return None
        labels.append(data[offset + 1:offset + 1 + length].decode("latin-1"))
        offset += 1 + length
    end = offset + 1 + 4
    if end > len(data):
        return None
    qtype, _qclass = struct.unpack_from("!HH", data, offset + 1)
    return Question(txid, flags, ".".join(labels), qtype, data[_HEADER.size:end])


def _record(qtype: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    rdata = address.packed
    return _TO_QUESTION_NAME + struct.pack("!HHIH", qtype, 1, TTL, len(rdata)) + rdata


def respond(zone: Zone, data: bytes) -> bytes | None:
    """The response to the datagram `data`, or None to stay silent."""
    question = read_question(data)
    if question is None:
        if len(data) < _HEADER.size or data[2] & 0x80:
            return None   # no id to answer to, or a response: never answer those
        txid = struct.unpack_from("!H", data)[0]
        return _HEADER.pack(txid, _QR | _RCODE["FORMERR"], 0, 0, 0, 0)
    key = _name_key(question.name)
    if key in zone.silent:
        return None
    records: list[bytes] = []
    if (question.flags >> 11) & 0xF:
        rcode = _RCODE["NOTIMP"]
    elif key in zone.refuse:
        rcode = _RCODE["REFUSED"]
    elif key not in zone.answers:
        rcode = _RCODE["NXDOMAIN"]
    else:
        rcode = _RCODE["NOERROR"]   # with no records when the name has none of this type
        version = {QTYPE_A: 4, QTYPE_AAAA: 6}.get(question.qtype)
        for text in zone.answers[key]:
            address = ipaddress.ip_address(text)
            if address.version == version:
                records.append(_record(question.qtype, address))
    flags = _QR | _AA | (question.flags & _RD) | (question.flags & 0x7800) | rcode
    header = _HEADER.pack(question.txid, flags, 1, len(records), 0, 0)
    return header + question.wire + b"".join(records)


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the serving loop."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(sock: socket.socket, zone: Zone) -> None:
    """Answer datagrams on `sock` until a signal raises _Stop."""
    while True:
        data, peer = sock.recvfrom(4096)
        reply = respond(zone, data)
        if reply is not None:
            sock.sendto(reply, peer)


def _dns_name(text: str) -> str:
    try:
        build_query(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _answer(text: str) -> tuple[str, str]:
    name, sep, address = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=IP")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{address!r} is not an IPv4 or IPv6 address") from None
    return _dns_name(name), address


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.dns_server",
        description="Authoritative test DNS server: listed names answer, others NXDOMAIN.")
    parser.add_argument("--listen", required=True, type=ipaddress.ip_address,
                        help="address to bind (UDP)")
    parser.add_argument("--port", type=int, default=53, help="port to bind, 0 for any")
    parser.add_argument("--answer", action="append", type=_answer, default=[],
                        metavar="NAME=IP", help="answer NAME with IP (A or AAAA); repeatable")
    parser.add_argument("--refuse", action="append", type=_dns_name, default=[],
                        metavar="NAME", help="answer NAME with REFUSED")
    parser.add_argument("--silent", action="append", type=_dns_name, default=[],
                        metavar="NAME", help="never answer NAME")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    zone = Zone(refuse={_name_key(n) for n in args.refuse},
                silent={_name_key(n) for n in args.silent})
    for name, address in args.answer:
        zone.add_answer(name, address)
    family = socket.AF_INET6 if args.listen.version == 6 else socket.AF_INET
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(args.listen), args.port))
        except OSError as exc:
            print(f"dns_server: cannot bind {args.listen} port {args.port}: {exc.strerror}",
                  file=sys.stderr)
            return 1
        print(f"ready {args.listen}:{sock.getsockname()[1]}", flush=True)
        with contextlib.suppress(_Stop):
            serve(sock, zone)
    return 0


# --- for the tests ---------------------------------------------------------------------

class ResolverNotReady(RuntimeError):
    """The test resolver exited or stayed quiet instead of printing its ready line."""


def _read_ready(proc: subprocess.Popen, timeout: float) -> tuple[str, int]:
    """(address, port) from the resolver's `ready ADDR:PORT` line."""
    buffer = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            raise ResolverNotReady(f"no ready line within {timeout:.0f}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise ResolverNotReady(f"it exited (status {proc.wait()}) before it was ready")
        buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode()
    word, _, bound = line.partition(" ")
    address, _, port = bound.rpartition(":")
    if word != "ready" or not port.isdigit():
        raise ResolverNotReady(f"it printed {line!r} instead of its ready line")
    return address, int(port)


def _stop(proc: subprocess.Popen) -> str:
    """Terminate the resolver, kill it if it lingers, reap it; its stderr."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=scaled(STOP_TIMEOUT))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace").strip()
    proc.stdout.close()
    proc.stderr.close()
    return stderr


@contextlib.contextmanager
def resolver_in_netns(netns: str, address: str, answers: dict[str, str],
                      refuse: Iterable[str] = (), silent: Iterable[str] = (),
                      port: int = 53) -> Iterator[tuple[str, int]]:
    """Run the test resolver inside `netns` (via `ip netns exec NETNS python -m
    tests.integration.dns_server ...`, cwd the repo root, sys.executable), wait for its
    ready line (timeout), yield, and always kill it (terminate, then kill) even if the
    test fails.

    Yields the (address, port) it bound.  `ip netns exec` execs the command rather than
    forking, so the process signalled is the resolver itself.  ResolverNotReady says
    why it did not start, with its stderr.
    """
    args = ["--listen", address, "--port", str(port)]
    for name, ip in answers.items():
        args += ["--answer", f"{name}={ip}"]
    for name in refuse:
        args += ["--refuse", name]
    for name in silent:
        args += ["--silent", name]
    command = ["ip", "netns", "exec", netns, sys.executable, "-m", MODULE, *args]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        try:
            bound = _read_ready(proc, scaled(READY_TIMEOUT))
        except ResolverNotReady as exc:
            raise ResolverNotReady(f"test resolver in netns {netns}: {exc}; "
                                   f"stderr: {_stop(proc) or '(empty)'}") from None
        yield bound
    finally:
        if not proc.stdout.closed:
            _stop(proc)


if __name__ == "__main__":
    sys.exit(main())
