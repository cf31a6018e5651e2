"""The kernel matrix's reading of a guest's JUnit file and its table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.vm import systemd_vm
from tests.vm.matrix import read_junit, table

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
 <testcase classname="tests.integration.test_daemon_live" name="test_exact" time="61.5">
  <properties><property name="daemon_hooks" value='{daemon}'/></properties>
 </testcase>
 <testcase classname="tests.integration.test_events_live" name="test_hops" time="70">
  <properties><property name="events_hooks" value="13/13 (fentry, fexit, raw_tracepoint)"/>
  </properties>
 </testcase>
 <testcase classname="tests.integration.test_ping_live" name="test_drop" time="40">
  <failure message="boom">AssertionError</failure>
 </testcase>
 <testcase classname="tests.integration.test_ping_live" name="test_long" time="0">
  <skipped message="long form"/>
 </testcase>
</testsuite></testsuites>
"""
DAEMON = {"tc:container-veths": "cls_bpf", "netfilter:ipv4:PREROUTING": "fexit",
          "netfilter:ipv4:POSTROUTING": "fexit", "raw_tracepoint:kfree_skb": "raw_tracepoint"}


def test_junit_gives_results_mechanisms_and_durations(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.replace("{daemon}", json.dumps(DAEMON)))
    result = read_junit(path, "6.1.0-57-amd64")
    assert result.passed == ["test_daemon_live::test_exact", "test_events_live::test_hops"]
    assert result.failed == ["test_ping_live::test_drop"]
    assert result.skipped == ["test_ping_live::test_long"]
    assert result.durations["test_events_live::test_hops"] == 70
    assert not result.ok
    result.seconds = 600
    row = table([result]).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["6.1.0-57-amd64", "13/13 (fentry, fexit, raw_tracepoint)", "fexit",
                     "cls_bpf", "2 passed, 1 failed", "10.0 min"]


def test_a_vm_without_results_says_so(tmp_path):
    from tests.vm.matrix import KernelResult

    result = KernelResult("6.12.117+deb12-amd64", error="the VM produced no test results")
    assert not result.ok
    assert "the VM produced no test results" in table([result])


def test_nat_counted_in_tc_shows_as_such(tmp_path):
    daemon = {"tc:container-veths": "cls_bpf", "tc:exit-devices": "cls_bpf",
              "raw_tracepoint:kfree_skb": "raw_tracepoint"}
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT.replace("{daemon}", json.dumps(daemon)))
    row = table([read_junit(path, "6.1.0-57-amd64")]).splitlines()[2]
    assert [c.strip() for c in row.strip("|").split("|")][2] == "cls_bpf (conntrack)"


def test_the_systemd_vm_image_has_what_the_readme_setup_installs():
    """The systemd VM runs the README's setup command with no network: every
    package of deploy/setup.sh's APT_PACKAGES must be in its image."""
    setup = (Path(__file__).resolve().parents[2] / "deploy" / "setup.sh").read_text()
    block = re.search(r"^APT_PACKAGES=\((.*?)^\)", setup, re.S | re.M).group(1)
    wanted = {word for line in block.splitlines() for word in line.split("#")[0].split()}
    assert len(wanted) > 10
    assert wanted <= set(systemd_vm.PACKAGES), wanted - set(systemd_vm.PACKAGES)
