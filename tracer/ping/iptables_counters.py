"""Which iptables rule dropped a packet: diff of rule counters around a probe.

The kernel's drop reason says only NETFILTER_DROP; to name the rule and chain
(DOCKER-USER, FORWARD, DOCKER-ISOLATION-STAGE-2, ...) we read every rule's
packet counter with `iptables-save -c` / `ip6tables-save -c` before and after
the probe and report the rules whose counters moved.  This works the same for
iptables-nft (Debian's default, what Docker drives) and iptables-legacy,
because both print counters as `[packets:bytes]`.

Counters are global, so unrelated traffic crossing the same rules in between
shows up too: the caller should keep the window between the two snapshots
short.  A missing binary or a table the kernel has not loaded is skipped:
snapshot() returns what it could read and never raises for that.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

FAMILIES = ("ipv4", "ipv6")
TABLES = ("filter", "nat", "raw", "mangle")
SAVE_COMMANDS = {"ipv4": "iptables-save", "ipv6": "ip6tables-save"}
TOOL_NAMES = {"ipv4": "iptables", "ipv6": "ip6tables"}
DROP_TARGETS = frozenset({"DROP", "REJECT"})
SAVE_TIMEOUT_S = 10.0

# Sort hits in the order a packet meets them: tables by netfilter hook priority,
# built-in chains by hook, user chains after them by name, and within a chain
# the rules first and the policy (index 0) last, as the kernel evaluates them.
_TABLE_ORDER = {"raw": 0, "mangle": 1, "nat": 2, "filter": 3, "security": 4}
_CHAIN_ORDER = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
_JUMPS = frozenset({"-j", "--jump", "-g", "--goto"})

_POLICY_RE = re.compile(r"^:(\S+)\s+(\S+)(?:\s+\[(\d+):(\d+)\])?")
_RULE_RE = re.compile(r"^\[(\d+):(\d+)\]\s+(-A\s+(\S+).*?)\s*$")

# (family, table, chain, rule text, n-th rule with that text in the chain).
# Keyed by text, not position, so a rule inserted between the two snapshots
# (Docker does this) does not shift every rule below it onto another's counter.
RuleKey = tuple[str, str, str, str, int]
Runner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class RuleCounter:
    """One rule, or one built-in chain's policy, with its counters."""

    family: str  # "ipv4" | "ipv6"
    table: str  # "filter", "nat", "raw", "mangle"
    chain: str
    rule: str  # "-A CHAIN ..." as iptables-save prints it, or "policy DROP"
    target: str | None  # -j/-g target, or the policy verdict; None for a rule without one
    packets: int
    bytes: int
    index: int  # 1-based position within the chain, 0 for the policy

    @property
    def is_policy(self) -> bool:
        return self.index == 0


@dataclass(frozen=True)
class RuleHit:
    """A rule whose packet counter moved between two snapshots."""

    counter: RuleCounter  # the 'after' state
    packets: int  # delta

    @property
    def drops(self) -> bool:
        """True for DROP/REJECT rules and DROP policies: the packet ended here."""
        return self.counter.target in DROP_TARGETS


def _target(rule: str) -> str | None:
    try:
        tokens = shlex.split(rule)
    except ValueError:  # unbalanced quote in a comment: plain split still finds -j
        tokens = rule.split()
    for option, value in zip(tokens, tokens[1:], strict=False):
        if option in _JUMPS:
            return value
    return None


def parse_save(text: str, family: str) -> list[RuleCounter]:
    """Parse `iptables-save -c` output into counters, in file order.

    User chains (policy "-") have no counter of their own and yield nothing
    until they have rules.  Comments, blank lines, rules without a
    `[packets:bytes]` prefix and anything unknown are skipped.
    """
    counters: list[RuleCounter] = []
    table: str | None = None
    positions: dict[str, int] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table, positions = line[1:].strip(), {}
        elif line == "COMMIT":
            table = None
        elif table is None:
            continue
        elif (policy := _POLICY_RE.match(line)) is not None:
            chain, verdict, packets, nbytes = policy.groups()
            if verdict != "-":
                counters.append(RuleCounter(family, table, chain, f"policy {verdict}", verdict,
                                            int(packets or 0), int(nbytes or 0), 0))
        elif (rule := _RULE_RE.match(line)) is not None:
            packets, nbytes, text_, chain = rule.groups()
            positions[chain] = positions.get(chain, 0) + 1
            counters.append(RuleCounter(family, table, chain, text_, _target(text_),
                                        int(packets), int(nbytes), positions[chain]))
    return counters


def keyed(counters: Iterable[RuleCounter]) -> dict[RuleKey, RuleCounter]:
    """Index counters by (family, table, chain, rule text, occurrence)."""
    out: dict[RuleKey, RuleCounter] = {}
    seen: dict[tuple[str, str, str, str], int] = {}
    for c in counters:
        base = (c.family, c.table, c.chain, c.rule)
        seen[base] = seen.get(base, 0) + 1
        out[(*base, seen[base])] = c
    return out


def snapshot(tables: Iterable[str] = TABLES, families: Iterable[str] = FAMILIES,
             runner: Runner = subprocess.run) -> dict[RuleKey, RuleCounter]:
    """Read every rule counter of the given tables and families.

    A missing iptables-save, a table the kernel has not loaded ("Table `mangle'
    does not exist", exit 1), a timeout or no privilege skips that table.
    """
    counters: list[RuleCounter] = []
    tables = tuple(tables)
    for family in families:
        for table in tables:
            try:
                done = runner([SAVE_COMMANDS[family], "-c", "-t", table], capture_output=True,
                              text=True, check=False, timeout=SAVE_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError):
                break  # the binary is missing or hangs: no other table will do better
            if done.returncode == 0:
                counters += parse_save(done.stdout, family)
    return keyed(counters)


# iptables-legacy's tables live in x_tables and are listed here once loaded;
# iptables-nft's (Debian's default, Docker's) are nf_tables tables, which
# nftables' own trace names (tracer.ping.nftrace) without any counter.
LEGACY_TABLE_LISTS = ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")


def legacy_tables_in_use(paths: Iterable[str] = LEGACY_TABLE_LISTS) -> bool:
    for path in paths:
        try:
            with open(path) as listing:
                if listing.read().strip():
                    return True
        except OSError:
            continue
    return False


def _traversal_order(counter: RuleCounter) -> tuple:
    return (
        counter.family,
        _TABLE_ORDER.get(counter.table, len(_TABLE_ORDER)), counter.table,
        _CHAIN_ORDER.get(counter.chain, len(_CHAIN_ORDER)), counter.chain,
        counter.is_policy, counter.index,
    )


def diff(before: Mapping[RuleKey, RuleCounter],
         after: Mapping[RuleKey, RuleCounter]) -> list[RuleHit]:
    """Rules whose packet counter increased, in the order a packet meets them.

    A rule absent from `before` counts from 0; so does one whose counter went
    down, since that means it was deleted and re-created in between.
    """
    hits = []
    for key, now in after.items():
        then = before.get(key)
        base = then.packets if then is not None and then.packets <= now.packets else 0
        if now.packets > base:
            hits.append(RuleHit(now, now.packets - base))
    return sorted(hits, key=lambda hit: _traversal_order(hit.counter))


def dropping_hits(hits: Iterable[RuleHit]) -> list[RuleHit]:
    """Only the hits that ended the packet: DROP/REJECT rules and DROP policies."""
    return [hit for hit in hits if hit.drops]


def describe(hit: RuleHit) -> str:
    """One line, e.g. `iptables filter DOCKER-USER rule 1: -A DOCKER-USER -j DROP (1 packet)`."""
    c = hit.counter
    where = f"{TOOL_NAMES.get(c.family, c.family)} {c.table} {c.chain}"
    plural = "" if hit.packets == 1 else "s"
    if c.is_policy:
        return f"{where} {c.rule} ({hit.packets} packet{plural})"
    return f"{where} rule {c.index}: {c.rule} ({hit.packets} packet{plural})"
