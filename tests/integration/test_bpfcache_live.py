"""The BPF compile cache on the real kernel: a first trace-ping compiles and
fills it, the next loads its programs from it and traces just the same; a
broken cache file or a switched-off cache means a full compile, never a
failure.  (On kernels where NAT is seen through fentry/fexit, bcc attaches
those programs as it compiles them, so nothing is cached there: these run
on the host only.)"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.helpers import CNTRACE, scaled
from tracer.kernel.bpfcache import CACHE_DIR_ENV
from tracer.testbed import check_route

pytestmark = pytest.mark.integration


def ping(testbed, cache: str) -> tuple[int, dict]:
    import json

    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    done = subprocess.run([*CNTRACE, "ping", a.name, b.name, "--json"], capture_output=True,
                          text=True, timeout=scaled(60), env={**os.environ, CACHE_DIR_ENV: cache})
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def hops(result: dict) -> list[tuple[str, str]]:
    return [(h["hook"], h["device"]) for h in result["path"]["request"] + result["path"]["reply"]]


def test_a_cached_compile_traces_like_a_full_one(testbed, tmp_path):
    code, cold = ping(testbed, str(tmp_path))
    assert code == 0 and cold["bpf_cache"] == "miss"
    assert len(list(tmp_path.glob("*.json"))) == 1
    code, warm = ping(testbed, str(tmp_path))
    assert code == 0 and warm["bpf_cache"] == "hit"
    assert hops(warm) == hops(cold) and len(hops(warm)) >= 10


def test_a_broken_cache_file_means_a_full_compile(testbed, tmp_path):
    ping(testbed, str(tmp_path))
    for entry in tmp_path.glob("*.json"):
        entry.write_text('{"format": 1, "programs": {"cntrace_drop": {"insns": "AAAA", '
                         '"maps": []}}}')
    code, result = ping(testbed, str(tmp_path))
    assert code == 0 and result["bpf_cache"] == "miss" and hops(result)
