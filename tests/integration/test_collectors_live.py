"""The daemon's exporter conventions on the real testbed: --collector.<name>
and --no-collector.<name> turn a family's metrics *and its BPF work* on and
off (the kernel's own view, from bpftool, says which programs are
attached), --web.telemetry-path moves the metrics, and each scrape says
how long each collector took and whether it succeeded; cntrace_build_info
names the version, revision and Python; the client library's process
metrics are there."""

from __future__ import annotations

import platform
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.helpers import CNTRACE, bpf_held, bpf_programs, bpftool, wait_until
from tests.integration.test_daemon_live import Daemon
from tracer import __version__
from tracer.daemon.settings import COLLECTORS
from tracer.kernel import loader, tclink

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Some of each collector's families, as the text format names them, and the
# BPF functions that run only for some collectors.
FAMILIES = {
    "traffic": {"cntrace_container_packets_total", "cntrace_container_bytes_total"},
    "peers": {"cntrace_container_peer_packets_total", "cntrace_container_peer_bytes_total"},
    "flows": {"cntrace_container_flows_opened_total", "cntrace_container_flows_active"},
    "nat": {"cntrace_container_snat_packets_total", "cntrace_container_dnat_packets_total"},
    "drops": {"cntrace_container_drops_total"},
    "conntrack": {"cntrace_conntrack_entries", "cntrace_container_nat_bindings"},
}
DROP_FUNCTION = loader.RAW_TRACEPOINTS["kfree_skb"][0]
VETH_FUNCTIONS = tclink.functions(tclink.VETH)
EXIT_FUNCTIONS = tclink.functions(tclink.EXIT)


def attached_functions(pid: int) -> set[str]:
    """The BPF functions this process has attached, named as bpftool names
    them: those of the links it holds (tcx, raw tracepoints, netfilter,
    fentry), and its programs in classic tc filters (kernels without tcx)."""
    held = bpf_held(pid)
    programs = bpf_programs()
    linked = {link.get("prog_id") for link in bpftool("link", "show")
              if link["id"] in held["link"]}
    filtered = {entry.get("id") for device in bpftool("net", "show")   # "id": the program's
                for entry in device.get("tc", []) if entry.get("id") in held["prog"]}
    return {programs[prog]["name"] for prog in linked | filtered if prog in programs}


def named(functions, names: set[str]) -> set[str]:
    """Those of `functions` among `names`: bpftool gives the whole name from
    BTF, or the kernel's 15 characters (BPF_OBJ_NAME_LEN) without it."""
    return {f for f in functions if f in names or f[:15] in names}


def families(daemon: Daemon, path: str = "/metrics") -> set[str]:
    return {line.split()[2] for line in daemon.text(path).splitlines()
            if line.startswith("# TYPE ")}


def collector_samples(samples: dict, name: str) -> dict[str, float]:
    return {dict(labels)["collector"]: value for (sample, labels), value in samples.items()
            if sample == name}


@pytest.mark.kernel
@pytest.mark.parametrize("env", [{}, {"CNTRACE_DISABLE_FEATURES": "tcx"}],
                         ids=["best", "classic-tc"])
def test_collectors_off_take_their_metrics_and_their_programs_with_them(testbed, env):
    off = ("nat", "drops", "conntrack")
    d = Daemon(*(f"--no-collector.{name}" for name in off),
               "--web.telemetry-path", "/cntrace/metrics", env=env)
    try:
        d.wait_ready()
        wait_until(lambda: named(VETH_FUNCTIONS, attached_functions(d.proc.pid)),
                   "the veth programs attached")
        attached = attached_functions(d.proc.pid)
        assert not named([DROP_FUNCTION, *EXIT_FUNCTIONS], attached), attached
        assert named(VETH_FUNCTIONS, attached) == set(VETH_FUNCTIONS), attached
        names = families(d, "/cntrace/metrics")
        for collector, family in FAMILIES.items():
            if collector in off:
                assert not family & names, collector
            else:
                assert family <= names, collector
        samples = d.scrape("/cntrace/metrics")
        on = set(COLLECTORS) - set(off)
        assert collector_samples(samples, "cntrace_scrape_collector_success") == \
            dict.fromkeys(on, 1.0)
        durations = collector_samples(samples, "cntrace_scrape_collector_duration_seconds")
        assert set(durations) == on and all(0 < v < 5 for v in durations.values())
        with pytest.raises(urllib.error.HTTPError) as moved:
            d.text("/metrics")
        assert moved.value.code == 404
        hooks = {dict(labels)["hook"] for (name, labels) in samples
                 if name == "cntrace_hook_attached"}
        assert hooks == {"tc:container-veths"}, hooks
    finally:
        code, err = d.stop()
    assert code == 0, err


@pytest.mark.kernel
def test_without_per_packet_collectors_no_tc_program_is_attached(testbed):
    d = Daemon(*(f"--no-collector.{name}" for name in loader.COLLECT_CFLAGS))
    try:
        d.wait_ready()
        wait_until(lambda: named([DROP_FUNCTION], attached_functions(d.proc.pid)),
                   "the drop program attached")
        attached = attached_functions(d.proc.pid)
        assert len(attached) == 1, attached   # kfree_skb's, and nothing on any device
        names = families(d)
        assert FAMILIES["drops"] <= names and FAMILIES["conntrack"] <= names
        assert not (FAMILIES["traffic"] | FAMILIES["peers"] | FAMILIES["nat"]) & names
        samples = d.scrape()
        assert not any(name == "cntrace_container_uncounted" for name, _ in samples)
    finally:
        code, err = d.stop()
    assert code == 0, err


def test_a_collector_flag_that_does_not_exist_is_refused():
    done = subprocess.run([*CNTRACE, "daemon", "--no-collector.nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--no-collector.nosuch" in done.stderr


def test_build_info_and_process_metrics(testbed):
    d = Daemon()
    try:
        d.wait_ready()
        samples = d.scrape()
    finally:
        code, err = d.stop()
    assert code == 0, err
    build = [dict(labels) for (name, labels), value in samples.items()
             if name == "cntrace_build_info" and value == 1]
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "unknown"
    assert build == [{"version": __version__, "revision": revision,
                      "pythonversion": platform.python_version()}]   # the daemon's: CNTRACE
    values = {name: value for (name, labels), value in samples.items() if not labels}
    assert values["process_resident_memory_bytes"] > 10e6
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] > 3
