"""DNS on the wire and in resolv.conf: enough to ask one question and read its answer.

A container's "network is down" is often a resolver that does not answer, or answers
NXDOMAIN or REFUSED.  To tell these apart without a resolver library or any binary in the
container, cntrace sends one query from a socket opened in the container's netns
(tracer/ping/probe_socket.py) and reads the answer here.  resolv.conf is read the way
glibc's res_init reads it, because what matters is which servers the container's libc
will ask, not what the file seems to say: glibc ignores indented keywords, a fourth
nameserver and an address it cannot parse, and so does this parser.

Pure functions over bytes and text; read_resolv_conf is the only I/O.
"""

from __future__ import annotations

import ipaddress
import re
import string
import struct
from dataclasses import dataclass

QTYPE_A = 1
QTYPE_AAAA = 28
QCLASS_IN = 1
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
# Docker's resolver for containers on user-defined networks, written into their resolv.conf.
DOCKER_EMBEDDED_DNS = "127.0.0.11"
PORT = 53

_HEADER = struct.Struct("!HHHHHH")   # id, flags, qdcount, ancount, nscount, arcount
_RR_FIXED = struct.Struct("!HHIH")   # type, class, ttl, rdlength
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-_")
_MAX_NAME_TEXT = 253   # characters without the trailing dot; 255 bytes on the wire
_MAX_NAME_WIRE = 255
_ADDRESS_SIZES = {QTYPE_A: 4, QTYPE_AAAA: 16}


def build_query(name: str, txid: int, qtype: int = QTYPE_A) -> bytes:
    """One recursive (RD) query for `name`, class IN; ValueError names what is wrong."""
    if not 0 <= txid <= 0xFFFF:
        raise ValueError(f"DNS transaction id {txid} is not in 0..65535")
    if not 1 <= qtype <= 0xFFFF:
        raise ValueError(f"DNS query type {qtype} is not in 1..65535")
    header = _HEADER.pack(txid, _FLAG_RD, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", qtype, QCLASS_IN)


def _encode_name(name: str) -> bytes:
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise ValueError(f"empty DNS name {name!r}")
    if len(text) > _MAX_NAME_TEXT:
        raise ValueError(f"DNS name is {len(text)} characters long, the limit is "
                         f"{_MAX_NAME_TEXT}: {name[:40]!r}...")
    wire = bytearray()
    for label in text.split("."):
        if not label:
            raise ValueError(f"empty label (two dots or a leading dot) in DNS name {name!r}")
        if len(label) > 63:
            raise ValueError(f"label {label[:20]!r}... is {len(label)} characters long, "
                             f"the limit is 63, in DNS name {name!r}")
        bad = next((char for char in label if char not in _LABEL_CHARS), None)
        if bad is not None:
            raise ValueError(f"{bad!r} is not allowed in DNS name {name!r}: letters, digits, "
                             "'-' and '_' only (write an IDN in its xn-- form)")
        wire.append(len(label))
        wire += label.encode("ascii")
    wire.append(0)
    return bytes(wire)


@dataclass(frozen=True)
class DnsAnswer:
    """What one response said: its code, its A/AAAA addresses in order, and two flags."""

    txid: int
    rcode: int
    rcode_name: str
    addresses: tuple[str, ...]
    truncated: bool
    authoritative: bool


class _Malformed(Exception):
    """Inside the parser only: the bytes are not a well-formed DNS message."""


class _Short(_Malformed):
    """Inside the parser only: the message ends before what it announces."""


def parse_response(data: bytes, txid: int | None = None) -> DnsAnswer | None:
    """The answer in `data`, or None when it is not a standard-query response (with
    `txid`, when given) or is malformed.  Never raises on bad bytes.

    CNAME and other records in the answer section are stepped over, not followed, so
    `addresses` is every A/AAAA record in order.  When the server set TC, a message cut
    short keeps the addresses read before the cut (RFC 2181 5.1: a truncated answer may
    end anywhere); without TC a short message is malformed.
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        return None
    rid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    opcode = (flags >> 11) & 0xF
    if not flags & _FLAG_QR or opcode != 0 or (txid is not None and rid != txid):
        return None
    truncated = bool(flags & _FLAG_TC)
    addresses: list[str] = []
    try:
        offset = _HEADER.size
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4   # qtype, qclass
            _need(data, offset)
        for _ in range(ancount):
            offset, address = _read_record(data, offset)
            if address is not None:
                addresses.append(address)
    except _Short:
        if not truncated:
            return None
    except _Malformed:
        return None
    rcode = flags & 0xF
    return DnsAnswer(txid=rid, rcode=rcode, rcode_name=RCODES.get(rcode, f"RCODE{rcode}"),
                     addresses=tuple(addresses), truncated=truncated,
                     authoritative=bool(flags & _FLAG_AA))


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise _Short


def _skip_name(data: bytes, offset: int) -> int:
    """The offset just past the (possibly compressed) name at `offset`.

    Every pointer is followed, so a name that points outside the message, points back
    into itself (a loop) or expands past 255 bytes (RFC 1035 3.1, 4.1.4) is malformed
    even though skipping it would need only its first pointer.
    """
    end: int | None = None
    followed: set[int] = set()
    length = 0
    while True:
        _need(data, offset + 1)
        byte = data[offset]
        if byte & 0xC0 == 0xC0:
            _need(data, offset + 2)
            target = (byte & 0x3F) << 8 | data[offset + 1]
            if end is None:
                end = offset + 2
            if target in followed or target >= len(data):
                raise _Malformed
            followed.add(target)
            offset = target
            continue
        if byte & 0xC0:
            raise _Malformed   # 0x40 and 0x80: extended and reserved label types
        length += byte + 1
        if length > _MAX_NAME_WIRE:
            raise _Malformed
        if byte == 0:
            return offset + 1 if end is None else end
        offset += byte + 1


def _read_record(data: bytes, offset: int) -> tuple[int, str | None]:
    """(offset past the record, its address if it is an IN A or AAAA record)."""
    offset = _skip_name(data, offset)
    _need(data, offset + _RR_FIXED.size)
    rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
    offset += _RR_FIXED.size
    _need(data, offset + rdlength)
    size = _ADDRESS_SIZES.get(rtype)
    if rclass != QCLASS_IN or size is None:
        return offset + rdlength, None
    if rdlength != size:
        raise _Malformed
    return offset + rdlength, str(ipaddress.ip_address(data[offset:offset + rdlength]))


@dataclass(frozen=True)
class ResolvConf:
    """What glibc takes from a resolv.conf: at most three servers, the search list, ndots."""

    nameservers: tuple[str, ...]
    search: tuple[str, ...]
    ndots: int


_MAXNS = 3            # glibc's MAXNS: later nameserver lines are ignored
_MAXNDOTS = 15        # glibc's RES_MAXNDOTS: larger values are capped
_DEFAULT_NDOTS = 1
# glibc's MATCH(): the keyword at the very start of the line, then a space or a tab.
_KEYWORD = re.compile(r"(nameserver|domain|search|options)[ \t]+(.*)")
_BLANKS = re.compile(r"[ \t]+")


def parse_resolv_conf(text: str) -> ResolvConf:
    """resolv.conf read as glibc's res_init reads it (glibc 2.26 and later).

    Lines are split on "\\n" only, and words on spaces and tabs, as glibc does: a CRLF
    file leaves "\\r" on each value, which makes every nameserver unparsable.  Comments
    are lines starting with '#' or ';', and text after '#' or ';' on a nameserver line.
    `nameservers` is empty when none parsed: glibc then asks 127.0.0.1.  When there is
    no search or domain line, glibc would take the domain of the host name; that is not
    in the file, so `search` is empty.  LOCALDOMAIN and RES_OPTIONS in the resolving
    process's environment override the file and are not seen here.
    """
    nameservers: list[str] = []
    search: tuple[str, ...] = ()
    ndots = _DEFAULT_NDOTS
    for line in text.split("\n"):
        match = _KEYWORD.match(line)
        if match is None:
            continue
        keyword, value = match.groups()
        words = [word for word in _BLANKS.split(value) if word]
        if not words:
            continue   # glibc skips a keyword with nothing after it
        if keyword == "nameserver":
            address = _nameserver(re.split(r"[;#]", words[0], maxsplit=1)[0])
            if address is not None and len(nameservers) < _MAXNS:
                nameservers.append(address)
        elif keyword == "domain":
            search = (words[0],)
        elif keyword == "search":
            search = tuple(words)
        else:
            for option in words:
                if option.startswith("ndots:"):
                    ndots = min(max(_atoi(option[len("ndots:"):]), 0), _MAXNDOTS)
    return ResolvConf(tuple(nameservers), search, ndots)


def _nameserver(text: str) -> str | None:
    """The address in normal form (an IPv6 scope kept), or None where inet_pton fails."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _atoi(text: str) -> int:
    """C's atoi: the leading integer, 0 when there is none ("ndots:x" means ndots 0)."""
    match = re.match(r"[ \t]*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def read_resolv_conf(path: str) -> ResolvConf:
    """parse_resolv_conf() of the file at `path`; OSError propagates."""
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        return parse_resolv_conf(file.read())
