"""Telling a running daemon's cls_bpf filters from a killed one's leftovers:
the filter's handle is the pid of the daemon that added it."""

from __future__ import annotations

import pytest

from tracer.kernel.tclink import _daemon_alive


@pytest.mark.parametrize("cmdline, alive", [
    (b"/opt/cntrace/venv/bin/python3\0/opt/cntrace/venv/bin/cntrace\0daemon\0--config\0x\0",
     True),
    (b"/usr/bin/python3\0-m\0tracer\0daemon\0", True),
    (b"/usr/bin/python3\0-m\0tracer\0ping\0a\0b\0", False),   # not a daemon
    (b"/usr/sbin/sshd\0-D\0", False),                            # the pid was reused
])
def test_a_handle_names_a_live_daemon_or_a_leftover(tmp_path, cmdline, alive):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cmdline").write_bytes(cmdline)
    assert _daemon_alive(42, proc=str(tmp_path)) is alive


def test_a_gone_pid_is_a_leftover(tmp_path):
    assert _daemon_alive(42, proc=str(tmp_path)) is False
