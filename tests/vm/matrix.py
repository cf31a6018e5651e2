"""The kernel matrix: the kernel-sensitive tests (pytest -m kernel) on the
kernels Docker hosts run, each booted from Debian's own packages.

Debian 12's stock 6.1 (no tcx, no BPF netfilter links: cntrace falls back to
classic tc and fentry/fexit) and Debian's 6.12 (both) boot under QEMU's TCG
emulation with virtme-ng over the host's root filesystem, so the guest runs
this checkout with the host's bcc and venv.  KVM on these machines runs only
guests built for it (../shared/ENVIRONMENT.md), hence TCG, hence slow: a bcc
compile takes ~50 s, so the tests' timeouts are scaled (CNTRACE_TEST_TIME_SCALE).
The host's own kernel is the native run, whose JUnit file can be passed in
for the table's first row.

    python -m tests.vm.matrix [--kernel 6.1] [--native-junit FILE] [PYTEST_ARG...]
    python -m tests.vm.matrix --kernel 6.1 --command 'cntrace testbed up && ...'

Exit 0 when every kernel passed; 1 when a test failed; 2 when the VMs could
not run at all (the reason in one line).  Kernels are cached in
/opt/cntrace/kernels (not under /var/cache: the guest mounts a tmpfs there).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/opt/cntrace/kernels")
VNG = Path("/opt/cntrace/vng/bin/vng")
ARCH = "amd64"
# series -> the image package's name; group 1 is `uname -r` less the arch.
KERNELS = {
    "6.1": re.compile(r"^linux-image-(6\.1\.0-\d+)-amd64$"),
    "6.12": re.compile(r"^linux-image-(6\.12\.\d+\+deb12)-amd64$"),
}
TIME_SCALE = 10            # TCG against this machine kind, measured with margin
KERNEL_TIMEOUT = 25 * 60   # one kernel's boot and tests, hard stop
GUEST_MEMORY = "6G"
KERNEL_LOG_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


class MatrixError(Exception):
    """The VMs cannot run here: one line says why."""


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def newest_release(series: str) -> str:
    """`uname -r` of the newest Debian kernel of a series, e.g. 6.1.0-57-amd64."""
    pattern = KERNELS[series]
    for attempt in range(2):
        out = _run("apt-cache", "search", "--names-only", f"^linux-image-{series}").stdout
        versions = [m.group(1) for line in out.splitlines()
                    if (m := pattern.match(line.split(" - ")[0].strip()))]
        if versions:
            newest = max(versions, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
            return f"{newest}-{ARCH}"
        if attempt == 0:
            _run("apt-get", "update", "-qq")
    raise MatrixError(f"apt has no Debian kernel {series} (linux-image-{series}*-{ARCH})")


def prepare(release: str) -> Path:
    """The kernel's image, modules and headers, once: returns its vmlinuz.
    Headers go to /usr/src, where the guest's /lib/modules/<release>/build
    points (bcc compiles against them); nothing else outside CACHE changes."""
    base = release.removesuffix(f"-{ARCH}")
    root = CACHE / release
    vmlinuz = root / "image" / "boot" / f"vmlinuz-{release}"
    if (root / "ready").exists():
        return vmlinuz
    packages = {"image": f"linux-image-{release}", "headers": f"linux-headers-{release}",
                "common": f"linux-headers-{base}-common"}
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    try:
        _run("apt-get", "download", *packages.values(), cwd=debs)
    except subprocess.CalledProcessError as exc:
        raise MatrixError(f"cannot download {release}: {exc.stderr.strip()[-200:]}") from None
    for part, package in packages.items():
        (deb,) = debs.glob(f"{package}_*.deb")
        # Never into /: the headers package's lib/ would replace the /lib symlink.
        _run("dpkg-deb", "-x", str(deb), str(root / part))
    for part in ("headers", "common"):
        for tree in (root / part / "usr" / "src").iterdir():
            if not (Path("/usr/src") / tree.name).exists():
                shutil.copytree(tree, Path("/usr/src") / tree.name, symlinks=True)
    modules = root / "image" / "lib" / "modules" / release
    for name, target in (("build", f"linux-headers-{release}"),
                         ("source", f"linux-headers-{base}-common")):
        link = modules / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/usr/src/{target}")
    _run("depmod", "-b", str(root / "image"), release)
    shutil.rmtree(debs)
    (root / "ready").touch()
    return vmlinuz


@dataclass
class KernelResult:
    kernel: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)   # per test, from JUnit
    seconds: float = 0.0
    error: str = ""
    exit_code: int = 0        # the guest command's (vng passes it on)

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed and bool(self.passed)


def read_junit(path: Path, kernel: str) -> KernelResult:
    result = KernelResult(kernel)
    for case in ElementTree.parse(path).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        result.durations[name] = float(case.get("time") or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(name)
        elif case.find("skipped") is not None:
            result.skipped.append(name)
        else:
            result.passed.append(name)
        for prop in case.iter("property"):
            result.properties[prop.get("name")] = prop.get("value")
    return result


def boot_and_test(series: str, release: str, vmlinuz: Path, pytest_args: list[str],
                  log) -> KernelResult:
    started = time.monotonic()
    results = Path(tempfile.mkdtemp(prefix=f"cntrace-vm-{series}-"))
    command = (f"CNTRACE_TEST_TIME_SCALE={TIME_SCALE} tests/vm/guest.sh {results} "
               + " ".join(pytest_args))
    # --verbose: the guest's boot log too, or a guest that hangs says nothing.
    vng = [str(VNG), "--run", str(vmlinuz), "--disable-kvm", "--cpus", "2", "-m", GUEST_MEMORY,
           "--rwdir", str(results), "--cwd", str(REPO), "--verbose", "--", command]
    # QEMU opens its console outputs with O_TRUNC: stream through a pipe.
    env = {**os.environ, "PATH": f"{VNG.parent}:{os.environ['PATH']}"}
    # Its own process group: vng runs QEMU as a child, and both must go.
    proc = subprocess.Popen(vng, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    kernel_log: collections.deque[str] = collections.deque(maxlen=80)
    try:
        for line in proc.stdout:
            # The guest's kernel log is kept back, and shown only when the
            # guest produced no results: a hang's last words.
            if KERNEL_LOG_LINE.match(line):
                kernel_log.append(line.rstrip())
            else:
                log(f"[{series}] {line.rstrip()}")
            if time.monotonic() - started > KERNEL_TIMEOUT:
                break
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)   # QEMU included, whatever happened
        proc.wait()
    junit = results / "junit.xml"
    if junit.exists():
        result = read_junit(junit, release)
    else:
        result = KernelResult(release, error=f"the VM produced no test results "
                                             f"(exit {proc.returncode})")
        for line in kernel_log if "--command" not in pytest_args else ():
            log(f"[{series}] {line}")
    if time.monotonic() - started > KERNEL_TIMEOUT:
        result.error = f"stopped after {KERNEL_TIMEOUT // 60} minutes"
    result.exit_code = proc.returncode
    result.seconds = time.monotonic() - started
    shutil.rmtree(results, ignore_errors=True)
    return result


def _mechanisms(result: KernelResult) -> tuple[str, str, str]:
    """(the event stream's hooks, the daemon's NAT hooks, its veth counters)."""
    events = result.properties.get("events_hooks", "?")
    daemon = json.loads(result.properties.get("daemon_hooks", "{}"))
    nat = sorted({m for h, m in daemon.items() if h.startswith("netfilter:")})
    if "tc:exit-devices" in daemon:   # NAT read from conntrack in the tc programs
        nat.append(f"{daemon['tc:exit-devices']} (conntrack)")
    nat = nat or ["?"]
    return events, ", ".join(nat), daemon.get("tc:container-veths", "?")


def table(results: list[KernelResult]) -> str:
    rows = [("kernel", "event stream hooks", "daemon NAT", "daemon counters", "tests", "time")]
    for r in results:
        events, nat, veths = _mechanisms(r)
        tests = r.error or f"{len(r.passed)} passed, {len(r.failed)} failed"
        rows.append((r.kernel, events, nat, veths, tests, f"{r.seconds / 60:.1f} min"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def check_host() -> None:
    if os.geteuid() != 0:
        raise MatrixError("must run as root (apt-get download, depmod, /usr/src)")
    for tool in ("qemu-system-x86_64", "apt-get", "dpkg-deb", "depmod"):
        if shutil.which(tool) is None:
            raise MatrixError(f"{tool} is missing (deploy/setup.sh test installs it)")
    if not VNG.exists():
        raise MatrixError(f"{VNG} is missing (deploy/setup.sh test installs virtme-ng)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", action="append", choices=sorted(KERNELS),
                        help="a series to run (repeatable; default: all)")
    parser.add_argument("--native-junit", type=Path,
                        help="the host's own run, for the table's first row")
    parser.add_argument("--command", help="run this shell command in the guest (Docker "
                        "running, this checkout as the working directory) instead of the tests")
    args, pytest_args = parser.parse_known_args(argv)
    series = args.kernel or list(KERNELS)
    if args.command:
        if len(series) != 1:
            parser.error("--command needs exactly one --kernel")
        pytest_args = ["--command", shlex.quote(args.command)]

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        check_host()
        # Every kernel fetched before the first boots: a missing one fails fast.
        kernels = {s: newest_release(s) for s in series}
        images = {s: prepare(release) for s, release in kernels.items()}
        # One at a time.  Seen twice with two virtme-ng guests at once: one
        # guest's dockerd never answered (likely its containerd timeout under
        # load, which tests/vm/guest.sh now avoids; not retried in parallel).
        # A plain QEMU guest beside one is fine: deploy/setup.sh runs the
        # systemd VM alongside.
        results = [boot_and_test(s, kernels[s], images[s], pytest_args, log) for s in series]
    except (MatrixError, subprocess.CalledProcessError, OSError) as exc:
        print(f"kernel matrix: cannot run the VMs: {exc}", file=sys.stderr)
        return 2
    if args.command:
        return results[0].exit_code
    if args.native_junit and args.native_junit.exists():
        # The host's row: the same tests, from the native run of the whole suite.
        native = read_junit(args.native_junit, os.uname().release)
        kernel_tests = _kernel_tests(results)
        native.passed = [n for n in native.passed if n in kernel_tests]
        native.failed = [n for n in native.failed if n in kernel_tests]
        native.seconds = sum(native.durations.get(n, 0) for n in native.passed + native.failed)
        results.insert(0, native)
    print("\nkernel matrix (pytest -m kernel on each kernel):")
    print(table(results))
    for r in results:
        for name in r.failed:
            print(f"  FAILED on {r.kernel}: {name}")
    return 0 if all(r.ok for r in results) else 1


def _kernel_tests(results: list[KernelResult]) -> set[str]:
    return {n for r in results for n in r.passed + r.failed}


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so each finally: block stops its QEMU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
