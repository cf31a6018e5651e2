"""Compile bpf/*.bpf.c with bcc and attach every hook, reporting each one.

Hooks are probed, not assumed: the mechanism for each is chosen from what
tracer/kernel/features.py finds in the running kernel (BPF netfilter links, else
fentry/fexit on nf_hook_slow; tcx, else classic tc; the daemon's NAT counted
in its tc programs, else at netfilter hooks), only the chosen code is
compiled, and each outcome is recorded as a HookStatus naming the mechanism,
or what is missing and why, so a kernel without a hook still traces what it
can, and says so.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tracer.errors import KernelFeatureError, PrivilegeError
from tracer.kernel import bpfcache, bpflink, features
from tracer.kernel.btf import Btf
from tracer.kernel.kernel_layout import KernelLayout, drop_reasons, resolve

if TYPE_CHECKING:
    from tracer.kernel import tclink


def _find_bpf_dir() -> Path:
    """bpf/ beside the package (a checkout), or where the wheel's data_files
    put it (an install: <prefix>/share/cntrace/bpf)."""
    for candidate in (Path(__file__).resolve().parents[2] / "bpf",
                      Path(sys.prefix) / "share" / "cntrace" / "bpf"):
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "bpf"


BPF_DIR = _find_bpf_dir()

# bcc's frontend rewrites map calls only in the main file, so local headers
# are inlined here instead of left to the preprocessor.
_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)

RAW_TRACEPOINTS = {
    # tracepoint: (BPF function, what is lost without it)
    "net_dev_start_xmit": ("cntrace_dev_xmit", "packets leaving devices"),
    "netif_receive_skb": ("cntrace_dev_receive", "packets arriving on devices"),
    "kfree_skb": ("cntrace_drop", "drops and their reasons"),
}

# (pf, hook, priority): right after DNAT (-100) on the way in, just before the
# filter table (0) in FORWARD, right after SNAT (100) on the way out.
NETFILTER_HOOKS = tuple(
    (pf, hook, priority)
    for pf in (bpflink.NFPROTO_IPV4, bpflink.NFPROTO_IPV6)
    for hook, priority in (
        (bpflink.NF_INET_PRE_ROUTING, -99),
        (bpflink.NF_INET_LOCAL_IN, 101),
        (bpflink.NF_INET_FORWARD, -1),
        (bpflink.NF_INET_LOCAL_OUT, -99),
        (bpflink.NF_INET_POST_ROUTING, 101),
    )
)
NAT_HOOKS = (bpflink.NF_INET_PRE_ROUTING, bpflink.NF_INET_LOCAL_OUT, bpflink.NF_INET_POST_ROUTING)
DAEMON_NETFILTER_HOOKS = tuple(h for h in NETFILTER_HOOKS if h[1] in NAT_HOOKS)
NETFILTER_FUNCTION = "cntrace_netfilter"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
PRIORITY_SLOTS = 16          # concurrent cntrace instances per netfilter hook
MAX_CONTAINERS = 4096      # counter slots (bpf/accounting.h)
PEER_COLUMNS = 4           # peers a container and direction count in an array (bpf/accounting.h)
# How often the daemon advances bpf/accounting.h's flow_epoch, and so how
# often a steady flow's last_ns is refreshed (FLOW_TOUCH_NS there).
FLOW_EPOCH_SECONDS = 1
VETH_ARRAY_SIZE = 65536    # host veth ifindexes looked up in an array (bpf/accounting.h)
# The daemon's collectors whose per-packet work is compiled in or out of its
# veth programs (bpf/accounting.h count_tc); "drops" is the kfree_skb program.
COLLECT_CFLAGS = {"traffic": "-DCOLLECT_TRAFFIC", "peers": "-DCOLLECT_PEERS",
                  "flows": "-DCOLLECT_FLOWS", "nat": "-DCOLLECT_NAT"}
DAEMON_COLLECTORS = frozenset([*COLLECT_CFLAGS, "drops"])


@dataclass(frozen=True)
class HookStatus:
    name: str           # e.g. "raw_tracepoint:kfree_skb", "netfilter:ipv4:POSTROUTING"
    attached: bool
    detail: str         # why it is missing, or what it gives
    mechanism: str = ""  # how it is attached (below, or tclink's); "" when it is not

    def to_dict(self) -> dict:
        return {"hook": self.name, "attached": self.attached, "mechanism": self.mechanism,
                "detail": self.detail}


# What HookStatus.mechanism says (the `mechanism` label of cntrace_hook_attached),
# besides tclink's "tcx" and "cls_bpf".
RAW_TRACEPOINT = "raw_tracepoint"
NETFILTER_LINK = "netfilter_link"
FENTRY = "fentry"
FEXIT = "fexit"


def check_privileges(status_path: str = "/proc/self/status") -> None:
    """The effective capabilities BPF tracing needs: CAP_SYS_ADMIN, or
    CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN (deploy/CAPABILITIES.md has the
    daemon's measured set).  Checked on capabilities, not uid: root inside a
    restricted bounding set holds none of them."""
    cap_eff = 0
    try:
        for line in Path(status_path).read_text().splitlines():
            if line.startswith("CapEff:"):
                cap_eff = int(line.split()[1], 16)
    except OSError:
        cap_eff = ~0 if os.geteuid() == 0 else 0
    cap_sys_admin, cap_net_admin, cap_perfmon, cap_bpf = 21, 12, 38, 39
    needed = (1 << cap_bpf) | (1 << cap_perfmon) | (1 << cap_net_admin)
    if cap_eff & (1 << cap_sys_admin) or cap_eff & needed == needed:
        return
    raise PrivilegeError("cntrace needs root (or CAP_SYS_ADMIN, or CAP_BPF, CAP_PERFMON "
                         "and CAP_NET_ADMIN)")


def program_source(bpf_dir: Path = BPF_DIR, maps_only: bool = False) -> str:
    """All bpf/*.bpf.c as one translation unit, local headers inlined once.
    maps_only: the headers alone (every map is declared there, no program
    is), for a cached compile (tracer.kernel.bpfcache)."""
    seen: set[str] = set()

    def inline(text: str) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name in seen:
                return ""
            seen.add(name)
            return inline((bpf_dir / name).read_text())

        return _LOCAL_INCLUDE.sub(replace, text)

    def top(path: Path) -> str:
        text = path.read_text()
        return "\n".join(m.group(0) for m in _LOCAL_INCLUDE.finditer(text)) if maps_only \
            else text

    return "\n".join(inline(top(path)) for path in sorted(bpf_dir.glob("*.bpf.c")))


@dataclass
class Tracer:
    """The loaded BPF object: its maps, attached hooks and their status."""

    bpf: object
    layout: KernelLayout
    drop_reasons: dict[int, str] = field(default_factory=dict)
    hooks: list[HookStatus] = field(default_factory=list)
    # The daemon's counting programs (tcx or classic tc), attached per
    # container veth and exit device by tracer.daemon.bpf_maps; None outside the daemon.
    tc_programs: tclink.TcxLinks | tclink.ClassicTc | None = None
    nat_at_exits: bool = False   # the daemon's exit-device program is loaded
    _link_fds: list[int] = field(default_factory=list)

    def __getitem__(self, map_name: str):
        return self.bpf[map_name]

    @property
    def attached(self) -> list[HookStatus]:
        return [h for h in self.hooks if h.attached]

    def symbolize(self, address: int) -> str:
        return self.bpf.ksym(address, show_offset=True).decode(errors="replace")

    def close(self) -> None:
        if self.tc_programs is not None:
            self.tc_programs.close()
            self.tc_programs = None
        for fd in self._link_fds:
            os.close(fd)
        self._link_fds.clear()
        self.bpf.cleanup()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class KernelInfo:
    """What the running kernel's BTF tells the loader."""

    layout: KernelLayout
    drop_reasons: dict[int, str]
    nf_hook_slow_id: int | None = None   # BTF id, for fentry/fexit


def read_kernel(btf_path: str = DEFAULT_BTF) -> KernelInfo:
    """Cheap (~20 ms) and done first, so a kernel without BTF fails before
    anything else is asked of it."""
    with Btf.vmlinux(btf_path) as btf:
        return KernelInfo(resolve(btf), drop_reasons(btf),
                          btf.function_id(features.NF_HOOK_FUNCTION))


@dataclass(frozen=True)
class NatChoice:
    """How the netfilter hops are seen on this kernel: NETFILTER_LINK, FENTRY
    (fentry/fexit on nf_hook_slow) or "" with why neither works."""

    mechanism: str
    why_not: str = ""

    def cflags(self) -> list[str]:
        if self.mechanism == NETFILTER_LINK:
            return ["-DNAT_VIA_NETFILTER_LINK"]
        if self.mechanism == FENTRY:
            # The netns a netfilter link would sit in: the tracer's own.
            return ["-DNAT_VIA_NF_HOOK_SLOW",
                    f"-DTRACER_NETNS={os.stat('/proc/self/ns/net').st_ino}"]
        return []


def choose_nat(kernel: KernelInfo) -> NatChoice:
    layout = kernel.layout
    if layout.has_netfilter_programs:
        link = features.netfilter_link()
        if link.available:
            return NatChoice(NETFILTER_LINK)
        link_why = f"BPF netfilter link: {link.detail}"
    else:
        link_why = "BPF netfilter links: kernel BTF has no bpf_nf_ctx (they need kernel >= 6.4)"
    if not layout.has_nf_hook_state:
        return NatChoice("", f"{link_why}; fentry: kernel BTF has no struct nf_hook_state")
    probe = features.fentry(kernel.nf_hook_slow_id)
    if probe.available:
        return NatChoice(FENTRY)
    return NatChoice("", f"{link_why}; fentry/fexit on {features.NF_HOOK_FUNCTION}: "
                         f"{probe.detail}")


# bcc's embedded clang/LLVM is not safe to run twice at once in one process.
_COMPILING = threading.Lock()


@dataclass
class Compiled:
    """BPF programs compiled and loaded into the kernel, not yet attached
    (except fentry/fexit, which bcc attaches as it loads them)."""

    bpf: object
    nat: NatChoice
    netfilter: bool
    daemon: bool
    cached: bool = False     # programs from tracer.kernel.bpfcache, no full compile
    nat_in_tc: bool = False  # the daemon counts NAT in its tc programs (bpf/accounting.h)
    collectors: frozenset[str] = DAEMON_COLLECTORS   # the daemon's BPF work asked for


def compile_programs(
    kernel: KernelInfo,
    ringbuf_pages: int = 256,
    netfilter: bool = True,
    flow_table_size: int | None = None,
    collectors: frozenset[str] = DAEMON_COLLECTORS,
) -> Compiled:
    """The slow half of load() (clang: ~0.6 s of a core), safe to run in a
    thread while the caller discovers the topology.  With flow_table_size,
    the daemon's counters (bpf/accounting.h) are compiled in too, with the
    work of `collectors` only."""
    check_privileges()
    from bcc import BPF  # imported late: ~100 MB, and absent where only unit tests run

    daemon = flow_table_size is not None
    if daemon:
        netfilter = netfilter and "nat" in collectors   # the daemon's hooks count NAT only
    # The daemon counts NAT in its tc programs when they can read the
    # conntrack entry: no netfilter program of its own then.
    nat_in_tc = daemon and netfilter and kernel.layout.has_conntrack and \
        features.tc_conntrack().available
    netfilter = netfilter and not nat_in_tc
    nat = choose_nat(kernel) if netfilter else NatChoice("", "not asked for")
    cflags = [*kernel.layout.cflags(), f"-DRINGBUF_PAGES={ringbuf_pages}", *nat.cflags()]
    if daemon:
        cflags += ["-DCOUNT_METRICS", f"-DFLOW_TABLE_SIZE={flow_table_size}",
                   f"-DMAX_CONTAINERS={MAX_CONTAINERS}", f"-DVETH_ARRAY_SIZE={VETH_ARRAY_SIZE}",
                   f"-DPEER_COLUMNS={PEER_COLUMNS}",
                   f"-DFLOW_TOUCH_NS={FLOW_EPOCH_SECONDS * 1_000_000_000}",
                   *(flag for name, flag in COLLECT_CFLAGS.items() if name in collectors)]
        if not nat_in_tc:
            cflags.append("-DNAT_IN_NETFILTER")
    source = program_source()
    # bcc attaches kfunc__/kretfunc__ functions (FENTRY) as it loads them:
    # those are compiled every time, the others come from the cache.
    key = None if nat.mechanism == FENTRY else \
        bpfcache.cache_key(source, cflags, _bcc_version())
    cached = bpfcache.load(key) if key else None
    if cached:
        try:
            with _COMPILING:
                bpf = BPF(text=program_source(maps_only=True), cflags=cflags)
            try:
                bpfcache.install(bpf, cached, _program_types())
            except BaseException:
                bpf.cleanup()
                raise
            return Compiled(bpf, nat, netfilter, daemon, cached=True, nat_in_tc=nat_in_tc,
                            collectors=collectors)
        except Exception:  # bcc's bare Exception, or a refused program: compile it all
            pass
    try:
        with _COMPILING:
            bpf = BPF(text=source, cflags=cflags)
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        raise KernelFeatureError(f"cannot compile or load the BPF programs: {exc}") from exc
    if key:
        functions = [f for f in _program_types() if _has_function(bpf, f)]
        bpfcache.save(bpf, key, bpfcache.map_names(source), functions)
    return Compiled(bpf, nat, netfilter, daemon, nat_in_tc=nat_in_tc, collectors=collectors)


def _bcc_version() -> str:
    import bcc

    return str(getattr(bcc, "__version__", "unknown"))


def _program_types() -> dict[str, tuple[int, int]]:
    """Every program we may load, with its BPF program and attach type."""
    from bcc import BPF

    from tracer.kernel import tclink

    types = {function: (BPF.RAW_TRACEPOINT, -1) for function, _ in RAW_TRACEPOINTS.values()}
    types[NETFILTER_FUNCTION] = (bpflink.BPF_PROG_TYPE_NETFILTER, bpflink.BPF_NETFILTER)
    types.update({function: (BPF.SCHED_CLS, -1) for function in tclink.TC_FUNCTIONS})
    return types


def _has_function(bpf, function: str) -> bool:
    from bcc import libbcc

    return bool(libbcc.lib.bpf_function_start(bpf.module, function.encode()))


def attach(
    kernel: KernelInfo,
    compiled: Compiled,
    tracepoints: Iterable[str] = tuple(RAW_TRACEPOINTS),
) -> Tracer:
    """Attach what compile_programs() loaded; KernelFeatureError if nothing
    can attach."""
    tracer = Tracer(compiled.bpf, kernel.layout, kernel.drop_reasons)
    wanted = compiled.collectors
    if compiled.daemon:   # traffic is counted by tcx on container veths, not device tracepoints
        tracepoints = [name for name in tracepoints if name == "kfree_skb" and "drops" in wanted]
    try:
        for name in tracepoints:
            tracer.hooks.append(_attach_raw_tracepoint(compiled.bpf, name))
        if compiled.daemon and wanted & COLLECT_CFLAGS.keys():
            tracer.hooks.extend(_load_tc_programs(tracer, compiled.nat_in_tc))
        if compiled.netfilter:
            # The daemon (NAT_IN_NETFILTER) counts NAT only where NAT happens: PRE, OUT, POST.
            hooks = DAEMON_NETFILTER_HOOKS if compiled.daemon else NETFILTER_HOOKS
            tracer.hooks.extend(_attach_netfilter(tracer, hooks, compiled.nat))
    except BaseException:
        tracer.close()
        raise
    if tracer.hooks and not tracer.attached:   # none asked for: the daemon's collectors off
        tracer.close()
        missing = "; ".join(f"{h.name}: {h.detail}" for h in tracer.hooks)
        raise KernelFeatureError(f"no BPF hook could be attached ({missing})")
    return tracer


def load(
    kernel: KernelInfo,
    ringbuf_pages: int = 256,
    tracepoints: Iterable[str] = tuple(RAW_TRACEPOINTS),
    netfilter: bool = True,
    flow_table_size: int | None = None,
    collectors: frozenset[str] = DAEMON_COLLECTORS,
) -> Tracer:
    """Compile, load and attach; KernelFeatureError if nothing can attach."""
    return attach(kernel, compile_programs(kernel, ringbuf_pages, netfilter, flow_table_size,
                                           collectors), tracepoints)


def _load_tc_programs(tracer: Tracer, nat_in_tc: bool) -> list[HookStatus]:
    """Load the counting programs; the registry attaches them per container
    veth (and, when NAT is counted there, per exit device of the host), with
    tcx links where the kernel has them, else classic tc."""
    names = ["tc:container-veths"] + (["tc:exit-devices"] if nat_in_tc else [])
    lost = "lost: per-container traffic, peer, flow and NAT counters"
    from tracer.kernel import tclink  # pyroute2 and the registry: the daemon's, not trace-ping's

    try:
        from bcc import BPF

        programs = {f: tracer.bpf.load_func(f, BPF.SCHED_CLS).fd for f in tclink.TC_FUNCTIONS
                    if nat_in_tc or f not in tclink.functions(tclink.EXIT)}
    except Exception as exc:  # bcc: bare Exception
        return [HookStatus(n, False, f"the kernel refused the tc programs ({exc}); {lost}")
                for n in names]
    tcx = features.tcx()
    if tcx.available:
        tracer.tc_programs = tclink.TcxLinks(programs)
    else:
        try:
            tracer.tc_programs = tclink.ClassicTc(programs)
        except OSError as exc:   # pyroute2's NetlinkError is an OSError
            return [HookStatus(n, False, f"no tcx ({tcx.detail}) and classic tc failed "
                                         f"({exc}); {lost}") for n in names]
    tracer.nat_at_exits = nat_in_tc
    attached = tracer.tc_programs
    detail = attached.detail if tcx.available else f"{attached.detail}; no tcx: {tcx.detail}"
    statuses = [HookStatus(names[0], True, detail, attached.mechanism)]
    if nat_in_tc:
        statuses.append(HookStatus(names[1], True, "SNAT from the conntrack entry of what "
                                   "leaves the host; DNAT is counted on container veths",
                                   attached.mechanism))
    return statuses


def _attach_raw_tracepoint(bpf, name: str) -> HookStatus:
    function, gives = RAW_TRACEPOINTS[name]
    hook = f"raw_tracepoint:{name}"
    try:
        bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=function.encode())
    except Exception as exc:
        return HookStatus(hook, False, f"cannot attach ({exc}); lost: {gives}")
    return HookStatus(hook, True, gives, RAW_TRACEPOINT)


def _attach_netfilter(tracer: Tracer, hooks: tuple, nat: NatChoice) -> list[HookStatus]:
    names = [
        f"netfilter:{'ipv4' if pf == bpflink.NFPROTO_IPV4 else 'ipv6'}:{bpflink.HOOK_NAMES[hook]}"
        for pf, hook, _ in hooks
    ]
    lost = "lost: NAT translations and routing (in/out device) at this hook"
    if nat.mechanism == FENTRY:   # bcc attached both when it loaded them
        function = features.NF_HOOK_FUNCTION
        return [HookStatus(n, True, f"fentry on {function}, before the filter table", FENTRY)
                if hook == bpflink.NF_INET_FORWARD else
                HookStatus(n, True, f"fexit on {function}, after NAT and every hook function",
                           FEXIT)
                for n, (_, hook, _) in zip(names, hooks, strict=True)]
    if nat.mechanism != NETFILTER_LINK:
        return [HookStatus(n, False, f"{nat.why_not}; {lost}") for n in names]
    try:
        function = tracer.bpf.load_func(
            NETFILTER_FUNCTION, bpflink.BPF_PROG_TYPE_NETFILTER, attach_type=bpflink.BPF_NETFILTER
        )
    except Exception as exc:
        why = f"the kernel refused the netfilter program ({exc})"
        return [HookStatus(n, False, f"{why}; {lost}") for n in names]
    statuses = []
    for name, (pf, hook, priority) in zip(names, hooks, strict=True):
        try:
            fd, used = _link_at_free_priority(function.fd, pf, hook, priority)
        except OSError as exc:
            statuses.append(HookStatus(name, False, f"BPF_LINK_CREATE failed: {exc}; {lost}"))
            continue
        tracer._link_fds.append(fd)
        statuses.append(HookStatus(name, True, f"BPF netfilter link, priority {used}",
                                   NETFILTER_LINK))
    return statuses


def _link_at_free_priority(prog_fd: int, pf: int, hook: int, priority: int) -> tuple[int, int]:
    """The kernel allows one BPF netfilter program per (family, hook,
    priority) and answers EBUSY for a second: another cntrace (the daemon
    while trace-ping runs) may hold ours.  Step away from the NAT or filter
    table we sit next to, never across it."""
    step = -1 if hook == bpflink.NF_INET_FORWARD else 1
    busy = OSError(errno.EBUSY, "no free priority")
    for candidate in range(priority, priority + step * PRIORITY_SLOTS, step):
        try:
            return bpflink.link_create(prog_fd, pf, hook, candidate), candidate
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            busy = exc
    raise busy

