"""Shared by the integration tests: run cntrace as a user would, and read
the host's truth independently (ip -j, /proc), never from cntrace itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

CNTRACE = [sys.executable, "-m", "tracer"]


def ip_json(*args: str, pid: int | None = None) -> list[dict]:
    prefix = ["nsenter", "-t", str(pid), "-n"] if pid else []
    out = subprocess.run([*prefix, "ip", "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def link(name: str, pid: int | None = None) -> dict:
    return ip_json("link", "show", "dev", name, pid=pid)[0]


def link_by_index(ifindex: int) -> dict:
    return next(li for li in ip_json("link", "show") if li["ifindex"] == ifindex)


def netns_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def run_events(args: list[str], action: Callable[[], object], settle: float = 0.5,
               timeout: float = 60.0) -> tuple[list[dict], str]:
    """Start `cntrace events --json ARGS`, wait until it traces, run action(),
    stop it with SIGINT; return the JSON events and its stderr."""
    proc = subprocess.Popen([*CNTRACE, "events", "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
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
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], "".join(stderr_lines) + err
