"""Shared by the integration tests: run cntrace as a user would, and read
the host's truth independently (ip -j, /proc), never from cntrace itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tracer.testbed import IMAGE_TAG, LABEL

CNTRACE = [sys.executable, "-m", "tracer"]
# Timeouts are for this machine kind; a kernel VM under emulation (tests/vm/)
# compiles BPF ~200x slower and sets a larger scale.
TIME_SCALE = float(os.environ.get("CNTRACE_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIME_SCALE


def wait_until(predicate, what: str, timeout: float = 20.0, interval: float = 0.25):
    """predicate()'s first true result, polled for `timeout` (scaled) seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting: {what}")


def ip_json(*args: str, pid: int | None = None) -> list[dict]:
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid else []
    out = subprocess.run([*prefix, "ip", "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def link(name: str, pid: int | None = None) -> dict:
    return ip_json("link", "show", "dev", name, pid=pid)[0]


def link_by_index(ifindex: int) -> dict:
    return next(li for li in ip_json("link", "show") if li["ifindex"] == ifindex)


def hops_of(container) -> dict:
    """The container's eth0 and its host-side veth, as netlink reports them."""
    eth0 = link("eth0", pid=container.pid)
    peer = link_by_index(eth0["link_index"])
    return {"netns": netns_inode(container.pid), "eth0": eth0["ifindex"],
            "veth": peer["ifindex"], "veth_name": peer["ifname"], "bridge": peer["master"]}


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def run_events(args: list[str], action: Callable[[], object], settle: float = 0.5,
               timeout: float = 60.0) -> tuple[list[dict], str]:
    """Start `cntrace events --json ARGS`, wait until it traces, run action(),
    stop it with SIGINT; return the JSON events and its stderr."""
    proc = subprocess.Popen([*CNTRACE, "events", "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + scaled(timeout)
        stderr_lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                raise AssertionError(f"cntrace events exited early: {''.join(stderr_lines)}")
            stderr_lines.append(line)
            if "tracing on" in line:
                break
        action()
        time.sleep(settle)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=scaled(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], "".join(stderr_lines) + err


# ------------------------------------------------ BPF objects, processes, dockerd


def bpftool(*args: str) -> list | dict:
    """`bpftool -j ARGS`, parsed: the kernel's view, independent of cntrace."""
    out = subprocess.run(["bpftool", "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


def bpf_programs(prefix: str = "") -> dict[int, dict]:
    """Loaded BPF programs whose name starts with `prefix`, by id."""
    return {p["id"]: p for p in bpftool("prog", "show") if p.get("name", "").startswith(prefix)}


def bpf_links(prog_ids: set[int]) -> dict[int, dict]:
    """BPF links (netfilter, tcx, raw tracepoint, ...) of these programs, by id."""
    return {link["id"]: link for link in bpftool("link", "show")
            if link.get("prog_id") in prog_ids}


def percpu_array(map_id: int) -> dict[int, int]:
    """A per-CPU array of u64, summed over CPUs: index -> total.  bpftool
    decodes it when the map has BTF; a cached compile's maps may have none,
    and then it prints the raw little-endian bytes."""
    def number(raw: list[str]) -> int:
        return int.from_bytes(bytes(int(byte, 16) for byte in raw), "little")

    totals = {}
    for entry in bpftool("map", "dump", "id", str(map_id)):
        if "formatted" in entry:
            entry = entry["formatted"]
            totals[entry["key"]] = sum(v["value"] for v in entry["values"])
        else:
            totals[number(entry["key"])] = sum(number(v["value"]) for v in entry["values"])
    return totals


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def child_pids(pid: int) -> list[int]:
    """Every process whose parent is `pid` (any thread of it may have forked)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                if f"\nPPid:\t{pid}\n" in status.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_and_restart_dockerd(engine, while_down: Callable[[], object] | None = None) -> None:
    """SIGKILL the dockerd that `engine` (tracer.testbed.DockerEngine) started,
    reap what died with it, run `while_down()`, and start a new dockerd with
    engine.ensure_running() even when while_down fails.

    The dockerd's own containerd dies with it (parent-death signal). Unless
    it is reaped, containerd.pid names a zombie that looks alive, and the new
    dockerd waits for it until its start times out; where PID 1 reaps no
    orphans (this project's sandbox), nobody would. So this process is the
    orphans' reaper for the moment of the kill. The sysctls and the host's
    network (docker0, rules) that the engine saw before the first dockerd
    stay the ones engine.stop() puts back: a second start would otherwise
    record dockerd's own as the host's.
    """
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    pid = engine.started_pid
    original_sysctls = dict(engine._saved_sysctls)
    original_host = engine._saved_host
    children = child_pids(pid)
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        os.kill(pid, signal.SIGKILL)
        engine._proc.wait(timeout=20)
        for child in children:       # now ours: reparented at dockerd's exit
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(child, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break            # not ours to reap, or gone already
                time.sleep(0.1)
            else:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
    engine._proc = None
    engine.started_pid = None
    try:
        if while_down is not None:
            while_down()
    finally:
        _restart(engine, original_sysctls, original_host)


def _restart(engine, original_sysctls: dict[str, str], original_host) -> None:
    from tracer.testbed import put_back_host_network, write_sysctl

    try:
        engine.ensure_running(timeout=60)
    except Exception:
        for name, value in original_sysctls.items():   # no engine of ours is left
            write_sysctl(name, value)
        if original_host:
            put_back_host_network(original_host)
        raise
    engine._saved_sysctls = original_sysctls
    engine._saved_host = original_host
    engine.save_state()


def bpf_held(pid: int) -> dict[str, set[int]]:
    """Ids of the BPF programs, maps and links a process holds open, from
    /proc/PID/fdinfo: its own, whatever other tracers run on the host."""
    held: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(f"{fd_dir}/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue   # closed meanwhile
        for kind in ("link", "map", "prog"):   # a link's fdinfo names its prog too
            if f"{kind}_id" in fields:
                held[kind].add(int(fields[f"{kind}_id"]))
                break
    return held


def bpf_gone(held: dict[str, set[int]]) -> bool:
    """None of these programs or links exists any more, in the whole kernel."""
    links = {link["id"] for link in bpftool("link", "show")}
    return not (held["prog"] & set(bpf_programs())) and not (held["link"] & links)


def hook_mechanisms(samples: dict) -> dict[str, str]:
    """hook -> mechanism, from a daemon's cntrace_hook_attached samples."""
    return {dict(labels)["hook"]: dict(labels)["mechanism"]
            for (name, labels), value in samples.items()
            if name == "cntrace_hook_attached" and value == 1}


def exit_devices(samples: dict) -> int:
    """The host's exit devices a daemon counts SNAT on (cntrace_tc_devices)."""
    return int(samples.get(("cntrace_tc_devices", frozenset({("kind", "exit")})), 0))


def expected_attachments(mechanisms: dict[str, str], veths: int,
                         exits: int = 0) -> tuple[int, int]:
    """(BPF links, cls_bpf filters) a daemon holds with these hooks, this
    many container veths and this many exit devices: a raw tracepoint or
    netfilter link is one link per hook, fentry/fexit one per program however
    many hooks it serves; tcx links and classic tc filters are two per veth
    and one per exit device."""
    used = mechanisms.values()
    per_hook = sum(1 for m in used if m in ("raw_tracepoint", "netfilter_link"))
    tracing = len({m for m in used if m in ("fentry", "fexit")})
    tc = 2 * veths + exits
    links = per_hook + tracing + (tc if "tcx" in used else 0)
    return links, (tc if "cls_bpf" in used else 0)


def tc_state() -> tuple[set[tuple[str, str]], set[str]]:
    """From `tc`, not cntrace: (cntrace's cls_bpf filters as (device,
    ingress|egress), the devices with a clsact qdisc) in this netns."""
    def tc(*args: str) -> list[dict]:
        out = subprocess.run(["tc", "-j", *args], capture_output=True, text=True)
        return json.loads(out.stdout or "[]") if out.returncode == 0 else []

    filters, clsact = set(), set()
    for dev in (li["ifname"] for li in ip_json("link", "show")):
        if not any(q.get("kind") == "clsact" for q in tc("qdisc", "show", "dev", dev)):
            continue
        clsact.add(dev)
        for direction in ("ingress", "egress"):
            for f in tc("filter", "show", "dev", dev, direction):
                if f.get("kind") == "bpf" and \
                        f.get("options", {}).get("bpf_name", "").startswith("cntrace_"):
                    filters.add((dev, direction))
    return filters, clsact


# ------------------------------------------------------------ trace-ping


def trace_ping(*args: str) -> tuple[int, dict | str, str]:
    result = subprocess.run([*CNTRACE, "ping", *args], capture_output=True, text=True,
                            timeout=scaled(60))
    assert "Traceback" not in result.stderr, result.stderr
    if "--json" in args and result.returncode in (0, 1):
        return result.returncode, json.loads(result.stdout), result.stderr
    return result.returncode, result.stdout, result.stderr


@contextlib.contextmanager
def extra_container(client, name: str, network: str = "bridge", **kwargs):
    """A throwaway container from the testbed image, always removed."""
    with contextlib.suppress(Exception):
        client.containers.get(name).remove(force=True)
    container = client.containers.run(IMAGE_TAG, kwargs.pop("command", ["sleep", "3600"]),
                                      name=name, detach=True, network=network,
                                      labels={LABEL: "cntrace-test", **kwargs.pop("labels", {})},
                                      **kwargs)
    try:
        container.reload()
        yield container
    finally:
        container.remove(force=True)


def ip_of(container, network: str) -> str:
    container.reload()
    return container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]


@contextlib.contextmanager
def iptables_rule(*rule: str):
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


@contextlib.contextmanager
def sysctl(name: str, value: str):
    path = Path("/proc/sys", *name.split("."))
    old = path.read_text().strip()
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(old)
