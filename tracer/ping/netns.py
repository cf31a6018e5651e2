"""Run a little code inside another network namespace.

setns(2) moves only the calling thread, so a short-lived thread enters the
netns, runs the function and ends; the caller's own thread never moves.
What the function opens there keeps that netns: a socket, or a
/proc/sys/net file (resolved against the opener's netns)."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run_in(netns_path: str | None, function: Callable[[], T]) -> T:
    """function() run in the netns at `netns_path` (None: our own)."""
    if netns_path is None:
        return function()
    result: dict[str, object] = {}

    def enter_and_run() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = function()
        except Exception as exc:  # handed to the caller's thread as it was
            result["error"] = exc

    thread = threading.Thread(target=enter_and_run, name="cntrace-setns")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
