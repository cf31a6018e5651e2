"""A fresh Debian 12 machine with systemd as PID 1, for real: the README's
setup command, deploy/install.sh and `systemctl enable --now cntrace` in a
VM, then tests/vm/guest_systemd.py checks the service under systemd.

The image is built from Debian's packages with mmdebstrap (Debian 12's stock
kernel, systemd, docker.io and what deploy/setup.sh installs, so setup finds
them present) and cached in /opt/cntrace/images; a cold run builds it (~3
min).  Each run boots a copy-on-write overlay of it, so the cached image
stays fresh.  The guest gets the repository's tracked files (a clean copy,
uncommitted edits included) and the Python wheels setup.sh installs, over a
read-only 9p share; pip in the guest reads only those (no network in the VM).
Results come back over a second, writable share.  QEMU runs under TCG
(KVM here cannot boot Debian's kernels: ../shared/ENVIRONMENT.md).

    python -m tests.vm.systemd_vm

Exit 0 when every check passed, 1 when one failed, 2 when the VM could not run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.vm.matrix import MatrixError, read_junit

REPO = Path(__file__).resolve().parents[2]
IMAGES = Path("/opt/cntrace/images")
SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# What deploy/setup.sh would install (APT_PACKAGES, TEST_APT_PACKAGES' tools
# the checks use), the stock kernel with its headers, and a booting system.
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "linux-image-amd64", "linux-headers-amd64",
    "initramfs-tools", "docker.io", "iptables", "nftables", "conntrack", "iproute2",
    "busybox-static",
    "bpfcc-tools", "python3-bpfcc", "libbpfcc", "libbpf1", "bpftool", "python3-venv",
    "python3-pip", "kmod", "graphviz", "procps", "ca-certificates", "iputils-ping",
    # Debian's kernel enables AppArmor and a Debian install has its tools:
    # without apparmor_parser, dockerd cannot start a container.
    "apparmor",
)
IMAGE_SIZE = "6G"
VM_TIMEOUT = 30 * 60
GUEST_UNIT = """[Unit]
Description=cntrace's systemd VM checks (tests/vm/systemd_vm.py)
After=docker.service network.target
Wants=docker.service

[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c 'mkdir -p /mnt/stage /mnt/results && \\
  mount -t 9p -o trans=virtio,version=9p2000.L,ro stage /mnt/stage && \\
  mount -t 9p -o trans=virtio,version=9p2000.L results /mnt/results && \\
  bash /mnt/stage/repo/tests/vm/guest_systemd.sh /mnt/stage /mnt/results'
ExecStopPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def remove_tree(path: Path) -> None:
    """rmtree, after unmounting what a killed mmdebstrap left mounted below
    path (its /proc, /sys, /dev/pts): never delete through a mount point."""
    below = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
             if line.split()[4].startswith(f"{path}/")]
    for mountpoint in sorted(below, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)
    if any(line.split()[4].startswith(f"{path}/")
           for line in Path("/proc/self/mountinfo").read_text().splitlines()):
        raise MatrixError(f"cannot unmount what is mounted under {path}")
    shutil.rmtree(path, ignore_errors=True)


def image_key() -> str:
    """Changes when what goes into the image does."""
    return hashlib.sha256("\n".join([*PACKAGES, GUEST_UNIT]).encode()).hexdigest()[:12]


def build_image(log) -> tuple[Path, Path, Path]:
    """(disk image, kernel, initrd), built once per image_key()."""
    root = IMAGES / f"debian12-systemd-{image_key()}"
    disk = root / "disk.raw"
    if (root / "ready").exists():
        return disk, next(root.glob("vmlinuz-*")), next(root.glob("initrd.img-*"))
    remove_tree(root)
    root.mkdir(parents=True)
    tree = root / "tree"
    log(f"building the Debian 12 image in {root} (mmdebstrap, a few minutes)")
    unit = root / "cntrace-vm-checks.service"
    unit.write_text(GUEST_UNIT)
    hooks = [
        f'--customize-hook=cp {unit} "$1/etc/systemd/system/"',
        '--customize-hook=chroot "$1" systemctl enable cntrace-vm-checks.service',
        '--customize-hook=echo cntrace-vm > "$1/etc/hostname"',
        # Debian 12 images have no root password; the console is not used.
        '--customize-hook=rm -f "$1/etc/machine-id"; touch "$1/etc/machine-id"',
    ]
    try:
        _run("mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             "--aptopt=Apt::Install-Recommends false", *hooks, "--format=directory",
             SUITE, str(tree), str(SOURCES), timeout=30 * 60)
        kernel = sorted((tree / "boot").glob("vmlinuz-*"))[-1]
        initrd = tree / "boot" / kernel.name.replace("vmlinuz", "initrd.img")
        kernel, initrd = Path(shutil.copy(kernel, root)), Path(shutil.copy(initrd, root))
        _run("truncate", "-s", IMAGE_SIZE, str(disk))
        _run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(disk))
    except subprocess.CalledProcessError as exc:
        raise MatrixError(f"cannot build the image: {' '.join(exc.cmd[:2])}: "
                          f"{(exc.stderr or '').strip()[-300:]}") from None
    remove_tree(tree)
    (root / "ready").touch()
    return disk, kernel, initrd


def stage(directory: Path) -> None:
    """The repository's tracked files and the wheels setup.sh's pip needs."""
    files = _run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = directory / "repo" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    wheels = IMAGES / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    # Debian's /usr/bin/python3 is the guest's python too (3.11, bookworm).
    _run("/usr/bin/python3", "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "-d", str(wheels), str(REPO), "pytest", "hypothesis", "ruff", "setuptools>=61",
         "wheel", timeout=15 * 60)
    shutil.copytree(wheels, directory / "wheels")


def boot(disk: Path, kernel: Path, initrd: Path, staged: Path, results: Path, log) -> int:
    overlay = results.parent / "overlay.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk), str(overlay))
    qemu = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "6G", "-smp", "2", "-nographic",
        "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "root=/dev/vda rw console=ttyS0 systemd.show_status=1 net.ifnames=0",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-virtfs", f"local,path={staged},mount_tag=stage,security_model=none,readonly=on",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
        "-nic", "none",
    ]
    started = time.monotonic()
    # QEMU opens its console outputs with O_TRUNC: stream through a pipe.
    proc = subprocess.Popen(qemu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, errors="replace")
    try:
        for line in proc.stdout:
            log(f"[systemd-vm] {line.rstrip()}")
            if time.monotonic() - started > VM_TIMEOUT:
                log(f"[systemd-vm] stopped after {VM_TIMEOUT // 60} minutes")
                proc.kill()
                break
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        overlay.unlink(missing_ok=True)


def main() -> int:
    def log(line: str) -> None:
        print(line, flush=True)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cntrace-systemd-vm-"))
    try:
        for tool in ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "mkfs.ext4"):
            if shutil.which(tool) is None:
                raise MatrixError(f"{tool} is missing (deploy/setup.sh test installs it)")
        disk, kernel, initrd = build_image(log)
        staged, results = work / "stage", work / "results"
        staged.mkdir()
        results.mkdir()
        stage(staged)
        boot(disk, kernel, initrd, staged, results, log)
        junit = results / "junit.xml"
        if not junit.exists():
            raise MatrixError("the VM produced no results (see its console above)")
        result = read_junit(junit, "Debian 12 + systemd")
    except (MatrixError, subprocess.CalledProcessError, OSError) as exc:
        print(f"systemd VM: cannot run: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print(f"\nsystemd VM (Debian 12, {kernel.name.removeprefix('vmlinuz-')}): "
          f"{len(result.passed)} passed, "
          f"{len(result.failed)} failed in {minutes:.1f} min")
    for name in result.failed:
        print(f"  FAILED: {name}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so each finally: block stops its QEMU.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.umask(0o022)
    sys.exit(main())
