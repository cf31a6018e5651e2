"""Which nftables rule decided one probe's fate, named by nftables' own tracing.

The kernel's drop reason says only NFT_DROP/NETFILTER_DROP.  iptables-legacy
rules are named elsewhere by counter diffs (tracer/ping/iptables_counters.py), but a native
nftables rule has no counter unless it was written with `counter`, so for
nf_tables the way to name the rule is the trace facility: a packet whose
`meta nftrace` bit is set makes every chain it crosses send a netlink event
(NFNLGRP_NFTRACE) saying which rule matched and with what verdict, and
`nft monitor trace` prints those events with the rule's text and handle.
iptables-nft rules are nf_tables rules too, so they are named the same way
(family ip/ip6, table filter, chain FORWARD, ...).

For the length of one probe, NftTrace adds a table `inet cntrace_trace_<pid>`
whose chains, hooked at prerouting and output at priority -400 (before raw at
-300 and every table a user or Docker writes), set the trace bit only on the
probe's own packets, in both directions, and on ICMP errors quoting the
probe; it runs `nft --handle monitor trace` meanwhile and parses its lines.

Trace events are multicast: one sent before the monitor subscribed is lost.
So start() returns only once /proc/net/netlink shows the monitor's socket in
group NFNLGRP_NFTRACE, and stop() waits until that socket's receive queue is
empty and nft is asleep again (everything received has been printed) before it
ends the monitor.

A missing `nft`, a kernel without nf_tables or no CAP_NET_ADMIN is not an
error: `available` turns false, `why_not` says why in words, stop() returns
nothing, and the caller goes on without rule names.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TABLE_PREFIX = "cntrace_trace_"
TRACE_PRIORITY = -400            # before raw (-300), conntrack (-200), filter (0)
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
READY_TIMEOUT_S = 1.0
DRAIN_TIMEOUT_S = 0.25
POLL_S = 0.001
NFT_TIMEOUT_S = 10.0
DROP_VERDICTS = frozenset({"drop", "reject"})

# ICMP error types that quote the offending packet, and where, counted from
# the outer ICMP header (@th), the quoted packet's fields sit in bits: an
# 8-byte ICMP header, then the quoted IPv4 (20 bytes, no options) or IPv6
# (40 bytes) header, then the quoted transport header.
_ICMP_ERRORS = {
    4: ("icmp", "destination-unreachable, time-exceeded, parameter-problem"),
    6: ("icmpv6", "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"),
}
_QUOTED_PROTO_BITS = {4: (8 + 9) * 8, 6: (8 + 6) * 8}      # IPv4 protocol, IPv6 next header
_QUOTED_L4_BITS = {4: (8 + 20) * 8, 6: (8 + 40) * 8}
_PROTO_NUMBERS = {("icmp", 4): socket.IPPROTO_ICMP, ("icmp", 6): socket.IPPROTO_ICMPV6,
                  ("tcp", 4): socket.IPPROTO_TCP, ("tcp", 6): socket.IPPROTO_TCP,
                  ("udp", 4): socket.IPPROTO_UDP, ("udp", 6): socket.IPPROTO_UDP}


@dataclass(frozen=True)
class ProbeMatch:
    """The probe's packets: ICMP echo by id, or TCP/UDP by the probe's own port."""

    family: int  # 4 or 6
    proto: str   # "icmp" (echo; icmpv6 when family 6), "tcp", "udp"
    ident: int   # ICMP echo id, or the probe's source port (request sport == reply dport)

    def __post_init__(self) -> None:
        # Only these validated ints ever reach the ruleset text.
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        if self.proto not in ("icmp", "tcp", "udp"):
            raise ValueError(f"proto must be icmp, tcp or udp, not {self.proto!r}")
        if type(self.ident) is not int or not 0 <= self.ident <= 0xFFFF:
            raise ValueError(f"ident must be an int in 0..65535, not {self.ident!r}")


@dataclass(frozen=True)
class RuleVerdict:
    """The verdict one traced packet met in one chain: a rule's, or the policy."""

    family: str          # nft family of the table: "ip", "ip6", "inet", "bridge", ...
    table: str
    chain: str
    handle: int | None   # None for a chain policy
    rule: str            # rule text as nft prints it, or "policy drop"
    verdict: str         # "drop", "reject", "accept", "continue", "jump X", ...
    trace_id: str

    @property
    def drops(self) -> bool:
        """True for drop and reject rules and drop policies: the packet ended here."""
        return self.verdict in DROP_VERDICTS

    def describe(self) -> str:
        where = f"nft {self.family} {self.table} {self.chain}"
        if self.handle is None:
            return f"{where} {self.rule}"
        return f"{where} handle {self.handle}: {self.rule or '(rule text unknown)'}"


# ---------------------------------------------------------------- ruleset text


def table_name(pid: int | None = None) -> str:
    return f"{TABLE_PREFIX}{os.getpid() if pid is None else pid}"


def trace_rules(match: ProbeMatch) -> list[str]:
    """The rules (without the chain) that set the trace bit on the probe's packets."""
    fam, n = match.family, match.ident
    icmp, errors = _ICMP_ERRORS[fam]
    quoted = f"@th,{_QUOTED_PROTO_BITS[fam]},8 {_PROTO_NUMBERS[match.proto, fam]}"
    if match.proto == "icmp":
        rules = [f"{icmp} type {{ echo-request, echo-reply }} {icmp} id {n}"]
        quoted_id = f"@th,{_QUOTED_L4_BITS[fam] + 32},16 {n}"   # the quoted echo's id
    else:
        nfproto = "ipv4" if fam == 4 else "ipv6"
        rules = [f"meta nfproto {nfproto} meta l4proto {match.proto} th {port} {n}"
                 for port in ("sport", "dport")]
        quoted_id = f"@th,{_QUOTED_L4_BITS[fam]},16 {n}"        # the quoted request's sport
    rules.append(f"{icmp} type {{ {errors} }} {quoted} {quoted_id}")
    return [f"{rule} meta nftrace set 1" for rule in rules]


def build_ruleset(match: ProbeMatch, table: str, replace: bool = False) -> str:
    """One `nft -f -` transaction creating the trace table.

    Any deletion in a transaction costs an RCU grace period in the kernel's
    commit (~15 ms here), so by default a leftover of the same name (a dead
    process with our pid) is only flushed and its chains redefined; with
    `replace` it is deleted and made anew, for a leftover whose chains differ.
    """
    if not re.fullmatch(rf"{TABLE_PREFIX}\d+", table):
        raise ValueError(f"not a trace table name: {table!r}")
    body = "".join(f"\t\t{rule}\n" for rule in trace_rules(match))
    chains = "".join(
        f"\tchain {hook} {{\n"
        f"\t\ttype filter hook {hook} priority {TRACE_PRIORITY}; policy accept;\n"
        f"{body}\t}}\n"
        for hook in ("prerouting", "output"))
    clear = "delete" if replace else "flush"
    return (f"add table inet {table}\n{clear} table inet {table}\n"
            f"table inet {table} {{\n{chains}}}\n")


# ---------------------------------------------------------------- monitor lines

_EVENT_RE = re.compile(
    r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*?)\s*$")
# nft prints "rule TEXT # handle N (verdict V)", or, for a rule added after
# the monitor read the ruleset, "unknown rule handle N (verdict V)".
_RULE_RE = re.compile(
    r"^rule (?P<rule>.*) # handle (?P<handle>\d+) \(verdict (?P<verdict>[^()]+)\)")
_UNKNOWN_RE = re.compile(r"^unknown rule handle (?P<handle>\d+) \(verdict (?P<verdict>[^()]+)\)")
_POLICY_RE = re.compile(r"^policy (?P<verdict>\S+)")
# The monitor prints counters as they were when it read the ruleset: stale.
_COUNTER_RE = re.compile(r"\bcounter packets \d+ bytes \d+")
_REJECT_RE = re.compile(r"(?:^|\s)reject(?:\s|$)")


def _rule_verdict(rule: str, verdict: str) -> str:
    # A reject statement sends its error, then the kernel reports verdict drop.
    if verdict == "drop" and _REJECT_RE.search(re.sub(r'"[^"]*"', '""', rule)):
        return "reject"
    return verdict


def parse_event(line: str) -> RuleVerdict | None:
    """One `nft --handle monitor trace` line as a RuleVerdict; None for packet
    lines, warnings and anything else without a verdict."""
    event = _EVENT_RE.match(line)
    if event is None:
        return None
    where = (event["family"], event["table"], event["chain"])
    rest = event["rest"]
    if m := _RULE_RE.match(rest):
        rule = _COUNTER_RE.sub("counter", m["rule"])
        return RuleVerdict(*where, int(m["handle"]), rule,
                           _rule_verdict(rule, m["verdict"]), event["id"])
    if m := _UNKNOWN_RE.match(rest):
        return RuleVerdict(*where, int(m["handle"]), "", m["verdict"], event["id"])
    if m := _POLICY_RE.match(rest):
        return RuleVerdict(*where, None, f"policy {m['verdict']}", m["verdict"], event["id"])
    return None


def carries(packet: str, match: ProbeMatch) -> bool:
    """Whether a trace's "packet:" line is the probe's (or its answer's)."""
    words = packet.split()
    pairs = set(zip(words, words[1:], strict=False))
    number = str(match.ident)
    if match.proto == "icmp":
        return ("id", number) in pairs
    return ("sport", number) in pairs or ("dport", number) in pairs


def parse_monitor(lines: Iterable[str], own_table: str,
                  match: ProbeMatch | None = None) -> list[RuleVerdict]:
    """The final verdict of each traced packet, in the order the packets came.

    A trace id counts only if it crossed our table's nftrace rule or its
    packet carries the probe's identity (a forwarded packet gets a new trace
    id after routing, a looped-back one after re-injection): traces someone
    else turned on are not reported.  Our table's own events are not
    verdicts.  A packet crosses several base chains per hook, and a
    chain hooked at several places may show up more than once per trace id:
    what ended it is its last drop, reject or drop policy; without one, the
    last accept (a rule's or a policy's) says it went on.
    """
    ours: set[str] = set()
    final: dict[str, RuleVerdict] = {}
    for line in lines:
        event = parse_event(line)
        if event is None:
            packet = _EVENT_RE.match(line)
            if match is not None and packet and packet["rest"].startswith("packet:") \
                    and carries(packet["rest"], match):
                ours.add(packet["id"])
            continue
        if event.table == own_table and event.family == "inet":
            if event.handle is not None:
                ours.add(event.trace_id)
            continue
        if not (event.drops or event.verdict == "accept"):
            continue                     # continue, jump, goto, return: not an end
        previous = final.get(event.trace_id)
        if previous is None or event.drops or not previous.drops:
            final[event.trace_id] = event
    return [verdict for trace_id, verdict in final.items() if trace_id in ours]


# ---------------------------------------------------------------- /proc/net/netlink


@dataclass(frozen=True)
class NetlinkSocket:
    protocol: int
    port_id: int    # "Pid": the process id for a process's first socket
    groups: int     # bitmask of multicast groups 1..32
    rmem: int       # bytes waiting in the receive queue
    drops: int
    inode: int

    def in_group(self, group: int) -> bool:
        return bool(self.groups & (1 << (group - 1)))


def parse_netlink(text: str) -> list[NetlinkSocket]:
    """/proc/net/netlink: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode."""
    sockets = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 10:
            sockets.append(NetlinkSocket(int(f[1]), int(f[2]), int(f[3], 16), int(f[4]),
                                         int(f[8]), int(f[9])))
    return sockets


def trace_sockets(text: str) -> list[NetlinkSocket]:
    return [s for s in parse_netlink(text)
            if s.protocol == NETLINK_NETFILTER and s.in_group(NFNLGRP_NFTRACE)]


def subscribed(text: str, pid: int, before: set[int]) -> NetlinkSocket | None:
    """The monitor's socket in the trace group: port id == its pid, or, should
    the port id differ, one that was not there before the monitor started."""
    found = trace_sockets(text)
    return next((s for s in found if s.port_id == pid), None) or \
        next((s for s in found if s.inode not in before), None)


# ---------------------------------------------------------------- the trace


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("Error")), lines[0] if lines else "")


def _cannot_trace(error: str) -> str | None:
    """Words for an nft error that means tracing is impossible here, or None."""
    if "Operation not permitted" in error:
        return "no privilege to add an nftables table (needs root or CAP_NET_ADMIN)"
    if "Protocol not supported" in error or "Operation not supported" in error:
        return "nf_tables is not available in this kernel (CONFIG_NF_TABLES, modprobe nf_tables)"
    return None


def _why(error: str) -> str:
    return _cannot_trace(error) or f"nft failed: {error or 'no message'}"


class NftTrace:
    """Trace one probe through nf_tables; a context manager.

        with NftTrace(ProbeMatch(4, "icmp", ident)) as trace:
            send_probe()
        for verdict in trace.verdicts: ...

    or start() ... stop() -> verdicts.  Never raises for a missing nft, a
    kernel without nf_tables or missing privilege: see available/why_not.
    """

    def __init__(self, match: ProbeMatch, nft: str = "nft",
                 netns_proc_net: str = "/proc/net") -> None:
        self.match = match
        self.nft = shutil.which(nft) or nft
        self.netlink_path = os.path.join(netns_proc_net, "netlink")
        self.table = table_name()
        self.available = True
        self.why_not = ""
        self.lost_events = 0             # trace events the kernel dropped (full socket)
        self.verdicts: list[RuleVerdict] = []
        self._monitor: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lines: list[str] = []
        self._socket: NetlinkSocket | None = None
        self._table_added = False
        self._stopped = False

    def __enter__(self) -> NftTrace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _degrade(self, why: str) -> None:
        self.available = False
        self.why_not = why

    def _read_netlink(self) -> str:
        with open(self.netlink_path) as f:
            return f.read()

    def start(self) -> None:
        """Add the table and start the monitor; return once it is subscribed."""
        nft = self.nft
        if shutil.which(nft) is None:
            self._degrade(f"`{nft}` not found (apt-get install nftables): "
                          "nftables rules cannot be named")
            return
        try:
            before = {s.inode for s in trace_sockets(self._read_netlink())}
            # The monitor reads the ruleset while the table goes in: both at once.
            self._monitor = subprocess.Popen(
                [nft, "--handle", "monitor", "trace"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            self._reader = threading.Thread(target=self._read, name="nft-monitor", daemon=True)
            self._reader.start()
            error = self._add_table(nft, replace=False)
            if error is not None and _cannot_trace(error) is None:
                error = self._add_table(nft, replace=True)
        except (OSError, subprocess.SubprocessError) as err:
            error = str(err) or type(err).__name__
        if error is not None:
            self._degrade(_why(error))
            self._end_monitor()
            return
        self._table_added = True
        if not self._wait_subscribed(before):
            why = self.why_not
            self.stop()
            self._degrade(why)

    def _add_table(self, nft: str, replace: bool) -> str | None:
        """None once the table is in, else nft's error."""
        add = subprocess.run([nft, "-f", "-"], input=build_ruleset(self.match, self.table, replace),
                             capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
        return None if add.returncode == 0 else _first_error(add.stderr)

    def _read(self) -> None:
        assert self._monitor is not None and self._monitor.stdout is not None
        for line in self._monitor.stdout:
            self._lines.append(line.rstrip("\n"))

    def _wait_subscribed(self, before: set[int]) -> bool:
        assert self._monitor is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._socket = subscribed(self._read_netlink(), self._monitor.pid, before)
            if self._socket is not None:
                return True
            if self._monitor.poll() is not None:
                self._reader.join(timeout=1)
                self.why_not = _why(_first_error("\n".join(self._lines)))
                return False
            time.sleep(POLL_S)
        self.why_not = f"`nft monitor trace` did not subscribe within {READY_TIMEOUT_S:g} s"
        return False

    def stop(self, drain: bool = True) -> list[RuleVerdict]:
        """Delete the table, let the monitor print what it received (unless
        `drain` is False: the caller needs no verdict), end it; return each
        traced packet's final verdict (see parse_monitor).
        The table's deletion dominates: its commit, and the RCU grace period
        the kernel waits for before it frees the table, which every
        NETLINK_NETFILTER socket closing meanwhile waits for too (nf_tables'
        NETLINK_URELEASE notifier flushes the pending destroy work)."""
        if self._stopped:
            return self.verdicts
        delete = None
        try:
            if self._table_added:
                delete = subprocess.Popen([self.nft, "delete", "table", "inet", self.table],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
            if drain and self._monitor is not None and self._socket is not None:
                self._drain()
        finally:
            self._end_monitor()
            if delete is not None:
                self._reap_delete(delete)
        self._stopped = True
        if self.available:
            self.verdicts = self._resolve(parse_monitor(self._lines, self.table, self.match))
        return self.verdicts

    def _reap_delete(self, delete: subprocess.Popen[str]) -> None:
        try:
            _, err = delete.communicate(timeout=NFT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            delete.kill()
            _, err = delete.communicate()
        self._table_added = delete.returncode != 0
        if self._table_added:
            self.why_not = f"could not delete table inet {self.table}: {err.strip()}"

    def _drain(self) -> None:
        """Wait until the monitor has printed every event the kernel queued:
        its socket's receive queue is empty and nft sleeps (in recvmsg again),
        twice in a row."""
        assert self._monitor is not None and self._socket is not None
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            sock = next((s for s in parse_netlink(self._read_netlink())
                         if s.inode == self._socket.inode), None)
            if sock is None:
                return
            self.lost_events = sock.drops
            quiet = quiet + 1 if sock.rmem == 0 and self._sleeping() else 0
            if quiet < 2:
                time.sleep(POLL_S)

    def _sleeping(self) -> bool:
        try:
            with open(f"/proc/{self._monitor.pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] == "S"
        except OSError:
            return True

    def _end_monitor(self) -> None:
        proc, self._monitor = self._monitor, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=1)
        proc.stdout.close()

    def _resolve(self, verdicts: list[RuleVerdict]) -> list[RuleVerdict]:
        """Fill in the text of rules added after the monitor read the ruleset."""
        texts: dict[tuple[str, str, str], dict[int, str]] = {}
        resolved = []
        for v in verdicts:
            if v.handle is not None and not v.rule:
                key = (v.family, v.table, v.chain)
                if key not in texts:
                    texts[key] = chain_rules(*key, nft=self.nft)
                rule = texts[key].get(v.handle, "")
                v = RuleVerdict(v.family, v.table, v.chain, v.handle, rule,
                                _rule_verdict(rule, v.verdict), v.trace_id)
            resolved.append(v)
        return resolved


# ---------------------------------------------------------------- listing, leftovers

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_HANDLE_RE = re.compile(r"^\s*(?P<rule>.*?) # handle (?P<handle>\d+)\s*$")


def parse_chain_listing(text: str) -> dict[int, str]:
    """`nft --handle list chain ...` output: rule handle -> rule text."""
    rules = {}
    for line in text.splitlines():
        m = _HANDLE_RE.match(line)
        if m and not m["rule"].startswith(("table ", "chain ")) and not m["rule"].endswith("{"):
            rules[int(m["handle"])] = _COUNTER_RE.sub("counter", m["rule"])
    return rules


def chain_rules(family: str, table: str, chain: str, nft: str = "nft") -> dict[int, str]:
    """The chain's rules by handle, now; empty when it cannot be listed."""
    if not all(_NAME_RE.fullmatch(name) for name in (family, table, chain)):
        return {}               # names come from the kernel; nft would re-parse them
    try:
        out = subprocess.run([nft, "--handle", "list", "chain", family, table, chain],
                             capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_chain_listing(out.stdout) if out.returncode == 0 else {}


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def leftover_tables(listing: str, alive: Callable[[int], bool] = _alive) -> list[str]:
    """From `nft list tables`: our trace tables whose process is gone."""
    found = re.findall(rf"^table inet ({TABLE_PREFIX}(\d+))\s*$", listing, re.MULTILINE)
    return [name for name, pid in found if not alive(int(pid))]


def remove_leftovers(nft: str = "nft") -> list[str]:
    """Delete the trace tables of cntrace processes that died mid-trace; their names."""
    try:
        listing = subprocess.run([nft, "list", "tables"], capture_output=True, text=True,
                                 timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return []
    removed = []
    for name in leftover_tables(listing.stdout):
        done = subprocess.run([nft, "delete", "table", "inet", name], capture_output=True,
                              timeout=NFT_TIMEOUT_S)
        if done.returncode == 0:
            removed.append(name)
    return removed
