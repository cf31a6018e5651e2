"""The ctypes mirror matches bpf/cntrace.h, and decode() is exact."""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tracer.kernel import wire

HEADER_PATH = Path(__file__).parents[2] / "bpf" / "cntrace.h"
HEADER = HEADER_PATH.read_text()

C_TYPES = {
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64, "char": ctypes.c_char,
}


def c_struct_fields(name: str) -> list[tuple[str, object]]:
    """(field, ctypes type) in declaration order, parsed from the C header."""
    body = re.search(r"struct " + name + r" \{(.*?)\n\};", HEADER, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for ctype, names in re.findall(r"^\s*(u8|u16|u32|u64|char)\s+([^;]+);", body, re.M):
        for decl in names.split(","):
            match = re.fullmatch(r"\s*(\w+)(?:\[(\d+)\])?\s*", decl)
            field, length = match.group(1), match.group(2)
            base = C_TYPES[ctype]
            fields.append((field, base * int(length) if length else base))
    return fields


@pytest.mark.parametrize(
    "c_name, mirror",
    [
        ("cntrace_event", wire.RawEvent),
        ("filter_config", wire.FilterConfig),
        ("addr_key", wire.AddrKey),
        ("iface_key", wire.IfaceKey),
        ("traffic", wire.Traffic),
        ("peer_key", wire.PeerKey),
        ("drop_key", wire.DropKey),
        ("drop_count", wire.DropCount),
        ("dnat_key", wire.DnatKey),
        ("flow_key", wire.FlowKey),
        ("flow_value", wire.FlowValue),
    ],
)
def test_mirror_matches_header(c_name, mirror):
    expected = c_struct_fields(c_name)
    actual = mirror._fields_
    assert [f for f, _ in actual] == [f for f, _ in expected]
    for (field, ours), (_, theirs) in zip(actual, expected, strict=True):
        assert ctypes.sizeof(ours) == ctypes.sizeof(theirs), field
        assert getattr(ours, "_type_", ours) == getattr(theirs, "_type_", theirs), field


MIRRORS = {"cntrace_event": wire.RawEvent, "filter_config": wire.FilterConfig,
           "addr_key": wire.AddrKey, "iface_key": wire.IfaceKey, "traffic": wire.Traffic,
           "peer_key": wire.PeerKey, "drop_key": wire.DropKey, "drop_count": wire.DropCount,
           "dnat_key": wire.DnatKey,
           "flow_key": wire.FlowKey, "flow_value": wire.FlowValue}


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (gcc)")
def test_every_offset_and_size_is_what_a_c_compiler_lays_out(tmp_path):
    """Field types matching is not enough: padding is where a mirror and
    its struct part.  The header compiled by cc (x86-64 and BPF align these
    types alike) prints each field's offset and each struct's size."""
    lines = []
    for c_name in MIRRORS:
        lines.append(f'printf("{c_name} . %zu\\n", sizeof(struct {c_name}));')
        lines += [f'printf("{c_name} {field} %zu\\n", offsetof(struct {c_name}, {field}));'
                  for field, _ in c_struct_fields(c_name)]
    source = tmp_path / "layout.c"
    source.write_text("#include <stdio.h>\n#include <stddef.h>\n"
                      "typedef unsigned char u8; typedef unsigned short u16;\n"
                      "typedef unsigned int u32; typedef unsigned long long u64;\n"
                      '#include "cntrace.h"\n'
                      "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    binary = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(HEADER_PATH.parent), "-o", str(binary), str(source)],
                   check=True, capture_output=True)
    compiled = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    assert len(compiled.splitlines()) == len(lines) > 2 * len(MIRRORS)
    for line in compiled.splitlines():
        c_name, field, value = line.split()
        mirror = MIRRORS[c_name]
        ours = ctypes.sizeof(mirror) if field == "." else getattr(mirror, field).offset
        assert ours == int(value), f"{c_name}.{field}: ctypes {ours}, cc {value}"


@pytest.mark.parametrize(
    "name, value",
    [(n, int(v, 0)) for n, v in
     re.findall(r"#define ((?:HOOK|FILTER|STAT|EVENT|PEER|DIR)_\w+) (0x[0-9a-f]+|\d+)", HEADER)],
)
def test_constants_match_header(name, value):
    if name.startswith("HOOK_"):
        assert value in wire.HOOKS
    elif name != "STAT_COUNT":
        assert getattr(wire, name) == value


def raw_event(**fields) -> bytes:
    raw = wire.RawEvent()
    for key, value in fields.items():
        if key in ("saddr", "daddr", "ct_orig_src", "ct_orig_dst", "ct_reply_src", "ct_reply_dst"):
            ctypes.memmove(ctypes.addressof(raw) + getattr(wire.RawEvent, key).offset,
                           value, len(value))
        else:
            setattr(raw, key, value)
    return bytes(raw)


def test_decode_ipv4_icmp_with_snat():
    data = raw_event(
        ts_ns=5, skb=0xFFFF1, kind=wire.EVENT_PACKET, hook=7, family=4, proto=1,
        netns=4026531840, ifindex=9, ifname=b"cntrace-wan0", len=84, icmp_type=8,
        sport=77, dport=1,
        saddr=bytes([198, 51, 100, 1]), daddr=bytes([198, 51, 100, 2]),
        ct_proto=1, ct_status=wire.IPS_SRC_NAT,
        ct_orig_src=bytes([172, 17, 0, 2]), ct_orig_dst=bytes([198, 51, 100, 2]),
        ct_reply_src=bytes([198, 51, 100, 2]), ct_reply_dst=bytes([198, 51, 100, 1]),
        ct_orig_sport=77, ct_reply_dport=77,
    )
    event = wire.decode(data)
    assert (event.hook, event.src, event.dst, event.ifname) == (
        "POSTROUTING", "198.51.100.1", "198.51.100.2", "cntrace-wan0")
    assert (event.sport, event.dport, event.length, event.proto_name) == (77, 1, 84, "icmp")
    assert event.conntrack.snat and not event.conntrack.dnat
    assert event.conntrack.orig == wire.Tuple("172.17.0.2", "198.51.100.2", 77, 0)
    assert event.conntrack.reply == wire.Tuple("198.51.100.2", "198.51.100.1", 0, 77)


def test_decode_ipv6_drop_without_conntrack():
    addr = bytes.fromhex("20010db8000000000000000000000001")
    event = wire.decode(raw_event(kind=wire.EVENT_DROP, hook=8, family=6, proto=17,
                                  saddr=addr, daddr=addr, drop_reason=12, location=0x1234))
    assert event.is_drop and event.src == "2001:db8::1" and event.conntrack is None
    assert (event.drop_reason, event.location) == (12, 0x1234)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "short event"),
        (bytes(ctypes.sizeof(wire.RawEvent) - 1), "short event"),
        (raw_event(kind=1, family=5), "bad event"),
        (raw_event(kind=9, family=4), "bad event"),
    ],
)
def test_decode_rejects_malformed_records(data, message):
    with pytest.raises(wire.DecodeError, match=message):
        wire.decode(data)
