#!/usr/bin/python3
"""Measure which capabilities `cntrace daemon` needs, and check the daemon
under deploy/cntrace.service's sandbox, emulated without systemd.

Each trial runs the daemon as uid 0 under `setpriv` with a chosen bounding
set (root's capabilities after exec are exactly the bounding set), scrapes
its /metrics on a loopback port and passes when, within --timeout seconds:
every `cntrace_hook_attached` is 1, `cntrace_containers` equals the running
containers (topology: docker.sock, /proc/<pid>/ns/net, netlink inside each
container's netns; a tcx link on each veth), no attribution failure, Docker
connected, the conntrack gauges present, and no warning in its log.

Phases:
  1. baseline: every capability this process holds (must pass);
  2. leave one out: the baseline minus one capability, for each;
  3. reduce: drop, in capability-number order, every capability whose
     removal keeps the daemon working (a set can need a capability that
     no single removal shows: ptrace access to a container's /proc/<pid>
     needs CAP_SYS_PTRACE only once the caller's set stops covering the
     container's);
  4. the minimal set alone, then minus each of its members;
  5. the minimal set as a non-root user with ambient capabilities and the
     docker group (what User= or DynamicUser= would give);
  6. the minimal set under the unit's sandbox, emulated from the unit file:
     mount namespace (ProtectSystem=, ProtectHome=, PrivateTmp=,
     PrivateDevices=, ProtectKernelTunables=, ProtectKernelModules=,
     ProtectKernelLogs=, ProtectControlGroups=, ProtectProc=), setpriv
     (capabilities, NoNewPrivileges=) and seccomp with python3-seccomp
     (SystemCallFilter=, SystemCallArchitectures=, MemoryDenyWriteExecute=,
     RestrictAddressFamilies=, RestrictNamespaces=).

Needs root, setpriv and unshare (util-linux), the Docker engine and the
testbed: `cntrace testbed up` runs first when the test containers are
absent, and `cntrace testbed down` afterwards only then.  Takes about ten
minutes; --confirm-only runs phases 1, 4 (for the unit's set), 5 and 6.

    deploy/measure_capabilities.py                 # everything
    deploy/measure_capabilities.py --confirm-only  # check the unit's set
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNIT = HERE / "cntrace.service"

# linux/capability.h, by number
CAPS = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)
TESTBED_CONTAINERS = ("cntrace-test-a", "cntrace-test-b", "cntrace-test-c")
METRIC = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def log(message: str) -> None:
    print(f"measure: {message}", file=sys.stderr, flush=True)


def cap_name(cap: str) -> str:
    return f"CAP_{cap.upper()}"


def held_capabilities() -> list[str]:
    """The bounding set of this process: the most a child can have."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
    return [c for i, c in enumerate(CAPS) if mask >> i & 1]


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """[Service] key -> every value assigned, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_capabilities(path: Path = UNIT) -> list[str]:
    words = " ".join(unit_settings(path).get("CapabilityBoundingSet", [])).split()
    return sorted((w.lower().removeprefix("cap_") for w in words), key=CAPS.index)


# ------------------------------------------------------------------ trials

@dataclass
class Trial:
    label: str
    caps: list[str]
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        problems = [p for p in self.problems if not p.startswith("log ")]
        return "works" if self.passed else "; ".join(problems[:3]) or "fails"


def docker_state() -> tuple[str, tuple[str, ...]]:
    """The engine's pid and the running containers: a trial during which
    either changed (another user of this host at work) is run again."""
    pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.strip()
    out = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True)
    return pid, tuple(sorted(out.stdout.split())) if out.returncode == 0 else ("?",)


def parse_metrics(text: str) -> list[tuple[str, str, float]]:
    samples = []
    for line in text.splitlines():
        match = METRIC.match(line)
        if match and not line.startswith("#"):
            samples.append((match[1], match[2] or "", float(match[3])))
    return samples


def judge(samples: list[tuple[str, str, float]], expected: int) -> list[str]:
    """What is wrong with one scrape; empty when the daemon does everything."""
    values: dict[str, list[tuple[str, float]]] = {}
    for name, labels, value in samples:
        values.setdefault(name, []).append((labels, value))
    problems = []
    hooks = values.get("cntrace_hook_attached", [])
    if not hooks:
        problems.append("no hook reported")
    problems += [f"not attached: {labels.split('=', 1)[1].strip(chr(34))}"
                 for labels, value in hooks if value != 1]
    counted = int(values.get("cntrace_containers", [("", 0)])[0][1])
    if counted != expected:
        problems.append(f"counts {counted} of {expected} containers")
    failures = int(values.get("cntrace_attribution_failures_total", [("", 0)])[0][1])
    if failures:
        problems.append(f"{failures} attribution failures (no veth attachment or slot)")
    if values.get("cntrace_docker_connected", [("", 0)])[0][1] != 1:
        problems.append("docker not connected")
    for gauge in ("cntrace_conntrack_entries", "cntrace_conntrack_entries_limit"):
        if gauge not in values:
            problems.append(f"no {gauge}")
    return problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return reply.read().decode()
    except OSError:
        return None


def warnings_in(log_path: Path) -> list[str]:
    """Log lines at warning or worse (<4>..<0>), and tracebacks."""
    text = log_path.read_text(errors="replace")
    lines = [ln[3:] for ln in text.splitlines() if re.match(r"<[0-4]>", ln)]
    if "Traceback" in text:
        lines.append(text.strip().splitlines()[-1])
    return lines


def setpriv_args(caps: list[str], user: tuple[int, int] | None) -> list[str]:
    wanted = ",".join(["-all", *(f"+{c}" for c in caps)])
    args = ["setpriv", "--no-new-privs", "--bounding-set", wanted]
    if user is None:   # uid 0: after exec, permitted = effective = bounding set
        return [*args, "--inh-caps", "-all"]
    uid, gid = user
    docker_gid = grp.getgrnam("docker").gr_gid
    return [*args, "--reuid", str(uid), "--regid", str(gid),
            "--groups", str(docker_gid), "--inh-caps", wanted, "--ambient-caps", wanted]


def run_trial(label: str, caps: list[str], cntrace: list[str], timeout: float, bed: Testbed,
              user: tuple[int, int] | None = None, sandbox: bool = False,
              logs: Path | None = None) -> Trial:
    trial = Trial(label, caps)
    for _attempt in range(5):
        bed.ensure()
        before = docker_state()
        _run_once(trial, cntrace, timeout, len(before[1]), user, sandbox, logs)
        if docker_state() == before:
            break
        log(f"{label}: the engine or its containers changed during the trial; again")
    log(f"{label}: {trial.summary()} ({trial.seconds:.1f} s)")
    return trial


def _run_once(trial: Trial, cntrace: list[str], timeout: float, expected: int,
              user: tuple[int, int] | None, sandbox: bool, logs: Path | None) -> None:
    port = free_port()
    env = dict(os.environ, CNTRACE_WEB_LISTEN_ADDRESS=f"127.0.0.1:{port}",
               CNTRACE_SAMPLE_SECONDS="1", CNTRACE_LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    command = [*setpriv_args(trial.caps, user), *cntrace, "daemon"]
    if sandbox:
        me = [sys.executable, str(Path(__file__).resolve())]
        command = ["unshare", "--mount", "--propagation", "private", *me, "_mounts", "--",
                   *setpriv_args(trial.caps, user), *me, "_seccomp", "--", *cntrace, "daemon"]
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the report
        prefix="cntrace-cap-", suffix=".log", dir=logs, delete=False)
    started = time.monotonic()
    daemon = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file,
                              start_new_session=True)
    trial.problems = ["no /metrics answer"]
    try:
        while time.monotonic() - started < timeout:
            if daemon.poll() is not None:
                last = Path(log_file.name).read_text(errors="replace").strip().splitlines()
                trial.problems = [f"exit {daemon.returncode}: "
                                  f"{last[-1][:160] if last else 'no output'}"]
                break
            text = scrape(port)
            if text is not None:
                trial.problems = judge(parse_metrics(text), expected) + \
                    warnings_in(Path(log_file.name))
                if not trial.problems:
                    trial.passed = True
                    break
            time.sleep(0.5)
    finally:
        trial.seconds = time.monotonic() - started
        _stop(daemon)
        log_file.close()
        if trial.passed and logs is None:
            os.unlink(log_file.name)
        else:
            trial.problems.append(f"log {log_file.name}")


def _stop(daemon: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


# ------------------------------------------------------ sandbox emulation

def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _mountpoints() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), point))
    return points


def _under(path: str, *roots: str) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def emulate_mounts(settings: dict[str, list[str]]) -> list[str]:
    """The unit's file-system sandbox in this (new, private) mount
    namespace, the way systemd's namespace.c builds it; returns what was
    applied."""
    def on(key: str) -> str:
        return settings.get(key, ["no"])[-1]

    applied = []
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/tmp")   # scratch for the nodes
    os.mkdir("/tmp/.inaccessible", 0)
    Path("/tmp/.inaccessible-reg").touch(0)
    os.chmod("/tmp/.inaccessible-reg", 0)

    def inaccessible(path: str) -> None:
        if os.path.lexists(path):
            node = "/tmp/.inaccessible" if os.path.isdir(path) else "/tmp/.inaccessible-reg"
            _mount("--bind", node, os.path.realpath(path))

    def read_only(path: str) -> None:
        if os.path.exists(path):
            _mount("--bind", path, path)
            _mount("-o", "remount,bind,ro", path)

    if on("ProtectProc") in ("invisible", "noaccess", "ptraceable"):
        _mount("-t", "proc", "-o", f"hidepid={on('ProtectProc')}", "proc", "/proc")
        applied.append(f"ProtectProc={on('ProtectProc')}")
    if on("PrivateDevices") == "yes":
        os.mkdir("/tmp/.hostdev")
        _mount("--bind", "/dev", "/tmp/.hostdev")   # the host's nodes, bound in one by one
        _mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", "/dev")
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            Path(f"/dev/{node}").touch()
            _mount("--bind", f"/tmp/.hostdev/{node}", f"/dev/{node}")
        for directory in ("pts", "shm", "mqueue"):
            os.mkdir(f"/dev/{directory}")
        _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm")
        subprocess.run(["umount", "-l", "/tmp/.hostdev"], check=True)
        applied.append("PrivateDevices=yes")
    if on("ProtectKernelTunables") == "yes":
        for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/acpi", "/proc/irq",
                     "/proc/bus", "/proc/fs", "/proc/latency_stats", "/proc/timer_stats"):
            read_only(path)
        for path in ("/proc/kallsyms", "/proc/kcore"):
            inaccessible(path)
        applied.append("ProtectKernelTunables=yes")
    if on("ProtectKernelModules") == "yes":
        inaccessible("/usr/lib/modules")
        applied.append("ProtectKernelModules=yes")
    if on("ProtectKernelLogs") == "yes":
        inaccessible("/proc/kmsg")
        inaccessible("/dev/kmsg")
        applied.append("ProtectKernelLogs=yes")
    if on("ProtectHome") == "yes":
        for path in ("/home", "/root", "/run/user"):
            inaccessible(path)
        applied.append("ProtectHome=yes")
    def paths(key: str) -> list[str]:   # "-" prefix: ignore a missing path
        return [p.lstrip("-") for p in " ".join(settings.get(key, [])).split()]

    for path in paths("InaccessiblePaths"):
        inaccessible(path)
    if paths("InaccessiblePaths"):
        applied.append("InaccessiblePaths=")
    strict = on("ProtectSystem") == "strict"
    read_write = paths("ReadWritePaths")
    read_only_roots = paths("ReadOnlyPaths")
    for point in sorted(set(_mountpoints())):
        if _under(point, "/tmp", *read_write):
            continue
        if strict and not _under(point, "/proc", "/sys", "/dev") or \
                on("ProtectKernelTunables") == "yes" and _under(point, "/sys") or \
                on("ProtectControlGroups") == "yes" and _under(point, "/sys/fs/cgroup") or \
                _under(point, *read_only_roots):
            subprocess.run(["mount", "-o", "remount,bind,ro", point], check=False,
                           stderr=subprocess.DEVNULL)
    for path in read_only_roots:
        if path not in _mountpoints():
            read_only(path)
    applied += [f"ProtectSystem={on('ProtectSystem')}", "ProtectControlGroups="
                f"{on('ProtectControlGroups')}", "ReadOnlyPaths="]
    if on("PrivateTmp") == "yes":
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/tmp")
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/var/tmp")
        applied.append("PrivateTmp=yes")
    return applied


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups.get(name, []), groups) if name.startswith("@") else {name}
    return found


def emulate_seccomp(settings: dict[str, list[str]]) -> list[str]:
    """Load seccomp filters as systemd 252 builds them for these settings."""
    import seccomp  # Debian: python3-seccomp

    applied = []
    groups = syscall_groups()
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        prot_write, prot_exec, shm_exec = 0x2, 0x4, 0o100000
        mdwe = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        both = prot_write | prot_exec
        mdwe.add_rule(seccomp.ERRNO(1), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, both, both))
        for name in ("mprotect", "pkey_mprotect"):
            mdwe.add_rule(seccomp.ERRNO(1), name,
                          seccomp.Arg(2, seccomp.MASKED_EQ, prot_exec, prot_exec))
        mdwe.add_rule(seccomp.ERRNO(1), "shmat",
                      seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
        mdwe.load()
        applied.append("MemoryDenyWriteExecute=yes")
    families = " ".join(settings.get("RestrictAddressFamilies", [])).split()
    if families:
        allowed_af = {getattr(socket, name) for name in families}
        af_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for family in range(46):
            if family not in allowed_af:
                af_filter.add_rule(seccomp.ERRNO(97), "socket",   # EAFNOSUPPORT
                                   seccomp.Arg(0, seccomp.EQ, family))
        af_filter.add_rule(seccomp.ERRNO(97), "socket", seccomp.Arg(0, seccomp.GE, 46))
        af_filter.load()
        applied.append(f"RestrictAddressFamilies={' '.join(families)}")
    namespaces = " ".join(settings.get("RestrictNamespaces", [])).split()
    if namespaces and namespaces != ["no"]:
        flags = {"cgroup": 0x02000000, "ipc": 0x08000000, "net": 0x40000000,
                 "mnt": 0x00020000, "pid": 0x20000000, "user": 0x10000000,
                 "uts": 0x04000000}
        kept = set() if namespaces == ["yes"] else set(namespaces)
        ns_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name, flag in flags.items():
            if name in kept:
                continue
            for call, arg in (("unshare", 0), ("clone", 0), ("setns", 1)):
                ns_filter.add_rule(seccomp.ERRNO(1), call,
                                   seccomp.Arg(arg, seccomp.MASKED_EQ, flag, flag))
        ns_filter.add_rule(seccomp.ERRNO(1), "setns", seccomp.Arg(1, seccomp.EQ, 0))
        ns_filter.add_rule(seccomp.ERRNO(38), "clone3")   # ENOSYS: glibc falls back to clone
        ns_filter.load()
        applied.append(f"RestrictNamespaces={' '.join(namespaces)}")
    # The allow list goes last: once loaded, seccomp(2) itself is not allowed.
    filters = settings.get("SystemCallFilter", [])
    if filters and not filters[0].startswith("~"):
        allowed = expand(["@default", *filters[0].split()], groups)
        for more in filters[1:]:
            names = more.lstrip("~").split()
            allowed = allowed - expand(names, groups) if more.startswith("~") else \
                allowed | expand(names, groups)
        allow = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
        for name in sorted(allowed):
            with contextlib.suppress(RuntimeError, ValueError):  # not on this arch
                allow.add_rule(seccomp.ALLOW, name)
        allow.load()
        applied.append(f"SystemCallFilter ({len(allowed)} names allowed, others kill)")
    return applied


# ------------------------------------------------------------------ phases

def measure(args: argparse.Namespace, bed: Testbed) -> int:
    cntrace = [args.cntrace]
    held = held_capabilities()
    missing = [c for c in CAPS[:int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1]
               if c not in held]
    log(f"this process holds {len(held)} capabilities"
        + (f"; not held, so never tested: {', '.join(map(cap_name, missing))}"
           if missing else ""))
    logs = Path(args.logs) if args.logs else None

    def trial(label: str, caps: list[str], **kw) -> Trial:
        return run_trial(label, caps, cntrace, args.timeout, bed, logs=logs, **kw)

    rows: list[tuple[str, Trial]] = []
    baseline = trial("baseline", held)
    rows.append(("all held", baseline))
    if not baseline.passed:
        log(f"the daemon does not work even with every capability: {baseline.summary()}")
        return 1
    if args.confirm_only:
        minimal = unit_capabilities()
    else:
        for cap in held:
            rows.append((f"all but {cap_name(cap)}",
                         trial(f"without {cap}", [c for c in held if c != cap])))
        needed = [c for c in held if not dict(rows)[f"all but {cap_name(c)}"].passed]
        minimal = list(held)
        for cap in held:
            if cap in needed:
                continue
            attempt = [c for c in minimal if c != cap]
            if trial(f"reduce: drop {cap}", attempt).passed:
                minimal = attempt
        log(f"minimal set: {' '.join(map(cap_name, minimal))}")
    rows.append(("only " + " ".join(map(cap_name, minimal)), trial("minimal", minimal)))
    for cap in minimal:
        rows.append((f"minimal but {cap_name(cap)}",
                     trial(f"minimal without {cap}", [c for c in minimal if c != cap])))
    rows.append(("minimal, uid 65534 + docker group, ambient",
                 trial("non-root ambient", minimal, user=(65534, 65534))))
    rows.append(("minimal, unit sandbox emulated",
                 trial("sandbox", minimal, sandbox=True)))
    print("\n| capabilities given (uid 0 unless said) | result |\n|---|---|")
    for label, result in rows:
        print(f"| {label} | {result.summary()} |")
    print(f"\nminimal set: {' '.join(map(cap_name, minimal))}")
    unit = unit_capabilities()
    print(f"unit CapabilityBoundingSet: {' '.join(map(cap_name, unit))}"
          + (" (matches)" if unit == minimal else " (DIFFERS)"))
    return 0 if dict(rows)["minimal, unit sandbox emulated"].passed else 1


class Testbed:
    """The test containers, kept up for every trial: a trial without
    containers would not exercise topology.  Only a testbed this script
    started is removed at the end."""

    def __init__(self, cntrace: str) -> None:
        self.cntrace = cntrace
        self.started = False

    def ensure(self) -> None:
        for _attempt in range(3):   # someone else may be bringing it up right now
            status = subprocess.run(["docker", "ps", "--format", "{{.Names}}"],
                                    capture_output=True, text=True)
            if status.returncode == 0 and \
                    set(TESTBED_CONTAINERS) <= set(status.stdout.split()):
                return
            time.sleep(2)
        log("starting the testbed (cntrace testbed up)")
        subprocess.run([self.cntrace, "testbed", "up"], check=True, stdout=subprocess.DEVNULL)
        self.started = True

    def __enter__(self) -> Testbed:
        self.ensure()
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            log("removing the testbed this run started (cntrace testbed down)")
            subprocess.run([self.cntrace, "testbed", "down"], check=False,
                           stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["_mounts"], ["_seccomp"]):   # stages of a sandboxed trial
        stage, command = argv[0], argv[2:]
        emulate = emulate_mounts if stage == "_mounts" else emulate_seccomp
        applied = emulate(unit_settings())
        print(f"<6>sandbox emulation: {', '.join(applied)}", file=sys.stderr, flush=True)
        os.execvp(command[0], command)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cntrace", default=shutil.which("cntrace") or
                        "/opt/cntrace/venv/bin/cntrace", help="the cntrace command")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds a trial may take to show a working daemon (20)")
    parser.add_argument("--confirm-only", action="store_true",
                        help="check the unit's CapabilityBoundingSet instead of searching")
    parser.add_argument("--logs", metavar="DIR", help="keep every trial's daemon log here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root")
    with Testbed(args.cntrace) as bed:
        return measure(args, bed)


if __name__ == "__main__":
    sys.exit(main())
