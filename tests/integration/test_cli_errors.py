"""Bad environments and bad input: one line on stderr naming the problem and
the documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.helpers import CNTRACE
from tracer.errors import DockerUnavailableError, KernelFeatureError, PrivilegeError, UsageError

pytestmark = pytest.mark.integration


def run(args: list[str], env: dict | None = None, user: int | None = None):
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    result = subprocess.run([*prefix, *CNTRACE, *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return result.returncode, lines[0]


def test_not_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody")
    code, message = run(["events"], user=65534)
    assert code == PrivilegeError.exit_code == 3
    assert "needs root" in message


def test_no_btf(tmp_path):
    code, message = run(["--kernel-btf", str(tmp_path / "vmlinux"), "events"])
    assert code == KernelFeatureError.exit_code == 4
    assert "cannot read kernel BTF" in message and "CONFIG_DEBUG_INFO_BTF" in message


def test_corrupt_btf(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\x9f\xeb\x01\x00garbage")
    code, message = run(["--kernel-btf", str(path), "events"])
    assert code == 4 and "BTF" in message


@pytest.mark.parametrize("command", [["events"], ["topology"]])
def test_no_docker_engine(tmp_path, command):
    code, message = run(command, env={"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"})
    assert code == DockerUnavailableError.exit_code == 5
    assert "cannot reach the Docker engine" in message


@pytest.mark.parametrize(
    "args, expected",
    [
        (["events", "-c", "no-such-container"], "unknown container 'no-such-container'"),
        (["events", "-a", "300.1.2.3"], "invalid IP address '300.1.2.3'"),
        (["events", "--port", "70000"], "invalid port 70000"),
        (["events", "--port", "http"], "invalid port 'http'"),
        (["events", "-p", "gre"], "unknown protocol 'gre'"),
        (["events", "--ringbuf-pages", "3"], "must be a power of 2"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input(testbed, args, expected):
    code, message = run(args)
    assert code == UsageError.exit_code == 2
    assert expected in message
