"""tracer/ping/dns.py against hand-made wire bytes and resolv.conf files, including the ones
Docker writes.  The packets are spelled out byte by byte (with struct for the fixed-size
fields), never produced by the module under test, so a shared misreading of RFC 1035
cannot make both sides agree."""

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracer.ping.dns import (
    DOCKER_EMBEDDED_DNS,
    QTYPE_A,
    QTYPE_AAAA,
    DnsAnswer,
    ResolvConf,
    build_query,
    parse_resolv_conf,
    parse_response,
    read_resolv_conf,
)

TXID = 0x1234
QR_RD_RA = 0x8180            # a recursive resolver's NOERROR answer
QR_AA_RD = 0x8500            # an authoritative answer to an RD query
QR_TC_RD_RA = 0x8380


def header(flags: int = QR_RD_RA, qd: int = 1, an: int = 0, txid: int = TXID) -> bytes:
    return struct.pack("!HHHHHH", txid, flags, qd, an, 0, 0)


# "web.test", class IN, type A: at offset 12, right after the header.
QNAME = b"\x03web\x04test\x00"
QUESTION = QNAME + b"\x00\x01\x00\x01"
TO_QNAME = b"\xc0\x0c"       # a compression pointer to offset 12
TO_TEST = b"\xc0\x10"        # to offset 16: the "test" label of QNAME
ANSWERS_AT = 12 + len(QUESTION)


def rr(owner: bytes, rtype: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, 60, len(rdata)) + rdata


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


CNAME = rr(TO_QNAME, 5, b"\x05alias" + TO_TEST)            # web.test CNAME alias.test
CNAME_TARGET = ANSWERS_AT + len(TO_QNAME) + 10               # where "alias.test" starts
ONE_A = header(an=1) + QUESTION + rr(TO_QNAME, QTYPE_A, v4("10.0.0.5"))


def answer(*addresses: str, rcode: int = 0, tc: bool = False, aa: bool = False) -> DnsAnswer:
    names = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED", 9: "RCODE9"}
    return DnsAnswer(TXID, rcode, names[rcode], addresses, tc, aa)


@pytest.mark.parametrize("data, expected", [
    pytest.param(ONE_A, answer("10.0.0.5"), id="one-A-owner-by-pointer"),
    pytest.param(header(an=1) + QUESTION + rr(QNAME, QTYPE_A, v4("10.0.0.5")),
                 answer("10.0.0.5"), id="one-A-owner-uncompressed"),
    pytest.param(header(an=1) + QUESTION + rr(TO_QNAME, QTYPE_AAAA, v6("fd00::5")),
                 answer("fd00::5"), id="one-AAAA"),
    pytest.param(header(an=3) + QUESTION + rr(TO_QNAME, QTYPE_A, v4("10.0.0.7"))
                 + rr(TO_QNAME, QTYPE_AAAA, v6("fd00::7")) + rr(TO_QNAME, QTYPE_A, v4("10.0.0.6")),
                 answer("10.0.0.7", "fd00::7", "10.0.0.6"), id="mixed-in-wire-order"),
    pytest.param(header(an=2) + QUESTION + CNAME
                 + rr(struct.pack("!H", 0xC000 | CNAME_TARGET), QTYPE_A, v4("10.0.0.8")),
                 answer("10.0.0.8"), id="cname-skipped-pointer-into-its-rdata"),
    pytest.param(header(an=1) + QUESTION + CNAME, answer(), id="cname-only"),
    pytest.param(header(an=1) + QUESTION + rr(TO_QNAME, QTYPE_A, v4("10.0.0.9"), rclass=3),
                 answer(), id="chaos-class-A-skipped"),
    pytest.param(header(an=1) + QUESTION + rr(TO_QNAME, 16, b"\x05hello"),
                 answer(), id="txt-skipped"),
    pytest.param(header(flags=0x8583) + QUESTION, answer(rcode=3, aa=True), id="nxdomain"),
    pytest.param(header(flags=0x8105) + QUESTION, answer(rcode=5), id="refused"),
    pytest.param(header(flags=0x8189) + QUESTION, answer(rcode=9), id="rcode-without-name"),
    pytest.param(header(flags=QR_AA_RD, an=1) + QUESTION + rr(TO_QNAME, QTYPE_A, v4("10.0.0.5")),
                 answer("10.0.0.5", aa=True), id="authoritative"),
    pytest.param(header(flags=QR_TC_RD_RA) + QUESTION, answer(tc=True), id="tc-no-answers"),
    pytest.param(header(flags=QR_TC_RD_RA, an=2) + QUESTION
                 + rr(TO_QNAME, QTYPE_A, v4("10.0.0.5"))
                 + rr(TO_QNAME, QTYPE_A, v4("10.0.0.6"))[:7],
                 answer("10.0.0.5", tc=True), id="tc-cut-mid-record-keeps-earlier"),
    pytest.param(ONE_A + b"\x99trailing", answer("10.0.0.5"), id="bytes-after-answers-unread"),
    pytest.param(header(qd=0, an=1) + rr(QNAME, QTYPE_A, v4("10.0.0.5")),
                 answer("10.0.0.5"), id="no-question-section"),
])
def test_parse_response(data, expected):
    assert parse_response(data) == expected
    assert parse_response(data, txid=TXID) == expected


LONG_NAME = b"\x3f" + b"a" * 63
TO_SELF = struct.pack("!H", 0xC000 | ANSWERS_AT)


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(ONE_A[:11], id="short-header"),
    pytest.param(build_query("web.test", TXID), id="a-query-not-a-response"),
    pytest.param(header(flags=QR_RD_RA | 4 << 11) + QUESTION, id="opcode-notify"),
    pytest.param(header(an=1) + QUESTION + rr(TO_SELF, QTYPE_A, v4("10.0.0.5")),
                 id="pointer-to-itself"),
    # The question's name points at offset 14, which points back at 12: a loop of two.
    pytest.param(header() + b"\xc0\x0e\xc0\x0c\x00\x01", id="pointer-loop-of-two"),
    # With TC set a message may end early, but a pointer never points past its end.
    pytest.param(header(flags=QR_TC_RD_RA) + b"\xc0\xff\x00\x01\x00\x01",
                 id="pointer-past-the-end"),
    # 0x41 is not a 65-byte label but the 0x40 label type (RFC 6891), which we do not read.
    pytest.param(header() + b"\x41" + b"x" * 65 + b"\x00\x00\x01\x00\x01",
                 id="extended-label-type"),
    pytest.param(header() + LONG_NAME * 4 + b"\x00\x00\x01\x00\x01", id="name-over-255-bytes"),
    pytest.param(header(an=1) + QUESTION + rr(TO_QNAME, QTYPE_A, b"\x0a\x00\x00\x05\x00"),
                 id="A-rdata-5-bytes"),
    pytest.param(header(an=1) + QUESTION + rr(TO_QNAME, QTYPE_AAAA, v4("10.0.0.5")),
                 id="AAAA-rdata-4-bytes"),
    pytest.param(header(qd=2) + QUESTION, id="second-question-missing"),
    pytest.param(header(an=2) + QUESTION + rr(TO_QNAME, QTYPE_A, v4("10.0.0.5")),
                 id="second-answer-missing-without-tc"),
])
def test_parse_response_rejects(data):
    assert parse_response(data) is None


def test_name_of_exactly_255_wire_bytes_is_accepted():
    name = LONG_NAME * 3 + b"\x3d" + b"b" * 61 + b"\x00"        # 4*64 - 2 + 1 = 255 bytes
    assert len(name) == 255
    assert parse_response(header() + name + b"\x00\x01\x00\x01") == answer()


@pytest.mark.parametrize("cut", range(len(ONE_A)))
def test_every_cut_of_an_answer_without_tc_is_malformed(cut):
    assert parse_response(ONE_A[:cut]) is None


def test_other_transaction_id_is_not_our_answer():
    assert parse_response(ONE_A, txid=TXID + 1) is None
    assert parse_response(header(txid=0) + QUESTION, txid=0) == DnsAnswer(
        0, 0, "NOERROR", (), False, False)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    result = parse_response(data)
    assert result is None or isinstance(result, DnsAnswer)


@given(st.integers(0, 0xFFFF), st.integers(0, 8), st.binary(max_size=300))
def test_random_records_after_a_valid_header_never_raise(flags, ancount, tail):
    data = header(flags=flags | 0x8000, an=ancount) + QUESTION + tail
    result = parse_response(data)
    assert result is None or isinstance(result, DnsAnswer)


# --- build_query ----------------------------------------------------------------------

QUERY_A = (b"\x12\x34"            # id
           b"\x01\x00"            # flags: RD
           b"\x00\x01\x00\x00\x00\x00\x00\x00"   # one question, no records
           b"\x02db\x07cntrace\x04test\x00"
           b"\x00\x01\x00\x01")   # type A, class IN


@pytest.mark.parametrize("name, txid, qtype, expected", [
    ("db.cntrace.test", 0x1234, QTYPE_A, QUERY_A),
    ("db.cntrace.test.", 0x1234, QTYPE_A, QUERY_A),
    ("db.cntrace.test", 0x1234, QTYPE_AAAA, QUERY_A[:-4] + b"\x00\x1c\x00\x01"),
    ("Web", 0, QTYPE_A, b"\x00\x00\x01\x00\x00\x01" + b"\x00" * 6 + b"\x03Web\x00\x00\x01\x00\x01"),
    ("_dns.my-host-1", 0xFFFF, QTYPE_A,
     b"\xff\xff\x01\x00\x00\x01" + b"\x00" * 6 + b"\x04_dns\x09my-host-1\x00\x00\x01\x00\x01"),
])
def test_build_query_bytes(name, txid, qtype, expected):
    assert build_query(name, txid, qtype) == expected


def test_build_query_limits_are_inclusive():
    label63 = "a" * 63
    name253 = ".".join([label63, label63, label63, "b" * 61])
    assert len(name253) == 253
    assert build_query(name253 + ".", 1)[12] == 63
    assert len(build_query(name253, 1)) == 12 + 255 + 4


@pytest.mark.parametrize("name, txid, qtype, message", [
    ("", 1, QTYPE_A, "empty DNS name"),
    (".", 1, QTYPE_A, "empty DNS name"),
    ("a..b", 1, QTYPE_A, "empty label"),
    (".a", 1, QTYPE_A, "empty label"),
    ("a" * 64 + ".test", 1, QTYPE_A, "64 characters long, the limit is 63"),
    (".".join(["a" * 63] * 4), 1, QTYPE_A, "255 characters long, the limit is 253"),
    ("my host", 1, QTYPE_A, "' ' is not allowed"),
    ("bücher.test", 1, QTYPE_A, "'ü' is not allowed"),
    ("10.0.0.1/24", 1, QTYPE_A, "'/' is not allowed"),
    ("a\nb", 1, QTYPE_A, "'\\n' is not allowed"),
    ("web.test", -1, QTYPE_A, "transaction id -1 is not in 0..65535"),
    ("web.test", 0x10000, QTYPE_A, "transaction id 65536"),
    ("web.test", 1, 0, "query type 0"),
])
def test_build_query_rejects(name, txid, qtype, message):
    with pytest.raises(ValueError) as caught:
        build_query(name, txid, qtype)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_round_trip_query_turned_into_response():
    """What a server does with the simplest answer: echo the query with QR set."""
    query = bytearray(build_query("web.test", 0xBEEF, QTYPE_AAAA))
    assert parse_response(bytes(query)) is None
    query[2] |= 0x80
    assert parse_response(bytes(query), txid=0xBEEF) == DnsAnswer(
        0xBEEF, 0, "NOERROR", (), False, False)


# --- resolv.conf ----------------------------------------------------------------------

DOCKER_USER_NETWORK = """\
# Generated by Docker Engine.
# This file can be edited; Docker Engine will not make further changes once it
# has been modified.

nameserver 127.0.0.11
search corp.example
options ndots:0

# Based on host file: '/etc/resolv.conf' (internal resolver)
# ExtServers: [host(127.0.0.53)]
# Overrides: []
# Option ndots from: internal
"""

DOCKER_DEFAULT_BRIDGE = """\
# Generated by Docker Engine.
# This file can be edited; Docker Engine will not make further changes once it
# has been modified.

nameserver 10.0.2.3
nameserver fd00::3
search lan

# Based on host file: '/run/systemd/resolve/resolv.conf' (legacy)
# Overrides: []
"""

DOCKER_OLDER = """\
search corp.example
nameserver 127.0.0.11
options ndots:0
# ExtServers: [10.0.2.3 10.0.2.4]
"""


@pytest.mark.parametrize("text, nameservers, search, ndots", [
    pytest.param(DOCKER_USER_NETWORK, (DOCKER_EMBEDDED_DNS,), ("corp.example",), 0,
                 id="docker-user-network"),
    pytest.param(DOCKER_DEFAULT_BRIDGE, ("10.0.2.3", "fd00::3"), ("lan",), 1,
                 id="docker-default-bridge"),
    pytest.param(DOCKER_OLDER, (DOCKER_EMBEDDED_DNS,), ("corp.example",), 0,
                 id="docker-before-25-extservers-comment"),
    pytest.param("", (), (), 1, id="empty"),
    pytest.param("nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"
                 "nameserver 10.0.0.4\n", ("10.0.0.1", "10.0.0.2", "10.0.0.3"), (), 1,
                 id="only-three-servers"),
    pytest.param("nameserver bogus\nnameserver 10.0.0.300\nnameserver 10.0.0.1\n"
                 "nameserver 10.0.0.2\nnameserver 10.0.0.3\n",
                 ("10.0.0.1", "10.0.0.2", "10.0.0.3"), (), 1, id="unparsable-do-not-count"),
    pytest.param("nameserver fe80::1%eth0\nnameserver FD00:0::53\n",
                 ("fe80::1%eth0", "fd00::53"), (), 1, id="ipv6-scoped-and-normalized"),
    pytest.param("nameserver 10.0.0.1 # office\nnameserver 10.0.0.2#lab\nnameserver\t10.0.0.3;x\n",
                 ("10.0.0.1", "10.0.0.2", "10.0.0.3"), (), 1, id="inline-comments-and-tab"),
    pytest.param("#nameserver 10.0.0.1\n;nameserver 10.0.0.2\n  nameserver 10.0.0.3\n"
                 "nameservers 10.0.0.4\nnameserver\n", (), (), 1,
                 id="comments-indented-and-misspelt-ignored"),
    pytest.param("domain a.example\nsearch b.example c.example\n", (),
                 ("b.example", "c.example"), 1, id="search-after-domain-wins"),
    pytest.param("search b.example c.example\ndomain a.example extra\n", (),
                 ("a.example",), 1, id="domain-after-search-wins"),
    pytest.param("search b.example\t c.example  \nsearch\nsearch  \n", (),
                 ("b.example", "c.example"), 1, id="empty-search-does-not-clear"),
    pytest.param("options rotate ndots:5 timeout:2\n", (), (), 5, id="ndots-among-options"),
    pytest.param("options ndots:3\noptions attempts:2\noptions ndots:2\n", (), (), 2,
                 id="last-ndots-wins"),
    pytest.param("options ndots:99\n", (), (), 15, id="ndots-capped-at-15"),
    pytest.param("options ndots:x\n", (), (), 0, id="ndots-not-a-number-is-0-like-atoi"),
    pytest.param("options ndots:4x\n", (), (), 4, id="ndots-leading-digits-like-atoi"),
    # glibc splits lines on \n only: "10.0.0.1\r" fails inet_pton and the server is lost.
    pytest.param("nameserver 10.0.0.1\r\nsearch lan\r\n", (), ("lan\r",), 1, id="crlf-file"),
])
def test_parse_resolv_conf(text, nameservers, search, ndots):
    assert parse_resolv_conf(text) == ResolvConf(nameservers, search, ndots)


def test_read_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(DOCKER_USER_NETWORK)
    assert read_resolv_conf(str(path)) == ResolvConf((DOCKER_EMBEDDED_DNS,), ("corp.example",), 0)
    (tmp_path / "crlf.conf").write_bytes(b"nameserver 10.0.0.1\r\n")
    assert read_resolv_conf(str(tmp_path / "crlf.conf")).nameservers == ()
    with pytest.raises(FileNotFoundError):
        read_resolv_conf(str(tmp_path / "absent.conf"))
