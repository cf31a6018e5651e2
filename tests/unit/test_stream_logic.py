"""Filters, attribution and output over a fake host: no root, no kernel."""

import json

import pytest

from tests.unit import fakes
from tracer.errors import UsageError
from tracer.kernel import wire
from tracer.stream import event_text as output
from tracer.stream import filters
from tracer.stream.attribution import Attributor

# ------------------------------------------------------------------ filters


def test_container_filter_resolves_to_netns_addresses_and_host_veth():
    kf = filters.resolve(filters.FilterSpec(containers=("a",)), fakes.topology())
    assert kf.flags == wire.FILTER_WHO
    assert kf.netns == {fakes.A_NS}
    assert kf.addresses == {"172.17.0.2", "fd00::2"}
    assert kf.ifaces == {(fakes.HOST_NS, 11)}


def test_no_filter_means_everything():
    kf = filters.resolve(filters.FilterSpec(), fakes.topology())
    assert kf.flags == 0 and not kf.addresses


@pytest.mark.parametrize(
    "spec, flags, fields",
    [
        (filters.FilterSpec(proto="TCP", port=80), wire.FILTER_PROTO | wire.FILTER_PORT,
         {"proto": 6, "port": 80}),
        (filters.FilterSpec(addresses=("198.51.100.2",)), wire.FILTER_WHO, {}),
        (filters.FilterSpec(icmp_id=0x1_0007), wire.FILTER_ICMP_ID, {"icmp_id": 7}),
        (filters.FilterSpec(drops=False), wire.FILTER_NO_DROPS, {}),
    ],
)
def test_filter_flags(spec, flags, fields):
    kf = filters.resolve(spec, fakes.topology())
    assert kf.flags == flags
    for key, value in fields.items():
        assert getattr(kf, key) == value
    config = kf.config()
    assert (config.flags, config.port, config.proto) == (kf.flags, kf.port, kf.proto)


@pytest.mark.parametrize(
    "spec, message",
    [
        (filters.FilterSpec(containers=("zzz",)), "unknown container 'zzz'"),
        (filters.FilterSpec(addresses=("1.2.3",)), "invalid IP address '1.2.3'"),
        (filters.FilterSpec(port=0), "invalid port 0"),
        (filters.FilterSpec(proto="ipip"), "unknown protocol 'ipip'"),
    ],
)
def test_bad_filters_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        filters.resolve(spec, fakes.topology())


def test_addr_key_maps_ipv4_into_ipv6():
    assert bytes(filters.addr_key("198.51.100.2").addr) == bytes.fromhex(
        "00000000000000000000ffffc6336402")
    assert bytes(filters.addr_key("2001:db8::1").addr)[:4] == bytes.fromhex("20010db8")


# -------------------------------------------------------------- attribution


def attributor(**kw):
    return Attributor(fakes.topology, drop_reasons={12: "NETFILTER_DROP"},
                      symbolize=lambda a: f"sym+{a:#x}", **kw)


def test_event_in_container_netns_is_attributed_to_it():
    item = attributor().attribute(fakes.event())
    assert item.interface.role == "container" and item.interface.container == "a"
    assert (item.src_container, item.dst_container) == ("a", "b")


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        ("172.17.0.2", "198.51.100.2", ("a", None)),    # before SNAT
        ("198.51.100.1", "198.51.100.2", ("a", None)),  # after SNAT, on the uplink
        ("198.51.100.2", "198.51.100.1", (None, "a")),  # reply before un-SNAT
        ("198.51.100.2", "172.17.0.2", (None, "a")),    # reply after un-SNAT
    ],
)
def test_nat_does_not_hide_the_container(src, dst, expected):
    item = attributor().attribute(fakes.event(src=src, dst=dst, conntrack=fakes.SNAT))
    assert (item.src_container, item.dst_container) == expected


def test_unknown_device_triggers_one_throttled_rediscovery():
    calls = []
    now = [0.0]

    def discover():
        calls.append(now[0])
        return fakes.topology()

    attr = Attributor(discover, refresh_interval=1.0, clock=lambda: now[0])
    attr.attribute(fakes.event(netns=1, ifindex=99))
    now[0] = 1.5
    attr.attribute(fakes.event(netns=1, ifindex=99))
    attr.attribute(fakes.event(netns=1, ifindex=99))
    assert calls == [0.0, 1.5]
    assert attr.unknown_devices == 3


def test_drop_reason_is_named_from_the_kernel_enum():
    item = attributor().attribute(fakes.event(kind=fakes.DROP, hook="drop", drop_reason=12,
                                              location=0x10))
    assert (item.drop_reason, item.drop_location) == ("NETFILTER_DROP", "sym+0x10")
    unknown = attributor().attribute(fakes.event(kind=fakes.DROP, drop_reason=999))
    assert unknown.drop_reason == "999"


# ------------------------------------------------------------------- output


@pytest.mark.parametrize(
    "overrides, where, summary",
    [
        ({}, "a:eth0", "172.17.0.2 > 172.17.0.3 icmp echo 7/1"),
        ({"netns": fakes.HOST_NS, "ifindex": 11, "hook": "rx"}, "veth0aaaa[a]", None),
        ({"netns": fakes.HOST_NS, "ifindex": 6, "hook": "FORWARD"}, "docker0", None),
        ({"netns": 5, "ifindex": 77, "ifname": "ghost0"}, "ghost0@5", None),
        ({"proto": 6, "sport": 40000, "dport": 80, "tcp_flags": 0x12}, None,
         "172.17.0.2:40000 > 172.17.0.3:80 tcp SA"),
        ({"proto": 17, "sport": 5353, "dport": 53}, None,
         "172.17.0.2:5353 > 172.17.0.3:53 udp"),
        ({"icmp_type": 3, "icmp_code": 3, "inner_proto": 17, "sport": 5353, "dport": 53},
         None, "172.17.0.2 > 172.17.0.3 icmp unreach/3"),
    ],
)
def test_text_columns(overrides, where, summary):
    item = attributor().attribute(fakes.event(**overrides))
    if where:
        assert output.where(item) == where
    if summary:
        assert output.packet_summary(item.event) == summary
    assert len(output.format_text(item, 0).splitlines()[0]) <= 80


def test_snat_is_shown_on_a_continuation_line_and_in_json():
    item = attributor().attribute(fakes.event(
        hook="POSTROUTING", netns=fakes.HOST_NS, ifindex=20, ifname="cntrace-wan0",
        src="198.51.100.1", dst="198.51.100.2", conntrack=fakes.SNAT))
    lines = output.format_text(item, 0).splitlines()
    assert lines[1].strip() == "`- snat 172.17.0.2 -> 198.51.100.1"
    data = json.loads(json.dumps(output.to_dict(item)))
    assert data["nat"] == "snat 172.17.0.2 -> 198.51.100.1"
    assert data["conntrack"]["orig"]["src"] == "172.17.0.2"
    assert data["src_container"] == "a" and data["role"] == "host"


def test_drop_json_names_reason_and_location():
    item = attributor().attribute(fakes.event(kind=fakes.DROP, hook="drop", drop_reason=12,
                                              location=0x20))
    assert output.to_dict(item)["drop"] == {
        "reason": "NETFILTER_DROP", "reason_code": 12, "location": "sym+0x20"}
    assert "dropped: NETFILTER_DROP at sym+0x20" in output.format_text(item, 0)


def test_a_poll_takes_at_most_a_batch_and_leaves_the_rest_in_the_ring(monkeypatch):
    """Under a flood the reader stops taking records at max_batch (the
    callback's negative return ends libbpf's poll), so the backlog waits in
    the ring buffer, where losses are counted, not in memory."""
    from tracer.stream import events

    class Ring:
        def open_ring_buffer(self, callback):
            self.callback = callback

    class Tracer:
        ring = Ring()
        records = [b"r%d" % i for i in range(10)]

        def __getitem__(self, name):
            return self.ring

        @property
        def bpf(self):
            return self

        def ring_buffer_poll(self, timeout_ms):
            while self.records:   # what libbpf does: consume until told to stop
                record = self.records.pop(0)
                if self.ring.callback(None, record, len(record)) < 0:
                    return

    monkeypatch.setattr(events.ctypes, "string_at", lambda data, size: data)
    monkeypatch.setattr(events.wire, "decode", lambda raw: raw)
    tracer = Tracer()
    reader = events.EventReader(tracer, max_batch=4)
    assert reader.poll() == [b"r0", b"r1", b"r2", b"r3"]
    assert reader.poll() == [b"r4", b"r5", b"r6", b"r7"]
    assert reader.poll() == [b"r8", b"r9"] and reader.decoded == 10
