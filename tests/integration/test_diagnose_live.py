"""trace-ping names the root cause of a broken path from the host's own
state: each test breaks one thing for real (a device, a bridge port, an MTU,
a route, a neighbour, docker's NAT, a listener, an nftables rule), asserts
that the output names it, and restores it in a finally.  Destructive changes
go to throwaway containers, never to the testbed's own."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.helpers import (
    CNTRACE,
    extra_container,
    hops_of,
    ip_of,
    scaled,
    trace_ping,
)
from tracer.testbed import LABEL, check_route

pytestmark = pytest.mark.integration


def findings(result: dict) -> list[str]:
    return [h["text"] for h in result["hints"] if h["finding"]]


def kinds(result: dict) -> list[str]:
    return [h["kind"] for h in result["hints"] if h["finding"]]


def in_netns(pid: int, *command: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-n", *command], check=True)


@contextlib.contextmanager
def probe_container(docker_client, name: str = "cntrace-test-broken", **kwargs):
    """A throwaway container on docker0 whose network the test may break."""
    with extra_container(docker_client, name, **kwargs) as container:
        container.reload()
        yield container, container.attrs["State"]["Pid"]


def host_veth(pid: int) -> str:
    return hops_of(SimpleNamespace(pid=pid))["veth_name"]


@contextlib.contextmanager
def veth_down(docker_client):
    """A throwaway container whose host veth is down, brought up again after."""
    with probe_container(docker_client) as (target, pid):
        veth = host_veth(pid)
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        try:
            yield target, veth
        finally:
            subprocess.run(["ip", "link", "set", veth, "up"], check=True)


@pytest.mark.kernel
def test_a_reachable_trace_has_no_drop_in_its_verdict(testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    code, result, _ = trace_ping(a.name, b.name, "--json")
    assert code == 0 and result["drops"] == [] and result["hints"] == []
    # The raw socket's copy of the reply is freed by ping_rcv: labelled noise.
    leftover = [n for n in result["noise"] if n["drop_reason"] == "NO_SOCKET"]
    assert leftover and "already received" in leftover[0]["noise"]


def test_the_text_verdict_of_a_reachable_trace_shows_no_drop_unless_verbose(testbed):
    a, b = testbed.containers["a"], testbed.containers["b"]
    check_route(b.ip, [b.bridge])
    code, text, _ = trace_ping(a.name, b.name)
    assert code == 0 and "DROP" not in text and "dropped" not in text
    code, text, _ = trace_ping(a.name, b.name, "--verbose")
    assert code == 0 and "noise: NO_SOCKET at ping_rcv" in text


def test_a_down_veth_is_named(testbed, docker_client):
    with veth_down(docker_client) as (target, veth):
        code, result, _ = trace_ping(testbed.containers["a"].name, target.name, "--json")
    assert code == 1
    assert kinds(result)[0] == "device-down", result["hints"]
    assert f"interface {veth} on the probe's path is down" in findings(result)[0]


def test_a_veth_outside_its_bridge_is_named(testbed, docker_client):
    a = testbed.containers["a"]
    with probe_container(docker_client) as (target, pid):
        veth = host_veth(pid)
        subprocess.run(["ip", "link", "set", veth, "nomaster"], check=True)
        try:
            code, result, _ = trace_ping(a.name, target.name, "--json")
        finally:
            subprocess.run(["ip", "link", "set", veth, "master", "docker0"], check=True)
    assert code == 1
    assert kinds(result)[0] == "not-a-bridge-port", result["hints"]
    assert f"{veth}, the host end of {target.name}'s veth, is a port of no bridge" \
        in findings(result)[0]
    assert f"ip link set {veth} master docker0" in findings(result)[0]


def test_a_smaller_mtu_on_the_uplink_is_named(testbed):
    a = testbed.containers["a"]
    uplink = testbed.wan_host_ifname
    check_route(testbed.wan_ip, [uplink])
    subprocess.run(["ip", "link", "set", uplink, "mtu", "1280"], check=True)
    try:
        code, result, _ = trace_ping(a.name, testbed.wan_ip, "--size", "1400", "--json")
        fits, small, _ = trace_ping(a.name, testbed.wan_ip, "--size", "1200", "--json")
    finally:
        subprocess.run(["ip", "link", "set", uplink, "mtu", "1500"], check=True)
        # The frag-needed left a path-MTU exception in a's route cache.
        in_netns(a.pid, "ip", "route", "flush", "cache")
    assert code == 1 and result["size"] == 1400
    assert kinds(result)[0] == "mtu", result["hints"]
    assert f"larger than the MTU of {uplink} (1280)" in findings(result)[0]
    assert "next-hop MTU 1280" in findings(result)[0]
    assert fits == 0 and small["reachable"], small["hints"]


def test_a_probe_larger_than_the_sources_own_mtu_is_named(testbed, docker_client):
    with probe_container(docker_client) as (source, pid):
        in_netns(pid, "ip", "link", "set", "eth0", "mtu", "1280")
        code, result, _ = trace_ping(source.name, testbed.containers["b"].name,
                                     "--size", "1400", "--json")
    assert code == 1
    assert "Message too long" in result["socket_errors"]
    assert f"larger than the MTU of eth0 in {source.name} (1280)" in findings(result)[0]


def test_a_missing_default_route_is_named(testbed, docker_client):
    with probe_container(docker_client) as (source, pid):
        in_netns(pid, "ip", "route", "del", "default")
        code, result, _ = trace_ping(source.name, testbed.wan_ip, "--json")
    assert code == 1
    assert kinds(result)[0] == "no-route", result["hints"]
    assert f"{source.name} has no route to {testbed.wan_ip}" in findings(result)[0]


def test_a_gateway_that_does_not_answer_arp_is_named(testbed, docker_client):
    with probe_container(docker_client) as (source, pid):
        gateway = _unused_address(docker_client, source)
        in_netns(pid, "ip", "route", "replace", "default", "via", gateway, "dev", "eth0")
        code, result, _ = trace_ping(source.name, testbed.wan_ip, "--timeout", "2",
                                     "--json")
    assert code == 1
    assert "neighbour-failed" in kinds(result), result["hints"]
    text = next(t for t in findings(result) if "ARP" in t)
    assert f"in {source.name}, the next hop {gateway} on eth0 does not answer" in text


def _unused_address(docker_client, container) -> str:
    """An address of docker0's subnet that no container holds (a dead gateway)."""
    import ipaddress

    network = docker_client.networks.get("bridge")
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    taken = {c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
             for c in docker_client.containers.list() if "bridge" in
             c.attrs["NetworkSettings"]["Networks"]}
    candidate = str(subnet.broadcast_address - 2)
    assert candidate not in taken and candidate != ip_of(container, "bridge")
    return candidate


def test_strict_reverse_path_filtering_is_named(testbed, docker_client):
    uplink = testbed.wan_host_ifname
    check_route(testbed.wan_ip, [uplink])
    rp_filter = Path("/proc/sys/net/ipv4/conf/docker0/rp_filter")
    with probe_container(docker_client) as (source, _):
        address = ip_of(source, "bridge")
        saved = rp_filter.read_text()
        # A stray, more specific host route: the way back to the container's
        # address no longer leaves through docker0, where its packets come in.
        subprocess.run(["ip", "route", "add", f"{address}/32", "dev", uplink], check=True)
        try:
            rp_filter.write_text("1")
            code, result, _ = trace_ping(source.name, testbed.wan_ip, "--json")
        finally:
            rp_filter.write_text(saved)
            subprocess.run(["ip", "route", "del", f"{address}/32", "dev", uplink], check=True)
    assert code == 1
    assert kinds(result)[0] == "rp-filter", result["hints"]
    assert "reverse-path filtering (rp_filter=1) on docker0 drops what" in findings(result)[0]
    assert f"routes {address} back via {uplink}, not docker0" in findings(result)[0]


def test_a_missing_masquerade_rule_is_named(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    saved = subprocess.run(["iptables-save", "-t", "nat"], check=True, capture_output=True,
                           text=True).stdout
    rule = next(line for line in saved.splitlines()
                if "-j MASQUERADE" in line and "! -o docker0" in line)
    spec = rule.split()[2:]                       # after "-A POSTROUTING"
    subprocess.run(["iptables", "-t", "nat", "-D", "POSTROUTING", *spec], check=True)
    try:
        code, result, _ = trace_ping(a.name, testbed.wan_ip, "--json")
    finally:
        subprocess.run(["iptables", "-t", "nat", "-I", "POSTROUTING", *spec], check=True)
    assert code == 1
    assert kinds(result)[0] == "no-snat", result["hints"]
    text = findings(result)[0]
    assert f"left the host on {testbed.wan_host_ifname} still carrying" in text
    assert f"private source {a.ip}" in text
    assert "no MASQUERADE rule for 172.17.0.0/16" in text


def test_an_internal_network_is_named(testbed, docker_client):
    network = docker_client.networks.create("cntrace-test-internal", internal=True,
                                            labels={LABEL: "cntrace-test"})
    try:
        with probe_container(docker_client, network=network.name) as (source, _):
            code, result, _ = trace_ping(source.name, testbed.wan_ip, "--json")
    finally:
        network.remove()
    assert code == 1
    assert "internal-network" in kinds(result), result["hints"]
    assert "docker network cntrace-test-internal, which is internal" in " ".join(
        findings(result))


def test_a_service_bound_to_loopback_is_named(testbed, docker_client):
    a = testbed.containers["a"]
    with probe_container(docker_client, "cntrace-test-loopback",
                         command=["httpd", "-f", "-p", "127.0.0.1:8080"]) as (web, _):
        code, result, _ = trace_ping(a.name, f"{ip_of(web, 'bridge')}:8080", "--json")
    assert code == 1
    assert kinds(result)[0] == "wrong-address", result["hints"]
    assert "tcp port 8080 is bound to 127.0.0.1 only" in findings(result)[0]
    assert result["state"]["listeners"]["cntrace-test-loopback"] == [
        {"proto": "tcp", "address": "127.0.0.1", "port": 8080}]


def test_no_listener_lists_what_does_listen(testbed, docker_client):
    a = testbed.containers["a"]
    with probe_container(docker_client, "cntrace-test-web",
                         command=["httpd", "-f", "-p", "80"]) as (web, _):
        code, result, _ = trace_ping(a.name, f"{ip_of(web, 'bridge')}:81", "--json")
    assert code == 1
    text = next(t for t in findings(result) if "TCP port 81" in t)
    assert re.search(r"in cntrace-test-web, tcp sockets listen on: (0\.0\.0\.0|::):80", text)


@pytest.mark.kernel
def test_an_nftables_rule_is_named_with_table_chain_and_handle(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    ruleset = (f"table inet cntrace_test_fw {{\n chain forward {{\n  type filter hook forward "
               f"priority -10;\n  ip daddr {testbed.wan_ip} icmp type echo-request drop\n }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    try:
        listed = subprocess.run(["nft", "-a", "list", "chain", "inet", "cntrace_test_fw",
                                 "forward"], check=True, capture_output=True, text=True).stdout
        handle = next(line.rsplit(" ", 1)[1] for line in listed.splitlines()
                      if "drop" in line and "# handle" in line)
        code, result, _ = trace_ping(a.name, testbed.wan_ip, "--json")
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "cntrace_test_fw"], check=True)
    assert code == 1 and result["drops"][0]["drop_reason"] == "NETFILTER_DROP"
    text = findings(result)[0]
    assert kinds(result)[0] == "firewall-rule", (result["hints"], result["nft_trace"])
    assert f"nft inet cntrace_test_fw forward handle {handle}" in text
    assert "icmp type echo-request drop" in text
    leftovers = subprocess.run(["nft", "list", "tables"], capture_output=True,
                               text=True).stdout
    assert "cntrace_trace_" not in leftovers


def test_a_failed_trace_removes_the_table_of_a_trace_ping_that_was_killed(testbed):
    dead = _dead_pid()
    subprocess.run(["nft", "add", "table", "inet", f"cntrace_trace_{dead}"], check=True)
    try:
        code, _, _ = trace_ping(testbed.containers["a"].name, f"{testbed.containers['b'].ip}:81",
                                "--json")
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True,
                                text=True).stdout
    finally:
        subprocess.run(["nft", "delete", "table", "inet", f"cntrace_trace_{dead}"],
                       capture_output=True)
    assert code == 1 and f"cntrace_trace_{dead}" not in tables


def _dead_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_on_a_terminal_the_path_is_drawn(testbed):
    a = testbed.containers["a"]
    check_route(testbed.wan_ip, [testbed.wan_host_ifname])
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*CNTRACE, "ping", a.name, testbed.wan_ip], stdout=follower,
                              stderr=subprocess.PIPE, timeout=scaled(60))
        os.close(follower)
        follower = -1
        screen = _read_all(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, proc.stderr
    lines = screen.replace("\r\n", "\n").splitlines()
    box = [line for line in lines if line.lstrip().startswith(("+-", "|"))]
    assert box and max(len(line) for line in lines if "+-" in line or "|" in line) < 80
    assert f"+- {a.name}" in box[0] and "+- host" in box[0]
    assert any("docker0 (bridge)" in line for line in box)
    assert any(f"snat {testbed.wan_host_ip}" in line for line in box)
    # Not a terminal: no picture.
    code, text, _ = trace_ping(a.name, testbed.wan_ip)
    assert code == 0 and "+- host" not in text


def test_a_picture_marks_where_it_stopped(testbed, docker_client):
    with veth_down(docker_client) as (target, _):
        code, text, _ = trace_ping(testbed.containers["a"].name, target.name, "--picture")
    assert code == 1
    box = [line for line in text.splitlines() if line.lstrip().startswith(("+-", "|"))]
    assert any(line.rstrip().endswith("|") and "X" in line for line in box), text
    assert f"+- {target.name[:15]}" in box[0] and "(not reached)" in text


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:          # EIO: the writer closed its end
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")
