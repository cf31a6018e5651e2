"""tracer.ping.nftrace over text captured on this project's dev host (nftables
1.0.6, iptables-nft 1.8.9, kernel 6.18) inside a throwaway netns: what
`nft --handle monitor trace` printed while NftTrace traced pings and a UDP
datagram over loopback, `nft --handle list chain`, `nft list tables` and
/proc/net/netlink.  No nft, no root."""

import re

import pytest

from tracer.ping.nftrace import (
    NftTrace,
    ProbeMatch,
    RuleVerdict,
    build_ruleset,
    leftover_tables,
    parse_chain_listing,
    parse_event,
    parse_monitor,
    parse_netlink,
    subscribed,
    table_name,
    trace_rules,
)

OWN = "cntrace_trace_2278"

# Each scenario: the monitor's lines for one probe, and the final verdicts.
# nft ends packet and policy lines with a space, stripped here for the linter
# (test_parse_event keeps one).
# Our own table shows up as "unknown rule handle N" when the monitor read the
# ruleset before the table went in, and with its rule text otherwise.
NATIVE_DROP = """\
trace id d5a74360 inet cntrace_trace_2278 output packet: oif "lo" ip saddr 127.0.0.1 ip daddr 127.0.0.1 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 26184 ip protocol icmp ip length 36 icmp type echo-request icmp code net-unreachable icmp id 1001 icmp sequence 1 @th,64,64 0x7878787878787878
trace id d5a74360 inet cntrace_trace_2278 output unknown rule handle 8 (verdict continue)
trace id d5a74360 inet cntrace_trace_2278 output policy accept
trace id d5a74360 ip filter OUTPUT packet: oif "lo" ip saddr 127.0.0.1 ip daddr 127.0.0.1 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 26184 ip length 36 icmp type echo-request icmp code net-unreachable icmp id 1001 icmp sequence 1 @th,64,64 0x7878787878787878
trace id d5a74360 ip filter OUTPUT policy accept
trace id d5a74360 inet filter output packet: oif "lo" ip saddr 127.0.0.1 ip daddr 127.0.0.1 ip dscp cs0 ip ecn not-ect ip ttl 64 ip id 26184 ip protocol icmp ip length 36 icmp type echo-request icmp code net-unreachable icmp id 1001 icmp sequence 1 @th,64,64 0x7878787878787878
trace id d5a74360 inet filter output rule ip daddr 127.0.0.1 icmp type echo-request icmp id 1001 drop # handle 2 (verdict drop)
# Warning: table ip filter is managed by iptables-nft, do not touch!
"""  # noqa: E501

POLICY_DROP_AFTER_JUMP = """\
trace id f5336788 inet cntrace_trace_2278 output unknown rule handle 8 (verdict continue)
trace id f5336788 inet cntrace_trace_2278 output policy accept
trace id f5336788 ip filter OUTPUT policy accept
trace id f5336788 inet filter output policy accept
trace id fd14879e inet cntrace_trace_2278 prerouting unknown rule handle 4 (verdict continue)
trace id fd14879e inet cntrace_trace_2278 prerouting policy accept
trace id fd14879e ip pol input rule icmp type { echo-reply, echo-request } icmp id 1002 jump deny # handle 5 (verdict jump deny)
trace id fd14879e ip pol input policy accept
trace id fd14879e ip pol inp2 policy drop
"""  # noqa: E501

IPTABLES_NFT_DROP = """\
trace id a8f65eb2 inet cntrace_trace_2278 output rule icmp type { echo-reply, echo-request } icmp id 1003 meta nftrace set 1 # handle 8 (verdict continue)
trace id a8f65eb2 inet cntrace_trace_2278 output policy accept
trace id a8f65eb2 ip filter OUTPUT rule meta l4proto icmp ip daddr 127.0.0.2 counter packets 0 bytes 0 drop # handle 2 (verdict drop)
"""  # noqa: E501

REACHABLE = """\
trace id 9cca2747 inet cntrace_trace_2278 output unknown rule handle 8 (verdict continue)
trace id 9cca2747 inet cntrace_trace_2278 output policy accept
trace id 9cca2747 ip filter OUTPUT policy accept
trace id 9cca2747 inet filter output policy accept
trace id 92ae6e27 inet cntrace_trace_2278 prerouting unknown rule handle 4 (verdict continue)
trace id 92ae6e27 inet cntrace_trace_2278 prerouting policy accept
trace id 92ae6e27 ip pol input policy accept
trace id 92ae6e27 ip pol inp2 rule icmp type { echo-reply, echo-request } icmp id != 1002 accept # handle 7 (verdict accept)
"""  # noqa: E501

# The reject's ICMP error (traced by our error rule) is printed before the
# rule that sent it reports its own verdict.
REJECT_UDP = """\
trace id fc29474a inet cntrace_trace_2278 output unknown rule handle 7 (verdict continue)
trace id fc29474a inet cntrace_trace_2278 output policy accept
trace id fc29474a ip filter OUTPUT policy accept
trace id 5045653a inet cntrace_trace_2278 output unknown rule handle 10 (verdict continue)
trace id 5045653a inet cntrace_trace_2278 output policy accept
trace id 5045653a ip filter OUTPUT policy accept
trace id 5045653a inet filter output policy accept
trace id b3ce5669 inet cntrace_trace_2278 prerouting unknown rule handle 6 (verdict continue)
trace id b3ce5669 inet cntrace_trace_2278 prerouting policy accept
trace id b3ce5669 ip pol input policy accept
trace id b3ce5669 ip pol inp2 policy drop
trace id fc29474a inet filter output rule udp dport 9 reject # handle 3 (verdict drop)
"""

RULE_ADDED_AFTER_START = """\
trace id 803375a9 inet cntrace_trace_2278 output unknown rule handle 8 (verdict continue)
trace id 803375a9 inet cntrace_trace_2278 output policy accept
trace id 803375a9 ip filter OUTPUT policy accept
trace id 803375a9 inet filter output unknown rule handle 5 (verdict drop)
"""

IP6_DROP = """\
trace id 2b6f7b27 inet cntrace_trace_2278 output unknown rule handle 8 (verdict continue)
trace id 2b6f7b27 inet cntrace_trace_2278 output policy accept
trace id 2b6f7b27 inet filter output policy accept
trace id 53ce5102 inet cntrace_trace_2278 prerouting packet: iif "lo" @ll,0,112 0x86dd ip6 saddr ::1 ip6 daddr ::1 ip6 dscp cs0 ip6 ecn not-ect ip6 hoplimit 64 ip6 flowlabel 802745 ip6 nexthdr ipv6-icmp ip6 length 8 icmpv6 type echo-request icmpv6 code no-route icmpv6 parameter-problem 218431489
trace id 53ce5102 inet cntrace_trace_2278 prerouting unknown rule handle 4 (verdict continue)
trace id 53ce5102 inet cntrace_trace_2278 prerouting policy accept
trace id 53ce5102 ip6 t6 in6 rule icmpv6 type echo-request drop # handle 2 (verdict drop)
"""  # noqa: E501

# A packet someone else traced (not by our rule): it crosses our table's
# policy but none of our rules, so it is not ours to report.
FOREIGN_TRACE = """\
trace id 1c1b2269 inet cntrace_trace_2278 o policy accept
trace id 1c1b2269 ip filter OUTPUT rule udp dport 10 counter packets 0 bytes 0 reject # handle 3 (verdict drop)
trace id 0d27de9d ip filter OUTPUT rule meta l4proto icmp ip daddr 127.0.0.2 counter packets 0 bytes 0 drop # handle 2 (verdict drop)
"""  # noqa: E501


def v(family, table, chain, handle, rule, verdict, trace_id):
    return RuleVerdict(family, table, chain, handle, rule, verdict, trace_id)


@pytest.mark.parametrize("text, expected", [
    (NATIVE_DROP, [v("inet", "filter", "output", 2,
                     "ip daddr 127.0.0.1 icmp type echo-request icmp id 1001 drop", "drop",
                     "d5a74360")]),
    (POLICY_DROP_AFTER_JUMP, [v("inet", "filter", "output", None, "policy accept", "accept",
                                "f5336788"),
                              v("ip", "pol", "inp2", None, "policy drop", "drop", "fd14879e")]),
    (IPTABLES_NFT_DROP, [v("ip", "filter", "OUTPUT", 2,
                           "meta l4proto icmp ip daddr 127.0.0.2 counter drop", "drop",
                           "a8f65eb2")]),
    (REACHABLE, [v("inet", "filter", "output", None, "policy accept", "accept", "9cca2747"),
                 v("ip", "pol", "inp2", 7,
                   "icmp type { echo-reply, echo-request } icmp id != 1002 accept", "accept",
                   "92ae6e27")]),
    (REJECT_UDP, [v("inet", "filter", "output", 3, "udp dport 9 reject", "reject", "fc29474a"),
                  v("inet", "filter", "output", None, "policy accept", "accept", "5045653a"),
                  v("ip", "pol", "inp2", None, "policy drop", "drop", "b3ce5669")]),
    (RULE_ADDED_AFTER_START, [v("inet", "filter", "output", 5, "", "drop", "803375a9")]),
    (IP6_DROP, [v("inet", "filter", "output", None, "policy accept", "accept", "2b6f7b27"),
                v("ip6", "t6", "in6", 2, "icmpv6 type echo-request drop", "drop", "53ce5102")]),
    (FOREIGN_TRACE, []),
    ("", []),
], ids=["native-drop", "policy-drop-after-jump", "iptables-nft", "reachable", "reject",
        "rule-added-after-start", "ip6", "foreign-trace", "empty"])
def test_parse_monitor(text, expected):
    assert parse_monitor(text.splitlines(), OWN) == expected


def test_no_drop_when_reachable():
    assert not any(verdict.drops for verdict in parse_monitor(REACHABLE.splitlines(), OWN))


def test_own_table_is_never_a_verdict():
    everything = "".join([NATIVE_DROP, POLICY_DROP_AFTER_JUMP, REACHABLE, REJECT_UDP, IP6_DROP])
    assert all(verdict.table != OWN for verdict in parse_monitor(everything.splitlines(), OWN))


def test_another_trace_table_name_is_not_ours():
    assert parse_monitor(NATIVE_DROP.splitlines(), "cntrace_trace_1") == []


def test_last_drop_of_a_trace_id_wins_and_accept_does_not_override_it():
    lines = [
        "trace id 00000001 inet cntrace_trace_7 output unknown rule handle 8 (verdict continue)",
        "trace id 00000001 ip raw OUTPUT policy accept ",
        "trace id 00000001 inet a out rule tcp dport 1 drop # handle 3 (verdict drop)",
        "trace id 00000001 inet b out rule tcp dport 1 accept # handle 4 (verdict accept)",
        "trace id 00000001 inet c out rule tcp dport 1 reject # handle 5 (verdict drop)",
        "trace id 00000001 inet d out policy accept ",
    ]
    [final] = parse_monitor(lines, "cntrace_trace_7")
    assert (final.table, final.handle, final.verdict) == ("c", 5, "reject")


@pytest.mark.parametrize("line, expected", [
    ('trace id d5a74360 ip filter OUTPUT packet: oif "lo" ip saddr 127.0.0.1', None),
    ("# Warning: table ip filter is managed by iptables-nft, do not touch!", None),
    ("trace id fd14879e ip pol inp2 policy drop \n",
     v("ip", "pol", "inp2", None, "policy drop", "drop", "fd14879e")),
    ("trace id fd14879e ip pol input rule icmp type { echo-reply, echo-request } icmp id 1002"
     " jump deny # handle 5 (verdict jump deny)",
     v("ip", "pol", "input", 5, "icmp type { echo-reply, echo-request } icmp id 1002 jump deny",
       "jump deny", "fd14879e")),
    ('trace id ab5e0287 inet t3 outp rule icmp type { echo-reply, echo-request } icmp id 2222'
     ' accept comment "ok (fine)" # handle 6 (verdict accept)',
     v("inet", "t3", "outp", 6,
       'icmp type { echo-reply, echo-request } icmp id 2222 accept comment "ok (fine)"',
       "accept", "ab5e0287")),
    ("trace id bf1049a5 inet t3 outp rule tcp dport 7 reject with tcp reset # handle 4"
     " (verdict drop)",
     v("inet", "t3", "outp", 4, "tcp dport 7 reject with tcp reset", "reject", "bf1049a5")),
    ('trace id 00000002 inet t x rule ip daddr 1.2.3.4 drop comment "no reject here"'
     " # handle 9 (verdict drop)",
     v("inet", "t", "x", 9, 'ip daddr 1.2.3.4 drop comment "no reject here"', "drop",
       "00000002")),
    ("trace id b17d9707 ip filter OUTPUT rule udp dport 10 counter packets 0 bytes 0 reject"
     " # handle 3 (verdict drop)",
     v("ip", "filter", "OUTPUT", 3, "udp dport 10 counter reject", "reject", "b17d9707")),
    ("trace id 6d15ddff inet t3 outp unknown rule handle 10 (verdict drop)",
     v("inet", "t3", "outp", 10, "", "drop", "6d15ddff")),
], ids=["packet", "warning", "policy", "jump", "comment-with-parens", "reject-with",
        "reject-in-comment", "iptables-reject-counter", "unknown-rule"])
def test_parse_event(line, expected):
    assert parse_event(line) == expected


@pytest.mark.parametrize("verdict, expected", [
    (v("inet", "filter", "forward", 7, "ip daddr 198.51.100.2 drop", "drop", "1"),
     "nft inet filter forward handle 7: ip daddr 198.51.100.2 drop"),
    (v("ip", "pol", "inp2", None, "policy drop", "drop", "1"), "nft ip pol inp2 policy drop"),
    (v("inet", "filter", "output", 5, "", "drop", "1"),
     "nft inet filter output handle 5: (rule text unknown)"),
])
def test_describe(verdict, expected):
    assert verdict.describe() == expected


# ---------------------------------------------------------------- ruleset text


def test_icmp4_ruleset():
    text = build_ruleset(ProbeMatch(4, "icmp", 4660), "cntrace_trace_1029")
    assert text == """\
add table inet cntrace_trace_1029
flush table inet cntrace_trace_1029
table inet cntrace_trace_1029 {
\tchain prerouting {
\t\ttype filter hook prerouting priority -400; policy accept;
\t\ticmp type { echo-request, echo-reply } icmp id 4660 meta nftrace set 1
\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } @th,136,8 1 @th,256,16 4660 meta nftrace set 1
\t}
\tchain output {
\t\ttype filter hook output priority -400; policy accept;
\t\ticmp type { echo-request, echo-reply } icmp id 4660 meta nftrace set 1
\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem } @th,136,8 1 @th,256,16 4660 meta nftrace set 1
\t}
}
"""  # noqa: E501


def test_replace_deletes_a_leftover_instead_of_flushing_it():
    text = build_ruleset(ProbeMatch(4, "icmp", 1), "cntrace_trace_1", replace=True)
    assert text.splitlines()[:2] == ["add table inet cntrace_trace_1",
                                     "delete table inet cntrace_trace_1"]


@pytest.mark.parametrize("match, expected", [
    (ProbeMatch(6, "icmp", 7),
     ["icmpv6 type { echo-request, echo-reply } icmpv6 id 7 meta nftrace set 1",
      "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }"
      " @th,112,8 58 @th,416,16 7 meta nftrace set 1"]),
    (ProbeMatch(4, "tcp", 40000),
     ["meta nfproto ipv4 meta l4proto tcp th sport 40000 meta nftrace set 1",
      "meta nfproto ipv4 meta l4proto tcp th dport 40000 meta nftrace set 1",
      "icmp type { destination-unreachable, time-exceeded, parameter-problem }"
      " @th,136,8 6 @th,224,16 40000 meta nftrace set 1"]),
    (ProbeMatch(6, "udp", 65535),
     ["meta nfproto ipv6 meta l4proto udp th sport 65535 meta nftrace set 1",
      "meta nfproto ipv6 meta l4proto udp th dport 65535 meta nftrace set 1",
      "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem }"
      " @th,112,8 17 @th,384,16 65535 meta nftrace set 1"]),
])
def test_trace_rules(match, expected):
    assert trace_rules(match) == expected


def test_both_chains_hook_before_raw():
    text = build_ruleset(ProbeMatch(6, "tcp", 1), "cntrace_trace_1")
    hooks = re.findall(r"type filter hook (\w+) priority (-?\d+); policy accept;", text)
    assert hooks == [("prerouting", "-400"), ("output", "-400")]


@pytest.mark.parametrize("family, proto, ident", [
    (5, "icmp", 1), (4, "sctp", 1), (4, "icmp", -1), (4, "icmp", 65536),
    (4, "icmp", True), (4, "tcp", "80; flush ruleset"), (4, "udp", 1.0),
])
def test_probe_match_rejects_anything_but_validated_ints(family, proto, ident):
    with pytest.raises(ValueError):
        ProbeMatch(family, proto, ident)


@pytest.mark.parametrize("table", ["filter", "cntrace_trace_", "cntrace_trace_1; flush ruleset"])
def test_ruleset_only_for_trace_tables(table):
    with pytest.raises(ValueError):
        build_ruleset(ProbeMatch(4, "icmp", 1), table)


def test_table_name_is_per_process():
    assert table_name(4242) == "cntrace_trace_4242"
    assert re.fullmatch(r"cntrace_trace_\d+", table_name())


# ---------------------------------------------------------------- /proc/net/netlink

NETLINK = """\
sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
00000000a9483272 0   0          00000000 0        0        0     2        0        573147
00000000d3e745cc 12  0          00000000 0        0        0     2        0        573154
00000000a8e80a1b 12  2415       00000100 0        0        0     2        0        574067
00000000f78174e1 12  -4121      00000100 4352     0        0     2        3        574099
000000001e00b082 15  0          00000000 0        0        0     2        0        573150
"""


def test_parse_netlink():
    sockets = parse_netlink(NETLINK)
    assert len(sockets) == 5
    monitor = sockets[2]
    assert (monitor.protocol, monitor.port_id, monitor.inode) == (12, 2415, 574067)
    assert monitor.in_group(9) and not monitor.in_group(1)
    assert (sockets[3].rmem, sockets[3].drops) == (4352, 3)


def test_subscribed_by_pid():
    assert subscribed(NETLINK, 2415, before=set()).inode == 574067


def test_subscribed_falls_back_to_a_new_socket_when_the_port_id_is_not_the_pid():
    assert subscribed(NETLINK, 9999, before={574067}).inode == 574099


def test_not_subscribed_yet():
    assert subscribed(NETLINK, 9999, before={574067, 574099}) is None
    assert subscribed(NETLINK.replace("00000100", "00000000"), 2415, before=set()) is None


# ---------------------------------------------------------------- listing, leftovers

CHAIN_LISTING = """\
table inet filter {
\tchain output { # handle 1
\t\ttype filter hook output priority filter; policy accept;
\t\tip daddr 127.0.0.1 icmp type echo-request icmp id 1001 drop # handle 2
\t\tudp dport 9 reject # handle 3
\t\tmeta l4proto icmp ip daddr 127.0.0.2 counter packets 0 bytes 0 drop # handle 5
\t}
}
"""


def test_parse_chain_listing():
    assert parse_chain_listing(CHAIN_LISTING) == {
        2: "ip daddr 127.0.0.1 icmp type echo-request icmp id 1001 drop",
        3: "udp dport 9 reject",
        5: "meta l4proto icmp ip daddr 127.0.0.2 counter drop",
    }


TABLES = """\
table inet filter
table ip filter
table inet cntrace_trace_999999
table inet cntrace_trace_1
table ip cntrace_trace_5
table inet cntrace_trace_12x
"""


def test_leftover_tables_are_those_of_dead_processes():
    assert leftover_tables(TABLES, alive=lambda pid: pid == 1) == ["cntrace_trace_999999"]
    assert leftover_tables(TABLES, alive=lambda pid: True) == []


# ---------------------------------------------------------------- degrading


def test_missing_nft_degrades_with_words():
    trace = NftTrace(ProbeMatch(4, "icmp", 1), nft="/nonexistent/nft")
    with trace:
        pass
    assert not trace.available
    assert "not found" in trace.why_not and "nftables" in trace.why_not
    assert trace.stop() == []


# Captured on a Docker host: a container's echo request, traced from
# prerouting, gets a new trace id once routed; the forward chain's drop is
# found by the probe's identity in the packet line.
FORWARDED = [
    'trace id c48e3d59 inet cntrace_trace_8124 prerouting packet: iif "docker0" ether'
    ' saddr 02:42:ac:11:00:02 ip saddr 172.17.0.2 ip daddr 198.51.100.2 ip protocol i'
    'cmp icmp type echo-request icmp id 10252 icmp sequence 1',
    'trace id c48e3d59 inet cntrace_trace_8124 prerouting unknown rule handle 4 (verd'
    'ict continue)',
    'trace id c48e3d59 ip nat PREROUTING policy accept',
    'trace id 70e43e0a inet cntrace_test_fw forward packet: iif "docker0" oif "cntrac'
    'e-wan0" ip saddr 172.17.0.2 ip daddr 198.51.100.2 ip protocol icmp icmp type ech'
    'o-request icmp id 10252 icmp sequence 1',
    'trace id 70e43e0a inet cntrace_test_fw forward rule ip daddr 198.51.100.2 icmp t'
    'ype echo-request drop # handle 2 (verdict drop)',
    'trace id 99999999 inet other forward packet: iif "docker0" ip protocol icmp icmp'
    ' id 7',
    'trace id 99999999 inet other forward rule drop # handle 3 (verdict drop)',
]


def test_a_forwarded_probe_is_followed_across_its_new_trace_id():
    match = ProbeMatch(4, "icmp", 10252)
    verdicts = parse_monitor(FORWARDED, "cntrace_trace_8124", match)
    assert [v.describe() for v in verdicts if v.drops] == [
        "nft inet cntrace_test_fw forward handle 2: "
        "ip daddr 198.51.100.2 icmp type echo-request drop"]
    # Without the identity only the first trace id is known: the drop is lost.
    assert not any(v.drops for v in parse_monitor(FORWARDED, "cntrace_trace_8124"))
